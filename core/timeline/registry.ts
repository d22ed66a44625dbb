import { Effect, Result, Schema, Semaphore } from "effect"
import { type ControlFileError, loadControlFile, persistControlFile } from "../acceptor/control-file.js"
import type { WalStorageError } from "../acceptor/wal-storage.js"
import {
  EMPTY_MEMBER_CONFIGURATION,
  type Generation,
  isCanonicalHexId,
  NANOS_PER_SEC,
  newTimelineState,
  type NodeId,
  type ServerInfo,
  TenantId,
  TimelineId
} from "../acceptor/state.js"
import { nowUs } from "../io/clock.js"
import { Disk, type DiskError, joinPath, parentPath } from "../io/disk.js"
import type { RemoteStorage } from "../io/remote-storage.js"
import { logInfo, logWarn } from "../io/log.js"
import { Lsn } from "../wal/lsn.js"
import { openTimelineStorage } from "./open.js"
import { Timeline, type TimelineKey, timelineKeyText } from "./timeline.js"
import { Watch } from "./watch.js"

/**
 * The timelines of one safekeeper (Neon's `GlobalTimelines`): `DATADIR/<tenant>/<timeline>/`,
 * each a control file plus WAL segments, loaded at start. A timeline is created only by a push
 * that allows creation (otherwise `TimelineNoCreate`): it is built in `DATADIR/tmp/` and moved
 * into place with a durable rename, so a crash leaves either no timeline or a whole one.
 * A directory that fails to load is logged and kept out (and cannot be re-created until an
 * operator repairs it: re-creating would hide data).
 */
export const TimelineErrorReason = Schema.Literals([
  "NotFound", // Neon's TimelineNoCreate: push without creation allowed, or a read of an unknown timeline
  "Broken", // its directory exists but failed to load
  "Invalid", // the creation request cannot make a timeline (bad server info)
  "AlreadyExists", // an install over a timeline this node holds
  "Deleted", // deleted here: not re-created by a late push or pull
  "Restoring" // not pulled from the peers yet after a disk loss: retry later
])
export type TimelineErrorReason = typeof TimelineErrorReason.Type

export class TimelineError extends Schema.TaggedError<TimelineError>()("TimelineError", {
  reason: TimelineErrorReason,
  tenantId: Schema.String,
  timelineId: Schema.String,
  message: Schema.String
}) {}

/** Whatever opening or creating a timeline can fail with. */
export type TimelineOpenFailure = TimelineError | ControlFileError | DiskError | WalStorageError

/** A disk that failed a read, write or fsync, as opposed to content that is wrong. */
export function isIoFailure(error: TimelineOpenFailure): error is DiskError | WalStorageError {
  return error._tag === "DiskError" || (error._tag === "WalStorageError" && error.reason === "Stopped")
}

export const TEMP_DIRECTORY_NAME = "tmp"
export const TEMP_TIMELINE_SUFFIX = "_temptli"
export const NODE_ID_FILE_NAME = "safekeeper.id"
/** Timelines one safekeeper holds; a bound on the registry's memory, far above real use. */
export const TIMELINE_COUNT_MAX = 100_000

export interface RegistryOptions {
  readonly datadir: string
  readonly nodeId: NodeId
  readonly noSync: boolean
  /** Object storage, when configured: timelines read removed segments from it. */
  readonly remote?: RemoteStorage["Service"]
}

export class TimelineRegistry {
  private readonly timelines = new Map<string, Timeline>()
  private readonly broken = new Map<string, string>()
  private readonly createLock = Semaphore.makeUnsafe(1)
  /**
   * Deleted timelines (Neon's tombstones): a late push or pull must not bring one back. Kept in
   * memory, as Neon does; `generation` is the configuration it was deleted in, so a pull with
   * a higher generation (a deliberate re-add) may install it again.
   */
  private readonly tombstones = new Map<string, Generation>()
  /**
   * Set while the node restores its timelines from peers after a disk loss (restore.ts): a
   * timeline it does not hold yet is neither created by a push nor found, so the node votes
   * and accepts WAL only for timelines it has pulled (DESIGN.md §5, disk loss).
   */
  readonly restoring = Watch.make(false)
  /** Counts timelines opened: the background supervisor waits on it to start their managers. */
  readonly opened = Watch.make(0)

  private constructor(readonly options: RegistryOptions) {}

  /** Loads every `<tenant>/<timeline>` directory; clears leftovers of interrupted creations. */
  static load(options: RegistryOptions) {
    return Effect.gen(function* () {
      const disk = yield* Disk
      const registry = new TimelineRegistry(options)
      yield* disk.mkdir(options.datadir)
      yield* removeTree(joinPath(options.datadir, TEMP_DIRECTORY_NAME))
      for (const tenant of yield* disk.list(options.datadir)) {
        if (tenant.kind !== "directory" || !isCanonicalHexId(tenant.name)) continue
        for (const timeline of yield* disk.list(joinPath(options.datadir, tenant.name))) {
          if (timeline.kind !== "directory" || !isCanonicalHexId(timeline.name)) continue
          const key = { tenantId: TenantId(tenant.name), timelineId: TimelineId(timeline.name) }
          const loaded = yield* Effect.result(registry.open(key))
          // An I/O error is not a broken timeline: the node stops and loads it again after a
          // restart (what the page cache held after a failed fsync must not be trusted now).
          if (Result.isFailure(loaded) && isIoFailure(loaded.failure)) return yield* Effect.fail(loaded.failure)
          if (Result.isFailure(loaded)) {
            const problem = describe(loaded.failure)
            registry.broken.set(timelineKeyText(key), problem)
            yield* logWarn("timeline failed to load", { timeline: timelineKeyText(key), problem })
          } else {
            yield* logInfo("timeline loaded", {
              timeline: timelineKeyText(key),
              term: loaded.success.acceptor.term(),
              flush_lsn: loaded.success.acceptor.flushLsn(),
              commit_lsn: loaded.success.acceptor.commitLsn()
            })
          }
        }
      }
      return registry
    })
  }

  get(key: TimelineKey): Timeline | undefined {
    return this.timelines.get(timelineKeyText(key))
  }

  /** The timeline, or NotFound / Broken. */
  lookup(key: TimelineKey): Effect.Effect<Timeline, TimelineError> {
    return Effect.suspend(() => {
      const timeline = this.get(key)
      if (timeline !== undefined) return Effect.succeed(timeline)
      return Effect.fail(this.missing(key))
    })
  }

  list(): ReadonlyArray<Timeline> {
    return [...this.timelines.values()].sort((a, b) => compareText(timelineKeyText(a.key), timelineKeyText(b.key)))
  }

  /**
   * The timeline of a push: existing, or created from the proposer's greeting when creation is
   * allowed (reference §4 "implicit creation": empty configuration, start = commit = 0).
   */
  getOrCreate(key: TimelineKey, server: ServerInfo, allowCreation: boolean) {
    const self = this
    return this.createLock.withPermit(Effect.gen(function* () {
      const existing = self.get(key)
      if (existing !== undefined) return existing
      if (self.restoring.get()) return yield* self.missing(key)
      if (!allowCreation || self.broken.has(timelineKeyText(key))) return yield* self.missing(key)
      if (self.tombstones.has(timelineKeyText(key))) {
        return yield* new TimelineError({ ...ids(key), reason: "Deleted", message: `timeline ${timelineKeyText(key)} was deleted` })
      }
      if (self.timelines.size >= TIMELINE_COUNT_MAX) {
        return yield* new TimelineError({ ...ids(key), reason: "Invalid", message: `already ${TIMELINE_COUNT_MAX} timelines` })
      }
      if (server.walSegSizeBytes === 0 || server.pgVersion === 0) {
        return yield* new TimelineError({ ...ids(key), reason: "Invalid", message: "creation needs a wal_seg_size and a pg_version" })
      }
      return yield* self.create(key, server)
    }))
  }

  private create(key: TimelineKey, server: ServerInfo) {
    const self = this
    return Effect.gen(function* () {
      const disk = yield* Disk
      const { datadir, noSync } = self.options
      const createdUs = yield* nowUs
      const state = newTimelineState({
        ...key,
        mconf: EMPTY_MEMBER_CONFIGURATION,
        server,
        startLsn: Lsn(0),
        commitLsn: Lsn(0),
        creationTs: {
          secsSinceEpoch: Math.floor(createdUs / 1_000_000),
          nanosSinceEpoch: (createdUs % 1_000_000) * (NANOS_PER_SEC / 1_000_000)
        }
      })
      const temp = yield* self.makeTempDirectory(key)
      yield* persistControlFile(temp, state, { noSync })
      const timeline = yield* self.moveIntoPlace(key, temp)
      yield* logInfo("timeline created", { timeline: timelineKeyText(key), pg_version: server.pgVersion, wal_seg_size: server.walSegSizeBytes })
      return timeline
    })
  }

  /** An empty `DATADIR/tmp/<tenant>_<timeline>_temptli` (a leftover one is removed first). */
  makeTempDirectory(key: TimelineKey): Effect.Effect<string, DiskError, Disk> {
    const self = this
    return Effect.gen(function* () {
      const disk = yield* Disk
      const tempRoot = joinPath(self.options.datadir, TEMP_DIRECTORY_NAME)
      const temp = joinPath(tempRoot, `${key.tenantId}_${key.timelineId}${TEMP_TIMELINE_SUFFIX}`)
      yield* removeTree(temp)
      yield* disk.mkdir(temp)
      return temp
    })
  }

  /**
   * Installs a timeline directory built (and fsynced) in `makeTempDirectory`'s place:
   * pull_timeline's last step (reference §12 step 7). Refused if the timeline exists, failed
   * to load, or was deleted in a generation at or above `generation`.
   */
  install(key: TimelineKey, temp: string, generation: Generation) {
    const self = this
    return this.createLock.withPermit(Effect.gen(function* () {
      const keyText = timelineKeyText(key)
      if (self.timelines.has(keyText)) return yield* new TimelineError({ ...ids(key), reason: "AlreadyExists", message: `timeline ${keyText} already exists` })
      if (self.broken.has(keyText)) return yield* self.missing(key)
      const deletedIn = self.tombstones.get(keyText)
      if (deletedIn !== undefined && generation <= deletedIn) {
        return yield* new TimelineError({ ...ids(key), reason: "Deleted", message: `timeline ${keyText} was deleted in generation ${deletedIn}` })
      }
      if (self.timelines.size >= TIMELINE_COUNT_MAX) {
        return yield* new TimelineError({ ...ids(key), reason: "Invalid", message: `already ${TIMELINE_COUNT_MAX} timelines` })
      }
      const disk = yield* Disk
      const stat = yield* disk.stat(joinPath(self.options.datadir, key.tenantId, key.timelineId))
      if (stat !== undefined) return yield* new TimelineError({ ...ids(key), reason: "AlreadyExists", message: `directory of ${keyText} exists` })
      self.tombstones.delete(keyText)
      const timeline = yield* self.moveIntoPlace(key, temp)
      yield* logInfo("timeline installed", { timeline: keyText, generation })
      return timeline
    }))
  }

  private moveIntoPlace(key: TimelineKey, temp: string) {
    const self = this
    return Effect.gen(function* () {
      const disk = yield* Disk
      const { datadir, noSync } = self.options
      const tenantDirectory = joinPath(datadir, key.tenantId)
      const target = joinPath(tenantDirectory, key.timelineId)
      yield* disk.mkdir(tenantDirectory)
      // The tenant directory's entry in the data directory, then the move, then the move's
      // removal from tmp/: each made durable before anything relies on it.
      if (!noSync) yield* disk.syncDirectory(datadir)
      yield* disk.rename(temp, target)
      if (!noSync) {
        yield* disk.syncDirectory(tenantDirectory)
        yield* disk.syncDirectory(parentPath(temp))
      }
      return yield* self.open(key)
    })
  }

  /**
   * Deletes a timeline's local directory (Neon's `delete`): it leaves the registry at once, so
   * new pushes and reads see it gone, and a tombstone keeps a late push from re-creating it.
   * The caller stops its background work first (`Timeline.stop`). Returns whether it existed.
   */
  delete(key: TimelineKey, generation: Generation) {
    const self = this
    return this.createLock.withPermit(Effect.gen(function* () {
      const disk = yield* Disk
      const keyText = timelineKeyText(key)
      const existed = self.timelines.delete(keyText)
      self.broken.delete(keyText)
      self.tombstones.set(keyText, generation)
      const tenantDirectory = joinPath(self.options.datadir, key.tenantId)
      const directory = joinPath(tenantDirectory, key.timelineId)
      const dirExisted = (yield* disk.stat(directory)) !== undefined
      yield* removeTree(directory)
      if (!self.options.noSync && dirExisted) yield* disk.syncDirectory(tenantDirectory)
      if (existed) self.opened.set(self.opened.get() + 1)
      yield* logInfo("timeline deleted", { timeline: keyText, dir_existed: dirExisted })
      return { existed, dirExisted }
    }))
  }

  isDeleted(key: TimelineKey): boolean {
    return this.tombstones.has(timelineKeyText(key))
  }

  private open(key: TimelineKey) {
    const self = this
    return Effect.gen(function* () {
      const directory = joinPath(self.options.datadir, key.tenantId, key.timelineId)
      const state = yield* loadControlFile(directory)
      if (state.tenantId !== key.tenantId || state.timelineId !== key.timelineId) {
        return yield* new TimelineError({ ...ids(key), reason: "Broken", message: `control file names ${state.tenantId}/${state.timelineId}` })
      }
      const { wal, acceptor } = yield* openTimelineStorage({ directory, state, nodeId: self.options.nodeId, noSync: self.options.noSync })
      const timeline = new Timeline(key, directory, self.options.nodeId, acceptor, wal, { noSync: self.options.noSync, ...(self.options.remote === undefined ? {} : { remote: self.options.remote }) })
      self.timelines.set(timelineKeyText(key), timeline)
      self.opened.set(self.opened.get() + 1)
      return timeline
    })
  }

  private missing(key: TimelineKey): TimelineError {
    if (this.restoring.get()) {
      return new TimelineError({ ...ids(key), reason: "Restoring", message: `timeline ${timelineKeyText(key)} is not here yet: this safekeeper is restoring its timelines from its peers` })
    }
    const problem = this.broken.get(timelineKeyText(key))
    return problem === undefined
      ? new TimelineError({ ...ids(key), reason: "NotFound", message: `timeline ${timelineKeyText(key)} does not exist and creation is not allowed` })
      : new TimelineError({ ...ids(key), reason: "Broken", message: `timeline ${timelineKeyText(key)} failed to load: ${problem}` })
  }
}

/** Removes a directory tree (leftovers of an interrupted creation); absent is fine. */
export const removeTree = (path: string): Effect.Effect<void, DiskError, Disk> =>
  Effect.gen(function* () {
    const disk = yield* Disk
    const stat = yield* disk.stat(path)
    if (stat === undefined) return
    if (stat.kind === "file") return yield* disk.unlink(path)
    for (const entry of yield* disk.list(path)) yield* removeTree(joinPath(path, entry.name))
    yield* disk.rmdir(path)
  })

function ids(key: TimelineKey) {
  return { tenantId: key.tenantId, timelineId: key.timelineId }
}

function describe(error: unknown): string {
  if (typeof error === "object" && error !== null && "message" in error) return String((error as { message: unknown }).message)
  return String(error)
}

function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}
