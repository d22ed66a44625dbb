// Goal: page headers encode and decode exactly, reject nothing silently and never throw on
// garbage; the checks match XLogReaderValidatePageHeader. Method: fast-check round trips and
// random bytes, plus one header from a real PostgreSQL 15 segment (see record.test.ts).
import { Result } from "effect"
import fc from "fast-check"
import { describe, expect, test } from "vitest"
import { Lsn } from "./lsn.js"
import {
  checkPageHeader,
  decodePageHeader,
  encodePageHeader,
  PG_MAJOR_VERSIONS,
  pgMajorVersionOf,
  pgMajorVersionOfMagic,
  SIZE_OF_XLOG_LONG_PHD_BYTES,
  SIZE_OF_XLOG_SHORT_PHD_BYTES,
  XLP_FIRST_IS_CONTRECORD,
  XLP_LONG_HEADER,
  xlogPageMagic,
  type PageExpectation,
  type XLogPageHeader
} from "./page.js"
import { REAL_PG15_SEGMENT_START, REAL_PG15_SYSTEM_ID } from "./real-wal.fixture.js"

const SEGMENT = 16 * 1024 * 1024

const arbHeader: fc.Arbitrary<XLogPageHeader> = fc.record({
  magic: fc.integer({ min: 0, max: 0xffff }),
  flags: fc.integer({ min: 0, max: 0xffff }),
  timelineId: fc.integer({ min: 0, max: 0xffffffff }),
  pageLsn: fc.maxSafeNat(),
  remainingLengthBytes: fc.integer({ min: 0, max: 0xffffffff }),
  isLong: fc.boolean(),
  systemId: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
  segmentSizeBytes: fc.integer({ min: 0, max: 0xffffffff }),
  xlogBlockSizeBytes: fc.integer({ min: 0, max: 0xffffffff })
}).map((r) => ({
  magic: r.magic,
  info: r.isLong ? r.flags | XLP_LONG_HEADER : r.flags & ~XLP_LONG_HEADER,
  timelineId: r.timelineId,
  pageLsn: Lsn(r.pageLsn),
  remainingLengthBytes: r.remainingLengthBytes,
  long: r.isLong ? { systemId: r.systemId, segmentSizeBytes: r.segmentSizeBytes, xlogBlockSizeBytes: r.xlogBlockSizeBytes } : undefined
}))

describe("page header codec", () => {
  test("round trip", () => {
    fc.assert(fc.property(arbHeader, (header) => {
      const bytes = encodePageHeader(header)
      expect(bytes.length).toBe(header.long === undefined ? SIZE_OF_XLOG_SHORT_PHD_BYTES : SIZE_OF_XLOG_LONG_PHD_BYTES)
      expect(Result.getOrThrow(decodePageHeader(bytes))).toEqual(header)
    }))
  })

  test("garbage in: a typed result, never a throw", () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 64 }), fc.integer({ min: -2, max: 70 }), (bytes, offset) => {
      const result = decodePageHeader(bytes, offset)
      if (Result.isFailure(result)) expect(result.failure._tag).toBe("PageHeaderError")
    }))
    expect(Result.isFailure(decodePageHeader(new Uint8Array(23)))).toBe(true)
    const longFlagOnly = new Uint8Array(24)
    longFlagOnly[2] = XLP_LONG_HEADER
    const truncated = decodePageHeader(longFlagOnly)
    expect(Result.isFailure(truncated) && truncated.failure.reason).toBe("Truncated")
  })

  test("a page address above 2^53-1 is refused", () => {
    const bytes = new Uint8Array(24)
    bytes.fill(0xff, 8, 16)
    const result = decodePageHeader(bytes)
    expect(Result.isFailure(result) && result.failure.reason).toBe("PageAddressTooLarge")
  })

  test("a real PostgreSQL 15 long header", () => {
    const header = Result.getOrThrow(decodePageHeader(REAL_PG15_SEGMENT_START))
    expect(header).toEqual({
      magic: 0xd110,
      info: XLP_LONG_HEADER,
      timelineId: 1,
      pageLsn: Lsn(0x1000000),
      remainingLengthBytes: 0,
      long: { systemId: REAL_PG15_SYSTEM_ID, segmentSizeBytes: SEGMENT, xlogBlockSizeBytes: 8192 }
    })
    expect(encodePageHeader(header)).toEqual(REAL_PG15_SEGMENT_START.subarray(0, 40))
  })
})

describe("versions", () => {
  test("magic per major version", () => {
    expect(PG_MAJOR_VERSIONS.map(xlogPageMagic)).toEqual([0xd10d, 0xd110, 0xd113, 0xd116])
    for (const version of PG_MAJOR_VERSIONS) expect(pgMajorVersionOfMagic(xlogPageMagic(version))).toBe(version)
    expect(pgMajorVersionOfMagic(0xd106)).toBeUndefined()
    expect(pgMajorVersionOf(150004)).toBe(15)
    expect(pgMajorVersionOf(17)).toBe(17)
    expect(pgMajorVersionOf(130000)).toBeUndefined()
    expect(pgMajorVersionOf(180000)).toBeUndefined()
  })
})

describe("checkPageHeader", () => {
  const good: XLogPageHeader = {
    magic: 0xd110,
    info: XLP_LONG_HEADER,
    timelineId: 1,
    pageLsn: Lsn(SEGMENT),
    remainingLengthBytes: 0,
    long: { systemId: 42n, segmentSizeBytes: SEGMENT, xlogBlockSizeBytes: 8192 }
  }
  const expectation: PageExpectation = { pageLsn: SEGMENT, segmentSizeBytes: SEGMENT, magic: 0xd110, systemId: 42n, timelineId: 1 }

  test("accepts a matching header, and any supported magic when none is required", () => {
    expect(checkPageHeader(good, expectation)).toBeUndefined()
    expect(checkPageHeader({ ...good, magic: 0xd116 }, { ...expectation, magic: undefined })).toBeUndefined()
    expect(checkPageHeader({ ...good, long: { ...good.long!, systemId: 7n } }, { ...expectation, systemId: undefined })).toBeUndefined()
  })

  test("names each problem", () => {
    const reason = (header: XLogPageHeader, expected: PageExpectation = expectation) => checkPageHeader(header, expected)?.reason
    expect(reason({ ...good, magic: 0xd113 })).toBe("BadMagic")
    expect(reason({ ...good, magic: 0x1234 }, { ...expectation, magic: undefined })).toBe("BadMagic")
    expect(reason({ ...good, info: good.info | 0x10 })).toBe("BadPageInfo")
    expect(reason({ ...good, info: 0, long: undefined })).toBe("BadPageInfo")
    expect(reason({ ...good, long: { ...good.long!, systemId: 43n } })).toBe("BadSystemId")
    expect(reason({ ...good, long: { ...good.long!, segmentSizeBytes: 2 * SEGMENT } })).toBe("BadSegmentSize")
    expect(reason({ ...good, long: { ...good.long!, xlogBlockSizeBytes: 16384 } })).toBe("BadSegmentSize")
    expect(reason({ ...good, pageLsn: Lsn(0) })).toBe("BadPageAddress")
    expect(reason({ ...good, timelineId: 2 })).toBe("BadTimeline")
    const short: XLogPageHeader = { ...good, info: XLP_FIRST_IS_CONTRECORD, long: undefined, pageLsn: Lsn(SEGMENT + 8192), remainingLengthBytes: 10 }
    expect(reason(short, { ...expectation, pageLsn: SEGMENT + 8192 })).toBeUndefined()
    expect(reason(short, { ...expectation, pageLsn: SEGMENT + 16384 })).toBe("BadPageAddress")
  })
})
