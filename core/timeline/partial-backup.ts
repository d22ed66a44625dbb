import { Effect, Result, Schema } from "effect"
import { assert } from "../assert.js"
import type { AcceptorFailure } from "../acceptor/acceptor.js"
import { type NodeId, type PartialRemoteSegment, PARTIAL_SEGMENT_COUNT_MAX, type Term } from "../acceptor/state.js"
import { sleepUs, US_PER_SECOND } from "../io/clock.js"
import { Disk, type DiskError, type DiskFile, joinPath } from "../io/disk.js"
import { type Log, logInfo, logWarn } from "../io/log.js"
import { bytesBody, RemoteStorage, type RemoteStorageError } from "../io/remote-storage.js"
import { formatLsn, type Lsn, segmentFileName, segmentNoOf, segmentOffsetOf } from "../wal/lsn.js"
import { PARTIAL_SUFFIX, WAL_TIMELINE_ID } from "../wal/segment-store.js"
import { partialObjectName, partialObjectPath } from "./remote-layout.js"
import { type Timeline, timelineKeyText } from "./timeline.js"
import { fileBody } from "./wal-backup.js"

/**
 * Partial backup (Neon's `wal_backup_partial.rs`, reference §10): every safekeeper (not only
 * the offloader) uploads the first offset(flush_lsn) bytes of its open segment as
 * `<seg>_<last_log_term>_<flush>_<commit>_sk<id>.partial`, so that an idle timeline's tail is in
 * object storage too (eviction relies on it, and a restore takes the newest partial for the
 * last segment). It uploads when the uploaded (flush, commit, term) differs from the current
 * (flush_lsn, commit_lsn, last_log_term), once `partial_backup_timeout` passed without the
 * segment changing (a new segment restarts the wait: the old partial is stale, the full
 * segment is WAL backup's job), and never more often than that.
 *
 * What the control file records, step by step, so that a crash or an interruption anywhere
 * leaves a state that tells the truth (the Uploaded entry's object is whole in storage, and
 * every object we may have written is listed, so it gets deleted):
 *   1. persist the new entry as InProgress;
 *   2. upload; fail if last_log_term changed meanwhile (the local WAL may have been truncated
 *      and rewritten under us: what we sent may mix two histories);
 *   3. persist: the new entry Uploaded, the old Uploaded one Deleting;
 *   4. delete every non-Uploaded object recorded (leftover InProgress ones included);
 *   5. persist without the deleted entries.
 * At most one entry is Uploaded at any time (asserted). The term in the name is last_log_term:
 * naming by the acceptor's term (Neon's bug until seed 002's fix) gives identical WAL a new name
 * after every vote.
 */

/** `--partial-backup-timeout` (Neon's 15 minutes). */
export const DEFAULT_PARTIAL_BACKUP_TIMEOUT_US = 15 * 60 * US_PER_SECOND
/** At this many entries not Uploaded, they are deleted before a new upload is recorded (Neon's GC at 10). */
export const PARTIAL_SEGMENTS_PENDING_MAX = 10
assert(PARTIAL_SEGMENTS_PENDING_MAX + 2 <= PARTIAL_SEGMENT_COUNT_MAX, "pending entries, the Uploaded one and a new one fit in a control file")

export const PartialBackupErrorReason = Schema.Literals([
  "LocalSegmentMissing", // neither <seg>.partial nor <seg> is on disk
  "ShortRead", // the local segment ended before offset(flush_lsn)
  "TermChanged" // last_log_term moved during the upload: the bytes may mix two histories
])
export type PartialBackupErrorReason = typeof PartialBackupErrorReason.Type

export class PartialBackupError extends Schema.TaggedError<PartialBackupError>()("PartialBackupError", {
  reason: PartialBackupErrorReason,
  name: Schema.String,
  message: Schema.String
}) {}

export type PartialBackupFailure = PartialBackupError | DiskError | RemoteStorageError | AcceptorFailure

export interface PartialBackupOptions {
  readonly timeoutUs?: number
  readonly nodeId: NodeId
}

// ---- the plain rules ----

/** What a partial segment must match: the timeline's current positions. */
export interface PartialPositions {
  readonly flushLsn: Lsn
  readonly commitLsn: Lsn
  readonly lastLogTerm: Term
}

/** The one Uploaded entry, if any. */
export function uploadedSegment(segments: ReadonlyArray<PartialRemoteSegment>): PartialRemoteSegment | undefined {
  const uploaded = segments.filter((segment) => segment.status === "Uploaded")
  assert(uploaded.length <= 1, "at most one Uploaded partial segment")
  return uploaded[0]
}

/** Needed iff nothing is uploaded, or what is differs from the current (flush, commit, last_log_term). */
export function isPartialUploadNeeded(segments: ReadonlyArray<PartialRemoteSegment>, positions: PartialPositions): boolean {
  const uploaded = uploadedSegment(segments)
  return uploaded === undefined || !sameContent(uploaded, positions)
}

export interface PlannedUpload {
  /** The entry to upload, InProgress. */
  readonly prepared: PartialRemoteSegment
  /** The entries to persist before the upload starts (step 1). */
  readonly segments: ReadonlyArray<PartialRemoteSegment>
}

/**
 * Step 1: the new InProgress entry, named by last_log_term. An older entry of the same name (a
 * failed upload of the same state, or one being deleted) is replaced, never listed twice: step 4
 * would otherwise delete the object step 2 just wrote.
 */
export function planPartialUpload(plan: {
  readonly segments: ReadonlyArray<PartialRemoteSegment>
  readonly positions: PartialPositions
  readonly nodeId: NodeId
  readonly segmentSizeBytes: number
}): PlannedUpload {
  const { positions } = plan
  assert(positions.commitLsn <= positions.flushLsn, "commit_lsn within flush_lsn")
  const name = partialObjectName({
    segmentNo: segmentNoOf(positions.flushLsn, plan.segmentSizeBytes),
    lastLogTerm: positions.lastLogTerm,
    flushLsn: positions.flushLsn,
    commitLsn: positions.commitLsn,
    nodeId: plan.nodeId
  }, plan.segmentSizeBytes)
  const uploaded = uploadedSegment(plan.segments)
  assert(uploaded === undefined || uploaded.name !== name, "no upload of what is already uploaded")
  const prepared: PartialRemoteSegment = {
    status: "InProgress",
    name,
    commitLsn: positions.commitLsn,
    flushLsn: positions.flushLsn,
    term: positions.lastLogTerm
  }
  return { prepared, segments: [...plan.segments.filter((segment) => segment.name !== name), prepared] }
}

/** Step 3: the prepared entry becomes Uploaded, the previously Uploaded one Deleting. */
export function afterUpload(segments: ReadonlyArray<PartialRemoteSegment>, prepared: PartialRemoteSegment): ReadonlyArray<PartialRemoteSegment> {
  assert(segments.some((segment) => segment.name === prepared.name && segment.status === "InProgress"), "the uploaded entry was recorded InProgress")
  const next = segments.map((segment): PartialRemoteSegment =>
    segment.name === prepared.name
      ? { ...segment, status: "Uploaded" }
      : segment.status === "Uploaded" ? { ...segment, status: "Deleting" } : segment)
  assert(uploadedSegment(next)?.name === prepared.name, "the new entry is the one Uploaded")
  return next
}

/** Step 4: the objects to delete: every entry not Uploaded. */
export function deletionCandidates(segments: ReadonlyArray<PartialRemoteSegment>): ReadonlyArray<PartialRemoteSegment> {
  return segments.filter((segment) => segment.status !== "Uploaded")
}

/** Step 5: the entries left once `deletedNames` are gone from storage. */
export function afterDelete(segments: ReadonlyArray<PartialRemoteSegment>, deletedNames: ReadonlySet<string>): ReadonlyArray<PartialRemoteSegment> {
  assert(segments.every((segment) => segment.status !== "Uploaded" || !deletedNames.has(segment.name)), "the Uploaded object is never deleted")
  return segments.filter((segment) => !deletedNames.has(segment.name))
}

function sameContent(segment: PartialRemoteSegment, positions: PartialPositions): boolean {
  return segment.flushLsn === positions.flushLsn && segment.commitLsn === positions.commitLsn && segment.term === positions.lastLogTerm
}

// ---- the task ----

/**
 * Runs until interrupted (the manager runs it on every safekeeper with object storage): waits
 * for WAL, for the timeout without a segment change, uploads, and when up to date waits for
 * flush_lsn, commit_lsn or last_log_term to move. A failed round is logged and the next one
 * waits the timeout again (the timeout is the retry delay, as in Neon).
 */
export function runPartialBackup(timeline: Timeline, options: PartialBackupOptions): Effect.Effect<never, never, Disk | RemoteStorage | Log> {
  const timeoutUs = options.timeoutUs ?? DEFAULT_PARTIAL_BACKUP_TIMEOUT_US
  assert(timeoutUs >= 0, "partial backup timeout is not negative")
  return Effect.gen(function* () {
    const label = timelineKeyText(timeline.key)
    // Each pass waits for a change of positions, the timeout, or a segment change.
    while (true) {
      const segmentSizeBytes = timeline.segmentSizeBytes
      const current = timeline.positions.get()
      if (current.stopped) return yield* Effect.never // fail-stopped: the manager ends us
      const segments = timeline.persisted.partialBackup.segments
      const uploaded = uploadedSegment(segments)
      if (uploaded !== undefined && sameContent(uploaded, current)) {
        // Up to date, but a crash or a failed delete may have left stale objects (steps 4, 5
        // never ran): delete them now rather than at the next upload, which may never come.
        if (deletionCandidates(segments).length > 0) {
          const cleaned = yield* Effect.result(deleteStale(timeline, yield* RemoteStorage, persistSegmentsOf(timeline)))
          if (Result.isFailure(cleaned)) {
            yield* logFailure(label, cleaned.failure)
            yield* sleepUs(timeoutUs)
          }
          continue
        }
        yield* timeline.positions.waitUntil((p) => p.stopped || !sameContent(uploaded, p))
        continue
      }
      if (current.flushLsn === 0) {
        yield* timeline.positions.waitUntil((p) => p.stopped || p.flushLsn !== 0)
        continue
      }
      const pendingSegmentNo = segmentNoOf(current.flushLsn, segmentSizeBytes)
      const waited = yield* Effect.race(
        Effect.as(sleepUs(timeoutUs), "timeout" as const),
        Effect.as(timeline.positions.waitUntil((p) => p.stopped || segmentNoOf(p.flushLsn, segmentSizeBytes) !== pendingSegmentNo), "segment changed" as const)
      )
      if (waited !== "timeout") continue // the old segment is no longer the open one: wait for the new one
      const round = yield* Effect.result(uploadPartial(timeline, options.nodeId))
      if (Result.isFailure(round)) yield* logFailure(label, round.failure)
    }
  })
}

function logFailure(label: string, error: PartialBackupFailure): Effect.Effect<void, never, Log> {
  return logWarn("partial backup failed", {
    timeline: label,
    error: error._tag,
    reason: "reason" in error ? error.reason : undefined,
    message: error.message
  })
}

const persistSegmentsOf = (timeline: Timeline) => (segments: ReadonlyArray<PartialRemoteSegment>) =>
  timeline.modifyPersisted((draft) => ({ ...draft, partialBackup: { segments } }))

/**
 * One round of steps 1-5 for the timeline's current positions (nothing when already uploaded).
 * Each persist is uninterruptible (Timeline.modifyPersisted); an interruption between them
 * leaves an InProgress or Deleting entry that a later round deletes.
 */
export function uploadPartial(timeline: Timeline, nodeId: NodeId): Effect.Effect<void, PartialBackupFailure, Disk | RemoteStorage | Log> {
  return Effect.gen(function* () {
    const storage = yield* RemoteStorage
    const label = timelineKeyText(timeline.key)
    const segmentSizeBytes = timeline.segmentSizeBytes
    const persistSegments = persistSegmentsOf(timeline)

    // Failed rounds each leave an InProgress entry: past the bound, no new one until the stale
    // objects are deleted (a failed delete fails the round), so the control file stays small.
    if (deletionCandidates(timeline.persisted.partialBackup.segments).length >= PARTIAL_SEGMENTS_PENDING_MAX) {
      yield* deleteStale(timeline, storage, persistSegments)
      assert(deletionCandidates(timeline.persisted.partialBackup.segments).length === 0, "every stale partial entry deleted")
    }
    const positions = timeline.positions.get()
    if (!isPartialUploadNeeded(timeline.persisted.partialBackup.segments, positions)) return
    const plan = planPartialUpload({ segments: timeline.persisted.partialBackup.segments, positions, nodeId, segmentSizeBytes })
    const { prepared } = plan
    yield* persistSegments(plan.segments) // 1

    yield* uploadPrefix(timeline, storage, prepared) // 2
    const lastLogTerm = timeline.positions.get().lastLogTerm
    if (lastLogTerm !== prepared.term) {
      return yield* new PartialBackupError({ reason: "TermChanged", name: prepared.name, message: `last_log_term ${prepared.term} became ${lastLogTerm} during the upload` })
    }

    yield* persistSegments(afterUpload(timeline.persisted.partialBackup.segments, prepared)) // 3
    yield* logInfo("partial backup uploaded", { timeline: label, name: prepared.name, flush_lsn: formatLsn(prepared.flushLsn), commit_lsn: formatLsn(prepared.commitLsn) })
    yield* deleteStale(timeline, storage, persistSegments) // 4, 5
  })
}

/** Steps 4 and 5: deletes every non-Uploaded object recorded, then forgets those entries. */
function deleteStale(
  timeline: Timeline,
  storage: RemoteStorage["Service"],
  persistSegments: (segments: ReadonlyArray<PartialRemoteSegment>) => Effect.Effect<void, AcceptorFailure, Disk>
): Effect.Effect<void, RemoteStorageError | AcceptorFailure, Disk | Log> {
  return Effect.gen(function* () {
    const stale = deletionCandidates(timeline.persisted.partialBackup.segments)
    if (stale.length === 0) return
    const deleted = new Set<string>()
    // One at a time, and persist what was deleted even when a later delete fails.
    const outcome = yield* Effect.result(Effect.forEach(stale, (segment) =>
      Effect.gen(function* () {
        yield* storage.delete(partialObjectPath(timeline.key, segment.name))
        deleted.add(segment.name)
      }), { discard: true }))
    if (deleted.size > 0) yield* persistSegments(afterDelete(timeline.persisted.partialBackup.segments, deleted))
    const replacedBy = uploadedSegment(timeline.persisted.partialBackup.segments)?.name
    for (const segment of stale) {
      if (segment.status === "Deleting" && deleted.has(segment.name)) {
        yield* logInfo("partial backup replaced", { timeline: timelineKeyText(timeline.key), name: segment.name, by: replacedBy })
      }
    }
    if (Result.isFailure(outcome)) return yield* Effect.fail(outcome.failure)
  })
}

/**
 * Step 2: the first offset(flush_lsn) bytes of the local open segment. It is `<seg>.partial`
 * unless it just filled up and was renamed to `<seg>` (same bytes below flush_lsn).
 */
function uploadPrefix(timeline: Timeline, storage: RemoteStorage["Service"], prepared: PartialRemoteSegment): Effect.Effect<void, PartialBackupError | DiskError | RemoteStorageError, Disk> {
  return Effect.gen(function* () {
    const disk = yield* Disk
    const segmentSizeBytes = timeline.segmentSizeBytes
    const objectPath = partialObjectPath(timeline.key, prepared.name)
    const lengthBytes = segmentOffsetOf(prepared.flushLsn, segmentSizeBytes)
    // flush_lsn at a segment's first byte: nothing of it to send (its file may not exist yet).
    if (lengthBytes === 0) return yield* storage.put(objectPath, bytesBody(new Uint8Array(0)), 0)
    const segmentName = segmentFileName(WAL_TIMELINE_ID, segmentNoOf(prepared.flushLsn, segmentSizeBytes), segmentSizeBytes)
    const openLocal: Effect.Effect<DiskFile, PartialBackupError | DiskError> = disk.open(joinPath(timeline.directory, segmentName + PARTIAL_SUFFIX)).pipe(
      Effect.catchTag("DiskError", (error): Effect.Effect<DiskFile, PartialBackupError | DiskError> =>
        error.reason !== "NotFound" ? Effect.fail(error) : disk.open(joinPath(timeline.directory, segmentName)).pipe(
          Effect.catchTag("DiskError", (second): Effect.Effect<never, PartialBackupError | DiskError> =>
            second.reason === "NotFound"
              ? Effect.fail(new PartialBackupError({ reason: "LocalSegmentMissing", name: prepared.name, message: `no local ${segmentName}${PARTIAL_SUFFIX} nor ${segmentName}` }))
              : Effect.fail(second))
        ))
    )
    yield* Effect.acquireUseRelease(openLocal, (file) =>
      storage.put(objectPath, fileBody(file, lengthBytes, () =>
        new PartialBackupError({ reason: "ShortRead", name: prepared.name, message: `${file.path} ended before ${lengthBytes} bytes` })), lengthBytes),
    (file) => file.close)
  })
}
