import { Effect, Result, Schema } from "effect"
import type { PartialRemoteSegment, PersistedState } from "../acceptor/state.js"
import { Disk, type DiskError, joinPath } from "../io/disk.js"
import { logInfo } from "../io/log.js"
import type { RemoteStorage } from "../io/remote-storage.js"
import { WalDecoder } from "../wal/decoder.js"
import { formatLsn, Lsn, segmentFileName, segmentNoOf, segmentOffsetOf, segmentStartLsn, XLOG_BLCKSZ_BYTES } from "../wal/lsn.js"
import { standardPageHeaderSizeBytes } from "../wal/page.js"
import { indexSegmentFiles, PARTIAL_SUFFIX, WAL_TIMELINE_ID } from "../wal/segment-store.js"
import { openTimelineStorage } from "./open.js"
import { partialObjectPath } from "./remote-layout.js"
import { type Timeline, timelineKeyText, UnevictError } from "./timeline.js"

/**
 * Eviction (Neon's `timeline_eviction.rs`, reference §10, `--enable-offload`): an idle
 * timeline whose WAL is all in object storage gives up its local WAL. Full segments went
 * earlier (WAL removal); the open segment is in object storage as this safekeeper's partial
 * backup, which is verified byte for byte against the local file first. The control file then
 * says Offloaded(flush_lsn) and the timeline keeps only its control file (with
 * `--delete-offloaded-wal` the local partial goes too). Any WAL user brings it back
 * (`Timeline.withResidence`): download the partial, check it, zero-extend, durable rename,
 * reopen, and switch back only when the WAL found ends exactly at the offloaded LSN.
 */
export interface EvictionConfig {
  readonly deleteOffloadedWal: boolean
  /** A timeline stays resident at least a random part of this after start or un-eviction. */
  readonly minResidentUs: number
}

export class EvictionError extends Schema.TaggedError<EvictionError>()("EvictionError", {
  message: Schema.String
}) {}

export const REMOTE_PARTIAL_TEMP_NAME = "remote_partial.tmp"

/** The one Uploaded partial the control file records, if any. */
export function uploadedPartial(state: PersistedState): PartialRemoteSegment | undefined {
  return state.partialBackup.segments.find((segment) => segment.status === "Uploaded")
}

export interface EvictionInput {
  readonly persisted: PersistedState
  readonly flushLsn: Lsn
  readonly commitLsn: Lsn
  readonly lastLogTerm: number
  readonly active: boolean
  readonly residenceGuards: number
  readonly tasksRunning: boolean
  /** The lowest segment number still on local disk, undefined when none. */
  readonly oldestLocalSegmentNo: number | undefined
  readonly nowUs: number
  readonly notBeforeUs: number
}

/** Why the timeline may not be evicted now, or undefined when it may (Neon's `ready_for_eviction`). */
export function evictionBlocker(input: EvictionInput): string | undefined {
  const segmentSizeBytes = input.persisted.server.walSegSizeBytes
  if (input.persisted.evictionState._tag === "Offloaded") return "already offloaded"
  if (input.residenceGuards > 0) return "in use"
  if (input.active) return "active"
  if (input.tasksRunning) return "background tasks running"
  if (input.nowUs < input.notBeforeUs) return "not resident long enough"
  if (input.flushLsn === 0) return "no WAL"
  // A partial of zero bytes would say nothing; a timeline ending on a segment boundary waits
  // for more WAL (a simplification of Neon, which uploads an empty partial).
  if (segmentOffsetOf(input.flushLsn, segmentSizeBytes) === 0) return "flush_lsn at a segment boundary"
  const partial = uploadedPartial(input.persisted)
  if (partial === undefined) return "no partial backup"
  if (partial.flushLsn !== input.flushLsn || partial.commitLsn !== input.commitLsn || partial.term !== input.lastLogTerm) return "partial backup behind"
  if (input.commitLsn !== input.flushLsn) return "uncommitted WAL"
  const segmentNo = segmentNoOf(input.flushLsn, segmentSizeBytes)
  if (input.oldestLocalSegmentNo !== undefined && input.oldestLocalSegmentNo < segmentNo) return "older segments not removed yet"
  return undefined
}

function localPartialPath(timeline: Timeline, segmentNo: number): string {
  return joinPath(timeline.directory, `${segmentFileName(WAL_TIMELINE_ID, segmentNo, timeline.segmentSizeBytes)}${PARTIAL_SUFFIX}`)
}

/** The lowest segment number with a file in the timeline's directory. */
export const oldestLocalSegmentNo = (timeline: Timeline): Effect.Effect<number | undefined, DiskError, Disk> =>
  Effect.gen(function* () {
    const disk = yield* Disk
    const files = indexSegmentFiles(yield* disk.list(timeline.directory), timeline.segmentSizeBytes)
    return files.size === 0 ? undefined : Math.min(...files.keys())
  })


/** The local partial equals the remote object: same first `offset` bytes, zeros after, a whole segment long. */
function checkAgainstRemote(local: Uint8Array, remote: Uint8Array, offset: number, segmentSizeBytes: number): string | undefined {
  if (remote.length !== offset) return `remote partial holds ${remote.length} bytes, expected ${offset}`
  if (local.length !== segmentSizeBytes) return `local partial is ${local.length} bytes, not a segment (${segmentSizeBytes})`
  for (let i = 0; i < offset; i++) if (local[i] !== remote[i]) return `local and remote partial differ at byte ${i}`
  for (let i = offset; i < local.length; i++) if (local[i] !== 0) return `local partial has data past flush_lsn at byte ${i}`
  return undefined
}

const readWhole = (path: string) =>
  Effect.gen(function* () {
    const disk = yield* Disk
    const stat = yield* disk.stat(path)
    if (stat === undefined) return undefined
    return yield* disk.readFile(path)
  })

/**
 * The partial's bytes must decode as WAL (page headers, record lengths, CRC32C) from the
 * segment's start, or the timeline's start in its first segment, to exactly `flushLsn`: a
 * corrupt object of the right length is caught here, before it replaces local WAL. (The tail
 * of a record continued from the previous segment is skipped: its checksum lives there.)
 */
export function partialWalProblem(bytes: Uint8Array, segmentNo: number, state: PersistedState, flushLsn: Lsn): string | undefined {
  const segmentSizeBytes = state.server.walSegSizeBytes
  const segmentStart = segmentStartLsn(segmentNo, segmentSizeBytes)
  // In the timeline's first segment, from the page holding its start when the WAL begins right
  // after that page's header (the generated prefix: its header is checked too), else from the start.
  let startLsn = Math.max(segmentStart, state.timelineStartLsn)
  // No record in it (the timeline's first segment up to its start): nothing to decode.
  if (startLsn >= flushLsn) return undefined
  const pageStart = startLsn - (startLsn % XLOG_BLCKSZ_BYTES)
  if (pageStart >= segmentStart && startLsn === pageStart + standardPageHeaderSizeBytes(pageStart, segmentSizeBytes)) startLsn = pageStart
  const made = WalDecoder.make({
    startLsn: Lsn(startLsn),
    segmentSizeBytes,
    systemId: state.server.systemId === 0n ? undefined : state.server.systemId
  })
  if (Result.isFailure(made)) return `cannot decode from ${formatLsn(startLsn)}: ${made.failure.message}`
  const decoder = made.success
  decoder.scan(bytes.subarray(startLsn - segmentStart))
  if (decoder.nextRecordLsn !== flushLsn) {
    const why = decoder.error === undefined ? "the last record is incomplete" : decoder.error.message
    return `it decodes to ${formatLsn(decoder.nextRecordLsn)} (${why})`
  }
  return undefined
}

/**
 * Evicts the timeline (the manager calls it once `evictionBlocker` says nothing blocks). Under
 * the residence lock, so no guard is taken meanwhile; re-checks that no guard is held.
 * Returns false when it did not evict (a check failed: logged).
 */
export const evictTimeline = (timeline: Timeline, remote: RemoteStorage["Service"], config: EvictionConfig) =>
  timeline.residenceLock.withPermit(Effect.gen(function* () {
    const disk = yield* Disk
    const label = timelineKeyText(timeline.key)
    if (timeline.residenceGuards > 0 || timeline.isOffloaded) return false
    const flushLsn = timeline.acceptor.flushLsn()
    const partial = uploadedPartial(timeline.persisted)
    if (partial === undefined || partial.flushLsn !== flushLsn) return false
    const segmentSizeBytes = timeline.segmentSizeBytes
    const segmentNo = segmentNoOf(flushLsn, segmentSizeBytes)
    const offset = segmentOffsetOf(flushLsn, segmentSizeBytes)
    const localPath = localPartialPath(timeline, segmentNo)
    const local = yield* readWhole(localPath)
    const remoteBytes = yield* remote.get(partialObjectPath(timeline.key, partial.name))
    const problem = local === undefined ? "no local partial segment" : checkAgainstRemote(local, remoteBytes, offset, segmentSizeBytes)
    if (problem !== undefined) {
      yield* logInfo("eviction skipped: partial segment check failed", { timeline: label, problem })
      return false
    }
    // The control file first: from here on a restart finds the timeline offloaded.
    yield* timeline.modifyPersisted((draft) => ({ ...draft, evictionState: { _tag: "Offloaded", flushLsn } }))
    const opened = yield* openTimelineStorage({ directory: timeline.directory, state: timeline.persisted, nodeId: timeline.nodeId, noSync: timeline.noSync })
    yield* timeline.replaceStorage(opened.acceptor, opened.wal)
    if (config.deleteOffloadedWal) {
      yield* disk.unlink(localPath)
      if (!timeline.noSync) yield* disk.syncDirectory(timeline.directory)
    }
    yield* logInfo("timeline evicted", { timeline: label, flush_lsn: formatLsn(flushLsn), partial: partial.name, local_deleted: config.deleteOffloadedWal })
    return true
  }))

/**
 * Brings an evicted timeline back (called by `withResidence` under the residence lock): the
 * local partial if it is still there and equal to the remote one, else a download of the
 * remote partial into a temporary file, zero-extended to a segment, fsynced and renamed into
 * place durably; then the WAL is reopened and must end exactly at the offloaded LSN.
 */
export const unevictTimeline = (timeline: Timeline, remote: RemoteStorage["Service"]) =>
  Effect.gen(function* () {
    const disk = yield* Disk
    const label = timelineKeyText(timeline.key)
    const state = timeline.persisted
    if (state.evictionState._tag !== "Offloaded") return
    const flushLsn = state.evictionState.flushLsn
    const partial = uploadedPartial(state)
    if (partial === undefined || partial.flushLsn !== flushLsn) {
      return yield* new UnevictError({ message: `timeline ${label} is offloaded at ${formatLsn(flushLsn)} but no uploaded partial segment matches it` })
    }
    const segmentSizeBytes = timeline.segmentSizeBytes
    const segmentNo = segmentNoOf(flushLsn, segmentSizeBytes)
    const offset = segmentOffsetOf(flushLsn, segmentSizeBytes)
    const localPath = localPartialPath(timeline, segmentNo)
    const remoteBytes = yield* remote.get(partialObjectPath(timeline.key, partial.name))
    if (remoteBytes.length !== offset) {
      return yield* new UnevictError({ message: `remote partial ${partial.name} holds ${remoteBytes.length} bytes, expected ${offset}` })
    }
    const walProblem = partialWalProblem(remoteBytes, segmentNo, state, flushLsn)
    if (walProblem !== undefined) {
      return yield* new UnevictError({ message: `remote partial ${partial.name} is not valid WAL up to ${formatLsn(flushLsn)}: ${walProblem}` })
    }
    const local = yield* readWhole(localPath)
    const localUsable = local !== undefined && checkAgainstRemote(local, remoteBytes, offset, segmentSizeBytes) === undefined
    if (!localUsable) {
      const tempPath = joinPath(timeline.directory, REMOTE_PARTIAL_TEMP_NAME)
      const file = yield* disk.open(tempPath, { create: true })
      yield* Effect.ensuring(
        Effect.gen(function* () {
          yield* file.truncate(0)
          yield* file.write(0, remoteBytes)
          yield* file.truncate(segmentSizeBytes)
          if (!timeline.noSync) yield* file.sync
        }),
        file.close
      )
      yield* disk.rename(tempPath, localPath)
      if (!timeline.noSync) yield* disk.syncDirectory(timeline.directory)
    }
    const present: PersistedState = { ...state, evictionState: { _tag: "Present" } }
    const opened = yield* openTimelineStorage({ directory: timeline.directory, state: present, nodeId: timeline.nodeId, noSync: timeline.noSync })
    const foundEnd = opened.acceptor.flushLsn()
    if (foundEnd !== flushLsn) {
      yield* opened.wal.close
      return yield* new UnevictError({ message: `WAL of ${label} brought back ends at ${formatLsn(foundEnd)}, not at the offloaded ${formatLsn(flushLsn)}` })
    }
    // Present is persisted through the old acceptor (it holds the control file's state), then
    // the new storage takes over; a crash between the two finds the WAL in place and Present.
    yield* timeline.modifyPersisted((draft) => ({ ...draft, evictionState: { _tag: "Present" } }))
    const reopened = yield* openTimelineStorage({ directory: timeline.directory, state: timeline.persisted, nodeId: timeline.nodeId, noSync: timeline.noSync })
    yield* opened.wal.close
    yield* timeline.replaceStorage(reopened.acceptor, reopened.wal)
    yield* logInfo("timeline unevicted", { timeline: label, flush_lsn: formatLsn(flushLsn), downloaded: !localUsable })
  })
