import { crc32c } from "@node-rs/crc32"
import { Deferred, Duration, Effect, Queue, Random } from "effect"
import { sleepUs } from "../core/io/clock.js"
import { Disk, type DiskFile } from "../core/io/disk.js"
import { logInfo, logWarn } from "../core/io/log.js"
import { Net, type Connection } from "../core/io/net.js"
import { NO_DISK_FAULTS, type DiskFaults } from "../sim/disk.js"
import { DEFAULT_NET_FAULTS } from "../sim/net.js"
import { SwarmConfig } from "../sim/swarm.js"
import { EFFECT_VERSION } from "../sim/version.js"
import { World } from "../sim/world.js"
import { resultOf, type Scenario, type ScenarioResult, type ScenarioRunOptions } from "./scenario.js"
import { concatBytes, equalBytes } from "../core/bytes.js"

/**
 * The kernel's first honest workload, before the safekeeper scenarios replace it: a client
 * streams records to three log servers; each server appends them to a file, fdatasyncs (group
 * commit), and only then acknowledges. Crashes (also between any two I/O operations),
 * partitions, connection breaks and fsync/write errors are injected. The checker: after every
 * crash, the durable file of that server holds every record it ever acknowledged, byte for
 * byte. A planted variant acknowledges before the fsync, and the checker must catch it.
 */
const SERVERS = ["s1", "s2", "s3"] as const
const CLIENT = "client"
const PORT = 5000
const LOG_PATH = "/data/records.log"
const DATA_DIR = "/data"

const FRAME_HEADER_BYTES = 8 // u32 length, u32 record id
const RECORD_HEADER_BYTES = 12 // u32 length, u32 crc32c, u32 id
const RECORD_PAYLOAD_BYTES_MAX = 2048
const BATCH_RECORDS_MAX = 8
const COMMIT_QUEUE_LENGTH_MAX = 64
const ACK_TIMEOUT_US = 400_000
/** The client pauses between batches, as a real producer would: keeps seeds cheap. */
const THINK_TIME_US: readonly [number, number] = [1_000, 20_000]
const RECONNECT_BACKOFF_US: readonly [number, number] = [5_000, 50_000]

const FAULT_PHASE_US = 3_000_000
const LIVENESS_PHASE_US = 2_000_000

/**
 * Planted bugs prove the checkers can fail: acknowledging before the fsync (a durability bug),
 * reading the wall clock (caught by the trip-wires), and a process-global counter in the trace
 * (a run depends on what ran before it in the process: caught by the sweep's child re-run).
 */
export type PlantedBug = "none" | "ack-before-fsync" | "wall-clock" | "global-counter"

let plantedGlobalCounter = 0

interface Acked {
  readonly payload: Uint8Array
}

/** What the servers acknowledged, kept by the (crash-exempt) client: the checker's truth. */
class Ledger {
  readonly acked = new Map<string, Map<number, Acked>>()
  recordsAcked = 0
  bytesAcked = 0
  ackedSince = new Map<string, number>()
  constructor() {
    for (const server of SERVERS) {
      this.acked.set(server, new Map())
      this.ackedSince.set(server, 0)
    }
  }
  ack(server: string, id: number, payload: Uint8Array): void {
    this.acked.get(server)!.set(id, { payload })
    this.recordsAcked++
    this.bytesAcked += payload.length
    this.ackedSince.set(server, (this.ackedSince.get(server) ?? 0) + 1)
  }
}

export function makeAppendLogScenario(bug: PlantedBug): Scenario {
  const name = bug === "none" ? "append-log" : `append-log-planted-${bug}`
  return {
    name,
    description: bug === "none"
      ? "3 log servers append, fdatasync and acknowledge client records under crashes, partitions and disk faults; every acknowledged record must survive every crash"
      : `append-log with a planted bug (${bug}); the checker must fail it`,
    expectedMarks: ["crash-after-ack", "torn-tail-recovered", "fsync-error-fail-stop", "partition-healed"],
    run: (seed, options) => runAppendLog(name, bug, seed, options)
  }
}

function runAppendLog(name: string, bug: PlantedBug, seed: number, options: ScenarioRunOptions): ScenarioResult {
  const swarm = new SwarmConfig(seed)
  const crashes = swarm.pick("crash", 2, 8)
  const crashOnOperationProbability = swarm.pick("crash-on-io", 0.0005, 0.003)
  const partitions = swarm.pick("partition", 2, 8)
  const breaks = swarm.pick("break", 2, 10)
  const diskFaults: DiskFaults = {
    ...NO_DISK_FAULTS,
    writeLatencyUs: [5, 50],
    fsyncLatencyUs: [200, swarm.level("slow-fsync") === "frequent" ? 20_000 : 2_000],
    eioOnFsyncProbability: swarm.pick("fsync-eio", 0.002, 0.02),
    eioOnWriteProbability: swarm.pick("write-eio", 0.001, 0.01),
    enospcOnFsyncProbability: swarm.pick("fsync-enospc", 0.001, 0.005)
  }
  const chunkDelayMaxUs = swarm.pick("net-delay", 2_000, 30_000)
  const config = swarm.describe()
  const ledger = new Ledger()
  const marks = new Set<string>()

  const world = new World({
    seed,
    nodes: [...SERVERS, CLIENT],
    program: (node) => (node === CLIENT ? clientProgram(ledger) : serverProgram(node, bug)),
    diskFaults,
    netFaults: { ...DEFAULT_NET_FAULTS, chunkDelayUs: [50, 50 + chunkDelayMaxUs] },
    crashOnOperationProbability,
    clockSkewUsMax: 1_000,
    restartDelayUs: [10_000, 200_000],
    recordTrace: options.recordTrace,
    traceHeader: [`scenario ${name}`, `seed ${seed}`, `effect ${EFFECT_VERSION}`, `config ${config}`],
    crashExempt: [CLIENT]
  })

  // The checker: whatever a crash leaves on disk must hold every acknowledged record.
  world.onCrash((node) => {
    if (node === CLIENT) return
    const found = parseLog(world.disk(node).readFileNow(LOG_PATH))
    if (found.tornTail) marks.add("torn-tail-recovered")
    const acked = ledger.acked.get(node)!
    if (acked.size > 0) marks.add("crash-after-ack")
    for (const [id, record] of acked) {
      const kept = found.records.get(id)
      if (kept === undefined) {
        const sizeBytes = world.disk(node).readFileNow(LOG_PATH)?.length ?? 0
        world.violation(node, `acknowledged record ${id} lost by a crash (log holds ${found.records.size} records, valid up to byte ${found.validBytes} of ${sizeBytes})`)
        return
      }
      if (!equalBytes(kept, record.payload)) {
        world.violation(node, `acknowledged record ${id} changed by a crash`)
        return
      }
    }
  })

  // The nemesis, during the fault phase only.
  const kernel = world.kernel
  for (let i = 0; i < crashes; i++) {
    kernel.after(kernel.intBetween(0, FAULT_PHASE_US), () => {
      if (!world.faultsEnabled) return
      const node = kernel.pick(SERVERS)
      if (!world.isUp(node)) return
      world.crash(node, "nemesis")
      world.restartLater(node)
    }, undefined)
  }
  for (let i = 0; i < partitions; i++) {
    kernel.after(kernel.intBetween(0, FAULT_PHASE_US), () => {
      const server = kernel.pick(SERVERS)
      const oneWay = kernel.chance(0.5)
      world.net.partition(CLIENT, server, { oneWay })
      kernel.after(kernel.intBetween(10_000, 800_000), () => {
        world.net.heal(CLIENT, server)
        marks.add("partition-healed")
      }, undefined)
    }, undefined)
  }
  for (let i = 0; i < breaks; i++) {
    kernel.after(kernel.intBetween(0, FAULT_PHASE_US), () => world.net.breakConnections(CLIENT, kernel.pick(SERVERS)), undefined)
  }

  for (const node of [...SERVERS, CLIENT]) world.start(node)
  const tripsFault = world.run(FAULT_PHASE_US)

  // Liveness: faults stop, everything heals and restarts; every server must acknowledge again.
  world.faultsEnabled = false
  world.net.healAll()
  for (const node of SERVERS) {
    world.disk(node).setFaults({ ...diskFaults, eioOnFsyncProbability: 0, eioOnWriteProbability: 0, enospcOnFsyncProbability: 0 })
    ledger.ackedSince.set(node, 0)
    if (!world.isUp(node)) world.start(node)
  }
  const tripsLive = world.run(FAULT_PHASE_US + LIVENESS_PHASE_US)
  for (const node of SERVERS) {
    if ((ledger.ackedSince.get(node) ?? 0) === 0) world.violation(node, "no record acknowledged in the liveness phase")
  }
  // The final check: crash every server and look at what the disks kept.
  for (const node of SERVERS) world.crash(node, "end of run")
  if (world.stats.operationCrashes > 0) marks.add("crash-between-operations")
  world.dispose()

  const nondeterminism = [...tripsFault, ...tripsLive]
  const injectedDiskErrors = SERVERS.reduce((total, node) => total + world.disk(node).stats.injectedErrors, 0)
  if (injectedDiskErrors > 0 && world.stats.exits > 0) marks.add("fsync-error-fail-stop")
  return resultOf(world, {
    scenario: name,
    config,
    nondeterminism,
    marks,
    work: { recordsAcked: ledger.recordsAcked, bytesAcked: ledger.bytesAcked }
  })
}

// ---------------------------------------------------------------------------------------------
// The log server: recover, then accept connections; one writer fiber does group commit.

interface Pending {
  readonly id: number
  readonly payload: Uint8Array
  readonly done: Deferred.Deferred<void>
}

const serverProgram = (node: string, bug: PlantedBug) =>
  Effect.gen(function* () {
    const disk = yield* Disk
    const net = yield* Net
    const file = yield* recoverLog(disk)
    let endOffset = yield* file.size
    const commits = yield* Queue.bounded<Pending>(COMMIT_QUEUE_LENGTH_MAX)

    // Group commit: append everything queued, one fdatasync, then acknowledge. A failed write
    // or fsync ends the process (fail-stop): never retry an fsync as if it had succeeded.
    const writer = Effect.gen(function* () {
      for (;;) {
        const batch = yield* Queue.takeAll(commits)
        const bytes = encodeRecords(batch)
        if (bug === "wall-clock") yield* logInfo("batch", { atMs: Date.now() })
        yield* file.write(endOffset, bytes)
        endOffset += bytes.length
        if (bug === "ack-before-fsync") for (const p of batch) yield* Deferred.succeed(p.done, undefined)
        yield* file.datasync
        if (bug !== "ack-before-fsync") for (const p of batch) yield* Deferred.succeed(p.done, undefined)
      }
    })
    const listener = yield* net.listen(`${node}:${PORT}`)
    yield* logInfo("serving", { endOffset, ...(bug === "global-counter" ? { incarnations: ++plantedGlobalCounter } : {}) })
    const acceptLoop = Effect.forever(
      Effect.flatMap(listener.accept, (connection) => Effect.forkChild(serveConnection(connection, commits)))
    )
    // A failed writer fails the whole program (the process exits), interrupting the acceptor.
    yield* Effect.all([writer.pipe(Effect.onError(() => logWarn("writer failed: stopping"))), acceptLoop], {
      concurrency: "unbounded",
      discard: true
    })
  })

function serveConnection(connection: Connection, commits: Queue.Queue<Pending>) {
  return Effect.gen(function* () {
    let buffered: Uint8Array = new Uint8Array(0)
    for (;;) {
      const chunk = yield* connection.read
      if (chunk === undefined) return
      buffered = concatBytes([buffered, chunk])
      const { frames, rest } = takeFrames(buffered)
      buffered = rest
      const pending: Pending[] = []
      for (const frame of frames) {
        const done = yield* Deferred.make<void>()
        const p = { id: frame.id, payload: frame.payload, done }
        yield* Queue.offer(commits, p)
        pending.push(p)
      }
      for (const p of pending) {
        yield* Deferred.await(p.done)
        const ack = new Uint8Array(4)
        new DataView(ack.buffer).setUint32(0, p.id)
        yield* connection.write(ack)
      }
    }
  }).pipe(Effect.ensuring(connection.close), Effect.ignore)
}

/**
 * Opens the log, drops a torn or garbage tail, and makes the file and its name durable before
 * serving. The syncs run on every start, not only after a create: a previous life may have
 * exited (not crashed) after creating the file but before its directory fsync, and then the
 * name still sits only in the page cache (found by this scenario's checker, seeds 6 and 88).
 */
const recoverLog = Effect.fnUntraced(function* (disk: Disk["Service"]) {
  yield* disk.mkdir(DATA_DIR)
  const existing = yield* disk.stat(LOG_PATH)
  const file: DiskFile = yield* disk.open(LOG_PATH, { create: true })
  if (existing !== undefined) {
    const bytes = yield* file.read(0, existing.sizeBytes)
    const parsed = parseLog(bytes)
    if (parsed.validBytes < bytes.length) {
      yield* logInfo("truncating torn tail", { from: bytes.length, to: parsed.validBytes })
      yield* file.truncate(parsed.validBytes)
    }
  }
  yield* file.sync
  yield* disk.syncDirectory(DATA_DIR)
  yield* disk.syncDirectory("/")
  return file
})

// ---------------------------------------------------------------------------------------------
// The client: streams batches of records to every server, reconnecting after failures.

// Effect's Random.nextIntBetween is inclusive of both bounds.
const clientProgram = (ledger: Ledger) =>
  Effect.gen(function* () {
    let nextId = 1
    const allocate = () => nextId++
    yield* Effect.forEach(SERVERS, (server) => feedServer(server, ledger, allocate), { concurrency: "unbounded", discard: true })
  })

function feedServer(server: string, ledger: Ledger, allocate: () => number) {
  return Effect.forever(
    Effect.gen(function* () {
      const net = yield* Net
      const connection = yield* net.connect(`${server}:${PORT}`)
      const thinkThenSend = Effect.andThen(
        Effect.flatMap(Random.nextIntBetween(THINK_TIME_US[0], THINK_TIME_US[1]), sleepUs),
        sendBatch(server, connection, ledger, allocate)
      )
      yield* Effect.forever(thinkThenSend).pipe(Effect.ensuring(connection.close))
    }).pipe(
      Effect.ignore,
      Effect.andThen(Random.nextIntBetween(RECONNECT_BACKOFF_US[0], RECONNECT_BACKOFF_US[1])),
      Effect.flatMap(sleepUs)
    )
  )
}

const sendBatch = Effect.fnUntraced(function* (server: string, connection: Connection, ledger: Ledger, allocate: () => number) {
  const count = yield* Random.nextIntBetween(1, BATCH_RECORDS_MAX)
  const batch: Array<{ id: number; payload: Uint8Array }> = []
  for (let i = 0; i < count; i++) {
    const size = yield* Random.nextIntBetween(1, RECORD_PAYLOAD_BYTES_MAX)
    const payload = new Uint8Array(size)
    const fill = yield* Random.nextIntBetween(0, 255)
    for (let j = 0; j < size; j++) payload[j] = (fill + j * 31) & 0xff
    batch.push({ id: allocate(), payload })
  }
  const frames = concatBytes(batch.map(({ id, payload }) => {
    const frame = new Uint8Array(FRAME_HEADER_BYTES + payload.length)
    const view = new DataView(frame.buffer)
    view.setUint32(0, payload.length)
    view.setUint32(4, id)
    frame.set(payload, FRAME_HEADER_BYTES)
    return frame
  }))
  yield* connection.write(frames)
  let buffered: Uint8Array = new Uint8Array(0)
  let acked = 0
  while (acked < batch.length) {
    const chunk = yield* connection.read.pipe(Effect.timeout(Duration.micros(BigInt(ACK_TIMEOUT_US))))
    if (chunk === undefined) return yield* Effect.fail("eof" as const)
    buffered = concatBytes([buffered, chunk])
    while (buffered.length >= 4 && acked < batch.length) {
      const id = new DataView(buffered.buffer, buffered.byteOffset).getUint32(0)
      buffered = buffered.subarray(4)
      const expected = batch[acked]!
      if (id !== expected.id) return yield* Effect.fail("ack out of order" as const)
      ledger.ack(server, id, expected.payload)
      acked++
    }
  }
})

// ---------------------------------------------------------------------------------------------
// Formats.

function encodeRecords(batch: ReadonlyArray<Pending>): Uint8Array {
  return concatBytes(batch.map(({ id, payload }) => {
    const record = new Uint8Array(RECORD_HEADER_BYTES + payload.length)
    const view = new DataView(record.buffer)
    view.setUint32(0, payload.length, true)
    view.setUint32(8, id, true)
    record.set(payload, RECORD_HEADER_BYTES)
    view.setUint32(4, crc32c(record.subarray(8)), true)
    return record
  }))
}

/** Reads records until the first torn or invalid one. */
export function parseLog(bytes: Uint8Array | undefined): { records: Map<number, Uint8Array>; validBytes: number; tornTail: boolean } {
  const records = new Map<number, Uint8Array>()
  if (bytes === undefined) return { records, validBytes: 0, tornTail: false }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  let offset = 0
  while (offset + RECORD_HEADER_BYTES <= bytes.length) {
    const length = view.getUint32(offset, true)
    if (length === 0 || length > RECORD_PAYLOAD_BYTES_MAX || offset + RECORD_HEADER_BYTES + length > bytes.length) break
    const body = bytes.subarray(offset + 8, offset + RECORD_HEADER_BYTES + length)
    if (crc32c(body) !== view.getUint32(offset + 4, true)) break
    records.set(view.getUint32(offset + 8, true), bytes.slice(offset + RECORD_HEADER_BYTES, offset + RECORD_HEADER_BYTES + length))
    offset += RECORD_HEADER_BYTES + length
  }
  return { records, validBytes: offset, tornTail: offset < bytes.length }
}

function takeFrames(bytes: Uint8Array): { frames: Array<{ id: number; payload: Uint8Array }>; rest: Uint8Array } {
  const frames: Array<{ id: number; payload: Uint8Array }> = []
  let offset = 0
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  while (offset + FRAME_HEADER_BYTES <= bytes.length) {
    const length = view.getUint32(offset)
    if (offset + FRAME_HEADER_BYTES + length > bytes.length) break
    frames.push({ id: view.getUint32(offset + 4), payload: bytes.slice(offset + FRAME_HEADER_BYTES, offset + FRAME_HEADER_BYTES + length) })
    offset += FRAME_HEADER_BYTES + length
  }
  return { frames, rest: bytes.subarray(offset) }
}

