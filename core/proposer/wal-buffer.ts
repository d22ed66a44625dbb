import { assert } from "../assert.js"
import { formatLsn, Lsn } from "../wal/lsn.js"

/**
 * The proposer's recent WAL in memory: the bytes from about truncate_lsn to the end of what
 * the proposer has, so a safekeeper that fell behind (or reconnected) is re-sent from here.
 * Postgres keeps this in pg_wal; we keep a bounded window of it. Below the window a laggard is
 * fed from a peer safekeeper (wal-reader.ts).
 *
 * Bytes are kept as the chunks they were appended in, and dropped a whole chunk at a time from
 * the front: below truncate_lsn (everybody has them) or when the window exceeds its maximum.
 */
export const WAL_BUFFER_BYTES_MAX_DEFAULT = 16 * 1024 * 1024

const EMPTY = new Uint8Array(0)

export class WalBuffer {
  private readonly chunks: Array<{ readonly startLsn: Lsn; readonly bytes: Uint8Array }> = []
  private head = 0
  private start: Lsn
  private end: Lsn
  private heldBytes = 0

  /** An empty buffer whose first byte will be `startLsn`. */
  constructor(startLsn: Lsn, readonly bytesMax: number = WAL_BUFFER_BYTES_MAX_DEFAULT) {
    assert(Number.isSafeInteger(bytesMax) && bytesMax > 0, "a WAL buffer holds some bytes")
    this.start = startLsn
    this.end = startLsn
  }

  /** The lowest LSN held. */
  get startLsn(): Lsn {
    return this.start
  }

  /** Just past the last byte held: the proposer's end of WAL. */
  get endLsn(): Lsn {
    return this.end
  }

  get sizeBytes(): number {
    return this.heldBytes
  }

  /**
   * Appends the bytes that continue the WAL at `startLsn` (= endLsn), dropping the oldest past
   * the maximum. The buffer keeps `bytes` itself and hands out views of it: the caller must not
   * change them afterwards.
   */
  append(startLsn: Lsn, bytes: Uint8Array): void {
    assert(startLsn === this.end, `WAL appended at ${formatLsn(startLsn)}, but the buffer ends at ${formatLsn(this.end)}`)
    if (bytes.byteLength === 0) return
    this.chunks.push({ startLsn, bytes })
    this.end = Lsn(startLsn + bytes.byteLength)
    this.heldBytes += bytes.byteLength
    // One pass per chunk dropped; the newest chunk always stays.
    while (this.heldBytes > this.bytesMax && this.chunks.length - this.head > 1) this.dropFirst()
  }

  /** Drops every chunk that ends at or below `lsn` (the truncate_lsn moved: everyone has them). */
  releaseBelow(lsn: Lsn): void {
    // One pass per chunk dropped.
    for (let first = this.chunks[this.head]; first !== undefined && first.startLsn + first.bytes.byteLength <= lsn; first = this.chunks[this.head]) {
      this.dropFirst()
    }
  }

  /**
   * The bytes [fromLsn, toLsn), which must be held: a view of the appended chunk when one chunk
   * holds them all (the common case: a writer sends each new chunk as it comes), else a copy
   * joining the chunks. Either way nothing changes the bytes later, so a view may be kept and
   * written to a socket as it is.
   */
  read(fromLsn: Lsn, toLsn: Lsn): Uint8Array {
    assert(fromLsn >= this.start && toLsn <= this.end && fromLsn <= toLsn, `read [${formatLsn(fromLsn)}, ${formatLsn(toLsn)}) outside the buffer [${formatLsn(this.start)}, ${formatLsn(this.end)})`)
    if (fromLsn === toLsn) return EMPTY
    let index = this.chunkIndexOf(fromLsn)
    const first = this.chunks[index]!
    const firstEnd = first.startLsn + first.bytes.byteLength
    if (toLsn <= firstEnd) return first.bytes.subarray(fromLsn - first.startLsn, toLsn - first.startLsn)
    const out = new Uint8Array(toLsn - fromLsn)
    // One pass per chunk the range touches.
    for (let done = 0; done < out.byteLength; index++) {
      const chunk = this.chunks[index]!
      const offset = fromLsn + done - chunk.startLsn
      const take = Math.min(chunk.bytes.byteLength - offset, out.byteLength - done)
      out.set(chunk.bytes.subarray(offset, offset + take), done)
      done += take
    }
    return out
  }

  /** The index of the chunk holding `lsn` (binary search over the held chunks). */
  private chunkIndexOf(lsn: Lsn): number {
    let low = this.head
    let high = this.chunks.length - 1
    while (low < high) {
      const middle = (low + high + 1) >> 1
      if (this.chunks[middle]!.startLsn <= lsn) low = middle
      else high = middle - 1
    }
    return low
  }

  private dropFirst(): void {
    const first = this.chunks[this.head]!
    this.head++
    this.heldBytes -= first.bytes.byteLength
    this.start = Lsn(first.startLsn + first.bytes.byteLength)
    // Compact now and then so the array does not grow without bound.
    if (this.head > 1024 && this.head * 2 > this.chunks.length) {
      this.chunks.splice(0, this.head)
      this.head = 0
    }
  }
}
