import { Effect, Result, Schema, Semaphore } from "effect"
import { assert, assertNever, InvariantViolation } from "../assert.js"
import type { Disk, DiskError } from "../io/disk.js"
import {
  type AcceptorGreeting,
  type AcceptorMessage,
  type AppendRequest,
  type AppendResponse,
  EMPTY_HOT_STANDBY_FEEDBACK,
  type ProposerElected,
  type ProposerGreeting,
  type ProposerMessage,
  type VoteRequest,
  type VoteResponse
} from "../protocol/consensus.js"
import { formatLsn, Lsn } from "../wal/lsn.js"
import { persistControlFile } from "./control-file.js"
import {
  isSupportedPgVersion,
  memberConfigurationProblem,
  type MemberConfiguration,
  type NodeId,
  type PersistedState,
  type Term,
  type TermHistory,
  termHistoryProblem
} from "./state.js"
import { findHighestCommonPoint, lastLogTerm, termHistoryUpTo } from "./term-history.js"
import type { WalPositions, WalStorage, WalStorageError } from "./wal-storage.js"

/**
 * The consensus acceptor (Neon's `SafeKeeper` in `safekeeper.rs`; reference §4 and §5).
 *
 * Plain functions decide: each rule takes the acceptor's state (and the WAL positions it
 * needs) and returns the durable steps to take, in order, the reply, and the state after.
 * The `Acceptor` shell acts: it runs the steps (control-file persists with fsync, WAL
 * writes, flushes, truncations), then hands back the reply, then moves its memory. So
 * whatever a reply depends on (a granted vote's term, a reported flush_lsn) is durable before
 * the reply exists.
 *
 * Failures come in three kinds (STYLE.md §6): a request the rules refuse is an
 * `AcceptorError` with no durable change; a stale term is a normal reply carrying our term;
 * a broken invariant ("attempt to truncate committed data", commit above flush) is an
 * `InvariantViolation` defect.
 */

// ---- errors ----

export const AcceptorErrorReason = Schema.Literals([
  "IncompatiblePgVersion", // greeting: not PostgreSQL 14-17, or another major than stored
  "TenantMismatch",
  "TimelineMismatch",
  "WalSegSizeMismatch",
  "SystemIdMismatch", // greeting: another nonzero PostgreSQL system id than the timeline's
  "NotAMember", // greeting: a newer configuration that does not include us
  "InvalidMessage", // a configuration or term history that breaks its own rules
  "GenerationMismatch", // vote, elected or append for another configuration
  "AppendBeforeElected", // append in a term above ours: ProposerElected never arrived
  "Rewrite", // append below write_lsn (a late packet of an older connection, neon#8212)
  "Gap", // append above write_lsn
  "EmptyTermHistory", // ProposerElected without a history
  "UnexpectedStartStreamingAt", // start_streaming_at is not our common point (a transient race)
  "Stopped" // an earlier durable step failed: this acceptor accepts nothing until reloaded
])
export type AcceptorErrorReason = typeof AcceptorErrorReason.Type

export class AcceptorError extends Schema.TaggedError<AcceptorError>()("AcceptorError", {
  reason: AcceptorErrorReason,
  message: Schema.String
}) {}

// ---- state ----

/**
 * The values that advance without fsync (Neon's `inmem`): persisted only when a rule says so,
 * so a crash can lose their latest moves (reference §4, §6).
 */
export interface InMemoryState {
  readonly commitLsn: Lsn
  readonly backupLsn: Lsn
  readonly peerHorizonLsn: Lsn
  readonly remoteConsistentLsn: Lsn
  readonly proposerUuid: string
}

/** Everything the rules read besides WAL positions. */
export interface AcceptorSnapshot {
  readonly nodeId: NodeId
  /** What the control file holds (the shell keeps it equal to the disk). */
  readonly persisted: PersistedState
  readonly inMemory: InMemoryState
  /**
   * Volatile: where the last elected proposer's term starts (its history's last LSN); 0 after
   * a restart. Commit crossing it is persisted at once: sync-safekeepers waits for that.
   */
  readonly termStartLsn: Lsn
  /**
   * Volatile: the highest commit_lsn heard (from this term's proposer, or a peer with our
   * last_log_term) that was above our flush_lsn then, 0 when none. commit_lsn follows it once
   * WAL up to it is flushed: the proposer's last message often arrives before the fsync of the
   * WAL it commits, and nothing else would ever repeat it (an idle timeline then kept commit
   * below flush for good). Dropped at every ProposerElected, which may truncate.
   */
  readonly pendingCommitLsn: Lsn
}

/** A peer's state as the broker reports it (the fields of `SafekeeperTimelineInfo` used here). */
export interface PeerInfo {
  readonly commitLsn: Lsn
  readonly lastLogTerm: Term
  readonly backupLsn: Lsn
  readonly remoteConsistentLsn: Lsn
  readonly peerHorizonLsn: Lsn
}

export function initialSnapshot(nodeId: NodeId, persisted: PersistedState): AcceptorSnapshot {
  return { nodeId, persisted, inMemory: inMemoryOf(persisted), termStartLsn: Lsn(0), pendingCommitLsn: Lsn(0) }
}

/** Neon's `flush_lsn()`: the storage's flushed record end, never below timeline_start_lsn. */
export function acceptorFlushLsn(state: AcceptorSnapshot, walFlushRecordLsn: Lsn): Lsn {
  return walFlushRecordLsn > state.persisted.timelineStartLsn ? walFlushRecordLsn : state.persisted.timelineStartLsn
}

/** Neon's `get_term_history()`: the persisted history cut at flush_lsn. */
export function acceptorTermHistory(state: AcceptorSnapshot, flushLsn: Lsn): TermHistory {
  return termHistoryUpTo(state.persisted.acceptorState.termHistory, flushLsn)
}

// ---- decisions ----

/** One durable action, run by the shell in order and before the reply. */
export type DurableStep =
  | { readonly _tag: "PersistControlFile"; readonly state: PersistedState }
  | { readonly _tag: "WriteWal"; readonly startLsn: Lsn; readonly bytes: Uint8Array }
  | { readonly _tag: "FlushWal" }
  | { readonly _tag: "InitializeFirstSegment"; readonly startLsn: Lsn }
  | { readonly _tag: "TruncateWal"; readonly endLsn: Lsn }

export interface Decision<Reply> {
  readonly steps: ReadonlyArray<DurableStep>
  /** Sent only after every step succeeded; undefined: no reply. */
  readonly reply: Reply | undefined
  /** The acceptor's memory once the steps are done. */
  readonly next: AcceptorSnapshot
}

/** Greeting (§5): check the proposer speaks of our timeline; adopt a newer configuration. */
export function decideGreeting(state: AcceptorSnapshot, greeting: ProposerGreeting): Result.Result<Decision<AcceptorGreeting>, AcceptorError> {
  const stored = state.persisted
  // Stored 0 (unknown) is refused too: Neon's exemption for it sits behind a parse that fails on 0.
  if (!isSupportedPgVersion(greeting.pgVersion) || !isSupportedPgVersion(stored.server.pgVersion) ||
    Math.floor(greeting.pgVersion / 10000) !== Math.floor(stored.server.pgVersion / 10000)) {
    return refuse("IncompatiblePgVersion", `server version ${greeting.pgVersion}, stored ${stored.server.pgVersion}`)
  }
  if (greeting.tenantId !== stored.tenantId) return refuse("TenantMismatch", `tenant ${greeting.tenantId}, expected ${stored.tenantId}`)
  if (greeting.timelineId !== stored.timelineId) {
    return refuse("TimelineMismatch", `timeline ${greeting.timelineId}, expected ${stored.timelineId}`)
  }
  if (greeting.walSegSizeBytes !== stored.server.walSegSizeBytes) {
    return refuse("WalSegSizeMismatch", `wal_seg_size ${greeting.walSegSizeBytes}, expected ${stored.server.walSegSizeBytes}`)
  }
  const mconfProblem = memberConfigurationProblem(greeting.mconf)
  if (mconfProblem !== undefined) return refuse("InvalidMessage", `greeting configuration: ${mconfProblem}`)
  const adoptConfiguration = greeting.mconf.generation > stored.mconf.generation
  if (adoptConfiguration && !isMember(greeting.mconf, state.nodeId)) {
    return refuse("NotAMember", `generation ${greeting.mconf.generation} does not include node ${state.nodeId}`)
  }
  // sync-safekeepers does not know the system id and sends 0. Another nonzero id is another
  // PostgreSQL cluster: its WAL must not join ours (Neon adopts it with a warning; the segment
  // store would then refuse our own long page headers). A timeline not knowing its id adopts one.
  if (greeting.systemId !== 0n && stored.server.systemId !== 0n && greeting.systemId !== stored.server.systemId) {
    return refuse("SystemIdMismatch", `system id ${greeting.systemId}, but this timeline holds WAL of system ${stored.server.systemId}`)
  }
  const adoptSystemId = greeting.systemId !== 0n && greeting.systemId !== stored.server.systemId
  // Every check is done before anything is persisted, so a refused greeting changes nothing
  // (Neon persists the system id before the membership check).
  let next = state
  const steps: DurableStep[] = []
  if (adoptSystemId || adoptConfiguration) {
    const changed = change(state, (s) => ({
      ...s,
      server: adoptSystemId ? { ...s.server, systemId: greeting.systemId, pgVersion: greeting.pgVersion } : s.server,
      mconf: adoptConfiguration ? greeting.mconf : s.mconf
    }))
    next = changed.next
    steps.push(...changed.steps)
  }
  const reply: AcceptorGreeting = {
    _tag: "AcceptorGreeting",
    nodeId: state.nodeId,
    mconf: next.persisted.mconf,
    term: next.persisted.acceptorState.term
  }
  return Result.succeed({ steps, reply, next })
}

/**
 * VoteRequest (§5): the shell flushes WAL first (the new leader must see our true end of WAL,
 * neon#9259) and passes the positions after that flush; we vote only for a term above ours,
 * persisting it before the reply leaves. An equal term gets vote_given = false: we never vote
 * twice in one term. The reported flush_lsn is the flushed record boundary, which after an
 * XLOG_SWITCH whose padding is still partial lies below write_record_lsn: reporting the latter
 * would promise WAL that a later TIMELINE_STATUS does not show (the neon#9259 panic).
 */
export function decideVote(state: AcceptorSnapshot, request: VoteRequest, walAfterFlush: WalPositions): Result.Result<Decision<VoteResponse>, AcceptorError> {
  const generationProblem = generationMismatch(state, request.generation)
  if (generationProblem !== undefined) return Result.fail(generationProblem)
  const flushLsn = acceptorFlushLsn(state, walAfterFlush.flushRecordLsn)
  const steps: DurableStep[] = []
  let next = state
  let voteGiven = false
  if (state.persisted.acceptorState.term < request.term) {
    const changed = change(state, (s) => ({ ...s, acceptorState: { ...s.acceptorState, term: request.term } }))
    next = changed.next
    steps.push(...changed.steps)
    voteGiven = true
  }
  const reply: VoteResponse = {
    _tag: "VoteResponse",
    generation: state.persisted.mconf.generation,
    term: next.persisted.acceptorState.term,
    voteGiven,
    flushLsn,
    truncateLsn: state.inMemory.peerHorizonLsn,
    termHistory: acceptorTermHistory(state, flushLsn)
  }
  return Result.succeed({ steps, reply, next })
}

/**
 * ProposerElected (§5): adopt the term, truncate our WAL to the point where our log and the
 * proposer's stop agreeing (which must be where the proposer will stream from), and adopt its
 * history. Never a reply. Truncating below commit_lsn is a broken invariant, not a refusal.
 */
export function decideElected(state: AcceptorSnapshot, elected: ProposerElected, wal: WalPositions): Result.Result<Decision<undefined>, AcceptorError> {
  const generationProblem = generationMismatch(state, elected.generation)
  if (generationProblem !== undefined) return Result.fail(generationProblem)
  const historyProblem = termHistoryProblem(elected.termHistory)
  if (historyProblem !== undefined) return refuse("InvalidMessage", `proposer term history: ${historyProblem}`)
  const proposerLast = elected.termHistory[elected.termHistory.length - 1]
  if (proposerLast === undefined) return refuse("EmptyTermHistory", `ProposerElected for term ${elected.term} carries no term history`)
  if (proposerLast.term > elected.term) {
    return refuse("InvalidMessage", `proposer term history reaches term ${proposerLast.term}, above its term ${elected.term}`)
  }
  const steps: DurableStep[] = []
  let next = state
  if (state.persisted.acceptorState.term < elected.term) {
    const changed = change(state, (s) => ({ ...s, acceptorState: { ...s.acceptorState, term: elected.term } }))
    next = changed.next
    steps.push(...changed.steps)
  }
  // A newer term has voted us away from this proposer; its next AppendResponse tells it so.
  if (next.persisted.acceptorState.term > elected.term) return Result.succeed({ steps: [], reply: undefined, next: state })
  const flushLsn = acceptorFlushLsn(next, wal.flushRecordLsn)
  const acceptorHistory = acceptorTermHistory(next, flushLsn)
  // No common point: stream from the start of the proposer's history.
  const commonPoint = findHighestCommonPoint(elected.termHistory, acceptorHistory, flushLsn) ?? elected.termHistory[0]!
  // A late ProposerElected after another connection of the same proposer wrote and flushed
  // more WAL: transient, the proposer reconnects and recomputes (Neon's comment).
  if (commonPoint.lsn !== elected.startStreamingAt) {
    return refuse(
      "UnexpectedStartStreamingAt",
      `start_streaming_at ${formatLsn(elected.startStreamingAt)}, but our common point is (${commonPoint.term}, ${formatLsn(commonPoint.lsn)}) with flush_lsn ${formatLsn(flushLsn)}`
    )
  }
  assert(
    elected.startStreamingAt >= next.inMemory.commitLsn,
    `attempt to truncate committed data: start_streaming_at=${formatLsn(elected.startStreamingAt)}, commit_lsn=${formatLsn(next.inMemory.commitLsn)}, term=${elected.term}`
  )
  // The compute's stream lacks the first segment's headers; writing them again after a crash
  // before the first flush is harmless (Neon's comment).
  if (wal.flushRecordLsn === 0) steps.push({ _tag: "InitializeFirstSegment", startLsn: elected.startStreamingAt })
  steps.push({ _tag: "TruncateWal", endLsn: elected.startStreamingAt })
  const timelineStart = elected.termHistory[0]!.lsn
  const adopted = change(next, (s) => {
    const timelineStartLsn = s.timelineStartLsn === 0 ? timelineStart : s.timelineStartLsn
    return {
      ...s,
      timelineStartLsn,
      peerHorizonLsn: s.peerHorizonLsn === 0 ? timelineStartLsn : s.peerHorizonLsn,
      localStartLsn: s.localStartLsn === 0 ? elected.startStreamingAt : s.localStartLsn,
      // Commit at timeline start before the first flushed record lets end-of-WAL search skip
      // the hole at the start of the first segment.
      commitLsn: maxLsn(s.commitLsn, timelineStartLsn),
      backupLsn: maxLsn(s.backupLsn, timelineStartLsn),
      remoteConsistentLsn: maxLsn(s.remoteConsistentLsn, timelineStartLsn),
      acceptorState: { ...s.acceptorState, termHistory: elected.termHistory }
    }
  })
  steps.push(...adopted.steps)
  next = { ...adopted.next, termStartLsn: proposerLast.lsn, pendingCommitLsn: Lsn(0) }
  return Result.succeed({ steps, reply: undefined, next })
}

/** The first half of AppendRequest: refuse, answer a stale term, or write. */
export type AppendPlan =
  | { readonly _tag: "StaleTerm"; readonly reply: AppendResponse }
  | { readonly _tag: "Write"; readonly steps: ReadonlyArray<DurableStep> }

/**
 * AppendRequest (§5), before the write: generation and term checks, then writes must continue
 * exactly at write_lsn (ProposerElected truncated to the right place first).
 */
export function decideAppend(
  state: AcceptorSnapshot,
  request: AppendRequest,
  wal: WalPositions,
  options: { readonly requireFlush: boolean }
): Result.Result<AppendPlan, AcceptorError> {
  const generationProblem = generationMismatch(state, request.generation)
  if (generationProblem !== undefined) return Result.fail(generationProblem)
  const term = state.persisted.acceptorState.term
  if (term < request.term) return refuse("AppendBeforeElected", `AppendRequest in term ${request.term} before ProposerElected (our term ${term})`)
  if (term > request.term) {
    const reply: AppendResponse = {
      _tag: "AppendResponse",
      generation: state.persisted.mconf.generation,
      term,
      flushLsn: Lsn(0),
      commitLsn: Lsn(0),
      hsFeedback: EMPTY_HOT_STANDBY_FEEDBACK,
      pageserverFeedback: undefined
    }
    return Result.succeed({ _tag: "StaleTerm", reply })
  }
  if (wal.writeLsn > request.beginLsn) {
    return refuse("Rewrite", `append at ${formatLsn(request.beginLsn)} rewrites WAL written before (write_lsn ${formatLsn(wal.writeLsn)})`)
  }
  if (wal.writeLsn < request.beginLsn && wal.writeLsn !== 0) {
    return refuse("Gap", `append at ${formatLsn(request.beginLsn)} leaves a gap after write_lsn ${formatLsn(wal.writeLsn)}`)
  }
  const steps: DurableStep[] = []
  if (request.walData.byteLength > 0) steps.push({ _tag: "WriteWal", startLsn: request.beginLsn, bytes: request.walData })
  if (options.requireFlush) steps.push({ _tag: "FlushWal" })
  return Result.succeed({ _tag: "Write", steps })
}

/**
 * AppendRequest (§5), after the write: advance commit_lsn within what we hold, remember the
 * proposer's truncate_lsn, and answer only when flush_lsn moved (or a flush was asked for).
 */
export function completeAppend(
  state: AcceptorSnapshot,
  request: AppendRequest,
  walBefore: WalPositions,
  walAfter: WalPositions,
  options: { readonly requireFlush: boolean }
): Decision<AppendResponse> {
  const flushLsn = acceptorFlushLsn(state, walAfter.flushRecordLsn)
  let next = state
  const steps: DurableStep[] = []
  if (request.commitLsn !== 0) {
    const updated = updateCommitLsn(state, request.commitLsn, flushLsn)
    next = updated.next
    steps.push(...updated.steps)
  }
  // The proposer's value may lag ours (it may have heard a restarted acceptor's older one).
  next = { ...next, inMemory: { ...next.inMemory, peerHorizonLsn: maxLsn(next.inMemory.peerHorizonLsn, request.truncateLsn) } }
  // Neon compares the storage's flush_lsn before with the derived one after.
  if (!options.requireFlush && walBefore.flushRecordLsn === flushLsn) return { steps, reply: undefined, next }
  return { steps, reply: appendResponse(next, flushLsn), next }
}

/** FlushWAL (§5, internal): the shell fsyncs what was written, then we report from the positions after it. */
export function decideFlush(state: AcceptorSnapshot, walAfterFlush: WalPositions): Decision<AppendResponse> {
  const flushLsn = acceptorFlushLsn(state, walAfterFlush.flushRecordLsn)
  if (state.pendingCommitLsn === 0) return { steps: [], reply: appendResponse(state, flushLsn), next: state }
  const updated = updateCommitLsn(state, Lsn(0), flushLsn)
  return { steps: updated.steps, reply: appendResponse(updated.next, flushLsn), next: updated.next }
}

/**
 * Peer info from the broker (§5, §10): a peer with our last_log_term may raise our commit_lsn;
 * backup, remote_consistent and peer_horizon follow the highest value heard, persisted once
 * one runs more than a segment ahead of the control file.
 */
export function decidePeerInfo(state: AcceptorSnapshot, peer: PeerInfo, wal: WalPositions): Decision<undefined> {
  const flushLsn = acceptorFlushLsn(state, wal.flushRecordLsn)
  let next = state
  const steps: DurableStep[] = []
  // Too strict (any peer whose history contains ours would do), but safe: Neon's rule.
  if (peer.commitLsn !== 0 && peer.lastLogTerm === lastLogTerm(state.persisted.acceptorState.termHistory, flushLsn)) {
    const updated = updateCommitLsn(state, peer.commitLsn, flushLsn)
    next = updated.next
    steps.push(...updated.steps)
  }
  const inMemory: InMemoryState = {
    ...next.inMemory,
    backupLsn: maxLsn(next.inMemory.backupLsn, peer.backupLsn),
    remoteConsistentLsn: maxLsn(next.inMemory.remoteConsistentLsn, peer.remoteConsistentLsn),
    peerHorizonLsn: maxLsn(next.inMemory.peerHorizonLsn, peer.peerHorizonLsn)
  }
  next = { ...next, inMemory }
  const segmentBytes = next.persisted.server.walSegSizeBytes
  const persisted = next.persisted
  if (persisted.backupLsn + segmentBytes < inMemory.backupLsn ||
    persisted.remoteConsistentLsn + segmentBytes < inMemory.remoteConsistentLsn ||
    persisted.peerHorizonLsn + segmentBytes < inMemory.peerHorizonLsn) {
    const flushed = change(next, (s) => s)
    next = flushed.next
    steps.push(...flushed.steps)
  }
  return { steps, reply: undefined, next }
}

/** Neon's `TimelineState::flush`: persist the in-memory values if they moved. */
export function decidePersistInMemory(state: AcceptorSnapshot): Decision<undefined> {
  const flushed = change(state, (s) => s)
  return { steps: flushed.steps, reply: undefined, next: flushed.next }
}

/**
 * Neon's `update_commit_lsn`: take the highest commit heard, but never past what we hold. The
 * first time commit reaches the elected term's start it is persisted at once: sync-safekeepers
 * waits for a majority of persisted commit_lsn to get there.
 */
export function updateCommitLsn(state: AcceptorSnapshot, heard: Lsn, flushLsn: Lsn): Decision<undefined> {
  const candidate = maxLsn(heard, state.pendingCommitLsn)
  const commitLsn = advanceCommitLsn(state.inMemory.commitLsn, candidate, flushLsn)
  const next: AcceptorSnapshot = {
    ...state,
    inMemory: { ...state.inMemory, commitLsn },
    pendingCommitLsn: candidate > commitLsn ? candidate : Lsn(0)
  }
  if (commitLsn >= state.termStartLsn && state.persisted.commitLsn < state.termStartLsn) {
    const flushed = change(next, (s) => s)
    return { steps: flushed.steps, reply: undefined, next: flushed.next }
  }
  return { steps: [], reply: undefined, next }
}

/** commit_lsn moves to the candidate, kept within [current, flush]. */
export function advanceCommitLsn(current: Lsn, candidate: Lsn, flushLsn: Lsn): Lsn {
  assert(current <= flushLsn, `commit_lsn ${formatLsn(current)} passed flush_lsn ${formatLsn(flushLsn)}`)
  const commitLsn = Lsn(Math.min(Math.max(candidate, current), flushLsn))
  assert(commitLsn >= current, `commit_lsn monotonicity violated: old=${formatLsn(current)} new=${formatLsn(commitLsn)}`)
  return commitLsn
}

// ---- the shell ----

export interface AcceptorOptions {
  readonly nodeId: NodeId
  /** The timeline's state as loaded from its control file. */
  readonly state: PersistedState
  readonly walStorage: WalStorage
  /** The directory holding `safekeeper.control`. */
  readonly directory: string
  /** `--no-sync`: skip control-file fsyncs (tests and benchmarks only). */
  readonly noSync: boolean
}

export type AcceptorFailure = AcceptorError | WalStorageError | DiskError

export interface Acceptor {
  /** One proposer message; an AppendRequest is written and flushed before its reply. */
  handle(message: ProposerMessage): Effect.Effect<AcceptorMessage | undefined, AcceptorFailure, Disk>
  /** Neon's NoFlushAppendRequest: written, not flushed; a reply only if flush_lsn moved. */
  appendNoFlush(request: AppendRequest): Effect.Effect<AppendResponse | undefined, AcceptorFailure, Disk>
  /** Neon's FlushWAL: fsync the WAL written so far and report. */
  readonly flush: Effect.Effect<AppendResponse, AcceptorFailure, Disk>
  /** A peer's state from the broker. */
  applyPeerInfo(peer: PeerInfo): Effect.Effect<void, AcceptorFailure, Disk>
  /** Persist the in-memory values if they moved (the timeline manager's periodic save). */
  readonly persistInMemory: Effect.Effect<void, AcceptorFailure, Disk>
  /**
   * Neon's start_change/finish_change for background tasks (partial backup, eviction): the
   * persisted state with the in-memory values laid over it, modified, and persisted (fsync,
   * rename, directory fsync) before memory follows. Nothing is written when nothing changed.
   */
  modifyPersisted(modify: (draft: PersistedState) => PersistedState): Effect.Effect<void, AcceptorFailure, Disk>
  /** The whole state, as of the last completed request. */
  snapshot(): AcceptorSnapshot
  term(): Term
  /** max(storage flush_record_lsn, timeline_start_lsn). */
  flushLsn(): Lsn
  /** The in-memory commit_lsn (what every interface but AppendResponse reports). */
  commitLsn(): Lsn
  lastLogTerm(): Term
  /** The term history up to flush_lsn. */
  termHistory(): TermHistory
  /** What the control file holds. */
  persistedState(): PersistedState
  /** Why this acceptor stopped, or undefined while it works. */
  stoppedReason(): string | undefined
}

/**
 * The acceptor of one timeline over its control file and WAL storage. Requests run one at a
 * time (Neon holds the timeline's write lock). Each runs its decision's durable steps in order,
 * then returns the reply, then moves memory. A Disk failure in a step stops the acceptor: the
 * disk's state is then unknown (a failed fsync is never retried), and only a reload from disk
 * may continue.
 */
export const makeAcceptor = Effect.fn("Acceptor.make")(function* (options: AcceptorOptions) {
  const wal = options.walStorage
  let state = initialSnapshot(options.nodeId, options.state)
  assert(
    acceptorFlushLsn(state, wal.positions().flushRecordLsn) >= state.persisted.commitLsn,
    `WAL found ends at ${formatLsn(wal.positions().flushRecordLsn)}, below the persisted commit_lsn ${formatLsn(state.persisted.commitLsn)}`
  )
  const lock = yield* Semaphore.make(1)
  let stoppedReason: string | undefined

  const runStep = Effect.fnUntraced(function* (step: DurableStep) {
    switch (step._tag) {
      case "PersistControlFile":
        yield* persistControlFile(options.directory, step.state, { noSync: options.noSync })
        // The disk now holds it: memory follows at once (Neon's finish_change), so a later
        // failing step cannot leave memory behind the disk.
        state = { ...state, persisted: step.state, inMemory: inMemoryOf(step.state) }
        return
      case "WriteWal":
        return yield* wal.write(step.startLsn, step.bytes)
      case "FlushWal": {
        yield* wal.flush
        const positions = wal.positions()
        // Every written byte is durable; the record boundary may trail (XLOG_SWITCH padding).
        assert(positions.flushLsn === positions.writeLsn, `WAL flush left flush_lsn ${formatLsn(positions.flushLsn)} below write_lsn ${formatLsn(positions.writeLsn)}`)
        assert(positions.flushRecordLsn <= positions.writeRecordLsn, "flush_record_lsn passed write_record_lsn")
        return
      }
      case "InitializeFirstSegment":
        return yield* wal.initializeFirstSegment(step.startLsn)
      case "TruncateWal":
        assert(step.endLsn >= state.inMemory.commitLsn, `attempt to truncate committed data: end=${formatLsn(step.endLsn)} commit_lsn=${formatLsn(state.inMemory.commitLsn)}`)
        return yield* wal.truncate(step.endLsn)
      default:
        return assertNever(step, "durable step")
    }
  })

  const runSteps = (steps: ReadonlyArray<DurableStep>) =>
    Effect.forEach(steps, runStep, { discard: true }).pipe(
      Effect.tapError((error) =>
        Effect.sync(() => {
          if (error._tag === "DiskError") stoppedReason = `${error.operation} ${error.path}: ${error.reason} ${error.message}`
        })
      )
    )

  /** Runs a decision: steps, then the reply, then memory. */
  const act = <Reply>(decision: Decision<Reply>) =>
    Effect.map(runSteps(decision.steps), () => {
      state = decision.next
      return decision.reply
    })

  /**
   * One request at a time, and none once stopped. A broken invariant stays a defect for the
   * caller (a bug, never handled as input) and also fences this timeline: every later request
   * fails with Stopped, so nothing more is written on a state known to be wrong, while the
   * process and its other timelines go on.
   */
  const exclusive = <A, E>(effect: Effect.Effect<A, E, Disk>): Effect.Effect<A, E | AcceptorError, Disk> =>
    lock.withPermit(Effect.suspend((): Effect.Effect<A, E | AcceptorError, Disk> =>
      stoppedReason === undefined
        ? effect.pipe(Effect.tapDefect((defect) =>
          Effect.sync(() => {
            stoppedReason = defect instanceof InvariantViolation ? `invariant violated: ${defect.message}` : `defect: ${String(defect)}`
          })
        ))
        : Effect.fail(new AcceptorError({ reason: "Stopped", message: `acceptor stopped after: ${stoppedReason}` }))
    ))

  const append = (request: AppendRequest, requireFlush: boolean) =>
    Effect.gen(function* () {
      const walBefore = wal.positions()
      const plan = yield* Effect.fromResult(decideAppend(state, request, walBefore, { requireFlush }))
      if (plan._tag === "StaleTerm") return plan.reply
      yield* runSteps(plan.steps)
      return yield* act(completeAppend(state, request, walBefore, wal.positions(), { requireFlush }))
    })

  /** Flushes WAL, then decides from the positions after the flush (vote, FlushWAL). */
  const flushThen = <Reply extends AcceptorMessage>(decide: () => Result.Result<Decision<Reply>, AcceptorError>) =>
    Effect.andThen(runSteps([{ _tag: "FlushWal" }]), Effect.suspend(() => Effect.flatMap(Effect.fromResult(decide()), act)))

  const handleMessage = (message: ProposerMessage): Effect.Effect<AcceptorMessage | undefined, AcceptorFailure, Disk> => {
    switch (message._tag) {
      case "ProposerGreeting":
        return Effect.flatMap(Effect.fromResult(decideGreeting(state, message)), act)
      case "VoteRequest":
        return flushThen(() => decideVote(state, message, wal.positions()))
      case "ProposerElected":
        return Effect.flatMap(Effect.fromResult(decideElected(state, message, wal.positions())), act)
      case "AppendRequest":
        return append(message, true)
      default:
        return assertNever(message, "proposer message")
    }
  }

  const acceptor: Acceptor = {
    // Decisions read `state` when they run, under the lock: hence the suspends.
    handle: (message) => exclusive(Effect.suspend(() => handleMessage(message))),
    appendNoFlush: (request) => exclusive(append(request, false)),
    flush: exclusive(flushThen(() => Result.succeed(decideFlush(state, wal.positions())))).pipe(
      Effect.map((reply) => {
        assert(reply !== undefined, "FlushWAL always replies")
        return reply
      })
    ),
    applyPeerInfo: (peer) => exclusive(Effect.suspend(() => act(decidePeerInfo(state, peer, wal.positions())))).pipe(Effect.asVoid),
    persistInMemory: exclusive(Effect.suspend(() => act(decidePersistInMemory(state)))).pipe(Effect.asVoid),
    modifyPersisted: (modify) => exclusive(Effect.suspend(() => act(change(state, modify)))).pipe(Effect.asVoid),
    snapshot: () => state,
    term: () => state.persisted.acceptorState.term,
    flushLsn: () => acceptorFlushLsn(state, wal.positions().flushRecordLsn),
    commitLsn: () => state.inMemory.commitLsn,
    lastLogTerm: () => lastLogTerm(state.persisted.acceptorState.termHistory, acceptorFlushLsn(state, wal.positions().flushRecordLsn)),
    termHistory: () => acceptorTermHistory(state, acceptorFlushLsn(state, wal.positions().flushRecordLsn)),
    persistedState: () => state.persisted,
    stoppedReason: () => stoppedReason
  }
  return acceptor
})

// ---- helpers ----

function refuse(reason: AcceptorErrorReason, message: string): Result.Result<never, AcceptorError> {
  return Result.fail(new AcceptorError({ reason, message }))
}

function generationMismatch(state: AcceptorSnapshot, generation: number): AcceptorError | undefined {
  const mine = state.persisted.mconf.generation
  return generation === mine
    ? undefined
    : new AcceptorError({ reason: "GenerationMismatch", message: `generation ${generation}, ours is ${mine}` })
}

function isMember(mconf: MemberConfiguration, nodeId: NodeId): boolean {
  return mconf.members.some((member) => member.id === nodeId) ||
    (mconf.newMembers?.some((member) => member.id === nodeId) ?? false)
}

function appendResponse(state: AcceptorSnapshot, flushLsn: Lsn): AppendResponse {
  return {
    _tag: "AppendResponse",
    generation: state.persisted.mconf.generation,
    term: state.persisted.acceptorState.term,
    flushLsn,
    // The persisted value: sync-safekeepers must know a majority has it durable (§17).
    commitLsn: state.persisted.commitLsn,
    // The connection fills in hot standby feedback from its walsenders (§9).
    hsFeedback: EMPTY_HOT_STANDBY_FEEDBACK,
    pageserverFeedback: undefined
  }
}

function inMemoryOf(persisted: PersistedState): InMemoryState {
  return {
    commitLsn: persisted.commitLsn,
    backupLsn: persisted.backupLsn,
    peerHorizonLsn: persisted.peerHorizonLsn,
    remoteConsistentLsn: persisted.remoteConsistentLsn,
    proposerUuid: persisted.proposerUuid
  }
}

/**
 * Neon's start_change/finish_change: copy the persisted state with the in-memory values laid
 * over it, modify it, persist it only if it differs from the control file, and refresh the
 * in-memory values from it.
 */
function change(state: AcceptorSnapshot, modify: (draft: PersistedState) => PersistedState): Decision<undefined> {
  const { inMemory } = state
  const draft: PersistedState = {
    ...state.persisted,
    commitLsn: inMemory.commitLsn,
    backupLsn: inMemory.backupLsn,
    peerHorizonLsn: inMemory.peerHorizonLsn,
    remoteConsistentLsn: inMemory.remoteConsistentLsn,
    proposerUuid: inMemory.proposerUuid
  }
  const changed = modify(draft)
  const next: AcceptorSnapshot = { ...state, persisted: changed, inMemory: inMemoryOf(changed) }
  if (plainEquals(changed, state.persisted)) return { steps: [], reply: undefined, next: { ...next, persisted: state.persisted } }
  return { steps: [{ _tag: "PersistControlFile", state: changed }], reply: undefined, next }
}

function maxLsn(a: Lsn, b: Lsn): Lsn {
  return a >= b ? a : b
}

/** Structural equality of plain data (objects, arrays, primitives, bigints). */
function plainEquals(a: unknown, b: unknown): boolean {
  if (a === b) return true
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false
  if (Array.isArray(a) !== Array.isArray(b)) return false
  const aKeys = Object.keys(a)
  const bKeys = Object.keys(b)
  if (aKeys.length !== bKeys.length) return false
  const aRecord = a as Record<string, unknown>
  const bRecord = b as Record<string, unknown>
  return aKeys.every((key) => Object.prototype.hasOwnProperty.call(bRecord, key) && plainEquals(aRecord[key], bRecord[key]))
}
