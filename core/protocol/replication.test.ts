// Goal: the CopyData sub-messages of physical replication are byte-exact with PostgreSQL 15
// (pg-replication.md §4) and Neon's 'z' (reference §9), and decoding is total: garbage gives a
// MalformedMessage, never a throw; LSNs above 2^53-1 are refused. Method: the captured byte
// fixtures; fast-check round trips; every truncation; random bytes and bit flips; the one-
// allocation XLogData frame checked against CopyData framing of the plain payload.
import fc from "fast-check"
import { Result } from "effect"
import { describe, expect, test } from "vitest"
import { InvariantViolation, U53_MAX } from "../assert.js"
import { Lsn } from "../wal/lsn.js"
import { EMPTY_PAGESERVER_FEEDBACK, encodePageserverFeedback, type PageserverFeedback } from "./pageserver-feedback.js"
import { encodeCopyData, PgBackendReader } from "./pg-wire.js"
import {
  decodeStandbyMessage,
  decodeWalSenderMessage,
  encodeHotStandbyFeedback,
  encodeKeepalive,
  encodeNeonFeedback,
  encodeStandbyStatusUpdate,
  encodeXLogData,
  encodeXLogDataFrame,
  MalformedMessage,
  pgTimestampUs,
  type StandbyMessage,
  unixTimeUsOfPgTimestamp,
  type WalSenderMessage,
  writeXLogDataFrameHeader,
  XLOG_DATA_FRAME_HEADER_BYTES
} from "./replication.js"

const hex = (...parts: string[]) => Uint8Array.from(Buffer.from(parts.join("").replace(/\s+/g, ""), "hex"))
const toHex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex")

describe("fixtures from pg-replication.md §4", () => {
  test("XLogData header", () => {
    const wal = hex("10d10600")
    const payload = hex("77 0000000005000000 000000000503a600 000303dc455a0f0d", "10d10600")
    const message = Result.getOrThrow(decodeWalSenderMessage(payload))
    expect(message).toEqual({ _tag: "XLogData", dataStartLsn: 0x5000000, walEndLsn: 0x503a600, sendTimeUs: 0x000303dc455a0f0d, data: wal })
    expect(toHex(encodeXLogData({ dataStartLsn: Lsn(0x5000000), walEndLsn: Lsn(0x503a600), sendTimeUs: 0x000303dc455a0f0d, data: wal }))).toBe(toHex(payload))
  })

  test("primary keepalive (18 bytes)", () => {
    const payload = hex("6b 000000000a0050e8 000303dc6f4e214b 01")
    const message = { _tag: "PrimaryKeepalive", walEndLsn: Lsn(0xa0050e8), sendTimeUs: 0x000303dc6f4e214b, replyRequested: true } as const
    expect(Result.getOrThrow(decodeWalSenderMessage(payload))).toEqual(message)
    expect(toHex(encodeKeepalive(message))).toBe(toHex(payload))
  })

  test("standby status update (34 bytes)", () => {
    const payload = hex("72 000000000a003020 000000000a003020 000000000a000000 000303dc6db783e3 00")
    const message = {
      _tag: "StandbyStatusUpdate", writeLsn: Lsn(0xa003020), flushLsn: Lsn(0xa003020), applyLsn: Lsn(0xa000000),
      sendTimeUs: 0x000303dc6db783e3, replyRequested: false
    } as const
    expect(Result.getOrThrow(decodeStandbyMessage(payload))).toEqual(message)
    expect(toHex(encodeStandbyStatusUpdate(message))).toBe(toHex(payload))
  })

  test("hot standby feedback (25 bytes, xmin 756)", () => {
    const payload = hex("68 000303dc6d98d7d8 000002f4 00000000 00000000 00000000")
    const message = { _tag: "HotStandbyFeedback", sendTimeUs: 0x000303dc6d98d7d8, xmin: 756n, catalogXmin: 0n } as const
    expect(Result.getOrThrow(decodeStandbyMessage(payload))).toEqual(message)
    expect(toHex(encodeHotStandbyFeedback(message))).toBe(toHex(payload))
  })

  test("hot standby feedback epochs become the high half of a full transaction id", () => {
    const payload = hex("68 0000000000000001 000002f4 00000003 00000010 00000002")
    expect(Result.getOrThrow(decodeStandbyMessage(payload))).toMatchObject({ xmin: (3n << 32n) | 756n, catalogXmin: (2n << 32n) | 16n })
  })

  test("Neon's 'z': tag, u64 length, pageserver feedback", () => {
    const feedback: PageserverFeedback = { ...EMPTY_PAGESERVER_FEEDBACK, lastReceivedLsn: Lsn(0x16b5a50), remoteConsistentLsn: Lsn(0x1000000) }
    const body = encodePageserverFeedback(feedback)
    const payload = encodeNeonFeedback(feedback)
    expect(toHex(payload)).toBe("7a" + body.byteLength.toString(16).padStart(16, "0") + toHex(body))
    expect(Result.getOrThrow(decodeStandbyMessage(payload))).toEqual({ _tag: "NeonFeedback", feedback })
    // As Neon: the length is skipped unread, and bytes after the feedback are ignored.
    const odd = hex("7a ffffffffffffffff", toHex(body), "0102")
    expect(Result.getOrThrow(decodeStandbyMessage(odd))).toEqual({ _tag: "NeonFeedback", feedback })
  })

  test("timestamps: Postgres' epoch is 2000-01-01", () => {
    expect(pgTimestampUs(946_684_800_000_000)).toBe(0)
    expect(unixTimeUsOfPgTimestamp(pgTimestampUs(1_700_000_000_000_000))).toBe(1_700_000_000_000_000)
  })
})

describe("the XLogData frame", () => {
  test("equals CopyData framing of the payload, and reads back as one CopyData", () => {
    fc.assert(fc.property(fc.maxSafeNat(), fc.maxSafeNat(), fc.maxSafeInteger(), fc.uint8Array({ maxLength: 2000 }), (start, walEnd, sendTimeUs, data) => {
      const dataStartLsn = Lsn(Math.min(start, U53_MAX - data.byteLength))
      const message = { dataStartLsn, walEndLsn: Lsn(walEnd), sendTimeUs, data }
      const frame = encodeXLogDataFrame(message)
      expect(toHex(frame)).toBe(toHex(encodeCopyData(encodeXLogData(message))))
      const reader = new PgBackendReader()
      reader.push(frame)
      const copy = Result.getOrThrow(reader.next())
      expect(copy?._tag).toBe("CopyData")
      if (copy?._tag !== "CopyData") return
      expect(Result.getOrThrow(decodeWalSenderMessage(copy.data))).toEqual({ _tag: "XLogData", ...message })
    }))
  })

  test("a sender can read WAL into the frame and write the headers in place", () => {
    const data = Uint8Array.from({ length: 128 * 1024 }, (_, i) => i % 253)
    const frame = new Uint8Array(XLOG_DATA_FRAME_HEADER_BYTES + data.byteLength)
    frame.set(data, XLOG_DATA_FRAME_HEADER_BYTES)
    const header = { dataStartLsn: Lsn(0x5ffa000), walEndLsn: Lsn(0x6000000), sendTimeUs: 1 }
    writeXLogDataFrameHeader(frame, header)
    expect(toHex(frame)).toBe(toHex(encodeXLogDataFrame({ ...header, data })))
  })

  test("an XLogData whose end passes 2^53-1 is refused both ways", () => {
    expect(() => encodeXLogDataFrame({ dataStartLsn: Lsn(U53_MAX), walEndLsn: Lsn(0), sendTimeUs: 0, data: new Uint8Array(1) })).toThrow(InvariantViolation)
    const payload = hex("77 001fffffffffffff 0000000000000000 0000000000000000 00")
    expect(Result.isFailure(decodeWalSenderMessage(payload))).toBe(true)
  })
})

// ---- properties ----

const arbLsn = fc.maxSafeNat().map(Lsn)
const arbU64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })

const arbWalSender: fc.Arbitrary<WalSenderMessage> = fc.oneof(
  fc.record({ dataStartLsn: fc.nat({ max: 2 ** 40 }).map(Lsn), walEndLsn: arbLsn, sendTimeUs: fc.maxSafeInteger(), data: fc.uint8Array({ maxLength: 100 }) })
    .map((m) => ({ _tag: "XLogData", ...m }) as const),
  fc.record({ walEndLsn: arbLsn, sendTimeUs: fc.maxSafeInteger(), replyRequested: fc.boolean() }).map((m) => ({ _tag: "PrimaryKeepalive", ...m }) as const)
)

const arbFeedback: fc.Arbitrary<PageserverFeedback> = fc.record({
  currentTimelineSizeBytes: fc.maxSafeNat(),
  lastReceivedLsn: arbLsn,
  diskConsistentLsn: arbLsn,
  remoteConsistentLsn: arbLsn,
  replyTimeUs: fc.maxSafeInteger(),
  shardNumber: fc.nat({ max: 0xffff_ffff }),
  corruptionDetected: fc.boolean()
})

const arbStandby: fc.Arbitrary<StandbyMessage> = fc.oneof(
  fc.record({ writeLsn: arbLsn, flushLsn: arbLsn, applyLsn: arbLsn, sendTimeUs: fc.maxSafeInteger(), replyRequested: fc.boolean() })
    .map((m) => ({ _tag: "StandbyStatusUpdate", ...m }) as const),
  fc.record({ sendTimeUs: fc.maxSafeInteger(), xmin: arbU64, catalogXmin: arbU64 }).map((m) => ({ _tag: "HotStandbyFeedback", ...m }) as const),
  arbFeedback.map((feedback) => ({ _tag: "NeonFeedback", feedback }) as const)
)

function encodeWalSender(message: WalSenderMessage): Uint8Array {
  return message._tag === "XLogData" ? encodeXLogData(message) : encodeKeepalive(message)
}

function encodeStandby(message: StandbyMessage): Uint8Array {
  switch (message._tag) {
    case "StandbyStatusUpdate":
      return encodeStandbyStatusUpdate(message)
    case "HotStandbyFeedback":
      return encodeHotStandbyFeedback(message)
    case "NeonFeedback":
      return encodeNeonFeedback(message.feedback)
  }
}

/** Decoding is total; whatever decodes re-encodes to a message that decodes the same. */
function checkTotal<M>(bytes: Uint8Array, decode: (bytes: Uint8Array) => Result.Result<M, MalformedMessage>, encode: (message: M) => Uint8Array): void {
  const result = decode(bytes)
  if (Result.isFailure(result)) {
    expect(result.failure).toBeInstanceOf(MalformedMessage)
    return
  }
  expect(decode(encode(result.success))).toEqual(result)
}

describe("properties", () => {
  test("round trips", () => {
    fc.assert(fc.property(arbWalSender, (message) => {
      expect(Result.getOrThrow(decodeWalSenderMessage(encodeWalSender(message)))).toEqual(message)
    }))
    fc.assert(fc.property(arbStandby, (message) => {
      expect(Result.getOrThrow(decodeStandbyMessage(encodeStandby(message)))).toEqual(message)
    }))
  })

  test("every truncation of a fixed-size message is refused, and so is a trailing byte", () => {
    fc.assert(fc.property(fc.oneof(
      arbWalSender.filter((m) => m._tag === "PrimaryKeepalive").map((m) => ({ bytes: encodeWalSender(m), decode: decodeWalSenderMessage as (b: Uint8Array) => Result.Result<unknown, MalformedMessage> })),
      arbStandby.filter((m) => m._tag !== "NeonFeedback").map((m) => ({ bytes: encodeStandby(m), decode: decodeStandbyMessage as (b: Uint8Array) => Result.Result<unknown, MalformedMessage> }))
    ), ({ bytes, decode }) => {
      for (let length = 0; length < bytes.byteLength; length++) expect(Result.isFailure(decode(bytes.subarray(0, length)))).toBe(true)
      expect(Result.isFailure(decode(Uint8Array.from([...bytes, 0])))).toBe(true)
    }))
  })

  test("LSNs above 2^53-1 are refused", () => {
    const big = "0020000000000000"
    expect(Result.isFailure(decodeWalSenderMessage(hex("6b", big, "0000000000000000 00")))).toBe(true)
    expect(Result.isFailure(decodeWalSenderMessage(hex("77", big, "0000000000000000 0000000000000000")))).toBe(true)
    expect(Result.isFailure(decodeStandbyMessage(hex("72 0000000000000000", big, "0000000000000000 0000000000000000 00")))).toBe(true)
  })

  test("random bytes and bit flips never throw", () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
      checkTotal(bytes, decodeWalSenderMessage, encodeWalSender)
      checkTotal(bytes, decodeStandbyMessage, encodeStandby)
    }))
    fc.assert(fc.property(fc.constantFrom(0x77, 0x6b, 0x72, 0x68, 0x7a), fc.uint8Array({ maxLength: 120 }), (tag, rest) => {
      const bytes = Uint8Array.from([tag, ...rest])
      checkTotal(bytes, decodeWalSenderMessage, encodeWalSender)
      checkTotal(bytes, decodeStandbyMessage, encodeStandby)
    }))
    fc.assert(fc.property(arbStandby, fc.nat(), (message, flip) => {
      const bytes = encodeStandby(message)
      bytes[flip % bytes.byteLength]! ^= 1 << (flip % 8)
      checkTotal(bytes, decodeStandbyMessage, encodeStandby)
    }))
  })

  test("unknown tags and empty payloads are typed errors", () => {
    expect(Result.isFailure(decodeWalSenderMessage(new Uint8Array(0)))).toBe(true)
    expect(Result.isFailure(decodeStandbyMessage(new Uint8Array(0)))).toBe(true)
    expect(Result.isFailure(decodeWalSenderMessage(hex("72")))).toBe(true) // a standby message sent the wrong way
    expect(Result.isFailure(decodeStandbyMessage(hex("77")))).toBe(true)
    expect(Result.isFailure(decodeWalSenderMessage(hex("6b 0000000000000000 0000000000000000 02")))).toBe(true) // replyRequested 2
  })
})
