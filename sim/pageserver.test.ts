// Goal: the model pageserver streams the committed WAL of a real three-safekeeper cluster (core/
// server, fed by the walproposer from core/proposer), makes its persisted LSN durable and
// reports it back as remote_consistent_lsn, moves to another safekeeper when its current one
// crashes or is partitioned away, resumes from its persisted LSN after its own crash, and
// replays a seed to the same trace hash. Method: a small World, as scenarios/safekeeper-cluster.ts
// builds it, with the pageserver as a fifth node; faults are placed by hand at fixed times.
import { Effect, Random } from "effect"
import { describe, expect, test } from "vitest"
import { NodeId, TenantId, TimelineId } from "../core/acceptor/state.js"
import { firstByteDifference } from "../core/bytes.js"
import { sleepUs } from "../core/io/clock.js"
import { defaultInitialLsn } from "../core/proposer/machine.js"
import { pgTransportLayer } from "../core/proposer/pg-transport.js"
import { runProposer } from "../core/proposer/proposer.js"
import { syntheticWalSource } from "../core/proposer/wal-source.js"
import { runSafekeeper } from "../core/server/safekeeper.js"
import type { TimelineRegistry } from "../core/timeline/registry.js"
import type { ConnectionManagerConfig, ReconnectReason } from "../core/walreceiver/connection-manager.js"
import { segmentFileName, segmentNoOf, segmentStartLsn } from "../core/wal/lsn.js"
import { PagedContent } from "./disk-content.js"
import { NO_DISK_FAULTS } from "./disk.js"
import { DEFAULT_NET_FAULTS } from "./net.js"
import { pageserverProgram } from "./pageserver.js"
import { World } from "./world.js"

const SAFEKEEPERS = ["sk1", "sk2", "sk3"] as const
const COMPUTE = "compute"
const PAGESERVER = "pageserver"
const PG_PORT = 5454
const ADDRESSES = SAFEKEEPERS.map((sk) => `${sk}:${PG_PORT}`)
const TENANT = TenantId("0123456789abcdef0123456789abcdef")
const TIMELINE = TimelineId("fedcba9876543210fedcba9876543210")
const DATADIR = "/data"
const TIMELINE_DIR = `${DATADIR}/${TENANT}/${TIMELINE}`
const SEGMENT_BYTES = 1024 * 1024
const SYSTEM_ID = 0x5a17_5eed_0000_0002n
const INITIAL_LSN = defaultInitialLsn(SEGMENT_BYTES)

interface Observed {
  /** Every WAL range received, per pageserver life, in order. */
  readonly received: Array<{ readonly life: number; readonly safekeeper: string; readonly startLsn: number; readonly bytes: Uint8Array; readonly atUs: number }>
  readonly persisted: Array<{ readonly life: number; readonly lsn: number; readonly atUs: number }>
  readonly switches: Array<{ readonly life: number; readonly from: string | undefined; readonly to: string; readonly reason: ReconnectReason; readonly atUs: number }>
  readonly backoffResets: Array<{ readonly safekeeper: string; readonly atUs: number }>
  readonly starts: Array<{ readonly life: number; readonly persistedLsn: number; readonly fromDisk: boolean }>
  /** The highest remote_consistent_lsn a feedback carried. */
  maxReportedLsn: number
  /** Feedback that claimed more than was durable when it was sent. */
  readonly feedbackAhead: Array<{ readonly reported: number; readonly durable: number }>
  /** Feedback where the received LSN was ahead of the consistent one (the two are told apart). */
  feedbackReceivedAhead: number
  readonly registries: Map<string, TimelineRegistry>
}

interface RunOptions {
  readonly seed: number
  readonly untilUs: number
  readonly recordTrace?: boolean
  /** Faults to place once the world exists. */
  readonly faults?: (world: World, observed: Observed) => void
  /** A partition breaks connections after this long (long: the pageserver's own timeout must notice). */
  readonly partitionBreakAfterUs?: number
  readonly manager?: Partial<ConnectionManagerConfig>
  /** With a nonzero value, faults are enabled (crash-on-operation, restarts) until a test turns them off. */
  readonly crashOnOperationProbability?: number
}

function runWorld(options: RunOptions): { readonly world: World; readonly observed: Observed; readonly traceHash: string } {
  const observed: Observed = { received: [], persisted: [], switches: [], backoffResets: [], starts: [], maxReportedLsn: 0, feedbackAhead: [], feedbackReceivedAhead: 0, registries: new Map() }
  const world: World = new World({
    seed: options.seed,
    nodes: [...SAFEKEEPERS, COMPUTE, PAGESERVER],
    program: (node, life) => {
      if (node === COMPUTE) return computeProgram
      if (node === PAGESERVER) {
        const now = () => world.kernel.nowUs
        return pageserverProgram({
          tenantId: TENANT,
          timelineId: TIMELINE,
          safekeepers: ADDRESSES,
          initialLsn: INITIAL_LSN,
          life,
          manager: { walConnectTimeoutUs: 2_000_000, laggingWalTimeoutUs: 1_500_000, maxLsnWalLagBytes: 256 * 1024, retryBackoffMinUs: 100_000, retryBackoffMaxUs: 2_000_000, ...options.manager },
          probeIntervalUs: 300_000,
          probeTimeoutUs: 500_000,
          persistDelayUs: [20_000, 200_000],
          feedbackIntervalUs: 200_000,
          hooks: {
            onWalReceived: (e) => observed.received.push({ life: life.life, safekeeper: e.safekeeper, startLsn: e.startLsn, bytes: e.bytes, atUs: now() }),
            onPersisted: (e) => observed.persisted.push({ life: life.life, lsn: e.lsn, atUs: now() }),
            onSwitch: (e) => observed.switches.push({ life: life.life, ...e, atUs: now() }),
            onBackoffReset: (e) => observed.backoffResets.push({ safekeeper: e.safekeeper, atUs: now() }),
            onFeedbackSent: (e) => {
              const reported = e.feedback.remoteConsistentLsn
              observed.maxReportedLsn = Math.max(observed.maxReportedLsn, reported)
              const durable = observed.persisted.filter((p) => p.life === life.life).at(-1)?.lsn ??
                observed.starts.find((s) => s.life === life.life)?.persistedLsn ?? 0
              if (reported > durable) observed.feedbackAhead.push({ reported, durable })
              if (e.feedback.lastReceivedLsn > reported) observed.feedbackReceivedAhead++
            },
            onStart: (e) => observed.starts.push({ life: life.life, ...e })
          }
        })
      }
      return Effect.scoped(runSafekeeper(
        { nodeId: NodeId(Number(node.slice(2))), datadir: DATADIR, listenPg: `${node}:${PG_PORT}`, noSync: false },
        (running) => Effect.sync(() => observed.registries.set(node, running.registry))
      ))
    },
    diskFaults: { ...NO_DISK_FAULTS, writeLatencyUs: [5, 50], fsyncLatencyUs: [100, 1_000] },
    netFaults: { ...DEFAULT_NET_FAULTS, chunkDelayUs: [50, 2_000], connectTimeoutUs: 500_000, partitionBreakAfterUs: options.partitionBreakAfterUs ?? 1_000_000 },
    crashOnOperationProbability: options.crashOnOperationProbability ?? 0,
    clockSkewUsMax: 1_000,
    restartDelayUs: [100_000, 300_000],
    recordTrace: options.recordTrace ?? false,
    traceHeader: ["pageserver test", `seed ${options.seed}`],
    crashExempt: [COMPUTE]
  })
  world.faultsEnabled = (options.crashOnOperationProbability ?? 0) > 0
  options.faults?.(world, observed)
  for (const node of [...SAFEKEEPERS, COMPUTE, PAGESERVER]) world.start(node)
  const trips = world.run(options.untilUs)
  world.dispose()
  expect(trips).toEqual([])
  expect(world.violations).toEqual([])
  return { world, observed, traceHash: world.kernel.trace.hash() }
}

/** The walproposer, restarted whenever it steps down (scenarios/safekeeper-cluster.ts's compute, without its checker). */
const computeProgram = Effect.gen(function* () {
  while (true) {
    yield* Effect.result(runProposer({
      tenantId: TENANT,
      timelineId: TIMELINE,
      safekeepers: ADDRESSES,
      systemId: SYSTEM_ID,
      walSegSizeBytes: SEGMENT_BYTES,
      reconnectTimeoutUs: 100_000,
      connectionTimeoutUs: 1_000_000,
      heartbeatIntervalUs: 200_000,
      quorumTimeoutUs: 2_000_000,
      walSource: syntheticWalSource({ segmentSizeBytes: SEGMENT_BYTES, systemId: SYSTEM_ID, pgVersion: 15, rateBytesPerSecond: 256 * 1024, messageBytes: 2_000, chunkBytesMax: 64 * 1024 })
    }).pipe(Effect.provide(pgTransportLayer)))
    yield* Effect.flatMap(Random.nextIntBetween(10_000, 200_000), sleepUs)
  }
})

/** End of the WAL received by the last range, over all lives. */
const receivedEnd = (observed: Observed) => {
  const last = observed.received.at(-1)
  return last === undefined ? 0 : last.startLsn + last.bytes.byteLength
}

/** Everything received, as one image; ranges received again must be byte-equal (consumers never see WAL change). */
function receivedImage(observed: Observed): PagedContent {
  const image = new PagedContent()
  const seenEnd = { lsn: 0 }
  for (const range of observed.received) {
    const overlapEnd = Math.min(seenEnd.lsn, range.startLsn + range.bytes.byteLength)
    if (overlapEnd > range.startLsn) {
      const earlier = image.read(range.startLsn, overlapEnd - range.startLsn)
      expect(firstByteDifference(range.bytes.subarray(0, overlapEnd - range.startLsn), earlier)).toBeUndefined()
    }
    image.write(range.startLsn, range.bytes, range.bytes.byteLength)
    seenEnd.lsn = Math.max(seenEnd.lsn, range.startLsn + range.bytes.byteLength)
  }
  return image
}

/** The bytes of [from, to) on a safekeeper's disk must equal the pageserver's image. */
function expectOnDisk(world: World, node: string, image: PagedContent, fromLsn: number, toLsn: number): void {
  const disk = world.disk(node)
  for (let lsn = fromLsn; lsn < toLsn;) {
    const segmentNo = segmentNoOf(lsn, SEGMENT_BYTES)
    const name = segmentFileName(1, segmentNo, SEGMENT_BYTES)
    const file = disk.readFileNow(`${TIMELINE_DIR}/${name}`) ?? disk.readFileNow(`${TIMELINE_DIR}/${name}.partial`)
    expect(file, `${node} holds ${name}`).toBeDefined()
    const end = Math.min(toLsn, segmentStartLsn(segmentNo + 1, SEGMENT_BYTES))
    const offset = lsn - segmentStartLsn(segmentNo, SEGMENT_BYTES)
    expect(firstByteDifference(file!.subarray(offset, offset + (end - lsn)), image.read(lsn, end - lsn))).toBeUndefined()
    lsn = end
  }
}

const remoteConsistentLsns = (observed: Observed) =>
  SAFEKEEPERS.map((sk) => observed.registries.get(sk)?.get({ tenantId: TENANT, timelineId: TIMELINE })?.positions.get().remoteConsistentLsn ?? 0)

const commitLsns = (observed: Observed) =>
  SAFEKEEPERS.map((sk) => observed.registries.get(sk)?.get({ tenantId: TENANT, timelineId: TIMELINE })?.positions.get().commitLsn ?? 0)

describe("model pageserver", () => {
  test("streams the committed WAL, persists it and reports remote_consistent_lsn to the safekeepers", () => {
    const { world, observed } = runWorld({ seed: 1, untilUs: 4_000_000 })
    expect(observed.starts).toEqual([{ life: 1, persistedLsn: INITIAL_LSN, fromDisk: false }])
    expect(observed.received[0]?.startLsn).toBe(INITIAL_LSN)
    const end = receivedEnd(observed)
    // 256 KiB/s for most of 4 s: well over half a MiB, and never above what was committed.
    expect(end - INITIAL_LSN).toBeGreaterThan(512 * 1024)
    expect(end).toBeLessThanOrEqual(Math.max(...commitLsns(observed)))
    const image = receivedImage(observed)
    for (const sk of SAFEKEEPERS) expectOnDisk(world, sk, image, INITIAL_LSN, end)
    // Durable, advancing, and what the safekeepers learned (through the walsender's 'z').
    const persisted = observed.persisted.map((p) => p.lsn)
    expect(persisted.length).toBeGreaterThan(3)
    expect([...persisted].sort((a, b) => a - b)).toEqual(persisted)
    const lastPersisted = persisted.at(-1)!
    expect(observed.maxReportedLsn).toBeLessThanOrEqual(lastPersisted)
    // Every feedback reports as consistent only what was durable when it left.
    expect(observed.feedbackAhead).toEqual([])
    expect(observed.feedbackReceivedAhead).toBeGreaterThan(0)
    const text = new TextDecoder().decode(world.disk(PAGESERVER).readFileNow(`/pageserver/${TENANT}_${TIMELINE}.remote_consistent_lsn`))
    expect(text.trim()).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/)
    const reported = Math.max(...remoteConsistentLsns(observed))
    expect(reported).toBeGreaterThan(INITIAL_LSN + 256 * 1024)
    expect(reported).toBeLessThanOrEqual(lastPersisted)
    // No fault: one choice, never a move.
    expect(observed.switches.map((s) => s.reason._tag)).toEqual(["NoExistingConnection"])
  })

  test("moves to another safekeeper when its current one crashes", () => {
    let crashed: string | undefined
    let endAtCrash = 0
    const { observed, world } = runWorld({
      seed: 2,
      untilUs: 5_000_000,
      faults: (w, o) => w.kernel.after(2_000_000, () => {
        crashed = o.switches.at(-1)!.to.split(":")[0]!
        endAtCrash = receivedEnd(o)
        w.crash(crashed, "test")
      }, undefined)
    })
    expect(crashed).toBeDefined()
    const after = observed.switches.filter((s) => s.atUs > 2_000_000)
    // A reconnect to the crashed one may come first (its info is still fresh, its cooldown over,
    // as in Neon); refused, it cools down and the next choice is another safekeeper.
    const moved = after.find((s) => s.to !== `${crashed}:${PG_PORT}`)
    expect(moved).toBeDefined()
    expect(moved!.atUs).toBeLessThan(2_000_000 + 1_000_000)
    // WAL keeps coming, from the others, past where the crash found it.
    const later = observed.received.filter((r) => r.atUs > 2_000_000)
    expect(later.every((r) => r.safekeeper !== `${crashed}:${PG_PORT}`)).toBe(true)
    expect(receivedEnd(observed)).toBeGreaterThan(endAtCrash + 128 * 1024)
    const image = receivedImage(observed)
    const survivor = SAFEKEEPERS.find((sk) => sk !== crashed)!
    expectOnDisk(world, survivor, image, INITIAL_LSN, receivedEnd(observed))
  })

  test("moves to another safekeeper when partitioned from its current one", () => {
    let cutOff: string | undefined
    let endAtPartition = 0
    const { observed } = runWorld({
      seed: 3,
      untilUs: 6_000_000,
      faults: (w, o) => w.kernel.after(2_000_000, () => {
        cutOff = o.switches.at(-1)!.to
        endAtPartition = receivedEnd(o)
        w.net.partition(PAGESERVER, cutOff.split(":")[0]!)
      }, undefined)
    })
    expect(cutOff).toBeDefined()
    const moved = observed.switches.find((s) => s.atUs > 2_000_000)
    expect(moved).toBeDefined()
    expect(moved!.from).toBe(cutOff)
    expect(moved!.to).not.toBe(cutOff)
    expect(observed.received.filter((r) => r.atUs > 2_000_000).every((r) => r.safekeeper !== cutOff)).toBe(true)
    expect(receivedEnd(observed)).toBeGreaterThan(endAtPartition + 128 * 1024)
    // The stream was cut without a reset: only the manager's timeout (or the partition's break) notices.
    expect(["NoKeepAlives", "NoExistingConnection"]).toContain(moved!.reason._tag)
  })

  test("a stream cut silently is left after walConnectTimeout (NoKeepAlives)", () => {
    let cutOff: string | undefined
    const { observed } = runWorld({
      seed: 5,
      untilUs: 6_000_000,
      partitionBreakAfterUs: 60_000_000,
      // Lag rules out of the way: only the silence may decide.
      manager: { maxLsnWalLagBytes: 64 * 1024 * 1024, laggingWalTimeoutUs: 5_000_000 },
      faults: (w, o) => w.kernel.after(2_000_000, () => {
        cutOff = o.switches.at(-1)!.to
        w.net.partition(PAGESERVER, cutOff.split(":")[0]!)
      }, undefined)
    })
    const moved = observed.switches.find((s) => s.atUs > 2_000_000)
    expect(moved?.from).toBe(cutOff)
    expect(moved?.reason._tag).toBe("NoKeepAlives")
    // The last message came before the cut, and the switch waited the whole timeout for the next.
    expect(moved!.atUs - 2_000_000).toBeGreaterThan(2_000_000 - 1_100_000)
    expect(moved!.atUs).toBeLessThan(2_000_000 + 2_000_000 + 200_000)
  })

  test("a safekeeper that stops getting WAL is left for one that has it (LaggingWal or NoWalTimeout)", () => {
    let stale: string | undefined
    const { observed } = runWorld({
      seed: 6,
      untilUs: 6_000_000,
      partitionBreakAfterUs: 60_000_000,
      faults: (w, o) => w.kernel.after(2_000_000, () => {
        stale = o.switches.at(-1)!.to
        // The compute can no longer reach it: its commit_lsn stalls while the others' move on.
        w.net.partition(COMPUTE, stale.split(":")[0]!)
      }, undefined)
    })
    const moved = observed.switches.find((s) => s.atUs > 2_000_000)
    expect(moved?.from).toBe(stale)
    expect(["LaggingWal", "NoWalTimeout"]).toContain(moved?.reason._tag)
  })

  test("a broken stream reconnects, and WAL from that safekeeper resets its backoff", () => {
    let broken: string | undefined
    const { observed } = runWorld({
      seed: 8,
      untilUs: 4_000_000,
      faults: (w, o) => w.kernel.after(2_000_000, () => {
        broken = o.switches.at(-1)!.to
        w.net.breakConnections(PAGESERVER, broken.split(":")[0]!)
      }, undefined)
    })
    const again = observed.switches.find((s) => s.atUs >= 2_000_000)
    expect(again).toMatchObject({ from: broken, to: broken, reason: { _tag: "NoExistingConnection" } })
    const reset = observed.backoffResets.find((r) => r.atUs >= 2_000_000)
    expect(reset?.safekeeper).toBe(broken)
    // Nothing was reset before: the first connection had no failure to forget.
    expect(observed.backoffResets.filter((r) => r.atUs < 2_000_000)).toEqual([])
  })

  test("a restarted pageserver resumes from its durable persisted LSN", () => {
    let persistedAtCrash = 0
    const { observed } = runWorld({
      seed: 4,
      untilUs: 5_000_000,
      faults: (w, o) => w.kernel.after(2_500_000, () => {
        persistedAtCrash = o.persisted.at(-1)?.lsn ?? 0
        w.crash(PAGESERVER, "test")
        w.kernel.after(200_000, () => w.start(PAGESERVER), undefined)
      }, undefined)
    })
    expect(persistedAtCrash).toBeGreaterThan(INITIAL_LSN)
    expect(observed.starts).toEqual([
      { life: 1, persistedLsn: INITIAL_LSN, fromDisk: false },
      { life: 2, persistedLsn: persistedAtCrash, fromDisk: true }
    ])
    const second = observed.received.filter((r) => r.life === 2)
    expect(second[0]?.startLsn).toBe(persistedAtCrash)
    expect(receivedEnd(observed)).toBeGreaterThan(persistedAtCrash + 128 * 1024)
    // Re-received WAL equals what the first life got (receivedImage checks every overlap).
    receivedImage(observed)
  })

  test.each([100, 105, 111])("seed %i: under crashes between operations, restarts, partitions and breaks, it keeps up", (seed) => {
    const { observed } = runWorld({
      seed,
      untilUs: 6_000_000,
      crashOnOperationProbability: 0.002,
      faults: (w) => {
        const kernel = w.kernel
        for (let i = 0; i < 6; i++) {
          kernel.after(kernel.intBetween(0, 4_000_000), () => {
            const kind = kernel.intBetween(0, 3)
            if (kind === 0) {
              const node = kernel.pick([...SAFEKEEPERS, PAGESERVER])
              w.crash(node, "test")
              w.restartLater(node)
            } else if (kind === 1) {
              const node = kernel.pick(SAFEKEEPERS)
              w.net.partition(PAGESERVER, node)
              kernel.after(kernel.intBetween(100_000, 2_000_000), () => w.net.heal(PAGESERVER, node), undefined)
            } else {
              w.net.breakConnections(PAGESERVER, kernel.pick(SAFEKEEPERS))
            }
          }, undefined)
        }
        kernel.after(4_500_000, () => {
          w.faultsEnabled = false
          w.net.healAll()
          for (const node of [...SAFEKEEPERS, COMPUTE, PAGESERVER]) if (!w.isUp(node)) w.start(node)
        }, undefined)
      }
    })
    receivedImage(observed)
    expect(observed.feedbackAhead).toEqual([])
    expect(observed.switches.length).toBeGreaterThan(1)
    // 1.5 s after the faults stop it is within one walsender chunk of the commit.
    expect(receivedEnd(observed)).toBeGreaterThan(Math.max(...commitLsns(observed)) - 128 * 1024)
  })

  test("a seed replays to the same trace hash", () => {
    const faults = (w: World, o: Observed) => w.kernel.after(1_500_000, () => w.crash(o.switches.at(-1)!.to.split(":")[0]!, "test"), undefined)
    const first = runWorld({ seed: 7, untilUs: 3_000_000, recordTrace: true, faults })
    const second = runWorld({ seed: 7, untilUs: 3_000_000, recordTrace: true, faults })
    expect(second.traceHash).toBe(first.traceHash)
    expect(second.world.kernel.trace.lines).toEqual(first.world.kernel.trace.lines)
    expect(first.world.kernel.trace.lines.some((line) => line.includes("pageserver switched safekeeper"))).toBe(true)
    expect(receivedEnd(second.observed)).toBe(receivedEnd(first.observed))
  })
})


