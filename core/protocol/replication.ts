import { Result } from "effect"
import { assert, U53_MAX } from "../assert.js"
import { Lsn } from "../wal/lsn.js"
import { ByteReader, ByteWriter, MalformedMessage } from "./bytes.js"
import { MAX_SEND_SIZE_BYTES } from "./consensus.js"
import { type PageserverFeedback, readPageserverFeedback, writePageserverFeedback } from "./pageserver-feedback.js"
import { COPY_DATA_HEADER_BYTES, PG_MESSAGE_LENGTH_MAX_BYTES, writeCopyDataHeader } from "./pg-wire.js"

export { MalformedMessage } from "./bytes.js"

/**
 * The CopyData sub-messages of physical streaming replication (pg-replication.md §4; Neon
 * `send_wal.rs`, reference §9). The first byte of a CopyData payload is the sub-message tag;
 * the rest is big-endian. Times are µs since 2000-01-01 00:00:00 UTC (Postgres' TimestampTz).
 *
 *   sender → receiver:  'w' XLogData, 'k' primary keepalive
 *   receiver → sender:  'r' standby status update, 'h' hot standby feedback,
 *                       'z' Neon's pageserver feedback (tag, u64 length, then the feedback)
 *
 * Fixed-size messages must be exactly their size: Postgres' walreceiver refuses a keepalive of
 * another length, and Neon's safekeeper deserializes 'r' and 'h' rejecting trailing bytes.
 * LSNs are refused above 2^53−1 (DESIGN.md §4), as is an XLogData whose end would be.
 */

/** 'w', dataStart, walEnd, sendTime: what precedes the WAL in an XLogData payload. */
export const XLOG_DATA_HEADER_BYTES = 1 + 8 + 8 + 8
/** A whole XLogData frame before its WAL: CopyData's 'd' and length, then the XLogData header. */
export const XLOG_DATA_FRAME_HEADER_BYTES = COPY_DATA_HEADER_BYTES + XLOG_DATA_HEADER_BYTES
/** 'k', walEnd, sendTime, replyRequested. */
export const PRIMARY_KEEPALIVE_BYTES = 1 + 8 + 8 + 1
/** 'r', write, flush, apply, sendTime, replyRequested. */
export const STANDBY_STATUS_UPDATE_BYTES = 1 + 8 * 4 + 1
/** 'h', sendTime, xmin, xmin epoch, catalog_xmin, catalog_xmin epoch. */
export const HOT_STANDBY_FEEDBACK_BYTES = 1 + 8 + 4 * 4
/** 'z' and the u64 length Neon's pageserver puts before the feedback (send_wal.rs skips 9 bytes). */
export const NEON_FEEDBACK_HEADER_BYTES = 1 + 8

assert(
  4 + XLOG_DATA_HEADER_BYTES + MAX_SEND_SIZE_BYTES <= PG_MESSAGE_LENGTH_MAX_BYTES,
  "an XLogData frame carrying MAX_SEND_SIZE bytes of WAL fits the message cap"
)

/** Microseconds from the Unix epoch to Postgres' epoch, 2000-01-01 00:00:00 UTC. */
export const PG_EPOCH_UNIX_US = 946_684_800_000_000

/** A Unix time in µs (the Clock service's `nowUs`) as a Postgres TimestampTz. */
export const pgTimestampUs = (unixUs: number): number => unixUs - PG_EPOCH_UNIX_US
export const unixTimeUsOfPgTimestamp = (pgUs: number): number => pgUs + PG_EPOCH_UNIX_US

// ---- sender → receiver ----

export interface XLogDataHeader {
  /** Where `data` starts in the WAL; the first one is exactly the requested start. */
  readonly dataStartLsn: Lsn
  /** The sender's end of WAL when it sent this (not the end of this chunk). */
  readonly walEndLsn: Lsn
  readonly sendTimeUs: number
}

export interface XLogData extends XLogDataHeader {
  readonly _tag: "XLogData"
  /** A view into the CopyData payload: no copy on the receive path. */
  readonly data: Uint8Array
}

export interface PrimaryKeepalive {
  readonly _tag: "PrimaryKeepalive"
  readonly walEndLsn: Lsn
  readonly sendTimeUs: number
  /** The receiver must answer at once with a standby status update. */
  readonly replyRequested: boolean
}

export type WalSenderMessage = XLogData | PrimaryKeepalive

// ---- receiver → sender ----

export interface StandbyStatusUpdate {
  readonly _tag: "StandbyStatusUpdate"
  /** 0 means "not reported" for each of the three. */
  readonly writeLsn: Lsn
  readonly flushLsn: Lsn
  readonly applyLsn: Lsn
  readonly sendTimeUs: number
  readonly replyRequested: boolean
}

export interface HotStandbyFeedback {
  readonly _tag: "HotStandbyFeedback"
  readonly sendTimeUs: number
  /** FullTransactionId, epoch << 32 | xid, as Neon keeps it; 0 when not set. */
  readonly xmin: bigint
  readonly catalogXmin: bigint
}

export interface NeonFeedback {
  readonly _tag: "NeonFeedback"
  readonly feedback: PageserverFeedback
}

export type StandbyMessage = StandbyStatusUpdate | HotStandbyFeedback | NeonFeedback

// ---- decoding ----

/** What a receiver (pg_receivewal, a standby, the pageserver, a peer) reads. */
export function decodeWalSenderMessage(payload: Uint8Array): Result.Result<WalSenderMessage, MalformedMessage> {
  const reader = new ByteReader(payload)
  const tagByte = reader.u8("replication message tag")
  if (reader.failed) return Result.fail(new MalformedMessage({ tag: "", reason: "empty CopyData: missing tag" }))
  switch (tagByte) {
    case TAG.w: {
      const dataStartLsn = Lsn(reader.u53BE("dataStart"))
      const walEndLsn = Lsn(reader.u53BE("walEnd"))
      const sendTimeUs = reader.i53BE("sendTime")
      const data = payload.subarray(Math.min(XLOG_DATA_HEADER_BYTES, payload.byteLength))
      if (!reader.failed && dataStartLsn + data.byteLength > U53_MAX) {
        reader.fail(`XLogData end ${dataStartLsn} + ${data.byteLength} above 2^53-1`)
      }
      return finish(reader, "w", { _tag: "XLogData", dataStartLsn, walEndLsn, sendTimeUs, data }, data.byteLength)
    }
    case TAG.k:
      return finish(reader, "k", {
        _tag: "PrimaryKeepalive",
        walEndLsn: Lsn(reader.u53BE("walEnd")),
        sendTimeUs: reader.i53BE("sendTime"),
        replyRequested: readBoolean(reader, "replyRequested")
      })
    default:
      return Result.fail(new MalformedMessage({ tag: printableTag(tagByte), reason: `unknown WAL sender message tag 0x${hex2(tagByte)}` }))
  }
}

/** What a WAL sender (the safekeeper's `send_wal`) reads from its receiver. */
export function decodeStandbyMessage(payload: Uint8Array): Result.Result<StandbyMessage, MalformedMessage> {
  const reader = new ByteReader(payload)
  const tagByte = reader.u8("replication message tag")
  if (reader.failed) return Result.fail(new MalformedMessage({ tag: "", reason: "empty CopyData: missing tag" }))
  switch (tagByte) {
    case TAG.r:
      return finish(reader, "r", {
        _tag: "StandbyStatusUpdate",
        writeLsn: Lsn(reader.u53BE("write")),
        flushLsn: Lsn(reader.u53BE("flush")),
        applyLsn: Lsn(reader.u53BE("apply")),
        sendTimeUs: reader.i53BE("sendTime"),
        replyRequested: readBoolean(reader, "replyRequested")
      })
    case TAG.h: {
      const sendTimeUs = reader.i53BE("sendTime")
      // Postgres sends each id as u32 xid then u32 epoch; Neon reads a u64 and rotates it.
      const xmin = readFullTransactionId(reader, "xmin")
      const catalogXmin = readFullTransactionId(reader, "catalog_xmin")
      return finish(reader, "h", { _tag: "HotStandbyFeedback", sendTimeUs, xmin, catalogXmin })
    }
    case TAG.z: {
      // Neon skips the length without reading it (send_wal.rs: `&msg[9..]`), and its feedback
      // parser ignores bytes after the last key; we do the same so any pageserver's 'z' is read.
      reader.u64BE("feedback length")
      const feedback = readPageserverFeedback(reader)
      return finish(reader, "z", { _tag: "NeonFeedback", feedback }, reader.remainingBytes)
    }
    default:
      return Result.fail(new MalformedMessage({ tag: printableTag(tagByte), reason: `unknown standby message tag 0x${hex2(tagByte)}` }))
  }
}

// ---- encoding ----

/**
 * A whole CopyData frame carrying XLogData, in one allocation with one copy of the WAL: the
 * walsender's hot path (128 KiB chunks).
 */
export function encodeXLogDataFrame(message: XLogDataHeader & { readonly data: Uint8Array }): Uint8Array {
  const frame = new Uint8Array(XLOG_DATA_FRAME_HEADER_BYTES + message.data.byteLength)
  frame.set(message.data, XLOG_DATA_FRAME_HEADER_BYTES)
  writeXLogDataFrameHeader(frame, message)
  return frame
}

/**
 * Writes the CopyData and XLogData headers into the first XLOG_DATA_FRAME_HEADER_BYTES of
 * `frame`; the WAL is the rest of `frame`. A sender may read WAL straight into
 * `frame.subarray(XLOG_DATA_FRAME_HEADER_BYTES)` and never copy it.
 */
export function writeXLogDataFrameHeader(frame: Uint8Array, header: XLogDataHeader): void {
  const dataBytes = frame.byteLength - XLOG_DATA_FRAME_HEADER_BYTES
  assert(dataBytes >= 0, "an XLogData frame holds its headers")
  assert(header.dataStartLsn + dataBytes <= U53_MAX, "XLogData ends at or below 2^53-1")
  assert(isU53(header.dataStartLsn) && isU53(header.walEndLsn), "XLogData LSNs are integers in [0, 2^53-1]")
  assert(Number.isSafeInteger(header.sendTimeUs), "XLogData sendTime is a safe integer")
  writeCopyDataHeader(frame, XLOG_DATA_HEADER_BYTES + dataBytes)
  // Written in place through one DataView: this runs for every 128 KiB chunk sent.
  const view = new DataView(frame.buffer, frame.byteOffset + COPY_DATA_HEADER_BYTES, XLOG_DATA_HEADER_BYTES)
  view.setUint8(0, TAG.w)
  setU53(view, 1, header.dataStartLsn)
  setU53(view, 9, header.walEndLsn)
  view.setBigInt64(17, BigInt(header.sendTimeUs), false)
}

/** The XLogData payload alone (tests, and senders that frame it themselves). */
export function encodeXLogData(message: XLogDataHeader & { readonly data: Uint8Array }): Uint8Array {
  return encodeXLogDataFrame(message).subarray(COPY_DATA_HEADER_BYTES)
}

export function encodeKeepalive(message: Omit<PrimaryKeepalive, "_tag">): Uint8Array {
  const writer = new ByteWriter(PRIMARY_KEEPALIVE_BYTES)
  writer.u8(TAG.k).u64BE(message.walEndLsn).i64BE(message.sendTimeUs).u8(message.replyRequested ? 1 : 0)
  return writer.finish()
}

export function encodeStandbyStatusUpdate(message: Omit<StandbyStatusUpdate, "_tag">): Uint8Array {
  const writer = new ByteWriter(STANDBY_STATUS_UPDATE_BYTES)
  writer.u8(TAG.r).u64BE(message.writeLsn).u64BE(message.flushLsn).u64BE(message.applyLsn)
  writer.i64BE(message.sendTimeUs).u8(message.replyRequested ? 1 : 0)
  return writer.finish()
}

export function encodeHotStandbyFeedback(message: Omit<HotStandbyFeedback, "_tag">): Uint8Array {
  const writer = new ByteWriter(HOT_STANDBY_FEEDBACK_BYTES)
  writer.u8(TAG.h).i64BE(message.sendTimeUs)
  writeFullTransactionId(writer, message.xmin)
  writeFullTransactionId(writer, message.catalogXmin)
  return writer.finish()
}

/** Neon's 'z': the tag, the feedback's length as u64, the feedback (what the pageserver sends). */
export function encodeNeonFeedback(feedback: PageserverFeedback): Uint8Array {
  const body = new ByteWriter(160)
  writePageserverFeedback(body, feedback)
  const bytes = body.finish()
  return new ByteWriter(NEON_FEEDBACK_HEADER_BYTES + bytes.byteLength).u8(TAG.z).u64BE(bytes.byteLength).bytes(bytes).finish()
}

// ---- pieces ----

const TAG = { w: 0x77, k: 0x6b, r: 0x72, h: 0x68, z: 0x7a } as const

const U32_MASK = 0xffff_ffffn
const U64_MAX = (1n << 64n) - 1n

const U32_LIMIT = 0x1_0000_0000

function isU53(value: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= U53_MAX
}

/** A u53 as a big-endian u64, without a BigInt. */
function setU53(view: DataView, offsetBytes: number, value: number): void {
  view.setUint32(offsetBytes, Math.floor(value / U32_LIMIT), false)
  view.setUint32(offsetBytes + 4, value % U32_LIMIT, false)
}

function readFullTransactionId(reader: ByteReader, what: string): bigint {
  const xid = reader.u32BE(what)
  const epoch = reader.u32BE(`${what} epoch`)
  return (BigInt(epoch) << 32n) | BigInt(xid)
}

function writeFullTransactionId(writer: ByteWriter, id: bigint): void {
  assert(id >= 0n && id <= U64_MAX, `full transaction id ${id} is a u64`)
  writer.u32BE(Number(id & U32_MASK)).u32BE(Number(id >> 32n))
}

/** Postgres writes booleans as 0 or 1; anything else is not a message it wrote. */
function readBoolean(reader: ByteReader, what: string): boolean {
  const value = reader.u8(what)
  if (value > 1) reader.fail(`${what} is ${value}, not 0 or 1`)
  return value === 1
}

/** The message if the reader met no problem and only `allowedTrailingBytes` remain. */
function finish<A>(reader: ByteReader, tag: string, message: A, allowedTrailingBytes = 0): Result.Result<A, MalformedMessage> {
  if (!reader.failed && reader.remainingBytes > allowedTrailingBytes) reader.fail(`${reader.remainingBytes - allowedTrailingBytes} trailing bytes`)
  return reader.failure === undefined ? Result.succeed(message) : Result.fail(new MalformedMessage({ tag, reason: reader.failure }))
}

function printableTag(byte: number): string {
  return byte >= 0x20 && byte < 0x7f ? String.fromCharCode(byte) : `0x${hex2(byte)}`
}

function hex2(byte: number): string {
  return byte.toString(16).padStart(2, "0")
}
