import { Result } from "effect"
import { assert, U53_MAX } from "../assert.js"
import {
  Generation,
  HOST_LENGTH_MAX_BYTES,
  ID_HEX_LENGTH,
  isCanonicalHexId,
  isSupportedPgVersion,
  MEMBER_COUNT_MAX,
  memberConfigurationProblem,
  NodeId,
  parseHexId,
  PG_VERSION_NUM_MAX,
  PG_VERSION_NUM_MIN,
  type MemberConfiguration,
  type SafekeeperId,
  TenantId,
  Term,
  TERM_HISTORY_LENGTH_MAX,
  type TermHistory,
  type TermLsn,
  TimelineId
} from "../acceptor/state.js"
import { isValidSegmentSize, Lsn, XLOG_BLCKSZ_BYTES } from "../wal/lsn.js"
import { ByteReader, ByteWriter, MalformedMessage } from "./bytes.js"
import { type PageserverFeedback, readPageserverFeedback, writePageserverFeedback } from "./pageserver-feedback.js"

export { MalformedMessage } from "./bytes.js"

/**
 * Consensus messages between walproposer and safekeeper, protocol version 3 (reference §3.1;
 * Neon `safekeeper.rs` `ProposerAcceptorMessage::parse` / `AcceptorProposerMessage::serialize`,
 * walproposer.c `PAMessageSerialize` / `AsyncReadMessage`). One message per CopyData frame; a
 * one-byte ASCII tag, then big-endian fields; C strings end in NUL. Every message carries the
 * membership generation.
 *
 * Trailing bytes: Neon's safekeeper ignores bytes after a proposer message, so we do too (a newer
 * walproposer may append fields); the walproposer refuses bytes after an acceptor message
 * (`pq_getmsgend`), so we do too.
 */
export const SK_PROTO_VERSION = 3

/** walsender's chunk and the most WAL one AppendRequest may carry (Postgres `MAX_SEND_SIZE`). */
export const MAX_SEND_SIZE_BYTES = 16 * XLOG_BLCKSZ_BYTES
/** Tag, generation, term, begin, end, commit, truncate. */
export const APPEND_REQUEST_HEADER_BYTES = 1 + 4 + 8 * 5
/** Tag, generation, term, flush, commit, hs ts, hs xmin, hs catalog_xmin. */
export const APPEND_RESPONSE_FIXED_BYTES = 1 + 4 + 8 * 6

// Smallest encodings of repeated items, used to refuse counts the buffer cannot hold.
const MEMBER_BYTES_MIN = 8 + 1 + 2 // node id, empty host's NUL, port
const TERM_LSN_BYTES = 16

// ---- proposer → acceptor ----

export interface ProposerGreeting {
  readonly _tag: "ProposerGreeting"
  readonly tenantId: TenantId
  readonly timelineId: TimelineId
  readonly mconf: MemberConfiguration
  /** PG_VERSION_NUM, PostgreSQL 14–17. */
  readonly pgVersion: number
  /** Postgres system identifier; 0 from sync-safekeepers. */
  readonly systemId: bigint
  readonly walSegSizeBytes: number
}

export interface VoteRequest {
  readonly _tag: "VoteRequest"
  readonly generation: Generation
  readonly term: Term
}

export interface ProposerElected {
  readonly _tag: "ProposerElected"
  readonly generation: Generation
  readonly term: Term
  readonly startStreamingAt: Lsn
  /** The proposer's full term history, its own term last. */
  readonly termHistory: TermHistory
}

export interface AppendRequestHeader {
  readonly generation: Generation
  readonly term: Term
  readonly beginLsn: Lsn
  readonly endLsn: Lsn
  /** Quorum-committed LSN as the proposer knows it (0: unknown). */
  readonly commitLsn: Lsn
  /** Lowest LSN the proposer may still need to send to some safekeeper. */
  readonly truncateLsn: Lsn
}

export interface AppendRequest extends AppendRequestHeader {
  readonly _tag: "AppendRequest"
  /** Exactly `endLsn - beginLsn` bytes of WAL, at most MAX_SEND_SIZE_BYTES. */
  readonly walData: Uint8Array
}

export type ProposerMessage = ProposerGreeting | VoteRequest | ProposerElected | AppendRequest

// ---- acceptor → proposer ----

export interface AcceptorGreeting {
  readonly _tag: "AcceptorGreeting"
  readonly nodeId: NodeId
  /** The acceptor's current configuration (after adopting a newer one from the greeting). */
  readonly mconf: MemberConfiguration
  readonly term: Term
}

export interface VoteResponse {
  readonly _tag: "VoteResponse"
  readonly generation: Generation
  /** The acceptor's term after handling the request. */
  readonly term: Term
  readonly voteGiven: boolean
  readonly flushLsn: Lsn
  readonly truncateLsn: Lsn
  /** Term history up to flush_lsn. */
  readonly termHistory: TermHistory
}

/** Hot standby feedback forwarded from replicas (reference §9). */
export interface HotStandbyFeedback {
  /** TimestampTz: microseconds since 2000-01-01. */
  readonly tsUs: number
  /** Full transaction ids (epoch << 32 | xid): opaque u64. */
  readonly xmin: bigint
  readonly catalogXmin: bigint
}

export const EMPTY_HOT_STANDBY_FEEDBACK: HotStandbyFeedback = { tsUs: 0, xmin: 0n, catalogXmin: 0n }

export interface AppendResponse {
  readonly _tag: "AppendResponse"
  readonly generation: Generation
  readonly term: Term
  readonly flushLsn: Lsn
  /** The *persisted* commit_lsn (reference §5, §17). */
  readonly commitLsn: Lsn
  readonly hsFeedback: HotStandbyFeedback
  /** Sent only when present; the walproposer parses it only if bytes remain. */
  readonly pageserverFeedback: PageserverFeedback | undefined
}

export type AcceptorMessage = AcceptorGreeting | VoteResponse | AppendResponse

// ---- encoding ----

export function encodeProposerMessage(message: ProposerMessage): Uint8Array {
  switch (message._tag) {
    case "ProposerGreeting":
      return encodeProposerGreeting(message)
    case "VoteRequest": {
      const writer = new ByteWriter(13)
      writer.u8(TAG.v).u32BE(message.generation)
      writeU53(writer, message.term, "term")
      return writer.finish()
    }
    case "ProposerElected": {
      assertTermHistory(message.termHistory)
      const writer = new ByteWriter(1 + 4 + 8 + 8 + 4 + TERM_LSN_BYTES * message.termHistory.length)
      writer.u8(TAG.e).u32BE(message.generation)
      writeU53(writer, message.term, "term")
      writeU53(writer, message.startStreamingAt, "start_streaming_at")
      writeTermHistory(writer, message.termHistory)
      return writer.finish()
    }
    case "AppendRequest": {
      const length = message.endLsn - message.beginLsn
      assert(length === message.walData.byteLength, "AppendRequest carries exactly end_lsn - begin_lsn bytes")
      const writer = new ByteWriter(APPEND_REQUEST_HEADER_BYTES + length)
      writeAppendRequestHeader(writer, message)
      writer.bytes(message.walData)
      return writer.finish()
    }
  }
}

/**
 * The message as parts to send one after another: an AppendRequest as its header and its WAL
 * (the caller's own buffer, not copied: walproposer sends it the same way), anything else whole.
 */
export function encodeProposerMessageParts(message: ProposerMessage): ReadonlyArray<Uint8Array> {
  if (message._tag !== "AppendRequest") return [encodeProposerMessage(message)]
  assert(message.endLsn - message.beginLsn === message.walData.byteLength, "AppendRequest carries exactly end_lsn - begin_lsn bytes")
  const header = encodeAppendRequestHeader(message)
  return message.walData.byteLength === 0 ? [header] : [header, message.walData]
}

/**
 * The 45-byte header alone, for senders that write the WAL bytes from their own buffer right
 * after it (walproposer does the same).
 */
export function encodeAppendRequestHeader(header: AppendRequestHeader): Uint8Array {
  const writer = new ByteWriter(APPEND_REQUEST_HEADER_BYTES)
  writeAppendRequestHeader(writer, header)
  return writer.finish()
}

export function encodeAcceptorMessage(message: AcceptorMessage): Uint8Array {
  switch (message._tag) {
    case "AcceptorGreeting": {
      const writer = new ByteWriter(64)
      writer.u8(TAG.g)
      writeU53(writer, message.nodeId, "node_id")
      writeMemberConfiguration(writer, message.mconf)
      writeU53(writer, message.term, "term")
      return writer.finish()
    }
    case "VoteResponse": {
      assertTermHistory(message.termHistory)
      const writer = new ByteWriter(1 + 4 + 8 + 1 + 8 + 8 + 4 + TERM_LSN_BYTES * message.termHistory.length)
      writer.u8(TAG.v).u32BE(message.generation)
      writeU53(writer, message.term, "term")
      writer.u8(message.voteGiven ? 1 : 0)
      writeU53(writer, message.flushLsn, "flush_lsn")
      writeU53(writer, message.truncateLsn, "truncate_lsn")
      writeTermHistory(writer, message.termHistory)
      return writer.finish()
    }
    case "AppendResponse": {
      const writer = new ByteWriter(APPEND_RESPONSE_FIXED_BYTES + (message.pageserverFeedback === undefined ? 0 : 160))
      writer.u8(TAG.a).u32BE(message.generation)
      writeU53(writer, message.term, "term")
      writeU53(writer, message.flushLsn, "flush_lsn")
      writeU53(writer, message.commitLsn, "commit_lsn")
      writer.i64BE(message.hsFeedback.tsUs).u64BE(message.hsFeedback.xmin).u64BE(message.hsFeedback.catalogXmin)
      if (message.pageserverFeedback !== undefined) writePageserverFeedback(writer, message.pageserverFeedback)
      return writer.finish()
    }
  }
}

// ---- decoding ----

/**
 * Decodes one proposer → acceptor message (what a safekeeper reads after START_WAL_PUSH). An
 * AppendRequest's walData is a view of `bytes`, not a copy: the WAL is copied once, into the
 * segment file, so the caller must not change `bytes` while it uses the message (received
 * frames are never reused).
 */
export function decodeProposerMessage(bytes: Uint8Array): Result.Result<ProposerMessage, MalformedMessage> {
  const reader = new ByteReader(bytes)
  const tagByte = reader.u8("message tag")
  if (reader.failed) return Result.fail(new MalformedMessage({ tag: "", reason: "empty message: missing tag" }))
  const tag = String.fromCharCode(tagByte)
  let message: ProposerMessage
  switch (tagByte) {
    case TAG.g:
      message = readProposerGreeting(reader)
      break
    case TAG.v:
      message = {
        _tag: "VoteRequest",
        generation: Generation(reader.u32BE("generation")),
        term: Term(reader.u53BE("term"))
      }
      break
    case TAG.e:
      message = {
        _tag: "ProposerElected",
        generation: Generation(reader.u32BE("generation")),
        term: Term(reader.u53BE("term")),
        startStreamingAt: Lsn(reader.u53BE("start_streaming_at")),
        termHistory: readTermHistory(reader)
      }
      break
    case TAG.a:
      message = readAppendRequest(reader, bytes)
      break
    default:
      return Result.fail(new MalformedMessage({ tag: printableTag(tagByte), reason: `unknown proposer message tag 0x${hex2(tagByte)}` }))
  }
  return reader.failure === undefined ? Result.succeed(message) : Result.fail(new MalformedMessage({ tag, reason: reader.failure }))
}

/** Decodes one acceptor → proposer message (what a walproposer reads). */
export function decodeAcceptorMessage(bytes: Uint8Array): Result.Result<AcceptorMessage, MalformedMessage> {
  const reader = new ByteReader(bytes)
  const tagByte = reader.u8("message tag")
  if (reader.failed) return Result.fail(new MalformedMessage({ tag: "", reason: "empty message: missing tag" }))
  const tag = String.fromCharCode(tagByte)
  let message: AcceptorMessage
  switch (tagByte) {
    case TAG.g: {
      const nodeId = NodeId(reader.u53BE("node_id"))
      const mconf = readMemberConfiguration(reader)
      message = { _tag: "AcceptorGreeting", nodeId, mconf, term: Term(reader.u53BE("term")) }
      break
    }
    case TAG.v:
      message = {
        _tag: "VoteResponse",
        generation: Generation(reader.u32BE("generation")),
        term: Term(reader.u53BE("term")),
        voteGiven: readBoolean(reader, "vote_given"),
        flushLsn: Lsn(reader.u53BE("flush_lsn")),
        truncateLsn: Lsn(reader.u53BE("truncate_lsn")),
        termHistory: readTermHistory(reader)
      }
      break
    case TAG.a: {
      const generation = Generation(reader.u32BE("generation"))
      const term = Term(reader.u53BE("term"))
      const flushLsn = Lsn(reader.u53BE("flush_lsn"))
      const commitLsn = Lsn(reader.u53BE("commit_lsn"))
      const hsFeedback: HotStandbyFeedback = {
        tsUs: reader.i53BE("hs_feedback ts"),
        xmin: reader.u64BE("hs_feedback xmin"),
        catalogXmin: reader.u64BE("hs_feedback catalog_xmin")
      }
      // walproposer: "if (s.len > s.cursor) ParsePageserverFeedbackMessage(...)".
      const pageserverFeedback = !reader.failed && reader.remainingBytes > 0 ? readPageserverFeedback(reader) : undefined
      message = { _tag: "AppendResponse", generation, term, flushLsn, commitLsn, hsFeedback, pageserverFeedback }
      break
    }
    default:
      return Result.fail(new MalformedMessage({ tag: printableTag(tagByte), reason: `unknown acceptor message tag 0x${hex2(tagByte)}` }))
  }
  if (!reader.failed && reader.remainingBytes > 0) reader.fail(`${reader.remainingBytes} trailing bytes`)
  return reader.failure === undefined ? Result.succeed(message) : Result.fail(new MalformedMessage({ tag, reason: reader.failure }))
}

// ---- pieces ----

const TAG = { g: 0x67, v: 0x76, e: 0x65, a: 0x61 } as const

function encodeProposerGreeting(message: ProposerGreeting): Uint8Array {
  assert(isCanonicalHexId(message.tenantId), "tenant_id is 32 lowercase hex digits")
  assert(isCanonicalHexId(message.timelineId), "timeline_id is 32 lowercase hex digits")
  assert(isSupportedPgVersion(message.pgVersion), `pg_version ${message.pgVersion} is PostgreSQL 14-17`)
  assert(isValidSegmentSize(message.walSegSizeBytes), `wal_seg_size ${message.walSegSizeBytes} is a valid segment size`)
  const writer = new ByteWriter(128)
  writer.u8(TAG.g).cstring(message.tenantId).cstring(message.timelineId)
  writeMemberConfiguration(writer, message.mconf)
  writer.u32BE(message.pgVersion).u64BE(message.systemId).u32BE(message.walSegSizeBytes)
  return writer.finish()
}

function readProposerGreeting(reader: ByteReader): ProposerGreeting {
  const tenantId = TenantId(readHexId(reader, "tenant_id"))
  const timelineId = TimelineId(readHexId(reader, "timeline_id"))
  const mconf = readMemberConfiguration(reader)
  const pgVersion = reader.u32BE("pg_version")
  // Neon's parser panics on these (PgVersionId::from_full_pg_version); for us they are bad input.
  if (!reader.failed && !isSupportedPgVersion(pgVersion)) {
    reader.fail(`pg_version ${pgVersion} outside ${PG_VERSION_NUM_MIN}..${PG_VERSION_NUM_MAX}`)
  }
  const systemId = reader.u64BE("system_id")
  const walSegSizeBytes = reader.u32BE("wal_seg_size")
  if (!reader.failed && !isValidSegmentSize(walSegSizeBytes)) {
    reader.fail(`wal_seg_size ${walSegSizeBytes} is not a power of two from 1 MiB to 1 GiB`)
  }
  return { _tag: "ProposerGreeting", tenantId, timelineId, mconf, pgVersion, systemId, walSegSizeBytes }
}

function writeAppendRequestHeader(writer: ByteWriter, header: AppendRequestHeader): void {
  assert(header.beginLsn <= header.endLsn, "AppendRequest begin_lsn ≤ end_lsn")
  assert(header.endLsn - header.beginLsn <= MAX_SEND_SIZE_BYTES, "AppendRequest carries at most MAX_SEND_SIZE_BYTES")
  writer.u8(TAG.a).u32BE(header.generation)
  writeU53(writer, header.term, "term")
  writeU53(writer, header.beginLsn, "begin_lsn")
  writeU53(writer, header.endLsn, "end_lsn")
  writeU53(writer, header.commitLsn, "commit_lsn")
  writeU53(writer, header.truncateLsn, "truncate_lsn")
}

/** `reader` reads `input`; the WAL is returned as a view of `input`. */
function readAppendRequest(reader: ByteReader, input: Uint8Array): AppendRequest {
  const generation = Generation(reader.u32BE("generation"))
  const term = Term(reader.u53BE("term"))
  const beginLsn = Lsn(reader.u53BE("begin_lsn"))
  const endLsn = Lsn(reader.u53BE("end_lsn"))
  const commitLsn = Lsn(reader.u53BE("commit_lsn"))
  const truncateLsn = Lsn(reader.u53BE("truncate_lsn"))
  let walData: Uint8Array = new Uint8Array(0)
  if (!reader.failed) {
    if (endLsn < beginLsn) {
      reader.fail(`end_lsn ${endLsn} below begin_lsn ${beginLsn}`)
    } else if (endLsn - beginLsn > MAX_SEND_SIZE_BYTES) {
      reader.fail(`${endLsn - beginLsn} bytes of WAL, more than MAX_SEND_SIZE_BYTES (${MAX_SEND_SIZE_BYTES})`)
    } else {
      const offsetBytes = reader.offsetBytes
      reader.skip(endLsn - beginLsn, "WAL data")
      if (!reader.failed) walData = input.subarray(offsetBytes, offsetBytes + (endLsn - beginLsn))
    }
  }
  return { _tag: "AppendRequest", generation, term, beginLsn, endLsn, commitLsn, truncateLsn, walData }
}

/**
 * `u32 generation, u32 n, n × (u64 id, cstr host, u16 port), u32 m, m × (...)`; m = 0 means
 * not joint. Neon refuses a generation without members and a duplicate id within a set.
 */
function writeMemberConfiguration(writer: ByteWriter, mconf: MemberConfiguration): void {
  const problem = memberConfigurationProblem(mconf)
  assert(problem === undefined, `member configuration to encode: ${problem}`)
  writer.u32BE(mconf.generation)
  writeMemberSet(writer, mconf.members)
  // An empty joint set cannot be told from "not joint" on the wire; Neon sends 0 for both.
  writeMemberSet(writer, mconf.newMembers ?? [])
}

function writeMemberSet(writer: ByteWriter, members: ReadonlyArray<SafekeeperId>): void {
  writer.u32BE(members.length)
  for (const member of members) {
    writeU53(writer, member.id, "node_id")
    writer.cstring(member.host).u16BE(member.pgPort)
  }
}

function readMemberConfiguration(reader: ByteReader): MemberConfiguration {
  const generation = Generation(reader.u32BE("generation"))
  const members = readMemberSet(reader, "members")
  const newMembers = readMemberSet(reader, "new_members")
  const mconf: MemberConfiguration = { generation, members, newMembers: newMembers.length === 0 ? undefined : newMembers }
  if (!reader.failed) {
    const problem = memberConfigurationProblem(mconf)
    if (problem !== undefined) reader.fail(problem)
  }
  return mconf
}

function readMemberSet(reader: ByteReader, what: string): ReadonlyArray<SafekeeperId> {
  const count = reader.countU32BE(`${what} count`, MEMBER_COUNT_MAX, MEMBER_BYTES_MIN)
  const members: SafekeeperId[] = []
  for (let i = 0; i < count && !reader.failed; i++) {
    const id = NodeId(reader.u53BE(`${what}[${i}] node_id`))
    const host = reader.cstring(HOST_LENGTH_MAX_BYTES, `${what}[${i}] host`)
    const pgPort = reader.u16BE(`${what}[${i}] port`)
    members.push({ id, host, pgPort })
  }
  return members
}

function writeTermHistory(writer: ByteWriter, history: TermHistory): void {
  writer.u32BE(history.length)
  for (const entry of history) {
    writeU53(writer, entry.term, "term history term")
    writeU53(writer, entry.lsn, "term history lsn")
  }
}

function assertTermHistory(history: TermHistory): void {
  assert(history.length <= TERM_HISTORY_LENGTH_MAX, `term history of at most ${TERM_HISTORY_LENGTH_MAX} entries`)
}

/**
 * The history is carried as sent: its order is an acceptor-rule question (a proposer sending a
 * disordered history is refused by the rules, not by the codec).
 */
function readTermHistory(reader: ByteReader): TermHistory {
  const count = reader.countU32BE("term history length", TERM_HISTORY_LENGTH_MAX, TERM_LSN_BYTES)
  const history: TermLsn[] = []
  for (let i = 0; i < count && !reader.failed; i++) {
    history.push({ term: Term(reader.u53BE(`term history[${i}] term`)), lsn: Lsn(reader.u53BE(`term history[${i}] lsn`)) })
  }
  return history
}

function readHexId(reader: ByteReader, what: string): string {
  const text = reader.cstring(ID_HEX_LENGTH, what)
  if (reader.failed) return ""
  const id = parseHexId(text)
  if (Result.isFailure(id)) {
    reader.fail(`${what} ${JSON.stringify(text)} is not 32 hex digits`)
    return ""
  }
  return id.success
}

function readBoolean(reader: ByteReader, what: string): boolean {
  const byte = reader.u8(what)
  if (byte > 1) reader.fail(`${what} is ${byte}, not 0 or 1`)
  return byte === 1
}

function writeU53(writer: ByteWriter, value: number, what: string): void {
  assert(Number.isInteger(value) && value >= 0 && value <= U53_MAX, `${what} ${value} is an integer in [0, 2^53-1]`)
  writer.u64BE(value)
}

function printableTag(byte: number): string {
  return byte >= 0x21 && byte <= 0x7e ? String.fromCharCode(byte) : `0x${hex2(byte)}`
}

function hex2(byte: number): string {
  return byte.toString(16).padStart(2, "0")
}
