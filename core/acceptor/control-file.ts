import { Effect, Result, Schema } from "effect"
import { assert } from "../assert.js"
import { Disk, joinPath } from "../io/disk.js"
import { ByteReader, ByteWriter } from "../protocol/bytes.js"
import { crc32c } from "../wal/crc32c.js"
import { Lsn } from "../wal/lsn.js"
import {
  type AcceptorState,
  EMPTY_MEMBER_CONFIGURATION,
  type EvictionState,
  Generation,
  HOST_LENGTH_MAX_BYTES,
  ID_HEX_LENGTH,
  INVALID_GENERATION,
  MEMBER_COUNT_MAX,
  type MemberConfiguration,
  NodeId,
  PARTIAL_SEGMENT_COUNT_MAX,
  PARTIAL_SEGMENT_NAME_LENGTH_MAX_BYTES,
  PARTIAL_UPLOAD_STATUSES,
  type PartialRemoteSegment,
  parseHexId,
  persistedStateProblems,
  type PersistedState,
  type SafekeeperId,
  type ServerInfo,
  type SystemTime,
  TenantId,
  Term,
  TERM_HISTORY_LENGTH_MAX,
  type TermLsn,
  TimelineId,
  UNIX_EPOCH
} from "./state.js"

/**
 * `safekeeper.control` (reference §6; Neon `control_file.rs`, `control_file_upgrade.rs`):
 *
 *   u32 LE magic 0xCAFECEEF | u32 LE format version | bincode body | u32 LE CRC32C of all before
 *
 * The body is bincode with fixed-width little-endian integers: String = u64 length + UTF-8,
 * Vec = u64 count + items, Option = u8 0/1 (+ value), enum = u32 variant index (+ payload);
 * ids are hex strings. A file is verified in Neon's order (checksum, magic, version, body) and
 * any problem is a ControlFileError: a timeline is never silently reset.
 *
 * Versions written: 10, or 9 when the membership configuration is empty (generation 0, no
 * members), as Neon does so that older safekeepers can still read it. A v9 file has no
 * `creation_ts` (it reads back as the Unix epoch), which Neon accepts too: the field is only
 * informational. Unlike Neon we never write v9 for a generation-0 configuration that lists
 * members, because v9 would drop them.
 *
 * Versions read: 10, 9, 8, 7 and 4, upgraded as Neon upgrades them. Versions 1–3 (pre-2022
 * layouts) and 5–6 are refused: Neon itself parses 5 and 6 with today's layout, so a real file of
 * either cannot load there either.
 */
export const CONTROL_FILE_NAME = "safekeeper.control"
/** Written first, then renamed over CONTROL_FILE_NAME. */
export const CONTROL_FILE_PARTIAL_NAME = "safekeeper.control.partial"
export const SK_MAGIC = 0xcafeceef
export const SK_FORMAT_VERSION = 10
/** The format written for an empty configuration (Neon's forward-compatibility rule). */
export const SK_FORMAT_VERSION_NO_MCONF = 9
export const READABLE_FORMAT_VERSIONS: ReadonlyArray<number> = [4, 7, 8, 9, 10]
/** magic + version + checksum. */
const FRAME_BYTES = 4 + 4 + 4
/** A full term history (16 MiB) plus everything else fits well below this. */
export const CONTROL_FILE_SIZE_MAX_BYTES = 32 * 1024 * 1024
/** v4–v9 kept a peers list that Neon always wrote empty; bound it all the same. */
const PERSISTED_PEER_COUNT_MAX = 1024

export const ControlFileErrorReason = Schema.Literals([
  "TooLarge", // larger than CONTROL_FILE_SIZE_MAX_BYTES
  "Truncated", // too short for its frame, or the body ends early
  "BadChecksum",
  "BadMagic",
  "UnsupportedVersion",
  "Malformed", // a body field is not what its type allows (bad hex, UTF-8, enum tag, u64 > 2^53−1)
  "TrailingBytes", // bytes after the body
  "Invalid" // decodes, but breaks a rule of persisted state (persistedStateProblems)
])
export type ControlFileErrorReason = typeof ControlFileErrorReason.Type

export class ControlFileError extends Schema.TaggedError<ControlFileError>()("ControlFileError", {
  reason: ControlFileErrorReason,
  message: Schema.String
}) {}

export interface DecodedControlFile {
  readonly formatVersion: number
  /** Checksum found at the end of the file (already verified). */
  readonly checksum: number
  readonly state: PersistedState
}

/** The version `encodeControlFile` writes by default for this state. */
export function controlFileVersionFor(state: PersistedState): number {
  const { generation, members, newMembers } = state.mconf
  return generation === INVALID_GENERATION && members.length === 0 && newMembers === undefined
    ? SK_FORMAT_VERSION_NO_MCONF
    : SK_FORMAT_VERSION
}

export function encodeControlFile(state: PersistedState, version = controlFileVersionFor(state)): Uint8Array {
  const problems = persistedStateProblems(state)
  assert(problems.length === 0, `control file state: ${problems.join("; ")}`)
  assert(version === SK_FORMAT_VERSION || version === SK_FORMAT_VERSION_NO_MCONF, `control file version ${version} is writable`)
  assert(
    version === SK_FORMAT_VERSION || controlFileVersionFor(state) === SK_FORMAT_VERSION_NO_MCONF,
    "a v9 control file cannot hold a membership configuration"
  )
  const writer = new ByteWriter(512 + 16 * state.acceptorState.termHistory.length)
  writer.u32LE(SK_MAGIC).u32LE(version)
  writer.stringU64LE(state.tenantId).stringU64LE(state.timelineId)
  if (version === SK_FORMAT_VERSION) writeMemberConfiguration(writer, state.mconf)
  writer.u64LE(state.acceptorState.term).u64LE(state.acceptorState.termHistory.length)
  for (const entry of state.acceptorState.termHistory) writer.u64LE(entry.term).u64LE(entry.lsn)
  writer.u32LE(state.server.pgVersion).u64LE(state.server.systemId).u32LE(state.server.walSegSizeBytes)
  writer.stringU64LE(state.proposerUuid)
  writer.u64LE(state.timelineStartLsn).u64LE(state.localStartLsn).u64LE(state.commitLsn)
  writer.u64LE(state.backupLsn).u64LE(state.peerHorizonLsn).u64LE(state.remoteConsistentLsn)
  if (version === SK_FORMAT_VERSION_NO_MCONF) writer.u64LE(0) // peers: always empty
  writer.u64LE(state.partialBackup.segments.length)
  for (const segment of state.partialBackup.segments) {
    writer.u32LE(PARTIAL_UPLOAD_STATUSES.indexOf(segment.status)).stringU64LE(segment.name)
    writer.u64LE(segment.commitLsn).u64LE(segment.flushLsn).u64LE(segment.term)
  }
  if (state.evictionState._tag === "Present") writer.u32LE(0)
  else writer.u32LE(1).u64LE(state.evictionState.flushLsn)
  if (version === SK_FORMAT_VERSION) writer.u64LE(state.creationTs.secsSinceEpoch).u32LE(state.creationTs.nanosSinceEpoch)
  const checksum = crc32c(writer.finish())
  writer.u32LE(checksum)
  return writer.finish()
}

export function decodeControlFile(bytes: Uint8Array): Result.Result<PersistedState, ControlFileError> {
  return Result.map(decodeControlFileDetailed(bytes), (decoded) => decoded.state)
}

/** Like decodeControlFile, also reporting the format version and checksum (for dumps). */
export function decodeControlFileDetailed(bytes: Uint8Array): Result.Result<DecodedControlFile, ControlFileError> {
  const failWith = (reason: ControlFileErrorReason, message: string) => Result.fail(new ControlFileError({ reason, message }))
  if (bytes.byteLength > CONTROL_FILE_SIZE_MAX_BYTES) {
    return failWith("TooLarge", `control file of ${bytes.byteLength} bytes, more than ${CONTROL_FILE_SIZE_MAX_BYTES}`)
  }
  if (bytes.byteLength < FRAME_BYTES) {
    return failWith("Truncated", `control file of ${bytes.byteLength} bytes, shorter than its ${FRAME_BYTES}-byte frame`)
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const bodyEnd = bytes.byteLength - 4
  const checksum = view.getUint32(bodyEnd, true)
  const computed = crc32c(bytes.subarray(0, bodyEnd))
  if (computed !== checksum) {
    return failWith("BadChecksum", `control file checksum mismatch: stored 0x${hex8(checksum)}, computed 0x${hex8(computed)}`)
  }
  const magic = view.getUint32(0, true)
  if (magic !== SK_MAGIC) return failWith("BadMagic", `bad control file magic 0x${hex8(magic)}, expected 0x${hex8(SK_MAGIC)}`)
  const formatVersion = view.getUint32(4, true)
  if (!READABLE_FORMAT_VERSIONS.includes(formatVersion)) {
    return failWith("UnsupportedVersion", `control file version ${formatVersion} is not supported (readable: ${READABLE_FORMAT_VERSIONS.join(", ")})`)
  }
  const reader = new ByteReader(bytes.subarray(8, bodyEnd))
  const state = readBody(reader, formatVersion)
  if (reader.failure !== undefined) {
    return failWith(reader.failedTruncated ? "Truncated" : "Malformed", `control file v${formatVersion}: ${reader.failure}`)
  }
  if (reader.remainingBytes > 0) {
    return failWith("TrailingBytes", `control file v${formatVersion}: ${reader.remainingBytes} bytes after the body`)
  }
  const problems = persistedStateProblems(state)
  if (problems.length > 0) return failWith("Invalid", `control file v${formatVersion}: ${problems.join("; ")}`)
  return Result.succeed({ formatVersion, checksum, state })
}

/** Reads and verifies `<directory>/safekeeper.control`. A missing file is DiskError NotFound. */
export const loadControlFile = Effect.fn("ControlFile.load")(function* (directory: string) {
  const disk = yield* Disk
  const path = joinPath(directory, CONTROL_FILE_NAME)
  const stat = yield* disk.stat(path)
  if (stat !== undefined && stat.sizeBytes > CONTROL_FILE_SIZE_MAX_BYTES) {
    return yield* new ControlFileError({ reason: "TooLarge", message: `${path}: ${stat.sizeBytes} bytes, more than ${CONTROL_FILE_SIZE_MAX_BYTES}` })
  }
  const bytes = yield* disk.readFile(path)
  const decoded = decodeControlFile(bytes)
  if (Result.isFailure(decoded)) {
    return yield* new ControlFileError({ reason: decoded.failure.reason, message: `${path}: ${decoded.failure.message}` })
  }
  return decoded.success
})

export interface PersistOptions {
  /** `--no-sync`: skip the file and directory fsyncs (tests and benchmarks only). */
  readonly noSync: boolean
}

/**
 * Replaces `<directory>/safekeeper.control` atomically (reference §6): write the `.partial`
 * file, fsync it, rename it over the control file, fsync the directory. A crash at any point
 * leaves either the old file or the new one, each with a valid checksum. The state's fields are
 * asserted first (encodeControlFile): writing a broken state is a bug, not bad input.
 */
export const persistControlFile = Effect.fn("ControlFile.persist")(function* (
  directory: string,
  state: PersistedState,
  options: PersistOptions
) {
  const bytes = encodeControlFile(state)
  const disk = yield* Disk
  const partialPath = joinPath(directory, CONTROL_FILE_PARTIAL_NAME)
  yield* Effect.acquireUseRelease(
    disk.open(partialPath, { create: true }),
    (file) =>
      Effect.gen(function* () {
        // A .partial left by an earlier crash may be longer than what we write now.
        yield* file.truncate(0)
        yield* file.write(0, bytes)
        if (!options.noSync) yield* file.sync
      }),
    (file) => file.close
  )
  yield* disk.rename(partialPath, joinPath(directory, CONTROL_FILE_NAME))
  if (!options.noSync) yield* disk.syncDirectory(directory)
})

// ---- body ----

function readBody(reader: ByteReader, version: number): PersistedState {
  const tenantId = TenantId(readHexString(reader, "tenant_id"))
  const timelineId = TimelineId(readHexString(reader, "timeline_id"))
  const mconf = version >= 10 ? readMemberConfiguration(reader) : EMPTY_MEMBER_CONFIGURATION
  const acceptorState = readAcceptorState(reader)
  const server = readServerInfo(reader)
  const proposerUuid = readHexString(reader, "proposer_uuid")
  const lsn = (what: string) => Lsn(reader.u53LE(what))
  if (version === 4) {
    // v4 → current, as Neon's upgrade: no start LSNs yet, backup and remote_consistent unknown.
    const commitLsn = lsn("commit_lsn")
    reader.u64LE("s3_wal_lsn")
    const peerHorizonLsn = lsn("peer_horizon_lsn")
    reader.u64LE("remote_consistent_lsn")
    skipPersistedPeers(reader)
    return {
      tenantId, timelineId, mconf, acceptorState, server, proposerUuid,
      timelineStartLsn: Lsn(0), localStartLsn: Lsn(0), commitLsn, backupLsn: Lsn(0), peerHorizonLsn,
      remoteConsistentLsn: Lsn(0), partialBackup: { segments: [] }, evictionState: { _tag: "Present" }, creationTs: UNIX_EPOCH
    }
  }
  const timelineStartLsn = lsn("timeline_start_lsn")
  const localStartLsn = lsn("local_start_lsn")
  const commitLsn = lsn("commit_lsn")
  const backupLsn = lsn("backup_lsn")
  const peerHorizonLsn = lsn("peer_horizon_lsn")
  const remoteConsistentLsn = lsn("remote_consistent_lsn")
  if (version <= 9) skipPersistedPeers(reader)
  const segments = version >= 8 ? readPartialSegments(reader) : []
  const evictionState: EvictionState = version >= 9 ? readEvictionState(reader) : { _tag: "Present" }
  const creationTs: SystemTime = version >= 10
    ? { secsSinceEpoch: reader.u53LE("creation_ts seconds"), nanosSinceEpoch: reader.u32LE("creation_ts nanoseconds") }
    : UNIX_EPOCH
  return {
    tenantId, timelineId, mconf, acceptorState, server, proposerUuid,
    timelineStartLsn, localStartLsn, commitLsn, backupLsn, peerHorizonLsn, remoteConsistentLsn,
    partialBackup: { segments }, evictionState, creationTs
  }
}

function writeMemberConfiguration(writer: ByteWriter, mconf: MemberConfiguration): void {
  writer.u32LE(mconf.generation)
  writeMemberSet(writer, mconf.members)
  if (mconf.newMembers === undefined) {
    writer.u8(0)
  } else {
    writer.u8(1)
    writeMemberSet(writer, mconf.newMembers)
  }
}

function writeMemberSet(writer: ByteWriter, members: ReadonlyArray<SafekeeperId>): void {
  writer.u64LE(members.length)
  for (const member of members) writer.u64LE(member.id).stringU64LE(member.host).u16LE(member.pgPort)
}

function readMemberConfiguration(reader: ByteReader): MemberConfiguration {
  const generation = Generation(reader.u32LE("mconf generation"))
  const members = readMemberSet(reader, "mconf members")
  const option = readOptionTag(reader, "mconf new_members")
  // Some(empty) is kept as []: bincode tells it from None, so a round trip must too.
  const newMembers = option ? readMemberSet(reader, "mconf new_members") : undefined
  return { generation, members, newMembers }
}

function readMemberSet(reader: ByteReader, what: string): ReadonlyArray<SafekeeperId> {
  const count = reader.countU64LE(`${what} count`, MEMBER_COUNT_MAX, 8 + 8 + 2)
  const members: SafekeeperId[] = []
  for (let i = 0; i < count && !reader.failed; i++) {
    const id = NodeId(reader.u53LE(`${what}[${i}] id`))
    const host = reader.stringU64LE(HOST_LENGTH_MAX_BYTES, `${what}[${i}] host`)
    members.push({ id, host, pgPort: reader.u16LE(`${what}[${i}] pg_port`) })
  }
  return members
}

function readAcceptorState(reader: ByteReader): AcceptorState {
  const term = Term(reader.u53LE("term"))
  const count = reader.countU64LE("term_history count", TERM_HISTORY_LENGTH_MAX, 16)
  const termHistory: TermLsn[] = []
  for (let i = 0; i < count && !reader.failed; i++) {
    termHistory.push({ term: Term(reader.u53LE(`term_history[${i}] term`)), lsn: Lsn(reader.u53LE(`term_history[${i}] lsn`)) })
  }
  return { term, termHistory }
}

function readServerInfo(reader: ByteReader): ServerInfo {
  return {
    pgVersion: reader.u32LE("pg_version"),
    systemId: reader.u64LE("system_id"),
    walSegSizeBytes: reader.u32LE("wal_seg_size")
  }
}

function readPartialSegments(reader: ByteReader): ReadonlyArray<PartialRemoteSegment> {
  const count = reader.countU64LE("partial_backup count", PARTIAL_SEGMENT_COUNT_MAX, 4 + 8 + 8 * 3)
  const segments: PartialRemoteSegment[] = []
  for (let i = 0; i < count && !reader.failed; i++) {
    const statusIndex = reader.u32LE(`partial_backup[${i}] status`)
    const status = PARTIAL_UPLOAD_STATUSES[statusIndex]
    if (status === undefined && !reader.failed) reader.fail(`partial_backup[${i}] status ${statusIndex} is not 0, 1 or 2`)
    segments.push({
      status: status ?? "InProgress",
      name: reader.stringU64LE(PARTIAL_SEGMENT_NAME_LENGTH_MAX_BYTES, `partial_backup[${i}] name`),
      commitLsn: Lsn(reader.u53LE(`partial_backup[${i}] commit_lsn`)),
      flushLsn: Lsn(reader.u53LE(`partial_backup[${i}] flush_lsn`)),
      term: Term(reader.u53LE(`partial_backup[${i}] term`))
    })
  }
  return segments
}

function readEvictionState(reader: ByteReader): EvictionState {
  const variant = reader.u32LE("eviction_state")
  if (variant === 1) return { _tag: "Offloaded", flushLsn: Lsn(reader.u53LE("eviction_state flush_lsn")) }
  if (variant !== 0 && !reader.failed) reader.fail(`eviction_state variant ${variant} is not 0 or 1`)
  return { _tag: "Present" }
}

/** v4–v9 `peers: Vec<(NodeId, {backup_lsn, term, flush_lsn, commit_lsn})>`: informational, dropped. */
function skipPersistedPeers(reader: ByteReader): void {
  const count = reader.countU64LE("peers count", PERSISTED_PEER_COUNT_MAX, 8 * 5)
  for (let i = 0; i < count && !reader.failed; i++) reader.skip(8 * 5, `peers[${i}]`)
}

function readOptionTag(reader: ByteReader, what: string): boolean {
  const tag = reader.u8(`${what} option tag`)
  if (tag > 1 && !reader.failed) reader.fail(`${what} option tag ${tag} is not 0 or 1`)
  return tag === 1
}

function readHexString(reader: ByteReader, what: string): string {
  const text = reader.stringU64LE(ID_HEX_LENGTH, what)
  if (reader.failed) return "0".repeat(ID_HEX_LENGTH)
  const id = parseHexId(text)
  if (Result.isFailure(id)) {
    reader.fail(`${what} ${JSON.stringify(text)} is not 32 hex digits`)
    return "0".repeat(ID_HEX_LENGTH)
  }
  return id.success
}

function hex8(value: number): string {
  return value.toString(16).toUpperCase().padStart(8, "0")
}
