import { Brand, Result, Schema } from "effect"
import { U53_MAX } from "../assert.js"

/**
 * A position in the WAL stream, in bytes. Postgres uses u64; we use JavaScript numbers and
 * refuse anything above 2^53−1 at decode time (2^53 bytes of WAL is 8 PiB), DESIGN.md §4.
 */
export type Lsn = number & Brand.Brand<"Lsn">
export const Lsn = Brand.nominal<Lsn>()

export const INVALID_LSN = Lsn(0)

export class InvalidLsn extends Schema.TaggedError<InvalidLsn>()("InvalidLsn", {
  input: Schema.String,
  message: Schema.String
}) {}

/** Postgres' `X/Y` text form: upper and lower 32 bits in hex. */
export function formatLsn(lsn: number): string {
  const hi = Math.floor(lsn / 0x1_0000_0000)
  const lo = lsn % 0x1_0000_0000
  return `${hi.toString(16).toUpperCase()}/${lo.toString(16).toUpperCase()}`
}

export function parseLsn(text: string): Result.Result<Lsn, InvalidLsn> {
  const match = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text)
  if (match === null) return Result.fail(new InvalidLsn({ input: text, message: "expected X/Y with 1-8 hex digits on each side" }))
  const value = parseInt(match[1]!, 16) * 0x1_0000_0000 + parseInt(match[2]!, 16)
  if (value > U53_MAX) return Result.fail(new InvalidLsn({ input: text, message: "LSN above 2^53-1" }))
  return Result.succeed(Lsn(value))
}

/** Reads an LSN from a u64 (two big-endian u32 halves, as bigint), refusing values above 2^53−1. */
export function lsnFromBigInt(value: bigint): Result.Result<Lsn, InvalidLsn> {
  if (value < 0n || value > BigInt(U53_MAX)) {
    return Result.fail(new InvalidLsn({ input: value.toString(), message: "LSN above 2^53-1" }))
  }
  return Result.succeed(Lsn(Number(value)))
}

export const DEFAULT_WAL_SEGMENT_SIZE_BYTES = 16 * 1024 * 1024
export const XLOG_BLCKSZ_BYTES = 8192
const SEGMENT_SIZE_MIN_BYTES = 1024 * 1024
const SEGMENT_SIZE_MAX_BYTES = 1024 * 1024 * 1024

/** Postgres accepts power-of-two segment sizes from 1 MiB to 1 GiB. */
export function isValidSegmentSize(sizeBytes: number): boolean {
  return Number.isInteger(sizeBytes) && sizeBytes >= SEGMENT_SIZE_MIN_BYTES && sizeBytes <= SEGMENT_SIZE_MAX_BYTES &&
    (sizeBytes & (sizeBytes - 1)) === 0
}

export const segmentNoOf = (lsn: number, segmentSizeBytes: number): number => Math.floor(lsn / segmentSizeBytes)
export const segmentOffsetOf = (lsn: number, segmentSizeBytes: number): number => lsn % segmentSizeBytes
export const segmentStartLsn = (segmentNo: number, segmentSizeBytes: number): Lsn => Lsn(segmentNo * segmentSizeBytes)

/** Postgres' XLogFileName: timeline, then the segment number split at 2^32 bytes of WAL. */
export function segmentFileName(timelineId: number, segmentNo: number, segmentSizeBytes: number): string {
  const segmentsPerXlogId = 0x1_0000_0000 / segmentSizeBytes
  const hex8 = (n: number) => n.toString(16).toUpperCase().padStart(8, "0")
  return hex8(timelineId) + hex8(Math.floor(segmentNo / segmentsPerXlogId)) + hex8(segmentNo % segmentsPerXlogId)
}

/** Inverse of segmentFileName (also accepts a `.partial` suffix); undefined when not a WAL segment name. */
export function parseSegmentFileName(
  name: string,
  segmentSizeBytes: number
): { readonly timelineId: number; readonly segmentNo: number; readonly partial: boolean } | undefined {
  const match = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?$/.exec(name)
  if (match === null) return undefined
  const segmentsPerXlogId = 0x1_0000_0000 / segmentSizeBytes
  const low = parseInt(match[3]!, 16)
  if (low >= segmentsPerXlogId) return undefined
  return {
    timelineId: parseInt(match[1]!, 16),
    segmentNo: parseInt(match[2]!, 16) * segmentsPerXlogId + low,
    partial: match[4] !== undefined
  }
}
