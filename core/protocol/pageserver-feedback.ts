import { Result } from "effect"
import { assert, U53_MAX } from "../assert.js"
import { Lsn } from "../wal/lsn.js"
import { ByteReader, ByteWriter, MalformedMessage } from "./bytes.js"

/**
 * Pageserver feedback (Neon `libs/utils/src/pageserver_feedback.rs`, reference §3.1): what the
 * pageserver reports to a safekeeper and the safekeeper forwards to the compute inside an
 * AppendResponse. An extensible key/value list, big-endian:
 *   u8 key count, then per key: NUL-terminated name, i32 value length, value.
 * Unknown keys are skipped by their length; known keys must have their fixed length.
 */
export interface PageserverFeedback {
  /** `current_timeline_size`: logical size of the timeline, used for size limits. */
  readonly currentTimelineSizeBytes: number
  /** `ps_writelsn`: received and ingested by the pageserver (backpressure). */
  readonly lastReceivedLsn: Lsn
  /** `ps_flushlsn`: persisted on the pageserver's local disk (backpressure). */
  readonly diskConsistentLsn: Lsn
  /** `ps_applylsn`: persisted in remote storage; WAL below it may be removed. */
  readonly remoteConsistentLsn: Lsn
  /** `ps_replytime`: microseconds since 2000-01-01 (PostgreSQL's epoch); may be negative. */
  readonly replyTimeUs: number
  /** Which shard reports; 0 for unsharded tenants (then the key is not sent). */
  readonly shardNumber: number
  /** The pageserver found corruption: stop sending WAL (sent only when true). */
  readonly corruptionDetected: boolean
}

/** Neon's `PageserverFeedback::empty()`: the values of keys a message leaves out. */
export const EMPTY_PAGESERVER_FEEDBACK: PageserverFeedback = {
  currentTimelineSizeBytes: 0,
  lastReceivedLsn: Lsn(0),
  diskConsistentLsn: Lsn(0),
  remoteConsistentLsn: Lsn(0),
  replyTimeUs: 0,
  shardNumber: 0,
  corruptionDetected: false
}

/** Key names are short identifiers; a longer one is garbage, not an extension. */
export const FEEDBACK_KEY_LENGTH_MAX_BYTES = 64
/** An unknown key's value is skipped; anything this large is garbage. */
export const FEEDBACK_VALUE_LENGTH_MAX_BYTES = 64 * 1024

/** Appends the feedback to `writer` in Neon's key order. */
export function writePageserverFeedback(writer: ByteWriter, feedback: PageserverFeedback): void {
  const problem = pageserverFeedbackProblem(feedback)
  assert(problem === undefined, `pageserver feedback to encode: ${problem}`)
  const extraKeys = (feedback.shardNumber > 0 ? 1 : 0) + (feedback.corruptionDetected ? 1 : 0)
  writer.u8(5 + extraKeys)
  writer.cstring("current_timeline_size").i32BE(8).u64BE(feedback.currentTimelineSizeBytes)
  writer.cstring("ps_writelsn").i32BE(8).u64BE(feedback.lastReceivedLsn)
  writer.cstring("ps_flushlsn").i32BE(8).u64BE(feedback.diskConsistentLsn)
  writer.cstring("ps_applylsn").i32BE(8).u64BE(feedback.remoteConsistentLsn)
  writer.cstring("ps_replytime").i32BE(8).i64BE(feedback.replyTimeUs)
  if (feedback.shardNumber > 0) writer.cstring("shard_number").i32BE(4).u32BE(feedback.shardNumber)
  if (feedback.corruptionDetected) writer.cstring("corruption_detected").i32BE(1).u8(1)
}

export function encodePageserverFeedback(feedback: PageserverFeedback): Uint8Array {
  const writer = new ByteWriter(160)
  writePageserverFeedback(writer, feedback)
  return writer.finish()
}

/**
 * Reads feedback at the reader's position. Keys left out keep their EMPTY values; a repeated key
 * overrides the earlier one (as both Neon parsers do). Problems are recorded in the reader.
 */
export function readPageserverFeedback(reader: ByteReader): PageserverFeedback {
  let feedback = { ...EMPTY_PAGESERVER_FEEDBACK }
  const keyCount = reader.u8("feedback key count")
  for (let i = 0; i < keyCount && !reader.failed; i++) {
    const key = latin1(reader.cstringBytes(FEEDBACK_KEY_LENGTH_MAX_BYTES, `feedback key ${i}`))
    const valueLength = reader.i32BE(`feedback ${key} length`)
    if (reader.failed) break
    const expectedLength = KNOWN_KEY_LENGTHS.get(key)
    if (expectedLength !== undefined && valueLength !== expectedLength) {
      reader.fail(`feedback ${key} has length ${valueLength}, expected ${expectedLength}`)
      break
    }
    switch (key) {
      case "current_timeline_size":
        feedback = { ...feedback, currentTimelineSizeBytes: reader.u53BE(key) }
        break
      case "ps_writelsn":
      case "last_received_lsn":
        feedback = { ...feedback, lastReceivedLsn: Lsn(reader.u53BE(key)) }
        break
      case "ps_flushlsn":
      case "disk_consistent_lsn":
        feedback = { ...feedback, diskConsistentLsn: Lsn(reader.u53BE(key)) }
        break
      case "ps_applylsn":
      case "remote_consistent_lsn":
        feedback = { ...feedback, remoteConsistentLsn: Lsn(reader.u53BE(key)) }
        break
      case "ps_replytime":
      case "replytime":
        feedback = { ...feedback, replyTimeUs: reader.i53BE(key) }
        break
      case "shard_number":
        feedback = { ...feedback, shardNumber: reader.u32BE(key) }
        break
      case "corruption_detected":
        feedback = { ...feedback, corruptionDetected: reader.u8(key) !== 0 }
        break
      default:
        if (valueLength < 0 || valueLength > FEEDBACK_VALUE_LENGTH_MAX_BYTES) {
          reader.fail(`feedback ${key}: value length ${valueLength} outside [0, ${FEEDBACK_VALUE_LENGTH_MAX_BYTES}]`)
        } else {
          reader.skip(valueLength, `feedback ${key} value`)
        }
    }
  }
  return feedback
}

/** Decodes a whole buffer holding exactly one feedback (trailing bytes are an error). */
export function decodePageserverFeedback(bytes: Uint8Array, tag = ""): Result.Result<PageserverFeedback, MalformedMessage> {
  const reader = new ByteReader(bytes)
  const feedback = readPageserverFeedback(reader)
  if (!reader.failed && reader.remainingBytes > 0) reader.fail(`${reader.remainingBytes} trailing bytes after pageserver feedback`)
  return reader.failure === undefined ? Result.succeed(feedback) : Result.fail(new MalformedMessage({ tag, reason: reader.failure }))
}

/** Why a feedback value cannot be encoded, or undefined. */
export function pageserverFeedbackProblem(feedback: PageserverFeedback): string | undefined {
  const u53 = (value: number) => Number.isInteger(value) && value >= 0 && value <= U53_MAX
  if (!u53(feedback.currentTimelineSizeBytes)) return `current_timeline_size ${feedback.currentTimelineSizeBytes} is not a u53`
  if (!u53(feedback.lastReceivedLsn)) return `last_received_lsn ${feedback.lastReceivedLsn} is not a u53`
  if (!u53(feedback.diskConsistentLsn)) return `disk_consistent_lsn ${feedback.diskConsistentLsn} is not a u53`
  if (!u53(feedback.remoteConsistentLsn)) return `remote_consistent_lsn ${feedback.remoteConsistentLsn} is not a u53`
  if (!Number.isSafeInteger(feedback.replyTimeUs)) return `replytime ${feedback.replyTimeUs} is not a safe integer`
  if (!Number.isInteger(feedback.shardNumber) || feedback.shardNumber < 0 || feedback.shardNumber > 0xffff_ffff) {
    return `shard_number ${feedback.shardNumber} is not a u32`
  }
  return undefined
}

const KNOWN_KEY_LENGTHS: ReadonlyMap<string, number> = new Map([
  ["current_timeline_size", 8],
  ["ps_writelsn", 8],
  ["last_received_lsn", 8],
  ["ps_flushlsn", 8],
  ["disk_consistent_lsn", 8],
  ["ps_applylsn", 8],
  ["remote_consistent_lsn", 8],
  ["ps_replytime", 8],
  ["replytime", 8],
  ["shard_number", 4],
  ["corruption_detected", 1]
])

/** Key names are ASCII; any other byte maps to a char that matches no known key. */
function latin1(bytes: Uint8Array): string {
  let text = ""
  for (const byte of bytes) text += String.fromCharCode(byte)
  return text
}
