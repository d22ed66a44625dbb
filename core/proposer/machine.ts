import { Schema } from "effect"
import { assert, assertNever } from "../assert.js"
import {
  EMPTY_MEMBER_CONFIGURATION,
  INITIAL_TERM,
  type MemberConfiguration,
  type NodeId,
  type TenantId,
  Term,
  type TermHistory,
  type TimelineId
} from "../acceptor/state.js"
import type { LogFields, LogLevel } from "../io/log.js"
import type {
  AcceptorGreeting,
  AcceptorMessage,
  AppendResponse,
  ProposerElected,
  ProposerGreeting,
  VoteRequest,
  VoteResponse
} from "../protocol/consensus.js"
import { DEFAULT_WAL_SEGMENT_SIZE_BYTES, formatLsn, Lsn } from "../wal/lsn.js"
import { SIZE_OF_XLOG_LONG_PHD_BYTES } from "../wal/page.js"
import {
  advanceTruncateLsn,
  electionOutcome,
  hasQuorum,
  type MemberSet,
  memberSets,
  proposerTermHistory,
  quorumCommitLsn,
  startStreamingAt,
  type Vote
} from "./quorum.js"

/**
 * The walproposer as a state machine (reference §14; walproposer.c): plain transitions from
 * an event (a connection opened or failed, a message arrived, a timer ticked, new WAL) to the
 * next state and the actions the shell must take (connect, send, stream, log, finish). It
 * decides everything the C code decides; proposer.ts only acts. Per safekeeper:
 * Offline → Connecting → HandshakeRecv → WaitVoting → WaitVerdict → WaitElected → Active;
 * globally: CollectingTerms → Campaign → Elected → Done.
 *
 * Deliberate differences from the C code, each on the safe side:
 * - Terms are collected from a quorum of safekeepers greeted on their current connection
 *   (Neon's legacy `n_connected` counts greetings and never decreases).
 * - A safekeeper that granted us our term and reconnects during the campaign refuses the
 *   repeated VoteRequest (equal term); we keep its earlier vote instead of exiting ("missing
 *   majority of votes" in Neon's simulation). A vote is durable, so it stays valid.
 * - `quorumTimeoutUs` ends the proposer with NoQuorum when it is not elected, or commit_lsn
 *   does not move while WAL waits, for that long (Neon waits forever).
 */

// ---- configuration ----

export const RECONNECT_TIMEOUT_US_DEFAULT = 1_000_000
export const CONNECTION_TIMEOUT_US_DEFAULT = 10_000_000
export const HEARTBEAT_INTERVAL_US_DEFAULT = 1_000_000
export const QUORUM_TIMEOUT_US_DEFAULT = 30_000_000
/** PG_VERSION_NUM sent in greetings unless told otherwise (PostgreSQL 15.4). */
export const PG_VERSION_NUM_DEFAULT = 150004

export interface ProposerConfig {
  readonly tenantId: TenantId
  readonly timelineId: TimelineId
  /** Safekeeper addresses; a safekeeper's slot is its index here. */
  readonly safekeepers: ReadonlyArray<string>
  /** The configuration to greet with (EMPTY: generation 0, legacy quorum over all safekeepers). */
  readonly mconf: MemberConfiguration
  readonly pgVersion: number
  /** 0 from sync-safekeepers (it does not know it). */
  readonly systemId: bigint
  readonly walSegSizeBytes: number
  /** Elect, bring a quorum to the donor's end, return that LSN (compute_ctl runs it before start). */
  readonly syncSafekeepers: boolean
  /** Where a brand-new timeline's WAL starts (the basebackup LSN of a compute): a record start. */
  readonly initialLsn: Lsn
  readonly reconnectTimeoutUs: number
  /** Drop a connection that sent nothing for this long (also bounds a connection attempt). */
  readonly connectionTimeoutUs: number
  /** Send an empty AppendRequest to every safekeeper when nothing was sent for this long. */
  readonly heartbeatIntervalUs: number
  /** Give up (NoQuorum) when not elected, or commit_lsn stuck, for this long; Infinity: never. */
  readonly quorumTimeoutUs: number
}

/** The default initial LSN: just past the long page header of segment 1 (0/1000028 with 16 MiB segments). */
export function defaultInitialLsn(walSegSizeBytes: number): Lsn {
  return Lsn(walSegSizeBytes + SIZE_OF_XLOG_LONG_PHD_BYTES)
}

export type ProposerConfigInput =
  & Pick<ProposerConfig, "tenantId" | "timelineId" | "safekeepers">
  & Partial<Omit<ProposerConfig, "tenantId" | "timelineId" | "safekeepers">>

export function resolveConfig(input: ProposerConfigInput): ProposerConfig {
  const walSegSizeBytes = input.walSegSizeBytes ?? DEFAULT_WAL_SEGMENT_SIZE_BYTES
  const config: ProposerConfig = {
    tenantId: input.tenantId,
    timelineId: input.timelineId,
    safekeepers: input.safekeepers,
    mconf: input.mconf ?? EMPTY_MEMBER_CONFIGURATION,
    pgVersion: input.pgVersion ?? PG_VERSION_NUM_DEFAULT,
    systemId: input.systemId ?? 0n,
    walSegSizeBytes,
    syncSafekeepers: input.syncSafekeepers ?? false,
    initialLsn: input.initialLsn ?? defaultInitialLsn(walSegSizeBytes),
    reconnectTimeoutUs: input.reconnectTimeoutUs ?? RECONNECT_TIMEOUT_US_DEFAULT,
    connectionTimeoutUs: input.connectionTimeoutUs ?? CONNECTION_TIMEOUT_US_DEFAULT,
    heartbeatIntervalUs: input.heartbeatIntervalUs ?? HEARTBEAT_INTERVAL_US_DEFAULT,
    quorumTimeoutUs: input.quorumTimeoutUs ?? QUORUM_TIMEOUT_US_DEFAULT
  }
  assert(config.safekeepers.length >= 1, "the proposer has safekeepers")
  assert(new Set(config.safekeepers).size === config.safekeepers.length, "safekeeper addresses are distinct")
  assert(config.reconnectTimeoutUs > 0 && config.connectionTimeoutUs > 0 && config.heartbeatIntervalUs > 0, "timeouts are positive")
  assert(config.quorumTimeoutUs > 0, "the quorum timeout is positive")
  assert(config.initialLsn > 0, "the initial LSN is a valid LSN")
  return config
}

// ---- errors ----

export const ProposerErrorReason = Schema.Literals([
  "HigherTerm", // a greeting, vote or append response carried a term above ours: another proposer runs
  "VoteRefused", // a vote was refused at our term during the campaign: someone else has that term
  "NoQuorum", // not elected, or commit_lsn stuck, for quorumTimeoutUs
  "ConfigurationChanged", // a safekeeper has a newer configuration after the campaign began: restart in it
  "InvalidConfiguration", // a newer configuration with no members
  "GenerationMismatch", // an append response for another configuration
  "WalUnavailable" // WAL a safekeeper needs is neither in our buffer nor on any peer
])
export type ProposerErrorReason = typeof ProposerErrorReason.Type

/** Why the proposer stopped (Neon: FATAL, and the compute restarts the walproposer). */
export class ProposerError extends Schema.TaggedError<ProposerError>()("ProposerError", {
  reason: ProposerErrorReason,
  /** Our term when we stopped (0 before the campaign). */
  term: Schema.Number,
  message: Schema.String
}) {}

// ---- state ----

export type SafekeeperStatus = "Offline" | "Connecting" | "HandshakeRecv" | "WaitVoting" | "WaitVerdict" | "WaitElected" | "Active"

export interface SafekeeperState {
  readonly address: string
  readonly status: SafekeeperStatus
  /** Counts connection attempts: events of an older connection are dropped. */
  readonly connectionNo: number
  /** When the current connection last sent something (or its attempt began). */
  readonly lastHeardUs: number
  /** From its greeting. */
  readonly nodeId: NodeId | undefined
  /** Its last VoteResponse in our term, on the current connection. */
  readonly vote: VoteResponse | undefined
  /** It granted us our term (on some connection). */
  readonly votedForUs: boolean
  readonly startStreamingAt: Lsn | undefined
  /** From its last AppendResponse; kept across reconnections (Neon keeps `appendResponse`). */
  readonly flushLsn: Lsn
  /** Its persisted commit_lsn from its last AppendResponse. */
  readonly commitLsn: Lsn
}

export type Phase = "CollectingTerms" | "Campaign" | "Elected" | "Done"

export interface Election {
  readonly donorSlot: number
  readonly donorLastLogTerm: Term
  /** Where our term starts: the donor's flush_lsn (or the initial LSN on a new timeline). */
  readonly propTermStartLsn: Lsn
  /** The donor's history plus (our term, propTermStartLsn). */
  readonly termHistory: TermHistory
}

export interface ProposerState {
  readonly phase: Phase
  readonly mconf: MemberConfiguration
  readonly propTerm: Term
  readonly safekeepers: ReadonlyArray<SafekeeperState>
  readonly election: Election | undefined
  /** Quorum-flushed LSN of our term (0 until a quorum reaches the term start). */
  readonly commitLsn: Lsn
  readonly truncateLsn: Lsn
  /** The end of the WAL we have (grows with the source). */
  readonly availableLsn: Lsn
  /** Set when the source ended: we finish once commit_lsn reaches it. */
  readonly sourceEndLsn: Lsn | undefined
  readonly startedUs: number
  readonly lastReconnectUs: number
  readonly lastBroadcastUs: number
  /** Since when WAL (or, in sync mode, the sync itself) waits for commit_lsn to move; undefined: nothing waits. */
  readonly waitingSinceUs: number | undefined
}

// ---- events and actions ----

export type ProposerEvent =
  | { readonly _tag: "Connected"; readonly slot: number; readonly connectionNo: number }
  | { readonly _tag: "LinkFailed"; readonly slot: number; readonly connectionNo: number; readonly reason: string; readonly message: string }
  | { readonly _tag: "Received"; readonly slot: number; readonly connectionNo: number; readonly message: AcceptorMessage }
  | { readonly _tag: "Tick" }
  | { readonly _tag: "WalAvailable"; readonly endLsn: Lsn }
  | { readonly _tag: "SourceEnded"; readonly endLsn: Lsn }
  | { readonly _tag: "WalUnavailable"; readonly slot: number; readonly lsn: Lsn; readonly message: string }

export type ProposerAction =
  | { readonly _tag: "Connect"; readonly slot: number; readonly connectionNo: number }
  | { readonly _tag: "Send"; readonly slot: number; readonly connectionNo: number; readonly message: ProposerGreeting | VoteRequest | ProposerElected }
  /** After ProposerElected: stream AppendRequests from `startLsn` on this connection. */
  | { readonly _tag: "StartStreaming"; readonly slot: number; readonly connectionNo: number; readonly startLsn: Lsn }
  | { readonly _tag: "Disconnect"; readonly slot: number; readonly connectionNo: number }
  /** Every streaming connection sends what it has, at least one (maybe empty) AppendRequest. */
  | { readonly _tag: "Broadcast" }
  /** Elected: the shell sets up the WAL buffer and the source from the term start. */
  | { readonly _tag: "BeginTerm"; readonly term: Term; readonly election: Election; readonly donorAddress: string }
  | { readonly _tag: "Log"; readonly level: LogLevel; readonly message: string; readonly fields: LogFields }
  /** Commit, flushes or the election changed: report progress. */
  | { readonly _tag: "Progress" }
  | { readonly _tag: "Finish"; readonly lsn: Lsn }
  | { readonly _tag: "StepDown"; readonly reason: ProposerErrorReason; readonly message: string }

export interface Transition {
  readonly state: ProposerState
  readonly actions: ReadonlyArray<ProposerAction>
}

export interface ProposerProgress {
  readonly phase: Phase
  readonly term: Term
  readonly termStartLsn: Lsn | undefined
  readonly commitLsn: Lsn
  readonly truncateLsn: Lsn
  readonly safekeepers: ReadonlyArray<{ readonly address: string; readonly status: SafekeeperStatus; readonly flushLsn: Lsn; readonly commitLsn: Lsn }>
}

export function progressOf(state: ProposerState): ProposerProgress {
  return {
    phase: state.phase,
    term: state.propTerm,
    termStartLsn: state.election?.propTermStartLsn,
    commitLsn: state.commitLsn,
    truncateLsn: state.truncateLsn,
    safekeepers: state.safekeepers.map((sk) => ({ address: sk.address, status: sk.status, flushLsn: sk.flushLsn, commitLsn: sk.commitLsn }))
  }
}

// ---- transitions ----

/** The first state: every safekeeper is being connected (walproposer `WalProposerStart`). */
export function start(config: ProposerConfig, nowUs: number): Transition {
  const state: ProposerState = {
    phase: "CollectingTerms",
    mconf: config.mconf,
    propTerm: INITIAL_TERM,
    safekeepers: config.safekeepers.map((address) => ({
      address,
      status: "Offline",
      connectionNo: 0,
      lastHeardUs: nowUs,
      nodeId: undefined,
      vote: undefined,
      votedForUs: false,
      startStreamingAt: undefined,
      flushLsn: Lsn(0),
      commitLsn: Lsn(0)
    })),
    election: undefined,
    commitLsn: Lsn(0),
    truncateLsn: Lsn(0),
    availableLsn: Lsn(0),
    sourceEndLsn: undefined,
    startedUs: nowUs,
    lastReconnectUs: nowUs,
    lastBroadcastUs: nowUs,
    waitingSinceUs: undefined
  }
  const t = new Step(config, state, nowUs)
  t.log("info", "proposer starting", { safekeepers: config.safekeepers.join(","), sync: config.syncSafekeepers, generation: config.mconf.generation })
  for (let slot = 0; slot < state.safekeepers.length; slot++) t.connect(slot)
  return t.finish()
}

/** The next state after `event`, which the shell took at `nowUs`; nothing changes once the proposer is Done. */
export function step(config: ProposerConfig, state: ProposerState, event: ProposerEvent, nowUs: number): Transition {
  if (state.phase === "Done") return { state, actions: [] }
  const t = new Step(config, state, nowUs)
  switch (event._tag) {
    case "Connected":
      if (t.isCurrent(event.slot, event.connectionNo, ["Connecting"])) t.onConnected(event.slot)
      break
    case "LinkFailed":
      if (t.isCurrent(event.slot, event.connectionNo)) t.shutdown(event.slot, `${event.reason}: ${event.message}`)
      break
    case "Received":
      if (t.isCurrent(event.slot, event.connectionNo)) t.onMessage(event.slot, event.message)
      break
    case "Tick":
      t.onTick()
      break
    case "WalAvailable":
      t.onWalAvailable(event.endLsn)
      break
    case "SourceEnded":
      t.onSourceEnded(event.endLsn)
      break
    case "WalUnavailable":
      t.stepDown("WalUnavailable", `safekeeper ${state.safekeepers[event.slot]?.address} needs ${formatLsn(event.lsn)}: ${event.message}`)
      break
    default:
      assertNever(event, "proposer event")
  }
  return t.finish()
}

/** The member sets of the current configuration, mapped to slots through greeted node ids. */
export function currentMemberSets(state: ProposerState): ReadonlyArray<MemberSet> {
  return memberSets(state.mconf, state.safekeepers.map((sk) => sk.nodeId))
}

/**
 * One transition being built: the state is copied on write, actions collect in order. A class
 * only to keep the helpers short; every call happens inside `start` or `step`.
 */
class Step {
  private readonly actions: ProposerAction[] = []
  private done = false

  constructor(private readonly config: ProposerConfig, private state: ProposerState, private readonly nowUs: number) {}

  finish(): Transition {
    return { state: this.state, actions: this.actions }
  }

  log(level: LogLevel, message: string, fields: LogFields): void {
    this.actions.push({ _tag: "Log", level, message, fields })
  }

  isCurrent(slot: number, connectionNo: number, statuses?: ReadonlyArray<SafekeeperStatus>): boolean {
    const sk = this.state.safekeepers[slot]
    assert(sk !== undefined, `safekeeper slot ${slot} exists`)
    if (sk.connectionNo !== connectionNo || sk.status === "Offline") return false
    return statuses === undefined || statuses.includes(sk.status)
  }

  // -- connections --

  connect(slot: number): void {
    const sk = this.sk(slot)
    assert(sk.status === "Offline", "connect an offline safekeeper")
    const connectionNo = sk.connectionNo + 1
    this.patch(slot, { status: "Connecting", connectionNo, lastHeardUs: this.nowUs })
    this.actions.push({ _tag: "Connect", slot, connectionNo })
    this.log("info", "proposer connecting", { sk: sk.address, connection: connectionNo })
  }

  onConnected(slot: number): void {
    const sk = this.sk(slot)
    this.patch(slot, { status: "HandshakeRecv", lastHeardUs: this.nowUs })
    const greeting: ProposerGreeting = {
      _tag: "ProposerGreeting",
      tenantId: this.config.tenantId,
      timelineId: this.config.timelineId,
      mconf: this.state.mconf,
      pgVersion: this.config.pgVersion,
      systemId: this.config.systemId,
      walSegSizeBytes: this.config.walSegSizeBytes
    }
    this.actions.push({ _tag: "Send", slot, connectionNo: sk.connectionNo, message: greeting })
  }

  /** Neon's ShutdownConnection: offline until the next reconnect round; flush and commit are kept. */
  shutdown(slot: number, why: string): void {
    const sk = this.sk(slot)
    this.patch(slot, { status: "Offline", vote: undefined, startStreamingAt: undefined })
    this.actions.push({ _tag: "Disconnect", slot, connectionNo: sk.connectionNo })
    this.log("warn", "proposer lost safekeeper", { sk: sk.address, state: sk.status, why })
  }

  onTick(): void {
    const { config } = this
    if (this.nowUs - this.state.lastReconnectUs >= config.reconnectTimeoutUs) {
      this.state = { ...this.state, lastReconnectUs: this.nowUs }
      for (let slot = 0; slot < this.state.safekeepers.length; slot++) if (this.sk(slot).status === "Offline") this.connect(slot)
    }
    if (this.state.phase === "Elected" && this.nowUs - this.state.lastBroadcastUs >= config.heartbeatIntervalUs) this.broadcast()
    for (let slot = 0; slot < this.state.safekeepers.length; slot++) {
      const sk = this.sk(slot)
      if (sk.status !== "Offline" && this.nowUs - sk.lastHeardUs > config.connectionTimeoutUs) {
        this.shutdown(slot, `nothing received for ${config.connectionTimeoutUs} us`)
      }
    }
    if (Number.isFinite(config.quorumTimeoutUs)) {
      if (this.state.phase !== "Elected" && this.nowUs - this.state.startedUs > config.quorumTimeoutUs) {
        this.stepDown("NoQuorum", `not elected within ${config.quorumTimeoutUs} us (phase ${this.state.phase})`)
      } else if (this.state.phase === "Elected" && this.state.waitingSinceUs !== undefined &&
        this.nowUs - this.state.waitingSinceUs > config.quorumTimeoutUs) {
        this.stepDown("NoQuorum", `commit_lsn stayed at ${formatLsn(this.state.commitLsn)} for ${config.quorumTimeoutUs} us with WAL to ${formatLsn(this.state.availableLsn)} waiting`)
      }
    }
  }

  // -- messages --

  onMessage(slot: number, message: AcceptorMessage): void {
    this.patch(slot, { lastHeardUs: this.nowUs })
    const status = this.sk(slot).status
    switch (message._tag) {
      case "AcceptorGreeting":
        if (status === "HandshakeRecv") return this.onGreeting(slot, message)
        break
      case "VoteResponse":
        if (status === "WaitVerdict") return this.onVote(slot, message)
        break
      case "AppendResponse":
        if (status === "Active") return this.onAppendResponse(slot, message)
        break
      default:
        assertNever(message, "acceptor message")
    }
    this.shutdown(slot, `unexpected ${message._tag} in state ${status}`)
  }

  private onGreeting(slot: number, greeting: AcceptorGreeting): void {
    const sk = this.sk(slot)
    this.log("info", "proposer got greeting", { sk: sk.address, node: greeting.nodeId, term: greeting.term, generation: greeting.mconf.generation })
    if (greeting.mconf.generation > this.state.mconf.generation) {
      if (greeting.mconf.members.length === 0) {
        return this.stepDown("InvalidConfiguration", `safekeeper ${sk.address} has generation ${greeting.mconf.generation} with no members`)
      }
      if (this.state.phase !== "CollectingTerms") {
        return this.stepDown("ConfigurationChanged", `safekeeper ${sk.address} has generation ${greeting.mconf.generation}, ours is ${this.state.mconf.generation}: restart in it`)
      }
      this.state = { ...this.state, mconf: greeting.mconf }
      this.log("info", "proposer adopted configuration", { generation: greeting.mconf.generation })
    }
    this.patch(slot, { nodeId: greeting.nodeId, status: "WaitVoting" })
    if (this.state.phase === "CollectingTerms") {
      this.state = { ...this.state, propTerm: Term(Math.max(this.state.propTerm, greeting.term)) }
      const sets = currentMemberSets(this.state)
      if (!hasQuorum(sets, (s) => this.sk(s).status === "WaitVoting")) return
      this.state = { ...this.state, phase: "Campaign", propTerm: Term(this.state.propTerm + 1) }
      this.log("info", "proposer campaigning", { term: this.state.propTerm })
      for (let s = 0; s < this.state.safekeepers.length; s++) if (this.sk(s).status === "WaitVoting") this.requestVote(s)
    } else if (greeting.term > this.state.propTerm) {
      this.stepDown("HigherTerm", `safekeeper ${sk.address} has term ${greeting.term}, above ours ${this.state.propTerm}`)
    } else {
      this.requestVote(slot)
    }
  }

  private requestVote(slot: number): void {
    const sk = this.sk(slot)
    this.patch(slot, { status: "WaitVerdict" })
    const request: VoteRequest = { _tag: "VoteRequest", generation: this.state.mconf.generation, term: this.state.propTerm }
    this.actions.push({ _tag: "Send", slot, connectionNo: sk.connectionNo, message: request })
  }

  private onVote(slot: number, vote: VoteResponse): void {
    const sk = this.sk(slot)
    const { propTerm, phase } = this.state
    this.log("info", "proposer got vote", {
      sk: sk.address,
      term: vote.term,
      given: vote.voteGiven,
      flush: formatLsn(vote.flushLsn),
      truncate: formatLsn(vote.truncateLsn),
      lastLogTerm: vote.termHistory[vote.termHistory.length - 1]?.term ?? 0
    })
    // A refusal ends us if the safekeeper is in a higher term, or if we still need its vote
    // and it never gave it (then someone else holds our term).
    if (!vote.voteGiven && vote.term > propTerm) {
      return this.stepDown("HigherTerm", `safekeeper ${sk.address} refused our vote with term ${vote.term}, ours ${propTerm}`)
    }
    if (!vote.voteGiven && phase === "Campaign" && !sk.votedForUs) {
      return this.stepDown("VoteRefused", `safekeeper ${sk.address} refused its vote in our term ${propTerm}`)
    }
    if (vote.term !== propTerm) return this.shutdown(slot, `vote response in term ${vote.term}, ours is ${propTerm}`)
    this.patch(slot, { vote, votedForUs: sk.votedForUs || vote.voteGiven, status: "WaitElected" })
    if (phase === "Campaign") {
      if (hasQuorum(currentMemberSets(this.state), (s) => this.sk(s).status === "WaitElected")) this.elect()
    } else {
      this.sendElected(slot)
    }
  }

  /** A quorum voted (walproposer `HandleElectedProposer` and `ProcessPropStartPos`). */
  private elect(): void {
    const { config } = this
    const sets = currentMemberSets(this.state)
    const members = new Set(sets.flat().filter((slot): slot is number => slot !== undefined))
    const votes: Vote[] = []
    for (let slot = 0; slot < this.state.safekeepers.length; slot++) {
      const sk = this.sk(slot)
      if (sk.status !== "WaitElected" || !members.has(slot)) continue
      assert(sk.vote !== undefined, "a voter has its vote")
      votes.push({ slot, flushLsn: sk.vote.flushLsn, truncateLsn: sk.vote.truncateLsn, termHistory: sk.vote.termHistory })
    }
    const outcome = electionOutcome(votes)
    let propTermStartLsn = outcome.propTermStartLsn
    let truncateLsn = outcome.truncateLsn
    const donorAddress = this.sk(outcome.donor.slot).address
    if (propTermStartLsn === 0) {
      // No safekeeper holds WAL: a new timeline. Sync mode has nothing to sync (and must not
      // hand safekeepers a history starting at 0/0, neon#9434).
      if (config.syncSafekeepers) {
        this.log("info", "proposer elected with no WAL in sync-safekeepers, exiting", { term: this.state.propTerm })
        return this.end(Lsn(0))
      }
      propTermStartLsn = config.initialLsn
      truncateLsn = config.initialLsn
    }
    const termHistory = proposerTermHistory(outcome.donor.termHistory, this.state.propTerm, propTermStartLsn)
    const election: Election = { donorSlot: outcome.donor.slot, donorLastLogTerm: outcome.donorLastLogTerm, propTermStartLsn, termHistory }
    this.state = {
      ...this.state,
      phase: "Elected",
      election,
      truncateLsn,
      availableLsn: Lsn(Math.max(this.state.availableLsn, propTermStartLsn)),
      waitingSinceUs: this.nowUs,
      lastBroadcastUs: this.nowUs
    }
    this.log("info", "proposer elected", {
      term: this.state.propTerm,
      start: formatLsn(propTermStartLsn),
      donor: donorAddress,
      donorLastLogTerm: outcome.donorLastLogTerm,
      truncate: formatLsn(truncateLsn),
      votes: votes.length
    })
    this.actions.push({ _tag: "Progress" })
    if (config.syncSafekeepers && truncateLsn === propTermStartLsn) {
      this.log("info", "proposer sync: safekeepers already synced", { lsn: formatLsn(propTermStartLsn) })
      return this.end(propTermStartLsn)
    }
    this.actions.push({ _tag: "BeginTerm", term: this.state.propTerm, election, donorAddress })
    // The donor first: peers may be asked for its WAL as soon as it has adopted our term.
    this.sendElected(outcome.donor.slot)
    for (let slot = 0; slot < this.state.safekeepers.length; slot++) {
      if (slot !== outcome.donor.slot && this.sk(slot).status === "WaitElected") this.sendElected(slot)
    }
    // Sync mode writes no WAL: the empty append makes even caught-up safekeepers answer.
    if (config.syncSafekeepers) this.broadcast()
  }

  private sendElected(slot: number): void {
    const sk = this.sk(slot)
    const election = this.state.election
    assert(election !== undefined && sk.vote !== undefined, "ProposerElected after the election, to a voter")
    const startLsn = startStreamingAt(election.termHistory, sk.vote.termHistory, sk.vote.flushLsn)
    const message: ProposerElected = {
      _tag: "ProposerElected",
      generation: this.state.mconf.generation,
      term: this.state.propTerm,
      startStreamingAt: startLsn,
      termHistory: election.termHistory
    }
    this.patch(slot, { status: "Active", startStreamingAt: startLsn })
    this.actions.push({ _tag: "Send", slot, connectionNo: sk.connectionNo, message })
    this.actions.push({ _tag: "StartStreaming", slot, connectionNo: sk.connectionNo, startLsn })
    this.log("info", "proposer sent elected", { sk: sk.address, term: this.state.propTerm, start: formatLsn(startLsn), flush: formatLsn(sk.vote.flushLsn) })
  }

  /** walproposer `HandleSafekeeperResponse`. */
  private onAppendResponse(slot: number, response: AppendResponse): void {
    const sk = this.sk(slot)
    const election = this.state.election
    assert(election !== undefined, "append responses come after the election")
    if (response.generation !== this.state.mconf.generation) {
      return this.stepDown("GenerationMismatch", `safekeeper ${sk.address} answered in generation ${response.generation}, ours is ${this.state.mconf.generation}`)
    }
    if (response.term > this.state.propTerm) {
      return this.stepDown("HigherTerm", `safekeeper ${sk.address} has term ${response.term}, above ours ${this.state.propTerm}: another proposer runs`)
    }
    this.patch(slot, { flushLsn: response.flushLsn, commitLsn: response.commitLsn })
    const flushes = this.state.safekeepers.map((s) => s.flushLsn)
    const committed = quorumCommitLsn(currentMemberSets(this.state), flushes, election.propTermStartLsn)
    if (committed > this.state.commitLsn) {
      const waiting = this.config.syncSafekeepers || this.state.availableLsn > committed
      this.state = { ...this.state, commitLsn: committed, waitingSinceUs: waiting ? this.nowUs : undefined }
      this.broadcast()
      this.log("debug", "proposer commit", { commit: formatLsn(committed) })
    }
    this.state = { ...this.state, truncateLsn: advanceTruncateLsn(this.state.truncateLsn, flushes, this.state.commitLsn) }
    this.actions.push({ _tag: "Progress" })
    if (this.config.syncSafekeepers) {
      // Done when a quorum committed the term start and every streaming safekeeper persisted
      // it (Neon waits for all of them so the pageserver cannot pick an unsynced one). Only
      // those: one that keeps failing its handshake (a wiped one refusing the timeline) is
      // never Offline for long, and waiting for it stalled sync-safekeepers for good (swarm
      // seed 554).
      const start = election.propTermStartLsn
      const allSynced = this.state.safekeepers.every((s) => s.status !== "Active" || s.commitLsn >= start)
      if (allSynced && this.state.commitLsn >= start) {
        this.broadcast()
        this.log("info", "proposer sync: safekeepers synced", { lsn: formatLsn(start) })
        this.end(start)
      }
    } else if (this.state.sourceEndLsn !== undefined && this.state.commitLsn >= this.state.sourceEndLsn) {
      this.log("info", "proposer committed all WAL", { commit: formatLsn(this.state.commitLsn) })
      this.end(this.state.commitLsn)
    }
  }

  // -- WAL --

  onWalAvailable(endLsn: Lsn): void {
    if (endLsn <= this.state.availableLsn) return
    const waitingSinceUs = this.state.waitingSinceUs ?? (endLsn > this.state.commitLsn ? this.nowUs : undefined)
    this.state = { ...this.state, availableLsn: endLsn, waitingSinceUs }
    this.broadcast()
  }

  onSourceEnded(endLsn: Lsn): void {
    this.onWalAvailable(endLsn)
    this.state = { ...this.state, sourceEndLsn: endLsn }
    this.log("info", "proposer WAL source ended", { end: formatLsn(endLsn) })
    if (this.state.commitLsn >= endLsn) this.end(this.state.commitLsn)
  }

  // -- endings --

  broadcast(): void {
    this.state = { ...this.state, lastBroadcastUs: this.nowUs }
    this.actions.push({ _tag: "Broadcast" })
  }

  stepDown(reason: ProposerErrorReason, message: string): void {
    if (this.done) return
    this.done = true
    this.state = { ...this.state, phase: "Done" }
    this.log("warn", "proposer stepping down", { reason, term: this.state.propTerm, why: message })
    this.actions.push({ _tag: "StepDown", reason, message })
  }

  private end(lsn: Lsn): void {
    if (this.done) return
    this.done = true
    this.state = { ...this.state, phase: "Done" }
    this.actions.push({ _tag: "Finish", lsn })
  }

  // -- helpers --

  private sk(slot: number): SafekeeperState {
    const sk = this.state.safekeepers[slot]
    assert(sk !== undefined, `safekeeper slot ${slot} exists`)
    return sk
  }

  private patch(slot: number, changes: Partial<SafekeeperState>): void {
    const safekeepers = this.state.safekeepers.slice()
    safekeepers[slot] = { ...this.sk(slot), ...changes }
    this.state = { ...this.state, safekeepers }
  }
}
