import { Effect, Random } from "effect"
import { sleepUs } from "../core/io/clock.js"
import { Disk } from "../core/io/disk.js"
import { logInfo } from "../core/io/log.js"
import { makeAcceptor, type Acceptor } from "../core/acceptor/acceptor.js"
import { loadControlFile, persistControlFile } from "../core/acceptor/control-file.js"
import { Generation, newTimelineState, NodeId, type PersistedState, TenantId, Term, type TermHistory, TimelineId } from "../core/acceptor/state.js"
import { MAX_SEND_SIZE_BYTES, type AcceptorMessage, type AppendRequest } from "../core/protocol/consensus.js"
import { WalGenerator } from "../core/wal/generator.js"
import { Lsn } from "../core/wal/lsn.js"
import { openSegmentStore } from "../core/wal/segment-store.js"
import { messageFor } from "../core/wal/wal-testing.js"
import { NO_DISK_FAULTS, type DiskFaults } from "../sim/disk.js"
import { DEFAULT_NET_FAULTS } from "../sim/net.js"
import { SwarmConfig } from "../sim/swarm.js"
import { EFFECT_VERSION } from "../sim/version.js"
import type { Incarnation } from "../sim/kernel.js"
import { World } from "../sim/world.js"
import { resultOf, type Scenario, type ScenarioResult, type ScenarioRunOptions } from "./scenario.js"
import { concatBytes, firstByteDifference } from "../core/bytes.js"

/**
 * The acceptor's durable core under crashes: one safekeeper (acceptor rules, control file,
 * segment store, all from core/) driven by an in-process proposer that, in every life, greets,
 * wins a vote at a higher term, is elected at the acceptor's flush LSN and streams real WAL
 * (logical messages spanning pages and 1 MiB segments), with and without per-append flushes.
 * Crashes (also before any Disk operation), fsync/write errors (fail-stop, then restart) and
 * slow fsyncs are injected. The checker, told what every reply promised: after each restart the
 * recovered term is at least every granted vote's, the recovered flush LSN at least every
 * reported flush LSN, and every recovered WAL byte equals what was last streamed at that LSN.
 */
const NODE = "sk1"
const DIRECTORY = "/data/tenant/timeline"
const SEGMENT_BYTES = 1024 * 1024
const PG_VERSION_NUM = 150004
const SYSTEM_ID = 0x5a17_5eed_0000_0001n
const TENANT = TenantId("0123456789abcdef0123456789abcdef")
const TIMELINE = TimelineId("fedcba9876543210fedcba9876543210")
/** Timelines start after segment 1's long header, as a basebackup LSN would. */
const START = Lsn(SEGMENT_BYTES + 40)
/** The proposer stops streaming past this much WAL (bounds each seed's work). */
const WAL_BYTES_MAX = 6 * SEGMENT_BYTES
const RECORD_BYTES_MAX = 48 * 1024
const BATCH_RECORDS_MAX = 4
const THINK_TIME_US: readonly [number, number] = [5_000, 35_000]
const VERIFY_CHUNK_BYTES = 256 * 1024
const FAULT_PHASE_US = 2_000_000
const LIVENESS_PHASE_US = 1_000_000

const MCONF = {
  generation: Generation(1),
  members: [1, 2, 3].map((id) => ({ id: NodeId(id), host: `sk${id}`, pgPort: 5454 })),
  newMembers: undefined
}

/** As START_WAL_PUSH creates it: term 0, nothing known about where it starts. */
const FRESH_STATE: PersistedState = newTimelineState({
  tenantId: TENANT,
  timelineId: TIMELINE,
  mconf: MCONF,
  server: { pgVersion: PG_VERSION_NUM, systemId: SYSTEM_ID, walSegSizeBytes: SEGMENT_BYTES },
  startLsn: Lsn(0),
  commitLsn: Lsn(0)
})

/**
 * The proposer's memory, outside the simulated node (it survives the node's crashes): what was
 * streamed at each LSN and what the replies promised.
 */
class Ledger {
  /** The bytes last streamed at each LSN from START. */
  image = new Uint8Array(WAL_BYTES_MAX + 2 * RECORD_BYTES_MAX * BATCH_RECORDS_MAX + SEGMENT_BYTES)
  /** Record start by aligned record end: the xl_prev of a record continuing there. */
  recordStartByEnd = new Map<number, number>()
  promisedFlushLsn = 0
  streamedEndLsn = 0
  grantedTerm = 0
  recoveries = 0
  recoveriesChecked = 0
  switches = 0
  appends = 0
  bytesStreamed = 0
  elections = 0
  truncations = 0

  stream(lsn: number, bytes: Uint8Array): void {
    this.image.set(bytes, lsn - START)
    this.bytesStreamed += bytes.byteLength
    this.streamedEndLsn = lsn + bytes.byteLength
  }
}

/** A planted bug proves the checker can fail: storage that skips every fsync (`--no-sync`). */
export type AcceptorStoragePlantedBug = "none" | "no-fsync"

export function makeAcceptorStorageScenario(bug: AcceptorStoragePlantedBug): Scenario {
  const name = bug === "none" ? "acceptor-storage" : `acceptor-storage-planted-${bug}`
  return {
    name,
    description: bug === "none"
      ? "one acceptor (rules, control file, segment store) under crashes and disk faults; every granted vote and reported flush LSN must survive, byte for byte"
      : `acceptor-storage with a planted bug (${bug}); the checker must fail it`,
    expectedMarks: ["crash-after-flush", "recovered-unsynced-tail", "lost-unsynced-tail", "fail-stop-restart", "segment-rollover", "xlog-switch"],
    run: (seed, options) => runAcceptorStorage(name, bug === "no-fsync", seed, options)
  }
}

function runAcceptorStorage(name: string, noSync: boolean, seed: number, options: ScenarioRunOptions): ScenarioResult {
  const swarm = new SwarmConfig(seed)
  const crashes = swarm.pick("crash", 2, 8)
  const crashOnOperationProbability = swarm.pick("crash-on-io", 0.001, 0.005)
  const diskFaults: DiskFaults = {
    ...NO_DISK_FAULTS,
    writeLatencyUs: [5, 60],
    fsyncLatencyUs: [100, swarm.level("slow-fsync") === "frequent" ? 15_000 : 1_500],
    eioOnFsyncProbability: swarm.pick("fsync-eio", 0.002, 0.01),
    eioOnWriteProbability: swarm.pick("write-eio", 0.001, 0.005),
    enospcOnFsyncProbability: swarm.pick("fsync-enospc", 0.001, 0.005)
  }
  const flushEveryAppend = swarm.level("flush-every-append") !== "off"
  const switchProbability = swarm.pick("xlog-switch", 0.02, 0.1)
  const config = swarm.describe()
  const ledger = new Ledger()
  const marks = new Set<string>()

  const world = new World({
    seed,
    nodes: [NODE],
    program: (node, life) => safekeeperLife(life, ledger, { flushEveryAppend, switchProbability, noSync }, marks, (message) => world.violation(node, message)),
    diskFaults,
    netFaults: DEFAULT_NET_FAULTS,
    crashOnOperationProbability,
    clockSkewUsMax: 0,
    restartDelayUs: [5_000, 100_000],
    recordTrace: options.recordTrace,
    traceHeader: [`scenario ${name}`, `seed ${seed}`, `effect ${EFFECT_VERSION}`, `config ${config}`]
  })
  world.onCrash(() => {
    if (ledger.promisedFlushLsn > START) marks.add("crash-after-flush")
  })
  const kernel = world.kernel
  for (let i = 0; i < crashes; i++) {
    kernel.after(kernel.intBetween(0, FAULT_PHASE_US), () => {
      if (!world.faultsEnabled || !world.isUp(NODE)) return
      world.crash(NODE, "nemesis")
      world.restartLater(NODE)
    }, undefined)
  }

  world.start(NODE)
  const tripsFault = world.run(FAULT_PHASE_US)
  world.faultsEnabled = false
  world.disk(NODE).setFaults({ ...diskFaults, eioOnFsyncProbability: 0, eioOnWriteProbability: 0, enospcOnFsyncProbability: 0 })
  if (!world.isUp(NODE)) world.start(NODE)
  const flushBeforeLiveness = ledger.promisedFlushLsn
  const tripsLive = world.run(FAULT_PHASE_US + LIVENESS_PHASE_US)
  if (ledger.promisedFlushLsn === flushBeforeLiveness && ledger.promisedFlushLsn < START + WAL_BYTES_MAX) {
    world.violation(NODE, "no WAL flushed in the liveness phase")
  }
  // The final check: crash, restart once more; the new life checks what it recovered.
  world.crash(NODE, "end of run")
  world.start(NODE)
  const checkedBefore = ledger.recoveriesChecked
  const tripsEnd = world.run(FAULT_PHASE_US + LIVENESS_PHASE_US + 500_000, { stop: () => ledger.recoveriesChecked > checkedBefore })
  if (ledger.recoveriesChecked === checkedBefore && world.violations.length === 0) world.violation(NODE, "the final restart did not finish its recovery")
  world.dispose()
  if (world.stats.exits > 0) marks.add("fail-stop-restart")
  if (ledger.promisedFlushLsn > START + SEGMENT_BYTES) marks.add("segment-rollover")
  if (ledger.switches > 0) marks.add("xlog-switch")

  return resultOf(world, {
    scenario: name,
    config,
    nondeterminism: [...tripsFault, ...tripsLive, ...tripsEnd],
    marks,
    work: {
      appends: ledger.appends,
      bytesStreamed: ledger.bytesStreamed,
      flushLsnReached: ledger.promisedFlushLsn - START,
      elections: ledger.elections,
      switches: ledger.switches,
      recoveries: ledger.recoveries
    }
  })
}

// ---------------------------------------------------------------------------------------------
// One life of the safekeeper, with the proposer that drives it.

interface ProposerOptions {
  readonly flushEveryAppend: boolean
  /** Chance that a batch ends with an XLOG_SWITCH (its padding then spans several appends). */
  readonly switchProbability: number
  readonly noSync: boolean
}

/**
 * One life of the safekeeper and the proposer that drives it. The proposer's memory (the
 * ledger) is written only while this life is alive: Effect 4 resumes fibers inline, so code of a
 * life that just crashed at a Disk operation may run on until its next simulated call, and it
 * must not record promises the dead node made.
 */
const safekeeperLife = (life: Incarnation, ledger: Ledger, options: ProposerOptions, marks: Set<string>, reportViolation: (message: string) => void) =>
  Effect.gen(function* () {
    const noSync = options.noSync
    const violation = (message: string) => {
      if (life.alive) reportViolation(message)
    }
    const disk = yield* Disk
    yield* disk.mkdir(DIRECTORY)
    for (const directory of ["/", "/data", "/data/tenant"]) yield* disk.syncDirectory(directory)
    const state = yield* loadControlFile(DIRECTORY).pipe(
      Effect.catchTag("DiskError", (error) =>
        error.reason === "NotFound"
          ? Effect.as(persistControlFile(DIRECTORY, FRESH_STATE, { noSync }), FRESH_STATE)
          : Effect.fail(error))
    )
    const walStorage = yield* openSegmentStore({
      directory: DIRECTORY,
      segmentSizeBytes: SEGMENT_BYTES,
      commitLsn: state.commitLsn,
      timelineStartLsn: state.timelineStartLsn === 0 ? undefined : state.timelineStartLsn,
      pgVersion: PG_VERSION_NUM,
      systemId: SYSTEM_ID,
      noSync
    })
    const acceptor = yield* makeAcceptor({ nodeId: NodeId(1), state, walStorage, directory: DIRECTORY, noSync })
    yield* checkRecovery(life, acceptor, (lsn, length) => walStorage.read(lsn, length), ledger, marks, violation)
    yield* logInfo("recovered", { term: acceptor.term(), flushLsn: acceptor.flushLsn(), commitLsn: acceptor.commitLsn() })
    yield* propose(life, acceptor, ledger, options)
  })

/** What a restart found must cover every promise, byte for byte. */
const checkRecovery = Effect.fnUntraced(function* (
  life: Incarnation,
  acceptor: Acceptor,
  read: (lsn: Lsn, length: number) => Effect.Effect<Uint8Array, unknown>,
  ledger: Ledger,
  marks: Set<string>,
  violation: (message: string) => void
) {
  if (life.alive) ledger.recoveries++
  const term = acceptor.term()
  const flushLsn = acceptor.flushLsn()
  if (term < ledger.grantedTerm) violation(`term ${term} recovered below the granted vote's term ${ledger.grantedTerm}`)
  if (flushLsn < ledger.promisedFlushLsn) violation(`flush_lsn ${flushLsn} recovered below the reported ${ledger.promisedFlushLsn}`)
  if (flushLsn > ledger.promisedFlushLsn) marks.add("recovered-unsynced-tail")
  if (flushLsn < ledger.streamedEndLsn) marks.add("lost-unsynced-tail")
  for (let lsn: number = START; lsn < flushLsn;) {
    const length = Math.min(flushLsn - lsn, SEGMENT_BYTES - (lsn % SEGMENT_BYTES), VERIFY_CHUNK_BYTES)
    const bytes = yield* read(Lsn(lsn), length)
    const expected = ledger.image.subarray(lsn - START, lsn - START + length)
    const differs = firstByteDifference(bytes, expected)
    if (differs !== undefined) {
      violation(`recovered WAL differs from what was streamed at LSN ${lsn + differs}`)
      return
    }
    lsn += length
  }
  if (life.alive) ledger.recoveriesChecked++
})

/** The proposer: a vote at a higher term, elected at the acceptor's flush LSN, then streaming. */
const propose = Effect.fnUntraced(function* (life: Incarnation, acceptor: Acceptor, ledger: Ledger, options: ProposerOptions) {
  const noteReply = (reply: AcceptorMessage | undefined) => {
    if (life.alive && reply?._tag === "AppendResponse") ledger.promisedFlushLsn = Math.max(ledger.promisedFlushLsn, reply.flushLsn)
  }
  yield* acceptor.handle({ _tag: "ProposerGreeting", tenantId: TENANT, timelineId: TIMELINE, mconf: MCONF, pgVersion: PG_VERSION_NUM, systemId: SYSTEM_ID, walSegSizeBytes: SEGMENT_BYTES })
  const term = Term(acceptor.term() + 1)
  const vote = yield* acceptor.handle({ _tag: "VoteRequest", generation: MCONF.generation, term })
  if (vote?._tag !== "VoteResponse" || !vote.voteGiven) return yield* Effect.die(new Error(`vote at term ${term} refused`))
  if (life.alive) ledger.grantedTerm = Math.max(ledger.grantedTerm, term)
  const startLsn = Lsn(Math.max(vote.flushLsn, START))
  const history: TermHistory = [...acceptor.termHistory(), { term, lsn: startLsn }]
  yield* acceptor.handle({ _tag: "ProposerElected", generation: MCONF.generation, term, startStreamingAt: startLsn, termHistory: history })
  ledger.elections++
  if (startLsn < ledger.promisedFlushLsn) return yield* Effect.die(new Error("elected below a promised flush"))
  const generator = new WalGenerator({
    startLsn,
    segmentSizeBytes: SEGMENT_BYTES,
    systemId: SYSTEM_ID,
    pgVersion: 15,
    timelineId: 1,
    prevLsn: Lsn(ledger.recordStartByEnd.get(startLsn) ?? 0)
  })
  let recordNo = 0
  while (generator.insertLsn < START + WAL_BYTES_MAX) {
    yield* Effect.flatMap(Random.nextIntBetween(THINK_TIME_US[0], THINK_TIME_US[1]), sleepUs)
    const beginLsn = generator.insertLsn
    const count = yield* Random.nextIntBetween(1, BATCH_RECORDS_MAX)
    const pieces: Uint8Array[] = []
    for (let i = 0; i < count; i++) {
      const size = yield* Random.nextIntBetween(1, RECORD_BYTES_MAX)
      const record = generator.appendLogicalMessage(`t${term}`, messageFor(term * 100_000 + recordNo++, size))
      if (life.alive) ledger.recordStartByEnd.set(record.nextLsn, record.startLsn)
      pieces.push(record.bytes)
    }
    if ((yield* Random.next) < options.switchProbability) {
      const record = generator.appendSwitch()
      if (life.alive) ledger.recordStartByEnd.set(record.nextLsn, record.startLsn)
      ledger.switches++
      pieces.push(record.bytes)
    }
    const walData = concatBytes(pieces)
    if (!life.alive) return
    ledger.stream(beginLsn, walData)
    // As the walproposer: at most MAX_SEND_SIZE bytes of WAL per AppendRequest.
    for (let offset = 0; offset < walData.byteLength; offset += MAX_SEND_SIZE_BYTES) {
      const chunk = walData.subarray(offset, Math.min(offset + MAX_SEND_SIZE_BYTES, walData.byteLength))
      const request: AppendRequest = {
        _tag: "AppendRequest",
        generation: MCONF.generation,
        term,
        beginLsn: Lsn(beginLsn + offset),
        endLsn: Lsn(beginLsn + offset + chunk.byteLength),
        commitLsn: Lsn(ledger.promisedFlushLsn),
        truncateLsn: Lsn(0),
        walData: chunk
      }
      ledger.appends++
      if (options.flushEveryAppend) {
        noteReply(yield* acceptor.handle(request))
      } else {
        noteReply(yield* acceptor.appendNoFlush(request))
        if ((yield* Random.nextIntBetween(0, 3)) === 0) noteReply(yield* acceptor.flush)
      }
    }
  }
  noteReply(yield* acceptor.flush)
  yield* Effect.never
})

