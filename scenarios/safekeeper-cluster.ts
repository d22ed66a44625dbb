import { Effect, Layer, Random, Result } from "effect"
import { decodeControlFile } from "../core/acceptor/control-file.js"
import { NodeId, TenantId, type Term, type TermHistory, TimelineId } from "../core/acceptor/state.js"
import { firstByteDifference } from "../core/bytes.js"
import { sleepUs } from "../core/io/clock.js"
import { logInfo } from "../core/io/log.js"
import { pgTransportLayer } from "../core/proposer/pg-transport.js"
import { runProposer } from "../core/proposer/proposer.js"
import { SafekeeperTransport, type SafekeeperLink } from "../core/proposer/transport.js"
import { syntheticWalSource } from "../core/proposer/wal-source.js"
import type { AcceptorMessage, ProposerMessage } from "../core/protocol/consensus.js"
import { runSafekeeper } from "../core/server/safekeeper.js"
import { formatLsn, segmentFileName, segmentNoOf, segmentStartLsn } from "../core/wal/lsn.js"
import { PagedContent } from "../sim/disk-content.js"
import { NO_DISK_FAULTS, type DiskFaults } from "../sim/disk.js"
import type { Incarnation } from "../sim/kernel.js"
import { DEFAULT_NET_FAULTS } from "../sim/net.js"
import { ownerOf } from "../sim/service-checker.js"
import { SwarmConfig } from "../sim/swarm.js"
import { EFFECT_VERSION } from "../sim/version.js"
import { World } from "../sim/world.js"
import { resultOf, type Scenario, type ScenarioResult, type ScenarioRunOptions } from "./scenario.js"

/**
 * The whole service in the simulator: three safekeepers (core/server: the pg-protocol handler,
 * the timeline registry, the receive pipeline, the acceptor, the segment store) and one compute
 * running the walproposer (core/proposer, over the real Postgres wire protocol through
 * core/proposer/pg-transport.ts), all on simulated connections and disks. The compute restarts
 * its proposer whenever it steps down; the nemesis crashes safekeepers (also between any two
 * Disk or Net operations) and the compute, partitions and breaks connections.
 *
 * The checker listens on the proposer's transport (every message sent and received) and reads
 * the safekeepers' disks after crashes (DESIGN.md §6 items 1–3, and 4's commit ≤ quorum flush):
 * - one proposer per term: no two proposer runs send ProposerElected for the same term;
 * - a granted vote's term is durable: after a crash, the control file's term covers it;
 * - commit ≤ quorum flush: every commit_lsn a proposer sends is at most the quorum order
 *   statistic of the flush_lsns its safekeepers reported in its term;
 * - log matching: WAL a proposer re-sends from an earlier term equals what that term wrote;
 * - commit durability: every committed byte stays the same in every later proposer's log
 *   (checked at each election over the history it adopts) and on every safekeeper's disk after
 *   the final crash, byte for byte; an elected term never starts below the highest commit.
 * Liveness: once faults stop, commits resume and every safekeeper catches up.
 */
const SAFEKEEPERS = ["sk1", "sk2", "sk3"] as const
const COMPUTE = "compute"
const PG_PORT = 5454
const ADDRESSES = SAFEKEEPERS.map((sk) => `${sk}:${PG_PORT}`)
const TENANT = TenantId("0123456789abcdef0123456789abcdef")
const TIMELINE = TimelineId("fedcba9876543210fedcba9876543210")
const DATADIR = "/data"
const TIMELINE_DIR = `${DATADIR}/${TENANT}/${TIMELINE}`
const SEGMENT_BYTES = 1024 * 1024
const SYSTEM_ID = 0x5a17_5eed_0000_0002n
const FAULT_PHASE_US = 3_000_000
const LIVENESS_PHASE_US = 5_000_000
/** After faults stop: commits must resume and every safekeeper must reach the commit within this. */
const CATCH_UP_US = 5_000_000

export type ClusterPlantedBug = "none"

export function makeSafekeeperClusterScenario(): Scenario {
  const name = "safekeeper-cluster"
  return {
    name,
    description: "three safekeepers and a walproposer (server, timelines, proposer from core/) over simulated connections and disks, under crashes, partitions and breaks; one proposer per term, durable votes, commit ≤ quorum flush, log matching, committed WAL never lost or changed",
    expectedMarks: ["re-election", "donor-recovery", "sk-crash-after-commit", "commit-after-restart", "crash-between-operations", "partition-healed", "truncated-tail"],
    run: (seed, options) => runCluster(name, seed, options)
  }
}

/** What the checker knows: the proposer's view of every term, as sent and received. */
class Ledger {
  /** Bytes sent in AppendRequests of each term, at their LSNs. */
  readonly sentByTerm = new Map<number, PagedContent>()
  /** Where each term's own WAL starts: the last entry of the history it was elected with. */
  readonly historyByTerm = new Map<number, TermHistory>()
  readonly electedBy = new Map<number, string>()
  /** Highest flush_lsn each safekeeper reported to the proposer of a term. */
  readonly flushByTerm = new Map<number, Map<string, number>>()
  readonly grantedTerm = new Map<string, number>()
  readonly committed = new PagedContent()
  maxCommitLsn = 0
  timelineStartLsn = 0
  elections = 0
  appends = 0
  bytesSent = 0
  resent = 0
  commitsAfterLiveness = 0
  livenessStarted = false

  imageOf(term: number): PagedContent {
    let image = this.sentByTerm.get(term)
    if (image === undefined) {
      image = new PagedContent()
      this.sentByTerm.set(term, image)
    }
    return image
  }
}

function runCluster(name: string, seed: number, options: ScenarioRunOptions): ScenarioResult {
  const swarm = new SwarmConfig(seed)
  const skCrashes = swarm.pick("crash", 2, 6)
  const computeCrashes = swarm.pick("compute-crash", 1, 3)
  const crashOnOperationProbability = swarm.pick("crash-on-io", 0.0002, 0.001)
  const partitions = swarm.pick("partition", 2, 6)
  const breaks = swarm.pick("break", 2, 8)
  const chunkDelayMaxUs = swarm.pick("net-delay", 1_000, 10_000)
  const diskFaults: DiskFaults = {
    ...NO_DISK_FAULTS,
    writeLatencyUs: [5, 50],
    fsyncLatencyUs: [100, swarm.level("slow-fsync") === "frequent" ? 10_000 : 1_000]
  }
  const rateBytesPerSecond = swarm.level("wal-rate") === "frequent" ? 1024 * 1024 : 256 * 1024
  // Small records cross pages often; large ones span pages and, now and then, segments.
  const messageBytes = swarm.level("big-records") === "off" ? 200 : 20_000
  const config = swarm.describe()
  const ledger = new Ledger()
  const marks = new Set<string>()
  let runNo = 0

  const world: World = new World({
    seed,
    nodes: [...SAFEKEEPERS, COMPUTE],
    program: (node, life) => node === COMPUTE
      ? computeProgram(life, ledger, marks, (who, message) => world.violation(who, message), () => ++runNo, { rateBytesPerSecond, messageBytes })
      : safekeeperProgram(node),
    diskFaults,
    netFaults: { ...DEFAULT_NET_FAULTS, chunkDelayUs: [50, 50 + chunkDelayMaxUs], connectTimeoutUs: 500_000, partitionBreakAfterUs: 1_000_000 },
    crashOnOperationProbability,
    clockSkewUsMax: 1_000,
    restartDelayUs: [20_000, 300_000],
    recordTrace: options.recordTrace,
    traceHeader: [`scenario ${name}`, `seed ${seed}`, `effect ${EFFECT_VERSION}`, `config ${config}`],
    crashExempt: [COMPUTE]
  })

  // Durable votes: what a crash leaves must cover every vote the proposer was granted.
  world.onCrash((node) => {
    if (node === COMPUTE) return
    const address = `${node}:${PG_PORT}`
    const granted = ledger.grantedTerm.get(address) ?? 0
    if (ledger.maxCommitLsn > ledger.timelineStartLsn) marks.add("sk-crash-after-commit")
    const bytes = world.disk(node).readFileNow(`${TIMELINE_DIR}/safekeeper.control`)
    if (bytes === undefined) {
      if (granted > 0) world.violation(node, `granted a vote in term ${granted}, but its control file is gone after a crash`)
      return
    }
    const decoded = decodeControlFile(bytes)
    if (Result.isFailure(decoded)) return world.violation(node, `control file unreadable after a crash: ${decoded.failure.message}`)
    if (decoded.success.acceptorState.term < granted) {
      world.violation(node, `term ${decoded.success.acceptorState.term} after a crash, below the vote it granted in term ${granted}`)
    }
  })

  const kernel = world.kernel
  const atRandom = (action: () => void) => kernel.after(kernel.intBetween(0, FAULT_PHASE_US), () => {
    if (world.faultsEnabled) action()
  }, undefined)
  for (let i = 0; i < skCrashes; i++) {
    atRandom(() => {
      const up = SAFEKEEPERS.filter((sk) => world.isUp(sk))
      if (up.length === 0) return
      const node = kernel.pick(up)
      world.crash(node, "nemesis")
      world.restartLater(node)
    })
  }
  for (let i = 0; i < computeCrashes; i++) {
    atRandom(() => {
      if (!world.isUp(COMPUTE)) return
      world.crash(COMPUTE, "nemesis")
      world.restartLater(COMPUTE)
    })
  }
  for (let i = 0; i < partitions; i++) {
    atRandom(() => {
      const [a, b] = kernel.chance(0.5) ? [COMPUTE, kernel.pick(SAFEKEEPERS)] : pickTwo(kernel.pick.bind(kernel))
      world.net.partition(a, b, { oneWay: kernel.chance(0.3) })
      kernel.after(kernel.intBetween(20_000, 1_500_000), () => {
        world.net.heal(a, b)
        marks.add("partition-healed")
      }, undefined)
    })
  }
  for (let i = 0; i < breaks; i++) atRandom(() => world.net.breakConnections(COMPUTE, kernel.pick(SAFEKEEPERS)))

  for (const node of [...SAFEKEEPERS, COMPUTE]) world.start(node)
  const tripsFault = world.run(FAULT_PHASE_US)

  // Liveness: faults stop, everything heals and comes back.
  world.faultsEnabled = false
  world.net.healAll()
  for (const node of [...SAFEKEEPERS, COMPUTE]) if (!world.isUp(node)) world.start(node)
  ledger.livenessStarted = true
  const commitBeforeLiveness = ledger.maxCommitLsn
  const caughtUp = () => {
    if (ledger.maxCommitLsn <= commitBeforeLiveness) return false
    const term = Math.max(...ledger.electedBy.keys())
    const flushes = ledger.flushByTerm.get(term)
    return ADDRESSES.every((address) => (flushes?.get(address) ?? 0) >= ledger.maxCommitLsn)
  }
  const tripsLive = world.run(FAULT_PHASE_US + LIVENESS_PHASE_US, { stop: () => caughtUp() && kernel.nowUs >= FAULT_PHASE_US + 500_000 })
  const commitAtEnd = ledger.maxCommitLsn
  if (commitAtEnd <= commitBeforeLiveness) {
    world.violation(COMPUTE, `liveness: no commit in ${LIVENESS_PHASE_US / 1e6} s after faults stopped (commit_lsn stays ${formatLsn(commitAtEnd)})`)
  } else if (!caughtUp()) {
    world.violation(COMPUTE, `liveness: not every safekeeper reached commit_lsn ${formatLsn(commitAtEnd)} within ${CATCH_UP_US / 1e6} s`)
  } else {
    marks.add("commit-after-restart")
  }

  // The final check: crash every safekeeper; each disk must hold the committed WAL byte for byte.
  const term = ledger.electedBy.size === 0 ? 0 : Math.max(...ledger.electedBy.keys())
  const flushes = ledger.flushByTerm.get(term)
  for (const node of SAFEKEEPERS) {
    world.crash(node, "end of run")
    const reached = Math.min(flushes?.get(`${node}:${PG_PORT}`) ?? 0, ledger.maxCommitLsn)
    const problem = compareWithCommitted(world, node, ledger, reached)
    if (problem !== undefined) world.violation(node, problem)
  }
  if (world.stats.operationCrashes > 0) marks.add("crash-between-operations")
  if (ledger.elections > 1) marks.add("re-election")
  if (ledger.resent > 0) marks.add("donor-recovery")
  world.dispose()

  return resultOf(world, {
    scenario: name,
    config,
    nondeterminism: [...tripsFault, ...tripsLive],
    marks,
    work: {
      elections: ledger.elections,
      appends: ledger.appends,
      bytesSent: ledger.bytesSent,
      committedBytes: Math.max(0, ledger.maxCommitLsn - ledger.timelineStartLsn),
      resentBytes: ledger.resent,
      proposerRuns: runNo
    }
  })
}

function pickTwo(pick: <A>(items: ReadonlyArray<A>) => A): readonly [string, string] {
  const a = pick(SAFEKEEPERS)
  const others = SAFEKEEPERS.filter((sk) => sk !== a)
  return [a, pick(others)]
}

// ---------------------------------------------------------------------------------------------
// Nodes

const safekeeperProgram = (node: string) =>
  Effect.scoped(runSafekeeper({ nodeId: NodeId(Number(node.slice(2))), datadir: DATADIR, listenPg: `${node}:${PG_PORT}`, noSync: false }))

/** The compute: runs the walproposer, and runs it again whenever it steps down (as Neon's compute restarts it). */
const computeProgram = (
  life: Incarnation,
  ledger: Ledger,
  marks: Set<string>,
  violation: (who: string, message: string) => void,
  nextRun: () => number,
  wal: { readonly rateBytesPerSecond: number; readonly messageBytes: number }
) =>
  Effect.gen(function* () {
    while (true) {
      const run = `${life.label}/run${nextRun()}`
      const tap = tapLayer(life, run, ledger, marks, violation)
      const outcome = yield* Effect.result(runProposer({
        tenantId: TENANT,
        timelineId: TIMELINE,
        safekeepers: ADDRESSES,
        systemId: SYSTEM_ID,
        walSegSizeBytes: SEGMENT_BYTES,
        reconnectTimeoutUs: 100_000,
        connectionTimeoutUs: 1_000_000,
        heartbeatIntervalUs: 200_000,
        quorumTimeoutUs: 2_000_000,
        walSource: syntheticWalSource({
          segmentSizeBytes: SEGMENT_BYTES,
          systemId: SYSTEM_ID,
          pgVersion: 15,
          rateBytesPerSecond: wal.rateBytesPerSecond,
          messageBytes: wal.messageBytes,
          chunkBytesMax: 64 * 1024
        })
      }).pipe(Effect.provide(Layer.provide(tap, pgTransportLayer))))
      if (Result.isFailure(outcome)) yield* logInfo("proposer stepped down", { run, reason: outcome.failure.reason, message: outcome.failure.message })
      yield* Effect.flatMap(Random.nextIntBetween(10_000, 200_000), sleepUs)
    }
  })

/** The transport, with every message also shown to the checker (only while the compute's life lives). */
function tapLayer(
  life: Incarnation,
  run: string,
  ledger: Ledger,
  marks: Set<string>,
  violation: (who: string, message: string) => void
): Layer.Layer<SafekeeperTransport, never, SafekeeperTransport> {
  let term: number | undefined
  /** flush_lsn each safekeeper reported with its vote to this run. */
  const voteFlush = new Map<string, number>()
  const sent = (address: string, message: ProposerMessage) => {
    if (!life.alive) return
    switch (message._tag) {
      case "ProposerElected": {
        term = message.term
        const earlier = ledger.electedBy.get(message.term)
        if (earlier !== undefined && earlier !== run) violation(COMPUTE, `two proposers elected in term ${message.term}: ${earlier} and ${run}`)
        if (earlier === undefined) {
          ledger.electedBy.set(message.term, run)
          ledger.historyByTerm.set(message.term, message.termHistory)
          ledger.elections++
          onElected(message.term, message.termHistory, ledger, violation)
        }
        // The safekeeper holds WAL past where this term starts streaming to it: a tail is cut.
        if (message.startStreamingAt < (voteFlush.get(address) ?? 0)) marks.add("truncated-tail")
        return
      }
      case "AppendRequest": {
        if (term === undefined || message.term !== term) return
        ledger.appends++
        if (message.walData.byteLength > 0) {
          ledger.bytesSent += message.walData.byteLength
          const history = ledger.historyByTerm.get(term)!
          const termStart = history[history.length - 1]!.lsn
          if (message.beginLsn < termStart) {
            // Re-sent WAL of an earlier term must be what that term wrote (log matching).
            ledger.resent += Math.min(termStart, message.endLsn) - message.beginLsn
            checkOwned(history, message.beginLsn, message.walData.subarray(0, Math.min(termStart, message.endLsn) - message.beginLsn), ledger, violation, `term ${term} re-sent`)
          }
          ledger.imageOf(term).write(message.beginLsn, message.walData, message.walData.byteLength)
        }
        onCommit(term, message.commitLsn, ledger, violation)
        return
      }
      default:
        return
    }
  }
  const received = (address: string, message: AcceptorMessage) => {
    if (!life.alive) return
    if (message._tag === "VoteResponse") voteFlush.set(address, message.flushLsn)
    if (message._tag === "VoteResponse" && message.voteGiven) {
      ledger.grantedTerm.set(address, Math.max(ledger.grantedTerm.get(address) ?? 0, message.term))
    }
    if (message._tag === "AppendResponse" && term !== undefined && message.term === term) {
      let flushes = ledger.flushByTerm.get(term)
      if (flushes === undefined) {
        flushes = new Map()
        ledger.flushByTerm.set(term, flushes)
      }
      flushes.set(address, Math.max(flushes.get(address) ?? 0, message.flushLsn))
    }
  }
  return Layer.effect(SafekeeperTransport, Effect.gen(function* () {
    const inner = yield* SafekeeperTransport
    return SafekeeperTransport.of({
      open: (address, options) =>
        Effect.map(inner.open(address, options), (link): SafekeeperLink => ({
          address: link.address,
          send: (message) => Effect.andThen(Effect.sync(() => sent(address, message)), link.send(message)),
          receive: Effect.tap(link.receive, (message) => Effect.sync(() => received(address, message))),
          close: link.close
        })),
      streamWal: (address, options) => inner.streamWal(address, options)
    })
  }))
}

/** A new term: it must start at or above every commit, and its history must keep committed bytes. */
function onElected(term: Term, history: TermHistory, ledger: Ledger, violation: (who: string, message: string) => void): void {
  const termStart = history[history.length - 1]!.lsn
  if (ledger.timelineStartLsn === 0) ledger.timelineStartLsn = history[0]!.lsn
  if (termStart < ledger.maxCommitLsn) {
    violation(COMPUTE, `term ${term} starts at ${formatLsn(termStart)}, below commit_lsn ${formatLsn(ledger.maxCommitLsn)}: committed WAL would be truncated`)
    return
  }
  // The committed prefix, read back through the new history, must be what was committed.
  const start = ledger.timelineStartLsn
  const committed = ledger.committed.read(start, ledger.maxCommitLsn - start)
  checkOwned(history, start, committed, ledger, violation, `term ${term}'s history over the committed prefix`)
}

/** commit ≤ quorum flush of the term, then the newly committed bytes join the committed image. */
function onCommit(term: number, commitLsn: number, ledger: Ledger, violation: (who: string, message: string) => void): void {
  if (commitLsn <= ledger.maxCommitLsn) return
  const flushes = [...(ledger.flushByTerm.get(term)?.values() ?? [])].sort((a, b) => b - a)
  const quorum = Math.floor(ADDRESSES.length / 2) + 1
  const quorumFlush = flushes[quorum - 1] ?? 0
  if (commitLsn > quorumFlush) {
    violation(COMPUTE, `term ${term} sent commit_lsn ${formatLsn(commitLsn)} above the quorum flush ${formatLsn(quorumFlush)} (flushes ${flushes.map(formatLsn).join(",")})`)
    return
  }
  const history = ledger.historyByTerm.get(term)!
  for (let lsn = Math.max(ledger.maxCommitLsn, ledger.timelineStartLsn); lsn < commitLsn;) {
    const owner = ownerOf(history, lsn)
    const end = Math.min(commitLsn, owner.endLsn)
    const bytes = ledger.imageOf(owner.term).read(lsn, end - lsn)
    if (bytes.byteLength < end - lsn) {
      // A term's own WAL reaches a quorum only through its proposer's AppendRequests.
      violation(COMPUTE, `term ${term} committed ${formatLsn(end)}, but term ${owner.term} never sent WAL at ${formatLsn(lsn + bytes.byteLength)}`)
      return
    }
    ledger.committed.write(lsn, bytes, bytes.byteLength)
    lsn = end
  }
  ledger.maxCommitLsn = commitLsn
  if (ledger.livenessStarted) ledger.commitsAfterLiveness++
}

/** `bytes` at `startLsn` must equal what the owning terms of `history` sent there. */
function checkOwned(history: TermHistory, startLsn: number, bytes: Uint8Array, ledger: Ledger, violation: (who: string, message: string) => void, what: string): void {
  for (let lsn = startLsn; lsn < startLsn + bytes.byteLength;) {
    const owner = ownerOf(history, lsn)
    const end = Math.min(startLsn + bytes.byteLength, owner.endLsn)
    const image = ledger.sentByTerm.get(owner.term)
    if (image !== undefined) {
      const expected = image.read(lsn, end - lsn)
      const differs = firstByteDifference(bytes.subarray(lsn - startLsn, end - startLsn), expected)
      if (differs !== undefined) {
        violation(COMPUTE, `${what}: WAL at ${formatLsn(lsn + differs)} differs from what term ${owner.term} wrote there`)
        return
      }
    }
    lsn = end
  }
}

/** A crashed safekeeper's durable WAL over [timeline start, upTo) against the committed image. */
function compareWithCommitted(world: World, node: string, ledger: Ledger, upToLsn: number): string | undefined {
  const disk = world.disk(node)
  for (let lsn = ledger.timelineStartLsn; lsn < upToLsn;) {
    const segmentNo = segmentNoOf(lsn, SEGMENT_BYTES)
    const name = segmentFileName(1, segmentNo, SEGMENT_BYTES)
    const file = disk.readFileNow(`${TIMELINE_DIR}/${name}`) ?? disk.readFileNow(`${TIMELINE_DIR}/${name}.partial`)
    if (file === undefined) return `segment ${name} holding committed WAL at ${formatLsn(lsn)} is missing after the final crash`
    const end = Math.min(upToLsn, segmentStartLsn(segmentNo + 1, SEGMENT_BYTES))
    const offset = lsn - segmentStartLsn(segmentNo, SEGMENT_BYTES)
    const found = file.subarray(offset, offset + (end - lsn))
    const differs = firstByteDifference(found, ledger.committed.read(lsn, end - lsn))
    if (differs !== undefined || found.byteLength < end - lsn) {
      return `committed WAL at ${formatLsn(lsn + (differs ?? found.byteLength))} differs on disk after the final crash (flush reported ${formatLsn(upToLsn)})`
    }
    lsn = end
  }
  return undefined
}
