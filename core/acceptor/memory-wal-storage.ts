import { Effect, Result } from "effect"
import { assert } from "../assert.js"
import { isValidDecoderStart, WalDecoder } from "../wal/decoder.js"
import { WalGenerator } from "../wal/generator.js"
import { formatLsn, isValidSegmentSize, Lsn, segmentNoOf, segmentOffsetOf, segmentStartLsn } from "../wal/lsn.js"
import type { PgMajorVersion } from "../wal/page.js"
import { type WalPositions, type WalStorage, WalStorageError } from "./wal-storage.js"

/**
 * WalStorage held in memory, with the position rules of Neon's `PhysicalStorage` (reference §7):
 * write_lsn/flush_lsn count bytes, write_record_lsn/flush_record_lsn are record ends found by
 * decoding what is written (core/wal/decoder.ts), a filled segment is flushed as it is closed,
 * `flush` is a no-op when the record LSNs already agree, and every load starts with a
 * truncation pending. `reopen` models a restart after a crash that lost every unflushed byte.
 *
 * For tests and model nodes: it makes the acceptor rules runnable without the segment store.
 */
export interface MemoryWalStorageOptions {
  readonly segmentSizeBytes: number
  /** Used for the generated first-segment prefix and required of decoded pages. */
  readonly systemId: bigint
  readonly pgVersion: PgMajorVersion
  /** Postgres timeline id of the WAL (safekeepers always use 1). */
  readonly timelineId?: number
}

/** Segment buffers start this small and double up to the segment size. */
const SEGMENT_BUFFER_BYTES_MIN = 64 * 1024

export interface MemoryWalStorageStats {
  writes: number
  /** Flushes that had something to make durable (a no-op flush is not counted). */
  flushes: number
  truncations: number
  firstSegmentInitializations: number
}

export class MemoryWalStorage implements WalStorage {
  readonly stats: MemoryWalStorageStats = { writes: 0, flushes: 0, truncations: 0, firstSegmentInitializations: 0 }
  private readonly segments = new Map<number, Uint8Array>()
  private writeLsn = Lsn(0)
  private flushLsn = Lsn(0)
  private writeRecordLsn = Lsn(0)
  private flushRecordLsn = Lsn(0)
  /** Every load requires a truncation before the first write (ProposerElected provides it). */
  private truncationPending = true
  private decoder: WalDecoder | undefined
  /** Record ends written but not yet flushed, ascending. */
  private unflushedRecordEnds: Lsn[] = []
  private closed = false

  private constructor(readonly options: MemoryWalStorageOptions) {
    assert(isValidSegmentSize(options.segmentSizeBytes), "segment size is a power of two in 1 MiB..1 GiB")
  }

  /** Storage for a timeline that holds no WAL yet. */
  static empty(options: MemoryWalStorageOptions): MemoryWalStorage {
    return new MemoryWalStorage(options)
  }

  positions(): WalPositions {
    return {
      writeLsn: this.writeLsn,
      flushLsn: this.flushLsn,
      writeRecordLsn: this.writeRecordLsn,
      flushRecordLsn: this.flushRecordLsn
    }
  }

  write(startLsn: Lsn, bytes: Uint8Array): Effect.Effect<void, WalStorageError> {
    return Effect.suspend(() => {
      const refusal = this.writeRefusal(startLsn)
      if (refusal !== undefined) return Effect.fail(refusal)
      this.stats.writes++
      const endLsn = Lsn(startLsn + bytes.byteLength)
      this.copyIn(startLsn, bytes)
      // A write that fills a segment closes it, and closing fdatasyncs it (§7 write_wal step 2).
      const lastFilledSegmentEnd = segmentStartLsn(segmentNoOf(endLsn, this.segmentSizeBytes), this.segmentSizeBytes)
      if (lastFilledSegmentEnd > startLsn && lastFilledSegmentEnd > this.flushLsn) this.flushLsn = lastFilledSegmentEnd
      this.writeLsn = endLsn
      const decodeError = this.decode(startLsn, bytes)
      this.advanceFlushRecordLsn()
      return decodeError === undefined ? Effect.void : Effect.fail(decodeError)
    })
  }

  readonly flush: Effect.Effect<void, WalStorageError> = Effect.suspend(() => {
    if (this.closed) return Effect.fail(new WalStorageError({ reason: "Stopped", message: "storage is closed" }))
    // Neon's flush_wal: nothing to do while everything written is flushed.
    if (this.flushLsn === this.writeLsn) return Effect.void
    this.stats.flushes++
    this.flushLsn = this.writeLsn
    // As the segment store: the boundary never passes flush_lsn, so inside XLOG_SWITCH padding
    // flush_record_lsn stays at the switch record's start while write_record_lsn jumps ahead.
    this.advanceFlushRecordLsn()
    return Effect.void
  })

  truncate(endLsn: Lsn): Effect.Effect<void, WalStorageError> {
    return Effect.suspend(() => {
      if (this.closed) return Effect.fail(new WalStorageError({ reason: "Stopped", message: "storage is closed" }))
      if (this.writeRecordLsn !== 0 && endLsn > this.writeRecordLsn) {
        return Effect.fail(new WalStorageError({
          reason: "TruncateAboveWrite",
          message: `truncate to ${formatLsn(endLsn)} above write_record_lsn ${formatLsn(this.writeRecordLsn)}`
        }))
      }
      if (!this.truncationPending && endLsn === this.writeLsn && endLsn === this.flushRecordLsn) return Effect.void
      this.stats.truncations++
      this.dropFrom(endLsn)
      this.writeLsn = endLsn
      this.flushLsn = endLsn
      this.writeRecordLsn = endLsn
      this.flushRecordLsn = endLsn
      this.unflushedRecordEnds = []
      this.decoder = this.decoderAt(endLsn)
      this.truncationPending = false
      return Effect.void
    })
  }

  initializeFirstSegment(startLsn: Lsn): Effect.Effect<void, WalStorageError> {
    return Effect.suspend(() => {
      if (this.closed) return Effect.fail(new WalStorageError({ reason: "Stopped", message: "storage is closed" }))
      if (!isValidDecoderStart(startLsn, this.segmentSizeBytes)) {
        return Effect.fail(new WalStorageError({ reason: "Corrupt", message: `${formatLsn(startLsn)} is not a record or page start` }))
      }
      this.stats.firstSegmentInitializations++
      const generator = new WalGenerator({
        startLsn,
        segmentSizeBytes: this.segmentSizeBytes,
        systemId: this.options.systemId,
        pgVersion: this.options.pgVersion,
        timelineId: this.options.timelineId ?? 1
      })
      // Headers only, not fsynced: the truncation that follows makes them durable (§5 Elected 6-7).
      this.copyIn(segmentStartLsn(segmentNoOf(startLsn, this.segmentSizeBytes), this.segmentSizeBytes), generator.segmentPrefix(startLsn))
      return Effect.void
    })
  }

  removeUpTo(segmentNo: number): Effect.Effect<void, WalStorageError> {
    return Effect.sync(() => {
      for (const held of [...this.segments.keys()]) if (held <= segmentNo) this.segments.delete(held)
    })
  }

  read(startLsn: Lsn, length: number): Effect.Effect<Uint8Array, WalStorageError> {
    return Effect.suspend(() => {
      const segmentNo = segmentNoOf(startLsn, this.segmentSizeBytes)
      const offset = segmentOffsetOf(startLsn, this.segmentSizeBytes)
      assert(Number.isSafeInteger(length) && length >= 0 && offset + length <= this.segmentSizeBytes, "a WAL read stays inside one segment")
      const segment = this.segments.get(segmentNo)
      if (segment === undefined) {
        return Effect.fail(new WalStorageError({ reason: "Corrupt", message: `segment ${segmentNo} is not held` }))
      }
      const out = new Uint8Array(length)
      out.set(segment.subarray(offset, Math.min(offset + length, segment.byteLength)))
      return Effect.succeed(out)
    })
  }

  readonly close: Effect.Effect<void> = Effect.sync(() => {
    this.closed = true
  })

  /**
   * What a restart after a crash finds: the bytes below flush_lsn (fsynced or made durable by a
   * truncation), nothing above. As the segment store's startup (§7): with commit_lsn 0 every
   * position is 0; otherwise the positions are the end of the last valid record decoded from
   * commit_lsn on (commit_lsn itself when none is), and a truncation is pending.
   */
  reopen(commitLsn: Lsn): Result.Result<MemoryWalStorage, WalStorageError> {
    const next = new MemoryWalStorage(this.options)
    for (const [segmentNo, segment] of this.segments) {
      const segmentStart = segmentStartLsn(segmentNo, this.segmentSizeBytes)
      if (segmentStart >= this.flushLsn) continue
      const durableBytes = Math.min(segment.byteLength, this.flushLsn - segmentStart)
      next.segments.set(segmentNo, segment.slice(0, durableBytes))
    }
    if (commitLsn === 0) return Result.succeed(next)
    if (!isValidDecoderStart(commitLsn, this.segmentSizeBytes)) {
      return Result.fail(new WalStorageError({ reason: "Corrupt", message: `commit_lsn ${formatLsn(commitLsn)} is not a record boundary` }))
    }
    const decoder = next.decoderAt(commitLsn)!
    let endLsn = commitLsn
    // One pass per held segment from commit_lsn on; stops at a missing segment or bad WAL.
    for (let lsn: number = commitLsn; decoder.error === undefined;) {
      const segment = next.segments.get(segmentNoOf(lsn, this.segmentSizeBytes))
      const offset = segmentOffsetOf(lsn, this.segmentSizeBytes)
      if (segment === undefined || offset >= segment.byteLength) break
      const chunk = segment.subarray(offset)
      for (const record of decoder.push(chunk)) endLsn = record.nextLsn
      lsn += chunk.byteLength
      if (segmentOffsetOf(lsn, this.segmentSizeBytes) !== 0) break
    }
    next.writeLsn = endLsn
    next.flushLsn = endLsn
    next.writeRecordLsn = endLsn
    next.flushRecordLsn = endLsn
    return Result.succeed(next)
  }

  /** Bytes currently held at [startLsn, startLsn + length) (zeros where nothing is), for tests. */
  contentAt(startLsn: Lsn, length: number): Uint8Array {
    const out = new Uint8Array(length)
    for (let done = 0; done < length;) {
      const lsn = startLsn + done
      const offset = segmentOffsetOf(lsn, this.segmentSizeBytes)
      const take = Math.min(length - done, this.segmentSizeBytes - offset)
      const segment = this.segments.get(segmentNoOf(lsn, this.segmentSizeBytes))
      if (segment !== undefined && offset < segment.byteLength) out.set(segment.subarray(offset, Math.min(offset + take, segment.byteLength)), done)
      done += take
    }
    return out
  }

  private get segmentSizeBytes(): number {
    return this.options.segmentSizeBytes
  }

  private writeRefusal(startLsn: Lsn): WalStorageError | undefined {
    if (this.closed) return new WalStorageError({ reason: "Stopped", message: "storage is closed" })
    if (this.truncationPending) return new WalStorageError({ reason: "TruncationPending", message: "write before the truncation every load requires" })
    if (this.writeLsn > startLsn) {
      return new WalStorageError({ reason: "Rewrite", message: `write at ${formatLsn(startLsn)} below write_lsn ${formatLsn(this.writeLsn)}` })
    }
    if (this.writeLsn < startLsn && this.writeLsn !== 0) {
      return new WalStorageError({ reason: "Gap", message: `write at ${formatLsn(startLsn)} above write_lsn ${formatLsn(this.writeLsn)}` })
    }
    return undefined
  }

  /** Feeds written bytes to the decoder (restarted when it is elsewhere); undefined when fine. */
  private decode(startLsn: Lsn, bytes: Uint8Array): WalStorageError | undefined {
    if (this.decoder === undefined || this.decoder.position !== startLsn) this.decoder = this.decoderAt(startLsn)
    if (this.decoder === undefined) {
      return new WalStorageError({ reason: "Corrupt", message: `cannot decode WAL written from ${formatLsn(startLsn)}: not a record or page start` })
    }
    for (const record of this.decoder.push(bytes)) {
      this.writeRecordLsn = record.nextLsn
      this.unflushedRecordEnds.push(record.nextLsn)
    }
    const error = this.decoder.error
    return error === undefined ? undefined : new WalStorageError({ reason: "Corrupt", message: `written WAL does not decode: ${error.message}` })
  }

  private advanceFlushRecordLsn(): void {
    let consumed = 0
    while (consumed < this.unflushedRecordEnds.length && this.unflushedRecordEnds[consumed]! <= this.flushLsn) {
      this.flushRecordLsn = this.unflushedRecordEnds[consumed]!
      consumed++
    }
    if (consumed > 0) this.unflushedRecordEnds = this.unflushedRecordEnds.slice(consumed)
  }

  private decoderAt(startLsn: Lsn): WalDecoder | undefined {
    const made = WalDecoder.make({
      startLsn,
      segmentSizeBytes: this.segmentSizeBytes,
      systemId: this.options.systemId,
      pgVersion: this.options.pgVersion,
      timelineId: this.options.timelineId ?? 1
    })
    return Result.isSuccess(made) ? made.success : undefined
  }

  private copyIn(startLsn: number, bytes: Uint8Array): void {
    // One pass per segment the bytes touch.
    for (let done = 0; done < bytes.byteLength;) {
      const lsn = startLsn + done
      const segmentNo = segmentNoOf(lsn, this.segmentSizeBytes)
      const offset = segmentOffsetOf(lsn, this.segmentSizeBytes)
      const take = Math.min(bytes.byteLength - done, this.segmentSizeBytes - offset)
      const segment = this.segmentWithRoom(segmentNo, offset + take)
      segment.set(bytes.subarray(done, done + take), offset)
      done += take
    }
  }

  private segmentWithRoom(segmentNo: number, sizeBytes: number): Uint8Array {
    const held = this.segments.get(segmentNo)
    if (held !== undefined && held.byteLength >= sizeBytes) return held
    let capacity = Math.max(held?.byteLength ?? 0, SEGMENT_BUFFER_BYTES_MIN)
    while (capacity < sizeBytes) capacity *= 2
    const grown = new Uint8Array(Math.min(capacity, this.segmentSizeBytes))
    if (held !== undefined) grown.set(held)
    this.segments.set(segmentNo, grown)
    return grown
  }

  /** Forgets every byte at or above `lsn`: later segments go, the tail of its segment is zeroed. */
  private dropFrom(lsn: Lsn): void {
    const segmentNo = segmentNoOf(lsn, this.segmentSizeBytes)
    for (const held of [...this.segments.keys()]) if (held > segmentNo) this.segments.delete(held)
    const segment = this.segments.get(segmentNo)
    const offset = segmentOffsetOf(lsn, this.segmentSizeBytes)
    if (segment !== undefined && offset < segment.byteLength) segment.fill(0, offset)
  }
}
