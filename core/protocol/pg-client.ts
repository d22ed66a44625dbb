import { Effect, Result, Schema } from "effect"
import { assert } from "../assert.js"
import { type Connection, Net, NetError } from "../io/net.js"
import { decodeUtf8 } from "./bytes.js"
import {
  type BackendMessage,
  encodeCopyData,
  encodeCopyDataHeader,
  encodeCopyDone,
  encodePasswordMessage,
  encodeQuery,
  encodeStartupMessage,
  encodeTerminate,
  type PgNotice,
  PgBackendReader,
  PgWireError
} from "./pg-wire.js"

/**
 * A small PostgreSQL-protocol client over a `Connection` (pg-replication.md §1-§5): startup
 * without TLS, trust or cleartext-password authentication, simple queries with text results,
 * and CopyBoth for replication (START_REPLICATION, START_WAL_PUSH). Used by the proposer, the
 * WAL receiver, peer recovery and the tests, against both the safekeeper and a real Postgres.
 *
 * Every failure is typed: `PgServerError` when the server answered with an ErrorResponse (the
 * connection stays usable after a simple query's error, since we read on to ReadyForQuery),
 * `PgClientError` for everything else, after which the connection is unusable. Buffering is
 * bounded by the wire reader's message cap, results by row and byte maxima, and the messages
 * between two expected ones by a count.
 */

/** Rows one simple query may return: replication commands return one; this bounds a bad server. */
export const QUERY_RESULT_ROW_COUNT_MAX = 10_000
/** Bytes of values one simple query may return (TIMELINE_HISTORY files are small). */
export const QUERY_RESULT_BYTES_MAX = 16 * 1024 * 1024
/** ParameterStatus, NoticeResponse, BackendKeyData between two messages the flow waits for. */
export const SIDE_MESSAGE_COUNT_MAX = 1024
/** CopyData a client drops while it waits for the server's CopyDone at the end of a COPY. */
export const COPY_DRAIN_BYTES_MAX = 64 * 1024 * 1024

export const PgClientErrorReason = Schema.Literals([
  "Net", // the connection failed (cause: NetError)
  "Wire", // the server broke the protocol (cause: PgWireError)
  "ConnectionClosed", // the server closed the connection where a message was due
  "PasswordRequired", // the server asked for a password and none was given
  "UnsupportedAuthentication", // SASL, MD5, GSS, ...: not spoken here
  "UnexpectedMessage", // a valid message where the flow does not allow it
  "TooMuchData", // more rows, bytes or side messages than the bounds above
  "NotReady" // an operation while another one runs or after one failed midway
])
export type PgClientErrorReason = typeof PgClientErrorReason.Type

export class PgClientError extends Schema.TaggedError<PgClientError>()("PgClientError", {
  reason: PgClientErrorReason,
  message: Schema.String,
  cause: Schema.optional(Schema.Union([NetError, PgWireError]))
}) {}

/** The server's ErrorResponse, by field (PgNotice). */
export class PgServerError extends Schema.TaggedError<PgServerError>()("PgServerError", {
  severity: Schema.String,
  /** SQLSTATE. */
  code: Schema.String,
  message: Schema.String,
  detail: Schema.optional(Schema.String),
  hint: Schema.optional(Schema.String)
}) {}

export type PgError = PgClientError | PgServerError

export interface PgConnectOptions {
  readonly user: string
  readonly database: string
  /** "true" opens a physical walsender (pg_receivewal, standbys, Neon's clients). */
  readonly replication?: "true" | undefined
  readonly applicationName?: string | undefined
  /** The startup `options` string, e.g. `-c timeline_id=<hex> tenant_id=<hex>` for a safekeeper. */
  readonly options?: string | undefined
  /** Sent if the server asks for a cleartext password (a JWT for a safekeeper with auth). */
  readonly password?: string | undefined
}

/** One result set in text format; SQL NULL is null. A bare CommandComplete has no columns. */
export interface QueryResult {
  readonly columns: ReadonlyArray<string>
  readonly rows: ReadonlyArray<ReadonlyArray<string | null>>
  readonly commandTag: string
}

export interface PgClient {
  /** ParameterStatus values, kept current (server_version, integer_datetimes, ...). */
  readonly parameters: ReadonlyMap<string, string>
  readonly backendKey: { readonly processId: number; readonly secretKey: number } | undefined
  /** The last result set of the query (the only one for every replication command). */
  simpleQuery(text: string): Effect.Effect<QueryResult, PgError>
  /** Sends the query and waits for CopyBothResponse. */
  startCopyBoth(text: string): Effect.Effect<CopyBoth, PgError>
  /** Terminate, then close; never fails (the server may already be gone). */
  readonly terminate: Effect.Effect<void>
  readonly close: Effect.Effect<void>
}

/**
 * One CopyBoth stream. One fiber may read while another writes (a receiver reads WAL while it
 * sends status updates); each write is one whole frame, so writes never interleave mid-frame.
 */
export interface CopyBoth {
  /** The next CopyData payload, or undefined once the server ended its side (CopyDone, or a CommandComplete). */
  readonly readCopyData: Effect.Effect<Uint8Array | undefined, PgError>
  writeCopyData(payload: Uint8Array): Effect.Effect<void, PgClientError>
  /**
   * One CopyData frame whose payload is `parts` one after another, written as one writev: a
   * message header and the WAL it carries go out from their own buffers, never joined.
   */
  writeCopyDataParts(parts: ReadonlyArray<Uint8Array>): Effect.Effect<void, PgClientError>
  readonly sendCopyDone: Effect.Effect<void, PgClientError>
  /**
   * Ends the COPY: sends CopyDone if not yet sent, drops CopyData until the server's CopyDone,
   * then reads the closing result sets (e.g. the next timeline, START_STREAMING,
   * START_REPLICATION) up to ReadyForQuery. The client is then ready for queries again.
   */
  readonly finish: Effect.Effect<ReadonlyArray<QueryResult>, PgError>
}

/** Opens a connection with the `Net` service and runs the startup on it. */
export const connectPg = Effect.fn("PgClient.connect")(function* (address: string, options: PgConnectOptions) {
  const net = yield* Net
  const connection = yield* Effect.mapError(net.connect(address), netError)
  return yield* Effect.onError(startPg(connection, options), () => connection.close)
})

/**
 * Runs the startup on an open connection: StartupMessage (no SSLRequest: a raw client need not
 * send one, pg-replication.md §1), authentication, ParameterStatus, up to ReadyForQuery.
 */
export const startPg = Effect.fn("PgClient.start")(function* (connection: Connection, options: PgConnectOptions) {
  const session = new Session(connection)
  yield* session.write(encodeStartupMessage(startupParameters(options)))
  let authenticated = false
  for (let i = 0; ; i++) {
    if (i > SIDE_MESSAGE_COUNT_MAX) return yield* tooMuch("messages before ReadyForQuery at startup")
    const message = yield* session.readMessage
    switch (message._tag) {
      case "AuthenticationOk":
        authenticated = true
        break
      case "AuthenticationCleartextPassword":
        if (options.password === undefined) {
          return yield* new PgClientError({ reason: "PasswordRequired", message: "the server asked for a password and none was given" })
        }
        yield* session.write(encodePasswordMessage(options.password))
        break
      case "AuthenticationRequest":
        return yield* new PgClientError({
          reason: "UnsupportedAuthentication",
          message: `authentication method ${message.code} (${AUTHENTICATION_METHODS.get(message.code) ?? "unknown"}) is not supported`
        })
      case "ErrorResponse":
        return yield* serverError(message.notice)
      case "ReadyForQuery":
        if (!authenticated) return yield* unexpected(message, "startup before AuthenticationOk")
        session.state = "ready"
        return session.client()
      default:
        if (!session.sideMessage(message)) return yield* unexpected(message, "startup")
    }
  }
})

// ---- the session behind a client ----

type SessionState = "starting" | "ready" | "busy" | "copy" | "closed"

class Session {
  readonly reader = new PgBackendReader()
  readonly parameters = new Map<string, string>()
  backendKey: { readonly processId: number; readonly secretKey: number } | undefined = undefined
  state: SessionState = "starting"

  constructor(readonly connection: Connection) {}

  write(frame: Uint8Array): Effect.Effect<void, PgClientError> {
    return Effect.mapError(this.connection.write(frame), netError)
  }

  writev(parts: ReadonlyArray<Uint8Array>): Effect.Effect<void, PgClientError> {
    return Effect.mapError(this.connection.writev(parts), netError)
  }

  /**
   * The next backend message. Each turn either returns a message or consumes a chunk, and the
   * reader refuses any message above the cap, so a turn sequence ends within one capped message.
   */
  readonly readMessage: Effect.Effect<BackendMessage, PgClientError> = Effect.suspend(() => {
    const session = this
    return Effect.gen(function* () {
      for (;;) {
        const next = session.reader.next()
        if (Result.isFailure(next)) {
          return yield* new PgClientError({ reason: "Wire", message: next.failure.message, cause: next.failure })
        }
        if (next.success !== undefined) return next.success
        const chunk = yield* Effect.mapError(session.connection.read, netError)
        if (chunk === undefined) {
          const buffered = session.reader.bufferedBytes
          return yield* new PgClientError({
            reason: "ConnectionClosed",
            message: buffered > 0 ? `the server closed the connection in the middle of a message (${buffered} bytes of it received)` : "the server closed the connection"
          })
        }
        session.reader.push(chunk)
      }
    })
  })

  /** Messages the server may send at any time; false for anything else. */
  sideMessage(message: BackendMessage): boolean {
    switch (message._tag) {
      case "ParameterStatus":
        this.parameters.set(message.name, message.value)
        return true
      case "BackendKeyData":
        this.backendKey = { processId: message.processId, secretKey: message.secretKey }
        return true
      case "NoticeResponse":
        return true
      default:
        return false
    }
  }

  client(): PgClient {
    const session = this
    return {
      parameters: this.parameters,
      get backendKey() {
        return session.backendKey
      },
      simpleQuery: (text) => this.operation(Effect.gen(function* () {
        yield* session.write(encodeQuery(text))
        const results = yield* session.readResults([])
        return results.at(-1) ?? { columns: [], rows: [], commandTag: "" }
      })),
      startCopyBoth: (text) => this.operation(Effect.gen(function* () {
        yield* session.write(encodeQuery(text))
        yield* session.awaitCopyBoth
        return session.copyBoth()
      }), "copy"),
      terminate: Effect.suspend(() => {
        if (this.state === "closed") return Effect.void
        return Effect.andThen(Effect.ignore(this.connection.write(encodeTerminate())), this.close)
      }),
      close: Effect.suspend(() => this.close)
    }
  }

  readonly close: Effect.Effect<void> = Effect.suspend(() => {
    this.state = "closed"
    return this.connection.close
  })

  /**
   * Runs one request/response exchange. The state is "busy" while it runs; only an exchange
   * that ends in step with the server (success, or a server error read through to
   * ReadyForQuery) makes the session usable again.
   */
  private operation<A>(body: Effect.Effect<A, PgError>, after: "ready" | "copy" = "ready"): Effect.Effect<A, PgError> {
    return Effect.suspend(() => {
      if (this.state !== "ready") {
        return Effect.fail(new PgClientError({ reason: "NotReady", message: `the connection is ${this.state}, not ready for a query` }))
      }
      this.state = "busy"
      return body.pipe(
        Effect.tap(() => Effect.sync(() => { this.state = after })),
        Effect.tapError((error) => Effect.sync(() => { if (error._tag === "PgServerError") this.state = "ready" }))
      )
    })
  }

  /**
   * Result sets up to ReadyForQuery. An ErrorResponse is kept and raised after ReadyForQuery,
   * so that the connection is back in step; Postgres may send RowDescription before it
   * (TIMELINE_HISTORY of a missing file, pg-replication.md §3).
   */
  readResults(initial: ReadonlyArray<QueryResult>): Effect.Effect<ReadonlyArray<QueryResult>, PgError> {
    const session = this
    return Effect.gen(function* () {
      const results = [...initial]
      let current: { columns: ReadonlyArray<string>; rows: Array<ReadonlyArray<string | null>> } | undefined
      let error: PgServerError | undefined
      let rowCount = 0
      let valueBytes = 0
      let sideCount = 0
      for (;;) {
        const message = yield* session.readMessage
        switch (message._tag) {
          case "RowDescription":
            current = { columns: message.fields.map((field) => field.name), rows: [] }
            break
          case "DataRow": {
            if (current === undefined) return yield* unexpected(message, "a query result before RowDescription")
            if (message.values.length !== current.columns.length) {
              return yield* unexpected(message, `a result with ${current.columns.length} columns (DataRow has ${message.values.length})`)
            }
            rowCount++
            for (const value of message.values) valueBytes += value === null ? 0 : value.byteLength
            if (rowCount > QUERY_RESULT_ROW_COUNT_MAX) return yield* tooMuch(`more than ${QUERY_RESULT_ROW_COUNT_MAX} rows`)
            if (valueBytes > QUERY_RESULT_BYTES_MAX) return yield* tooMuch(`more than ${QUERY_RESULT_BYTES_MAX} bytes of values`)
            current.rows.push(yield* textValues(message.values))
            break
          }
          case "CommandComplete":
            results.push({ columns: current?.columns ?? [], rows: current?.rows ?? [], commandTag: message.commandTag })
            current = undefined
            break
          case "EmptyQueryResponse":
            results.push({ columns: [], rows: [], commandTag: "" })
            break
          case "ErrorResponse":
            error ??= toServerError(message.notice)
            current = undefined
            break
          case "ReadyForQuery":
            if (error !== undefined) return yield* error
            return results
          default:
            if (!session.sideMessage(message)) return yield* unexpected(message, "a query result")
            if (++sideCount > SIDE_MESSAGE_COUNT_MAX) return yield* tooMuch("side messages in a query result")
        }
      }
    })
  }

  /** After the query: CopyBothResponse, or the server's refusal read through to ReadyForQuery. */
  readonly awaitCopyBoth: Effect.Effect<void, PgError> = Effect.suspend(() => {
    const session = this
    return Effect.gen(function* () {
      for (let sideCount = 0; sideCount <= SIDE_MESSAGE_COUNT_MAX; sideCount++) {
        const message = yield* session.readMessage
        switch (message._tag) {
          case "CopyBothResponse":
            return
          case "ErrorResponse":
            yield* session.readResults([])
            return yield* toServerError(message.notice)
          case "RowDescription":
          case "CommandComplete":
          case "EmptyQueryResponse":
            return yield* unexpected(message, "CopyBothResponse")
          default:
            if (!session.sideMessage(message)) return yield* unexpected(message, "CopyBothResponse")
        }
      }
      return yield* tooMuch("side messages before CopyBothResponse")
    })
  })

  copyBoth(): CopyBoth {
    const session = this
    /** Set once the server has ended its side of the COPY. */
    let serverEnd: { readonly results: ReadonlyArray<QueryResult>; readonly error: PgServerError | undefined } | undefined
    let clientDone = false

    const readCopyData: Effect.Effect<Uint8Array | undefined, PgError> = Effect.gen(function* () {
      if (serverEnd !== undefined) return serverEnd.error === undefined ? undefined : yield* serverEnd.error
      for (let sideCount = 0; sideCount <= SIDE_MESSAGE_COUNT_MAX; sideCount++) {
        const message = yield* session.readMessage
        switch (message._tag) {
          case "CopyData":
            return message.data
          case "CopyDone":
            serverEnd = { results: [], error: undefined }
            return undefined
          case "CommandComplete":
            // A walsender shutting down sends CommandComplete "COPY 0" with no CopyDone
            // (pg-replication.md §5, end of stream started by the server).
            serverEnd = { results: [{ columns: [], rows: [], commandTag: message.commandTag }], error: undefined }
            return undefined
          case "ErrorResponse": {
            // PostgreSQL 15 may send CopyBothResponse and then refuse the start (§3).
            const error = toServerError(message.notice)
            serverEnd = { results: [], error }
            return yield* error
          }
          default:
            if (!session.sideMessage(message)) return yield* unexpected(message, "CopyData")
        }
      }
      return yield* tooMuch("side messages between CopyData")
    })

    const sendCopyDone = Effect.suspend(() => {
      if (clientDone) return Effect.void
      clientDone = true
      return session.write(encodeCopyDone())
    })

    const finish: Effect.Effect<ReadonlyArray<QueryResult>, PgError> = Effect.gen(function* () {
      assert(session.state === "copy", "finish ends an open COPY")
      session.state = "busy"
      yield* sendCopyDone
      let drainedBytes = 0
      while (serverEnd === undefined) {
        const data = yield* Effect.catchTag(readCopyData, "PgServerError", () => Effect.succeed(undefined))
        if (data === undefined) break
        drainedBytes += data.byteLength
        if (drainedBytes > COPY_DRAIN_BYTES_MAX) return yield* tooMuch(`more than ${COPY_DRAIN_BYTES_MAX} bytes of CopyData after CopyDone`)
      }
      const end = serverEnd
      assert(end !== undefined, "the server ended its side of the COPY")
      const results = yield* Effect.catchTag(session.readResults(end.results), "PgServerError", (error) => {
        session.state = "ready"
        return Effect.fail(end.error ?? error)
      })
      session.state = "ready"
      if (end.error !== undefined) return yield* end.error
      return results
    })

    return {
      readCopyData,
      writeCopyData: (payload) => session.write(encodeCopyData(payload)),
      writeCopyDataParts: (parts) => {
        let payloadBytes = 0
        for (const part of parts) payloadBytes += part.byteLength
        return session.writev([encodeCopyDataHeader(payloadBytes), ...parts])
      },
      sendCopyDone,
      finish
    }
  }
}

// ---- pieces ----

const AUTHENTICATION_METHODS: ReadonlyMap<number, string> = new Map([
  [2, "KerberosV5"],
  [5, "MD5Password"],
  [7, "GSS"],
  [8, "GSSContinue"],
  [9, "SSPI"],
  [10, "SASL"],
  [11, "SASLContinue"],
  [12, "SASLFinal"]
])

function startupParameters(options: PgConnectOptions): ReadonlyArray<readonly [string, string]> {
  const parameters: Array<readonly [string, string]> = [["user", options.user], ["database", options.database]]
  if (options.replication !== undefined) parameters.push(["replication", options.replication])
  if (options.applicationName !== undefined) parameters.push(["application_name", options.applicationName])
  if (options.options !== undefined) parameters.push(["options", options.options])
  return parameters
}

function netError(cause: NetError): PgClientError {
  return new PgClientError({ reason: "Net", message: cause.message, cause })
}

function unexpected(message: BackendMessage, expected: string): Effect.Effect<never, PgClientError> {
  return Effect.fail(new PgClientError({ reason: "UnexpectedMessage", message: `unexpected ${message._tag} while waiting for ${expected}` }))
}

function tooMuch(what: string): Effect.Effect<never, PgClientError> {
  return Effect.fail(new PgClientError({ reason: "TooMuchData", message: `the server sent ${what}` }))
}

function toServerError(notice: PgNotice): PgServerError {
  return new PgServerError({ severity: notice.severity, code: notice.code, message: notice.message, detail: notice.detail, hint: notice.hint })
}

function serverError(notice: PgNotice): Effect.Effect<never, PgServerError> {
  return Effect.fail(toServerError(notice))
}

/** Text-format values as strings. Replication results are ASCII; text that is not UTF-8 is refused rather than guessed at. */
function textValues(values: ReadonlyArray<Uint8Array | null>): Effect.Effect<ReadonlyArray<string | null>, PgClientError> {
  const texts: Array<string | null> = []
  for (const value of values) {
    if (value === null) {
      texts.push(null)
      continue
    }
    const text = decodeUtf8(value)
    if (text === undefined) {
      const cause = new PgWireError({ reason: "BadUtf8", message: "a DataRow value is not valid UTF-8" })
      return Effect.fail(new PgClientError({ reason: "Wire", message: cause.message, cause }))
    }
    texts.push(text)
  }
  return Effect.succeed(texts)
}
