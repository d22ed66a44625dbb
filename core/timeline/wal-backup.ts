import { Effect, Fiber, Result, Schema, Stream } from "effect"
import { assert } from "../assert.js"
import type { AcceptorFailure } from "../acceptor/acceptor.js"
import { sleepUs, US_PER_MS, US_PER_SECOND } from "../io/clock.js"
import { Disk, type DiskError, type DiskFile, joinPath } from "../io/disk.js"
import { type Log, logError, logInfo, logWarn } from "../io/log.js"
import { RemoteStorage, type RemoteStorageError } from "../io/remote-storage.js"
import { formatLsn, Lsn, segmentFileName, segmentNoOf, segmentStartLsn } from "../wal/lsn.js"
import { WAL_TIMELINE_ID } from "../wal/segment-store.js"
import { segmentObjectPath } from "./remote-layout.js"
import { type Timeline, timelineKeyText } from "./timeline.js"

/**
 * WAL backup (Neon's `wal_backup.rs`, reference §10): the offloader uploads every full segment
 * below the commit_lsn's segment to object storage, as `<tenant>/<timeline>/<segment name>`.
 * The manager forks `runWalBackup` while this safekeeper is the elected offloader and backup is
 * required, and interrupts it otherwise; two offloaders for a while (gossip lag) only make
 * identical PUTs of committed WAL.
 *
 * The rule that matters: backup_lsn (what WAL removal and eviction trust to be in object
 * storage) moves past a segment only after `put` of that segment returned success, i.e. the
 * object is durable, and only over a contiguous run of such segments. Uploads run up to
 * `parallelJobs` at a time but complete in order: a later segment that finished first waits for
 * the earlier ones; a failed one stops the run, and the loop starts again from backup_lsn after
 * a backoff (the segments after it are uploaded again: same name, same bytes, harmless).
 * A missing local segment is an error to retry, never a segment to skip: skipping would leave a
 * hole below backup_lsn that WAL removal would then make permanent.
 */

/** `--wal-backup-parallel-jobs`: uploads in flight at once (Neon's default). */
export const DEFAULT_WAL_BACKUP_PARALLEL_JOBS = 5
export const WAL_BACKUP_PARALLEL_JOBS_MAX = 64
/** Retry backoff: min(min · 2^n, max) after the n-th failure in a row (Neon's 10 ms and 5 s). */
export const DEFAULT_RETRY_BACKOFF_MIN_US = 10 * US_PER_MS
export const DEFAULT_RETRY_BACKOFF_MAX_US = 5 * US_PER_SECOND
/** A segment is read from disk and sent this much at a time (it never sits in memory whole). */
export const UPLOAD_CHUNK_BYTES = 1024 * 1024
assert(DEFAULT_RETRY_BACKOFF_MIN_US <= DEFAULT_RETRY_BACKOFF_MAX_US, "backoff starts below its cap")

export const SegmentUploadErrorReason = Schema.Literals([
  "Missing", // the local full segment is not there (removed, or not yet renamed from .partial)
  "WrongSize", // the local file is not one whole segment
  "ShortRead" // the file ended while it was being sent
])
export type SegmentUploadErrorReason = typeof SegmentUploadErrorReason.Type

export class SegmentUploadError extends Schema.TaggedError<SegmentUploadError>()("SegmentUploadError", {
  reason: SegmentUploadErrorReason,
  segmentNo: Schema.Number,
  path: Schema.String,
  message: Schema.String
}) {}

export type WalBackupFailure = SegmentUploadError | DiskError | RemoteStorageError
type RangeFailure = WalBackupFailure | AcceptorFailure

export interface WalBackupOptions {
  readonly parallelJobs?: number
  readonly retryBackoffUs?: { readonly min: number; readonly max: number }
}

/**
 * Runs until interrupted: uploads [segno(backup_lsn), segno(commit_lsn)) whenever that range is
 * not empty, then waits (on the positions watch, no polling) for commit_lsn to move on.
 */
export function runWalBackup(timeline: Timeline, options: WalBackupOptions = {}): Effect.Effect<never, never, Disk | RemoteStorage | Log> {
  const parallelJobs = options.parallelJobs ?? DEFAULT_WAL_BACKUP_PARALLEL_JOBS
  const backoff = options.retryBackoffUs ?? { min: DEFAULT_RETRY_BACKOFF_MIN_US, max: DEFAULT_RETRY_BACKOFF_MAX_US }
  assert(Number.isInteger(parallelJobs) && parallelJobs >= 1 && parallelJobs <= WAL_BACKUP_PARALLEL_JOBS_MAX, "parallel jobs within [1, max]")
  assert(backoff.min > 0 && backoff.min <= backoff.max, "backoff is positive and starts below its cap")
  return Effect.gen(function* () {
    const label = timelineKeyText(timeline.key)
    let failuresInRow = 0
    // Bounded by the WAL: every pass either uploads a segment, waits for commit_lsn, or backs off.
    while (true) {
      const segmentSizeBytes = timeline.segmentSizeBytes
      const positions = timeline.positions.get()
      if (positions.stopped) return yield* Effect.never // the timeline fail-stopped: the manager ends us
      const fromSegmentNo = segmentNoOf(positions.backupLsn, segmentSizeBytes)
      const toSegmentNo = segmentNoOf(positions.commitLsn, segmentSizeBytes)
      if (fromSegmentNo >= toSegmentNo) {
        yield* timeline.positions.waitUntil((p) => p.stopped ||
          segmentNoOf(p.commitLsn, segmentSizeBytes) > segmentNoOf(p.backupLsn, segmentSizeBytes))
        continue
      }
      const outcome = yield* Effect.result(backupRange(timeline, fromSegmentNo, toSegmentNo, parallelJobs))
      if (Result.isSuccess(outcome)) {
        failuresInRow = 0
        continue
      }
      const error = outcome.failure
      const delayUs = Math.min(backoff.min * 2 ** Math.min(failuresInRow, 30), backoff.max)
      failuresInRow++
      const fields = {
        timeline: label,
        backup_lsn: formatLsn(timeline.positions.get().backupLsn),
        error: error._tag,
        reason: "reason" in error ? error.reason : undefined,
        message: error.message,
        attempt: failuresInRow,
        retry_in_us: delayUs
      }
      // A missing segment is no storage hiccup: WAL not backed up was removed, or a filled segment
      // was not renamed yet; either way it is retried, never skipped.
      yield* (error._tag === "SegmentUploadError" && error.reason === "Missing"
        ? logError("wal backup segment missing", fields)
        : logWarn("wal backup upload failed", fields))
      yield* sleepUs(delayUs)
    }
  })
}

/**
 * Uploads segments [from, to) with at most `parallelJobs` in flight, completing in order: after
 * each head-of-line success backup_lsn becomes that segment's end. The first failure (in
 * segment order) ends the range: the uploads after it are interrupted.
 */
function backupRange(
  timeline: Timeline,
  fromSegmentNo: number,
  toSegmentNo: number,
  parallelJobs: number
): Effect.Effect<void, RangeFailure, Disk | RemoteStorage | Log> {
  return Effect.gen(function* () {
    const segmentSizeBytes = timeline.segmentSizeBytes
    const inFlight: Array<{ readonly segmentNo: number; readonly fiber: Fiber.Fiber<Result.Result<void, WalBackupFailure>> }> = []
    let nextSegmentNo = fromSegmentNo
    const startNext = Effect.gen(function* () {
      const segmentNo = nextSegmentNo++
      const fiber = yield* Effect.forkChild(Effect.result(uploadSegment(timeline, segmentNo)))
      inFlight.push({ segmentNo, fiber })
    })
    // Interrupting the range (the manager stops us, or a failure below) stops every upload.
    return yield* Effect.onExit(
      Effect.gen(function* () {
        while (nextSegmentNo < toSegmentNo && inFlight.length < parallelJobs) yield* startNext
        while (inFlight.length > 0) {
          const head = inFlight.shift()!
          const uploaded = yield* Fiber.join(head.fiber)
          if (Result.isFailure(uploaded)) return yield* Effect.fail(uploaded.failure)
          const backupLsn = segmentEndLsn(head.segmentNo, segmentSizeBytes)
          // A refusal (the acceptor stopped, or its control file could not be written) fails the
          // range: the loop then waits to be ended, or backs off and tries again.
          yield* timeline.recordBackupLsn(backupLsn)
          yield* logInfo("wal backup segment uploaded", {
            timeline: timelineKeyText(timeline.key),
            segment: segmentFileName(WAL_TIMELINE_ID, head.segmentNo, segmentSizeBytes),
            backup_lsn: formatLsn(backupLsn)
          })
          if (nextSegmentNo < toSegmentNo) yield* startNext
        }
      }),
      () => Fiber.interruptAll(inFlight.map((job) => job.fiber))
    )
  })
}

/**
 * One segment, once: streams the local full segment file in chunks into `RemoteStorage.put`
 * with its length. Success means the object is durable (RemoteStorage's contract).
 */
export function uploadSegment(timeline: Timeline, segmentNo: number): Effect.Effect<void, WalBackupFailure, Disk | RemoteStorage> {
  return Effect.gen(function* () {
    const disk = yield* Disk
    const storage = yield* RemoteStorage
    const segmentSizeBytes = timeline.segmentSizeBytes
    const localPath = joinPath(timeline.directory, segmentFileName(WAL_TIMELINE_ID, segmentNo, segmentSizeBytes))
    const objectPath = segmentObjectPath(timeline.key, segmentNo, segmentSizeBytes)
    const open: Effect.Effect<DiskFile, DiskError | SegmentUploadError> = disk.open(localPath).pipe(
      Effect.catchTag("DiskError", (error): Effect.Effect<never, DiskError | SegmentUploadError> =>
        error.reason === "NotFound"
          ? Effect.fail(new SegmentUploadError({ reason: "Missing", segmentNo, path: localPath, message: `no local segment ${localPath}` }))
          : Effect.fail(error))
    )
    yield* Effect.acquireUseRelease(open, (file) => Effect.gen(function* () {
      const sizeBytes = yield* file.size
      if (sizeBytes !== segmentSizeBytes) {
        return yield* new SegmentUploadError({ reason: "WrongSize", segmentNo, path: localPath, message: `${sizeBytes} bytes, not ${segmentSizeBytes}` })
      }
      yield* storage.put(objectPath, segmentBody(file, segmentNo, segmentSizeBytes), segmentSizeBytes)
    }), (file) => file.close)
  })
}

/** The file's first `lengthBytes` as a stream pulled chunk by chunk (never whole in memory). */
export function fileBody<E>(file: DiskFile, lengthBytes: number, onShortRead: () => E): Stream.Stream<Uint8Array, DiskError | E> {
  return Stream.unfold(0, (offsetBytes: number) => {
    if (offsetBytes >= lengthBytes) return Effect.succeed(undefined)
    return file.read(offsetBytes, Math.min(UPLOAD_CHUNK_BYTES, lengthBytes - offsetBytes)).pipe(
      Effect.flatMap((chunk): Effect.Effect<readonly [Uint8Array, number], E> => chunk.byteLength === 0
        ? Effect.fail(onShortRead())
        : Effect.succeed([chunk, offsetBytes + chunk.byteLength] as const))
    )
  })
}

function segmentBody(file: DiskFile, segmentNo: number, segmentSizeBytes: number) {
  return fileBody(file, segmentSizeBytes, () =>
    new SegmentUploadError({ reason: "ShortRead", segmentNo, path: file.path, message: "the segment file ended while it was sent" }))
}

/** backup_lsn after uploading segment `segmentNo` (its end). */
export const segmentEndLsn = (segmentNo: number, segmentSizeBytes: number): Lsn => Lsn(segmentStartLsn(segmentNo + 1, segmentSizeBytes))
