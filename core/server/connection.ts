import { Effect, Result, Semaphore } from "effect"
import { assertNever } from "../assert.js"
import { type NodeId, parseTenantId, parseTimelineId, type TenantId, Term, type TimelineId } from "../acceptor/state.js"
import { US_PER_SECOND } from "../io/clock.js"
import type { Disk } from "../io/disk.js"
import { type Log, logInfo, logWarn } from "../io/log.js"
import type { Connection, NetError } from "../io/net.js"
import { parseReplicationCommand, type ReplicationCommand } from "../protocol/commands.js"
import {
  encodeAuthenticationOk,
  encodeCommandComplete,
  encodeCopyBothResponse,
  encodeCopyData,
  encodeCopyDone,
  encodeDataRow,
  encodeErrorResponse,
  encodeParameterStatus,
  encodeReadyForQuery,
  encodeRowDescription,
  encodeSslRefusal,
  type ErrorSeverity,
  type FrontendMessage,
  INT4_OID,
  parseStartupOptions,
  PgFrontendReader,
  PgWireError,
  type StartupPacket,
  TEXT_OID
} from "../protocol/pg-wire.js"
import type { TimelineRegistry } from "../timeline/registry.js"
import type { Timeline, TimelineKey } from "../timeline/timeline.js"
import { formatLsn } from "../wal/lsn.js"
import type { CopyChannel, CopyInput } from "./copy-channel.js"
import { receiveWal } from "./receive-wal.js"
import { checkStart, sendWal } from "./send-wal.js"

/**
 * One client connection on the Postgres-protocol port (Neon's `handler.rs`, reference §2):
 * startup (SSL and GSSENC refused with 'N', trust authentication for now: the JWT carried in a
 * cleartext-password message comes with the auth issue), then simple queries until Terminate.
 * A bad command gets an ErrorResponse and the connection stays usable; a protocol violation
 * gets a FATAL ErrorResponse and closes this connection only. WAL flows in CopyBoth mode:
 * START_WAL_PUSH feeds the timeline's acceptor, START_REPLICATION streams WAL out.
 */
export interface ConnectionContext {
  readonly registry: TimelineRegistry
  readonly nodeId: NodeId
  readonly connectionId: number
  /**
   * A durable step failed on disk (a write or fsync error): the process must stop, as
   * PostgreSQL PANICs after a failed fsync, since what the page cache now holds may never
   * reach the disk and must not be trusted or retried.
   */
  readonly fatal?: (reason: string) => Effect.Effect<void, never, Log>
}

/** Neon's socket read timeout: a peer silent this long is gone. */
export const SOCKET_READ_TIMEOUT_US = 10 * 60 * US_PER_SECOND
/** SSLRequest and GSSENCRequest may each be refused once before the StartupMessage. */
const STARTUP_PACKETS_MAX = 3
/** The server_version we claim when the timeline's own PostgreSQL version is not known. */
export const SERVER_VERSION_DEFAULT = "15.0"
/** The only consensus protocol this safekeeper speaks. */
export const PROTO_VERSION = 3

interface Session {
  readonly context: ConnectionContext
  readonly wire: WireConnection
  readonly applicationName: string
  readonly key: TimelineKey | undefined
}

export const handleConnection = (connection: Connection, context: ConnectionContext): Effect.Effect<void, never, Disk | Log> =>
  Effect.gen(function* () {
    const wire = new WireConnection(connection)
    const started = yield* Effect.result(startup(wire, context))
    if (Result.isFailure(started)) {
      yield* closeWithError(wire, context, started.failure)
      return
    }
    if (started.success === undefined) return
    const session = started.success
    const served = yield* Effect.result(serveQueries(session))
    if (Result.isFailure(served)) yield* closeWithError(wire, context, served.failure)
  })

// ---- startup ----

type StartupFailure = PgWireError | NetError | SessionError

/** A refusal that ends the connection with a FATAL ErrorResponse. */
class SessionError {
  readonly _tag = "SessionError"
  constructor(readonly code: string, readonly message: string, readonly severity: ErrorSeverity = "FATAL") {}
}

const startup = (wire: WireConnection, context: ConnectionContext): Effect.Effect<Session | undefined, StartupFailure, Log> =>
  Effect.gen(function* () {
    for (let packetNo = 0; packetNo < STARTUP_PACKETS_MAX; packetNo++) {
      const packet = yield* wire.next
      if (packet === undefined) return undefined
      if (packet._tag === "SslRequest" || packet._tag === "GssEncRequest") {
        yield* wire.write(encodeSslRefusal())
        continue
      }
      // A cancel has nothing to cancel here: nothing runs long enough (Neon ignores it too).
      if (packet._tag === "CancelRequest") return undefined
      if (packet._tag !== "StartupMessage") return yield* Effect.fail(new SessionError("08P01", `expected a startup packet, got ${packet._tag}`))
      const session = yield* sessionOf(wire, context, packet.parameters)
      const timeline = session.key === undefined ? undefined : context.registry.get(session.key)
      const serverVersion = timeline === undefined ? SERVER_VERSION_DEFAULT : `${Math.floor(timeline.persisted.server.pgVersion / 10000)}.0`
      yield* wire.write(encodeAuthenticationOk())
      for (const [name, value] of [
        ["server_version", serverVersion],
        ["server_encoding", "UTF8"],
        ["client_encoding", "UTF8"],
        ["DateStyle", "ISO, MDY"],
        ["integer_datetimes", "on"],
        ["standard_conforming_strings", "on"],
        ["application_name", session.applicationName]
      ] as const) yield* wire.write(encodeParameterStatus(name, value))
      yield* wire.write(encodeReadyForQuery("I"))
      yield* logInfo("connection started", {
        connection: context.connectionId,
        application_name: session.applicationName,
        timeline: session.key === undefined ? undefined : `${session.key.tenantId}/${session.key.timelineId}`
      })
      return session
    }
    return yield* Effect.fail(new SessionError("08P01", "too many SSL/GSSENC requests before the startup message"))
  })

/** Tenant and timeline come from `options` (`-c tenant_id=... timeline_id=...`), as the walproposer sends them. */
function sessionOf(wire: WireConnection, context: ConnectionContext, parameters: ReadonlyMap<string, string>): Effect.Effect<Session, SessionError | PgWireError> {
  return Effect.gen(function* () {
    const options = parameters.get("options")
    const values = new Map<string, string>()
    if (options !== undefined) {
      const parsed = parseStartupOptions(options)
      if (Result.isFailure(parsed)) return yield* Effect.fail(new SessionError("08P01", `bad startup options: ${parsed.failure.message}`))
      for (const [key, value] of parsed.success) values.set(key, value)
    }
    const tenantText = values.get("tenant_id") ?? values.get("ztenantid")
    const timelineText = values.get("timeline_id") ?? values.get("ztimelineid")
    let key: TimelineKey | undefined
    if (tenantText !== undefined || timelineText !== undefined) {
      if (tenantText === undefined || timelineText === undefined) {
        return yield* Effect.fail(new SessionError("08P01", "startup options name only one of tenant_id and timeline_id"))
      }
      const tenantId = parseTenantId(tenantText)
      if (Result.isFailure(tenantId)) return yield* Effect.fail(new SessionError("22023", `bad tenant_id: ${tenantId.failure.message}`))
      const timelineId = parseTimelineId(timelineText)
      if (Result.isFailure(timelineId)) return yield* Effect.fail(new SessionError("22023", `bad timeline_id: ${timelineId.failure.message}`))
      key = { tenantId: canonical(tenantId.success), timelineId: canonical(timelineId.success) }
    }
    return { context, wire, applicationName: parameters.get("application_name") ?? "", key }
  })
}

function canonical<Id extends TenantId | TimelineId>(id: Id): Id {
  return id.toLowerCase() as Id
}

// ---- queries ----

type QueryFailure = StartupFailure

const serveQueries = (session: Session): Effect.Effect<void, QueryFailure, Disk | Log> =>
  Effect.gen(function* () {
    const { wire } = session
    while (true) {
      const message = yield* wire.next
      if (message === undefined) return
      if (isStartupPacket(message)) return yield* Effect.fail(new SessionError("08P01", `unexpected ${message._tag} after startup`))
      switch (message._tag) {
        case "Terminate":
          return
        case "Query": {
          const next = yield* runQuery(session, message.text)
          if (next === "close") return
          break
        }
        case "Sync":
          yield* wire.write(encodeReadyForQuery("I"))
          break
        case "Flush":
          break
        case "UnsupportedFrontendMessage":
          yield* sendError(wire, "ERROR", "0A000", `the extended query protocol (${message.name}) is not supported; use simple queries`)
          yield* wire.write(encodeReadyForQuery("I"))
          break
        default:
          return yield* Effect.fail(new SessionError("08P01", `unexpected ${message._tag} outside COPY`))
      }
    }
  })

/** One simple query; "close" when the connection must end (after a push, or a broken stream). */
const runQuery = (session: Session, text: string): Effect.Effect<"continue" | "close", QueryFailure, Disk | Log> =>
  Effect.gen(function* () {
    const { wire } = session
    if (text.trim() === "" || text.trim() === ";") {
      yield* wire.write(encodeCommandCompleteEmpty())
      yield* wire.write(encodeReadyForQuery("I"))
      return "continue"
    }
    const parsed = parseReplicationCommand(text)
    if (Result.isFailure(parsed)) {
      yield* sendError(wire, "ERROR", "42601", parsed.failure.message)
      yield* wire.write(encodeReadyForQuery("I"))
      return "continue"
    }
    const outcome = yield* Effect.result(runCommand(session, parsed.success))
    if (Result.isSuccess(outcome)) return outcome.success
    const error = outcome.failure
    if (error instanceof CommandRefusal) {
      yield* sendError(wire, "ERROR", error.code, error.message)
      yield* wire.write(encodeReadyForQuery("I"))
      return "continue"
    }
    return yield* Effect.fail(error)
  })

/** A command refused with an ErrorResponse; the connection stays usable. */
class CommandRefusal {
  readonly _tag = "CommandRefusal"
  constructor(readonly code: string, readonly message: string) {}
}

const runCommand = (session: Session, command: ReplicationCommand): Effect.Effect<"continue" | "close", QueryFailure | CommandRefusal, Disk | Log> =>
  Effect.gen(function* () {
    const { wire, context } = session
    switch (command._tag) {
      case "IdentifySystem": {
        const timeline = yield* requireTimeline(session)
        // The walproposer's recovery and peers need the end of WAL; everyone else only what is committed.
        const positions = timeline.positions.get()
        const app = session.applicationName
        const xlogpos = app === "wal_proposer_recovery" || app.startsWith("safekeeper") ? positions.flushLsn : positions.commitLsn
        yield* wire.write(encodeRowDescription([
          { name: "systemid", typeOid: TEXT_OID },
          { name: "timeline", typeOid: INT4_OID },
          { name: "xlogpos", typeOid: TEXT_OID },
          { name: "dbname", typeOid: TEXT_OID }
        ]))
        yield* wire.write(encodeDataRow([timeline.persisted.server.systemId.toString(), "1", formatLsn(xlogpos), null]))
        yield* complete(wire, "IDENTIFY_SYSTEM")
        return "continue"
      }
      case "TimelineStatus": {
        const key = yield* requireKey(session)
        const timeline = context.registry.get(key)
        yield* wire.write(encodeRowDescription([{ name: "flush_lsn", typeOid: TEXT_OID }, { name: "commit_lsn", typeOid: TEXT_OID }]))
        if (timeline !== undefined) {
          const positions = timeline.positions.get()
          yield* wire.write(encodeDataRow([formatLsn(positions.flushLsn), formatLsn(positions.commitLsn)]))
        }
        yield* complete(wire, "TIMELINE_STATUS")
        return "continue"
      }
      case "Show": {
        const value = showValue(session, command.name)
        if (value === undefined) return yield* Effect.fail(new CommandRefusal("42704", `unrecognized configuration parameter "${command.name}"`))
        yield* wire.write(encodeRowDescription([{ name: command.name, typeOid: TEXT_OID }]))
        yield* wire.write(encodeDataRow([value]))
        yield* complete(wire, "SHOW")
        return "continue"
      }
      case "ShowUnknown":
        return yield* Effect.fail(new CommandRefusal("42704", `unrecognized configuration parameter "${command.name}"`))
      case "ReadReplicationSlot": {
        // A safekeeper keeps no slots: every slot reads as a physical slot with no reserved
        // WAL, so `pg_receivewal -S` starts from IDENTIFY_SYSTEM's position as with a new slot.
        yield* wire.write(encodeRowDescription([
          { name: "slot_type", typeOid: TEXT_OID },
          { name: "restart_lsn", typeOid: TEXT_OID },
          { name: "restart_tli", typeOid: 20 }
        ]))
        yield* wire.write(encodeDataRow(["physical", null, null]))
        yield* complete(wire, "READ_REPLICATION_SLOT")
        return "continue"
      }
      case "TimelineHistory":
        // Safekeepers hold PostgreSQL timeline 1 only, which has no history file.
        return yield* Effect.fail(new CommandRefusal("58P01", `could not open file "pg_wal/${command.timelineId.toString(16).toUpperCase().padStart(8, "0")}.history": No such file or directory`))
      case "SetDatestyle":
        yield* complete(wire, "SELECT 1")
        return "continue"
      case "StartWalPush":
        return yield* startWalPush(session, command)
      case "StartReplication":
        return yield* startReplication(session, command)
      default:
        return assertNever(command, "replication command")
    }
  })

/** A disk error, or an acceptor or WAL storage fenced by an earlier one: the node must stop. */
function isDurableFailure(error: { readonly _tag: string }): boolean {
  if (error._tag === "DiskError") return true
  return (error._tag === "AcceptorError" || error._tag === "WalStorageError") && "reason" in error && error.reason === "Stopped"
}

const startWalPush = (session: Session, command: Extract<ReplicationCommand, { _tag: "StartWalPush" }>) =>
  Effect.gen(function* () {
    const { wire, context } = session
    const key = yield* requireKey(session)
    if (command.protoVersion !== PROTO_VERSION) {
      return yield* Effect.fail(new CommandRefusal("0A000", `unsupported consensus protocol version ${command.protoVersion}; this safekeeper speaks ${PROTO_VERSION}`))
    }
    yield* wire.write(encodeCopyBothResponse())
    const channel = copyChannel(wire)
    const pushed = yield* Effect.result(receiveWal(channel, {
      timelineFor: (greeting) =>
        Effect.gen(function* () {
          if (greeting.tenantId !== key.tenantId || greeting.timelineId !== key.timelineId) {
            return yield* context.registry.lookup(key)
          }
          return yield* context.registry.getOrCreate(key, {
            pgVersion: greeting.pgVersion,
            systemId: greeting.systemId,
            walSegSizeBytes: greeting.walSegSizeBytes
          }, command.allowTimelineCreation)
        })
    }))
    if (Result.isFailure(pushed)) {
      const error = pushed.failure
      yield* logWarn("push failed", { connection: context.connectionId, error: describeError(error) })
      yield* sendError(wire, "ERROR", sqlStateOf(error), describeError(error)).pipe(Effect.ignore)
      if (context.fatal !== undefined && isDurableFailure(error)) yield* context.fatal(describeError(error))
    }
    return "close" as const
  })

const startReplication = (session: Session, command: Extract<ReplicationCommand, { _tag: "StartReplication" }>) =>
  Effect.gen(function* () {
    const { wire, context } = session
    const timeline = yield* requireTimeline(session)
    if (command.timelineId !== undefined && command.timelineId !== 1) {
      return yield* Effect.fail(new CommandRefusal("XX000", `requested timeline ${command.timelineId} is not in this server's history`))
    }
    const term = command.term === undefined ? undefined : Term(command.term)
    const refused = checkStart(timeline, { startLsn: command.startLsn, term })
    if (refused !== undefined) return yield* Effect.fail(new CommandRefusal(refused.code, refused.message))
    yield* wire.write(encodeCopyBothResponse())
    const kind = term !== undefined ? "peer" as const : session.applicationName.includes("pageserver") ? "pageserver" as const : "standby" as const
    const ended = yield* Effect.result(sendWal(copyChannel(wire), timeline, {
      startLsn: command.startLsn,
      term,
      applicationName: session.applicationName,
      kind
    }))
    if (Result.isFailure(ended)) {
      const error = ended.failure
      yield* logWarn("walsender failed", { connection: context.connectionId, error: describeError(error) })
      yield* sendError(wire, "ERROR", sqlStateOf(error), describeError(error)).pipe(Effect.ignore)
      return "close" as const
    }
    switch (ended.success) {
      case "ClientDone":
        // As PostgreSQL's walsender ends a stream the client stopped (pg-replication.md §5a).
        yield* wire.write(encodeCopyDone())
        yield* wire.write(encodeCommandComplete("START_STREAMING"))
        yield* complete(wire, "START_REPLICATION")
        return "continue" as const
      case "TermChanged":
        yield* sendError(wire, "ERROR", "XX000", `term changed from ${term ?? "?"} while streaming; ending the stream`)
        return "close" as const
      case "ClientGone":
        return "close" as const
    }
  })

function showValue(session: Session, name: string): string | undefined {
  switch (name.toLowerCase()) {
    case "data_directory_mode":
      return "0700"
    case "wal_segment_size": {
      const timeline = session.key === undefined ? undefined : session.context.registry.get(session.key)
      const bytes = timeline?.segmentSizeBytes ?? 16 * 1024 * 1024
      // pg_receivewal parses "%d%s" with MB or GB.
      return bytes >= 1024 * 1024 * 1024 ? `${bytes / (1024 * 1024 * 1024)}GB` : `${bytes / (1024 * 1024)}MB`
    }
    default:
      return undefined
  }
}

const requireKey = (session: Session): Effect.Effect<TimelineKey, CommandRefusal> =>
  session.key === undefined
    ? Effect.fail(new CommandRefusal("08P01", "tenant_id and timeline_id must be given in the startup options (options='-c tenant_id=... timeline_id=...')"))
    : Effect.succeed(session.key)

const requireTimeline = (session: Session): Effect.Effect<Timeline, CommandRefusal> =>
  Effect.flatMap(requireKey(session), (key) => {
    const timeline = session.context.registry.get(key)
    return timeline === undefined
      ? Effect.fail(new CommandRefusal("58P01", `timeline ${key.tenantId}/${key.timelineId} does not exist on this safekeeper`))
      : Effect.succeed(timeline)
  })

const complete = (wire: WireConnection, tag: string) =>
  Effect.andThen(wire.write(encodeCommandComplete(tag)), wire.write(encodeReadyForQuery("I")))

function encodeCommandCompleteEmpty(): Uint8Array {
  // EmptyQueryResponse: 'I' with an empty body.
  return Uint8Array.of(0x49, 0, 0, 0, 4)
}

const sendError = (wire: WireConnection, severity: ErrorSeverity, code: string, message: string) =>
  wire.write(encodeErrorResponse({ severity, code, message }))

const closeWithError = (wire: WireConnection, context: ConnectionContext, error: StartupFailure) =>
  Effect.gen(function* () {
    // A broken connection cannot carry an error; anything else gets a FATAL before the close.
    if (error instanceof SessionError || error instanceof PgWireError) {
      yield* logWarn("connection refused", { connection: context.connectionId, error: error.message })
      yield* sendError(wire, "FATAL", error instanceof SessionError ? error.code : "08P01", error.message).pipe(Effect.ignore)
    }
  })

function isStartupPacket(message: StartupPacket | FrontendMessage): message is StartupPacket {
  return message._tag === "StartupMessage" || message._tag === "SslRequest" || message._tag === "GssEncRequest" || message._tag === "CancelRequest"
}

export function describeError(error: unknown): string {
  if (typeof error === "object" && error !== null) {
    const tag = "_tag" in error ? String((error as { _tag: unknown })._tag) : "Error"
    const reason = "reason" in error ? ` ${String((error as { reason: unknown }).reason)}` : ""
    const message = "message" in error ? `: ${String((error as { message: unknown }).message)}` : ""
    return `${tag}${reason}${message}`
  }
  return String(error)
}

function sqlStateOf(error: unknown): string {
  if (typeof error === "object" && error !== null && "_tag" in error) {
    const tag = (error as { _tag: unknown })._tag
    if (tag === "TimelineError" && (error as { reason?: unknown }).reason === "NotFound") return "58P01"
    if (tag === "SendError" && "code" in error) return String(error.code)
    if (tag === "MalformedMessage" || tag === "PgWireError" || tag === "PushError") return "08P01"
  }
  return "XX000"
}

// ---- framing ----

/**
 * The connection's byte stream as Postgres messages: reads feed a bounded frame reader (one
 * message at most PG_MESSAGE_LENGTH_MAX_BYTES), writes are serialized so frames from several
 * fibers never interleave.
 */
export class WireConnection {
  private readonly reader = new PgFrontendReader()
  private readonly writeLock = Semaphore.makeUnsafe(1)
  private ended = false

  constructor(readonly connection: Connection) {}

  /** The next startup packet or message; undefined once the peer closed. */
  readonly next: Effect.Effect<StartupPacket | FrontendMessage | undefined, PgWireError | NetError> = Effect.suspend(() => {
    const self = this
    return Effect.gen(function* () {
      while (true) {
        const decoded = self.reader.next()
        if (Result.isFailure(decoded)) return yield* Effect.fail(decoded.failure)
        if (decoded.success !== undefined) return decoded.success
        if (self.ended) {
          if (self.reader.bufferedBytes > 0) return yield* Effect.fail(new PgWireError({ reason: "Malformed", message: "connection closed inside a message" }))
          return undefined
        }
        const chunk: Uint8Array | undefined = yield* self.connection.read.pipe(Effect.timeoutOrElse({
          duration: `${SOCKET_READ_TIMEOUT_US / 1000} millis`,
          orElse: () => Effect.succeed(undefined)
        }))
        if (chunk === undefined) self.ended = true
        else self.reader.push(chunk)
      }
    })
  })

  write(bytes: Uint8Array): Effect.Effect<void, NetError> {
    return this.writeLock.withPermit(this.connection.write(bytes))
  }
}

/** CopyBoth over the wire connection: CopyData payloads in and out; anything else ends it. */
function copyChannel(wire: WireConnection): CopyChannel {
  return {
    receive: Effect.flatMap(wire.next, (message): Effect.Effect<CopyInput, PgWireError> => {
      if (message === undefined) return Effect.succeed({ _tag: "Gone", reason: "connection closed" })
      switch (message._tag) {
        case "CopyData":
          return Effect.succeed({ _tag: "Data", payload: message.data })
        case "CopyDone":
          return Effect.succeed({ _tag: "Done" })
        case "CopyFail":
          return Effect.succeed({ _tag: "Gone", reason: `client sent CopyFail: ${message.message}` })
        case "Terminate":
          return Effect.succeed({ _tag: "Gone", reason: "client sent Terminate" })
        default:
          return Effect.fail(new PgWireError({ reason: "Malformed", message: `unexpected ${message._tag} during COPY` }))
      }
    }),
    send: (payload) => wire.write(encodeCopyData(payload)),
    sendFrame: (frame) => wire.write(frame)
  }
}
