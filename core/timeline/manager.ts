import { Effect, Fiber, Option } from "effect"
import type { NodeId } from "../acceptor/state.js"
import type { SafekeeperTimelineInfo } from "../io/broker.js"
import { monotonicUs, sleepUs, US_PER_MS, US_PER_SECOND } from "../io/clock.js"
import { randomIntBetween } from "../io/random.js"
import type { Disk } from "../io/disk.js"
import { type Log, logInfo, logWarn } from "../io/log.js"
import type { Net } from "../io/net.js"
import { RemoteStorage } from "../io/remote-storage.js"
import { formatLsn } from "../wal/lsn.js"
import { type EvictionConfig, evictionBlocker, type EvictionInput, evictTimeline, oldestLocalSegmentNo, unevictTimeline } from "./eviction.js"
import { electOffloader, isBackupRequired } from "./offloader.js"
import { runPartialBackup } from "./partial-backup.js"
import { runPeerRecovery } from "./recovery.js"
import { removableUpTo, removalHorizon } from "./remove-wal.js"
import type { Timeline } from "./timeline.js"
import { timelineKeyText } from "./timeline.js"
import { runWalBackup } from "./wal-backup.js"

/**
 * The timeline manager (Neon's `timeline_manager.rs`, reference §10): one fiber per timeline
 * that owns all of its background work. It wakes when the timeline's positions change
 * (throttled), on a periodic tick, and runs in turn: WAL backup (start or stop the upload task
 * as the offloader election says), the active flag (what the broker agent publishes), the
 * periodic control-file save, WAL removal, partial backup, peer recovery. Its tasks are its
 * child fibers: interrupting the manager stops every one of them.
 */
export interface BackgroundConfig {
  readonly nodeId: NodeId
  /** undefined: no WAL backup here (no remote storage, or `--disable-wal-backup`). */
  readonly walBackup: { readonly parallelJobs: number; readonly maxOffloaderLagBytes: number } | undefined
  /** undefined: no partial backup (no remote storage or backup disabled). */
  readonly partialBackup: { readonly timeoutUs: number } | undefined
  readonly heartbeatTimeoutUs: number
  readonly controlFileSaveIntervalUs: number
  readonly walsendersKeepHorizon: boolean
  readonly peerRecovery: boolean
  /** undefined: timelines stay resident (`--enable-offload` off). */
  readonly eviction: EvictionConfig | undefined
  /** This node's listeners, for the info it publishes. */
  readonly safekeeperConnstr: string
  readonly httpConnstr: string
  readonly availabilityZone: string
  /** The manager's periodic wake-up (default MANAGER_TICK_US); the simulator runs faster. */
  readonly tickUs?: number
  /** How often active timelines are published to the broker (default 1 s). */
  readonly brokerPushIntervalUs?: number
}

export const MANAGER_TICK_US = 1 * US_PER_SECOND
/** Neon throttles state-change wake-ups to one pass per 300 ms. */
export const MANAGER_THROTTLE_US = 300 * US_PER_MS

export const BACKGROUND_DEFAULTS = {
  heartbeatTimeoutUs: 5 * US_PER_SECOND,
  maxOffloaderLagBytes: 128 * 1024 * 1024,
  walBackupParallelJobs: 5,
  partialBackupTimeoutUs: 15 * 60 * US_PER_SECOND,
  controlFileSaveIntervalUs: 300 * US_PER_SECOND,
  evictionMinResidentUs: 15 * 60 * US_PER_SECOND
} as const

/** A fatal disk failure: the node stops (the server's fail-stop path). */
export type FatalHandler = (reason: string) => Effect.Effect<void, never, Log>

export type ManagerRequirements = Disk | Log | Net

/** This safekeeper's own info for the timeline, as published to the broker. */
export function ownInfo(timeline: Timeline, config: BackgroundConfig): SafekeeperTimelineInfo {
  const snapshot = timeline.acceptor.snapshot()
  return {
    safekeeperId: config.nodeId,
    tenantId: timeline.key.tenantId,
    timelineId: timeline.key.timelineId,
    term: timeline.acceptor.term(),
    lastLogTerm: timeline.acceptor.lastLogTerm(),
    flushLsn: timeline.acceptor.flushLsn(),
    commitLsn: snapshot.inMemory.commitLsn,
    backupLsn: snapshot.inMemory.backupLsn,
    remoteConsistentLsn: snapshot.inMemory.remoteConsistentLsn,
    peerHorizonLsn: snapshot.inMemory.peerHorizonLsn,
    localStartLsn: snapshot.persisted.localStartLsn,
    standbyHorizon: 0,
    safekeeperConnstr: config.safekeeperConnstr,
    httpConnstr: config.httpConnstr,
    availabilityZone: config.availabilityZone
  }
}

export const runManager = (timeline: Timeline, config: BackgroundConfig, fatal: FatalHandler) =>
  Effect.gen(function* () {
    const remote = yield* Effect.serviceOption(RemoteStorage)
    const label = timelineKeyText(timeline.key)
    let backup: Fiber.Fiber<unknown, unknown> | undefined
    let partial: Fiber.Fiber<unknown, unknown> | undefined
    let recovery: Fiber.Fiber<unknown, unknown> | undefined
    const startedUs = yield* monotonicUs
    let lastSaveUs = startedUs
    let lastPassUs = 0
    // Neon: resident at least a random part of eviction_min_resident after start or un-eviction.
    const residentFor = () => config.eviction === undefined ? Effect.succeed(0) : randomIntBetween(0, Math.max(1, config.eviction.minResidentUs))
    let evictNotBeforeUs = lastSaveUs + (yield* residentFor())
    let wasOffloaded = timeline.isOffloaded
    if (Option.isSome(remote)) {
      const store = remote.value
      timeline.unevictor = (t) => unevictTimeline(t, store)
    }

    const pass = Effect.gen(function* () {
      const nowUs = yield* monotonicUs
      const snapshot = timeline.acceptor.snapshot()
      const segmentSizeBytes = timeline.segmentSizeBytes
      const computeCount = timeline.walReceivers().length
      // Our own state counts as heard now: the election must not depend on the broker
      // echoing us back (without a broker every node then elects itself: double uploads of
      // identical objects, which are harmless).
      timeline.peers.record(ownInfo(timeline, config), nowUs)

      if (wasOffloaded && !timeline.isOffloaded) evictNotBeforeUs = nowUs + (yield* residentFor())
      wasOffloaded = timeline.isOffloaded
      if (timeline.isOffloaded) {
        // Nothing to upload, remove or recover: only the broker still hears about it.
        timeline.active = false
        return
      }

      // ---- WAL backup ----
      const backupRequired = isBackupRequired({
        computeCount,
        commitLsn: snapshot.inMemory.commitLsn,
        backupLsn: snapshot.inMemory.backupLsn,
        segmentSizeBytes
      })
      if (config.walBackup !== undefined && Option.isSome(remote)) {
        const offloader = electOffloader({
          selfId: config.nodeId,
          timelineId: timeline.key.timelineId,
          nowUs,
          heartbeatTimeoutUs: config.heartbeatTimeoutUs,
          maxOffloaderLagBytes: config.walBackup.maxOffloaderLagBytes,
          backupLsn: snapshot.inMemory.backupLsn,
          peers: timeline.peers.fresh(nowUs, config.heartbeatTimeoutUs)
        })
        // A restarted node knows only itself until the broker speaks: its persisted backup_lsn
        // may be stale, and electing itself at once re-uploads what a peer already did.
        const peersHeard = timeline.peers.all().some((peer) => peer.info.safekeeperId !== config.nodeId)
        const shouldRun = backupRequired && offloader === config.nodeId && (peersHeard || nowUs - startedUs >= config.heartbeatTimeoutUs)
        if (shouldRun && backup === undefined) {
          yield* logInfo("wal backup started", { timeline: label, backup_lsn: formatLsn(snapshot.inMemory.backupLsn), commit_lsn: formatLsn(snapshot.inMemory.commitLsn) })
          backup = yield* Effect.forkChild(Effect.provideService(runWalBackup(timeline, { parallelJobs: config.walBackup.parallelJobs }), RemoteStorage, remote.value))
        } else if (!shouldRun && backup !== undefined) {
          yield* Fiber.interrupt(backup)
          backup = undefined
          yield* logInfo("wal backup stopped", { timeline: label, offloader: offloader ?? "none", required: backupRequired })
        }
      }

      // ---- active flag (the broker agent publishes active timelines) ----
      timeline.active = backupRequired || computeCount > 0 || snapshot.inMemory.remoteConsistentLsn < snapshot.inMemory.commitLsn

      // ---- control-file save ----
      yield* timeline.persistInMemoryIf("SegmentAhead")
      if (nowUs - lastSaveUs >= config.controlFileSaveIntervalUs) {
        yield* timeline.persistInMemoryIf("Always")
        lastSaveUs = nowUs
      }

      // ---- WAL removal ----
      if (timeline.walRemovalHolds === 0) {
        const horizon = removalHorizon({
          persisted: timeline.persisted,
          flushLsn: timeline.acceptor.flushLsn(),
          walsenderLsns: config.walsendersKeepHorizon
            ? timeline.walSenders().filter((sender) => sender.kind !== "pageserver").map((sender) => sender.flushLsn > 0 ? sender.flushLsn : sender.sentLsn)
            : []
        })
        const upTo = removableUpTo(horizon, segmentSizeBytes)
        if (upTo !== undefined && upTo > timeline.lastRemovedSegmentNo) {
          yield* timeline.removeWalUpTo(upTo)
          yield* logInfo("wal removed", { timeline: label, up_to_segment: upTo, horizon: formatLsn(horizon) })
        }
      }

      // ---- partial backup (every safekeeper keeps its own) ----
      if (config.partialBackup !== undefined && Option.isSome(remote) && partial === undefined) {
        partial = yield* Effect.forkChild(Effect.provideService(
          runPartialBackup(timeline, { timeoutUs: config.partialBackup.timeoutUs, nodeId: config.nodeId }),
          RemoteStorage,
          remote.value
        ))
      }

      // ---- peer recovery ----
      if (config.peerRecovery && recovery === undefined) {
        recovery = yield* Effect.forkChild(runPeerRecovery(timeline, {
          nodeId: config.nodeId,
          peers: Effect.map(monotonicUs, (now) =>
            timeline.peers.fresh(now, config.heartbeatTimeoutUs).map((peer) => peer.info).filter((info) => info.safekeeperId !== config.nodeId))
        }))
      }

      // ---- eviction ----
      if (config.eviction !== undefined && Option.isSome(remote)) {
        const input: EvictionInput = {
          persisted: timeline.persisted,
          flushLsn: timeline.acceptor.flushLsn(),
          commitLsn: timeline.acceptor.commitLsn(),
          lastLogTerm: timeline.acceptor.lastLogTerm(),
          active: timeline.active,
          residenceGuards: timeline.residenceGuards,
          tasksRunning: backup !== undefined,
          oldestLocalSegmentNo: undefined,
          nowUs,
          notBeforeUs: evictNotBeforeUs
        }
        // The directory is listed only once every cheaper condition holds.
        if (evictionBlocker(input) === undefined &&
          evictionBlocker({ ...input, oldestLocalSegmentNo: yield* oldestLocalSegmentNo(timeline) }) === undefined) {
          if (partial !== undefined) {
            yield* Fiber.interrupt(partial)
            partial = undefined
          }
          if (recovery !== undefined) {
            yield* Fiber.interrupt(recovery)
            recovery = undefined
          }
          yield* evictTimeline(timeline, remote.value, config.eviction)
        }
      }
    })

    while (!timeline.positions.get().stopped) {
      const startUs = yield* monotonicUs
      const throttleUs = Math.min(MANAGER_THROTTLE_US, config.tickUs ?? MANAGER_TICK_US)
      if (startUs - lastPassUs < throttleUs) yield* sleepUs(lastPassUs + throttleUs - startUs)
      lastPassUs = yield* monotonicUs
      const outcome = yield* Effect.result(pass)
      if (outcome._tag === "Failure") {
        const error = outcome.failure
        if (error._tag === "DiskError" || (error._tag === "WalStorageError" && error.reason === "Stopped")) {
          yield* fatal(`timeline manager ${label}: ${error.message}`)
          return
        }
        yield* logWarn("timeline manager pass failed", { timeline: label, error: error.message })
      }
      yield* Effect.raceFirst(timeline.positions.nextChange, sleepUs(config.tickUs ?? MANAGER_TICK_US))
    }
  })
