// Goal: the walproposer elects itself, commits WAL through a quorum of real acceptors, keeps
// every acceptor's WAL byte-identical to what it generated, survives one safekeeper down,
// refuses to commit without a quorum (NoQuorum after its timeout), steps down before a
// proposer with a higher term, recovers a donor's extra WAL to the others before its own, and
// syncs safekeepers (0/0 when there is no WAL). Method: three acceptors (makeAcceptor over
// MemoryWalStorage, control files on SimDisks) behind the in-memory transport of testing.ts,
// proposers run as node lives inside the simulator kernel (virtual clock, seeded Random, the
// kernel's scheduler), faults injected by a nemesis fiber at fixed virtual times. Everything is
// deterministic: each test is one seed.
import { Cause, Effect, Exit, type Fiber, Result } from "effect"
import { describe, expect, test } from "vitest"
import { NO_DISK_FAULTS, SimDisk } from "../../sim/disk.js"
import { Incarnation, Kernel } from "../../sim/kernel.js"
import { forkInLife, simLog } from "../../sim/runtime.js"
import { makeAcceptor } from "../acceptor/acceptor.js"
import { persistControlFile } from "../acceptor/control-file.js"
import { MemoryWalStorage } from "../acceptor/memory-wal-storage.js"
import { EMPTY_MEMBER_CONFIGURATION, Generation, type MemberConfiguration, newTimelineState, NodeId, TenantId, TimelineId } from "../acceptor/state.js"
import { concatBytes, firstByteDifference } from "../bytes.js"
import { sleepUs } from "../io/clock.js"
import { Disk } from "../io/disk.js"
import { Log } from "../io/log.js"
import { WalDecoder } from "../wal/decoder.js"
import { Lsn } from "../wal/lsn.js"
import { TEST_SYSTEM_ID } from "../wal/wal-testing.js"
import type { ProposerProgress } from "./machine.js"
import { type ProposerError, type ProposerOptions, type ProposerResult, runProposer } from "./proposer.js"
import { MemoryTransport } from "./testing.js"
import { SafekeeperTransport, type WalStreamChunk } from "./transport.js"
import { syntheticWalSource, type WalSourceFactory } from "./wal-source.js"

const SEGMENT_BYTES = 1024 * 1024
const PG_VERSION_NUM = 150004
const DIRECTORY = "/tenant/timeline"
const TENANT = TenantId("0123456789abcdef0123456789abcdef")
const TIMELINE = TimelineId("fedcba9876543210fedcba9876543210")
const ADDRESSES = ["sk1:5454", "sk2:5454", "sk3:5454"]
/** Just past segment 1's long header: the default initial LSN for 1 MiB segments. */
const INITIAL_LSN = Lsn(SEGMENT_BYTES + 40)
const SECOND_US = 1_000_000
const RUN_LIMIT_US = 120 * SECOND_US

interface SafekeeperNode {
  readonly wal: MemoryWalStorage
  readonly disk: SimDisk
}

/** Three acceptors, the transport in front of them, and the kernel that runs everything. */
class Cluster {
  readonly kernel: Kernel
  readonly transport = new MemoryTransport({ latencyUs: 200 })
  readonly nodes = new Map<string, SafekeeperNode>()
  private lifeNo = 0

  constructor(seed: number, private readonly mconf: MemberConfiguration = EMPTY_MEMBER_CONFIGURATION) {
    this.kernel = new Kernel(seed)
    ADDRESSES.forEach((address, index) => this.startSafekeeper(address, index + 1))
  }

  /** A fresh timeline as START_WAL_PUSH would create it (generation 0 unless told), nothing committed. */
  private startSafekeeper(address: string, id: number): void {
    const life = new Incarnation(address, 1)
    const disk = new SimDisk(this.kernel, address, { ...NO_DISK_FAULTS, fsyncLatencyUs: [50, 200] })
    const diskService = disk.service(life)
    const wal = MemoryWalStorage.empty({ segmentSizeBytes: SEGMENT_BYTES, systemId: TEST_SYSTEM_ID, pgVersion: 15 })
    const state = newTimelineState({
      tenantId: TENANT,
      timelineId: TIMELINE,
      mconf: this.mconf,
      server: { pgVersion: PG_VERSION_NUM, systemId: TEST_SYSTEM_ID, walSegSizeBytes: SEGMENT_BYTES },
      startLsn: Lsn(0),
      commitLsn: Lsn(0)
    })
    const setup = Effect.gen(function* () {
      const fs = yield* Disk
      yield* fs.mkdir(DIRECTORY)
      for (const directory of ["/", "/tenant", DIRECTORY]) yield* fs.syncDirectory(directory)
      yield* persistControlFile(DIRECTORY, state, { noSync: false })
      return yield* makeAcceptor({ nodeId: NodeId(id), state, walStorage: wal, directory: DIRECTORY, noSync: false })
    })
    const fiber = forkInLife(this.kernel, life, Effect.provideService(setup, Disk, diskService))
    this.kernel.run()
    const exit = fiber.pollUnsafe()
    if (exit === undefined || Exit.isFailure(exit)) throw new Error(`safekeeper ${address} did not start`)
    this.transport.add({ address, acceptor: exit.value, wal, disk: diskService })
    this.nodes.set(address, { wal, disk })
  }

  /** A proposer as a node life; its log lines go to the kernel's trace. */
  startProposer(options: Omit<ProposerOptions, "tenantId" | "timelineId" | "safekeepers">): Fiber.Fiber<ProposerResult, ProposerError> {
    const life = new Incarnation("compute", ++this.lifeNo)
    const program = runProposer({
      tenantId: TENANT,
      timelineId: TIMELINE,
      safekeepers: ADDRESSES,
      systemId: TEST_SYSTEM_ID,
      walSegSizeBytes: SEGMENT_BYTES,
      pgVersion: PG_VERSION_NUM,
      quorumTimeoutUs: 5 * SECOND_US,
      ...options
    }).pipe(
      Effect.provideService(SafekeeperTransport, this.transport.service),
      Effect.provideService(Log, simLog(this.kernel, life, "info"))
    )
    return forkInLife(this.kernel, life, program)
  }

  /** Runs `effect` at virtual time `atUs` (faults, second proposers). */
  at(atUs: number, effect: Effect.Effect<void>): void {
    const life = new Incarnation("nemesis", ++this.lifeNo)
    forkInLife(this.kernel, life, Effect.andThen(sleepUs(atUs - this.kernel.nowUs), effect))
  }

  /** Runs the world until every fiber given has ended (or the limit). */
  runUntilDone(...fibers: ReadonlyArray<Fiber.Fiber<unknown, unknown>>): void {
    this.kernel.run({ untilUs: this.kernel.nowUs + RUN_LIMIT_US, stop: () => fibers.every((fiber) => fiber.pollUnsafe() !== undefined) })
    expect(this.transport.defects).toEqual([])
  }

  /** Lets messages still in flight be handled (a closed link still delivers what was sent). */
  settle(): void {
    this.kernel.run({ untilUs: this.kernel.nowUs + SECOND_US })
  }

  acceptor(address: string) {
    return this.transport.safekeeper(address).acceptor
  }

  walAt(address: string, fromLsn: number, toLsn: number): Uint8Array {
    return this.nodes.get(address)!.wal.contentAt(Lsn(fromLsn), toLsn - fromLsn)
  }
}

/** A synthetic source whose chunks are also kept, to compare against the acceptors' WAL. */
function recorded(options: { readonly rateBytesPerSecond: number; readonly messageBytes?: number }): { readonly factory: WalSourceFactory; readonly chunks: WalStreamChunk[] } {
  const chunks: WalStreamChunk[] = []
  const inner = syntheticWalSource({ segmentSizeBytes: SEGMENT_BYTES, systemId: TEST_SYSTEM_ID, pgVersion: 15, ...options })
  const factory: WalSourceFactory = (start) =>
    Effect.map(inner(start), (source) => ({
      next: Effect.tap(source.next, (chunk) => Effect.sync(() => {
        if (chunk !== undefined) chunks.push(chunk)
      }))
    }))
  return { factory, chunks }
}

/** The generated WAL from the first chunk's start up to `toLsn`. */
function generated(chunks: ReadonlyArray<WalStreamChunk>, toLsn: number): Uint8Array {
  const all = concatBytes(chunks.map((chunk) => chunk.bytes))
  const startLsn = chunks[0]!.startLsn
  expect(toLsn - startLsn).toBeLessThanOrEqual(all.byteLength)
  return all.subarray(0, toLsn - startLsn)
}

function expectSameBytes(actual: Uint8Array, expected: Uint8Array, what: string): void {
  expect(actual.byteLength, what).toBe(expected.byteLength)
  const difference = firstByteDifference(actual, expected)
  expect(difference, `${what}: first differing byte`).toBeUndefined()
}

/** Decodes the acceptor's WAL [INITIAL_LSN, toLsn) with one decoder: page headers, CRCs and every xl_prev link must hold. */
function expectValidWal(cluster: Cluster, address: string, toLsn: number): void {
  const decoder = WalDecoder.make({ startLsn: INITIAL_LSN, segmentSizeBytes: SEGMENT_BYTES, systemId: TEST_SYSTEM_ID, pgVersion: 15 })
  if (Result.isFailure(decoder)) throw new Error(decoder.failure.message)
  const bytes = cluster.walAt(address, INITIAL_LSN, toLsn)
  const count = decoder.success.scan(bytes)
  expect(decoder.success.error?.message, `${address}: WAL decodes`).toBeUndefined()
  expect(count, address).toBeGreaterThan(0)
  expect(decoder.success.recordEnds.nextLsn(count - 1), `${address}: ends at a record boundary`).toBe(toLsn)
}

function success<A, E>(fiber: Fiber.Fiber<A, E>): A {
  const exit = fiber.pollUnsafe()
  if (exit === undefined) throw new Error("the proposer did not finish")
  if (Exit.isFailure(exit)) throw new Error(`the proposer failed: ${Cause.pretty(exit.cause)}`)
  return exit.value
}

function failure(fiber: Fiber.Fiber<ProposerResult, ProposerError>): ProposerError {
  const exit = fiber.pollUnsafe()
  if (exit === undefined) throw new Error("the proposer did not finish")
  if (Exit.isSuccess(exit)) throw new Error(`the proposer succeeded: ${JSON.stringify(exit.value)}`)
  const reason = exit.cause.reasons.find(Cause.isFailReason)
  if (reason === undefined) throw new Error(`expected a typed error, got ${Cause.pretty(exit.cause)}`)
  return reason.error
}

describe("normal mode", () => {
  test("elected on a new timeline, commits the total, every acceptor's WAL is the generated WAL byte for byte", () => {
    const cluster = new Cluster(1)
    const wal = recorded({ rateBytesPerSecond: Number.POSITIVE_INFINITY })
    const progress: ProposerProgress[] = []
    const fiber = cluster.startProposer({ walSource: wal.factory, totalBytes: 1536 * 1024, onProgress: (p) => progress.push(p) })
    cluster.runUntilDone(fiber)
    const result = success(fiber)

    expect(result.term).toBe(1)
    expect(result.termStartLsn).toBe(INITIAL_LSN)
    expect(result.commitLsn).toBeGreaterThanOrEqual(INITIAL_LSN + 1536 * 1024)
    expect(wal.chunks[0]!.startLsn).toBe(INITIAL_LSN)
    const expected = generated(wal.chunks, result.commitLsn)
    for (const address of ADDRESSES) {
      const acceptor = cluster.acceptor(address)
      expect(acceptor.term(), address).toBe(1)
      expect(acceptor.termHistory(), address).toEqual([{ term: 1, lsn: INITIAL_LSN }])
      if (acceptor.flushLsn() < result.commitLsn) continue
      expectSameBytes(cluster.walAt(address, INITIAL_LSN, result.commitLsn), expected, address)
      expectValidWal(cluster, address, result.commitLsn)
    }
    const holding = ADDRESSES.filter((address) => cluster.acceptor(address).flushLsn() >= result.commitLsn)
    expect(holding.length).toBeGreaterThanOrEqual(2)

    // Progress: elected once, commit_lsn only grows and never passes a quorum's flush.
    expect(progress.some((p) => p.phase === "Elected" && p.term === 1 && p.termStartLsn === INITIAL_LSN)).toBe(true)
    for (let i = 1; i < progress.length; i++) expect(progress[i]!.commitLsn).toBeGreaterThanOrEqual(progress[i - 1]!.commitLsn)
    for (const p of progress) {
      const flushes = p.safekeepers.map((sk) => sk.flushLsn)
      expect(flushes.filter((flush) => flush >= p.commitLsn).length).toBeGreaterThanOrEqual(p.commitLsn === 0 ? 0 : 2)
    }
    expect(cluster.kernel.trace.lines.some((line) => line.includes("proposer elected term=1"))).toBe(true)
  })

  test("with one safekeeper down it still commits; the two that are up hold the WAL", () => {
    const cluster = new Cluster(2)
    cluster.transport.setDown("sk3:5454")
    const wal = recorded({ rateBytesPerSecond: 4 * 1024 * 1024 })
    const fiber = cluster.startProposer({ walSource: wal.factory, totalBytes: 512 * 1024 })
    cluster.runUntilDone(fiber)
    const result = success(fiber)
    expect(result.commitLsn).toBeGreaterThanOrEqual(INITIAL_LSN + 512 * 1024)
    // Paced at 4 MiB/s: half a MiB takes about an eighth of a second of virtual time.
    expect(cluster.kernel.nowUs).toBeGreaterThanOrEqual(SECOND_US / 8)
    const expected = generated(wal.chunks, result.commitLsn)
    for (const address of ["sk1:5454", "sk2:5454"]) {
      expect(cluster.acceptor(address).flushLsn()).toBeGreaterThanOrEqual(result.commitLsn)
      expectSameBytes(cluster.walAt(address, INITIAL_LSN, result.commitLsn), expected, address)
    }
    expect(cluster.acceptor("sk3:5454").flushLsn()).toBe(0)
  })

  test("with two safekeepers down it is never elected and fails NoQuorum after its timeout", () => {
    const cluster = new Cluster(3)
    cluster.transport.setDown("sk2:5454")
    cluster.transport.setDown("sk3:5454")
    const progress: ProposerProgress[] = []
    const fiber = cluster.startProposer({ walSource: recorded({ rateBytesPerSecond: 0 }).factory, totalBytes: 64 * 1024, onProgress: (p) => progress.push(p) })
    cluster.runUntilDone(fiber)
    const error = failure(fiber)
    expect(error.reason).toBe("NoQuorum")
    expect(cluster.kernel.nowUs).toBeGreaterThanOrEqual(5 * SECOND_US)
    expect(progress.every((p) => p.commitLsn === 0)).toBe(true)
    expect(cluster.acceptor("sk1:5454").flushLsn()).toBe(0)
  })

  test("losing two safekeepers after the election stops commits, then NoQuorum", () => {
    const cluster = new Cluster(4)
    const progress: ProposerProgress[] = []
    const fiber = cluster.startProposer({ walSource: recorded({ rateBytesPerSecond: 1024 * 1024 }).factory, onProgress: (p) => progress.push(p) })
    const downAtUs = SECOND_US
    cluster.at(downAtUs, Effect.sync(() => {
      cluster.transport.setDown("sk2:5454")
      cluster.transport.setDown("sk3:5454")
    }))
    cluster.runUntilDone(fiber)
    expect(failure(fiber).reason).toBe("NoQuorum")
    const committedAtLoss = Math.max(...progress.filter((p) => p.commitLsn > 0).map((p) => p.commitLsn))
    expect(committedAtLoss).toBeGreaterThan(INITIAL_LSN)
    // Nothing past what sk2 and sk3 had flushed when they went down was committed.
    const lastFlushOfOthers = Math.max(cluster.acceptor("sk2:5454").flushLsn(), cluster.acceptor("sk3:5454").flushLsn())
    expect(committedAtLoss).toBeLessThanOrEqual(lastFlushOfOthers)
    expect(cluster.kernel.nowUs).toBeGreaterThanOrEqual(downAtUs + 5 * SECOND_US)
  })

  test("a second proposer with a higher term makes the first step down; what the first committed stays", () => {
    const cluster = new Cluster(5)
    const first = recorded({ rateBytesPerSecond: 1024 * 1024 })
    const firstProgress: ProposerProgress[] = []
    const firstFiber = cluster.startProposer({ walSource: first.factory, totalBytes: 8 * 1024 * 1024, onProgress: (p) => firstProgress.push(p) })
    const second = recorded({ rateBytesPerSecond: Number.POSITIVE_INFINITY })
    let secondFiber: Fiber.Fiber<ProposerResult, ProposerError> | undefined
    cluster.at(SECOND_US, Effect.sync(() => {
      secondFiber = cluster.startProposer({ walSource: second.factory, totalBytes: 256 * 1024 })
    }))
    cluster.kernel.run({ untilUs: SECOND_US + 1 })
    expect(secondFiber).toBeDefined()
    cluster.runUntilDone(firstFiber, secondFiber!)

    expect(failure(firstFiber).reason).toBe("HigherTerm")
    const result = success(secondFiber!)
    expect(result.term).toBe(2)
    const firstCommitted = Math.max(...firstProgress.map((p) => p.commitLsn))
    expect(firstCommitted).toBeGreaterThan(INITIAL_LSN)
    // Commit durability: everything the first proposer committed is in the second's log.
    expect(result.termStartLsn).toBeGreaterThanOrEqual(firstCommitted)
    const firstWal = generated(first.chunks, result.termStartLsn)
    const secondWal = generated(second.chunks, result.commitLsn)
    for (const address of ADDRESSES) {
      const acceptor = cluster.acceptor(address)
      expect(acceptor.term()).toBe(2)
      if (acceptor.flushLsn() < result.commitLsn) continue
      expect(acceptor.termHistory()).toEqual([{ term: 1, lsn: INITIAL_LSN }, { term: 2, lsn: result.termStartLsn }])
      expectSameBytes(cluster.walAt(address, INITIAL_LSN, result.termStartLsn), firstWal, `${address} term 1`)
      expectSameBytes(cluster.walAt(address, result.termStartLsn, result.commitLsn), secondWal, `${address} term 2`)
      // The second term's first record links back to the first term's last (xl_prev read from the donor).
      expectValidWal(cluster, address, result.commitLsn)
    }
  })
})

describe("lifetime", () => {
  test("run inline in a fiber that lives on (a compute restarting its proposer), nothing of it sends or pulls WAL after it returned", () => {
    const cluster = new Cluster(6)
    const life = new Incarnation("compute", 99)
    let returnedAtUs: number | undefined
    const sendsAfterReturn: string[] = []
    const inner = cluster.transport.service
    // The first proposer's transport, watched: a send after runProposer returned is a leaked fiber.
    const watched = SafekeeperTransport.of({
      open: (address, options) => Effect.map(inner.open(address, options), (link) => ({
        ...link,
        send: (message) => Effect.andThen(Effect.sync(() => {
          if (returnedAtUs !== undefined) sendsAfterReturn.push(`${message._tag} to ${address} at ${cluster.kernel.nowUs}`)
        }), link.send(message))
      })),
      streamWal: (address, options) => inner.streamWal(address, options)
    })
    const wal = recorded({ rateBytesPerSecond: 1024 * 1024 })
    // The pump asks its WAL source for more: after the return, a leaked pump would go on asking.
    const pulledAfterReturn: number[] = []
    const walSource: WalSourceFactory = (start) => Effect.map(wal.factory(start), (source) => ({
      ...source,
      next: Effect.tap(source.next, () => Effect.sync(() => {
        if (returnedAtUs !== undefined) pulledAfterReturn.push(cluster.kernel.nowUs)
      }))
    }))
    const program = Effect.gen(function* () {
      yield* Effect.result(runProposer({
        tenantId: TENANT, timelineId: TIMELINE, safekeepers: ADDRESSES, systemId: TEST_SYSTEM_ID,
        walSegSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION_NUM, quorumTimeoutUs: 5 * SECOND_US, walSource
      }).pipe(Effect.provideService(SafekeeperTransport, watched)))
      returnedAtUs = cluster.kernel.nowUs
      yield* sleepUs(5 * SECOND_US)
    }).pipe(Effect.provideService(Log, simLog(cluster.kernel, life, "info")))
    const compute = forkInLife(cluster.kernel, life, program)
    // A second proposer with a higher term makes the first step down while it streams.
    let second: Fiber.Fiber<ProposerResult, ProposerError> | undefined
    cluster.at(SECOND_US, Effect.sync(() => {
      second = cluster.startProposer({ walSource: recorded({ rateBytesPerSecond: 1024 * 1024 }).factory, totalBytes: 256 * 1024 })
    }))
    cluster.kernel.run({ untilUs: SECOND_US + 1 })
    cluster.runUntilDone(compute, second!)
    expect(returnedAtUs).toBeDefined()
    expect(sendsAfterReturn).toEqual([])
    expect(pulledAfterReturn).toEqual([])
  })
})

describe("membership configuration", () => {
  const mconf: MemberConfiguration = {
    generation: Generation(1),
    members: [3, 1, 2].map((id) => ({ id: NodeId(id), host: `sk${id}`, pgPort: 5454 })),
    newMembers: undefined
  }

  test("a proposer greeting without a configuration adopts the safekeepers' and commits in its generation", () => {
    const cluster = new Cluster(10, mconf)
    cluster.transport.setDown("sk1:5454")
    const wal = recorded({ rateBytesPerSecond: Number.POSITIVE_INFINITY })
    const progress: ProposerProgress[] = []
    const fiber = cluster.startProposer({ walSource: wal.factory, totalBytes: 200 * 1024, onProgress: (p) => progress.push(p) })
    cluster.runUntilDone(fiber)
    const result = success(fiber)
    expect(result.commitLsn).toBeGreaterThanOrEqual(INITIAL_LSN + 200 * 1024)
    for (const address of ["sk2:5454", "sk3:5454"]) {
      expect(cluster.acceptor(address).persistedState().mconf.generation).toBe(1)
      expectSameBytes(cluster.walAt(address, INITIAL_LSN, result.commitLsn), generated(wal.chunks, result.commitLsn), address)
    }
    expect(cluster.kernel.trace.lines.some((line) => line.includes("proposer adopted configuration generation=1"))).toBe(true)
  })

  test("greeting with the configuration itself works the same", () => {
    const cluster = new Cluster(11, mconf)
    const fiber = cluster.startProposer({ mconf, walSource: recorded({ rateBytesPerSecond: Number.POSITIVE_INFINITY }).factory, totalBytes: 64 * 1024 })
    cluster.runUntilDone(fiber)
    expect(success(fiber).commitLsn).toBeGreaterThanOrEqual(INITIAL_LSN + 64 * 1024)
  })
})

describe("recovery", () => {
  test("the safekeeper with the most WAL is the donor; its extra WAL reaches the others before new WAL", () => {
    const cluster = new Cluster(6)
    // Term 1 writes with sk3 down; then sk2 goes down too, and sk1 alone receives WAL nobody committed.
    cluster.transport.setDown("sk3:5454")
    const first = recorded({ rateBytesPerSecond: 2 * 1024 * 1024 })
    const firstFiber = cluster.startProposer({ walSource: first.factory, uncommittedBytesMax: 256 * 1024 })
    cluster.at(SECOND_US / 2, Effect.sync(() => cluster.transport.setDown("sk2:5454")))
    cluster.runUntilDone(firstFiber)
    expect(failure(firstFiber).reason).toBe("NoQuorum")
    const donorFlush = cluster.acceptor("sk1:5454").flushLsn()
    const laggardFlush = cluster.acceptor("sk2:5454").flushLsn()
    expect(laggardFlush).toBeGreaterThan(INITIAL_LSN)
    expect(donorFlush).toBeGreaterThan(laggardFlush + 64 * 1024)
    expect(cluster.acceptor("sk3:5454").flushLsn()).toBe(0)

    // Everyone is back; the second proposer must take sk1's log whole.
    cluster.transport.setUp("sk2:5454")
    cluster.transport.setUp("sk3:5454")
    const streamedBefore = cluster.transport.stats.walStreamedBytes
    // Paced, so that even sk3 (empty) has caught up before the total is committed.
    const second = recorded({ rateBytesPerSecond: 1024 * 1024 })
    const secondFiber = cluster.startProposer({ walSource: second.factory, totalBytes: 128 * 1024 })
    cluster.runUntilDone(secondFiber)
    const result = success(secondFiber)
    expect(result.term).toBe(2)
    expect(result.termStartLsn).toBe(donorFlush)
    // sk2 needed [laggardFlush, donorFlush), sk3 everything from the start: read from sk1.
    expect(cluster.transport.stats.walStreamedBytes - streamedBefore).toBeGreaterThanOrEqual(donorFlush - laggardFlush)
    const firstWal = generated(first.chunks, donorFlush)
    const secondWal = generated(second.chunks, result.commitLsn)
    expect(second.chunks[0]!.startLsn).toBe(donorFlush)
    // Writes are contiguous, so new WAL lands on a safekeeper only after all of the donor's.
    for (const address of ADDRESSES) {
      const acceptor = cluster.acceptor(address)
      expect(acceptor.flushLsn(), address).toBeGreaterThanOrEqual(result.commitLsn)
      expect(acceptor.termHistory(), address).toEqual([{ term: 1, lsn: INITIAL_LSN }, { term: 2, lsn: donorFlush }])
      expectSameBytes(cluster.walAt(address, INITIAL_LSN, donorFlush), firstWal, `${address} recovered WAL`)
      expectSameBytes(cluster.walAt(address, donorFlush, result.commitLsn), secondWal, `${address} new WAL`)
      expectValidWal(cluster, address, result.commitLsn)
    }
    // The first new record points back at the last recovered one (found by reading the donor).
    const trace = cluster.kernel.trace.lines
    expect(trace.some((line) => line.includes("could not find the last record"))).toBe(false)
  })
  test("an uncommitted tail of an older term is cut where the logs part, and replaced by the donor's log", () => {
    const cluster = new Cluster(12)
    // Term 1: everyone commits, then sk1 alone receives a tail nobody else has.
    const first = recorded({ rateBytesPerSecond: 2 * 1024 * 1024 })
    const firstFiber = cluster.startProposer({ walSource: first.factory, uncommittedBytesMax: 256 * 1024 })
    cluster.at(SECOND_US / 2, Effect.sync(() => {
      cluster.transport.setDown("sk2:5454")
      cluster.transport.setDown("sk3:5454")
    }))
    cluster.runUntilDone(firstFiber)
    expect(failure(firstFiber).reason).toBe("NoQuorum")
    const tailEnd = cluster.acceptor("sk1:5454").flushLsn()
    // Term 2 without sk1 writes its own WAL after what sk2 and sk3 hold.
    cluster.transport.setDown("sk1:5454")
    cluster.transport.setUp("sk2:5454")
    cluster.transport.setUp("sk3:5454")
    const second = recorded({ rateBytesPerSecond: Number.POSITIVE_INFINITY })
    const secondFiber = cluster.startProposer({ walSource: second.factory, totalBytes: 96 * 1024 })
    cluster.runUntilDone(secondFiber)
    const term2 = success(secondFiber)
    expect(term2.term).toBe(2)
    expect(term2.termStartLsn).toBeLessThan(tailEnd)
    cluster.settle()
    // Term 3 with everyone: sk1 has the longest log, but of term 1; the donor is a term-2 one.
    cluster.transport.setUp("sk1:5454")
    const third = recorded({ rateBytesPerSecond: 1024 * 1024 })
    const thirdFiber = cluster.startProposer({ walSource: third.factory, totalBytes: 64 * 1024 })
    cluster.runUntilDone(thirdFiber)
    const term3 = success(thirdFiber)
    expect(term3.term).toBe(3)
    expect(term3.termStartLsn).toBeGreaterThanOrEqual(term2.commitLsn)
    const reference = cluster.walAt("sk2:5454", INITIAL_LSN, term3.commitLsn)
    for (const address of ADDRESSES) {
      const acceptor = cluster.acceptor(address)
      expect(acceptor.flushLsn(), address).toBeGreaterThanOrEqual(term3.commitLsn)
      expect(acceptor.termHistory(), address).toEqual([
        { term: 1, lsn: INITIAL_LSN },
        { term: 2, lsn: term2.termStartLsn },
        { term: 3, lsn: term3.termStartLsn }
      ])
      expectSameBytes(cluster.walAt(address, INITIAL_LSN, term3.commitLsn), reference, address)
      expectValidWal(cluster, address, term3.commitLsn)
    }
    expectSameBytes(cluster.walAt("sk1:5454", INITIAL_LSN, term2.termStartLsn), generated(first.chunks, term2.termStartLsn), "sk1 term 1")
    expectSameBytes(cluster.walAt("sk1:5454", term2.termStartLsn, term3.termStartLsn), generated(second.chunks, term3.termStartLsn), "sk1 term 2")
  })
})

describe("laggards below the WAL buffer", () => {
  test("a safekeeper back after the buffer moved on is fed from a peer, then from the buffer", () => {
    const cluster = new Cluster(13)
    cluster.transport.setDown("sk3:5454")
    const wal = recorded({ rateBytesPerSecond: 2 * 1024 * 1024 })
    // 3 MiB at 2 MiB/s: sk3 is back at the reconnect round after 1 s, long after 0/100028 left the buffer.
    const fiber = cluster.startProposer({ walSource: wal.factory, totalBytes: 3 * 1024 * 1024, walBufferBytesMax: 192 * 1024, uncommittedBytesMax: 128 * 1024 })
    cluster.at(SECOND_US / 4, Effect.sync(() => cluster.transport.setUp("sk3:5454")))
    cluster.runUntilDone(fiber)
    const result = success(fiber)
    // By then the buffer had dropped sk3's start (0/100028): its WAL came from sk1 or sk2.
    expect(cluster.transport.stats.streamsOpened).toBeGreaterThan(0)
    expect(cluster.transport.stats.walStreamedBytes).toBeGreaterThan(SEGMENT_BYTES)
    const expected = generated(wal.chunks, result.commitLsn)
    for (const address of ADDRESSES) {
      expect(cluster.acceptor(address).flushLsn(), address).toBeGreaterThanOrEqual(result.commitLsn)
      expectSameBytes(cluster.walAt(address, INITIAL_LSN, result.commitLsn), expected, address)
    }
  })

  test("when no peer holds what a laggard needs, the proposer stops with WalUnavailable", () => {
    const cluster = new Cluster(14)
    cluster.transport.setDown("sk3:5454")
    const fiber = cluster.startProposer({
      walSource: recorded({ rateBytesPerSecond: 4 * 1024 * 1024 }).factory,
      walBufferBytesMax: 192 * 1024,
      uncommittedBytesMax: 128 * 1024
    })
    // Once WAL is past segment 1, sk1 and sk2 remove it (as after a backup), then sk3 returns empty.
    cluster.at(SECOND_US / 2, Effect.gen(function* () {
      expect(cluster.acceptor("sk1:5454").flushLsn()).toBeGreaterThan(2 * SEGMENT_BYTES)
      yield* Effect.orDie(cluster.nodes.get("sk1:5454")!.wal.removeUpTo(1))
      yield* Effect.orDie(cluster.nodes.get("sk2:5454")!.wal.removeUpTo(1))
      cluster.transport.setUp("sk3:5454")
    }))
    cluster.runUntilDone(fiber)
    const error = failure(fiber)
    expect(error.reason).toBe("WalUnavailable")
    expect(error.message).toContain("sk3:5454")
  })
})

describe("sync-safekeepers", () => {
  test("with no WAL anywhere it returns 0/0", () => {
    const cluster = new Cluster(7)
    const fiber = cluster.startProposer({ syncSafekeepers: true, systemId: 0n })
    cluster.runUntilDone(fiber)
    const result = success(fiber)
    expect(result.lsn).toBe(0)
    expect(result.term).toBe(1)
    for (const address of ADDRESSES) expect(cluster.acceptor(address).flushLsn()).toBe(0)
  })

  test("brings a lagging safekeeper to the donor's end and returns that LSN", () => {
    const cluster = new Cluster(8)
    cluster.transport.setDown("sk3:5454")
    const wal = recorded({ rateBytesPerSecond: Number.POSITIVE_INFINITY })
    const writer = cluster.startProposer({ walSource: wal.factory, totalBytes: 300 * 1024 })
    cluster.runUntilDone(writer)
    const written = success(writer)
    cluster.transport.setUp("sk3:5454")

    const sync = cluster.startProposer({ syncSafekeepers: true, systemId: 0n })
    cluster.runUntilDone(sync)
    const result = success(sync)
    const end = cluster.acceptor("sk1:5454").flushLsn()
    expect(end).toBeGreaterThanOrEqual(written.commitLsn)
    expect(result.lsn).toBe(end)
    expect(result.term).toBe(2)
    const expected = generated(wal.chunks, end)
    for (const address of ADDRESSES) {
      const acceptor = cluster.acceptor(address)
      expect(acceptor.flushLsn(), address).toBe(end)
      // Persisted: the next compute's basebackup may come from any of them.
      expect(acceptor.persistedState().commitLsn, address).toBeGreaterThanOrEqual(end)
      expectSameBytes(cluster.walAt(address, INITIAL_LSN, end), expected, address)
    }
  })

  test("a second sync on synced safekeepers exits at once (truncate_lsn == term start)", () => {
    const cluster = new Cluster(9)
    const writer = cluster.startProposer({ walSource: recorded({ rateBytesPerSecond: Number.POSITIVE_INFINITY }).factory, totalBytes: 100 * 1024 })
    cluster.runUntilDone(writer)
    success(writer)
    const firstSync = cluster.startProposer({ syncSafekeepers: true, systemId: 0n })
    cluster.runUntilDone(firstSync)
    const first = success(firstSync)
    cluster.settle()
    const handledBefore = cluster.transport.stats.messagesHandled
    const secondSync = cluster.startProposer({ syncSafekeepers: true, systemId: 0n })
    cluster.runUntilDone(secondSync)
    const second = success(secondSync)
    expect(second.lsn).toBe(first.lsn)
    expect(second.term).toBe(first.term + 1)
    // Greetings and votes only: no ProposerElected or AppendRequest was needed.
    expect(cluster.transport.stats.messagesHandled - handledBefore).toBeLessThanOrEqual(2 * ADDRESSES.length)
    expect(cluster.kernel.trace.lines.some((line) => line.includes("already synced"))).toBe(true)
  })
})
