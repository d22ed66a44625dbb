import { Brand, Result, Schema } from "effect"
import { assert, U53_MAX } from "../assert.js"
import { INVALID_LSN, type Lsn } from "../wal/lsn.js"

/**
 * The acceptor's persistent timeline state (Neon's `TimelinePersistentState`, reference §4 and
 * §6) and the small value types it is made of. Field names follow Neon's, camelCased; sizes
 * carry their unit. These are plain data: the control file codec writes them, the consensus
 * codec sends parts of them, and the acceptor rules compute new ones.
 */

/** Consensus logical time (Neon: u64). A number, refused above 2^53−1 when decoded. */
export type Term = number & Brand.Brand<"Term">
export const Term = Brand.nominal<Term>()
/** Timelines are created with term 0; a proposer is never elected in it. */
export const INITIAL_TERM = Term(0)

/** A safekeeper's id (Neon: u64 `NodeId`); used as a number, so ≤ 2^53−1. */
export type NodeId = number & Brand.Brand<"NodeId">
export const NodeId = Brand.nominal<NodeId>()

/** Membership configuration id (u32). 0 = no configuration yet (legacy), 1 = the first. */
export type Generation = number & Brand.Brand<"Generation">
export const Generation = Brand.nominal<Generation>()
export const INVALID_GENERATION = Generation(0)
export const INITIAL_GENERATION = Generation(1)

/** Tenant and timeline ids: 16 bytes, written as 32 lowercase hex digits. */
export type TenantId = string & Brand.Brand<"TenantId">
export const TenantId = Brand.nominal<TenantId>()
export type TimelineId = string & Brand.Brand<"TimelineId">
export const TimelineId = Brand.nominal<TimelineId>()

export const ID_HEX_LENGTH = 32
/** The walproposer holds at most this many safekeepers per member set (`MAX_SAFEKEEPERS`). */
export const MEMBER_COUNT_MAX = 32
/** Host names fit walproposer's `MAXCONNINFO` buffer (1024 with its NUL). */
export const HOST_LENGTH_MAX_BYTES = 1023
/**
 * Entries of a term history. One entry is added per election; 2^20 elections of 16 bytes each
 * is 16 MiB, far beyond any real timeline and still a bounded allocation.
 */
export const TERM_HISTORY_LENGTH_MAX = 1 << 20
/** Remote partial segments remembered in the control file (Neon keeps a handful). */
export const PARTIAL_SEGMENT_COUNT_MAX = 1024
/** `<segment>_<term>_<flush:016X>_<commit:016X>_sk<id>.partial` is ~110 bytes. */
export const PARTIAL_SEGMENT_NAME_LENGTH_MAX_BYTES = 255
/** PG_VERSION_NUM of PostgreSQL 14 through 17 (DESIGN.md §4). */
export const PG_VERSION_NUM_MIN = 140000
export const PG_VERSION_NUM_MAX = 179999
/** The stored pg_version of a timeline whose server version is not known (Neon: UNKNOWN). */
export const UNKNOWN_PG_VERSION = 0

export class InvalidId extends Schema.TaggedError<InvalidId>()("InvalidId", {
  input: Schema.String,
  message: Schema.String
}) {}

const HEX_ID = /^[0-9a-fA-F]{32}$/
const utf8Encoder = new TextEncoder()

/** Accepts 32 hex digits in either case (as Neon's parser does) and returns them lowercase. */
export function parseHexId(text: string): Result.Result<string, InvalidId> {
  if (!HEX_ID.test(text)) return Result.fail(new InvalidId({ input: text, message: "expected 32 hex digits" }))
  return Result.succeed(text.toLowerCase())
}

export const parseTenantId = (text: string): Result.Result<TenantId, InvalidId> => Result.map(parseHexId(text), TenantId)
export const parseTimelineId = (text: string): Result.Result<TimelineId, InvalidId> => Result.map(parseHexId(text), TimelineId)

export function isCanonicalHexId(text: string): boolean {
  return /^[0-9a-f]{32}$/.test(text)
}

export interface TermLsn {
  readonly term: Term
  readonly lsn: Lsn
}

/** Term switches, oldest first: term `t` starts at `lsn` (Neon's `TermHistory`). */
export type TermHistory = ReadonlyArray<TermLsn>

export interface AcceptorState {
  /** The highest term this acceptor voted in (it never decreases). */
  readonly term: Term
  /** History of term switches; may run past the WAL actually held (adopted from the proposer). */
  readonly termHistory: TermHistory
}

/** A member of a configuration: its id and where computes reach it. */
export interface SafekeeperId {
  readonly id: NodeId
  readonly host: string
  readonly pgPort: number
}

/** Neon's `membership::Configuration`. `newMembers` is set only in a joint configuration. */
export interface MemberConfiguration {
  readonly generation: Generation
  readonly members: ReadonlyArray<SafekeeperId>
  readonly newMembers: ReadonlyArray<SafekeeperId> | undefined
}

export const EMPTY_MEMBER_CONFIGURATION: MemberConfiguration = {
  generation: INVALID_GENERATION,
  members: [],
  newMembers: undefined
}

/** What the compute told us about its server; checked on every later greeting. */
export interface ServerInfo {
  /** PG_VERSION_NUM, e.g. 170004; 0 when unknown. */
  readonly pgVersion: number
  /** Postgres system identifier: opaque u64. 0 from sync-safekeepers. */
  readonly systemId: bigint
  readonly walSegSizeBytes: number
}

export type PartialUploadStatus = "InProgress" | "Uploaded" | "Deleting"
/** Bincode enum variant indices, in Neon's declaration order. */
export const PARTIAL_UPLOAD_STATUSES: ReadonlyArray<PartialUploadStatus> = ["InProgress", "Uploaded", "Deleting"]

/** A partial segment in remote storage (Neon's `wal_backup_partial::PartialRemoteSegment`). */
export interface PartialRemoteSegment {
  readonly status: PartialUploadStatus
  readonly name: string
  readonly commitLsn: Lsn
  readonly flushLsn: Lsn
  /** The last_log_term of the uploaded data. */
  readonly term: Term
}

export type EvictionState =
  | { readonly _tag: "Present" }
  | { readonly _tag: "Offloaded"; readonly flushLsn: Lsn }

/** serde's `SystemTime`: seconds and nanoseconds since the Unix epoch. */
export interface SystemTime {
  readonly secsSinceEpoch: number
  readonly nanosSinceEpoch: number
}

export const UNIX_EPOCH: SystemTime = { secsSinceEpoch: 0, nanosSinceEpoch: 0 }
export const NANOS_PER_SEC = 1_000_000_000

/**
 * Everything the control file holds (Neon's `TimelinePersistentState`, reference §6 v10).
 * The in-memory overlay (commit, backup, peer horizon, remote consistent) lives elsewhere.
 */
export interface PersistedState {
  readonly tenantId: TenantId
  readonly timelineId: TimelineId
  readonly mconf: MemberConfiguration
  readonly acceptorState: AcceptorState
  readonly server: ServerInfo
  /** Last elected proposer, 32 lowercase hex digits (monitoring only). */
  readonly proposerUuid: string
  /** Where this timeline starts. */
  readonly timelineStartLsn: Lsn
  /** Where this safekeeper's WAL starts (it may have joined later). */
  readonly localStartLsn: Lsn
  /** Committed by a quorum and available locally; always a record boundary. */
  readonly commitLsn: Lsn
  /** End of the last segment offloaded to remote storage. */
  readonly backupLsn: Lsn
  /** Lowest LSN some safekeeper may still need for recovery (the proposer's truncate_lsn). */
  readonly peerHorizonLsn: Lsn
  /** What the pageserver has made durable in remote storage. */
  readonly remoteConsistentLsn: Lsn
  readonly partialBackup: { readonly segments: ReadonlyArray<PartialRemoteSegment> }
  readonly evictionState: EvictionState
  readonly creationTs: SystemTime
}

/**
 * The state of a newly created timeline (reference §4, "Creation"): term 0, a history of
 * (0, start) only when something is already committed, every start position at `startLsn`,
 * nothing offloaded. START_WAL_PUSH's implicit creation passes start = commit = 0 and an empty
 * configuration.
 */
export function newTimelineState(options: {
  readonly tenantId: TenantId
  readonly timelineId: TimelineId
  readonly mconf: MemberConfiguration
  readonly server: ServerInfo
  readonly startLsn: Lsn
  readonly commitLsn: Lsn
  readonly creationTs?: SystemTime
}): PersistedState {
  const { startLsn, commitLsn } = options
  assert(options.server.walSegSizeBytes !== 0, "a timeline is created with a WAL segment size")
  assert(options.server.pgVersion !== UNKNOWN_PG_VERSION, "a timeline is created with a PostgreSQL version")
  assert(commitLsn >= startLsn, "a timeline is created with commit_lsn at or above its start")
  return {
    tenantId: options.tenantId,
    timelineId: options.timelineId,
    mconf: options.mconf,
    acceptorState: { term: INITIAL_TERM, termHistory: commitLsn === 0 ? [] : [{ term: INITIAL_TERM, lsn: startLsn }] },
    server: options.server,
    proposerUuid: "0".repeat(ID_HEX_LENGTH),
    timelineStartLsn: startLsn,
    localStartLsn: startLsn,
    commitLsn,
    backupLsn: startLsn,
    peerHorizonLsn: startLsn,
    remoteConsistentLsn: INVALID_LSN,
    partialBackup: { segments: [] },
    evictionState: { _tag: "Present" },
    creationTs: options.creationTs ?? UNIX_EPOCH
  }
}

/**
 * Why a configuration is not acceptable, or undefined. The same rules hold on the wire and on
 * disk: a configuration with a generation has members, and no id appears twice in one set.
 */
export function memberConfigurationProblem(mconf: MemberConfiguration): string | undefined {
  if (!isU32(mconf.generation)) return `generation ${mconf.generation} is not a u32`
  if (mconf.generation !== INVALID_GENERATION && mconf.members.length === 0) {
    return `generation ${mconf.generation} with no members`
  }
  return memberSetProblem(mconf.members, "members") ??
    (mconf.newMembers === undefined ? undefined : memberSetProblem(mconf.newMembers, "new_members"))
}

function memberSetProblem(members: ReadonlyArray<SafekeeperId>, what: string): string | undefined {
  if (members.length > MEMBER_COUNT_MAX) return `${what}: ${members.length} members, more than ${MEMBER_COUNT_MAX}`
  const seen = new Set<number>()
  for (const member of members) {
    if (!isU53(member.id)) return `${what}: node id ${member.id} is not a u53`
    if (seen.has(member.id)) return `${what}: duplicate node id ${member.id}`
    seen.add(member.id)
    if (!isU16(member.pgPort)) return `${what}: port ${member.pgPort} of node ${member.id} is not a u16`
    if (member.host.includes("\u0000")) return `${what}: host of node ${member.id} holds a NUL`
    if (utf8Encoder.encode(member.host).byteLength > HOST_LENGTH_MAX_BYTES) {
      return `${what}: host of node ${member.id} longer than ${HOST_LENGTH_MAX_BYTES} bytes`
    }
  }
  return undefined
}

/** Why a term history is not well formed, or undefined: terms rise, LSNs never fall. */
export function termHistoryProblem(history: TermHistory): string | undefined {
  if (history.length > TERM_HISTORY_LENGTH_MAX) return `term history of ${history.length} entries, more than ${TERM_HISTORY_LENGTH_MAX}`
  for (let i = 0; i < history.length; i++) {
    const entry = history[i]!
    if (!isU53(entry.term) || !isU53(entry.lsn)) return `term history entry ${i} is not (u53, u53)`
    const previous = history[i - 1]
    if (previous !== undefined && entry.term <= previous.term) return `term history terms do not rise at entry ${i}`
    if (previous !== undefined && entry.lsn < previous.lsn) return `term history LSNs fall at entry ${i}`
  }
  return undefined
}

/**
 * Every rule a persisted state must satisfy: checked after a control file is decoded (a file
 * that breaks one is refused, not trusted) and asserted before one is written (our code broke it).
 * Not checked: `walSegSizeBytes` and `pgVersion` against the greeting, which timeline loading does.
 */
export function persistedStateProblems(state: PersistedState): ReadonlyArray<string> {
  const problems: string[] = []
  const check = (problem: string | undefined) => {
    if (problem !== undefined) problems.push(problem)
  }
  if (!isCanonicalHexId(state.tenantId)) problems.push(`tenant_id ${state.tenantId} is not 32 lowercase hex digits`)
  if (!isCanonicalHexId(state.timelineId)) problems.push(`timeline_id ${state.timelineId} is not 32 lowercase hex digits`)
  if (!isCanonicalHexId(state.proposerUuid)) problems.push(`proposer_uuid ${state.proposerUuid} is not 32 lowercase hex digits`)
  check(memberConfigurationProblem(state.mconf))
  const { term, termHistory } = state.acceptorState
  if (!isU53(term)) problems.push(`term ${term} is not a u53`)
  check(termHistoryProblem(termHistory))
  const lastEntry = termHistory[termHistory.length - 1]
  if (lastEntry !== undefined && lastEntry.term > term) {
    problems.push(`term history reaches term ${lastEntry.term}, above the acceptor's term ${term}`)
  }
  const { pgVersion, systemId, walSegSizeBytes } = state.server
  if (pgVersion !== UNKNOWN_PG_VERSION && !isSupportedPgVersion(pgVersion)) problems.push(`pg_version ${pgVersion} is not PostgreSQL 14-17`)
  if (systemId < 0n || systemId >= 1n << 64n) problems.push(`system_id ${systemId} is not a u64`)
  if (!isU32(walSegSizeBytes)) problems.push(`wal_seg_size ${walSegSizeBytes} is not a u32`)
  const lsns: ReadonlyArray<readonly [string, number]> = [
    ["timeline_start_lsn", state.timelineStartLsn],
    ["local_start_lsn", state.localStartLsn],
    ["commit_lsn", state.commitLsn],
    ["backup_lsn", state.backupLsn],
    ["peer_horizon_lsn", state.peerHorizonLsn],
    ["remote_consistent_lsn", state.remoteConsistentLsn]
  ]
  for (const [name, lsn] of lsns) if (!isU53(lsn)) problems.push(`${name} ${lsn} is not a u53`)
  // Creation requires commit ≥ start and ProposerElected raises commit to timeline_start (§4, §5).
  if (state.commitLsn < state.timelineStartLsn) {
    problems.push(`commit_lsn ${state.commitLsn} below timeline_start_lsn ${state.timelineStartLsn}`)
  }
  const segments = state.partialBackup.segments
  if (segments.length > PARTIAL_SEGMENT_COUNT_MAX) problems.push(`${segments.length} partial segments, more than ${PARTIAL_SEGMENT_COUNT_MAX}`)
  for (const segment of segments) {
    if (!PARTIAL_UPLOAD_STATUSES.includes(segment.status)) problems.push(`partial segment status ${String(segment.status)}`)
    if (utf8Encoder.encode(segment.name).byteLength > PARTIAL_SEGMENT_NAME_LENGTH_MAX_BYTES) {
      problems.push(`partial segment name longer than ${PARTIAL_SEGMENT_NAME_LENGTH_MAX_BYTES} bytes`)
    }
    if (!isU53(segment.commitLsn) || !isU53(segment.flushLsn) || !isU53(segment.term)) {
      problems.push(`partial segment ${segment.name} has a field that is not a u53`)
    }
  }
  // wal_backup_partial keeps at most one Uploaded segment: it is the one a reader may use.
  if (segments.filter((segment) => segment.status === "Uploaded").length > 1) problems.push("more than one Uploaded partial segment")
  if (state.evictionState._tag === "Offloaded" && !isU53(state.evictionState.flushLsn)) {
    problems.push(`offloaded flush_lsn ${state.evictionState.flushLsn} is not a u53`)
  }
  const { secsSinceEpoch, nanosSinceEpoch } = state.creationTs
  if (!isU53(secsSinceEpoch)) problems.push(`creation_ts seconds ${secsSinceEpoch} is not a u53`)
  if (!Number.isInteger(nanosSinceEpoch) || nanosSinceEpoch < 0 || nanosSinceEpoch >= NANOS_PER_SEC) {
    problems.push(`creation_ts nanoseconds ${nanosSinceEpoch} outside [0, 1e9)`)
  }
  return problems
}

export function isSupportedPgVersion(pgVersion: number): boolean {
  return Number.isInteger(pgVersion) && pgVersion >= PG_VERSION_NUM_MIN && pgVersion <= PG_VERSION_NUM_MAX
}

function isU53(value: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= U53_MAX
}

function isU32(value: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= 0xffff_ffff
}

function isU16(value: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= 0xffff
}
