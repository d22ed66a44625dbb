// Goal: pageserver feedback is read and written exactly as Neon's pageserver_feedback.rs and
// walproposer's ParsePageserverFeedbackMessage do, and garbage never throws.
// Method: a byte fixture written by hand from the reference's key/value layout; fast-check round
// trips; hand-made variants (aliases, unknown keys, repeated keys, wrong lengths); every
// truncation of a valid encoding; random bytes and bit flips.
import fc from "fast-check"
import { Result } from "effect"
import { describe, expect, test } from "vitest"
import { U53_MAX } from "../assert.js"
import { Lsn } from "../wal/lsn.js"
import { ByteWriter } from "./bytes.js"
import {
  decodePageserverFeedback,
  EMPTY_PAGESERVER_FEEDBACK,
  encodePageserverFeedback,
  type PageserverFeedback
} from "./pageserver-feedback.js"

const hex = (...parts: string[]) => Uint8Array.from(Buffer.from(parts.join("").replace(/\s+/g, ""), "hex"))
const cstr = (text: string) => Buffer.from(text + "\0", "latin1").toString("hex")

const arbFeedback: fc.Arbitrary<PageserverFeedback> = fc.record({
  currentTimelineSizeBytes: fc.maxSafeNat(),
  lastReceivedLsn: fc.maxSafeNat().map(Lsn),
  diskConsistentLsn: fc.maxSafeNat().map(Lsn),
  remoteConsistentLsn: fc.maxSafeNat().map(Lsn),
  replyTimeUs: fc.maxSafeInteger(),
  shardNumber: fc.oneof(fc.constant(0), fc.maxSafeNat().map((n) => n % 0x1_0000_0000)),
  corruptionDetected: fc.boolean()
})

const FIXTURE: PageserverFeedback = {
  currentTimelineSizeBytes: 12345678,
  lastReceivedLsn: Lsn(0x16b5a50),
  diskConsistentLsn: Lsn(0x16b0000),
  remoteConsistentLsn: Lsn(0x1000000),
  replyTimeUs: 100_000_000_000_000,
  shardNumber: 3,
  corruptionDetected: true
}

const FIXTURE_BYTES = hex(
  "07", // seven keys
  cstr("current_timeline_size"), "00000008", "0000000000bc614e",
  cstr("ps_writelsn"), "00000008", "00000000016b5a50",
  cstr("ps_flushlsn"), "00000008", "00000000016b0000",
  cstr("ps_applylsn"), "00000008", "0000000001000000",
  cstr("ps_replytime"), "00000008", "00005af3107a4000",
  cstr("shard_number"), "00000004", "00000003",
  cstr("corruption_detected"), "00000001", "01"
)

describe("pageserver feedback", () => {
  test("matches a hand-written fixture in both directions", () => {
    expect(Buffer.from(encodePageserverFeedback(FIXTURE)).toString("hex")).toBe(Buffer.from(FIXTURE_BYTES).toString("hex"))
    expect(Result.getOrThrow(decodePageserverFeedback(FIXTURE_BYTES))).toEqual(FIXTURE)
  })

  test("shard_number 0 and corruption false are not sent", () => {
    const bytes = encodePageserverFeedback(EMPTY_PAGESERVER_FEEDBACK)
    expect(bytes[0]).toBe(5)
    expect(Buffer.from(bytes).includes("shard_number")).toBe(false)
    expect(Buffer.from(bytes).includes("corruption_detected")).toBe(false)
  })

  test("round-trips", () => {
    fc.assert(fc.property(arbFeedback, (feedback) => {
      expect(Result.getOrThrow(decodePageserverFeedback(encodePageserverFeedback(feedback)))).toEqual(feedback)
    }))
  })

  test("accepts walproposer's aliases, skips unknown keys, and the last repeated key wins", () => {
    const bytes = hex(
      "05",
      cstr("last_received_lsn"), "00000008", "0000000000000010",
      cstr("some_future_key"), "00000003", "aabbcc",
      cstr("disk_consistent_lsn"), "00000008", "0000000000000020",
      cstr("replytime"), "00000008", "fffffffffffffffe", // -2 µs: before 2000-01-01
      cstr("disk_consistent_lsn"), "00000008", "0000000000000030"
    )
    expect(Result.getOrThrow(decodePageserverFeedback(bytes))).toEqual({
      ...EMPTY_PAGESERVER_FEEDBACK,
      lastReceivedLsn: Lsn(0x10),
      diskConsistentLsn: Lsn(0x30),
      replyTimeUs: -2
    })
  })

  test("a known key with the wrong length is refused", () => {
    const bytes = hex("01", cstr("ps_writelsn"), "00000004", "00000010")
    const result = decodePageserverFeedback(bytes, "a")
    expect(Result.isFailure(result) && result.failure.reason).toBe("feedback ps_writelsn has length 4, expected 8")
    expect(Result.isFailure(result) && result.failure._tag).toBe("MalformedMessage")
  })

  test("an unknown key with a negative or absurd length is refused", () => {
    for (const length of ["ffffffff", "7fffffff"]) {
      const result = decodePageserverFeedback(hex("01", cstr("x"), length))
      expect(Result.isFailure(result) && result.failure.reason).toMatch(/value length .* outside/)
    }
  })

  test("LSNs above 2^53-1 are refused", () => {
    const bytes = new ByteWriter().u8(1).cstring("ps_applylsn").i32BE(8).u64BE(BigInt(U53_MAX) + 1n).finish()
    const result = decodePageserverFeedback(bytes)
    expect(Result.isFailure(result) && result.failure.reason).toMatch(/ps_applylsn .* above 2\^53-1/)
  })

  test("trailing bytes after a standalone feedback are refused", () => {
    const bytes = new Uint8Array([...encodePageserverFeedback(FIXTURE), 0])
    expect(Result.isFailure(decodePageserverFeedback(bytes))).toBe(true)
  })

  test("every truncation of a valid encoding is a typed error", () => {
    fc.assert(fc.property(arbFeedback, (feedback) => {
      const bytes = encodePageserverFeedback(feedback)
      for (let length = 0; length < bytes.byteLength; length++) {
        const result = decodePageserverFeedback(bytes.subarray(0, length))
        expect(Result.isFailure(result) && result.failure._tag).toBe("MalformedMessage")
      }
    }), { numRuns: 50 })
  })

  test("random bytes and bit flips never throw", () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
      decodePageserverFeedback(bytes)
    }))
    fc.assert(fc.property(arbFeedback, fc.nat(), (feedback, bit) => {
      const bytes = encodePageserverFeedback(feedback).slice()
      const at = bit % (bytes.byteLength * 8)
      bytes[at >> 3] = bytes[at >> 3]! ^ (1 << (at & 7))
      const result = decodePageserverFeedback(bytes)
      // Whatever decodes must encode again without tripping an assertion.
      if (Result.isSuccess(result)) encodePageserverFeedback(result.success)
    }))
  })
})
