// Goal: the streaming decoder returns exactly the records that were written, however the
// bytes are chunked, and stops with the right typed reason at the first thing that is not
// valid WAL, never throwing. Method: WAL from our generator (which pg_waldump accepts, see
// wal.slow.test.ts) and a real PostgreSQL 15 segment start; fast-check for chunkings,
// truncations, single-byte corruptions and random garbage; hand-made corruptions for each
// stop reason, including a recycled segment (pageaddr of an older segment). The
// allocation-free `scan` (the ingest path) is held to `push` (the materialising path): the
// same record starts, ends and next starts, the same stop and the same decoder state, on
// generated WAL (page- and segment-spanning records, XLOG_SWITCH) chunked at random, whole,
// truncated, corrupted or garbage; every hand-made stop below is checked on both paths.
import { createHash } from "node:crypto"
import { Result } from "effect"
import fc from "fast-check"
import { describe, expect, test } from "vitest"
import { isValidDecoderStart, type WalDecodeErrorReason, WalDecoder, type WalDecoderOptions, type WalRecord } from "./decoder.js"
import { Lsn, XLOG_BLCKSZ_BYTES } from "./lsn.js"
import {
  SIZE_OF_XLOG_LONG_PHD_BYTES,
  SIZE_OF_XLOG_SHORT_PHD_BYTES,
  standardPageHeaderSizeBytes,
  XLP_FIRST_IS_CONTRECORD,
  XLP_FIRST_IS_OVERWRITE_CONTRECORD,
  XLP_LONG_HEADER
} from "./page.js"
import { REAL_PG15_SEGMENT_START, REAL_PG15_SYSTEM_ID } from "./real-wal.fixture.js"
import { logicalMessageLengthForRecord } from "./generator.js"
import { decodeLogicalMessage, decodeRecordBody, isXlogSwitch, XLOG_RECORD_MAX_SIZE_BYTES } from "./record.js"
import { generateWal, type GeneratedWal, TEST_SYSTEM_ID, type WalStep } from "./wal-testing.js"

const SEGMENT = 1024 * 1024
const PAGE = XLOG_BLCKSZ_BYTES

function makeDecoder(options: Partial<WalDecoderOptions> & { startLsn: Lsn }): WalDecoder {
  return Result.getOrThrow(WalDecoder.make({ segmentSizeBytes: SEGMENT, ...options }))
}

type Boundary = readonly [startLsn: number, endLsn: number, nextLsn: number]

/** What `scan` reports, chunk by chunk, as one list. */
function scanAll(decoder: WalDecoder, bytes: Uint8Array, chunkSizes: ReadonlyArray<number> = [bytes.length]): Boundary[] {
  const boundaries: Boundary[] = []
  let offset = 0
  let turn = 0
  // Each pass scans at least one byte.
  while (offset < bytes.length) {
    const size = Math.max(1, chunkSizes[turn++ % chunkSizes.length]!)
    const count = decoder.scan(bytes.subarray(offset, offset + size))
    const ends = decoder.recordEnds
    // (No expect per chunk: chunks may be single bytes over whole segments.)
    if (ends.count !== count) throw new Error(`scan returned ${count}, recordEnds.count is ${ends.count}`)
    for (let index = 0; index < count; index++) boundaries.push([ends.startLsn(index), ends.endLsn(index), ends.nextLsn(index)])
    offset += size
  }
  return boundaries
}

const boundaryOf = (record: WalRecord): Boundary => [record.startLsn, record.endLsn, record.nextLsn]

/** Everything a caller can ask a decoder, to compare two that were fed the same bytes. */
const stateOf = (decoder: WalDecoder) => ({
  // After a stop, how far the bytes before it were read depends on the chunking, in push too.
  position: decoder.error === undefined ? decoder.position : "stopped",
  inRecord: decoder.error === undefined ? decoder.inRecord : "stopped",
  nextRecordLsn: decoder.nextRecordLsn,
  lastRecordEndLsn: decoder.lastRecordEndLsn,
  reason: decoder.error?.reason,
  lsn: decoder.error?.lsn,
  message: decoder.error?.message,
  pgVersion: decoder.pgVersion,
  systemId: decoder.systemId
})

/** Pushes and scans the same bytes (chunked differently) and requires the same outcome. */
function expectScanMatchesPush(options: Partial<WalDecoderOptions> & { startLsn: Lsn }, bytes: Uint8Array, pushChunkSizes: ReadonlyArray<number>, scanChunkSizes: ReadonlyArray<number>): WalRecord[] {
  const pushing = makeDecoder(options)
  const records = decodeAll(pushing, bytes, pushChunkSizes)
  const scanning = makeDecoder(options)
  expect(scanAll(scanning, bytes, scanChunkSizes)).toEqual(records.map(boundaryOf))
  expect(stateOf(scanning)).toEqual(stateOf(pushing))
  return records
}

function decodeAll(decoder: WalDecoder, bytes: Uint8Array, chunkSizes: ReadonlyArray<number> = [bytes.length]): WalRecord[] {
  const records: WalRecord[] = []
  let offset = 0
  let turn = 0
  // Each pass pushes at least one byte.
  while (offset < bytes.length) {
    const size = Math.max(1, chunkSizes[turn++ % chunkSizes.length]!)
    records.push(...decoder.push(bytes.subarray(offset, offset + size)))
    offset += size
  }
  return records
}

/** Summary of a record that does not depend on where its bytes live. */
const shape = (record: WalRecord) => ({
  startLsn: record.startLsn,
  endLsn: record.endLsn,
  nextLsn: record.nextLsn,
  totalLengthBytes: record.totalLengthBytes,
  rmid: record.rmid,
  info: record.info,
  prevLsn: record.prevLsn,
  crc: record.crc,
  bytesMd5: createHash("md5").update(record.bytes).digest("hex")
})

/** A mix of small, page-spanning and segment-spanning messages, sometimes a switch. */
const arbStep: fc.Arbitrary<WalStep> = fc.oneof(
  { weight: 12, arbitrary: fc.integer({ min: 0, max: 400 }).map((messageBytes) => ({ kind: "message" as const, messageBytes })) },
  { weight: 5, arbitrary: fc.integer({ min: 400, max: 3 * PAGE }).map((messageBytes) => ({ kind: "message" as const, messageBytes })) },
  { weight: 1, arbitrary: fc.integer({ min: 3 * PAGE, max: SEGMENT + 5 * PAGE }).map((messageBytes) => ({ kind: "message" as const, messageBytes })) },
  { weight: 1, arbitrary: fc.constant({ kind: "switch" as const }) }
)

/** Record starts: after a long header, a page start (header generated), mid-page. */
const arbStart: fc.Arbitrary<Lsn> = fc.oneof(
  fc.constant(Lsn(SEGMENT + SIZE_OF_XLOG_LONG_PHD_BYTES)),
  fc.integer({ min: 1, max: 5 * 128 - 1 }).map((page) => Lsn(SEGMENT + page * PAGE)),
  fc.tuple(fc.integer({ min: 0, max: 5 * 128 - 1 }), fc.integer({ min: 5, max: 1023 })).map(([page, slot]) => Lsn(SEGMENT + page * PAGE + slot * 8))
)

const arbWal: fc.Arbitrary<GeneratedWal> = fc.tuple(arbStart, fc.array(arbStep, { minLength: 1, maxLength: 40 }))
  .map(([startLsn, steps]) => generateWal({ startLsn, segmentSizeBytes: SEGMENT, steps }))

const arbChunkSizes = fc.array(fc.oneof(fc.integer({ min: 1, max: 64 }), fc.integer({ min: 1, max: 3 * PAGE }), fc.integer({ min: 1, max: SEGMENT })), { minLength: 1, maxLength: 8 })

describe("decoding generated WAL", () => {
  test("any chunking yields the generated records, with their messages", () => {
    fc.assert(fc.property(arbWal, arbChunkSizes, (wal, chunkSizes) => {
      const decoder = makeDecoder({ startLsn: wal.startLsn, systemId: TEST_SYSTEM_ID, pgVersion: 15, timelineId: 1 })
      const records = decodeAll(decoder, wal.bytes, chunkSizes)
      expect(decoder.error).toBeUndefined()
      expect(records.map((record) => [record.startLsn, record.endLsn, record.nextLsn, record.totalLengthBytes]))
        .toEqual(wal.records.map((record) => [record.startLsn, record.endLsn, record.nextLsn, record.totalLengthBytes]))
      records.forEach((record, index) => {
        if (index > 0) expect(record.prevLsn).toBe(records[index - 1]!.startLsn)
        const message = wal.messages[index]
        if (message === undefined) {
          expect(isXlogSwitch(record.rmid, record.info)).toBe(true)
          return
        }
        const body = Result.getOrThrow(decodeRecordBody(record.bytes, 15))
        const decoded = Result.getOrThrow(decodeLogicalMessage(record.bytes.subarray(body.mainDataOffset, body.mainDataOffset + body.mainDataLengthBytes)))
        expect(decoded.prefix).toBe(`p${index}`)
        expect(Buffer.from(decoded.message).equals(Buffer.from(message))).toBe(true)
      })
      expect(decoder.position).toBe(wal.startLsn + wal.bytes.length)
      expect(decoder.nextRecordLsn).toBe(wal.records.at(-1)!.nextLsn)
      expect(decoder.lastRecordEndLsn).toBe(wal.records.at(-1)!.endLsn)
      expect(decoder.inRecord).toBe(false)
    }), { numRuns: 150 })
  })

  test("chunking never changes the record list (bytes included)", () => {
    fc.assert(fc.property(arbWal, arbChunkSizes, (wal, chunkSizes) => {
      const whole = decodeAll(makeDecoder({ startLsn: wal.startLsn }), wal.bytes).map(shape)
      const chunked = decodeAll(makeDecoder({ startLsn: wal.startLsn }), wal.bytes, chunkSizes).map(shape)
      expect(chunked).toEqual(whole)
    }), { numRuns: 60 })
  })

  test("a truncated stream yields exactly the records that ended in it, and no error", () => {
    fc.assert(fc.property(arbWal, fc.double({ min: 0, max: 1, noNaN: true }), arbChunkSizes, (wal, fraction, chunkSizes) => {
      const cut = Math.floor(wal.bytes.length * fraction)
      const decoder = makeDecoder({ startLsn: wal.startLsn })
      const records = decodeAll(decoder, wal.bytes.subarray(0, cut), chunkSizes)
      const expected = wal.records.filter((record) => record.endLsn <= wal.startLsn + cut)
      expect(records.map((record) => record.startLsn)).toEqual(expected.map((record) => record.startLsn))
      expect(decoder.error).toBeUndefined()
      expect(decoder.position).toBe(wal.startLsn + cut)
    }), { numRuns: 100 })
  })

  test("a single corrupted byte: a prefix of the records, then a typed stop at or before the damage", () => {
    fc.assert(fc.property(arbWal, fc.nat(), fc.integer({ min: 1, max: 255 }), arbChunkSizes, (wal, at, xor, chunkSizes) => {
      // A zero tail makes every damaged record end (zero page header, or a bad CRC) rather
      // than wait for bytes that never come.
      const bytes = new Uint8Array(wal.bytes.length + 2 * PAGE)
      bytes.set(wal.bytes)
      const offset = at % wal.bytes.length
      bytes[offset]! ^= xor
      const decoder = makeDecoder({ startLsn: wal.startLsn, systemId: TEST_SYSTEM_ID, pgVersion: 15, timelineId: 1 })
      const records = decodeAll(decoder, bytes, chunkSizes)
      records.forEach((record, index) => {
        expect(record.startLsn).toBe(wal.records[index]!.startLsn)
        expect(record.endLsn).toBe(wal.records[index]!.endLsn)
        expect(record.totalLengthBytes).toBe(wal.records[index]!.totalLengthBytes)
      })
      const lsn = wal.startLsn + offset
      const damaged = wal.records.findIndex((record) => record.startLsn <= lsn && lsn < record.endLsn)
      const inPageHeader = lsn % PAGE < standardPageHeaderSizeBytes(lsn - (lsn % PAGE), SEGMENT)
      if (damaged >= 0 && !inPageHeader) {
        expect(records.length).toBeLessThanOrEqual(damaged)
        expect(decoder.error).toBeDefined()
      }
      if (decoder.error !== undefined) expect(decoder.error._tag).toBe("WalDecodeError")
    }), { numRuns: 300 })
  })

  test("garbage never throws", () => {
    fc.assert(fc.property(fc.uint8Array({ minLength: 0, maxLength: 3 * PAGE }), arbStart, arbChunkSizes, (garbage, startLsn, chunkSizes) => {
      const decoder = makeDecoder({ startLsn })
      decodeAll(decoder, garbage, chunkSizes)
      if (decoder.error !== undefined) expect(decoder.error._tag).toBe("WalDecodeError")
    }), { numRuns: 300 })
  })

  test("an XLOG_SWITCH sends the next record to the next segment", () => {
    const wal = generateWal({
      startLsn: Lsn(SEGMENT + 40),
      segmentSizeBytes: SEGMENT,
      steps: [{ kind: "message", messageBytes: 100 }, { kind: "switch" }, { kind: "message", messageBytes: 100 }]
    })
    const records = decodeAll(makeDecoder({ startLsn: wal.startLsn }), wal.bytes, [4096])
    expect(records).toHaveLength(3)
    expect(records[1]!.nextLsn).toBe(2 * SEGMENT)
    expect(records[2]!.startLsn).toBe(2 * SEGMENT + SIZE_OF_XLOG_LONG_PHD_BYTES)
    expect(records[2]!.prevLsn).toBe(records[1]!.startLsn)
  })
})

describe("scan, the allocation-free path, against push", () => {
  const options = (wal: GeneratedWal) => ({ startLsn: wal.startLsn, systemId: TEST_SYSTEM_ID, pgVersion: 15 as const, timelineId: 1 })

  test("the same record boundaries and state as push and as generated, however each is chunked", () => {
    fc.assert(fc.property(arbWal, arbChunkSizes, arbChunkSizes, (wal, pushChunkSizes, scanChunkSizes) => {
      const records = expectScanMatchesPush(options(wal), wal.bytes, pushChunkSizes, scanChunkSizes)
      expect(records.map(boundaryOf)).toEqual(wal.records.map((record) => [record.startLsn, record.endLsn, record.nextLsn]))
    }), { numRuns: 150 })
  })

  test("at LSNs above 2^32 and just below 2^53 (doubles, not small integers, in V8)", () => {
    const arbHighWal = fc.tuple(fc.constantFrom(2 ** 13 + 5, 2 ** 33 - 64), arbStart, fc.array(arbStep, { minLength: 1, maxLength: 20 }))
      .map(([baseSegmentNo, start, steps]) => generateWal({ startLsn: Lsn(baseSegmentNo * SEGMENT + start), segmentSizeBytes: SEGMENT, steps }))
    fc.assert(fc.property(arbHighWal, arbChunkSizes, arbChunkSizes, (wal, pushChunkSizes, scanChunkSizes) => {
      const records = expectScanMatchesPush(options(wal), wal.bytes, pushChunkSizes, scanChunkSizes)
      expect(records.map(boundaryOf)).toEqual(wal.records.map((record) => [record.startLsn, record.endLsn, record.nextLsn]))
    }), { numRuns: 60 })
  })

  test("truncated: the same records and the same partial state", () => {
    fc.assert(fc.property(arbWal, fc.double({ min: 0, max: 1, noNaN: true }), arbChunkSizes, arbChunkSizes, (wal, fraction, pushChunkSizes, scanChunkSizes) => {
      const cut = Math.floor(wal.bytes.length * fraction)
      expectScanMatchesPush(options(wal), wal.bytes.subarray(0, cut), pushChunkSizes, scanChunkSizes)
    }), { numRuns: 100 })
  })

  test("a corrupted byte anywhere (headers, bodies, page headers): the same prefix and the same stop", () => {
    fc.assert(fc.property(arbWal, fc.nat(), fc.integer({ min: 1, max: 255 }), arbChunkSizes, arbChunkSizes, (wal, at, xor, pushChunkSizes, scanChunkSizes) => {
      const bytes = new Uint8Array(wal.bytes.length + 2 * PAGE)
      bytes.set(wal.bytes)
      bytes[at % wal.bytes.length]! ^= xor
      expectScanMatchesPush(options(wal), bytes, pushChunkSizes, scanChunkSizes)
    }), { numRuns: 300 })
  })

  test("garbage: never a throw, and the same outcome", () => {
    fc.assert(fc.property(fc.uint8Array({ minLength: 0, maxLength: 3 * PAGE }), arbStart, arbChunkSizes, arbChunkSizes, (garbage, startLsn, pushChunkSizes, scanChunkSizes) => {
      expectScanMatchesPush({ startLsn }, garbage, pushChunkSizes, scanChunkSizes)
    }), { numRuns: 300 })
  })

  test("XLOG_SWITCH: the switch's next start is the next segment, and padding is skipped", () => {
    // Switches back to back, at the start of a segment and after a page-spanning record.
    const wal = generateWal({
      startLsn: Lsn(SEGMENT + 40),
      segmentSizeBytes: SEGMENT,
      steps: [{ kind: "message", messageBytes: 100 }, { kind: "switch" }, { kind: "switch" }, { kind: "message", messageBytes: 3 * PAGE }, { kind: "switch" }, { kind: "message", messageBytes: 10 }]
    })
    // (Byte-sized chunks are in the properties; here they would crawl through three segments of padding.)
    for (const chunkSizes of [[1000], [4096], [PAGE], [SEGMENT], [wal.bytes.length]]) {
      const decoder = makeDecoder(options(wal))
      const boundaries = scanAll(decoder, wal.bytes, chunkSizes)
      expect(boundaries.map(([, , next]) => next)).toEqual(wal.records.map((record) => record.nextLsn))
      expect(boundaries[1]![2]).toBe(2 * SEGMENT)
      expect(boundaries[2]![0]).toBe(2 * SEGMENT + SIZE_OF_XLOG_LONG_PHD_BYTES)
      expect(boundaries[2]![2]).toBe(3 * SEGMENT)
      expect(boundaries[4]![2]).toBe(4 * SEGMENT)
      expect(decoder.error).toBeUndefined()
    }
  })

  test("push and scan may alternate wherever no record is half read by scan", () => {
    fc.assert(fc.property(arbWal, arbChunkSizes, fc.array(fc.boolean(), { minLength: 1, maxLength: 8 }), (wal, chunkSizes, usePush) => {
      const expected = decodeAll(makeDecoder(options(wal)), wal.bytes).map(boundaryOf)
      const decoder = makeDecoder(options(wal))
      const found: Boundary[] = []
      let offset = 0
      let turn = 0
      let lastWasScan = false
      // Each pass feeds at least one byte.
      while (offset < wal.bytes.length) {
        const chunk = wal.bytes.subarray(offset, offset + Math.max(1, chunkSizes[turn % chunkSizes.length]!))
        // A record that scan began has no kept bytes, so push may not finish it.
        const push: boolean = usePush[turn % usePush.length]! && !(lastWasScan && decoder.inRecord)
        if (push) {
          found.push(...decoder.push(chunk).map(boundaryOf))
        } else {
          const count = decoder.scan(chunk)
          for (let index = 0; index < count; index++) found.push([decoder.recordEnds.startLsn(index), decoder.recordEnds.endLsn(index), decoder.recordEnds.nextLsn(index)])
        }
        lastWasScan = !push && (lastWasScan || decoder.inRecord)
        offset += chunk.length
        turn++
      }
      expect(found).toEqual(expected)
      expect(decoder.error).toBeUndefined()
    }), { numRuns: 100 })
  })

  test("push refuses to finish a record that scan began, and record ends outside the last scan are refused", () => {
    const wal = generateWal({ startLsn: Lsn(SEGMENT + 40), segmentSizeBytes: SEGMENT, steps: [{ kind: "message", messageBytes: 100 }, { kind: "message", messageBytes: 2 * PAGE }] })
    const decoder = makeDecoder({ startLsn: wal.startLsn })
    const spanning = wal.records[1]!
    expect(decoder.scan(wal.bytes.subarray(0, spanning.startLsn - wal.startLsn + 100))).toBe(1)
    expect(decoder.inRecord).toBe(true)
    expect(() => decoder.push(wal.bytes.subarray(spanning.startLsn - wal.startLsn + 100))).toThrow(/scan keeps no record bytes/)
    expect(() => decoder.recordEnds.endLsn(1)).toThrow(/within the last scan/)
    expect(decoder.scan(wal.bytes.subarray(spanning.startLsn - wal.startLsn + 100))).toBe(1)
    expect(decoder.recordEnds.endLsn(0)).toBe(spanning.endLsn)
  })
})

describe("real PostgreSQL 15 WAL", () => {
  test("the first three records initdb wrote", () => {
    const decoder = Result.getOrThrow(WalDecoder.make({ startLsn: Lsn(0x1000000), segmentSizeBytes: 16 * 1024 * 1024, systemId: REAL_PG15_SYSTEM_ID, pgVersion: 15 }))
    const records = decodeAll(decoder, REAL_PG15_SEGMENT_START, [7])
    expect(decoder.error).toBeUndefined()
    expect(records.map((record) => [record.startLsn, record.totalLengthBytes, record.prevLsn, record.xid])).toEqual([
      [0x1000028, 114, 0, 0],
      [0x10000a0, 30, 0x1000028, 1],
      [0x10000c0, 137, 0x10000a0, 1]
    ])
    expect(records[2]!.nextLsn).toBe(0x1000150)
    expect(decoder.pgVersion).toBe(15)
    expect(decoder.systemId).toBe(REAL_PG15_SYSTEM_ID)
    for (const chunkSizes of [[7], [1], [REAL_PG15_SEGMENT_START.length]]) {
      expectScanMatchesPush({ startLsn: Lsn(0x1000000), segmentSizeBytes: 16 * 1024 * 1024, systemId: REAL_PG15_SYSTEM_ID, pgVersion: 15 }, REAL_PG15_SEGMENT_START, [7], chunkSizes)
    }
  })

  test("refuses another version's magic and another system id", () => {
    const stopOf = (options: Partial<WalDecoderOptions>) => {
      const decoder = Result.getOrThrow(WalDecoder.make({ startLsn: Lsn(0x1000000), segmentSizeBytes: 16 * 1024 * 1024, ...options }))
      decoder.push(REAL_PG15_SEGMENT_START)
      return decoder.error?.reason
    }
    expect(stopOf({ pgVersion: 16 })).toBe("BadMagic")
    expect(stopOf({ systemId: 1n })).toBe("BadSystemId")
    expect(stopOf({ timelineId: 2 })).toBe("BadTimeline")
    expect(stopOf({ segmentSizeBytes: SEGMENT })).toBe("BadSegmentSize")
    expect(stopOf({})).toBeUndefined()
  })
})

describe("stop reasons", () => {
  // Three segments' worth: small records, a page-spanning one, a segment-spanning one.
  const steps: WalStep[] = [
    { kind: "message", messageBytes: 100 },
    { kind: "message", messageBytes: 20_000 },
    { kind: "message", messageBytes: 100 },
    { kind: "message", messageBytes: SEGMENT + 100_000 },
    { kind: "message", messageBytes: 100 },
    { kind: "message", messageBytes: 100 }
  ]
  const start = Lsn(SEGMENT + SIZE_OF_XLOG_LONG_PHD_BYTES)
  const wal = generateWal({ startLsn: start, segmentSizeBytes: SEGMENT, steps })
  const at = (lsn: number) => lsn - start

  function stop(bytes: Uint8Array, options: Partial<WalDecoderOptions> = {}): { reason: WalDecodeErrorReason | undefined; lsn: number | undefined; records: number } {
    const decoder = makeDecoder({ startLsn: start, ...options })
    const records = decodeAll(decoder, bytes, [3000])
    // The allocation-free path stops at the same place for the same reason, however chunked.
    expectScanMatchesPush({ startLsn: start, ...options }, bytes, [3000], [5, 8192, 100_000])
    return { reason: decoder.error?.reason, lsn: decoder.error?.lsn, records: records.length }
  }
  const corrupt = (edit: (bytes: Uint8Array, view: DataView) => void) => {
    const bytes = Uint8Array.from(wal.bytes)
    edit(bytes, new DataView(bytes.buffer))
    return bytes
  }

  test("zero xl_tot_len: the end of WAL in a zero-filled segment", () => {
    const bytes = new Uint8Array(wal.bytes.length + 100)
    bytes.set(wal.bytes)
    expect(stop(bytes)).toEqual({ reason: "ZeroLength", lsn: wal.records.at(-1)!.nextLsn, records: steps.length })
  })

  test("a recycled segment: the next segment holds an older one's pages", () => {
    // The segment-spanning record continues at 2 * SEGMENT; put segment 1's first pages there.
    const secondSegment = 2 * SEGMENT
    const bytes = corrupt((target) => target.set(wal.bytes.subarray(0, 2 * PAGE - 40), at(secondSegment + 40)))
    const view = new DataView(bytes.buffer)
    view.setUint32(at(secondSegment) + 8, SEGMENT, true)
    const result = stop(bytes)
    expect(result.reason).toBe("BadPageAddress")
    expect(result.lsn).toBe(secondSegment)
    expect(result.records).toBe(wal.records.filter((record) => record.endLsn <= secondSegment).length)
    expect(result.records).toBe(3)
  })

  test("a continuation page without XLP_FIRST_IS_CONTRECORD, or with the wrong xlp_rem_len", () => {
    const spanning = wal.records[1]!
    const nextPage = spanning.startLsn - (spanning.startLsn % PAGE) + PAGE
    expect(stop(corrupt((bytes, view) => view.setUint16(at(nextPage) + 2, 0, true)))).toMatchObject({ reason: "MissingContrecord", lsn: nextPage, records: 1 })
    expect(stop(corrupt((bytes, view) => view.setUint32(at(nextPage) + 16, 5, true)))).toMatchObject({ reason: "BadContrecordLength", lsn: nextPage, records: 1 })
    expect(stop(corrupt((bytes, view) => view.setUint32(at(nextPage) + 16, 0, true)))).toMatchObject({ reason: "BadContrecordLength" })
  })

  test("every page header check holds on a segment's inner pages too (short headers)", () => {
    // Inner pages take a shortcut when the header is as expected; each condition of that
    // shortcut is broken alone here, and the full check must name it. The page is the second
    // header read (decoding starts after the long header), so the first set what is expected.
    const pageLsn = SEGMENT + 2 * PAGE
    expect(wal.records[1]!.startLsn).toBeLessThan(pageLsn)
    expect(wal.records[1]!.endLsn).toBeGreaterThan(pageLsn)
    const page = at(pageLsn)
    const expected = (reason: WalDecodeErrorReason) => ({ reason, lsn: pageLsn, records: 1 })
    expect(stop(corrupt((bytes, view) => view.setUint32(page + 8, pageLsn + PAGE, true)))).toEqual(expected("BadPageAddress"))
    expect(stop(corrupt((bytes, view) => view.setUint32(page + 12, 1, true)))).toEqual(expected("BadPageAddress"))
    expect(stop(corrupt((bytes, view) => view.setUint16(page, 0xd113, true)))).toEqual(expected("BadMagic"))
    expect(stop(corrupt((bytes, view) => view.setUint16(page, 0x1234, true)))).toEqual(expected("BadMagic"))
    expect(stop(corrupt((bytes, view) => view.setUint16(page + 2, XLP_FIRST_IS_CONTRECORD | 0x10, true)))).toEqual(expected("BadPageInfo"))
    expect(stop(corrupt((bytes, view) => view.setUint32(page + 4, 2, true)), { timelineId: 1 })).toEqual(expected("BadTimeline"))
    expect(stop(corrupt((bytes, view) => view.setUint32(page + 4, 0, true)))).toEqual(expected("BadTimeline"))
    // A long header on an inner page is read as one (Postgres allows it) and its fields checked.
    expect(stop(corrupt((bytes, view) => view.setUint16(page + 2, XLP_FIRST_IS_CONTRECORD | XLP_LONG_HEADER, true)), { systemId: TEST_SYSTEM_ID })).toEqual(expected("BadSystemId"))
    // A later timeline is fine without a required one, and is then the least the rest may have.
    expect(stop(corrupt((bytes, view) => view.setUint32(page + 4, 2, true)))).toMatchObject({ reason: "BadTimeline", lsn: pageLsn + PAGE })
    // A segment's first page needs the long header.
    expect(stop(corrupt((bytes, view) => view.setUint16(at(2 * SEGMENT) + 2, XLP_FIRST_IS_CONTRECORD, true)))).toMatchObject({ reason: "BadPageInfo", lsn: 2 * SEGMENT })
  })

  test("a page claiming a continuation where a record should start", () => {
    // The first record fills its page exactly, so the second starts right after a header.
    const messageBytes = logicalMessageLengthForRecord(2, PAGE - SIZE_OF_XLOG_LONG_PHD_BYTES)!
    const exact = generateWal({ startLsn: start, segmentSizeBytes: SEGMENT, steps: [{ kind: "message", messageBytes }, { kind: "message", messageBytes: 10 }] })
    const pageLsn = SEGMENT + PAGE
    expect(exact.records[1]!.startLsn).toBe(pageLsn + SIZE_OF_XLOG_SHORT_PHD_BYTES)
    const bytes = Uint8Array.from(exact.bytes)
    const view = new DataView(bytes.buffer)
    view.setUint16(at(pageLsn) + 2, XLP_FIRST_IS_CONTRECORD, true)
    view.setUint32(at(pageLsn) + 16, 8, true)
    expect(stop(bytes)).toEqual({ reason: "UnexpectedContrecord", lsn: pageLsn, records: 1 })
    expect(stop(exact.bytes)).toEqual({ reason: undefined, lsn: undefined, records: 2 })
  })

  test("bad xl_tot_len, rmgr, prev-link and checksum", () => {
    const second = wal.records[1]!
    expect(stop(corrupt((bytes, view) => view.setUint32(at(second.startLsn), 10, true)))).toEqual({ reason: "BadRecordLength", lsn: second.startLsn, records: 1 })
    expect(stop(corrupt((bytes, view) => view.setUint32(at(second.startLsn), XLOG_RECORD_MAX_SIZE_BYTES + 1, true)))).toMatchObject({ reason: "BadRecordLength" })
    expect(stop(wal.bytes, { recordSizeMaxBytes: 10_000 })).toMatchObject({ reason: "BadRecordLength", lsn: second.startLsn, records: 1 })
    expect(stop(corrupt((bytes) => {
      bytes[at(second.startLsn) + 17] = 50
    }))).toEqual({ reason: "BadRmgr", lsn: second.startLsn, records: 1 })
    expect(stop(corrupt((bytes, view) => view.setUint32(at(second.startLsn) + 8, 16, true)))).toEqual({ reason: "BadPrevLink", lsn: second.startLsn, records: 1 })
    expect(stop(corrupt((bytes) => {
      bytes[at(second.startLsn) + 200]! ^= 1
    }))).toEqual({ reason: "BadChecksum", lsn: second.startLsn, records: 1 })
    // The first record's xl_prev: exact when given, else only below the record.
    expect(stop(wal.bytes, { prevLsn: Lsn(8) })).toMatchObject({ reason: "BadPrevLink", lsn: start, records: 0 })
    expect(stop(corrupt((bytes, view) => view.setUint32(at(start) + 8, start, true)))).toMatchObject({ reason: "BadPrevLink", records: 0 })
  })

  test("a huge garbage xl_tot_len is refused at the next page, not allocated", () => {
    const last = wal.records.at(-1)!
    const bytes = new Uint8Array(wal.bytes.length + 3 * PAGE)
    bytes.set(wal.bytes)
    // A plausible header claiming 900 MB where the WAL ends: the next page has no header.
    const view = new DataView(bytes.buffer)
    view.setUint32(at(last.nextLsn), 900 * 1024 * 1024, true)
    view.setUint32(at(last.nextLsn) + 8, last.startLsn, true)
    const nextPage = last.nextLsn - (last.nextLsn % PAGE) + PAGE
    expect(stop(bytes)).toEqual({ reason: "BadMagic", lsn: nextPage, records: steps.length })
  })

  test("timeline going backwards, without a required timeline", () => {
    const spanning = wal.records[1]!
    // Timeline 1 is seen on the first continuation page, then 0 on the one after.
    const laterPage = spanning.startLsn - (spanning.startLsn % PAGE) + 2 * PAGE
    expect(spanning.endLsn).toBeGreaterThan(laterPage)
    const bytes = corrupt((target, view) => view.setUint32(at(laterPage) + 4, 0, true))
    expect(stop(bytes)).toMatchObject({ reason: "BadTimeline", lsn: laterPage, records: 1 })
  })

  test("after a stop every push is ignored", () => {
    const decoder = makeDecoder({ startLsn: start })
    decoder.push(new Uint8Array(100))
    expect(decoder.error?.reason).toBe("ZeroLength")
    expect(decoder.push(wal.bytes)).toEqual([])
  })
})

describe("starting positions", () => {
  const steps: WalStep[] = Array.from({ length: 30 }, (_, index) => ({ kind: "message" as const, messageBytes: index % 3 === 0 ? 12_000 : 300 }))
  const start = Lsn(SEGMENT + SIZE_OF_XLOG_LONG_PHD_BYTES)
  const wal = generateWal({ startLsn: start, segmentSizeBytes: SEGMENT, steps })

  test("at a page start inside a record: the continuation is skipped", () => {
    const spanning = wal.records.filter((record) => Math.floor(record.startLsn / PAGE) !== Math.floor((record.endLsn - 1) / PAGE))
    expect(spanning.length).toBeGreaterThan(3)
    for (const record of spanning) {
      const pageLsn = record.startLsn - (record.startLsn % PAGE) + PAGE
      const decoder = makeDecoder({ startLsn: Lsn(pageLsn) })
      const records = decodeAll(decoder, wal.bytes.subarray(pageLsn - start), [1000])
      const expected = wal.records.filter((candidate) => candidate.startLsn >= pageLsn)
      expect(records.map((found) => found.startLsn)).toEqual(expected.map((candidate) => candidate.startLsn))
      expect(decoder.error).toBeUndefined()
    }
  })

  test("at a record start or a page start with no continuation", () => {
    for (const record of wal.records.slice(3, 8)) {
      const decoder = makeDecoder({ startLsn: record.startLsn })
      const records = decodeAll(decoder, wal.bytes.subarray(record.startLsn - start))
      expect(records[0]!.startLsn).toBe(record.startLsn)
      expect(records).toHaveLength(wal.records.filter((candidate) => candidate.startLsn >= record.startLsn).length)
    }
  })

  test("invalid starts and settings are refused", () => {
    expect(isValidDecoderStart(SEGMENT, SEGMENT)).toBe(true)
    expect(isValidDecoderStart(SEGMENT + 24, SEGMENT)).toBe(false)
    expect(isValidDecoderStart(SEGMENT + 40, SEGMENT)).toBe(true)
    expect(isValidDecoderStart(SEGMENT + PAGE + 16, SEGMENT)).toBe(false)
    expect(isValidDecoderStart(SEGMENT + PAGE + 24, SEGMENT)).toBe(true)
    expect(isValidDecoderStart(SEGMENT + PAGE + 28, SEGMENT)).toBe(false)
    expect(isValidDecoderStart(-8, SEGMENT)).toBe(false)
    expect(Result.isFailure(WalDecoder.make({ startLsn: Lsn(SEGMENT + 3), segmentSizeBytes: SEGMENT }))).toBe(true)
    expect(Result.isFailure(WalDecoder.make({ startLsn: Lsn(SEGMENT), segmentSizeBytes: 1000 }))).toBe(true)
    expect(Result.isFailure(WalDecoder.make({ startLsn: Lsn(SEGMENT), segmentSizeBytes: SEGMENT, recordSizeMaxBytes: 10 }))).toBe(true)
  })
})

describe("XLP_FIRST_IS_OVERWRITE_CONTRECORD", () => {
  test("an aborted record is dropped and reading goes on with the record that overwrote it", () => {
    const start = Lsn(SEGMENT + SIZE_OF_XLOG_LONG_PHD_BYTES)
    const original = generateWal({ startLsn: start, segmentSizeBytes: SEGMENT, steps: [{ kind: "message", messageBytes: 100 }, { kind: "message", messageBytes: 3 * PAGE }] })
    const aborted = original.records[1]!
    const pageLsn = aborted.startLsn - (aborted.startLsn % PAGE) + PAGE
    // After a crash the new primary writes from the page where the continuation was lost.
    const rewritten = generateWal({ startLsn: Lsn(pageLsn), segmentSizeBytes: SEGMENT, steps: [{ kind: "message", messageBytes: 50 }], prevLsn: original.records[0]!.startLsn })
    const header = new DataView(rewritten.bytes.buffer)
    header.setUint16(2, header.getUint16(2, true) | XLP_FIRST_IS_OVERWRITE_CONTRECORD, true)
    const bytes = new Uint8Array(pageLsn - start + rewritten.bytes.length)
    bytes.set(original.bytes.subarray(0, pageLsn - start))
    bytes.set(rewritten.bytes, pageLsn - start)
    const decoder = makeDecoder({ startLsn: start })
    const records = decodeAll(decoder, bytes, [500])
    expect(decoder.error).toBeUndefined()
    expect(records.map((record) => record.startLsn)).toEqual([original.records[0]!.startLsn, rewritten.records[0]!.startLsn])
  })
})
