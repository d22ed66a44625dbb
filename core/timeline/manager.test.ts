// Goal: the timeline manager (reference §10) runs the WAL backup only on the offloader that
// every safekeeper elects from the same peer table, hands it over when that peer goes silent
// past the heartbeat timeout, removes WAL only below min(remote_consistent, backup, commit,
// flush) of the persisted state and never while a snapshot holds removal; readers of removed
// segments get them from object storage below backup_lsn and a typed "Removed" refusal above
// it, never a DiskError (which would fail-stop the node). Method: real timelines on one
// simulated disk (three safekeepers' data directories side by side), their managers run with
// fast ticks, a hand-driven "broker" fiber that copies each node's own info into the others'
// PeerTables, and a Map-backed object store; every removal the manager makes is checked
// against the persisted state it was made from.
import { Effect, Exit, Fiber } from "effect"
import { describe, expect, test } from "vitest"
import { DiskLab } from "../../sim/testing.js"
import { equalBytes } from "../bytes.js"
import { type PersistedState, TimelineId } from "../acceptor/state.js"
import { monotonicUs, sleepUs } from "../io/clock.js"
import { Disk, joinPath } from "../io/disk.js"
import { Log } from "../io/log.js"
import { Net } from "../io/net.js"
import { RemoteStorage } from "../io/remote-storage.js"
import { Lsn, segmentFileName, segmentNoOf, segmentStartLsn } from "../wal/lsn.js"
import { PARTIAL_SUFFIX, WAL_TIMELINE_ID } from "../wal/segment-store.js"
import { type BackgroundConfig, ownInfo, runManager } from "./manager.js"
import {
  KEY,
  LogLines,
  makeTimeline,
  MapStore,
  recordEndIn,
  REFUSING_NET,
  SEGMENT_BYTES,
  START,
  TENANT_ID,
  testBackgroundConfig,
  WAL_END,
  walBytes
} from "./manager-testing.js"
import { timelineIdAsU128 } from "./offloader.js"
import { segmentObjectPath } from "./remote-layout.js"
import { type Timeline, type TimelineKey, timelineKeyText } from "./timeline.js"
import { runWalBackup } from "./wal-backup.js"

type Needs = Disk | RemoteStorage | Log | Net

function runLab<A>(lab: DiskLab, program: Effect.Effect<A, unknown, Needs>, store: MapStore, log: LogLines): A {
  const outcome = lab.run(program.pipe(
    Effect.provideService(RemoteStorage, store.service),
    Effect.provideService(Log, log.service),
    Effect.provideService(Net, REFUSING_NET)
  ))
  if (outcome._tag !== "done") throw new Error(`lab run ${outcome._tag}`)
  if (!Exit.isSuccess(outcome.exit)) throw new Error(`lab run failed: ${String(outcome.exit)}`)
  return outcome.exit.value
}

const WAL_BACKUP = { parallelJobs: 2, maxOffloaderLagBytes: 128 * 1024 * 1024 }
const FIRST = segmentNoOf(START, SEGMENT_BYTES)
const OPEN = segmentNoOf(WAL_END, SEGMENT_BYTES)
const fatalInto = (fatals: string[]) => (reason: string) => Effect.sync(() => {
  fatals.push(reason)
})
const localSegmentPath = (directory: string, segmentNo: number, partial: boolean) =>
  joinPath(directory, segmentFileName(WAL_TIMELINE_ID, segmentNo, SEGMENT_BYTES) + (partial ? PARTIAL_SUFFIX : ""))

/** Polls (in virtual time, bounded) until `done` holds; dies when it never does. */
const eventually = (what: string, done: () => boolean, timeoutUs = 10_000_000) =>
  Effect.gen(function* () {
    const deadlineUs = (yield* monotonicUs) + timeoutUs
    while (!done()) {
      if ((yield* monotonicUs) > deadlineUs) return yield* Effect.die(new Error(`never: ${what}`))
      yield* sleepUs(10_000)
    }
  })

const raiseRemoteConsistent = (timeline: Timeline, lsn: number) =>
  timeline.applyPeerInfo({ commitLsn: 0, lastLogTerm: timeline.acceptor.lastLogTerm(), backupLsn: 0, remoteConsistentLsn: lsn, peerHorizonLsn: 0 })
/** What the periodic control-file save does at its interval: the in-memory values made durable. */
const persistNow = (timeline: Timeline) => timeline.modifyPersisted((draft) => draft)

const localSegments = (directory: string) =>
  Effect.gen(function* () {
    const disk = yield* Disk
    const present: number[] = []
    for (let segmentNo = FIRST; segmentNo <= OPEN; segmentNo++) {
      if ((yield* disk.stat(localSegmentPath(directory, segmentNo, false))) !== undefined || (yield* disk.stat(localSegmentPath(directory, segmentNo, true))) !== undefined) present.push(segmentNo)
    }
    return present
  })

describe("offloader election in the manager", () => {
  // Timeline ids whose u128 (Neon's little-endian reading) is 0, 1, 2: with three caught-up
  // candidates [1, 2, 3] they go to safekeepers 1, 2, 3; with [2, 3] to 2, 3, 2.
  const KEYS: ReadonlyArray<TimelineKey> = [0, 1, 2].map((k) => ({ tenantId: TENANT_ID, timelineId: TimelineId(`0${k}${"0".repeat(30)}`) }))
  const NODES: ReadonlyArray<number> = [1, 2, 3]
  const UPTO = recordEndIn(FIRST + 1, 100_000)
  const HEARTBEAT_US = 1_000_000
  const BROKER_INTERVAL_US = 200_000

  test("only the elected safekeeper runs each timeline's backup; a silent offloader is replaced after the heartbeat timeout", () => {
    expect(KEYS.map((key) => Number(timelineIdAsU128(key.timelineId) % 3n))).toEqual([0, 1, 2])
    const lab = new DiskLab(11)
    const store = new MapStore()
    const logs = new Map(NODES.map((node) => [node, new LogLines()]))
    const fatals: string[] = []
    let silenceUs = 0
    runLab(lab, Effect.gen(function* () {
      const configs = new Map<number, BackgroundConfig>(NODES.map((node) => [node, testBackgroundConfig(node, { walBackup: WAL_BACKUP, heartbeatTimeoutUs: HEARTBEAT_US })]))
      const timelines = new Map<number, Timeline[]>()
      for (const node of NODES) {
        const held: Timeline[] = []
        for (const key of KEYS) {
          const timeline = yield* makeTimeline({ datadir: `/sk${node}`, key, nodeId: node, upTo: UPTO, remote: store.service })
          // A compute streams to every safekeeper: backup stays required, the election decides.
          timeline.registerReceiver()
          held.push(timeline)
        }
        timelines.set(node, held)
      }
      const alive = new Set<number>(NODES)
      // The broker: every node hears every live node's own info, as published once in a while.
      const gossip = Effect.gen(function* () {
        const nowUs = yield* monotonicUs
        for (const from of alive) {
          for (const to of NODES) {
            if (to === from) continue
            timelines.get(from)!.forEach((timeline, i) => timelines.get(to)![i]!.peers.record(ownInfo(timeline, configs.get(from)!), nowUs))
          }
        }
      })
      yield* gossip
      yield* Effect.forkChild(Effect.forever(Effect.andThen(sleepUs(BROKER_INTERVAL_US), gossip)))
      const managers = new Map<number, ReadonlyArray<Fiber.Fiber<unknown, unknown>>>()
      for (const node of NODES) {
        const forked: Array<Fiber.Fiber<unknown, unknown>> = []
        for (const timeline of timelines.get(node)!) {
          forked.push(yield* Effect.forkChild(runManager(timeline, configs.get(node)!, fatalInto(fatals)).pipe(Effect.provideService(Log, logs.get(node)!.service))))
        }
        managers.set(node, forked)
      }
      yield* sleepUs(3_000_000)
      // Safekeeper 1 dies: its managers stop and the broker stops hearing from it.
      alive.delete(1)
      for (const fiber of managers.get(1)!) yield* Fiber.interrupt(fiber)
      silenceUs = yield* monotonicUs
      yield* sleepUs(4_000_000)
      for (const node of [2, 3]) for (const fiber of managers.get(node)!) yield* Fiber.interrupt(fiber)
    }), store, new LogLines())
    expect(fatals).toEqual([])

    const events = (node: number, message: string, key: TimelineKey, from = 0, to = Infinity) =>
      logs.get(node)!.find(message).filter((line) => line.fields?.timeline === timelineKeyText(key) && line.atUs >= from && line.atUs < to)
    const runners = (key: TimelineKey, upToUs: number) =>
      NODES.filter((node) => events(node, "wal backup started", key, 0, upToUs).length > events(node, "wal backup stopped", key, 0, upToUs).length)

    // Before the silence: one start per timeline, on its elected node, and no flapping.
    KEYS.forEach((key, i) => {
      const where = timelineKeyText(key)
      expect(NODES.filter((node) => events(node, "wal backup started", key, 0, silenceUs).length > 0), where).toEqual([NODES[i]])
      expect(events(NODES[i]!, "wal backup started", key, 0, silenceUs).length, where).toBe(1)
      expect(NODES.flatMap((node) => events(node, "wal backup stopped", key, 0, silenceUs)), where).toEqual([])
      // The elected node did upload.
      expect(store.objects.has(segmentObjectPath(key, FIRST, SEGMENT_BYTES)), where).toBe(true)
    })

    // After it: safekeepers 2 and 3 elect among themselves, [2, 3][u128 % 2].
    const after = [2, 3, 2]
    KEYS.forEach((key, i) => {
      expect(runners(key, Infinity).filter((node) => node !== 1), timelineKeyText(key)).toEqual([after[i]])
    })
    // Timeline 0 was safekeeper 1's: safekeeper 2 takes over once 1's last info is older than
    // the heartbeat timeout, not before (1 was last heard at most one broker interval before it died).
    const takeover = events(2, "wal backup started", KEYS[0]!, silenceUs)
    expect(takeover.length).toBe(1)
    expect(takeover[0]!.atUs).toBeGreaterThan(silenceUs + HEARTBEAT_US - BROKER_INTERVAL_US)
    expect(takeover[0]!.atUs).toBeLessThanOrEqual(silenceUs + HEARTBEAT_US + 500_000)
    // Timeline 1 moves from 2 to 3: 2 stops, 3 starts (the pick is by index, not sticky).
    expect(events(2, "wal backup stopped", KEYS[1]!, silenceUs).length).toBe(1)
    expect(events(3, "wal backup started", KEYS[1]!, silenceUs).length).toBe(1)
  })
})

describe("WAL removal in the manager", () => {
  interface Removal {
    readonly upTo: number
    readonly persisted: PersistedState
    readonly flushLsn: number
    readonly holds: number
  }

  /** Records every removal the manager makes, with the state it was made in. */
  function recordRemovals(timeline: Timeline, removals: Removal[]): void {
    const remove = timeline.removeWalUpTo.bind(timeline)
    timeline.removeWalUpTo = (upTo) => {
      removals.push({ upTo, persisted: timeline.persisted, flushLsn: timeline.acceptor.flushLsn(), holds: timeline.walRemovalHolds })
      return remove(upTo)
    }
  }

  /** Each removal stayed below the persisted horizon's segment, with no hold. */
  function removalProblems(removals: ReadonlyArray<Removal>): string[] {
    return removals.flatMap((removal) => {
      const { persisted } = removal
      const horizon = Math.min(persisted.remoteConsistentLsn, persisted.backupLsn, persisted.commitLsn, removal.flushLsn)
      const problems: string[] = []
      if (segmentStartLsn(removal.upTo + 1, SEGMENT_BYTES) > horizon) problems.push(`removed up to segment ${removal.upTo} with the persisted horizon at ${horizon}`)
      if (removal.holds > 0) problems.push(`removed up to segment ${removal.upTo} while ${removal.holds} holds`)
      return problems
    })
  }

  test("remote_consistent_lsn bounds removal by its persisted value only, and no removal happens while a snapshot holds it", () => {
    expect(OPEN - FIRST).toBeGreaterThanOrEqual(3)
    const store = new MapStore()
    const log = new LogLines()
    const removals: Removal[] = []
    const fatals: string[] = []
    const observed: Record<string, number> = {}
    const result = runLab(new DiskLab(21), Effect.gen(function* () {
      const timeline = yield* makeTimeline({ remote: store.service })
      recordRemovals(timeline, removals)
      const manager = yield* Effect.forkChild(runManager(timeline, testBackgroundConfig(1, { walBackup: WAL_BACKUP }), fatalInto(fatals)))
      yield* timeline.positions.waitUntil((p) => p.backupLsn >= segmentStartLsn(OPEN, SEGMENT_BYTES))
      // The pageserver has nothing yet: nothing goes, though everything is backed up.
      yield* sleepUs(500_000)
      observed.beforeFeedback = removals.length

      // remote_consistent_lsn half-way into FIRST+1: persisted at once (a segment ahead), FIRST goes.
      yield* raiseRemoteConsistent(timeline, segmentStartLsn(FIRST + 1, SEGMENT_BYTES) + 500_000)
      yield* persistNow(timeline)
      yield* eventually("segment FIRST removed", () => timeline.lastRemovedSegmentNo === FIRST)

      // Into FIRST+2 by less than a segment: in memory only. FIRST+1 must stay.
      yield* raiseRemoteConsistent(timeline, segmentStartLsn(FIRST + 2, SEGMENT_BYTES) + 100)
      observed.persistedRemoteConsistent = timeline.persisted.remoteConsistentLsn
      observed.inMemoryRemoteConsistent = timeline.acceptor.snapshot().inMemory.remoteConsistentLsn
      yield* sleepUs(1_000_000)
      observed.whileInMemoryOnly = timeline.lastRemovedSegmentNo
      yield* persistNow(timeline)
      yield* eventually("segment FIRST+1 removed", () => timeline.lastRemovedSegmentNo === FIRST + 1)

      // A snapshot holds removal: everything may go, nothing does until it lets go.
      timeline.walRemovalHolds = 1
      yield* raiseRemoteConsistent(timeline, WAL_END)
      yield* persistNow(timeline)
      yield* sleepUs(1_000_000)
      observed.whileHeld = timeline.lastRemovedSegmentNo
      timeline.walRemovalHolds = 0
      yield* eventually("every full segment removed", () => timeline.lastRemovedSegmentNo === OPEN - 1)
      yield* Fiber.interrupt(manager)
      return { present: yield* localSegments(timeline.directory) }
    }), store, log)
    expect(fatals).toEqual([])
    expect(observed.beforeFeedback).toBe(0)
    // The test means something only if the in-memory value would have allowed more.
    expect(segmentNoOf(observed.persistedRemoteConsistent!, SEGMENT_BYTES)).toBe(FIRST + 1)
    expect(segmentNoOf(observed.inMemoryRemoteConsistent!, SEGMENT_BYTES)).toBe(FIRST + 2)
    expect(observed.whileInMemoryOnly).toBe(FIRST)
    expect(observed.whileHeld).toBe(FIRST + 1)
    expect(removals.map((removal) => removal.upTo)).toEqual([FIRST, FIRST + 1, OPEN - 1])
    expect(removalProblems(removals)).toEqual([])
    expect(result.present).toEqual([OPEN])
    expect(log.find("wal removed").map((line) => line.fields?.up_to_segment)).toEqual([FIRST, FIRST + 1, OPEN - 1])
  })

  test("backup_lsn bounds removal: a stalled upload keeps its segment and every later one", () => {
    const store = new MapStore({ putDelayUs: (path) => (path === segmentObjectPath(KEY, FIRST + 1, SEGMENT_BYTES) ? 3_000_000 : 100) })
    const log = new LogLines()
    const removals: Removal[] = []
    const fatals: string[] = []
    const observed: Record<string, number> = {}
    runLab(new DiskLab(22), Effect.gen(function* () {
      const timeline = yield* makeTimeline({ remote: store.service })
      recordRemovals(timeline, removals)
      // The pageserver has everything: only backup_lsn (and commit, flush) bound removal.
      yield* raiseRemoteConsistent(timeline, WAL_END)
      yield* persistNow(timeline)
      const manager = yield* Effect.forkChild(runManager(timeline, testBackgroundConfig(1, { walBackup: WAL_BACKUP }), fatalInto(fatals)))
      yield* timeline.positions.waitUntil((p) => p.backupLsn >= segmentStartLsn(FIRST + 1, SEGMENT_BYTES))
      yield* persistNow(timeline)
      yield* sleepUs(1_000_000)
      observed.stalledBackupLsn = timeline.acceptor.snapshot().inMemory.backupLsn
      observed.whileStalled = timeline.lastRemovedSegmentNo
      yield* timeline.positions.waitUntil((p) => p.backupLsn >= segmentStartLsn(OPEN, SEGMENT_BYTES))
      yield* persistNow(timeline)
      yield* eventually("every full segment removed", () => timeline.lastRemovedSegmentNo === OPEN - 1)
      yield* Fiber.interrupt(manager)
    }), store, log)
    expect(fatals).toEqual([])
    expect(observed.stalledBackupLsn).toBe(segmentStartLsn(FIRST + 1, SEGMENT_BYTES))
    expect(observed.whileStalled).toBe(FIRST)
    expect(removals.map((removal) => removal.upTo)).toEqual([FIRST, OPEN - 1])
    expect(removalProblems(removals)).toEqual([])
  })

  test("commit_lsn bounds removal even when peers report everything backed up and consumed", () => {
    const COMMIT = recordEndIn(FIRST + 1, 500_000)
    const store = new MapStore()
    const log = new LogLines()
    const removals: Removal[] = []
    const fatals: string[] = []
    const observed: Record<string, number> = {}
    runLab(new DiskLab(23), Effect.gen(function* () {
      const timeline = yield* makeTimeline({ commitUpTo: COMMIT, remote: store.service })
      recordRemovals(timeline, removals)
      // A peer uploaded everything and the pageserver has it all (heard through the broker).
      yield* timeline.applyPeerInfo({ commitLsn: 0, lastLogTerm: timeline.acceptor.lastLogTerm(), backupLsn: WAL_END, remoteConsistentLsn: WAL_END, peerHorizonLsn: 0 })
      yield* persistNow(timeline)
      observed.commitLsn = timeline.persisted.commitLsn
      // No backup on this node: only what the peers said raises backup_lsn.
      const manager = yield* Effect.forkChild(runManager(timeline, testBackgroundConfig(1), fatalInto(fatals)))
      yield* eventually("segment FIRST removed", () => timeline.lastRemovedSegmentNo === FIRST)
      yield* sleepUs(1_000_000)
      observed.removed = timeline.lastRemovedSegmentNo
      yield* Fiber.interrupt(manager)
    }), store, log)
    expect(fatals).toEqual([])
    expect(observed.commitLsn).toBe(COMMIT)
    expect(observed.removed).toBe(FIRST)
    expect(removals.map((removal) => removal.upTo)).toEqual([FIRST])
    expect(removalProblems(removals)).toEqual([])
  })

  // The periodic control-file save (`--control-file-save-interval`) persists whatever in-memory
  // value moved (reference §6), not only commit_lsn: on an idle timeline a remote_consistent_lsn
  // (or backup_lsn) that moved by less than a segment would otherwise never be persisted, and WAL
  // removal, which reads the persisted values, would stop a segment short for good (found by
  // this test).
  test("the periodic control-file save persists a moved remote_consistent_lsn on an idle timeline, and removal follows", () => {
    const store = new MapStore()
    const log = new LogLines()
    const observed: Record<string, number> = {}
    const fatals: string[] = []
    runLab(new DiskLab(24), Effect.gen(function* () {
      const timeline = yield* makeTimeline({ remote: store.service })
      const manager = yield* Effect.forkChild(runManager(timeline, testBackgroundConfig(1, { walBackup: WAL_BACKUP, controlFileSaveIntervalUs: 200_000 }), fatalInto(fatals)))
      yield* timeline.positions.waitUntil((p) => p.backupLsn >= segmentStartLsn(OPEN, SEGMENT_BYTES))
      yield* raiseRemoteConsistent(timeline, segmentStartLsn(FIRST + 1, SEGMENT_BYTES) + 500_000)
      // Everything in memory is durable now (commit included): the timeline is idle from here.
      yield* persistNow(timeline)
      yield* eventually("segment FIRST removed", () => timeline.lastRemovedSegmentNo === FIRST)
      yield* raiseRemoteConsistent(timeline, segmentStartLsn(FIRST + 2, SEGMENT_BYTES) + 100)
      // Five save intervals.
      yield* sleepUs(1_000_000)
      observed.persistedRemoteConsistent = timeline.persisted.remoteConsistentLsn
      observed.removed = timeline.lastRemovedSegmentNo
      yield* Fiber.interrupt(manager)
    }), store, log)
    expect(fatals).toEqual([])
    expect(observed.persistedRemoteConsistent).toBe(segmentStartLsn(FIRST + 2, SEGMENT_BYTES) + 100)
    expect(observed.removed).toBe(FIRST + 1)
  })
})

describe("eviction by the manager", () => {
  // The whole path on one idle timeline: backup uploads the full segments, removal drops them,
  // partial backup uploads the open one, then the manager evicts; a WAL user brings it back.
  const evictingConfig = (overrides: Partial<BackgroundConfig> = {}) => testBackgroundConfig(1, {
    walBackup: WAL_BACKUP,
    partialBackup: { timeoutUs: 200_000 },
    eviction: { deleteOffloadedWal: true, minResidentUs: 500_000 },
    // backup_lsn reaches the control file through the periodic save (or a partial upload that
    // happens to come after the last segment's upload): removal reads the persisted value.
    controlFileSaveIntervalUs: 200_000,
    ...overrides
  })

  const evictIdle = (seed: number, config: BackgroundConfig) => {
    const store = new MapStore()
    const log = new LogLines()
    const fatals: string[] = []
    const result = runLab(new DiskLab(seed), Effect.gen(function* () {
      const timeline = yield* makeTimeline({ remote: store.service })
      // The pageserver has everything: the timeline is idle (not active) once backed up.
      yield* raiseRemoteConsistent(timeline, WAL_END)
      const manager = yield* Effect.forkChild(runManager(timeline, config, fatalInto(fatals)))
      yield* timeline.positions.waitUntil((p) => p.backupLsn >= segmentStartLsn(OPEN, SEGMENT_BYTES))
      const deadlineUs = (yield* monotonicUs) + 10_000_000
      while (!timeline.isOffloaded && (yield* monotonicUs) < deadlineUs) yield* sleepUs(50_000)
      const evicted = { offloaded: timeline.isOffloaded, removed: timeline.lastRemovedSegmentNo, present: yield* localSegments(timeline.directory) }
      if (!evicted.offloaded) {
        yield* Fiber.interrupt(manager)
        return { evicted, back: undefined }
      }
      const read = yield* timeline.withResidence(Effect.suspend(() => timeline.read(Lsn(segmentStartLsn(OPEN, SEGMENT_BYTES)), 4000)))
      const back = { offloaded: timeline.isOffloaded, read, flushLsn: timeline.acceptor.flushLsn(), oldRead: yield* timeline.read(START, 4000) }
      yield* Fiber.interrupt(manager)
      return { evicted, back }
    }), store, log)
    return { result, log, fatals }
  }

  test("left to the manager, an idle, backed-up timeline is evicted (its WAL gone from disk) and a reader brings it back", () => {
    const { result, log, fatals } = evictIdle(41, evictingConfig())
    expect(fatals).toEqual([])
    expect(result.evicted).toEqual({ offloaded: true, removed: OPEN - 1, present: [] })
    expect(log.count("timeline evicted")).toBe(1)
    expect(result.back?.offloaded).toBe(false)
    expect(result.back?.flushLsn).toBe(WAL_END)
    expect(equalBytes(result.back!.read, walBytes(segmentStartLsn(OPEN, SEGMENT_BYTES), segmentStartLsn(OPEN, SEGMENT_BYTES) + 4000))).toBe(true)
    // The removed first segment still reads, from object storage.
    expect(equalBytes(result.back!.oldRead, walBytes(START, START + 4000))).toBe(true)
    expect(log.count("timeline unevicted")).toBe(1)
  })

  test("no eviction while a residence guard is held (a push or a reader); eviction follows its release", () => {
    const store = new MapStore()
    const log = new LogLines()
    const fatals: string[] = []
    const observed = runLab(new DiskLab(42), Effect.gen(function* () {
      const timeline = yield* makeTimeline({ remote: store.service })
      yield* raiseRemoteConsistent(timeline, WAL_END)
      let released = false
      yield* Effect.forkChild(timeline.withResidence(sleepUs(3_000_000)).pipe(Effect.ensuring(Effect.sync(() => {
        released = true
      }))))
      const manager = yield* Effect.forkChild(runManager(timeline, evictingConfig(), fatalInto(fatals)))
      yield* sleepUs(2_500_000)
      const held = { offloaded: timeline.isOffloaded, removed: timeline.lastRemovedSegmentNo, partials: log.count("partial backup uploaded"), guards: timeline.residenceGuards }
      yield* eventually("released", () => released)
      yield* eventually("evicted", () => timeline.isOffloaded)
      yield* Fiber.interrupt(manager)
      return held
    }), store, log)
    expect(fatals).toEqual([])
    // Everything else was ready: WAL removed, the partial uploaded.
    expect(observed).toEqual({ offloaded: false, removed: OPEN - 1, partials: 1, guards: 1 })
    expect(log.count("timeline evicted")).toBe(1)
  })
})

describe("reads of removed segments", () => {
  // What START_REPLICATION from far back does: Timeline.read at an LSN whose segment is gone.
  const BACKED_UP_TO = segmentStartLsn(FIRST + 2, SEGMENT_BYTES)

  /** A timeline whose full segments FIRST, FIRST+1 are in object storage (backup_lsn there), and FIRST..FIRST+2 removed locally. */
  const removedTimeline = (store: MapStore, withRemote: boolean) =>
    Effect.gen(function* () {
      const timeline = yield* makeTimeline(withRemote ? { remote: store.service } : {})
      const backup = yield* Effect.forkChild(Effect.provideService(runWalBackup(timeline), RemoteStorage, store.service))
      yield* timeline.positions.waitUntil((p) => p.backupLsn >= BACKED_UP_TO)
      yield* Fiber.interrupt(backup)
      // Segment FIRST+2 goes too, above backup_lsn (removal itself would not: this is the read side's test).
      yield* timeline.removeWalUpTo(FIRST + 2)
      return timeline
    })

  test("below backup_lsn a removed segment comes from object storage; above it the read is refused with WalStorageError Removed", () => {
    // Puts of segments past FIRST+1 never finish: backup_lsn stays at BACKED_UP_TO.
    const store = new MapStore({ putDelayUs: (path) => (path === segmentObjectPath(KEY, FIRST + 2, SEGMENT_BYTES) ? 1_000_000_000 : 100) })
    const log = new LogLines()
    const result = runLab(new DiskLab(31), Effect.gen(function* () {
      const timeline = yield* removedTimeline(store, true)
      const backupLsn = timeline.acceptor.snapshot().inMemory.backupLsn
      const fromStart = yield* timeline.read(START, 8192)
      const segmentEnd = yield* timeline.read(Lsn(segmentStartLsn(FIRST + 1, SEGMENT_BYTES) - 100), 8192)
      const secondSegment = yield* timeline.read(Lsn(segmentStartLsn(FIRST + 1, SEGMENT_BYTES) + 5000), 4000)
      const framed = yield* timeline.readWithHeadroom(START, 8192, 13)
      const aboveBackup = yield* Effect.flip(timeline.read(BACKED_UP_TO, 8192))
      const aboveBackupFramed = yield* Effect.flip(timeline.readWithHeadroom(Lsn(BACKED_UP_TO + 100), 8192, 13))
      // The open segment is still local.
      const local = yield* timeline.read(Lsn(segmentStartLsn(OPEN, SEGMENT_BYTES)), 1000)
      return { backupLsn, fromStart, segmentEnd, secondSegment, framed, aboveBackup, aboveBackupFramed, local }
    }), store, log)
    expect(result.backupLsn).toBe(BACKED_UP_TO)
    expect(equalBytes(result.fromStart, walBytes(START, START + 8192))).toBe(true)
    // Shorter at the segment end, as a local read is.
    expect(equalBytes(result.segmentEnd, walBytes(segmentStartLsn(FIRST + 1, SEGMENT_BYTES) - 100, segmentStartLsn(FIRST + 1, SEGMENT_BYTES)))).toBe(true)
    const second = segmentStartLsn(FIRST + 1, SEGMENT_BYTES) + 5000
    expect(equalBytes(result.secondSegment, walBytes(second, second + 4000))).toBe(true)
    expect(result.framed.byteLength).toBe(13 + 8192)
    expect(result.framed.subarray(0, 13).every((byte) => byte === 0)).toBe(true)
    expect(equalBytes(result.framed.subarray(13), walBytes(START, START + 8192))).toBe(true)
    for (const refused of [result.aboveBackup, result.aboveBackupFramed]) {
      // Not a DiskError: a DiskError would fail-stop the node for one lagging reader.
      expect(refused._tag).toBe("WalStorageError")
      expect(refused._tag === "WalStorageError" && refused.reason).toBe("Removed")
    }
    expect(equalBytes(result.local, walBytes(segmentStartLsn(OPEN, SEGMENT_BYTES), segmentStartLsn(OPEN, SEGMENT_BYTES) + 1000))).toBe(true)
    expect(store.gets.filter((path) => path === segmentObjectPath(KEY, FIRST, SEGMENT_BYTES)).length).toBeGreaterThanOrEqual(2)
    expect(store.gets).not.toContain(segmentObjectPath(KEY, FIRST + 2, SEGMENT_BYTES))
    expect(log.count("wal read from object storage")).toBeGreaterThanOrEqual(4)
    expect(log.count("wal read refused: segment removed")).toBe(2)
  })

  test("with no object storage configured here (a peer did the backup), a removed segment is refused with Removed, even below backup_lsn", () => {
    const store = new MapStore()
    const log = new LogLines()
    const refused = runLab(new DiskLab(32), Effect.gen(function* () {
      const timeline = yield* removedTimeline(store, false)
      return yield* Effect.flip(timeline.read(START, 8192))
    }), store, log)
    expect(refused._tag).toBe("WalStorageError")
    expect(refused._tag === "WalStorageError" && refused.reason).toBe("Removed")
    expect(store.gets).toEqual([])
  })

})
