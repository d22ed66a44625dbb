// Goal: the acceptor follows every rule of reference §5 and keeps its invariants: votes once per
// term with the term durable before the reply, truncates only uncommitted WAL to the common
// point, refuses stale, early, rewriting and gapped appends without durable change, keeps
// commit_lsn within [old commit, flush], adopts configurations and peer commits only as the
// rules allow, and comes back after a crash with what it acknowledged. Method: the Acceptor shell
// driven message by message over MemoryWalStorage (real WAL from WalGenerator, decoded for record
// ends) and a SimDisk for the control file inside a simulator Kernel; crashes apply the disk's
// crash model and reload the control file and the WAL that was flushed. The plain rules get
// fast-check properties of their invariants.
import { Cause, Effect, Exit, Fiber, Result } from "effect"
import fc from "fast-check"
import { describe, expect, test } from "vitest"
import { Incarnation, Kernel } from "../../sim/kernel.js"
import { NO_DISK_FAULTS, SimDisk } from "../../sim/disk.js"
import { forkInLife } from "../../sim/runtime.js"
import { InvariantViolation } from "../assert.js"
import { Disk, DiskError } from "../io/disk.js"
import type { AppendRequest, AppendResponse, ProposerElected, ProposerGreeting, VoteResponse } from "../protocol/consensus.js"
import { WalGenerator } from "../wal/generator.js"
import { Lsn } from "../wal/lsn.js"
import { messageFor, TEST_SYSTEM_ID } from "../wal/wal-testing.js"
import {
  type Acceptor,
  AcceptorError,
  advanceCommitLsn,
  decideVote,
  initialSnapshot,
  makeAcceptor,
  updateCommitLsn
} from "./acceptor.js"
import { loadControlFile, persistControlFile } from "./control-file.js"
import { MemoryWalStorage } from "./memory-wal-storage.js"
import {
  Generation,
  type MemberConfiguration,
  newTimelineState,
  NodeId,
  type PersistedState,
  TenantId,
  Term,
  type TermHistory,
  TimelineId
} from "./state.js"

const SEGMENT_BYTES = 1024 * 1024
const PG_VERSION_NUM = 150004
const DIRECTORY = "/tenant/timeline"
const ME = NodeId(1)
const TENANT = TenantId("0123456789abcdef0123456789abcdef")
const TIMELINE = TimelineId("fedcba9876543210fedcba9876543210")
/** Timelines start after the long header of segment 1, as a basebackup LSN would. */
const TIMELINE_START = Lsn(SEGMENT_BYTES + 40)

const mconf = (generation: number, ...ids: number[]): MemberConfiguration => ({
  generation: Generation(generation),
  members: ids.map((id) => ({ id: NodeId(id), host: `sk${id}`, pgPort: 5454 })),
  newMembers: undefined
})

/** A timeline as START_WAL_PUSH creates it: term 0, nothing known about its start. */
const freshState = (overrides: Partial<PersistedState> = {}): PersistedState => ({
  ...newTimelineState({
    tenantId: TENANT,
    timelineId: TIMELINE,
    mconf: mconf(1, 1, 2, 3),
    server: { pgVersion: PG_VERSION_NUM, systemId: TEST_SYSTEM_ID, walSegSizeBytes: SEGMENT_BYTES },
    startLsn: Lsn(0),
    commitLsn: Lsn(0)
  }),
  ...overrides
})

const history = (...entries: ReadonlyArray<readonly [number, number]>): TermHistory =>
  entries.map(([term, lsn]) => ({ term: Term(term), lsn: Lsn(lsn) }))

// ---- messages ----

const greeting = (overrides: Partial<ProposerGreeting> = {}): ProposerGreeting => ({
  _tag: "ProposerGreeting",
  tenantId: TENANT,
  timelineId: TIMELINE,
  mconf: mconf(1, 1, 2, 3),
  pgVersion: PG_VERSION_NUM,
  systemId: TEST_SYSTEM_ID,
  walSegSizeBytes: SEGMENT_BYTES,
  ...overrides
})
const vote = (term: number, generation = 1) => ({ _tag: "VoteRequest" as const, generation: Generation(generation), term: Term(term) })
const elected = (term: number, startStreamingAt: number, termHistory: TermHistory, generation = 1): ProposerElected => ({
  _tag: "ProposerElected",
  generation: Generation(generation),
  term: Term(term),
  startStreamingAt: Lsn(startStreamingAt),
  termHistory
})
const append = (
  term: number,
  beginLsn: number,
  walData: Uint8Array,
  options: { readonly commitLsn?: number; readonly truncateLsn?: number; readonly generation?: number } = {}
): AppendRequest => ({
  _tag: "AppendRequest",
  generation: Generation(options.generation ?? 1),
  term: Term(term),
  beginLsn: Lsn(beginLsn),
  endLsn: Lsn(beginLsn + walData.byteLength),
  commitLsn: Lsn(options.commitLsn ?? 0),
  truncateLsn: Lsn(options.truncateLsn ?? 0),
  walData
})

/** Real WAL: logical messages laid out by a WalGenerator, record by record. */
class Wal {
  readonly generator: WalGenerator
  private count = 0
  constructor(startLsn: Lsn) {
    this.generator = new WalGenerator({ startLsn, segmentSizeBytes: SEGMENT_BYTES, systemId: TEST_SYSTEM_ID, pgVersion: 15, timelineId: 1 })
  }
  get endLsn(): Lsn {
    return this.generator.insertLsn
  }
  /** `recordCount` records of `messageBytes` each: their bytes from the previous end. */
  records(recordCount: number, messageBytes = 100): { readonly beginLsn: Lsn; readonly bytes: Uint8Array; readonly ends: Lsn[] } {
    const beginLsn = this.generator.insertLsn
    const pieces: Uint8Array[] = []
    const ends: Lsn[] = []
    for (let i = 0; i < recordCount; i++) {
      const record = this.generator.appendLogicalMessage(`m${this.count}`, messageFor(this.count++, messageBytes))
      pieces.push(record.bytes)
      ends.push(record.nextLsn)
    }
    const bytes = new Uint8Array(pieces.reduce((sum, piece) => sum + piece.byteLength, 0))
    let offset = 0
    for (const piece of pieces) {
      bytes.set(piece, offset)
      offset += piece.byteLength
    }
    return { beginLsn, bytes, ends }
  }
}

// ---- the bench: one node with a simulated disk ----

class Bench {
  readonly kernel: Kernel
  readonly disk: SimDisk
  life = new Incarnation("sk1", 1)
  constructor(seed = 1) {
    this.kernel = new Kernel(seed)
    this.disk = new SimDisk(this.kernel, "sk1", NO_DISK_FAULTS)
  }

  exit<A, E>(program: Effect.Effect<A, E, Disk>, diskService: Disk["Service"] = this.disk.service(this.life)): Exit.Exit<A, E> {
    const fiber: Fiber.Fiber<A, E> = forkInLife(this.kernel, this.life, Effect.provideService(program, Disk, diskService))
    this.kernel.run()
    const exit = fiber.pollUnsafe()
    if (exit === undefined) throw new Error("program did not finish")
    return exit
  }

  /** Runs `program` to its end and returns its value (a failure fails the test with its cause). */
  run<A, E>(program: Effect.Effect<A, E, Disk>): A {
    const exit = this.exit(program)
    if (Exit.isFailure(exit)) throw new Error(Cause.pretty(exit.cause))
    return exit.value
  }

  /** The typed error `program` fails with (a success or a defect fails the test). */
  error<A, E>(program: Effect.Effect<A, E, Disk>): E {
    const exit = this.exit(program)
    if (Exit.isSuccess(exit)) throw new Error("expected a failure")
    const error = exit.cause.reasons.find(Cause.isFailReason)
    if (error === undefined) throw new Error(`expected a typed error, got ${Cause.pretty(exit.cause)}`)
    return error.error
  }

  /** kill -9 with power loss, then a new life. */
  crash(): void {
    this.life.alive = false
    this.disk.crash()
    this.life = new Incarnation("sk1", this.life.life + 1)
  }

  loadState(): PersistedState {
    return this.run(loadControlFile(DIRECTORY))
  }
}

interface Node {
  readonly bench: Bench
  readonly wal: MemoryWalStorage
  readonly acceptor: Acceptor
}

const walOptions = { segmentSizeBytes: SEGMENT_BYTES, systemId: TEST_SYSTEM_ID, pgVersion: 15 } as const

/** A node with a persisted fresh timeline (or `state`) and empty WAL storage. */
function startNode(options: { readonly seed?: number; readonly state?: PersistedState; readonly noSync?: boolean } = {}): Node {
  const bench = new Bench(options.seed ?? 1)
  const state = options.state ?? freshState()
  const wal = MemoryWalStorage.empty(walOptions)
  const acceptor = bench.run(Effect.gen(function* () {
    const disk = yield* Disk
    yield* disk.mkdir(DIRECTORY)
    for (const directory of ["/", "/tenant", DIRECTORY]) yield* disk.syncDirectory(directory)
    yield* persistControlFile(DIRECTORY, state, { noSync: false })
    return yield* makeAcceptor({ nodeId: ME, state, walStorage: wal, directory: DIRECTORY, noSync: options.noSync ?? false })
  }))
  return { bench, wal, acceptor }
}

/** Crash the node, then load what the disk and the flushed WAL hold. */
function restartNode(node: Node): Node {
  node.bench.crash()
  const state = node.bench.loadState()
  const reopened = node.wal.reopen(state.commitLsn)
  if (Result.isFailure(reopened)) throw new Error(reopened.failure.message)
  const wal = reopened.success
  const acceptor = node.bench.run(makeAcceptor({ nodeId: ME, state, walStorage: wal, directory: DIRECTORY, noSync: false }))
  return { bench: node.bench, wal, acceptor }
}

/** Greeting, vote and election of term `term` on a fresh node; returns the WAL stream. */
function electFirstTerm(node: Node, term = 1): Wal {
  const { bench, acceptor } = node
  bench.run(acceptor.handle(greeting()))
  const response = bench.run(acceptor.handle(vote(term))) as VoteResponse
  expect(response.voteGiven).toBe(true)
  expect(bench.run(acceptor.handle(elected(term, TIMELINE_START, history([term, TIMELINE_START]))))).toBeUndefined()
  return new Wal(TIMELINE_START)
}

function writeRecords(node: Node, wal: Wal, term: number, recordCount: number, options: { readonly commitLsn?: number } = {}): Lsn[] {
  const { beginLsn, bytes, ends } = wal.records(recordCount)
  node.bench.run(node.acceptor.handle(append(term, beginLsn, bytes, options)))
  return ends
}

// ---- tests ----

describe("vote and election", () => {
  test("vote then elected: WAL initialized, truncated to the common point, history adopted", () => {
    const node = startNode()
    const { bench, acceptor, wal } = node
    const greetingReply = bench.run(acceptor.handle(greeting()))
    expect(greetingReply).toEqual({ _tag: "AcceptorGreeting", nodeId: ME, mconf: mconf(1, 1, 2, 3), term: 0 })

    const firstVote = bench.run(acceptor.handle(vote(1))) as VoteResponse
    expect(firstVote).toEqual({ _tag: "VoteResponse", generation: 1, term: 1, voteGiven: true, flushLsn: 0, truncateLsn: 0, termHistory: [] })
    bench.run(acceptor.handle(elected(1, TIMELINE_START, history([1, TIMELINE_START]))))
    expect(wal.stats.firstSegmentInitializations).toBe(1)
    expect(wal.positions()).toEqual({ writeLsn: TIMELINE_START, flushLsn: TIMELINE_START, writeRecordLsn: TIMELINE_START, flushRecordLsn: TIMELINE_START })
    const afterElection = bench.loadState()
    expect(afterElection.acceptorState).toEqual({ term: 1, termHistory: history([1, TIMELINE_START]) })
    expect(afterElection).toMatchObject({ timelineStartLsn: TIMELINE_START, localStartLsn: TIMELINE_START, commitLsn: TIMELINE_START, backupLsn: TIMELINE_START, peerHorizonLsn: TIMELINE_START, remoteConsistentLsn: TIMELINE_START })
    expect(acceptor.snapshot().termStartLsn).toBe(TIMELINE_START)

    // Term 1 writes five records; a proposer of term 2 whose donor had only two of them wins.
    const stream = new Wal(TIMELINE_START)
    const ends = writeRecords(node, stream, 1, 5)
    expect(acceptor.flushLsn()).toBe(ends[4])
    const secondVote = bench.run(acceptor.handle(vote(2))) as VoteResponse
    expect(secondVote).toMatchObject({ term: 2, voteGiven: true, flushLsn: ends[4], termHistory: history([1, TIMELINE_START]) })
    const divergence = ends[1]!
    const proposerHistory = history([1, TIMELINE_START], [2, divergence])
    bench.run(acceptor.handle(elected(2, divergence, proposerHistory)))
    expect(wal.positions()).toEqual({ writeLsn: divergence, flushLsn: divergence, writeRecordLsn: divergence, flushRecordLsn: divergence })
    expect(wal.stats.firstSegmentInitializations).toBe(1) // WAL existed: no second initialization
    expect(wal.contentAt(divergence, ends[4]! - divergence).every((byte) => byte === 0)).toBe(true)
    expect(bench.loadState().acceptorState).toEqual({ term: 2, termHistory: proposerHistory })
    expect(acceptor.lastLogTerm()).toBe(2) // term 2 starts exactly at our end of WAL

    // Term 2 continues from the divergence point with its own records.
    const term2 = new Wal(TIMELINE_START)
    term2.records(2)
    const term2Ends = writeRecords(node, term2, 2, 3)
    expect(acceptor.flushLsn()).toBe(term2Ends[2])
    expect(acceptor.termHistory()).toEqual(proposerHistory)
  })

  test("an equal or lower term gets vote_given = false, also after a restart", () => {
    let node = startNode()
    const ask = (n: Node, term: number) => n.bench.run(n.acceptor.handle(vote(term))) as VoteResponse
    expect(ask(node, 3)).toMatchObject({ term: 3, voteGiven: true })
    expect(ask(node, 3)).toMatchObject({ term: 3, voteGiven: false })
    expect(ask(node, 2)).toMatchObject({ term: 3, voteGiven: false })
    node = restartNode(node)
    expect(node.acceptor.term()).toBe(3)
    expect(ask(node, 3)).toMatchObject({ term: 3, voteGiven: false })
    expect(ask(node, 4)).toMatchObject({ term: 4, voteGiven: true })
  })

  test("the term is durable when the vote reply exists: a crash right after keeps it", () => {
    // Without fsyncs the crash model must be able to lose the vote, or this test proves nothing.
    const lostWithoutSync = (noSync: boolean) => {
      let lost = 0
      for (let seed = 1; seed <= 40; seed++) {
        const node = startNode({ seed, noSync })
        const reply = node.bench.run(node.acceptor.handle(vote(7))) as VoteResponse
        expect(reply.voteGiven).toBe(true)
        node.bench.crash()
        // Without fsyncs the file may even come back torn or empty: lost too.
        const loaded = node.bench.exit(loadControlFile(DIRECTORY))
        if (Exit.isFailure(loaded) || loaded.value.acceptorState.term !== 7) lost++
      }
      return lost
    }
    expect(lostWithoutSync(false)).toBe(0)
    expect(lostWithoutSync(true)).toBeGreaterThan(0)
  })

  test("a vote flushes pending WAL first and reports it as flush_lsn (neon#9259)", () => {
    const node = startNode()
    const stream = electFirstTerm(node)
    const { beginLsn, bytes, ends } = stream.records(4)
    const noReply = node.bench.run(node.acceptor.appendNoFlush(append(1, beginLsn, bytes)))
    expect(noReply).toBeUndefined() // flush_lsn did not move
    expect(node.wal.positions().flushRecordLsn).toBe(TIMELINE_START)
    const reply = node.bench.run(node.acceptor.handle(vote(2))) as VoteResponse
    expect(reply.flushLsn).toBe(ends[3])
    expect(node.wal.positions().flushRecordLsn).toBe(ends[3])
    // What the reply reported survives a crash.
    expect(restartNode(node).acceptor.flushLsn()).toBe(ends[3])
  })

  test("ProposerElected with a start other than the common point is refused without change", () => {
    const node = startNode()
    const stream = electFirstTerm(node)
    const ends = writeRecords(node, stream, 1, 3)
    node.bench.run(node.acceptor.handle(vote(2)))
    const before = node.bench.loadState()
    const error = node.bench.error(node.acceptor.handle(elected(2, ends[0]!, history([1, TIMELINE_START], [2, ends[2]!]))))
    expect(error).toMatchObject({ _tag: "AcceptorError", reason: "UnexpectedStartStreamingAt" })
    expect(node.bench.loadState()).toEqual(before)
    expect(node.wal.positions().flushRecordLsn).toBe(ends[2])
    expect(node.bench.error(node.acceptor.handle(elected(2, ends[0]!, [])))).toMatchObject({ reason: "EmptyTermHistory" })
    expect(node.bench.error(node.acceptor.handle(elected(2, ends[2]!, history([1, TIMELINE_START], [2, ends[2]!]), 5))))
      .toMatchObject({ reason: "GenerationMismatch" })
  })

  test("ProposerElected for a lower term is ignored; for a higher one the term is adopted", () => {
    const node = startNode()
    const stream = electFirstTerm(node)
    const ends = writeRecords(node, stream, 1, 2)
    node.bench.run(node.acceptor.handle(vote(5)))
    const before = node.bench.loadState()
    expect(node.bench.run(node.acceptor.handle(elected(4, ends[1]!, history([1, TIMELINE_START], [4, ends[1]!]))))).toBeUndefined()
    expect(node.bench.loadState()).toEqual(before)
    // Term 6 was elected elsewhere (we did not vote): its history continues ours.
    node.bench.run(node.acceptor.handle(elected(6, ends[1]!, history([1, TIMELINE_START], [6, ends[1]!]))))
    expect(node.bench.loadState().acceptorState).toEqual({ term: 6, termHistory: history([1, TIMELINE_START], [6, ends[1]!]) })
  })

  test("truncating below commit_lsn is a fatal InvariantViolation defect, not a typed error", () => {
    const node = startNode()
    const stream = electFirstTerm(node)
    const ends = writeRecords(node, stream, 1, 5)
    node.bench.run(node.acceptor.handle(append(1, stream.endLsn, new Uint8Array(0), { commitLsn: ends[4] })))
    expect(node.acceptor.commitLsn()).toBe(ends[4])
    node.bench.run(node.acceptor.handle(vote(2)))
    // A (buggy) proposer elected with a donor that lacks committed records.
    const exit = node.bench.exit(node.acceptor.handle(elected(2, ends[1]!, history([1, TIMELINE_START], [2, ends[1]!]))))
    expect(Exit.isFailure(exit) && Cause.hasDies(exit.cause)).toBe(true)
    if (Exit.isFailure(exit)) {
      const defect = exit.cause.reasons.find(Cause.isDieReason)?.defect
      expect(defect).toBeInstanceOf(InvariantViolation)
      expect((defect as InvariantViolation).message).toMatch(/attempt to truncate committed data/)
      expect(exit.cause.reasons.some(Cause.isFailReason)).toBe(false)
    }
    expect(node.wal.positions().flushRecordLsn).toBe(ends[4])
    // The timeline is fenced: nothing more is accepted on a state known to be wrong.
    expect(node.acceptor.stoppedReason()).toMatch(/invariant violated: attempt to truncate committed data/)
    const after = node.bench.error(node.acceptor.handle(vote(3)))
    expect(after).toBeInstanceOf(AcceptorError)
    expect((after as AcceptorError).reason).toBe("Stopped")
  })
})

describe("append", () => {
  test("a stale term gets a term-only reply; a newer term before Elected is an error", () => {
    const node = startNode()
    const stream = electFirstTerm(node)
    writeRecords(node, stream, 1, 2)
    node.bench.run(node.acceptor.handle(vote(3)))
    const { beginLsn, bytes } = stream.records(1)
    const stale = node.bench.run(node.acceptor.handle(append(1, beginLsn, bytes)))
    expect(stale).toEqual({
      _tag: "AppendResponse", generation: 1, term: 3, flushLsn: 0, commitLsn: 0,
      hsFeedback: { tsUs: 0, xmin: 0n, catalogXmin: 0n }, pageserverFeedback: undefined
    })
    const early = node.bench.error(node.acceptor.handle(append(4, beginLsn, bytes)))
    expect(early).toMatchObject({ _tag: "AcceptorError", reason: "AppendBeforeElected" })
    expect(node.bench.error(node.acceptor.handle(append(3, beginLsn, bytes, { generation: 2 })))).toMatchObject({ reason: "GenerationMismatch" })
    expect(node.wal.positions().writeLsn).toBe(beginLsn)
  })

  test("an append after a restart without ProposerElected is refused by the storage", () => {
    let node = startNode()
    const stream = electFirstTerm(node)
    writeRecords(node, stream, 1, 2)
    node = restartNode(node)
    const { beginLsn, bytes } = stream.records(1)
    expect(node.bench.error(node.acceptor.handle(append(1, beginLsn, bytes)))).toMatchObject({ _tag: "WalStorageError", reason: "TruncationPending" })
  })

  test("rewrites and gaps are refused with no durable change", () => {
    const node = startNode()
    const stream = electFirstTerm(node)
    const ends = writeRecords(node, stream, 1, 3)
    const positions = node.wal.positions()
    const persisted = node.bench.loadState()
    const rewrite = node.bench.error(node.acceptor.handle(append(1, ends[0]!, new Uint8Array(16))))
    expect(rewrite).toMatchObject({ _tag: "AcceptorError", reason: "Rewrite" })
    const gap = node.bench.error(node.acceptor.handle(append(1, ends[2]! + 8, new Uint8Array(16))))
    expect(gap).toMatchObject({ _tag: "AcceptorError", reason: "Gap" })
    expect(node.wal.positions()).toEqual(positions)
    expect(node.wal.stats.writes).toBe(1)
    expect(node.bench.loadState()).toEqual(persisted)
  })

  test("commit_lsn never passes flush_lsn, and AppendResponse reports the persisted one", () => {
    const node = startNode()
    const stream = electFirstTerm(node)
    const ends = writeRecords(node, stream, 1, 2)
    // The proposer claims a commit far beyond what we hold.
    const { beginLsn, bytes, ends: more } = stream.records(2)
    const noReply = node.bench.run(node.acceptor.appendNoFlush(append(1, beginLsn, bytes, { commitLsn: 2 ** 40 })))
    expect(noReply).toBeUndefined()
    expect(node.acceptor.commitLsn()).toBe(ends[1]) // flushed end, not the written one
    const flushed = node.bench.run(node.acceptor.flush)
    expect(flushed.flushLsn).toBe(more[1])
    // Commit crossed the term start (TIMELINE_START) on the first append; persisted since.
    expect(flushed.commitLsn).toBe(node.acceptor.persistedState().commitLsn)
    const reply = node.bench.run(node.acceptor.handle(append(1, stream.endLsn, new Uint8Array(0), { commitLsn: more[1] }))) as AppendResponse
    expect(node.acceptor.commitLsn()).toBe(more[1])
    expect(reply.flushLsn).toBe(more[1])
    // In-memory commit moved, the control file did not: the reply says what is durable.
    expect(reply.commitLsn).toBeLessThan(more[1]!)
    expect(reply.commitLsn).toBe(node.bench.loadState().commitLsn)
    node.bench.run(node.acceptor.persistInMemory)
    expect(node.bench.loadState().commitLsn).toBe(more[1])
  })

  // The proposer's last message often arrives while the WAL it commits is written but not yet
  // fsynced; nothing repeats it once the compute is gone, so an idle timeline kept commit_lsn
  // below flush_lsn for good (found by the live offload test: eviction then never happened).
  test("a commit_lsn heard above flush_lsn is applied once the WAL under it is flushed", () => {
    const node = startNode()
    const stream = electFirstTerm(node)
    const ends = writeRecords(node, stream, 1, 2)
    const { beginLsn, bytes, ends: more } = stream.records(2)
    node.bench.run(node.acceptor.appendNoFlush(append(1, beginLsn, bytes, { commitLsn: more[1] })))
    expect(node.acceptor.commitLsn()).toBe(ends[1])
    node.bench.run(node.acceptor.flush)
    expect(node.acceptor.commitLsn()).toBe(more[1])
  })

  test("a pending commit_lsn is dropped by ProposerElected (the new term may truncate under it)", () => {
    const node = startNode()
    const stream = electFirstTerm(node)
    const ends = writeRecords(node, stream, 1, 2)
    const { beginLsn, bytes } = stream.records(2)
    node.bench.run(node.acceptor.appendNoFlush(append(1, beginLsn, bytes, { commitLsn: 2 ** 40 })))
    node.bench.run(node.acceptor.handle(vote(2)))
    node.bench.run(node.acceptor.handle(elected(2, ends[1]!, history([1, TIMELINE_START], [2, ends[1]!]))))
    expect(node.acceptor.snapshot().pendingCommitLsn).toBe(0)
    node.bench.run(node.acceptor.flush)
    expect(node.acceptor.commitLsn()).toBe(ends[1])
  })

  test("commit reaching the elected term's start is persisted at once (sync-safekeepers)", () => {
    const node = startNode()
    const stream = electFirstTerm(node)
    const ends = writeRecords(node, stream, 1, 4)
    node.bench.run(node.acceptor.handle(vote(2)))
    node.bench.run(node.acceptor.handle(elected(2, ends[3]!, history([1, TIMELINE_START], [2, ends[3]!]))))
    const more = writeRecords(node, stream, 2, 2, { commitLsn: ends[2] })
    expect(node.acceptor.commitLsn()).toBe(ends[2])
    expect(node.bench.loadState().commitLsn).toBe(TIMELINE_START) // below term start: memory only
    writeRecords(node, stream, 2, 1, { commitLsn: more[0] })
    expect(node.bench.loadState().commitLsn).toBe(more[0])
  })
})

describe("restart and failures", () => {
  test("restart recovers the persisted state; WAL end is at or above the persisted commit", () => {
    let node = startNode()
    const stream = electFirstTerm(node)
    const ends = writeRecords(node, stream, 1, 6, { commitLsn: 0 })
    writeRecords(node, stream, 1, 1, { commitLsn: ends[3] })
    node.bench.run(node.acceptor.persistInMemory)
    const before = node.acceptor.persistedState()
    node = restartNode(node)
    expect(node.acceptor.persistedState()).toEqual(before)
    expect(node.acceptor.term()).toBe(1)
    expect(node.acceptor.commitLsn()).toBe(ends[3])
    expect(node.acceptor.flushLsn()).toBeGreaterThanOrEqual(ends[3]!)
    expect(node.acceptor.flushLsn()).toBe(stream.endLsn)
    expect(node.acceptor.snapshot().termStartLsn).toBe(0)
    // The next proposer picks up from our end of WAL.
    const reply = node.bench.run(node.acceptor.handle(vote(2))) as VoteResponse
    expect(reply).toMatchObject({ voteGiven: true, flushLsn: stream.endLsn, termHistory: history([1, TIMELINE_START]) })
  })

  test("a WAL end below the persisted commit at load is a broken invariant", () => {
    const bench = new Bench()
    const state = freshState({ timelineStartLsn: TIMELINE_START, commitLsn: Lsn(TIMELINE_START + 4096) })
    const exit = bench.exit(makeAcceptor({ nodeId: ME, state, walStorage: MemoryWalStorage.empty(walOptions), directory: DIRECTORY, noSync: false }))
    expect(Exit.isFailure(exit) && Cause.hasDies(exit.cause)).toBe(true)
  })

  test("a failed control-file fsync stops the acceptor until it is reloaded", () => {
    const node = startNode()
    const failing: Disk["Service"] = {
      ...node.bench.disk.service(node.bench.life),
      syncDirectory: (path) => Effect.fail(new DiskError({ reason: "EIO", operation: "syncDirectory", path, message: "injected" }))
    }
    const exit = node.bench.exit(node.acceptor.handle(vote(1)), failing)
    expect(Exit.isFailure(exit) && exit.cause.reasons.some((r) => Cause.isFailReason(r) && r.error._tag === "DiskError")).toBe(true)
    expect(node.acceptor.stoppedReason()).toMatch(/EIO/)
    expect(node.bench.error(node.acceptor.handle(greeting()))).toMatchObject({ _tag: "AcceptorError", reason: "Stopped" })
  })
})

describe("greeting", () => {
  test("adopts a strictly higher generation only, and persists it", () => {
    const { bench, acceptor } = startNode()
    const next = mconf(2, 1, 2, 4)
    expect(bench.run(acceptor.handle(greeting({ mconf: next })))).toMatchObject({ mconf: next })
    expect(bench.loadState().mconf).toEqual(next)
    // Same generation with other members, or a lower one: ours stays.
    expect(bench.run(acceptor.handle(greeting({ mconf: mconf(2, 1, 5, 6) })))).toMatchObject({ mconf: next })
    expect(bench.run(acceptor.handle(greeting({ mconf: mconf(1, 1, 2, 3) })))).toMatchObject({ mconf: next })
    expect(bench.loadState().mconf).toEqual(next)
    // Requests now carry generation 2.
    expect(bench.error(acceptor.handle(vote(1, 1)))).toMatchObject({ reason: "GenerationMismatch" })
    expect(bench.run(acceptor.handle(vote(1, 2)))).toMatchObject({ generation: 2, voteGiven: true })
  })

  test("refuses a higher generation that does not include us, changing nothing", () => {
    const { bench, acceptor } = startNode()
    const before = bench.loadState()
    const error = bench.error(acceptor.handle(greeting({ mconf: mconf(3, 2, 3, 4), systemId: 42n })))
    expect(error).toMatchObject({ _tag: "AcceptorError", reason: "NotAMember" })
    expect(bench.loadState()).toEqual(before)
    // A joint configuration that adds us is fine.
    const joint: MemberConfiguration = { ...mconf(3, 2, 3, 4), newMembers: mconf(0, 1, 2, 3).members }
    expect(bench.run(acceptor.handle(greeting({ mconf: joint })))).toMatchObject({ mconf: joint })
  })

  test("checks the server and ids; another system id is refused, 0 is ignored", () => {
    const { bench, acceptor } = startNode()
    expect(bench.error(acceptor.handle(greeting({ pgVersion: 160002 })))).toMatchObject({ reason: "IncompatiblePgVersion" })
    expect(bench.error(acceptor.handle(greeting({ tenantId: TenantId("1".repeat(32)) })))).toMatchObject({ reason: "TenantMismatch" })
    expect(bench.error(acceptor.handle(greeting({ timelineId: TimelineId("1".repeat(32)) })))).toMatchObject({ reason: "TimelineMismatch" })
    expect(bench.error(acceptor.handle(greeting({ walSegSizeBytes: 2 * SEGMENT_BYTES })))).toMatchObject({ reason: "WalSegSizeMismatch" })
    bench.run(acceptor.handle(greeting({ systemId: 0n })))
    expect(bench.loadState().server.systemId).toBe(TEST_SYSTEM_ID)
    const before = bench.loadState()
    expect(bench.error(acceptor.handle(greeting({ systemId: 99n, pgVersion: 150007 })))).toMatchObject({ reason: "SystemIdMismatch" })
    expect(bench.loadState()).toEqual(before)
  })
})

describe("peer info", () => {
  test("raises commit only from a peer with our last_log_term", () => {
    const node = startNode()
    const stream = electFirstTerm(node)
    const ends = writeRecords(node, stream, 1, 4)
    const peer = { backupLsn: Lsn(0), remoteConsistentLsn: Lsn(0), peerHorizonLsn: Lsn(0) }
    node.bench.run(node.acceptor.applyPeerInfo({ ...peer, commitLsn: ends[2]!, lastLogTerm: Term(2) }))
    expect(node.acceptor.commitLsn()).toBe(TIMELINE_START)
    node.bench.run(node.acceptor.applyPeerInfo({ ...peer, commitLsn: ends[2]!, lastLogTerm: Term(1) }))
    expect(node.acceptor.commitLsn()).toBe(ends[2])
    // Never past our flush_lsn, whatever the peer has.
    node.bench.run(node.acceptor.applyPeerInfo({ ...peer, commitLsn: Lsn(2 ** 40), lastLogTerm: Term(1) }))
    expect(node.acceptor.commitLsn()).toBe(ends[3])
  })

  test("backup, remote_consistent and peer_horizon follow the peer, persisted past one segment", () => {
    const node = startNode()
    electFirstTerm(node)
    const base = node.bench.loadState()
    const peer = { commitLsn: Lsn(0), lastLogTerm: Term(1), remoteConsistentLsn: Lsn(0), peerHorizonLsn: Lsn(0) }
    node.bench.run(node.acceptor.applyPeerInfo({ ...peer, backupLsn: Lsn(TIMELINE_START + SEGMENT_BYTES) }))
    expect(node.acceptor.snapshot().inMemory.backupLsn).toBe(TIMELINE_START + SEGMENT_BYTES)
    expect(node.bench.loadState().backupLsn).toBe(base.backupLsn) // exactly one segment: memory only
    node.bench.run(node.acceptor.applyPeerInfo({ ...peer, backupLsn: Lsn(0), peerHorizonLsn: Lsn(TIMELINE_START + SEGMENT_BYTES + 8) }))
    expect(node.bench.loadState()).toMatchObject({ backupLsn: TIMELINE_START + SEGMENT_BYTES, peerHorizonLsn: TIMELINE_START + SEGMENT_BYTES + 8 })
    // Lower values never pull them back.
    expect(node.acceptor.snapshot().inMemory.backupLsn).toBe(TIMELINE_START + SEGMENT_BYTES)
  })
})

describe("plain rules", () => {
  const arbLsn = fc.integer({ min: 0, max: 2 ** 40 }).map(Lsn)

  test("advanceCommitLsn stays within [old commit, flush]", () => {
    fc.assert(fc.property(arbLsn, arbLsn, arbLsn, (a, b, candidate) => {
      const [commit, flush] = a <= b ? [a, b] : [b, a]
      const next = advanceCommitLsn(commit, candidate, flush)
      return next >= commit && next <= flush && (candidate < commit || candidate > flush || next === candidate)
    }))
  })

  test("advanceCommitLsn with commit above flush is a broken invariant", () => {
    expect(() => advanceCommitLsn(Lsn(100), Lsn(200), Lsn(50))).toThrow(InvariantViolation)
  })

  test("updateCommitLsn persists exactly when commit first reaches term_start_lsn", () => {
    fc.assert(fc.property(arbLsn, arbLsn, arbLsn, arbLsn, (persistedCommit, termStart, candidate, flushExtra) => {
      const state = { ...initialSnapshot(ME, freshState({ commitLsn: persistedCommit })), termStartLsn: termStart }
      const flushLsn = Lsn(persistedCommit + (flushExtra % 4096))
      const decision = updateCommitLsn(state, candidate, flushLsn)
      const commit = decision.next.inMemory.commitLsn
      const crosses = commit >= termStart && persistedCommit < termStart
      return decision.steps.length === (crosses ? 1 : 0) &&
        (!crosses || decision.next.persisted.commitLsn === commit)
    }))
  })

  test("a vote is given only for a term above ours, and the term never decreases", () => {
    fc.assert(fc.property(fc.nat({ max: 100 }), fc.nat({ max: 100 }), (ours, asked) => {
      const state = initialSnapshot(ME, freshState({ acceptorState: { term: Term(ours), termHistory: [] } }))
      const positions = { writeLsn: Lsn(0), flushLsn: Lsn(0), writeRecordLsn: Lsn(0), flushRecordLsn: Lsn(0) }
      const decision = decideVote(state, vote(asked), positions)
      if (Result.isFailure(decision)) return false
      const { reply, steps, next } = decision.success
      const persists = steps.filter((step) => step._tag === "PersistControlFile")
      return reply!.voteGiven === asked > ours &&
        reply!.term === Math.max(ours, asked) &&
        next.persisted.acceptorState.term === Math.max(ours, asked) &&
        persists.length === (asked > ours ? 1 : 0) &&
        steps.length === persists.length // the shell flushed WAL before deciding
    }))
  })
})

test("AcceptorError is a typed error", () => {
  expect(new AcceptorError({ reason: "Gap", message: "x" })._tag).toBe("AcceptorError")
})
