// Goal: record headers, CRCs, body splitting and logical messages agree with what Postgres
// writes and reads. Method: a real PostgreSQL 15 segment start as oracle (CRCs, a full-page
// image), hand-built bodies for each DecodeXLogRecord rule, fast-check round trips and
// garbage that must come back as typed errors, never throws.
import { Result } from "effect"
import fc from "fast-check"
import { describe, expect, test } from "vitest"
import { Lsn } from "./lsn.js"
import { REAL_PG15_SEGMENT_START } from "./real-wal.fixture.js"
import {
  BKPBLOCK_HAS_DATA,
  BKPBLOCK_HAS_IMAGE,
  BKPBLOCK_SAME_REL,
  BKPIMAGE_HAS_HOLE,
  computeRecordCrc,
  decodeLogicalMessage,
  decodeRecordBody,
  decodeRecordHeader,
  encodeLogicalMessageHeaderInto,
  encodeRecordHeaderInto,
  isValidRmgrId,
  isXlogSwitch,
  logicalMessageMainDataLengthBytes,
  maxAlign,
  recordKind,
  rmgrName,
  RMGR_NAMES,
  SIZE_OF_XLOG_RECORD_BYTES,
  XLR_BLOCK_ID_DATA_LONG,
  XLR_BLOCK_ID_DATA_SHORT,
  XLR_BLOCK_ID_ORIGIN,
  XLR_BLOCK_ID_TOPLEVEL_XID,
  type XLogRecordHeader
} from "./record.js"

const realRecord = (offset: number, length: number) => REAL_PG15_SEGMENT_START.subarray(offset, offset + length)
const REAL_RECORDS = [realRecord(0x28, 114), realRecord(0xa0, 30), realRecord(0xc0, 137)]

/** A record around `body` (CRC left 0: body decoding does not check it). */
function recordOf(body: ReadonlyArray<number>): Uint8Array {
  const bytes = new Uint8Array(SIZE_OF_XLOG_RECORD_BYTES + body.length)
  encodeRecordHeaderInto({ totalLengthBytes: bytes.length, xid: 0, prevLsn: Lsn(0), info: 0, rmid: 10, crc: 0 }, bytes, 0)
  bytes.set(body, SIZE_OF_XLOG_RECORD_BYTES)
  return bytes
}
const u16 = (value: number) => [value & 0xff, value >>> 8]
const u32 = (value: number) => [value & 0xff, (value >>> 8) & 0xff, (value >>> 16) & 0xff, value >>> 24]
const bodyError = (body: ReadonlyArray<number>, version: 14 | 15 = 15) => {
  const result = decodeRecordBody(recordOf(body), version)
  return Result.isFailure(result) ? result.failure.message : undefined
}

describe("record header", () => {
  test("a real PostgreSQL record's header and CRC", () => {
    const header = Result.getOrThrow(decodeRecordHeader(REAL_RECORDS[1]!))
    expect(header).toMatchObject({ totalLengthBytes: 30, xid: 1, prevLsn: Lsn(0x1000028), rmid: 0 })
    expect(recordKind(header.rmid, header.info)).toBe("NEXTOID")
    for (const record of REAL_RECORDS) {
      expect(computeRecordCrc(record)).toBe(Result.getOrThrow(decodeRecordHeader(record)).crc)
    }
  })

  test("round trip", () => {
    const arbHeader: fc.Arbitrary<XLogRecordHeader> = fc.record({
      totalLengthBytes: fc.integer({ min: 0, max: 0xffffffff }),
      xid: fc.integer({ min: 0, max: 0xffffffff }),
      prevLsn: fc.maxSafeNat().map(Lsn),
      info: fc.integer({ min: 0, max: 0xff }),
      rmid: fc.integer({ min: 0, max: 0xff }),
      crc: fc.integer({ min: 0, max: 0xffffffff })
    })
    fc.assert(fc.property(arbHeader, fc.nat(16), (header, offset) => {
      const bytes = new Uint8Array(offset + SIZE_OF_XLOG_RECORD_BYTES)
      encodeRecordHeaderInto(header, bytes, offset)
      expect(Result.getOrThrow(decodeRecordHeader(bytes, offset))).toEqual(header)
      expect(bytes[offset + 18]).toBe(0)
      expect(bytes[offset + 19]).toBe(0)
    }))
  })

  test("garbage in: typed failures only", () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 40 }), fc.integer({ min: -1, max: 40 }), (bytes, offset) => {
      const result = decodeRecordHeader(bytes, offset)
      if (Result.isFailure(result)) expect(["Truncated", "PrevLsnTooLarge"]).toContain(result.failure.reason)
    }))
    const big = new Uint8Array(24).fill(0xff)
    const result = decodeRecordHeader(big)
    expect(Result.isFailure(result) && result.failure.reason).toBe("PrevLsnTooLarge")
  })

  test("a flipped bit changes the CRC", () => {
    const record = Uint8Array.from(REAL_RECORDS[0]!)
    const crc = computeRecordCrc(record)
    fc.assert(fc.property(fc.integer({ min: 0, max: record.length * 8 - 1 }), (bit) => {
      const byte = bit >>> 3
      fc.pre(byte < 20 || byte >= 24) // xl_crc itself is not covered
      const copy = Uint8Array.from(record)
      copy[byte]! ^= 1 << (bit & 7)
      return computeRecordCrc(copy) !== crc
    }))
  })
})

describe("resource managers", () => {
  test("names and ids", () => {
    expect(RMGR_NAMES).toHaveLength(22)
    expect(rmgrName(0)).toBe("XLOG")
    expect(rmgrName(10)).toBe("Heap")
    expect(rmgrName(21)).toBe("LogicalMessage")
    expect(rmgrName(130)).toBe("custom130")
    expect(rmgrName(40)).toBe("unknown40")
    expect(isValidRmgrId(21)).toBe(true)
    expect(isValidRmgrId(22)).toBe(false)
    expect(isValidRmgrId(127)).toBe(false)
    expect(isValidRmgrId(128)).toBe(true)
    expect(isXlogSwitch(0, 0x40)).toBe(true)
    expect(isXlogSwitch(0, 0x41)).toBe(true) // low bits belong to the WAL machinery
    expect(isXlogSwitch(1, 0x40)).toBe(false)
    expect(recordKind(0, 0x00)).toBe("CHECKPOINT_SHUTDOWN")
    expect(recordKind(10, 0x80)).toBe("INSERT+INIT")
    expect(recordKind(1, 0x20)).toBe("ABORT")
    expect(recordKind(21, 0)).toBe("MESSAGE")
    expect(recordKind(9, 0x10)).toBe("info=0x10")
    expect(maxAlign(0)).toBe(0)
    expect(maxAlign(1)).toBe(8)
    expect(maxAlign(114)).toBe(120)
  })
})

describe("record body", () => {
  test("a real full-page image: block 0 of rel 1663/1/6117, with a hole", () => {
    const record = REAL_RECORDS[2]!
    const body = Result.getOrThrow(decodeRecordBody(record, 15))
    expect(body.blocks).toHaveLength(1)
    const block = body.blocks[0]!
    expect(block).toMatchObject({ blockId: 0, forkNumber: 0, relation: { spcOid: 1663, dbOid: 1, relNumber: 6117 }, blockNumber: 0 })
    expect(block.image).toMatchObject({ compressed: false, apply: true })
    // pg_waldump: len (rec/tot) 49/137, so the image holds 88 bytes.
    expect(block.image!.lengthBytes).toBe(88)
    expect(block.image!.holeOffsetBytes + block.image!.holeLengthBytes).toBeLessThanOrEqual(8192)
    expect(block.image!.offset + 88 + block.dataLengthBytes + body.mainDataLengthBytes).toBe(137)
  })

  test("the checkpoint record's main data is the rest of the record", () => {
    const body = Result.getOrThrow(decodeRecordBody(REAL_RECORDS[0]!, 15))
    expect(body.blocks).toEqual([])
    expect(body.mainDataOffset + body.mainDataLengthBytes).toBe(114)
    expect(body.mainDataOffset).toBe(SIZE_OF_XLOG_RECORD_BYTES + 2)
  })

  test("blocks with image, data and SAME_REL; origin; top-level xid; long main data", () => {
    const imageLength = 100
    const body = [
      0, BKPBLOCK_HAS_IMAGE | BKPBLOCK_HAS_DATA | 1, ...u16(5), ...u16(imageLength), ...u16(40), BKPIMAGE_HAS_HOLE | 0x02,
      ...u32(1663), ...u32(5), ...u32(16384), ...u32(7),
      2, BKPBLOCK_HAS_DATA | BKPBLOCK_SAME_REL, ...u16(3), ...u32(9),
      XLR_BLOCK_ID_ORIGIN, ...u16(4),
      XLR_BLOCK_ID_TOPLEVEL_XID, ...u32(777),
      XLR_BLOCK_ID_DATA_LONG, ...u32(300),
      ...new Array<number>(imageLength).fill(0xaa), ...[1, 2, 3, 4, 5], ...[6, 7, 8], ...new Array<number>(300).fill(0xbb)
    ]
    const record = recordOf(body)
    const decoded = Result.getOrThrow(decodeRecordBody(record, 15))
    expect(decoded.origin).toBe(4)
    expect(decoded.toplevelXid).toBe(777)
    expect(decoded.blocks).toHaveLength(2)
    const [first, second] = decoded.blocks as [typeof decoded.blocks[0], typeof decoded.blocks[0]]
    expect(first).toMatchObject({ blockId: 0, forkNumber: 1, relation: { spcOid: 1663, dbOid: 5, relNumber: 16384 }, blockNumber: 7, dataLengthBytes: 5 })
    expect(first.image).toMatchObject({ lengthBytes: 100, holeOffsetBytes: 40, holeLengthBytes: 8092, apply: true, compressed: false })
    expect(record[first.image!.offset]).toBe(0xaa)
    expect([...record.subarray(first.dataOffset, first.dataOffset + 5)]).toEqual([1, 2, 3, 4, 5])
    expect(second).toMatchObject({ blockId: 2, relation: first.relation, blockNumber: 9, image: undefined })
    expect([...record.subarray(second.dataOffset, second.dataOffset + 3)]).toEqual([6, 7, 8])
    expect(decoded.mainDataLengthBytes).toBe(300)
    expect(record[decoded.mainDataOffset]).toBe(0xbb)
    expect(decoded.mainDataOffset + 300).toBe(record.length)
  })

  test("compressed images: the hole length field depends on the version's flag bits", () => {
    const compressedWithHole = (info: number) => [
      0, BKPBLOCK_HAS_IMAGE, ...u16(0), ...u16(10), ...u16(40), info, ...u16(500), ...u32(1), ...u32(2), ...u32(3), ...u32(4),
      ...new Array<number>(10).fill(1)
    ]
    // PG15: PGLZ is 0x04; PG14: "compressed" is 0x02.
    const pg15 = Result.getOrThrow(decodeRecordBody(recordOf(compressedWithHole(BKPIMAGE_HAS_HOLE | 0x04)), 15))
    expect(pg15.blocks[0]!.image).toMatchObject({ compressed: true, holeLengthBytes: 500, lengthBytes: 10 })
    const pg14 = Result.getOrThrow(decodeRecordBody(recordOf(compressedWithHole(BKPIMAGE_HAS_HOLE | 0x02)), 14))
    expect(pg14.blocks[0]!.image).toMatchObject({ compressed: true, holeLengthBytes: 500, apply: false })
  })

  test("each DecodeXLogRecord rule refuses its bad input", () => {
    const block = (id: number, flags: number, dataLength: number) => [id, flags, ...u16(dataLength), ...u32(1), ...u32(2), ...u32(3), ...u32(0)]
    expect(bodyError([...block(1, 0, 0), ...block(1, 0, 0)])).toMatch(/out-of-order block_id/)
    expect(bodyError(block(0, BKPBLOCK_HAS_DATA, 0))).toMatch(/no data included/)
    expect(bodyError([...block(0, 0, 4), 1, 2, 3, 4])).toMatch(/HAS_DATA not set/)
    expect(bodyError([0, BKPBLOCK_SAME_REL, 0, 0, ...u32(0)])).toMatch(/SAME_REL set but no previous rel/)
    expect(bodyError([100])).toMatch(/invalid block_id 100/)
    expect(bodyError([XLR_BLOCK_ID_DATA_SHORT, 10, 1, 2])).toMatch(/invalid length/)
    expect(bodyError([XLR_BLOCK_ID_DATA_SHORT, 1, 1, 2])).toMatch(/invalid length/)
    expect(bodyError([XLR_BLOCK_ID_DATA_LONG, 1, 0])).toMatch(/invalid length/)
    expect(bodyError([0, BKPBLOCK_HAS_IMAGE, 0, 0, ...u16(8192), ...u16(4), 0])).toMatch(/hole not set|HAS_HOLE not set/)
    expect(bodyError([0, BKPBLOCK_HAS_IMAGE, 0, 0, ...u16(100), ...u16(0), BKPIMAGE_HAS_HOLE])).toMatch(/HAS_HOLE set/)
    // Without a hole or compression the implied hole is 8192 - 100: refused as a hole without the flag.
    expect(bodyError([0, BKPBLOCK_HAS_IMAGE, 0, 0, ...u16(100), ...u16(0), 0])).toMatch(/HAS_HOLE not set, but hole offset 0 length 8092/)
    expect(bodyError([0, BKPBLOCK_HAS_IMAGE, 0, 0, ...u16(8192), ...u16(0), 0x04])).toMatch(/compressed block image length/)
    expect(Result.isFailure(decodeRecordBody(new Uint8Array(10), 15))).toBe(true)
    const wrongTotal = recordOf([])
    wrongTotal[0] = 99
    expect(Result.isFailure(decodeRecordBody(wrongTotal, 15))).toBe(true)
  })

  test("garbage in: typed failures only", () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), fc.constantFrom(14 as const, 15 as const, 17 as const), (body, version) => {
      const result = decodeRecordBody(recordOf([...body]), version)
      if (Result.isFailure(result)) expect(result.failure._tag).toBe("RecordBodyError")
      else expect(result.success.mainDataOffset + result.success.mainDataLengthBytes).toBe(SIZE_OF_XLOG_RECORD_BYTES + body.length)
    }), { numRuns: 2000 })
  })
})

describe("logical messages", () => {
  test("round trip through xl_logical_message", () => {
    fc.assert(fc.property(
      fc.string({ unit: "grapheme", maxLength: 20 }).filter((prefix) => !prefix.includes("\0")),
      fc.uint8Array({ maxLength: 300 }),
      fc.boolean(),
      fc.integer({ min: 0, max: 0xffffffff }),
      (prefix, message, transactional, dbId) => {
        const prefixBytes = new TextEncoder().encode(prefix)
        const mainData = new Uint8Array(logicalMessageMainDataLengthBytes(prefixBytes.length, message.length))
        const headerLength = encodeLogicalMessageHeaderInto({ dbId, transactional, prefix: prefixBytes, messageLengthBytes: message.length }, mainData, 0)
        mainData.set(message, headerLength)
        const decoded = Result.getOrThrow(decodeLogicalMessage(mainData))
        expect(decoded).toEqual({ dbId, transactional, prefix, message })
      }
    ))
  })

  test("garbage in: typed failures only", () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 80 }), (bytes) => {
      const result = decodeLogicalMessage(bytes)
      if (Result.isFailure(result)) expect(result.failure._tag).toBe("LogicalMessageError")
    }))
    const noTerminator = new Uint8Array(24 + 3)
    noTerminator[8] = 3
    noTerminator.set([0x61, 0x62, 0x63], 24)
    const result = decodeLogicalMessage(noTerminator)
    expect(Result.isFailure(result) && result.failure.message).toMatch(/NUL/)
  })
})
