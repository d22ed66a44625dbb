import { Schema } from "effect"
import { assert, U53_MAX } from "../assert.js"

/**
 * Bounds-checked byte readers and writers shared by the wire codecs (big-endian) and the
 * control file (little-endian bincode). Reads never throw: the first problem is recorded in the
 * reader (a "sticky" failure), later reads return zeros, and the decoder turns the failure into
 * its own typed error once it is done. That keeps decoders straight-line and total.
 */

/** A protocol message that cannot be decoded; the connection that sent it is closed (STYLE §6). */
export class MalformedMessage extends Schema.TaggedError<MalformedMessage>()("MalformedMessage", {
  /** The message's one-letter tag ("g", "v", "e", "a"), or "" when even the tag is missing. */
  tag: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return this.tag === "" ? `malformed message: ${this.reason}` : `malformed '${this.tag}' message: ${this.reason}`
  }
}

const U32_LIMIT = 0x1_0000_0000
const U64_MAX = (1n << 64n) - 1n
const I64_MIN = -(1n << 63n)
const I64_MAX = (1n << 63n) - 1n
/** The high half of a u64 whose value is still ≤ 2^53−1. */
const U53_HIGH_MAX = Math.floor(U53_MAX / U32_LIMIT)

const utf8Decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true })
const utf8Encoder = new TextEncoder()

export function utf8Bytes(text: string): Uint8Array {
  return utf8Encoder.encode(text)
}

/** Strict UTF-8 decoding; undefined for invalid sequences (TextDecoder signals them by throwing). */
export function decodeUtf8(bytes: Uint8Array): string | undefined {
  try {
    return utf8Decoder.decode(bytes)
  } catch {
    return undefined
  }
}

export class ByteReader {
  private readonly view: DataView
  private position = 0
  private failureReason: string | undefined = undefined
  private failureTruncated = false

  constructor(private readonly input: Uint8Array) {
    this.view = new DataView(input.buffer, input.byteOffset, input.byteLength)
  }

  get offsetBytes(): number {
    return this.position
  }

  get remainingBytes(): number {
    return this.input.byteLength - this.position
  }

  get failed(): boolean {
    return this.failureReason !== undefined
  }

  /** The first problem met, if any. */
  get failure(): string | undefined {
    return this.failureReason
  }

  /** Whether the first problem was running out of bytes (rather than a bad value). */
  get failedTruncated(): boolean {
    return this.failureTruncated
  }

  /** Records a problem (only the first one is kept) and stops further reads. */
  fail(reason: string): void {
    if (this.failureReason === undefined) this.failureReason = reason
  }

  u8(what: string): number {
    return this.take(1, what) ? this.view.getUint8(this.position - 1) : 0
  }

  u16BE(what: string): number {
    return this.take(2, what) ? this.view.getUint16(this.position - 2, false) : 0
  }

  u16LE(what: string): number {
    return this.take(2, what) ? this.view.getUint16(this.position - 2, true) : 0
  }

  u32BE(what: string): number {
    return this.take(4, what) ? this.view.getUint32(this.position - 4, false) : 0
  }

  u32LE(what: string): number {
    return this.take(4, what) ? this.view.getUint32(this.position - 4, true) : 0
  }

  i32BE(what: string): number {
    return this.take(4, what) ? this.view.getInt32(this.position - 4, false) : 0
  }

  /** An opaque u64 (system id, xid): any value. */
  u64BE(what: string): bigint {
    return this.take(8, what) ? this.view.getBigUint64(this.position - 8, false) : 0n
  }

  u64LE(what: string): bigint {
    return this.take(8, what) ? this.view.getBigUint64(this.position - 8, true) : 0n
  }

  /** A u64 used as a number (LSN, term, node id, count): refused above 2^53−1 (DESIGN.md §4). */
  u53BE(what: string): number {
    if (!this.take(8, what)) return 0
    return this.checkU53(this.view.getUint32(this.position - 8, false), this.view.getUint32(this.position - 4, false), what)
  }

  u53LE(what: string): number {
    if (!this.take(8, what)) return 0
    return this.checkU53(this.view.getUint32(this.position - 4, true), this.view.getUint32(this.position - 8, true), what)
  }

  /** An i64 used as a number (a timestamp in µs): refused outside ±(2^53−1). */
  i53BE(what: string): number {
    if (!this.take(8, what)) return 0
    const value = this.view.getBigInt64(this.position - 8, false)
    if (value > BigInt(U53_MAX) || value < -BigInt(U53_MAX)) {
      this.fail(`${what} ${value} outside ±(2^53-1)`)
      return 0
    }
    return Number(value)
  }

  /**
   * A u32 count of items that follow, each at least `itemBytesMin` long. Refuses counts above
   * `countMax` and counts that could not fit in the bytes left, so that no decoder allocates for
   * or loops over items that are not there.
   */
  countU32BE(what: string, countMax: number, itemBytesMin: number): number {
    return this.checkCount(this.u32BE(what), what, countMax, itemBytesMin)
  }

  /** A bincode length (u64 LE), bounded as `countU32BE`. */
  countU64LE(what: string, countMax: number, itemBytesMin: number): number {
    const value = this.u64LE(what)
    if (value > BigInt(countMax)) {
      this.fail(`${what} ${value} above the maximum ${countMax}`)
      return 0
    }
    return this.checkCount(Number(value), what, countMax, itemBytesMin)
  }

  /** `length` raw bytes, copied (the caller may keep them after the input buffer is reused). */
  bytes(length: number, what: string): Uint8Array {
    assert(Number.isInteger(length) && length >= 0, "byte length is a non-negative integer")
    return this.take(length, what) ? this.input.slice(this.position - length, this.position) : new Uint8Array(0)
  }

  skip(length: number, what: string): void {
    assert(Number.isInteger(length) && length >= 0, "skip length is a non-negative integer")
    this.take(length, what)
  }

  /** A NUL-terminated byte string of at most `lengthMaxBytes` bytes before the NUL. */
  cstringBytes(lengthMaxBytes: number, what: string): Uint8Array {
    if (this.failed) return new Uint8Array(0)
    const searchEnd = Math.min(this.input.byteLength, this.position + lengthMaxBytes + 1)
    const nul = this.input.subarray(this.position, searchEnd).indexOf(0)
    if (nul < 0) {
      this.fail(this.remainingBytes <= lengthMaxBytes
        ? `${what}: string not terminated`
        : `${what}: string longer than ${lengthMaxBytes} bytes`)
      return new Uint8Array(0)
    }
    const text = this.input.slice(this.position, this.position + nul)
    this.position += nul + 1
    return text
  }

  /** A NUL-terminated UTF-8 string of at most `lengthMaxBytes` bytes. */
  cstring(lengthMaxBytes: number, what: string): string {
    return this.utf8Of(this.cstringBytes(lengthMaxBytes, what), what)
  }

  /** A bincode String: u64 LE length, then that many UTF-8 bytes. */
  stringU64LE(lengthMaxBytes: number, what: string): string {
    const length = this.countU64LE(`${what} length`, lengthMaxBytes, 1)
    return this.utf8Of(this.bytes(length, what), what)
  }

  private utf8Of(bytes: Uint8Array, what: string): string {
    if (this.failed) return ""
    const text = decodeUtf8(bytes)
    if (text === undefined) {
      this.fail(`${what}: invalid UTF-8`)
      return ""
    }
    return text
  }

  private checkCount(count: number, what: string, countMax: number, itemBytesMin: number): number {
    if (this.failed) return 0
    if (count > countMax) {
      this.fail(`${what} ${count} above the maximum ${countMax}`)
      return 0
    }
    if (count * itemBytesMin > this.remainingBytes) {
      this.fail(`${what} ${count} needs at least ${count * itemBytesMin} bytes, ${this.remainingBytes} left`)
      return 0
    }
    return count
  }

  private checkU53(high: number, low: number, what: string): number {
    if (high > U53_HIGH_MAX) {
      this.fail(`${what} ${(BigInt(high) << 32n) | BigInt(low)} above 2^53-1`)
      return 0
    }
    return high * U32_LIMIT + low
  }

  private take(length: number, what: string): boolean {
    if (this.failed) return false
    if (this.remainingBytes < length) {
      this.failureTruncated = true
      this.fail(`truncated reading ${what}: need ${length} bytes, ${this.remainingBytes} left`)
      return false
    }
    this.position += length
    return true
  }
}

/**
 * A growable output buffer. Writing a value out of its type's range is a programmer error
 * (the encoder was handed a state that was never validated), so it is asserted, not returned.
 */
export class ByteWriter {
  private buffer: Uint8Array
  private view: DataView
  private length = 0

  constructor(capacityBytes = 256) {
    assert(Number.isInteger(capacityBytes) && capacityBytes > 0, "writer capacity is a positive integer")
    this.buffer = new Uint8Array(capacityBytes)
    this.view = new DataView(this.buffer.buffer)
  }

  get lengthBytes(): number {
    return this.length
  }

  u8(value: number): this {
    assertUint(value, 0xff, "u8")
    const at = this.reserve(1)
    this.view.setUint8(at, value)
    return this
  }

  u16BE(value: number): this {
    assertUint(value, 0xffff, "u16")
    const at = this.reserve(2)
    this.view.setUint16(at, value, false)
    return this
  }

  u16LE(value: number): this {
    assertUint(value, 0xffff, "u16")
    const at = this.reserve(2)
    this.view.setUint16(at, value, true)
    return this
  }

  u32BE(value: number): this {
    assertUint(value, U32_LIMIT - 1, "u32")
    const at = this.reserve(4)
    this.view.setUint32(at, value, false)
    return this
  }

  u32LE(value: number): this {
    assertUint(value, U32_LIMIT - 1, "u32")
    const at = this.reserve(4)
    this.view.setUint32(at, value, true)
    return this
  }

  i32BE(value: number): this {
    assert(Number.isInteger(value) && value >= -0x8000_0000 && value <= 0x7fff_ffff, `i32 out of range: ${value}`)
    const at = this.reserve(4)
    this.view.setInt32(at, value, false)
    return this
  }

  /** A u64 from a bigint (opaque ids) or from a number ≤ 2^53−1 (LSNs, terms). */
  u64BE(value: bigint | number): this {
    const big = toU64(value)
    const at = this.reserve(8)
    this.view.setBigUint64(at, big, false)
    return this
  }

  u64LE(value: bigint | number): this {
    const big = toU64(value)
    const at = this.reserve(8)
    this.view.setBigUint64(at, big, true)
    return this
  }

  i64BE(value: bigint | number): this {
    const big = typeof value === "bigint" ? value : BigInt(assertSafeInteger(value, "i64"))
    assert(big >= I64_MIN && big <= I64_MAX, `i64 out of range: ${big}`)
    const at = this.reserve(8)
    this.view.setBigInt64(at, big, false)
    return this
  }

  bytes(data: Uint8Array): this {
    const at = this.reserve(data.byteLength)
    this.buffer.set(data, at)
    return this
  }

  /** A NUL-terminated UTF-8 string; a NUL inside it would end it early, so it is refused. */
  cstring(text: string): this {
    const encoded = utf8Bytes(text)
    assert(!encoded.includes(0), "a C string holds no NUL byte")
    return this.bytes(encoded).u8(0)
  }

  /** A bincode String: u64 LE byte length, then the UTF-8 bytes. */
  stringU64LE(text: string): this {
    const encoded = utf8Bytes(text)
    return this.u64LE(encoded.byteLength).bytes(encoded)
  }

  /** A view of the bytes written so far (not a copy: do not keep it across later writes). */
  finish(): Uint8Array {
    return this.buffer.subarray(0, this.length)
  }

  /** Makes room for `size` more bytes; returns where they go. Call before reading `view`/`buffer`. */
  private reserve(size: number): number {
    const at = this.length
    if (at + size > this.buffer.byteLength) {
      let capacity = this.buffer.byteLength * 2
      while (capacity < at + size) capacity *= 2
      const grown = new Uint8Array(capacity)
      grown.set(this.buffer.subarray(0, at))
      this.buffer = grown
      this.view = new DataView(grown.buffer)
    }
    this.length = at + size
    return at
  }
}

function assertUint(value: number, max: number, type: string): void {
  assert(Number.isInteger(value) && value >= 0 && value <= max, `${type} out of range: ${value}`)
}

function assertSafeInteger(value: number, type: string): number {
  assert(Number.isSafeInteger(value), `${type} is not a safe integer: ${value}`)
  return value
}

function toU64(value: bigint | number): bigint {
  if (typeof value === "number") {
    assert(Number.isInteger(value) && value >= 0 && value <= U53_MAX, `u64 from a number must be in [0, 2^53-1]: ${value}`)
    return BigInt(value)
  }
  assert(value >= 0n && value <= U64_MAX, `u64 out of range: ${value}`)
  return value
}
