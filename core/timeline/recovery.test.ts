// Goal: peer recovery (reference §10) picks the right donor, and a safekeeper that missed WAL
// while it was cut off gets every byte of it back from its peers once it is reachable again,
// with no compute running.
// Method: pickDonors against hand-made cases and fast-check properties of its rule; then whole
// simulated worlds (three real safekeepers, a real walproposer over the pg protocol), where sk3
// is partitioned while the proposer commits and healed after the compute stopped: with
// runPeerRecovery on every safekeeper, sk3 reaches the others' flush_lsn with byte-equal WAL and
// the same term history; without it, it stays where the partition left it.
import { Duration, Effect } from "effect"
import * as fc from "fast-check"
import { describe, expect, test } from "vitest"
import { NodeId, TenantId, Term, type TermHistory, TimelineId } from "../acceptor/state.js"
import type { SafekeeperTimelineInfo } from "../io/broker.js"
import { sleepUs } from "../io/clock.js"
import { pgTransportLayer } from "../proposer/pg-transport.js"
import { runProposer } from "../proposer/proposer.js"
import { syntheticWalSource } from "../proposer/wal-source.js"
import { runSafekeeper } from "../server/safekeeper.js"
import { Lsn, segmentFileName, segmentNoOf, segmentStartLsn } from "../wal/lsn.js"
import { NO_DISK_FAULTS } from "../../sim/disk.js"
import { DEFAULT_NET_FAULTS } from "../../sim/net.js"
import { World } from "../../sim/world.js"
import type { TimelineRegistry } from "./registry.js"
import { pickDonors, recoveryStartPoint, runPeerRecovery } from "./recovery.js"

// ---- pickDonors ----

const info = (id: number, term: number, lastLogTerm: number, flushLsn: number): SafekeeperTimelineInfo => ({
  safekeeperId: id,
  tenantId: "t",
  timelineId: "l",
  term,
  lastLogTerm,
  flushLsn,
  commitLsn: 0,
  backupLsn: 0,
  remoteConsistentLsn: 0,
  peerHorizonLsn: 0,
  localStartLsn: 0,
  standbyHorizon: 0,
  safekeeperConnstr: `sk${id}:5454`,
  httpConnstr: "",
  availabilityZone: ""
})

const self = (term: number, lastLogTerm: number, flushLsn: number) => ({ term: Term(term), lastLogTerm: Term(lastLogTerm), flushLsn: Lsn(flushLsn) })

describe("pickDonors", () => {
  test("a peer ahead in flush_lsn with our last_log_term is a donor", () => {
    expect(pickDonors(self(2, 2, 100), [info(1, 2, 2, 200)]).map((p) => p.safekeeperId)).toEqual([1])
  })

  test("a newer last_log_term wins over a longer log of an older term", () => {
    const donors = pickDonors(self(1, 1, 100), [info(1, 1, 1, 900), info(2, 3, 3, 150), info(3, 2, 2, 500)])
    expect(donors.map((p) => p.safekeeperId)).toEqual([2, 3, 1])
  })

  test("equal (last_log_term, flush_lsn) ties go to the lowest id", () => {
    expect(pickDonors(self(1, 1, 0), [info(3, 2, 2, 50), info(2, 2, 2, 50)]).map((p) => p.safekeeperId)).toEqual([2, 3])
  })

  test("not a donor: behind or level with us, voted past its log, or in a term below ours", () => {
    const peers = [
      info(1, 2, 2, 100), // level with us
      info(2, 2, 2, 50), // behind
      info(3, 4, 3, 900), // voted for term 4 but holds term 3's log: its log may still be cut
      info(4, 2, 2, 900) // ahead, but a vote for its term 2 is below our term 3
    ]
    expect(pickDonors(self(3, 2, 100), peers)).toEqual([])
    expect(pickDonors(self(2, 2, 100), peers).map((p) => p.safekeeperId)).toEqual([4])
  })

  const arbInfo = fc.record({
    id: fc.integer({ min: 1, max: 9 }),
    lastLogTerm: fc.integer({ min: 0, max: 4 }),
    termAbove: fc.integer({ min: 0, max: 2 }),
    flushLsn: fc.integer({ min: 0, max: 5 })
  }).map((r) => info(r.id, r.lastLogTerm + r.termAbove, r.lastLogTerm, r.flushLsn))
  const arbSelf = fc.record({ lastLogTerm: fc.integer({ min: 0, max: 4 }), termAbove: fc.integer({ min: 0, max: 2 }), flushLsn: fc.integer({ min: 0, max: 5 }) })
    .map((r) => self(r.lastLogTerm + r.termAbove, r.lastLogTerm, r.flushLsn))

  test("property: exactly the peers the rule admits, best first, order independent of input order", () => {
    fc.assert(fc.property(arbSelf, fc.array(arbInfo, { maxLength: 8 }), (me, peers) => {
      const donors = pickDonors(me, peers)
      const admitted = peers.filter((p) =>
        (p.lastLogTerm > me.lastLogTerm || (p.lastLogTerm === me.lastLogTerm && p.flushLsn > me.flushLsn)) && p.term === p.lastLogTerm && p.term >= me.term
      )
      expect(donors.length).toBe(admitted.length)
      for (const donor of donors) expect(admitted).toContain(donor)
      for (let i = 1; i < donors.length; i++) {
        const a = donors[i - 1]!
        const b = donors[i]!
        const ordered = a.lastLogTerm > b.lastLogTerm || (a.lastLogTerm === b.lastLogTerm &&
          (a.flushLsn > b.flushLsn || (a.flushLsn === b.flushLsn && a.safekeeperId <= b.safekeeperId)))
        expect(ordered).toBe(true)
      }
      expect(pickDonors(me, [...peers].reverse()).map((p) => p.safekeeperId)).toEqual(donors.map((p) => p.safekeeperId))
    }))
  })
})

describe("recoveryStartPoint", () => {
  const h = (...entries: ReadonlyArray<readonly [number, number]>): TermHistory => entries.map(([term, lsn]) => ({ term: Term(term), lsn: Lsn(lsn) }))

  test("same last term: our own end of WAL", () => {
    expect(recoveryStartPoint(h([1, 10]), h([1, 10]), Lsn(50))).toEqual({ term: 1, lsn: 50 })
  })

  test("the donor moved on to a newer term: where that term starts, cutting our older tail", () => {
    expect(recoveryStartPoint(h([1, 10], [3, 40]), h([1, 10], [2, 30]), Lsn(60))).toEqual({ term: 1, lsn: 30 })
    expect(recoveryStartPoint(h([1, 10], [3, 40]), h([1, 10]), Lsn(60))).toEqual({ term: 1, lsn: 40 })
  })

  test("nothing in common: the donor's first entry; no donor history: nothing", () => {
    expect(recoveryStartPoint(h([2, 10]), h(), Lsn(0))).toEqual({ term: 2, lsn: 10 })
    expect(recoveryStartPoint(h(), h([1, 10]), Lsn(20))).toBeUndefined()
  })
})

// ---- the whole service in the simulator ----

const SAFEKEEPERS = ["sk1", "sk2", "sk3"] as const
const LAGGARD = "sk3"
const COMPUTE = "compute"
const PG_PORT = 5454
const ADDRESSES = SAFEKEEPERS.map((sk) => `${sk}:${PG_PORT}`)
const TENANT = TenantId("0123456789abcdef0123456789abcdef")
const TIMELINE = TimelineId("fedcba9876543210fedcba9876543210")
const KEY = { tenantId: TENANT, timelineId: TIMELINE }
const DATADIR = "/data"
const TIMELINE_DIR = `${DATADIR}/${TENANT}/${TIMELINE}`
const SEGMENT_BYTES = 1024 * 1024
const SYSTEM_ID = 0x5a17_5eed_0000_0008n
/** WAL committed before sk3 is cut off, and while it is (crossing a segment). */
const BEFORE_PARTITION_BYTES = 200 * 1024
const DURING_PARTITION_BYTES = 1200 * 1024
/** Same-term variant: sk3 is cut off this long after the start, in the middle of the run. */
const SAME_TERM_PARTITION_AT_US = 800_000
/** truncated-tail: how long the first proposer runs, and when it loses sk1 and sk2. */
const TAIL_PROPOSER_US = 2_500_000
const TAIL_PARTITION_AT_US = 800_000
/** After the heal: several recovery intervals. */
const SETTLE_US = 12_000_000
const RUN_US_MAX = 120_000_000

/**
 * new-term: one proposer commits with all three, sk3 is cut off, a second proposer (term 2)
 * commits with sk1 and sk2. same-term: one proposer, sk3 cut off in the middle of its run.
 * truncated-tail: the first proposer loses sk1 and sk2 (one way) and goes on sending to sk3
 * alone, which so holds uncommitted term-1 WAL past where term 2 (elected by sk1 and sk2 once
 * sk3 is cut off from the compute too) starts: recovery must cut that tail before it appends
 * term 2's WAL.
 */
type Variant = "new-term" | "same-term" | "truncated-tail"

interface NodeView {
  readonly term: number
  readonly lastLogTerm: number
  readonly flushLsn: number
  readonly termHistory: TermHistory
  readonly timelineStartLsn: number
}

interface RecoveryWorldResult {
  readonly views: ReadonlyMap<string, NodeView>
  /** sk3's flush_lsn and the others' when the partition healed. */
  readonly atHeal: { readonly laggardFlushLsn: number; readonly laggardLastLogTerm: number; readonly leaderFlushLsn: number } | undefined
  readonly lines: ReadonlyArray<string>
  readonly hash: string
  readonly world: World
  readonly violations: ReadonlyArray<string>
}

/** What a broker would tell: every safekeeper's info as it is now (a perfect, instant broker). */
function brokerView(registries: ReadonlyMap<string, TimelineRegistry>): ReadonlyArray<SafekeeperTimelineInfo> {
  const infos: SafekeeperTimelineInfo[] = []
  for (const node of SAFEKEEPERS) {
    const timeline = registries.get(node)?.get(KEY)
    if (timeline === undefined) continue
    const positions = timeline.positions.get()
    const persisted = timeline.persisted
    infos.push({
      safekeeperId: Number(node.slice(2)),
      tenantId: TENANT,
      timelineId: TIMELINE,
      term: positions.term,
      lastLogTerm: positions.lastLogTerm,
      flushLsn: positions.flushLsn,
      commitLsn: positions.commitLsn,
      backupLsn: positions.backupLsn,
      remoteConsistentLsn: positions.remoteConsistentLsn,
      peerHorizonLsn: persisted.peerHorizonLsn,
      localStartLsn: persisted.localStartLsn,
      standbyHorizon: 0,
      safekeeperConnstr: `${node}:${PG_PORT}`,
      httpConnstr: "",
      availabilityZone: ""
    })
  }
  return infos
}

function runRecoveryWorld(options: { readonly seed: number; readonly peerRecovery: boolean; readonly variant: Variant }): RecoveryWorldResult {
  const registries = new Map<string, TimelineRegistry>()
  let doneAtUs: number | undefined
  let atHeal: RecoveryWorldResult["atHeal"]

  const cutOff = () => {
    for (const other of [COMPUTE, ...SAFEKEEPERS.filter((sk) => sk !== LAGGARD)]) world.net.partition(LAGGARD, other)
  }
  const heal = () => {
    const flushOf = (node: string) => registries.get(node)?.get(KEY)?.positions.get().flushLsn ?? 0
    atHeal = {
      laggardFlushLsn: flushOf(LAGGARD),
      laggardLastLogTerm: registries.get(LAGGARD)?.get(KEY)?.positions.get().lastLogTerm ?? 0,
      leaderFlushLsn: Math.max(flushOf("sk1"), flushOf("sk2"))
    }
    world.net.healAll()
    doneAtUs = world.kernel.nowUs
  }

  const safekeeperProgram = (node: string) => {
    const nodeId = NodeId(Number(node.slice(2)))
    // What the timeline manager will do with --peer-recovery: run it for the timeline once it exists.
    const recovery = Effect.gen(function* () {
      while (registries.get(node)?.get(KEY) === undefined) yield* sleepUs(100_000)
      const timeline = registries.get(node)!.get(KEY)!
      return yield* runPeerRecovery(timeline, { nodeId, peers: Effect.sync(() => brokerView(registries)) })
    })
    return Effect.scoped(runSafekeeper(
      { nodeId, datadir: DATADIR, listenPg: `${node}:${PG_PORT}`, noSync: false },
      (running) => Effect.gen(function* () {
        registries.set(node, running.registry)
        if (options.peerRecovery) yield* Effect.forkScoped(recovery)
      })
    ))
  }

  const proposer = (totalBytes: number) =>
    runProposer({
      tenantId: TENANT,
      timelineId: TIMELINE,
      safekeepers: ADDRESSES,
      systemId: SYSTEM_ID,
      walSegSizeBytes: SEGMENT_BYTES,
      reconnectTimeoutUs: 100_000,
      connectionTimeoutUs: 1_000_000,
      heartbeatIntervalUs: 200_000,
      quorumTimeoutUs: 2_000_000,
      totalBytes,
      walSource: syntheticWalSource({
        segmentSizeBytes: SEGMENT_BYTES,
        systemId: SYSTEM_ID,
        pgVersion: 15,
        rateBytesPerSecond: 512 * 1024,
        messageBytes: 300,
        chunkBytesMax: 64 * 1024
      })
    }).pipe(Effect.provide(pgTransportLayer))

  const computeProgram = Effect.gen(function* () {
    switch (options.variant) {
      case "new-term":
        yield* proposer(BEFORE_PARTITION_BYTES)
        yield* Effect.sync(cutOff)
        yield* proposer(DURING_PARTITION_BYTES)
        break
      case "same-term":
        yield* proposer(BEFORE_PARTITION_BYTES + DURING_PARTITION_BYTES)
        break
      case "truncated-tail":
        // Stopped from outside (or stepping down without a quorum): either way it is gone.
        yield* Effect.ignore(proposer(Number.MAX_SAFE_INTEGER).pipe(Effect.timeoutOption(Duration.micros(BigInt(TAIL_PROPOSER_US)))))
        yield* Effect.sync(() => {
          cutOff()
          world.net.heal(COMPUTE, "sk1")
          world.net.heal(COMPUTE, "sk2")
        })
        yield* proposer(DURING_PARTITION_BYTES)
        break
    }
    yield* Effect.sync(heal)
  })

  const world: World = new World({
    seed: options.seed,
    nodes: [...SAFEKEEPERS, COMPUTE],
    program: (node) => node === COMPUTE ? computeProgram : safekeeperProgram(node),
    diskFaults: NO_DISK_FAULTS,
    netFaults: { ...DEFAULT_NET_FAULTS, connectTimeoutUs: 500_000, partitionBreakAfterUs: 1_000_000 },
    crashOnOperationProbability: 0,
    clockSkewUsMax: 0,
    restartDelayUs: [1_000_000_000, 1_000_000_000],
    recordTrace: true,
    traceHeader: [`recovery.test seed ${options.seed} ${options.variant} peer-recovery ${options.peerRecovery}`]
  })
  world.faultsEnabled = false
  if (options.variant === "same-term") world.kernel.after(SAME_TERM_PARTITION_AT_US, cutOff, undefined)
  if (options.variant === "truncated-tail") {
    // sk3 is also cut off from its peers: else sk1 and sk2, which no compute streams to any
    // more, would recover the tail from it (as Neon's would) and term 2 would start after it.
    world.kernel.after(TAIL_PARTITION_AT_US, () => {
      world.net.partition(COMPUTE, "sk1", { oneWay: true })
      world.net.partition(COMPUTE, "sk2", { oneWay: true })
      world.net.partition(LAGGARD, "sk1")
      world.net.partition(LAGGARD, "sk2")
    }, undefined)
  }
  for (const node of [...SAFEKEEPERS, COMPUTE]) world.start(node)
  const hits = world.run(RUN_US_MAX, { stop: () => doneAtUs !== undefined && world.kernel.nowUs >= doneAtUs + SETTLE_US })
  expect(hits).toEqual([])

  const views = new Map<string, NodeView>()
  for (const node of SAFEKEEPERS) {
    const timeline = registries.get(node)?.get(KEY)
    if (timeline === undefined) continue
    const positions = timeline.positions.get()
    views.set(node, {
      term: positions.term,
      lastLogTerm: positions.lastLogTerm,
      flushLsn: positions.flushLsn,
      termHistory: timeline.acceptor.termHistory(),
      timelineStartLsn: timeline.persisted.timelineStartLsn
    })
  }
  const violations = world.violations.map((v) => `${v.who}: ${v.message}`)
  world.dispose()
  return { views, atHeal, lines: world.kernel.trace.lines, hash: world.kernel.trace.hash(), world, violations }
}

/** WAL of `node` over [startLsn, endLsn) from its segment files. */
function walOf(world: World, node: string, startLsn: number, endLsn: number): Uint8Array {
  const out = new Uint8Array(endLsn - startLsn)
  const disk = world.disk(node)
  for (let lsn = startLsn; lsn < endLsn;) {
    const segmentNo = segmentNoOf(lsn, SEGMENT_BYTES)
    const name = segmentFileName(1, segmentNo, SEGMENT_BYTES)
    const file = disk.readFileNow(`${TIMELINE_DIR}/${name}`) ?? disk.readFileNow(`${TIMELINE_DIR}/${name}.partial`)
    if (file === undefined) throw new Error(`${node}: segment ${name} missing`)
    const end = Math.min(endLsn, segmentStartLsn(segmentNo + 1, SEGMENT_BYTES))
    const offset = lsn - segmentStartLsn(segmentNo, SEGMENT_BYTES)
    out.set(file.subarray(offset, offset + (end - lsn)), lsn - startLsn)
    lsn = end
  }
  return out
}

const recoveryLines = (lines: ReadonlyArray<string>, node: string) => lines.filter((line) => line.includes(` ${node}#`) && line.includes("peer recovery"))

describe.each<Variant>(["new-term", "same-term", "truncated-tail"])("a safekeeper cut off while the proposer commits (%s)", (variant) => {
  test("with peer recovery it catches up after the heal: same flush_lsn, byte-equal WAL, same term history", () => {
    const result = runRecoveryWorld({ seed: 8, peerRecovery: true, variant })
    expect(result.violations).toEqual([])
    const leader = result.views.get("sk1")!
    const laggard = result.views.get(LAGGARD)!
    // The partition really left sk3 behind.
    expect(result.atHeal).toBeDefined()
    expect(result.atHeal!.laggardFlushLsn).toBeLessThan(result.atHeal!.leaderFlushLsn)
    expect(leader.flushLsn).toBeGreaterThanOrEqual(leader.timelineStartLsn + BEFORE_PARTITION_BYTES + DURING_PARTITION_BYTES)
    if (variant === "truncated-tail") {
      // sk3 really held an older term's WAL past where the donor's term starts.
      const donorTermStartLsn = leader.termHistory[leader.termHistory.length - 1]!.lsn
      expect(result.atHeal!.laggardLastLogTerm).toBeLessThan(leader.lastLogTerm)
      expect(result.atHeal!.laggardFlushLsn).toBeGreaterThan(donorTermStartLsn)
    }
    expect(result.views.get("sk2")!.flushLsn).toBe(leader.flushLsn)
    expect(laggard.flushLsn).toBe(leader.flushLsn)
    expect(laggard.term).toBe(leader.term)
    expect(laggard.lastLogTerm).toBe(leader.lastLogTerm)
    expect(laggard.termHistory).toEqual(leader.termHistory)
    const start = leader.timelineStartLsn
    const expected = walOf(result.world, "sk1", start, leader.flushLsn)
    expect(Buffer.from(walOf(result.world, LAGGARD, start, laggard.flushLsn)).equals(Buffer.from(expected))).toBe(true)
    const lines = recoveryLines(result.lines, LAGGARD)
    expect(lines.some((line) => line.includes("peer recovery started") && /donor=[12] /.test(line))).toBe(true)
    expect(lines.some((line) => line.includes("peer recovery finished") && line.includes("reason=\"caught up\""))).toBe(true)
    // The most advanced safekeepers never recover from anyone.
    expect(recoveryLines(result.lines, "sk1").filter((line) => line.includes("peer recovery started"))).toEqual([])
    expect(recoveryLines(result.lines, "sk2").filter((line) => line.includes("peer recovery started"))).toEqual([])
  })

  test("without peer recovery it stays where the partition left it", () => {
    const result = runRecoveryWorld({ seed: 8, peerRecovery: false, variant })
    expect(result.violations).toEqual([])
    const leader = result.views.get("sk1")!
    const laggard = result.views.get(LAGGARD)!
    expect(laggard.flushLsn).toBe(result.atHeal!.laggardFlushLsn)
    expect(laggard.flushLsn).toBeLessThan(leader.flushLsn)
    expect(recoveryLines(result.lines, LAGGARD)).toEqual([])
  })
})

test("a seed replays to the same trace hash", () => {
  const first = runRecoveryWorld({ seed: 3, peerRecovery: true, variant: "new-term" })
  const second = runRecoveryWorld({ seed: 3, peerRecovery: true, variant: "new-term" })
  expect(second.hash).toBe(first.hash)
})
