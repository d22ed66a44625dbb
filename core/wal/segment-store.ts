import { Effect, Result, Semaphore } from "effect"
import { assert } from "../assert.js"
import { type WalPositions, type WalStorage, WalStorageError, type WalStorageErrorReason } from "../acceptor/wal-storage.js"
import { type DirectoryEntry, Disk, DiskError, type DiskFile, joinPath } from "../io/disk.js"
import { isValidDecoderStart, type RecordEnds, WalDecoder } from "./decoder.js"
import { WalGenerator } from "./generator.js"
import {
  formatLsn,
  isValidSegmentSize,
  Lsn,
  parseSegmentFileName,
  segmentFileName,
  segmentNoOf,
  segmentOffsetOf
} from "./lsn.js"
import { type PgMajorVersion, pgMajorVersionOf } from "./page.js"

/**
 * The WAL segment store (Neon's `wal_storage::PhysicalStorage`, reference §7): Postgres WAL in
 * segment files named as Postgres names them, the last one `.partial`, written at write_lsn,
 * fsynced on flush, truncated when a new proposer is elected, found again on startup by decoding
 * from the persisted commit_lsn.
 *
 * Positions (reference §7). write_lsn and flush_lsn count bytes written and fdatasynced.
 * write_record_lsn is where the next record starts after the last complete record written
 * (its MAXALIGNed end, or the next segment after XLOG_SWITCH: it may run ahead of write_lsn
 * until the switch padding arrives). flush_record_lsn, the flush_lsn the acceptor reports, is
 * the last record boundary at or below flush_lsn. Unlike Neon we never let it pass flush_lsn:
 * after XLOG_SWITCH Neon reported the next segment while the switched one was still `.partial`
 * (neon#11092); here it reaches the next segment when the padding is flushed, which also
 * completes and renames the segment.
 *
 * Durability (DESIGN.md §7). New segments are written as zeros in full (so ENOSPC shows at
 * creation), fsynced, renamed from `waltmp` to `<name>.partial`, and the directory fsynced,
 * before any WAL goes in: every byte past write_lsn in the open segment is a durable zero. A
 * filled segment is fdatasynced, renamed to its full name, and the directory fsynced (Neon skips
 * that last fsync). Any failed fsync stops the store for good (fail-stop: every later call fails
 * with WalStorageError "Stopped"); it is never retried as if it had worked (fsyncgate). Any
 * other failed disk operation in a write leaves "truncation pending": the positions say what is
 * certainly written, and the next write needs a truncate (a reconnecting proposer sends
 * ProposerElected, which truncates), as after a restart.
 *
 * End of WAL after a crash. Discovery decodes from commit_lsn through consecutive segment files
 * and stops at a missing file, a short file, or the first thing that is not valid WAL (mostly
 * the zeros after the last record). Every record it accepts was written by us at that position:
 * what lies beyond write_lsn is zeros (see above), so a write that did not survive leaves zeros
 * or a torn record (bad CRC) behind, never something older.
 *
 * Truncation to `end` (the hard part). A stale segment file past `end` has page headers whose
 * xlp_pageaddr is right for its position (it was written for the same LSNs, on the same
 * timeline), so unlike a recycled Postgres segment the decoder would read it as a valid
 * continuation if it ever got there. Order of operations:
 *   1. fdatasync the open segment (its data up to `end` becomes durable; the old end is whole);
 *   2. in the segment holding `end`: ftruncate to end's offset, ftruncate back to the segment
 *      size, fdatasync. ftruncate is metadata and atomic: a crash before the fdatasync leaves
 *      either the old bytes (discovery finds the whole old end, every later file being intact)
 *      or none of them (EOF or zeros at `end`: discovery finds `end`). After the fdatasync
 *      discovery can never get past `end`, whatever later files still exist. (Writing zeros
 *      instead would not do: a torn write could keep a later sector and lose the first one,
 *      and discovery would resume on old records behind the hole.) Zeros are then written
 *      over the new hole and fdatasynced again, only to allocate the blocks: zeros over
 *      zeros, harmless whenever a crash hits;
 *   3. rename that segment back to `.partial`, complete (rename to the full name) any segment
 *      below it still named `.partial`, unlink every segment file above it, fsync the
 *      directory. Until that fsync a crash may undo any of these, which step 2 made harmless.
 * In-memory positions are first lowered to at most `end` (never raised before the data is
 * durable), so reads never serve the old tail; only when all is durable do they become `end`.
 * A crash anywhere thus leaves the new end or the whole old end, and once truncate returns the
 * old tail can neither be discovered nor served. Files beyond the discovered end after a crash
 * are never read (reads stop at write_lsn) and are unlinked by the truncate that the first write
 * after every load requires.
 *
 * Reads serve [start, min(start + length, segment end, write_lsn)): bytes written but not yet
 * fsynced are served too (what a sender may send is its decision: commit_lsn for the
 * pageserver), never bytes past write_lsn. A sender reads a segment 128 KiB at a time, so the
 * last READ_HANDLE_COUNT_MAX segments read stay open, keyed by segment number and name. The
 * name comes from the store's own state, never from an open that fails: after a truncate every
 * segment below write_lsn's is complete (full name) and write_lsn's own is `.partial` (the open
 * segment, read through the write handle); until then (at load, or after a failure that may
 * have left a rename undone) it comes from a directory listing. Every call that renames, zeroes
 * or unlinks a segment (truncate, a segment completing, removal, close) first closes the read
 * handles it affects.
 *
 * Calls are serialized (one at a time, in arrival order) so that a removal task and a sender can
 * share the store with the acceptor; mutating calls are uninterruptible once started, so an
 * interrupted caller cannot leave the positions out of step with the disk.
 */

/** Postgres' timeline id in segment names: always 1 in Neon (reference conventions). */
export const WAL_TIMELINE_ID = 1
/** New segments are prepared under this name, then renamed (Neon's `waltmp`). */
export const SEGMENT_TEMP_FILE_NAME = "waltmp"
export const PARTIAL_SUFFIX = ".partial"
/** Zero-filling writes this much at a time (one shared buffer of zeros). */
export const ZERO_FILL_CHUNK_BYTES = 1024 * 1024
/** Discovery reads segments in chunks of this size. */
export const DISCOVERY_READ_CHUNK_BYTES = 1024 * 1024
/** Read handles kept open between reads: the segment a sender is in and the one it just left. */
export const READ_HANDLE_COUNT_MAX = 2
/** Headroom a read may leave before the WAL: an XLogData frame's 30 bytes of headers fit. */
export const READ_HEADROOM_BYTES_MAX = 64

const ZEROS = new Uint8Array(ZERO_FILL_CHUNK_BYTES)

export interface SegmentStoreOptions {
  /** The timeline directory (it must exist). */
  readonly directory: string
  /** wal_seg_size: a power of two from 1 MiB to 1 GiB. */
  readonly segmentSizeBytes: number
  /** The persisted commit_lsn: a record boundary where discovery starts; 0 means no WAL yet. */
  readonly commitLsn: Lsn
  /** The persisted timeline_start_lsn, when known: a commit_lsn below it means a corrupt control file. */
  readonly timelineStartLsn?: Lsn | undefined
  /** PG_VERSION_NUM (150004) or a major (15); 0 when unknown (any supported WAL format is read). */
  readonly pgVersion: number
  /** xlp_sysid required in long page headers; 0n when unknown (the first one seen is required after). */
  readonly systemId: bigint
  /** `--no-sync`: skip every fsync (tests and benchmarks only). */
  readonly noSync?: boolean | undefined
}

/**
 * Opens the store of one timeline: discovers the end of WAL (reference §7 "Startup") and fsyncs
 * the segments it read and the directory, since what it found may still sit only in the page
 * cache after a process crash (Neon fsyncs the whole data directory at start for that reason).
 * The store starts with truncation pending.
 */
export const openSegmentStore = Effect.fn("SegmentStore.open")(function* (options: SegmentStoreOptions) {
  const disk = yield* Disk
  const config = yield* configOf(options)
  if (options.commitLsn === 0) return new SegmentStore(disk, config, 0, undefined)
  const discovered = yield* discoverEnd(disk, config, options.commitLsn)
  return new SegmentStore(disk, config, discovered.endLsn, discovered.files)
})

interface ReadHandle {
  readonly segmentNo: number
  readonly partial: boolean
  readonly file: DiskFile
}

interface StoreConfig {
  readonly directory: string
  readonly segmentSizeBytes: number
  readonly pgVersion: PgMajorVersion | undefined
  readonly systemId: bigint | undefined
  readonly noSync: boolean
}

export class SegmentStore implements WalStorage {
  readonly directory: string
  readonly segmentSizeBytes: number
  private readonly lock = Semaphore.makeUnsafe(1)

  private writeLsn: number
  private flushLsn: number
  private writeRecordLsn: number
  private flushRecordLsn: number
  /** The last record boundary at or below write_lsn (below write_record_lsn only after XLOG_SWITCH). */
  private writtenBoundaryLsn: number
  /** True at every load, after a failed write, and while a truncate is under way. */
  private truncationPending = true
  /** Fed every byte written since the last truncate; undefined after it met invalid WAL. */
  private decoder: WalDecoder | undefined
  private openSegment: { readonly segmentNo: number; readonly file: DiskFile } | undefined
  /** Open for reads, most recently used first; at most READ_HANDLE_COUNT_MAX. */
  private readHandles: ReadHandle[] = []
  /**
   * Where a read learns a segment's name: "Settled" (from the positions, see the module
   * comment), a directory listing, or undefined (list the directory at the next read).
   */
  private segmentNames: "Settled" | Map<number, SegmentFileNames> | undefined
  private stopped: WalStorageError | undefined
  private closed = false

  constructor(
    private readonly disk: Disk["Service"],
    private readonly config: StoreConfig,
    endLsn: number,
    listedNames: Map<number, SegmentFileNames> | undefined
  ) {
    this.directory = config.directory
    this.segmentSizeBytes = config.segmentSizeBytes
    this.writeLsn = this.flushLsn = this.writeRecordLsn = this.flushRecordLsn = this.writtenBoundaryLsn = endLsn
    this.decoder = undefined
    this.openSegment = undefined
    this.segmentNames = listedNames
    this.stopped = undefined
  }

  positions(): WalPositions {
    return {
      writeLsn: Lsn(this.writeLsn),
      flushLsn: Lsn(this.flushLsn),
      writeRecordLsn: Lsn(this.writeRecordLsn),
      flushRecordLsn: Lsn(this.flushRecordLsn)
    }
  }

  /** Whether the next write needs a truncate first. */
  get isTruncationPending(): boolean {
    return this.truncationPending
  }

  /** Why the store stopped (an fsync failed), if it did. */
  get stopError(): WalStorageError | undefined {
    return this.stopped
  }

  write(startLsn: Lsn, bytes: Uint8Array): Effect.Effect<void, WalStorageError | DiskError> {
    return this.exclusive(Effect.gen({ self: this }, function* () {
      yield* this.refuseIfStopped()
      assertLsn(startLsn, "write start")
      assert(Number.isSafeInteger(startLsn + bytes.length), "write ends below 2^53")
      if (this.truncationPending) {
        return yield* walError("TruncationPending", "a truncate must precede the first write after a load or a failed write")
      }
      if (this.writeLsn > startLsn) {
        return yield* walError("Rewrite", `write at ${formatLsn(startLsn)} below write_lsn ${formatLsn(this.writeLsn)}`)
      }
      if (this.writeLsn < startLsn && this.writeLsn !== 0) {
        return yield* walError("Gap", `write at ${formatLsn(startLsn)} above write_lsn ${formatLsn(this.writeLsn)}`)
      }
      if (bytes.length === 0) return
      let decoder = this.decoder
      if (decoder === undefined) {
        return yield* walError("InvalidWal", "an earlier write was not valid WAL; a truncate must come first")
      }
      if (decoder.position !== startLsn) {
        // Only with write_lsn 0 (nothing written since a truncate to 0): the WAL starts here.
        assert(this.writeLsn === 0, "the decoder follows write_lsn")
        const restarted = this.makeDecoder(startLsn)
        if (restarted === undefined) {
          return yield* walError("InvalidWal", `first write at ${formatLsn(startLsn)}, which is not a record boundary`)
        }
        decoder = restarted
        this.decoder = decoder
      }
      // Decode before writing: bytes that are not valid WAL change nothing on disk. scan
      // finds the record ends without materialising records (nothing allocated per record).
      decoder.scan(bytes)
      if (decoder.error !== undefined) {
        this.decoder = undefined
        return yield* walError("InvalidWal", `refused write at ${formatLsn(startLsn)}: ${decoder.error.message}`)
      }
      // The ends stay valid until the decoder's next scan, which the lock keeps after this write.
      yield* this.writeSegments(startLsn, bytes, decoder.recordEnds).pipe(
        Effect.tapError(() =>
          Effect.sync(() => {
            // The positions say what was certainly written; the decoder is past that.
            this.truncationPending = true
            this.decoder = undefined
          })
        )
      )
    }))
  }

  get flush(): Effect.Effect<void, WalStorageError | DiskError> {
    return this.exclusive(Effect.gen({ self: this }, function* () {
      yield* this.refuseIfStopped()
      if (this.writeLsn === this.flushLsn) {
        // Every byte is durable; a truncate that failed after lowering the positions may have
        // left the last boundary (its `end`, below the old flush_lsn) unreported.
        this.flushRecordLsn = Math.max(this.flushRecordLsn, this.writtenBoundaryLsn)
        return
      }
      const open = this.openSegment
      if (open === undefined) {
        // Unflushed bytes live only in the open segment (a filled one is fsynced at once); neon#11605.
        return yield* walError("NoOpenSegment", `write_lsn ${formatLsn(this.writeLsn)} above flush_lsn ${formatLsn(this.flushLsn)} with no open segment`)
      }
      yield* this.durably(open.file.datasync)
      this.flushLsn = this.writeLsn
      this.flushRecordLsn = this.writtenBoundaryLsn
    }))
  }

  truncate(endLsn: Lsn): Effect.Effect<void, WalStorageError | DiskError> {
    return this.exclusive(Effect.gen({ self: this }, function* () {
      yield* this.refuseIfStopped()
      assertLsn(endLsn, "truncate end")
      if (this.writeRecordLsn !== 0 && endLsn > this.writeRecordLsn) {
        return yield* walError("TruncateAboveWrite", `truncate to ${formatLsn(endLsn)} above write_record_lsn ${formatLsn(this.writeRecordLsn)}`)
      }
      if (!isValidDecoderStart(endLsn, this.segmentSizeBytes)) {
        return yield* walError("InvalidWal", `truncate to ${formatLsn(endLsn)}, which is not a record boundary`)
      }
      if (!this.truncationPending && this.decoder !== undefined && endLsn === this.writeLsn && endLsn === this.flushRecordLsn) return
      this.truncationPending = true
      this.decoder = undefined
      this.lowerPositionsTo(endLsn)
      // Segments get zeroed, renamed and unlinked below: no read may use an old handle or name.
      this.segmentNames = undefined
      yield* this.closeReadHandles(() => true)
      const open = this.openSegment
      if (open !== undefined) {
        this.openSegment = undefined
        yield* this.durably(open.file.datasync).pipe(Effect.ensuring(open.file.close))
      }
      // All that is written is durable now and no segment is open: should a later step fail, a
      // flush has nothing left to do (rather than NoOpenSegment, neon#11605).
      this.flushLsn = this.writeLsn
      this.flushRecordLsn = this.writtenBoundaryLsn
      const files = indexSegmentFiles(yield* this.disk.list(this.directory), this.segmentSizeBytes)
      const plan = planTruncation(files, endLsn, this.segmentSizeBytes)
      yield* this.zeroTail(plan)
      for (const segmentNo of plan.completeSegmentNos) {
        yield* this.disk.rename(this.segmentPath(segmentNo, true), this.segmentPath(segmentNo, false))
      }
      for (const name of plan.unlinkNames) yield* this.disk.unlink(joinPath(this.directory, name))
      yield* this.durably(this.disk.syncDirectory(this.directory))
      const decoder = this.makeDecoder(endLsn)
      assert(decoder !== undefined, "a valid decoder start makes a decoder")
      this.decoder = decoder
      // Everything up to the new end is durable and ends at a record boundary.
      this.writeLsn = this.flushLsn = this.writeRecordLsn = this.flushRecordLsn = this.writtenBoundaryLsn = endLsn
      this.truncationPending = false
      // Below end's segment every `.partial` was completed; end's own is `.partial` (or absent).
      this.segmentNames = "Settled"
    }))
  }

  initializeFirstSegment(startLsn: Lsn): Effect.Effect<void, WalStorageError | DiskError> {
    return this.exclusive(Effect.gen({ self: this }, function* () {
      yield* this.refuseIfStopped()
      assertLsn(startLsn, "first segment start")
      assert(this.writeLsn === 0, "the first segment is initialized only while there is no WAL")
      if (!isValidDecoderStart(startLsn, this.segmentSizeBytes)) {
        return yield* walError("InvalidWal", `WAL cannot start at ${formatLsn(startLsn)}, which is not a record boundary`)
      }
      const pgVersion = this.config.pgVersion
      if (pgVersion === undefined) {
        return yield* walError("InvalidWal", "pg_version unknown: cannot generate page headers")
      }
      const generator = new WalGenerator({
        startLsn,
        segmentSizeBytes: this.segmentSizeBytes,
        systemId: this.config.systemId ?? 0n,
        pgVersion,
        timelineId: WAL_TIMELINE_ID
      })
      const prefix = generator.segmentPrefix(startLsn)
      if (prefix.length === 0) return
      // Not fsynced here: the truncate that follows in ProposerElected fsyncs this segment. It
      // may create the segment: names come from a fresh listing until that truncate.
      const segmentNo = segmentNoOf(startLsn, this.segmentSizeBytes)
      this.segmentNames = undefined
      yield* this.closeReadHandles((handle) => handle.segmentNo === segmentNo)
      const file = yield* this.openOrCreateSegment(segmentNo)
      yield* file.write(0, prefix).pipe(Effect.ensuring(file.close))
    }))
  }

  removeUpTo(segmentNo: number): Effect.Effect<void, WalStorageError | DiskError> {
    return this.exclusive(Effect.gen({ self: this }, function* () {
      yield* this.refuseIfStopped()
      assert(Number.isSafeInteger(segmentNo), "segment number is an integer")
      assert(this.writeLsn === 0 || (segmentNo + 1) * this.segmentSizeBytes <= this.writeLsn, "removal stays below write_lsn")
      yield* this.closeReadHandles((handle) => handle.segmentNo <= segmentNo)
      const files = indexSegmentFiles(yield* this.disk.list(this.directory), this.segmentSizeBytes)
      // No directory fsync: a removed segment that comes back after a crash is old, valid WAL.
      for (const [number, names] of files) {
        if (number > segmentNo) continue
        // A listing forgets a file before it goes, so a failed unlink leaves it unreadable, not misnamed.
        if (this.segmentNames instanceof Map) this.segmentNames.delete(number)
        if (names.full) yield* this.disk.unlink(this.segmentPath(number, false))
        if (names.partial) yield* this.disk.unlink(this.segmentPath(number, true))
      }
    }))
  }

  read(startLsn: Lsn, length: number): Effect.Effect<Uint8Array, WalStorageError | DiskError> {
    return this.readWithHeadroom(startLsn, length, 0)
  }

  /**
   * As `read`, but the WAL lands at `headroomBytes` into the returned buffer; what lies before
   * it is scratch for the caller's headers (an XLogData frame). The buffer is one allocation,
   * the WAL read straight into it: from the segment's offset `headroomBytes` earlier, whose
   * bytes the caller overwrites (copied in only within `headroomBytes` of a segment start).
   * The WAL served is the buffer's length minus `headroomBytes`, 0 at or past write_lsn. It
   * relies on DiskFile.read handing over a buffer of its own (both worlds allocate one per read).
   */
  readWithHeadroom(startLsn: Lsn, length: number, headroomBytes: number): Effect.Effect<Uint8Array, WalStorageError | DiskError> {
    return this.lock.withPermit(Effect.gen({ self: this }, function* () {
      yield* this.refuseIfStopped()
      assertLsn(startLsn, "read start")
      assert(Number.isSafeInteger(length) && length >= 0, "read length is a byte count")
      assert(Number.isSafeInteger(headroomBytes) && headroomBytes >= 0 && headroomBytes <= READ_HEADROOM_BYTES_MAX, "read headroom is a small byte count")
      const segmentNo = segmentNoOf(startLsn, this.segmentSizeBytes)
      const segmentEndLsn = (segmentNo + 1) * this.segmentSizeBytes
      const endLsn = Math.min(startLsn + length, segmentEndLsn, this.writeLsn)
      if (endLsn <= startLsn) return new Uint8Array(headroomBytes)
      const offsetBytes = segmentOffsetOf(startLsn, this.segmentSizeBytes)
      const file = yield* this.segmentForRead(segmentNo, startLsn)
      if (offsetBytes < headroomBytes) {
        const data = yield* file.read(offsetBytes, endLsn - startLsn)
        const buffer = new Uint8Array(headroomBytes + data.byteLength)
        buffer.set(data, headroomBytes)
        return buffer
      }
      const buffer = yield* file.read(offsetBytes - headroomBytes, headroomBytes + endLsn - startLsn)
      // Short only at the end of the file: a shorter segment than write_lsn implies.
      return buffer.byteLength >= headroomBytes ? buffer : new Uint8Array(headroomBytes)
    }))
  }

  get close(): Effect.Effect<void> {
    return this.exclusive(Effect.gen({ self: this }, function* () {
      this.closed = true
      yield* this.closeReadHandles(() => true)
      const open = this.openSegment
      this.openSegment = undefined
      if (open !== undefined) yield* open.file.close
    }))
  }

  // ---------------------------------------------------------------- reading

  /**
   * A handle on the segment holding `startLsn` (below write_lsn): the write handle when it is
   * the open segment, else a cached read handle, else one opened under the name the store
   * knows (see the module comment) and cached. Acquiring is uninterruptible, so an
   * interrupted read cannot leak a handle.
   */
  private segmentForRead(segmentNo: number, startLsn: number): Effect.Effect<DiskFile, DiskError> {
    const open = this.openSegment
    if (open !== undefined && open.segmentNo === segmentNo) return Effect.succeed(open.file)
    return Effect.uninterruptible(Effect.gen({ self: this }, function* () {
      const partial = yield* this.nameForRead(segmentNo)
      if (partial === undefined) {
        return yield* new DiskError({
          reason: "NotFound",
          operation: "read",
          path: this.segmentPath(segmentNo, true),
          message: `no segment file holds ${formatLsn(startLsn)}`
        })
      }
      const handles = this.readHandles
      const index = handles.findIndex((handle) => handle.segmentNo === segmentNo && handle.partial === partial)
      if (index >= 0) {
        const handle = handles[index]!
        if (index > 0) {
          handles.splice(index, 1)
          handles.unshift(handle)
        }
        return handle.file
      }
      const file = yield* this.disk.open(this.segmentPath(segmentNo, partial)).pipe(
        Effect.mapError((error) => error.reason === "NotFound"
          ? new DiskError({ reason: "NotFound", operation: "read", path: error.path, message: `no segment file holds ${formatLsn(startLsn)}` })
          : error)
      )
      handles.unshift({ segmentNo, partial, file })
      // One pass per handle beyond the limit: at most one.
      while (handles.length > READ_HANDLE_COUNT_MAX) yield* handles.pop()!.file.close
      return file
    }))
  }

  /** Whether a segment below write_lsn is `.partial` (true), full (false), or missing (undefined). */
  private nameForRead(segmentNo: number): Effect.Effect<boolean | undefined, DiskError> {
    const names = this.segmentNames
    if (names === "Settled") {
      // write_lsn's segment holds bytes below it only if write_lsn is inside it.
      const writeSegmentNo = segmentNoOf(this.writeLsn, this.segmentSizeBytes)
      assert(segmentNo <= writeSegmentNo, "a read stays below write_lsn")
      return Effect.succeed(segmentNo === writeSegmentNo)
    }
    if (names !== undefined) return Effect.succeed(preferredName(names.get(segmentNo)))
    return Effect.map(this.disk.list(this.directory), (entries) => {
      const listed = indexSegmentFiles(entries, this.segmentSizeBytes)
      this.segmentNames = listed
      return preferredName(listed.get(segmentNo))
    })
  }

  /** Closes (and forgets) the read handles `which` picks. */
  private closeReadHandles(which: (handle: ReadHandle) => boolean): Effect.Effect<void> {
    const closing = this.readHandles.filter(which)
    if (closing.length === 0) return Effect.void
    this.readHandles = this.readHandles.filter((handle) => !which(handle))
    return Effect.forEach(closing, (handle) => handle.file.close, { discard: true })
  }

  // ---------------------------------------------------------------- writing

  /** Writes `bytes` at `startLsn` segment by segment, moving the positions as pieces land. */
  private writeSegments(startLsn: number, bytes: Uint8Array, records: RecordEnds) {
    return Effect.gen({ self: this }, function* () {
      const segmentSize = this.segmentSizeBytes
      let position = startLsn
      let index = 0
      let endedIndex = 0
      let boundaryIndex = 0
      // One pass per segment the bytes touch.
      while (index < bytes.length) {
        const segmentNo = segmentNoOf(position, segmentSize)
        const offsetBytes = position - segmentNo * segmentSize
        const take = Math.min(bytes.length - index, segmentSize - offsetBytes)
        const file = yield* this.segmentForWrite(segmentNo)
        yield* file.write(offsetBytes, bytes.subarray(index, index + take))
        index += take
        position += take
        this.writeLsn = position
        // Per record, not per byte: a record counts as written once its last byte is.
        while (endedIndex < records.count && records.endLsn(endedIndex) <= position) {
          this.writeRecordLsn = records.nextLsn(endedIndex)
          endedIndex++
        }
        while (boundaryIndex < records.count && records.nextLsn(boundaryIndex) <= position) {
          this.writtenBoundaryLsn = records.nextLsn(boundaryIndex)
          boundaryIndex++
        }
        // An XLOG_SWITCH written earlier becomes a boundary once its padding is all here.
        if (this.writeRecordLsn <= position) this.writtenBoundaryLsn = Math.max(this.writtenBoundaryLsn, this.writeRecordLsn)
        if (position % segmentSize === 0) yield* this.completeSegment(segmentNo)
      }
    })
  }

  /** A filled segment: fdatasync, then the full name, durably (reference §7 plus the dir fsync). */
  private completeSegment(segmentNo: number) {
    return Effect.gen({ self: this }, function* () {
      const open = this.openSegment
      assert(open !== undefined && open.segmentNo === segmentNo, "the filled segment is the open one")
      this.openSegment = undefined
      yield* this.durably(open.file.datasync).pipe(Effect.ensuring(open.file.close))
      // Earlier segments were fsynced when they filled: everything below write_lsn is durable.
      this.flushLsn = this.writeLsn
      this.flushRecordLsn = this.writtenBoundaryLsn
      // Until the rename is done the segment's name is not what the positions say.
      const names = this.segmentNames
      this.segmentNames = undefined
      yield* this.closeReadHandles((handle) => handle.segmentNo === segmentNo)
      yield* this.disk.rename(this.segmentPath(segmentNo, true), this.segmentPath(segmentNo, false))
      this.segmentNames = names
      yield* this.durably(this.disk.syncDirectory(this.directory))
    })
  }

  private segmentForWrite(segmentNo: number) {
    return Effect.gen({ self: this }, function* () {
      const open = this.openSegment
      if (open !== undefined) {
        if (open.segmentNo === segmentNo) return open.file
        this.openSegment = undefined
        yield* open.file.close
      }
      // After the truncate every write needs, a segment at or above write_lsn's is either the
      // zeroed `.partial` of that truncate or one we create now: never a stale file. Reads of
      // it go through the write handle from now on.
      yield* this.closeReadHandles((handle) => handle.segmentNo === segmentNo)
      const existing = yield* this.disk.open(this.segmentPath(segmentNo, true)).pipe(
        Effect.catchIf((error) => error.reason === "NotFound", () => Effect.succeed(undefined))
      )
      const file = existing ?? (yield* this.createSegment(segmentNo))
      this.openSegment = { segmentNo, file }
      return file
    })
  }

  /** `<name>.partial` if it exists, else the full name, else undefined. */
  private openExistingSegment(segmentNo: number) {
    return Effect.gen({ self: this }, function* () {
      for (const partial of [true, false]) {
        const file = yield* this.disk.open(this.segmentPath(segmentNo, partial)).pipe(
          Effect.catchIf((error) => error.reason === "NotFound", () => Effect.succeed(undefined))
        )
        if (file !== undefined) return file
      }
      return undefined
    })
  }

  private openOrCreateSegment(segmentNo: number) {
    return Effect.gen({ self: this }, function* () {
      return (yield* this.openExistingSegment(segmentNo)) ?? (yield* this.createSegment(segmentNo))
    })
  }

  /**
   * A new segment: `waltmp` written full of zeros and fsynced, renamed to `<name>.partial`, the
   * directory fsynced (Neon's durable_rename); removed again on failure. Returns it opened.
   */
  private createSegment(segmentNo: number) {
    return Effect.gen({ self: this }, function* () {
      const temporaryPath = joinPath(this.directory, SEGMENT_TEMP_FILE_NAME)
      const path = this.segmentPath(segmentNo, true)
      yield* Effect.gen({ self: this }, function* () {
        const file = yield* this.disk.open(temporaryPath, { create: true })
        yield* Effect.gen({ self: this }, function* () {
          yield* file.truncate(0) // a leftover from a crash
          yield* writeZeros(file, 0, this.segmentSizeBytes)
          yield* this.durably(file.sync)
        }).pipe(Effect.ensuring(file.close))
        yield* this.disk.rename(temporaryPath, path)
        yield* this.durably(this.disk.syncDirectory(this.directory))
      }).pipe(Effect.tapError(() => this.disk.unlink(temporaryPath).pipe(Effect.ignore)))
      return yield* this.disk.open(path)
    })
  }

  // ---------------------------------------------------------------- truncation

  /** Step 2 of the module comment: make `end` the end of WAL in its own segment, durably. */
  private zeroTail(plan: TruncationPlan) {
    return Effect.gen({ self: this }, function* () {
      const { segmentNo, offsetBytes, existing } = plan
      if (existing === undefined) {
        // Nothing there: discovery stops at the missing file. A segment that must hold bytes
        // below `end` is created (zeros, as Neon's "open or create").
        if (offsetBytes > 0) yield* (yield* this.createSegment(segmentNo)).close
        return
      }
      const file = yield* this.disk.open(this.segmentPath(segmentNo, existing === "partial"))
      yield* Effect.gen({ self: this }, function* () {
        yield* file.truncate(offsetBytes)
        yield* file.truncate(this.segmentSizeBytes)
        yield* this.durably(file.datasync)
        yield* writeZeros(file, offsetBytes, this.segmentSizeBytes)
        yield* this.durably(file.datasync)
      }).pipe(Effect.ensuring(file.close))
      if (existing === "full") yield* this.disk.rename(this.segmentPath(segmentNo, false), this.segmentPath(segmentNo, true))
    })
  }

  private lowerPositionsTo(endLsn: number): void {
    this.writeLsn = Math.min(this.writeLsn, endLsn)
    this.flushLsn = Math.min(this.flushLsn, endLsn)
    this.writeRecordLsn = Math.min(this.writeRecordLsn, endLsn)
    this.flushRecordLsn = Math.min(this.flushRecordLsn, endLsn)
    this.writtenBoundaryLsn = Math.min(this.writtenBoundaryLsn, endLsn)
  }

  // ---------------------------------------------------------------- helpers

  private makeDecoder(startLsn: number): WalDecoder | undefined {
    const made = WalDecoder.make({
      startLsn: Lsn(startLsn),
      segmentSizeBytes: this.segmentSizeBytes,
      systemId: this.config.systemId,
      pgVersion: this.config.pgVersion
    })
    return Result.isSuccess(made) ? made.success : undefined
  }

  private segmentPath(segmentNo: number, partial: boolean): string {
    return segmentPathOf(this.config, segmentNo, partial)
  }

  /** Serialized and, once started, uninterruptible. */
  private exclusive<A, E>(effect: Effect.Effect<A, E>): Effect.Effect<A, E> {
    return this.lock.withPermit(Effect.uninterruptible(effect))
  }

  private refuseIfStopped(): Effect.Effect<void, WalStorageError> {
    if (this.stopped !== undefined) return Effect.fail(this.stopped)
    if (this.closed) return Effect.fail(new WalStorageError({ reason: "Stopped", message: "the segment store is closed" }))
    return Effect.void
  }

  /** An fsync: skipped with noSync; its failure stops the store for good. */
  private durably(sync: Effect.Effect<void, DiskError>): Effect.Effect<void, WalStorageError> {
    if (this.config.noSync) return Effect.void
    return sync.pipe(Effect.mapError((error) => {
      this.stopped ??= new WalStorageError({
        reason: "Stopped",
        message: `stopped after a failed fsync (${error.operation} ${error.path}: ${error.reason} ${error.message}); never retried`
      })
      return this.stopped
    }))
  }
}

// ------------------------------------------------------------------ opening

const configOf = (options: SegmentStoreOptions): Effect.Effect<StoreConfig, WalStorageError> => {
  // The size comes from a control file on disk: a bad one is corrupt input, not a bug (review).
  if (!isValidSegmentSize(options.segmentSizeBytes)) {
    return walError("Corrupt", `wal_seg_size ${options.segmentSizeBytes} is not a power of two from 1 MiB to 1 GiB`)
  }
  assert(ZERO_FILL_CHUNK_BYTES <= options.segmentSizeBytes && options.segmentSizeBytes % ZERO_FILL_CHUNK_BYTES === 0, "zero-fill chunks tile a segment")
  assertLsn(options.commitLsn, "commit_lsn")
  assert(options.systemId >= 0n && options.systemId < 1n << 64n, "system id is a u64")
  const pgVersion = pgMajorVersionOf(options.pgVersion)
  if (options.pgVersion !== 0 && pgVersion === undefined) {
    return walError("Corrupt", `pg_version ${options.pgVersion} is not PostgreSQL 14-17`)
  }
  const commitLsn = options.commitLsn
  if (commitLsn !== 0 && !isValidDecoderStart(commitLsn, options.segmentSizeBytes)) {
    return walError("Corrupt", `commit_lsn ${formatLsn(commitLsn)} is not a record boundary`)
  }
  const timelineStartLsn = options.timelineStartLsn ?? 0
  if (commitLsn !== 0 && commitLsn < timelineStartLsn) {
    return walError("Corrupt", `commit_lsn ${formatLsn(commitLsn)} below timeline_start_lsn ${formatLsn(timelineStartLsn)}`)
  }
  return Effect.succeed({
    directory: options.directory,
    segmentSizeBytes: options.segmentSizeBytes,
    pgVersion,
    systemId: options.systemId === 0n ? undefined : options.systemId,
    noSync: options.noSync === true
  })
}

/**
 * Decodes from commit_lsn through consecutive segment files (`.partial` preferred) and returns
 * where the next record would start after the last valid one, with the listing it went by (the
 * names reads use until the first truncate). Each segment read is fdatasynced (unless noSync),
 * then the directory.
 */
const discoverEnd = Effect.fnUntraced(function* (disk: Disk["Service"], config: StoreConfig, commitLsn: number) {
  const segmentSize = config.segmentSizeBytes
  const files = indexSegmentFiles(yield* disk.list(config.directory), segmentSize)
  const made = WalDecoder.make({ startLsn: Lsn(commitLsn), segmentSizeBytes: segmentSize, systemId: config.systemId, pgVersion: config.pgVersion })
  assert(Result.isSuccess(made), "commit_lsn was checked to be a decoder start")
  const decoder = made.success
  const stopOnSyncFailure = (sync: Effect.Effect<void, DiskError>) =>
    config.noSync ? Effect.void : sync.pipe(Effect.mapError((error) =>
      new WalStorageError({ reason: "Stopped", message: `fsync failed while loading (${error.operation} ${error.path}: ${error.reason})` })))
  let segmentNo = segmentNoOf(commitLsn, segmentSize)
  let offsetBytes = segmentOffsetOf(commitLsn, segmentSize)
  let readAny = false
  // One pass per segment file; there are at most files.size of them.
  for (let pass = 0; pass < files.size; pass++) {
    const names = files.get(segmentNo)
    if (names === undefined) break
    const file = yield* disk.open(segmentPathOf(config, segmentNo, names.partial))
    readAny = true
    const whole = yield* Effect.gen(function* () {
      const sizeBytes = yield* file.size
      if (pass === 0 && sizeBytes < offsetBytes) {
        return yield* walError("EndBelowCommit", `segment ${segmentNo} holds ${sizeBytes} bytes, commit_lsn ${formatLsn(commitLsn)} is past them`)
      }
      const limitBytes = Math.min(sizeBytes, segmentSize)
      let at = offsetBytes
      // One pass per chunk; a short read (EOF) ends the segment.
      while (at < limitBytes && decoder.error === undefined) {
        const chunk = yield* file.read(at, Math.min(DISCOVERY_READ_CHUNK_BYTES, limitBytes - at))
        if (chunk.length === 0) break
        decoder.scan(chunk)
        at += chunk.length
      }
      yield* stopOnSyncFailure(file.datasync)
      return at === segmentSize
    }).pipe(Effect.ensuring(file.close))
    if (decoder.error !== undefined || !whole) break
    segmentNo++
    offsetBytes = 0
  }
  if (readAny) yield* stopOnSyncFailure(disk.syncDirectory(config.directory))
  const endLsn = decoder.nextRecordLsn
  if (endLsn < commitLsn) {
    return yield* walError("EndBelowCommit", `WAL ends at ${formatLsn(endLsn)}, below commit_lsn ${formatLsn(commitLsn)}`)
  }
  return { endLsn, files }
})

// ------------------------------------------------------------------ plain helpers

/** The names a segment has in the directory (both only after an interrupted copy by hand). */
export interface SegmentFileNames {
  readonly partial: boolean
  readonly full: boolean
}

/** The name a read opens: `.partial` when both exist (as discovery), undefined when neither. */
function preferredName(names: SegmentFileNames | undefined): boolean | undefined {
  if (names === undefined) return undefined
  return names.partial ? true : names.full ? false : undefined
}

/** Segment files of WAL_TIMELINE_ID by segment number, in directory (= segment) order. */
export function indexSegmentFiles(entries: ReadonlyArray<DirectoryEntry>, segmentSizeBytes: number): Map<number, SegmentFileNames> {
  const files = new Map<number, SegmentFileNames>()
  for (const entry of entries) {
    if (entry.kind !== "file") continue
    const parsed = parseSegmentFileName(entry.name, segmentSizeBytes)
    if (parsed === undefined || parsed.timelineId !== WAL_TIMELINE_ID) continue
    const known = files.get(parsed.segmentNo) ?? { partial: false, full: false }
    files.set(parsed.segmentNo, parsed.partial ? { ...known, partial: true } : { ...known, full: true })
  }
  return files
}

export interface TruncationPlan {
  /** The segment holding `end`: its bytes from `offsetBytes` on become zeros. */
  readonly segmentNo: number
  readonly offsetBytes: number
  /** The name it has now (`.partial` when both), or undefined when it does not exist. */
  readonly existing: "partial" | "full" | undefined
  /** Segments below it still named `.partial`: complete, so they get their full names. */
  readonly completeSegmentNos: ReadonlyArray<number>
  /** File names to unlink: every segment above it, and its full name when `.partial` exists too. */
  readonly unlinkNames: ReadonlyArray<string>
}

/** What truncating to `endLsn` does to the segment files (see the module comment for the order). */
export function planTruncation(files: ReadonlyMap<number, SegmentFileNames>, endLsn: number, segmentSizeBytes: number): TruncationPlan {
  const segmentNo = segmentNoOf(endLsn, segmentSizeBytes)
  const names = files.get(segmentNo)
  const completeSegmentNos: number[] = []
  const unlinkNames: string[] = []
  const nameOf = (number: number, partial: boolean) =>
    segmentFileName(WAL_TIMELINE_ID, number, segmentSizeBytes) + (partial ? PARTIAL_SUFFIX : "")
  for (const [number, found] of files) {
    if (number < segmentNo && found.partial) completeSegmentNos.push(number)
    if (number > segmentNo) {
      if (found.full) unlinkNames.push(nameOf(number, false))
      if (found.partial) unlinkNames.push(nameOf(number, true))
    }
  }
  if (names?.partial === true && names.full) unlinkNames.push(nameOf(segmentNo, false))
  return {
    segmentNo,
    offsetBytes: segmentOffsetOf(endLsn, segmentSizeBytes),
    existing: names === undefined ? undefined : names.partial ? "partial" : "full",
    completeSegmentNos,
    unlinkNames
  }
}

function segmentPathOf(config: StoreConfig, segmentNo: number, partial: boolean): string {
  return joinPath(config.directory, segmentFileName(WAL_TIMELINE_ID, segmentNo, config.segmentSizeBytes) + (partial ? PARTIAL_SUFFIX : ""))
}

/** Writes zeros over [fromBytes, toBytes) of `file`, a chunk at a time. */
const writeZeros = Effect.fnUntraced(function* (file: DiskFile, fromBytes: number, toBytes: number) {
  // One pass per chunk: at most segment size / ZERO_FILL_CHUNK_BYTES.
  for (let at = fromBytes; at < toBytes; at += ZERO_FILL_CHUNK_BYTES) {
    const length = Math.min(ZERO_FILL_CHUNK_BYTES, toBytes - at)
    yield* file.write(at, length === ZERO_FILL_CHUNK_BYTES ? ZEROS : ZEROS.subarray(0, length))
  }
})

function walError(reason: WalStorageErrorReason, message: string): Effect.Effect<never, WalStorageError> {
  return Effect.fail(new WalStorageError({ reason, message }))
}

function assertLsn(lsn: number, what: string): void {
  assert(Number.isSafeInteger(lsn) && lsn >= 0, `${what} is an LSN (an integer in 0..2^53-1)`)
}
