// Goal: LSN text and segment names round-trip exactly and refuse garbage with a typed error,
// never a throw. Method: fast-check over the whole 2^53 range and over random strings, plus
// names checked against PostgreSQL's (XLogFileName) by hand.
import fc from "fast-check"
import { Result } from "effect"
import { describe, expect, test } from "vitest"
import { U53_MAX } from "../assert.js"
import {
  formatLsn,
  isValidSegmentSize,
  lsnFromBigInt,
  parseLsn,
  parseSegmentFileName,
  segmentFileName,
  segmentNoOf,
  segmentStartLsn
} from "./lsn.js"

const SEGMENT_SIZES = [1, 2, 4, 16, 64, 256, 1024].map((mib) => mib * 1024 * 1024)

describe("LSN text", () => {
  test("X/Y round-trips for every LSN up to 2^53-1", () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: U53_MAX }), (lsn) => {
      const parsed = parseLsn(formatLsn(lsn))
      return Result.isSuccess(parsed) && parsed.success === lsn
    }))
  })

  test("known values", () => {
    expect(formatLsn(0x1_6b5a50)).toBe("0/16B5A50")
    expect(formatLsn(0x2_0000_0028)).toBe("2/28")
    expect(Result.getOrThrow(parseLsn("2/28"))).toBe(0x2_0000_0028)
    expect(Result.getOrThrow(parseLsn("1fffff/ffffffff"))).toBe(U53_MAX)
  })

  test("garbage is a typed InvalidLsn, never a throw", () => {
    fc.assert(fc.property(fc.string({ maxLength: 24 }), (text) => {
      const parsed = parseLsn(text)
      if (Result.isFailure(parsed)) return parsed.failure._tag === "InvalidLsn"
      // Only X/Y hex forms parse, and what parses prints back to the same value.
      return /^[0-9A-Fa-f]{1,8}\/[0-9A-Fa-f]{1,8}$/.test(text) && Result.getOrThrow(parseLsn(formatLsn(parsed.success))) === parsed.success
    }))
    for (const bad of ["", "0", "/", "0/", "/0", "g/0", "0/g", "123456789/0", "0/123456789", "200000/0", " 0/1", "0/1 "]) {
      const parsed = parseLsn(bad)
      expect(Result.isFailure(parsed), bad).toBe(true)
    }
  })

  test("u64 values above 2^53-1 are refused", () => {
    expect(Result.isSuccess(lsnFromBigInt(BigInt(U53_MAX)))).toBe(true)
    expect(Result.isFailure(lsnFromBigInt(BigInt(U53_MAX) + 1n))).toBe(true)
    expect(Result.isFailure(lsnFromBigInt(-1n))).toBe(true)
  })
})

describe("segment file names", () => {
  test("as PostgreSQL names them (XLogFileName)", () => {
    const sixteen = 16 * 1024 * 1024
    expect(segmentFileName(1, 1, sixteen)).toBe("000000010000000000000001")
    expect(segmentFileName(1, 0x100, sixteen)).toBe("000000010000000100000000")
    expect(segmentFileName(1, 0x1ff, sixteen)).toBe("0000000100000001000000FF")
    expect(segmentFileName(2, 5, 1024 * 1024 * 1024)).toBe("000000020000000100000001")
  })

  test("names round-trip for every segment size, with and without .partial", () => {
    fc.assert(fc.property(fc.constantFrom(...SEGMENT_SIZES), fc.integer({ min: 0, max: U53_MAX }), fc.integer({ min: 1, max: 0xffff_ffff }), fc.boolean(), (size, lsn, timelineId, partial) => {
      const segmentNo = segmentNoOf(lsn, size)
      const name = segmentFileName(timelineId, segmentNo, size) + (partial ? ".partial" : "")
      const parsed = parseSegmentFileName(name, size)
      return parsed !== undefined && parsed.segmentNo === segmentNo && parsed.timelineId === timelineId && parsed.partial === partial &&
        segmentStartLsn(segmentNo, size) <= lsn && lsn < segmentStartLsn(segmentNo, size) + size
    }))
  })

  test("other names are not segments", () => {
    fc.assert(fc.property(fc.string({ maxLength: 40 }), (name) => {
      const parsed = parseSegmentFileName(name, 16 * 1024 * 1024)
      return parsed === undefined || /^[0-9A-F]{24}(\.partial)?$/.test(name)
    }))
    for (const bad of ["waltmp", "000000010000000000000001.tmp", "00000001000000000000000g", "0000000100000000000001", "000000010000000000000100"]) {
      expect(parseSegmentFileName(bad, 16 * 1024 * 1024), bad).toBeUndefined()
    }
  })

  test("segment sizes: powers of two from 1 MiB to 1 GiB", () => {
    for (const size of SEGMENT_SIZES) expect(isValidSegmentSize(size)).toBe(true)
    for (const size of [0, 512 * 1024, 3 * 1024 * 1024, 2 * 1024 * 1024 * 1024, 16.5 * 1024 * 1024]) expect(isValidSegmentSize(size)).toBe(false)
  })
})
