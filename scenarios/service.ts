import { Effect } from "effect"
import { NodeId, TenantId, TimelineId } from "../core/acceptor/state.js"
import type { Disk } from "../core/io/disk.js"
import { Log, type LogFields, type LogLevel } from "../core/io/log.js"
import type { Net } from "../core/io/net.js"
import { defaultInitialLsn, PG_VERSION_NUM_DEFAULT } from "../core/proposer/machine.js"
import { Broker } from "../core/io/broker.js"
import { RemoteStorage } from "../core/io/remote-storage.js"
import { runSafekeeper, SafekeeperFatalError } from "../core/server/safekeeper.js"
import type { BackgroundConfig } from "../core/timeline/manager.js"
import { formatLsn } from "../core/wal/lsn.js"
import { computeProgram, type ComputeOptions } from "../sim/compute.js"
import { type BrokerFaults, SimBroker } from "../sim/broker.js"
import { NO_DISK_FAULTS, type DiskFaults } from "../sim/disk.js"
import type { Incarnation } from "../sim/kernel.js"
import { DEFAULT_NET_FAULTS, type NetFaults } from "../sim/net.js"
import { type ObjectStoreFaults, SimObjectStore } from "../sim/object-store.js"
import { pageserverProgram } from "../sim/pageserver.js"
import { ServiceChecker } from "../sim/service-checker.js"
import { EFFECT_VERSION } from "../sim/version.js"
import { World } from "../sim/world.js"
import { resultOf, type FaultEvent, type ScenarioResult, type ScenarioRunOptions } from "./scenario.js"

/**
 * The whole service in one simulated world, driven by an explicit plan: N safekeepers (the real
 * core/server: pg-protocol handler, timeline registry, receive pipeline, acceptor, segment store
 * and control file), one or more computes running the real walproposer (sim/compute.ts), and a
 * list of fault actions at planned times. The swarm scenario draws a plan from each seed; the
 * named incident scenarios write theirs by hand; `sk sim shrink` removes actions from a failing
 * plan. Actions name their targets by a number in [0, 1) that picks among the nodes that are up
 * when the action fires, so the nemesis never picks a node that is down and a shrunk plan stays
 * meaningful.
 *
 * A run has a fault phase, then a liveness phase: faults stop, the network heals, every
 * safekeeper is started, all computes but one are stopped, and within `livenessPhaseUs` commits
 * must resume and every safekeeper that holds the timeline must reach the final commit_lsn. Last,
 * every safekeeper is crashed and its disk checked (sim/service-checker.ts).
 */
export type FaultAction =
  | { readonly kind: "crash"; readonly atUs: number; readonly role: "safekeeper" | "compute"; readonly pick: number; readonly restartAfterUs: number }
  | { readonly kind: "wipe"; readonly atUs: number; readonly pick: number; readonly restartAfterUs: number }
  | { readonly kind: "partition"; readonly atUs: number; readonly pickA: number; readonly pickB: number; readonly withCompute: boolean; readonly oneWay: boolean; readonly durationUs: number }
  | { readonly kind: "isolate"; readonly atUs: number; readonly pick: number; readonly durationUs: number; readonly only?: "outbound" | "inbound" }
  | { readonly kind: "clog"; readonly atUs: number; readonly pickA: number; readonly pickB: number; readonly withCompute: boolean; readonly durationUs: number }
  | { readonly kind: "break"; readonly atUs: number; readonly pickA: number; readonly pickB: number }
  | { readonly kind: "disk-errors"; readonly atUs: number; readonly pick: number; readonly durationUs: number; readonly eioOnFsyncProbability: number; readonly enospcOnWriteProbability: number; readonly eioOnWriteProbability: number }
  | { readonly kind: "start-compute"; readonly atUs: number; readonly compute: number }
  | { readonly kind: "pause"; readonly atUs: number; readonly pick: number; readonly durationUs: number }
  | { readonly kind: "crash-pageserver"; readonly atUs: number; readonly restartAfterUs: number }
  /** Object storage unreachable from one safekeeper for a while (its requests time out). */
  | { readonly kind: "partition-store"; readonly atUs: number; readonly pick: number; readonly durationUs: number }
  /** The broker unreachable from one safekeeper for a while (publishes lost, subscription fails). */
  | { readonly kind: "partition-broker"; readonly atUs: number; readonly pick: number; readonly durationUs: number }
  /** Every compute stops for a while (an idle timeline: eviction's chance), then they restart. */
  | { readonly kind: "idle"; readonly atUs: number; readonly durationUs: number }

export interface ServicePlan {
  /** The fault families and levels this plan was drawn with, printed at the start of the run. */
  readonly config: string
  readonly safekeeperCount: number
  readonly computeCount: number
  readonly actions: ReadonlyArray<FaultAction>
  readonly faultPhaseUs: number
  readonly livenessPhaseUs: number
  readonly crashOnOperationProbability: number
  readonly clockSkewUsMax: number
  readonly chunkDelayUs: readonly [number, number]
  readonly fsyncLatencyUs: readonly [number, number]
  /** Whole-disk metadata crash model and the like, passed to every disk. */
  readonly diskFaults?: Partial<DiskFaults>
  readonly rateBytesPerSecond: number
  readonly messageBytes: number
  readonly syncFirst: boolean
  readonly segmentSizeBytes: number
  /** A pageserver consumes the timeline's WAL (sim/pageserver.ts) and its bytes are checked. */
  readonly pageserver?: boolean
  /** Each node's clock runs up to this many ppm fast or slow (timers and sleeps too). */
  readonly clockDriftPpmMax?: number
  /** A delivered chunk breaks its connection with this probability (fault phase only). */
  readonly breakProbabilityPerChunk?: number
  /** Chunks now and then take a long-tail delay (fault phase only). */
  readonly chunkDelayTail?: { readonly probability: number; readonly delayUs: readonly [number, number] }
  /** One safekeeper's disk holds only this much until the liveness phase (the operator then grows it). */
  readonly capacityLimit?: { readonly pick: number; readonly capacityBytes: number }
  /**
   * Object storage and the broker (the timeline's life after the quorum): WAL backup by the
   * elected offloader, partial backup, WAL removal, eviction; absent, WAL stays on local disk.
   */
  readonly offload?: OffloadPlan
  /** Every N-th record the computes write is an XLOG_SWITCH (Neon #11092); absent: none. */
  readonly xlogSwitchEveryRecords?: number
  /** Each switch record and its zero padding go to the safekeepers in separate chunks. */
  readonly xlogSwitchSplitPadding?: boolean
}

export interface OffloadPlan {
  readonly storeFaults: ObjectStoreFaults
  readonly brokerFaults: BrokerFaults
  readonly partialBackupTimeoutUs: number
  readonly eviction: boolean
  readonly peerRecovery: boolean
}

export const TENANT = TenantId("0123456789abcdef0123456789abcdef")
export const TIMELINE = TimelineId("fedcba9876543210fedcba9876543210")
const PG_PORT = 5454
const DATADIR = "/data"
const TIMELINE_DIR = `${DATADIR}/${TENANT}/${TIMELINE}`
const SYSTEM_ID = 0x5a17_5eed_0000_0007n
/** Marks derived from log events of the code under test (message → mark). */
const LOG_MARKS: ReadonlyArray<readonly [string, string]> = [
  ["proposer: peer WAL stream failed", "donor-stream-failed"],
  ["proposer lost safekeeper", "proposer-lost-safekeeper"],
  ["proposer sync: safekeepers synced", "sync-safekeepers-synced"],
  ["proposer elected with no WAL in sync-safekeepers, exiting", "sync-safekeepers-0/0"],
  ["push failed", "push-refused"],
  ["timeline failed to load", "timeline-failed-to-load"],
  ["pageserver switched safekeeper", "pageserver-switched-safekeeper"],
  ["pageserver backoff reset", "pageserver-backoff-reset"],
  ["wal backup segment uploaded", "wal-backup-uploaded"],
  ["partial backup uploaded", "partial-backup-uploaded"],
  ["partial backup replaced", "partial-backup-replaced"],
  ["wal removed", "wal-removed"],
  ["timeline evicted", "timeline-evicted"],
  ["timeline unevicted", "timeline-unevicted"],
  ["wal read from object storage", "on-demand-download"],
  ["wal read refused: segment removed", "removal-raced-lagging-reader"],
  ["peer recovery started", "peer-recovery-started"],
  ["broker subscription ended", "broker-subscription-lost"]
]
const PAGESERVER = "pageserver"

export function safekeeperNames(count: number): string[] {
  return Array.from({ length: count }, (_, i) => `sk${i + 1}`)
}

export function computeNames(count: number): string[] {
  return Array.from({ length: count }, (_, i) => `compute${i + 1}`)
}

export function runService(name: string, seed: number, plan: ServicePlan, options: ScenarioRunOptions): ScenarioResult {
  const safekeepers = safekeeperNames(plan.safekeeperCount)
  const computes = computeNames(plan.computeCount)
  const addresses = safekeepers.map((sk) => `${sk}:${PG_PORT}`)
  const recordTimeline = options.recordTrace
  let runNo = 0
  /** The control plane created the timeline on these safekeepers (it does not know about wipes). */
  const created = new Set<string>()
  const logMarks = new Set<string>()
  const faults: FaultEvent[] = []
  const diskFaults: DiskFaults = {
    ...NO_DISK_FAULTS,
    writeLatencyUs: [5, 50],
    fsyncLatencyUs: plan.fsyncLatencyUs,
    ...plan.diskFaults
  }
  const netFaults: NetFaults = {
    ...DEFAULT_NET_FAULTS,
    chunkDelayUs: plan.chunkDelayUs,
    connectTimeoutUs: 500_000,
    partitionBreakAfterUs: 1_000_000,
    breakProbabilityPerChunk: plan.breakProbabilityPerChunk ?? 0,
    ...(plan.chunkDelayTail !== undefined ? { chunkDelayTailProbability: plan.chunkDelayTail.probability, chunkDelayTailUs: plan.chunkDelayTail.delayUs } : {})
  }

  const computeOptions: ComputeOptions = {
    tenantId: TENANT,
    timelineId: TIMELINE,
    safekeepers: addresses,
    systemId: SYSTEM_ID,
    segmentSizeBytes: plan.segmentSizeBytes,
    rateBytesPerSecond: plan.rateBytesPerSecond,
    messageBytes: plan.messageBytes,
    reconnectTimeoutUs: 100_000,
    connectionTimeoutUs: 1_000_000,
    heartbeatIntervalUs: 200_000,
    quorumTimeoutUs: 2_000_000,
    syncFirst: plan.syncFirst,
    restartPauseUs: [10_000, 200_000],
    ...(plan.xlogSwitchEveryRecords === undefined ? {} : { switchEveryRecords: plan.xlogSwitchEveryRecords, splitSwitchPadding: plan.xlogSwitchSplitPadding === true })
  }

  const pageservers = plan.pageserver === true ? [PAGESERVER] : []
  const world: World = new World({
    seed,
    nodes: [...safekeepers, ...computes, ...pageservers],
    program: (node, life) => {
      const program: Effect.Effect<void, unknown, Disk | Net | Log> = computes.includes(node)
        ? computeProgram(node, life, checker, computeOptions, () => ++runNo)
        : node === PAGESERVER
          ? pageserverNode(life)
          : withOffload(node, life, safekeeperProgram(node, created))
      return withLogMarks(life, logMarks, program, (message) => {
        if (message === "wal backup started") offloaders.add(node)
        if (offloaders.size > 1) logMarks.add("offloader-handover")
      })
    },
    clockDriftPpmMax: plan.clockDriftPpmMax ?? 0,
    diskFaults,
    netFaults,
    crashOnOperationProbability: plan.crashOnOperationProbability,
    clockSkewUsMax: plan.clockSkewUsMax,
    restartDelayUs: [20_000, 300_000],
    recordTrace: options.recordTrace,
    traceHeader: [`scenario ${name}`, `seed ${seed}`, `effect ${EFFECT_VERSION}`, `config ${plan.config}`, `actions ${plan.actions.length}`],
    crashExempt: computes
  })
  const kernel = world.kernel
  const offload = plan.offload
  const store = offload === undefined ? undefined : new SimObjectStore(kernel, offload.storeFaults)
  const broker = offload === undefined ? undefined : new SimBroker(kernel, offload.brokerFaults)
  const checker = new ServiceChecker(world, {
    safekeepers: safekeepers.map((node, i) => ({ node, address: addresses[i]! })),
    timelineDir: TIMELINE_DIR,
    segmentSizeBytes: plan.segmentSizeBytes,
    ...(store === undefined ? {} : { objectStore: store, objectPrefix: `${TENANT}/${TIMELINE}` })
  }, recordTimeline)
  /** Which safekeepers ran the WAL backup (the offloader), to see a hand-over. */
  const offloaders = new Set<string>()
  const fault = (kind: string, nodes: ReadonlyArray<string>, detail?: string) => {
    if (recordTimeline) faults.push({ atUs: kernel.nowUs, kind, nodes, ...(detail !== undefined ? { detail } : {}) })
    kernel.log("nemesis", `${kind} ${nodes.join(",")}${detail !== undefined ? ` ${detail}` : ""}`)
  }
  world.onCrash((node) => {
    if (safekeepers.includes(node)) checker.onSafekeeperCrash(node)
  })

  let wipes = 0
  const up = (nodes: ReadonlyArray<string>) => nodes.filter((node) => world.isUp(node))
  const pickOf = <A>(items: ReadonlyArray<A>, pick: number): A | undefined => items.length === 0 ? undefined : items[Math.min(items.length - 1, Math.floor(pick * items.length))]
  const restartAfter = (node: string, delayUs: number) => kernel.after(delayUs, () => {
    if (world.faultsEnabled) world.start(node)
  }, undefined)
  const startedComputes = new Set<string>()

  const execute = (action: FaultAction): void => {
    if (!world.faultsEnabled) return
    switch (action.kind) {
      case "crash": {
        const node = pickOf(up(action.role === "safekeeper" ? safekeepers : [...startedComputes]), action.pick)
        if (node === undefined) return
        fault("crash", [node])
        world.crash(node, "nemesis")
        restartAfter(node, action.restartAfterUs)
        return
      }
      case "wipe": {
        // One disk loss per run at most: with it a majority still holds every committed byte.
        if (wipes > 0) return
        const node = pickOf(up(safekeepers), action.pick)
        if (node === undefined) return
        wipes++
        fault("wipe", [node])
        world.crash(node, "nemesis: disk lost")
        world.wipe(node)
        // Wiped before the control plane created the timeline there: it never held any WAL.
        if (created.has(node)) checker.markWiped(node)
        restartAfter(node, action.restartAfterUs)
        return
      }
      case "partition": {
        const a = action.withCompute ? pickOf([...startedComputes], action.pickA) : pickOf(safekeepers, action.pickA)
        const others = safekeepers.filter((sk) => sk !== a)
        const b = pickOf(others, action.pickB)
        if (a === undefined || b === undefined) return
        fault("partition", [a, b], action.oneWay ? "one-way" : undefined)
        world.net.partition(a, b, { oneWay: action.oneWay })
        kernel.after(action.durationUs, () => {
          world.net.heal(a, b)
          if (world.faultsEnabled) fault("heal", [a, b])
          checker.marks.add("partition-healed")
        }, undefined)
        return
      }
      case "isolate": {
        const node = pickOf([...safekeepers, ...startedComputes], action.pick)
        if (node === undefined) return
        fault("isolate", [node], action.only)
        world.net.isolate(node, action.only === undefined ? undefined : { only: action.only })
        kernel.after(action.durationUs, () => {
          world.net.rejoin(node)
          if (world.faultsEnabled) fault("heal", [node], "isolation ends")
          checker.marks.add("isolation-healed")
        }, undefined)
        return
      }
      case "clog": {
        const a = action.withCompute ? pickOf([...startedComputes], action.pickA) : pickOf(safekeepers, action.pickA)
        const b = pickOf(safekeepers.filter((sk) => sk !== a), action.pickB)
        if (a === undefined || b === undefined) return
        fault("clog", [a, b], `${action.durationUs} us`)
        world.net.clog(a, b, action.durationUs)
        checker.marks.add("clogged")
        return
      }
      case "break": {
        const compute = pickOf([...startedComputes], action.pickA)
        const sk = pickOf(safekeepers, action.pickB)
        if (compute === undefined || sk === undefined) return
        fault("break", [compute, sk])
        world.net.breakConnections(compute, sk)
        return
      }
      case "disk-errors": {
        const node = pickOf(up(safekeepers), action.pick)
        if (node === undefined) return
        const disk = world.disk(node)
        fault("disk-errors", [node], `eio-fsync ${action.eioOnFsyncProbability} enospc-write ${action.enospcOnWriteProbability} eio-write ${action.eioOnWriteProbability}`)
        disk.setFaults({ ...diskFaults, eioOnFsyncProbability: action.eioOnFsyncProbability, enospcOnWriteProbability: action.enospcOnWriteProbability, eioOnWriteProbability: action.eioOnWriteProbability })
        kernel.after(action.durationUs, () => disk.setFaults(diskFaults), undefined)
        return
      }
      case "pause": {
        const node = pickOf(up([...safekeepers, ...startedComputes, ...pageservers]), action.pick)
        if (node === undefined) return
        fault("pause", [node], `${action.durationUs} us`)
        world.pause(node, action.durationUs)
        return
      }
      case "crash-pageserver": {
        if (!world.isUp(PAGESERVER)) return
        fault("crash", [PAGESERVER])
        world.crash(PAGESERVER, "nemesis")
        restartAfter(PAGESERVER, action.restartAfterUs)
        return
      }
      case "partition-store": {
        const node = pickOf(up(safekeepers), action.pick)
        if (node === undefined || store === undefined) return
        fault("partition-store", [node], `${action.durationUs} us`)
        store.partition(node)
        kernel.after(action.durationUs, () => store.heal(node), undefined)
        return
      }
      case "partition-broker": {
        const node = pickOf(up(safekeepers), action.pick)
        if (node === undefined || broker === undefined) return
        fault("partition-broker", [node], `${action.durationUs} us`)
        broker.partition(node)
        kernel.after(action.durationUs, () => broker.heal(node), undefined)
        return
      }
      case "idle": {
        const running = up([...startedComputes])
        if (running.length === 0) return
        fault("idle", running, `${action.durationUs} us`)
        for (const node of running) world.crash(node, "nemesis: computes stop (idle timeline)")
        for (const node of running) restartAfter(node, action.durationUs)
        return
      }
      case "start-compute": {
        const node = computes[action.compute]
        if (node === undefined || startedComputes.has(node)) return
        startedComputes.add(node)
        fault("start-compute", [node])
        world.start(node)
        return
      }
    }
  }

  for (const action of plan.actions) kernel.setTimer(action.atUs, () => execute(action), undefined)
  if (plan.capacityLimit !== undefined) {
    const node = pickOf(safekeepers, plan.capacityLimit.pick)!
    fault("capacity-limit", [node], `${plan.capacityLimit.capacityBytes} bytes`)
    world.disk(node).setFaults({ ...diskFaults, capacityBytes: plan.capacityLimit.capacityBytes })
  }
  for (const node of safekeepers) world.start(node)
  // The first compute starts with the run; others as the plan says.
  startedComputes.add(computes[0]!)
  world.start(computes[0]!)
  for (const node of pageservers) world.start(node)
  const tripsFault = world.run(plan.faultPhaseUs)

  // Liveness: faults stop, the network heals, every safekeeper runs, one compute remains.
  world.faultsEnabled = false
  fault("liveness-phase", [])
  world.net.healAll()
  world.net.stopChunkFaults()
  store?.healAll()
  store?.stopFaults()
  broker?.healAll()
  broker?.stopFaults()
  for (const node of safekeepers) {
    world.disk(node).setFaults(diskFaults)
    if (!world.isUp(node)) world.start(node)
  }
  const survivor = computes[0]!
  for (const node of computes) if (node !== survivor) world.crash(node, "liveness phase: one compute remains")
  if (!world.isUp(survivor)) world.start(survivor)
  for (const node of pageservers) if (!world.isUp(node)) world.start(node)
  checker.livenessStarted = true
  // A safekeeper that lost its disk holds no timeline until pull_timeline exists: it is not counted.
  const holders = () => safekeepers.filter((sk) => !checker.isWiped(sk))
  const commitBefore = checker.maxCommitLsn
  const liveStartUs = kernel.nowUs
  const tripsLive = world.run(plan.faultPhaseUs + plan.livenessPhaseUs, {
    stop: () => checker.caughtUp(holders(), commitBefore) && kernel.nowUs >= liveStartUs + 500_000
  })
  const commitAtEnd = checker.maxCommitLsn
  if (commitAtEnd <= commitBefore) {
    checker.violation("liveness", survivor, checker.latestTerm, commitAtEnd, `no commit in ${plan.livenessPhaseUs / 1e6} s after faults stopped`)
  } else if (!checker.caughtUp(holders(), commitBefore)) {
    const behind = holders().filter((sk) => checker.flushInLatestTerm(sk) < commitAtEnd).map((sk) => `${sk} at ${formatLsn(checker.flushInLatestTerm(sk))}`)
    checker.violation("liveness", survivor, checker.latestTerm, commitAtEnd, `not every safekeeper reached commit_lsn within ${plan.livenessPhaseUs / 1e6} s (${behind.join(", ")})`)
  } else {
    checker.marks.add("commit-after-faults")
  }

  for (const node of safekeepers) world.crash(node, "end of run")
  checker.finalDiskChecks()
  checker.finalObjectStoreChecks()
  const marks = new Set([...checker.marks, ...logMarks])
  if (world.stats.operationCrashes > 0) marks.add("crash-between-operations")
  if (checker.elections > 1) marks.add("re-election")
  if (checker.resentBytes > 0) marks.add("donor-recovery")
  if (world.stats.wipes > 0 && world.violations.length === 0) marks.add("disk-loss-survived")
  const disks = [...world.disks.values()].map((d) => d.stats)
  if (disks.some((s) => s.tornWrites > 0)) marks.add("torn-write")
  if (disks.some((s) => s.injectedErrors > 0)) marks.add("disk-error-injected")
  if (world.stats.pauses > 0) marks.add("node-paused")
  if (plan.capacityLimit !== undefined && world.disk(pickOf(safekeepers, plan.capacityLimit.pick)!).stats.injectedErrors > 0 && world.violations.length === 0) marks.add("disk-full-survived")
  if (checker.consumedBytes > 0) marks.add("consumer-received-wal")
  world.dispose()
  const result = resultOf(world, {
    scenario: name,
    config: plan.config,
    nondeterminism: [...tripsFault, ...tripsLive],
    marks,
    work: {
      elections: checker.elections,
      appends: checker.appends,
      bytesSent: checker.bytesSent,
      committedBytes: Math.max(0, checker.maxCommitLsn - checker.timelineStartLsn),
      resentBytes: checker.resentBytes,
      votesRefused: checker.votesRefused,
      proposerRuns: runNo,
      faultActions: plan.actions.length,
      competingComputes: marks.has("competing-computes") ? 1 : 0,
      committed: checker.maxCommitLsn > checker.timelineStartLsn ? 1 : 0,
      consumedBytes: checker.consumedBytes
    }
  })
  return recordTimeline ? { ...result, timeline: { faults, progress: checker.progress, messages: checker.messages } } : result

  function pageserverNode(life: Incarnation) {
    return pageserverProgram({
      tenantId: TENANT,
      timelineId: TIMELINE,
      safekeepers: addresses,
      initialLsn: defaultInitialLsn(plan.segmentSizeBytes),
      life,
      manager: { walConnectTimeoutUs: 2_000_000, laggingWalTimeoutUs: 1_500_000, maxLsnWalLagBytes: 256 * 1024, retryBackoffMinUs: 100_000, retryBackoffMaxUs: 2_000_000 },
      probeIntervalUs: 300_000,
      feedbackIntervalUs: 200_000,
      hooks: {
        onWalReceived: ({ startLsn, bytes }) => checker.consumerReceived(PAGESERVER, startLsn, bytes),
        onPersisted: ({ lsn }) => checker.consumerPersisted(PAGESERVER, lsn)
      }
    })
  }

  /** A safekeeper's view of object storage and the broker, fenced to its life. */
  function withOffload<A, E, R>(node: string, life: Incarnation, program: Effect.Effect<A, E, R>) {
    if (store === undefined || broker === undefined) return program
    return program.pipe(
      Effect.provideService(RemoteStorage, store.service(life, node)),
      Effect.provideService(Broker, broker.service(life, node))
    )
  }

  function safekeeperProgram(node: string, createdOn: Set<string>) {
    const nodeId = NodeId(Number(node.slice(2)))
    const background: BackgroundConfig | undefined = offload === undefined ? undefined : {
      nodeId,
      walBackup: { parallelJobs: 2, maxOffloaderLagBytes: 4 * plan.segmentSizeBytes },
      partialBackup: { timeoutUs: offload.partialBackupTimeoutUs },
      heartbeatTimeoutUs: 1_000_000,
      controlFileSaveIntervalUs: 2_000_000,
      walsendersKeepHorizon: false,
      peerRecovery: offload.peerRecovery,
      eviction: offload.eviction ? { deleteOffloadedWal: true, minResidentUs: 500_000 } : undefined,
      safekeeperConnstr: `${node}:${PG_PORT}`,
      httpConnstr: "",
      availabilityZone: "",
      tickUs: 200_000,
      brokerPushIntervalUs: 250_000
    }
    const serve = Effect.scoped(runSafekeeper({ nodeId, datadir: DATADIR, listenPg: `${node}:${PG_PORT}`, noSync: false, ...(background === undefined ? {} : { background }) }, ({ registry }) =>
      createdOn.has(node)
        ? Effect.void
        : Effect.gen(function* () {
          // The control plane creates the timeline once on every member (Neon's storage
          // controller does this over HTTP); a crash before it is durable means it tries again.
          // A failed creation (a disk error) is the control plane's failed call: the node is
          // rebooted below, as after any fatal disk failure, and the control plane tries again.
          yield* registry.getOrCreate({ tenantId: TENANT, timelineId: TIMELINE }, { pgVersion: PG_VERSION_NUM_DEFAULT, systemId: SYSTEM_ID, walSegSizeBytes: plan.segmentSizeBytes }, true).pipe(
            Effect.mapError((error) => new SafekeeperFatalError({ message: `timeline creation failed: ${error.message}` }))
          )
          createdOn.add(node)
        })))
    // A fatal disk failure stops the process (fail-stop); the operator then reboots the
    // machine, which drops its page cache: a crash, then a restart from what the disk kept.
    return Effect.catchTag(serve, "SafekeeperFatalError", () =>
      Effect.andThen(Effect.sync(() => {
        checker.marks.add("fail-stop-after-disk-error")
        world.crash(node, "reboot after a fatal disk failure")
        world.restartLater(node)
      }), Effect.never))
  }
}

/** Passes log events on, and turns the ones LOG_MARKS names into coverage marks. */
function withLogMarks<A, E, R>(life: Incarnation, marks: Set<string>, program: Effect.Effect<A, E, R>, onMessage?: (message: string) => void): Effect.Effect<A, E, R | Log> {
  return Effect.gen(function* () {
    const inner = yield* Log
    return yield* Effect.provideService(program, Log, Log.of({
      emit: (level: LogLevel, message: string, fields?: LogFields) => {
        if (life.alive) {
          for (const [text, mark] of LOG_MARKS) if (message === text) marks.add(mark)
          onMessage?.(message)
        }
        return inner.emit(level, message, fields)
      }
    }))
  })
}
