import { Result, Schema } from "effect"
import { assert } from "../assert.js"
import { ByteReader, ByteWriter, decodeUtf8, utf8Bytes } from "./bytes.js"
import { APPEND_REQUEST_HEADER_BYTES, MAX_SEND_SIZE_BYTES } from "./consensus.js"

/**
 * The PostgreSQL v3 frontend/backend protocol, both directions (pg-replication.md §1-§3;
 * PostgreSQL's `protocol-message-formats`). All integers are big-endian.
 *
 *   untyped startup packet:  Int32 length (counts itself) | Int32 code | body
 *   every later message:     Byte1 type | Int32 length (counts itself, not the type) | body
 *
 * Reading is incremental and total: `PgFrontendReader` (what a server reads) and
 * `PgBackendReader` (what a client reads) take chunks as the network delivers them and yield
 * one decoded message at a time, or a typed `PgWireError`, never an exception. A length above
 * the cap is refused as soon as its header is seen, so no peer can make us buffer more than
 * one capped message. Encoders are plain functions returning whole frames; a bad argument to
 * an encoder is a programmer error and asserts.
 */

/** Postgres' MAX_STARTUP_PACKET_LENGTH: a longer startup packet is refused ("invalid length"). */
export const STARTUP_PACKET_LENGTH_MAX_BYTES = 10000
/** The length word and the code: the smallest startup packet (an SSLRequest). */
export const STARTUP_PACKET_LENGTH_MIN_BYTES = 8
/** Type byte and length word in front of every message after startup. */
export const PG_MESSAGE_HEADER_BYTES = 5
/** A message length counts its own 4 bytes, so an empty body has length 4. */
export const PG_MESSAGE_LENGTH_MIN_BYTES = 4
/**
 * The largest message length we send or accept (the length field's value, which counts itself).
 * It must hold one CopyData carrying a full 128 KiB AppendRequest or XLogData with its header;
 * 1 MiB leaves room without letting a peer make us hold much.
 */
export const PG_MESSAGE_LENGTH_MAX_BYTES = 1024 * 1024
/** The largest header a WAL-carrying CopyData sub-message puts before its WAL (AppendRequest). */
const COPY_DATA_WAL_HEADER_BYTES_MAX = APPEND_REQUEST_HEADER_BYTES
assert(
  PG_MESSAGE_LENGTH_MIN_BYTES + COPY_DATA_WAL_HEADER_BYTES_MAX + MAX_SEND_SIZE_BYTES <= PG_MESSAGE_LENGTH_MAX_BYTES,
  "one CopyData message holds a MAX_SEND_SIZE chunk of WAL with its header"
)
assert(STARTUP_PACKET_LENGTH_MAX_BYTES <= PG_MESSAGE_LENGTH_MAX_BYTES, "startup packets are within the message cap")

/** Bytes of a CopyData frame before its payload: 'd' and the length. */
export const COPY_DATA_HEADER_BYTES = PG_MESSAGE_HEADER_BYTES

/** Protocol 3.0, the only one we speak (PostgreSQL 7.4+; libpq asks for it by default). */
export const PROTOCOL_VERSION_3_0 = (3 << 16) | 0
export const SSL_REQUEST_CODE = 80877103
export const GSSENC_REQUEST_CODE = 80877104
export const CANCEL_REQUEST_CODE = 80877102

/** Postgres' MaxTupleAttributeNumber: no row has more columns. */
export const COLUMN_COUNT_MAX = 1664
/** Error and notice fields we send are cut to this many UTF-16 units (they may echo client text). */
export const NOTICE_FIELD_LENGTH_MAX_CHARS = 4096

/** Type OIDs of the columns the safekeeper returns (pg_type.dat). */
export const INT8_OID = 20
export const INT4_OID = 23
export const TEXT_OID = 25

export const PgWireErrorReason = Schema.Literals([
  "StartupTooLong", // startup packet length above STARTUP_PACKET_LENGTH_MAX_BYTES
  "StartupTooShort", // startup packet length below 8
  "UnsupportedProtocolVersion", // a StartupMessage asking for other than 3.0
  "MessageTooLong", // message length above PG_MESSAGE_LENGTH_MAX_BYTES
  "BadLength", // message length below 4
  "UnknownMessageType", // a type byte this side of the protocol does not define
  "Malformed", // a body that does not match its type's layout
  "BadUtf8", // a string that is not valid UTF-8
  "BadOptions" // a startup `options` string we cannot split
])
export type PgWireErrorReason = typeof PgWireErrorReason.Type

/** Bytes that break the protocol: the connection that sent them is closed (STYLE §6). */
export class PgWireError extends Schema.TaggedError<PgWireError>()("PgWireError", {
  reason: PgWireErrorReason,
  message: Schema.String
}) {}

// ---- what a server reads: the startup packet, then frontend messages ----

export type StartupPacket =
  | {
    readonly _tag: "StartupMessage"
    /** In the order sent; a repeated key keeps its last value, as Postgres assigns them in order. */
    readonly parameters: ReadonlyMap<string, string>
  }
  /** Answer with `SSL_REFUSED` ('N'); the client then sends its StartupMessage. */
  | { readonly _tag: "SslRequest" }
  | { readonly _tag: "GssEncRequest" }
  | { readonly _tag: "CancelRequest"; readonly processId: number; readonly secretKey: number }

export type FrontendMessage =
  | { readonly _tag: "Query"; readonly text: string }
  /** `data` may be a view into a chunk pushed to the reader: do not write into it. */
  | { readonly _tag: "CopyData"; readonly data: Uint8Array }
  | { readonly _tag: "CopyDone" }
  | { readonly _tag: "CopyFail"; readonly message: string }
  | { readonly _tag: "Terminate" }
  /** The raw body: a NUL-terminated cleartext password (or JWT), or SASL data. */
  | { readonly _tag: "PasswordMessage"; readonly data: Uint8Array }
  | { readonly _tag: "Sync" }
  | { readonly _tag: "Flush" }
  /** The extended query protocol, which a safekeeper does not speak: answer with an ErrorResponse. */
  | { readonly _tag: "UnsupportedFrontendMessage"; readonly type: string; readonly name: ExtendedQueryMessageName }

export type ExtendedQueryMessageName = "Parse" | "Bind" | "Execute" | "Describe" | "Close"

// ---- what a client reads: backend messages ----

export type TransactionStatus = "I" | "T" | "E"

export interface FieldDescription {
  readonly name: string
  readonly tableOid: number
  readonly columnAttributeNumber: number
  readonly typeOid: number
  /** pg_type.typlen: -1 for varlena (text), 8 for int8, 4 for int4. */
  readonly typeLengthBytes: number
  readonly typeModifier: number
  /** 0 text, 1 binary. */
  readonly format: number
}

/** An ErrorResponse or NoticeResponse as read. */
export interface PgNotice {
  /** 'S': localized severity (ERROR, FATAL, WARNING, ...). */
  readonly severity: string
  /** 'V': severity never localized (PostgreSQL 9.6+); absent from older servers. */
  readonly severityNonLocalized: string | undefined
  /** 'C': SQLSTATE. */
  readonly code: string
  /** 'M': the primary message. */
  readonly message: string
  readonly detail: string | undefined
  readonly hint: string | undefined
  /** Every field by its code letter, including the ones above (position, where, file, ...). */
  readonly fields: ReadonlyMap<string, string>
}

export interface CopyResponse {
  /** 0 text, 1 binary; replication uses 0. */
  readonly format: number
  readonly columnFormats: ReadonlyArray<number>
}

export type BackendMessage =
  | { readonly _tag: "AuthenticationOk" }
  | { readonly _tag: "AuthenticationCleartextPassword" }
  /** Any other authentication request (MD5 5, SASL 10, SASLContinue 11, ...), kept by its code. */
  | { readonly _tag: "AuthenticationRequest"; readonly code: number; readonly data: Uint8Array }
  | { readonly _tag: "ParameterStatus"; readonly name: string; readonly value: string }
  | { readonly _tag: "BackendKeyData"; readonly processId: number; readonly secretKey: number }
  | { readonly _tag: "ReadyForQuery"; readonly status: TransactionStatus }
  | { readonly _tag: "RowDescription"; readonly fields: ReadonlyArray<FieldDescription> }
  | { readonly _tag: "DataRow"; readonly values: ReadonlyArray<Uint8Array | null> }
  | { readonly _tag: "CommandComplete"; readonly commandTag: string }
  | { readonly _tag: "EmptyQueryResponse" }
  | { readonly _tag: "ErrorResponse"; readonly notice: PgNotice }
  | { readonly _tag: "NoticeResponse"; readonly notice: PgNotice }
  | ({ readonly _tag: "CopyBothResponse" } & CopyResponse)
  | ({ readonly _tag: "CopyOutResponse" } & CopyResponse)
  | ({ readonly _tag: "CopyInResponse" } & CopyResponse)
  /** `data` may be a view into a chunk pushed to the reader: do not write into it. */
  | { readonly _tag: "CopyData"; readonly data: Uint8Array }
  | { readonly _tag: "CopyDone" }

// ---- readers ----

/**
 * What a server reads: one startup packet (repeated after an SSLRequest or GSSENCRequest that
 * we refused), then typed frontend messages. Feed it each chunk as it arrives with `push`, then
 * call `next` until it returns undefined (it needs more bytes). The first error is sticky.
 */
export class PgFrontendReader {
  private readonly frames = new PgFrameReader()
  private phase: "startup" | "messages" | "cancelled" = "startup"

  push(chunk: Uint8Array): void {
    this.frames.push(chunk)
  }

  /** Bytes held: at most one incomplete frame plus the chunk pushed last. */
  get bufferedBytes(): number {
    return this.frames.bufferedBytes
  }

  next(): Result.Result<StartupPacket | FrontendMessage | undefined, PgWireError> {
    switch (this.phase) {
      case "startup": {
        const frame = this.frames.nextUntyped()
        if (Result.isFailure(frame)) return Result.fail(frame.failure)
        if (frame.success === undefined) return Result.succeed(undefined)
        const packet = this.frames.check(decodeStartupPacket(frame.success))
        if (Result.isSuccess(packet)) {
          if (packet.success._tag === "StartupMessage") this.phase = "messages"
          if (packet.success._tag === "CancelRequest") this.phase = "cancelled"
        }
        return packet
      }
      case "messages": {
        const frame = this.frames.nextTyped()
        if (Result.isFailure(frame)) return Result.fail(frame.failure)
        if (frame.success === undefined) return Result.succeed(undefined)
        return this.frames.check(decodeFrontendMessage(frame.success))
      }
      case "cancelled":
        // A CancelRequest connection carries nothing else; the server closes it.
        if (this.frames.bufferedBytes === 0) return Result.succeed(undefined)
        return this.frames.check(Result.fail(new PgWireError({ reason: "Malformed", message: "bytes after a CancelRequest" })))
    }
  }
}

/** What a client reads: typed backend messages. Same contract as `PgFrontendReader`. */
export class PgBackendReader {
  private readonly frames = new PgFrameReader()

  push(chunk: Uint8Array): void {
    this.frames.push(chunk)
  }

  get bufferedBytes(): number {
    return this.frames.bufferedBytes
  }

  next(): Result.Result<BackendMessage | undefined, PgWireError> {
    const frame = this.frames.nextTyped()
    if (Result.isFailure(frame)) return Result.fail(frame.failure)
    if (frame.success === undefined) return Result.succeed(undefined)
    return this.frames.check(decodeBackendMessage(frame.success))
  }
}

/** One typed message: its type byte and its body (what follows the length). */
export interface PgFrame {
  readonly type: number
  readonly body: Uint8Array
}

/**
 * Cuts a byte stream into frames. Chunks are kept as pushed (no concatenation), so each byte is
 * copied at most once: a frame inside one chunk is returned as a view of it, and only a frame
 * spanning chunks is assembled. Once a header is complete its length is checked, and remembered,
 * so waiting for a large body costs O(1) per chunk.
 */
export class PgFrameReader {
  private readonly chunks = new ChunkQueue()
  private pending: { readonly type: number; readonly lengthBytes: number } | undefined = undefined
  private failure: PgWireError | undefined = undefined

  push(chunk: Uint8Array): void {
    if (this.failure === undefined) this.chunks.push(chunk)
  }

  get bufferedBytes(): number {
    return this.chunks.lengthBytes
  }

  /** A startup packet's body (code and payload), undefined if incomplete. */
  nextUntyped(): Result.Result<Uint8Array | undefined, PgWireError> {
    if (this.failure !== undefined) return Result.fail(this.failure)
    if (this.chunks.lengthBytes < 4) return Result.succeed(undefined)
    const lengthBytes = this.chunks.u32At(0)
    if (lengthBytes < STARTUP_PACKET_LENGTH_MIN_BYTES) {
      return this.fail("StartupTooShort", `startup packet length ${lengthBytes} below ${STARTUP_PACKET_LENGTH_MIN_BYTES}`)
    }
    if (lengthBytes > STARTUP_PACKET_LENGTH_MAX_BYTES) {
      return this.fail("StartupTooLong", `startup packet length ${lengthBytes} above ${STARTUP_PACKET_LENGTH_MAX_BYTES}`)
    }
    if (this.chunks.lengthBytes < lengthBytes) return Result.succeed(undefined)
    this.chunks.discard(4)
    return Result.succeed(this.chunks.take(lengthBytes - 4))
  }

  /** The next typed frame, undefined if incomplete. */
  nextTyped(): Result.Result<PgFrame | undefined, PgWireError> {
    if (this.failure !== undefined) return Result.fail(this.failure)
    if (this.pending === undefined) {
      if (this.chunks.lengthBytes < PG_MESSAGE_HEADER_BYTES) return Result.succeed(undefined)
      const type = this.chunks.byteAt(0)
      const lengthBytes = this.chunks.u32At(1)
      if (lengthBytes < PG_MESSAGE_LENGTH_MIN_BYTES) {
        return this.fail("BadLength", `message ${describeType(type)} length ${lengthBytes} below ${PG_MESSAGE_LENGTH_MIN_BYTES}`)
      }
      if (lengthBytes > PG_MESSAGE_LENGTH_MAX_BYTES) {
        return this.fail("MessageTooLong", `message ${describeType(type)} length ${lengthBytes} above ${PG_MESSAGE_LENGTH_MAX_BYTES}`)
      }
      this.pending = { type, lengthBytes }
    }
    if (this.chunks.lengthBytes < 1 + this.pending.lengthBytes) return Result.succeed(undefined)
    const { type, lengthBytes } = this.pending
    this.pending = undefined
    this.chunks.discard(PG_MESSAGE_HEADER_BYTES)
    return Result.succeed({ type, body: this.chunks.take(lengthBytes - 4) })
  }

  /** Makes a decoder's failure sticky too, so that no later message is read past it. */
  check<A>(result: Result.Result<A, PgWireError>): Result.Result<A, PgWireError> {
    if (Result.isFailure(result)) this.stop(result.failure)
    return result
  }

  private fail(reason: PgWireErrorReason, message: string): Result.Result<never, PgWireError> {
    const error = new PgWireError({ reason, message })
    this.stop(error)
    return Result.fail(error)
  }

  private stop(error: PgWireError): void {
    if (this.failure === undefined) this.failure = error
    this.chunks.clear()
    this.pending = undefined
  }
}

// ---- decoders (one whole frame each; also usable without a reader) ----

export function decodeStartupPacket(body: Uint8Array): Result.Result<StartupPacket, PgWireError> {
  const reader = new BodyReader(body)
  const code = reader.u32BE("startup code")
  if (reader.failed) return fail("StartupTooShort", "startup packet without a code")
  switch (code) {
    case SSL_REQUEST_CODE:
      return reader.finish("SSLRequest", { _tag: "SslRequest" })
    case GSSENC_REQUEST_CODE:
      return reader.finish("GSSENCRequest", { _tag: "GssEncRequest" })
    case CANCEL_REQUEST_CODE: {
      const processId = reader.u32BE("process id")
      const secretKey = reader.u32BE("secret key")
      return reader.finish("CancelRequest", { _tag: "CancelRequest", processId, secretKey })
    }
  }
  if (code !== PROTOCOL_VERSION_3_0) {
    return fail("UnsupportedProtocolVersion", `unsupported frontend protocol ${code >>> 16}.${code & 0xffff}: server supports 3.0`)
  }
  // Postgres: name/value pairs until an empty name, which must be the last byte.
  const parameters = new Map<string, string>()
  while (!reader.failed) {
    const name = reader.text("parameter name")
    if (reader.failed || name === "") break
    parameters.set(name, reader.text(`parameter ${name}`))
  }
  return reader.finish("StartupMessage", { _tag: "StartupMessage", parameters })
}

export function decodeFrontendMessage(frame: PgFrame): Result.Result<FrontendMessage, PgWireError> {
  const reader = new BodyReader(frame.body)
  const name = describeType(frame.type)
  switch (frame.type) {
    case TYPE.Q:
      return reader.finish(name, { _tag: "Query", text: reader.text("query") })
    case TYPE.d:
      return Result.succeed({ _tag: "CopyData", data: frame.body })
    case TYPE.c:
      return reader.finish(name, { _tag: "CopyDone" })
    case TYPE.f:
      return reader.finish(name, { _tag: "CopyFail", message: reader.text("error message") })
    case TYPE.X:
      return reader.finish(name, { _tag: "Terminate" })
    case TYPE.p:
      return Result.succeed({ _tag: "PasswordMessage", data: frame.body })
    case TYPE.S:
      return reader.finish(name, { _tag: "Sync" })
    case TYPE.H:
      return reader.finish(name, { _tag: "Flush" })
  }
  const extended = EXTENDED_QUERY_MESSAGES.get(frame.type)
  if (extended !== undefined) {
    return Result.succeed({ _tag: "UnsupportedFrontendMessage", type: String.fromCharCode(frame.type), name: extended })
  }
  return fail("UnknownMessageType", `unknown frontend message type ${name}`)
}

export function decodeBackendMessage(frame: PgFrame): Result.Result<BackendMessage, PgWireError> {
  const reader = new BodyReader(frame.body)
  const name = describeType(frame.type)
  switch (frame.type) {
    case TYPE.R: {
      const code = reader.u32BE("authentication code")
      if (code === AUTH_OK) return reader.finish(name, { _tag: "AuthenticationOk" })
      if (code === AUTH_CLEARTEXT_PASSWORD) return reader.finish(name, { _tag: "AuthenticationCleartextPassword" })
      return reader.finish(name, { _tag: "AuthenticationRequest", code, data: reader.rest() })
    }
    case TYPE.S: {
      const parameter = reader.text("parameter name")
      return reader.finish(name, { _tag: "ParameterStatus", name: parameter, value: reader.text(`parameter ${parameter}`) })
    }
    case TYPE.K: {
      const processId = reader.u32BE("process id")
      return reader.finish(name, { _tag: "BackendKeyData", processId, secretKey: reader.u32BE("secret key") })
    }
    case TYPE.Z: {
      const status = String.fromCharCode(reader.u8("transaction status"))
      if (!isTransactionStatus(status)) {
        if (!reader.failed) reader.fail(`transaction status '${status}'`)
        return reader.finish(name, { _tag: "ReadyForQuery", status: "I" })
      }
      return reader.finish(name, { _tag: "ReadyForQuery", status })
    }
    case TYPE.T:
      return reader.finish(name, { _tag: "RowDescription", fields: readFieldDescriptions(reader) })
    case TYPE.D:
      return reader.finish(name, { _tag: "DataRow", values: readDataRowValues(reader) })
    case TYPE.C:
      return reader.finish(name, { _tag: "CommandComplete", commandTag: reader.text("command tag") })
    case TYPE.I:
      return reader.finish(name, { _tag: "EmptyQueryResponse" })
    case TYPE.E:
      return reader.finish(name, { _tag: "ErrorResponse", notice: readNotice(reader) })
    case TYPE.N:
      return reader.finish(name, { _tag: "NoticeResponse", notice: readNotice(reader) })
    case TYPE.W:
      return reader.finish(name, { _tag: "CopyBothResponse", ...readCopyResponse(reader) })
    case TYPE.H:
      return reader.finish(name, { _tag: "CopyOutResponse", ...readCopyResponse(reader) })
    case TYPE.G:
      return reader.finish(name, { _tag: "CopyInResponse", ...readCopyResponse(reader) })
    case TYPE.d:
      return Result.succeed({ _tag: "CopyData", data: frame.body })
    case TYPE.c:
      return reader.finish(name, { _tag: "CopyDone" })
  }
  return fail("UnknownMessageType", `unknown backend message type ${name}`)
}

/**
 * The text of a cleartext PasswordMessage (a password or, with JWT auth, a token): the body
 * up to its terminating NUL.
 */
export function decodeCleartextPassword(data: Uint8Array): Result.Result<string, PgWireError> {
  const reader = new BodyReader(data)
  return reader.finish("'p' (PasswordMessage)", reader.text("password"))
}

// ---- startup `options` (neon-safekeeper.md §2) ----

/**
 * The settings in a startup packet's `options` parameter, in order. Neon's walproposer sends
 * `-c timeline_id=<hex> tenant_id=<hex>`, so, as Neon's handler does, both `-c key=value` and
 * bare `key=value` tokens count. Splitting follows Postgres' pg_split_opts: tokens end at
 * unescaped ASCII whitespace and a backslash takes the next character literally. Forms:
 *   `-c key=value`, `-ckey=value`, `--key=value` (Postgres' forms; `-` in the key becomes `_`,
 *   as Postgres' ParseLongOption does), and bare `key=value` (Neon's form).
 * Other tokens without `=` (other command-line switches) are ignored, as Neon ignores them.
 * Refused: a `-c`/`--` setting without `=`, an empty key, and a trailing lone backslash
 * (Postgres drops it silently; it can only come from a broken client).
 */
export function parseStartupOptions(options: string): Result.Result<ReadonlyArray<readonly [string, string]>, PgWireError> {
  const tokens = splitOptions(options)
  if (tokens === undefined) return fail("BadOptions", "options end in a lone backslash")
  const settings: Array<readonly [string, string]> = []
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i]!
    let setting: string
    let switchForm: boolean
    if (token === "-c") {
      const next = tokens[i + 1]
      if (next === undefined) return fail("BadOptions", "-c without a setting")
      setting = next
      switchForm = true
      i++
    } else if (token.startsWith("-c")) {
      setting = token.slice(2)
      switchForm = true
    } else if (token.startsWith("--")) {
      setting = token.slice(2)
      switchForm = true
    } else {
      setting = token
      switchForm = false
    }
    const equals = setting.indexOf("=")
    if (equals < 0) {
      if (switchForm) return fail("BadOptions", `option ${token} ${setting} requires a value`)
      continue
    }
    const rawKey = setting.slice(0, equals)
    if (rawKey === "") return fail("BadOptions", `option ${setting} has an empty name`)
    settings.push([switchForm ? rawKey.replaceAll("-", "_") : rawKey, setting.slice(equals + 1)])
  }
  return Result.succeed(settings)
}

// ---- encoders: server (backend messages) ----

/** The whole answer to SSLRequest and GSSENCRequest when we do not encrypt: the byte 'N'. */
export function encodeSslRefusal(): Uint8Array {
  return Uint8Array.of(0x4e)
}

export function encodeAuthenticationOk(): Uint8Array {
  return fixedMessage(TYPE.R, (writer) => writer.u32BE(AUTH_OK), 4)
}

export function encodeAuthenticationCleartextPassword(): Uint8Array {
  return fixedMessage(TYPE.R, (writer) => writer.u32BE(AUTH_CLEARTEXT_PASSWORD), 4)
}

/** An authentication request other than Ok and cleartext (tests and future auth methods). */
export function encodeAuthenticationRequest(code: number, data: Uint8Array): Uint8Array {
  return fixedMessage(TYPE.R, (writer) => writer.u32BE(code).bytes(data), 4 + data.byteLength)
}

export function encodeParameterStatus(name: string, value: string): Uint8Array {
  const nameBytes = cstringBytes(name)
  const valueBytes = cstringBytes(value)
  return fixedMessage(TYPE.S, (writer) => writer.bytes(nameBytes).bytes(valueBytes), nameBytes.byteLength + valueBytes.byteLength)
}

export function encodeBackendKeyData(processId: number, secretKey: number): Uint8Array {
  return fixedMessage(TYPE.K, (writer) => writer.u32BE(processId).u32BE(secretKey), 8)
}

export function encodeReadyForQuery(status: TransactionStatus): Uint8Array {
  return fixedMessage(TYPE.Z, (writer) => writer.u8(status.charCodeAt(0)), 1)
}

/** Text-format columns, as every safekeeper result is (pg-replication.md §3). */
export interface ColumnDescription {
  readonly name: string
  /** TEXT_OID, INT4_OID or INT8_OID. */
  readonly typeOid: number
}

export function encodeRowDescription(columns: ReadonlyArray<ColumnDescription>): Uint8Array {
  assert(columns.length <= COLUMN_COUNT_MAX, `a row has at most ${COLUMN_COUNT_MAX} columns`)
  const names = columns.map((column) => cstringBytes(column.name))
  const bodyBytes = 2 + names.reduce((sum, name) => sum + name.byteLength + 18, 0)
  return fixedMessage(TYPE.T, (writer) => {
    writer.u16BE(columns.length)
    columns.forEach((column, i) => {
      const typeLengthBytes = TYPE_LENGTHS_BYTES.get(column.typeOid)
      assert(typeLengthBytes !== undefined, `column ${column.name}: type oid ${column.typeOid} is text, int4 or int8`)
      writer.bytes(names[i]!)
      writer.u32BE(0) // table oid: not a table column
      writer.u16BE(0) // attribute number
      writer.u32BE(column.typeOid)
      writer.u16BE(typeLengthBytes & 0xffff)
      writer.i32BE(-1) // typmod: none
      writer.u16BE(0) // text format
    })
  }, bodyBytes)
}

/** One row; strings are sent as UTF-8 text, null as SQL NULL. */
export function encodeDataRow(values: ReadonlyArray<string | Uint8Array | null>): Uint8Array {
  assert(values.length <= COLUMN_COUNT_MAX, `a row has at most ${COLUMN_COUNT_MAX} columns`)
  const encoded = values.map((value) => (typeof value === "string" ? utf8Bytes(value) : value))
  const bodyBytes = 2 + encoded.reduce((sum, value) => sum + 4 + (value === null ? 0 : value.byteLength), 0)
  return fixedMessage(TYPE.D, (writer) => {
    writer.u16BE(encoded.length)
    for (const value of encoded) {
      if (value === null) writer.i32BE(-1)
      else writer.u32BE(value.byteLength).bytes(value)
    }
  }, bodyBytes)
}

export function encodeCommandComplete(commandTag: string): Uint8Array {
  const tag = cstringBytes(commandTag)
  return fixedMessage(TYPE.C, (writer) => writer.bytes(tag), tag.byteLength)
}

export function encodeEmptyQueryResponse(): Uint8Array {
  return fixedMessage(TYPE.I, () => undefined, 0)
}

export type ErrorSeverity = "ERROR" | "FATAL" | "PANIC"
export type NoticeSeverity = "WARNING" | "NOTICE" | "DEBUG" | "INFO" | "LOG"

export interface NoticeFields<Severity extends string> {
  readonly severity: Severity
  /** SQLSTATE: five digits or upper-case letters, e.g. "XX000", "58P01", "0A000". */
  readonly code: string
  readonly message: string
  readonly detail?: string | undefined
  readonly hint?: string | undefined
}

/** S and V (the same, unlocalized), C, M, then D and H when given. */
export function encodeErrorResponse(fields: NoticeFields<ErrorSeverity>): Uint8Array {
  return encodeNotice(TYPE.E, fields)
}

export function encodeNoticeResponse(fields: NoticeFields<NoticeSeverity>): Uint8Array {
  return encodeNotice(TYPE.N, fields)
}

/** Text format, zero columns: exactly `W 00 00 00 07 00 00 00` (pg-replication.md §3). */
export function encodeCopyBothResponse(): Uint8Array {
  return fixedMessage(TYPE.W, (writer) => writer.u8(0).u16BE(0), 3)
}

/** A whole CopyData frame in one allocation (one copy of the payload). */
export function encodeCopyData(payload: Uint8Array): Uint8Array {
  const frame = new Uint8Array(COPY_DATA_HEADER_BYTES + payload.byteLength)
  writeCopyDataHeader(frame, payload.byteLength)
  frame.set(payload, COPY_DATA_HEADER_BYTES)
  return frame
}

/**
 * Writes the 5-byte CopyData header at the start of `frame`, for senders that put the payload
 * into `frame.subarray(COPY_DATA_HEADER_BYTES)` themselves and so never copy it again.
 */
export function writeCopyDataHeader(frame: Uint8Array, payloadLengthBytes: number): void {
  assert(frame.byteLength >= COPY_DATA_HEADER_BYTES + payloadLengthBytes, "the frame holds header and payload")
  putCopyDataHeader(frame, payloadLengthBytes)
}

/**
 * The 5-byte CopyData header alone, for senders that write the payload from buffers of their
 * own right after it (one writev: the WAL of an AppendRequest is never copied into a frame).
 */
export function encodeCopyDataHeader(payloadLengthBytes: number): Uint8Array {
  const header = new Uint8Array(COPY_DATA_HEADER_BYTES)
  putCopyDataHeader(header, payloadLengthBytes)
  return header
}

function putCopyDataHeader(frame: Uint8Array, payloadLengthBytes: number): void {
  const lengthBytes = 4 + payloadLengthBytes
  assert(Number.isInteger(payloadLengthBytes) && payloadLengthBytes >= 0, "payload length is a non-negative integer")
  assert(lengthBytes <= PG_MESSAGE_LENGTH_MAX_BYTES, `CopyData of ${payloadLengthBytes} bytes exceeds the message cap`)
  frame[0] = TYPE.d
  frame[1] = lengthBytes >>> 24
  frame[2] = (lengthBytes >>> 16) & 0xff
  frame[3] = (lengthBytes >>> 8) & 0xff
  frame[4] = lengthBytes & 0xff
}

export function encodeCopyDone(): Uint8Array {
  return fixedMessage(TYPE.c, () => undefined, 0)
}

// ---- encoders: client (frontend messages) ----

/** Protocol 3.0 with the given parameters (user, database, replication, application_name, options). */
export function encodeStartupMessage(parameters: Iterable<readonly [string, string]>): Uint8Array {
  const parts: Uint8Array[] = []
  for (const [name, value] of parameters) {
    assert(name !== "", "a startup parameter has a name")
    parts.push(cstringBytes(name), cstringBytes(value))
  }
  const lengthBytes = 4 + 4 + parts.reduce((sum, part) => sum + part.byteLength, 0) + 1
  assert(lengthBytes <= STARTUP_PACKET_LENGTH_MAX_BYTES, `startup packet of ${lengthBytes} bytes exceeds ${STARTUP_PACKET_LENGTH_MAX_BYTES}`)
  const writer = new ByteWriter(lengthBytes)
  writer.u32BE(lengthBytes).u32BE(PROTOCOL_VERSION_3_0)
  for (const part of parts) writer.bytes(part)
  writer.u8(0)
  return writer.finish()
}

export function encodeSslRequest(): Uint8Array {
  return new ByteWriter(8).u32BE(8).u32BE(SSL_REQUEST_CODE).finish()
}

export function encodeGssEncRequest(): Uint8Array {
  return new ByteWriter(8).u32BE(8).u32BE(GSSENC_REQUEST_CODE).finish()
}

export function encodeCancelRequest(processId: number, secretKey: number): Uint8Array {
  return new ByteWriter(16).u32BE(16).u32BE(CANCEL_REQUEST_CODE).u32BE(processId).u32BE(secretKey).finish()
}

export function encodeQuery(text: string): Uint8Array {
  const query = cstringBytes(text)
  return fixedMessage(TYPE.Q, (writer) => writer.bytes(query), query.byteLength)
}

export function encodeCopyFail(message: string): Uint8Array {
  const text = cstringBytes(message)
  return fixedMessage(TYPE.f, (writer) => writer.bytes(text), text.byteLength)
}

export function encodeTerminate(): Uint8Array {
  return fixedMessage(TYPE.X, () => undefined, 0)
}

export function encodeSync(): Uint8Array {
  return fixedMessage(TYPE.S, () => undefined, 0)
}

export function encodeFlush(): Uint8Array {
  return fixedMessage(TYPE.H, () => undefined, 0)
}

/** A cleartext password (or JWT) as a C string, or raw bytes (SASL responses) as given. */
export function encodePasswordMessage(password: string | Uint8Array): Uint8Array {
  const body = typeof password === "string" ? cstringBytes(password) : password
  return fixedMessage(TYPE.p, (writer) => writer.bytes(body), body.byteLength)
}

// ---- pieces ----

const TYPE = {
  B: 0x42, C: 0x43, D: 0x44, E: 0x45, G: 0x47, H: 0x48, I: 0x49, K: 0x4b, N: 0x4e, P: 0x50,
  Q: 0x51, R: 0x52, S: 0x53, T: 0x54, W: 0x57, X: 0x58, Z: 0x5a, c: 0x63, d: 0x64, f: 0x66, p: 0x70
} as const

const EXTENDED_QUERY_MESSAGES: ReadonlyMap<number, ExtendedQueryMessageName> = new Map([
  [TYPE.P, "Parse"],
  [TYPE.B, "Bind"],
  [TYPE.E, "Execute"],
  [TYPE.D, "Describe"],
  [TYPE.C, "Close"]
])

const AUTH_OK = 0
const AUTH_CLEARTEXT_PASSWORD = 3

const TYPE_LENGTHS_BYTES: ReadonlyMap<number, number> = new Map([
  [TEXT_OID, -1],
  [INT4_OID, 4],
  [INT8_OID, 8]
])

// Smallest encodings of repeated items, so that counts the body cannot hold are refused early.
const FIELD_DESCRIPTION_BYTES_MIN = 1 + 4 + 2 + 4 + 2 + 4 + 2
const DATA_ROW_VALUE_BYTES_MIN = 4
const COPY_COLUMN_FORMAT_BYTES = 2

/** Error and notice texts are for people: a byte sequence that is not UTF-8 is shown, not refused. */
const lossyUtf8Decoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true })

/** A ByteReader for message bodies that also tells a bad UTF-8 string from a bad layout. */
class BodyReader extends ByteReader {
  private badUtf8 = false

  constructor(private readonly body: Uint8Array) {
    super(body)
  }

  /** A strict UTF-8 C string. */
  text(what: string): string {
    const bytes = this.cstringBytes(this.body.byteLength, what)
    if (this.failed) return ""
    const text = decodeUtf8(bytes)
    if (text === undefined) {
      this.badUtf8 = true
      this.fail(`${what}: invalid UTF-8`)
      return ""
    }
    return text
  }

  lossyText(what: string): string {
    const bytes = this.cstringBytes(this.body.byteLength, what)
    return this.failed ? "" : lossyUtf8Decoder.decode(bytes)
  }

  i16(what: string): number {
    const value = this.u16BE(what)
    return value >= 0x8000 ? value - 0x10000 : value
  }

  /** Everything left, as a view. */
  rest(): Uint8Array {
    const rest = this.body.subarray(this.offsetBytes)
    this.skip(rest.byteLength, "rest")
    return rest
  }

  /** The value if the whole body was read without a problem, else the first problem. */
  finish<A>(what: string, value: A): Result.Result<A, PgWireError> {
    if (!this.failed && this.remainingBytes > 0) this.fail(`${this.remainingBytes} bytes after the end of the message`)
    if (this.failure === undefined) return Result.succeed(value)
    return fail(this.badUtf8 ? "BadUtf8" : "Malformed", `${what}: ${this.failure}`)
  }
}

function isTransactionStatus(status: string): status is TransactionStatus {
  return status === "I" || status === "T" || status === "E"
}

function fail(reason: PgWireErrorReason, message: string): Result.Result<never, PgWireError> {
  return Result.fail(new PgWireError({ reason, message }))
}

function readFieldDescriptions(reader: BodyReader): ReadonlyArray<FieldDescription> {
  const count = readCount(reader, "field count", FIELD_DESCRIPTION_BYTES_MIN)
  const fields: FieldDescription[] = []
  for (let i = 0; i < count && !reader.failed; i++) {
    fields.push({
      name: reader.text(`field ${i} name`),
      tableOid: reader.u32BE("table oid"),
      columnAttributeNumber: reader.i16("attribute number"),
      typeOid: reader.u32BE("type oid"),
      typeLengthBytes: reader.i16("type length"),
      typeModifier: reader.i32BE("type modifier"),
      format: reader.i16("format")
    })
  }
  return fields
}

function readDataRowValues(reader: BodyReader): ReadonlyArray<Uint8Array | null> {
  const count = readCount(reader, "column count", DATA_ROW_VALUE_BYTES_MIN)
  const values: Array<Uint8Array | null> = []
  for (let i = 0; i < count && !reader.failed; i++) {
    const lengthBytes = reader.i32BE(`column ${i} length`)
    if (lengthBytes === -1) {
      values.push(null)
    } else if (lengthBytes < 0) {
      reader.fail(`column ${i} length ${lengthBytes}`)
    } else {
      values.push(reader.bytes(lengthBytes, `column ${i} value`))
    }
  }
  return values
}

function readCopyResponse(reader: BodyReader): CopyResponse {
  const format = reader.u8("copy format")
  if (!reader.failed && format > 1) reader.fail(`copy format ${format}`)
  const count = readCount(reader, "column count", COPY_COLUMN_FORMAT_BYTES)
  const columnFormats: number[] = []
  for (let i = 0; i < count && !reader.failed; i++) {
    const columnFormat = reader.u16BE(`column ${i} format`)
    if (columnFormat > 1) reader.fail(`column ${i} format ${columnFormat}`)
    columnFormats.push(columnFormat)
  }
  return { format, columnFormats }
}

/** An Int16 count of items, each at least `itemBytesMin` long; no more than a row's columns. */
function readCount(reader: BodyReader, what: string, itemBytesMin: number): number {
  const count = reader.i16(what)
  if (reader.failed) return 0
  if (count < 0 || count > COLUMN_COUNT_MAX) {
    reader.fail(`${what} ${count} outside [0, ${COLUMN_COUNT_MAX}]`)
    return 0
  }
  if (count * itemBytesMin > reader.remainingBytes) {
    reader.fail(`${what} ${count} needs at least ${count * itemBytesMin} bytes, ${reader.remainingBytes} left`)
    return 0
  }
  return count
}

/** Fields until a zero byte; each field is a code byte and a C string. */
function readNotice(reader: BodyReader): PgNotice {
  const fields = new Map<string, string>()
  // Each field takes at least 2 bytes, so the body bounds the loop.
  while (!reader.failed) {
    const code = reader.u8("field code")
    if (reader.failed || code === 0) break
    const letter = String.fromCharCode(code)
    fields.set(letter, reader.lossyText(`field ${letter}`))
  }
  return {
    severity: fields.get("S") ?? "",
    severityNonLocalized: fields.get("V"),
    code: fields.get("C") ?? "",
    message: fields.get("M") ?? "",
    detail: fields.get("D"),
    hint: fields.get("H"),
    fields
  }
}

function encodeNotice(type: number, fields: NoticeFields<string>): Uint8Array {
  assert(/^[0-9A-Z]{5}$/.test(fields.code), `SQLSTATE ${fields.code} is five digits or upper-case letters`)
  const entries: Array<readonly [number, Uint8Array]> = [
    [0x53, noticeText(fields.severity)], // S
    [0x56, noticeText(fields.severity)], // V
    [0x43, noticeText(fields.code)], // C
    [0x4d, noticeText(fields.message)] // M
  ]
  if (fields.detail !== undefined) entries.push([0x44, noticeText(fields.detail)]) // D
  if (fields.hint !== undefined) entries.push([0x48, noticeText(fields.hint)]) // H
  const bodyBytes = entries.reduce((sum, [, text]) => sum + 1 + text.byteLength, 0) + 1
  return fixedMessage(type, (writer) => {
    for (const [code, text] of entries) writer.u8(code).bytes(text)
    writer.u8(0)
  }, bodyBytes)
}

/**
 * A notice field as a C string. Error texts may echo what a client sent, so instead of asserting
 * (which would let bad input crash the server) a NUL becomes U+FFFD and long text is cut.
 */
function noticeText(text: string): Uint8Array {
  const bounded = text.length > NOTICE_FIELD_LENGTH_MAX_CHARS ? text.slice(0, NOTICE_FIELD_LENGTH_MAX_CHARS) : text
  return cstringBytes(bounded.replaceAll("\0", "\uFFFD"))
}

/** UTF-8 bytes and the terminating NUL; a NUL inside would end the string early, so it asserts. */
function cstringBytes(text: string): Uint8Array {
  const encoded = utf8Bytes(text)
  assert(!encoded.includes(0), "a C string holds no NUL byte")
  const out = new Uint8Array(encoded.byteLength + 1)
  out.set(encoded)
  return out
}

/** A typed message with a body of exactly `bodyBytes`, written by `write`. */
function fixedMessage(type: number, write: (writer: ByteWriter) => unknown, bodyBytes: number): Uint8Array {
  const lengthBytes = 4 + bodyBytes
  assert(lengthBytes <= PG_MESSAGE_LENGTH_MAX_BYTES, `message ${describeType(type)} of ${lengthBytes} bytes exceeds the cap`)
  const writer = new ByteWriter(1 + lengthBytes)
  writer.u8(type).u32BE(lengthBytes)
  write(writer)
  assert(writer.lengthBytes === 1 + lengthBytes, `message ${describeType(type)} body is ${bodyBytes} bytes as computed`)
  return writer.finish()
}

function describeType(type: number): string {
  const hex = type.toString(16).padStart(2, "0")
  return type >= 0x20 && type < 0x7f ? `'${String.fromCharCode(type)}' (0x${hex})` : `0x${hex}`
}

/**
 * pg_split_opts: tokens separated by unescaped ASCII whitespace; a backslash keeps the next
 * character. Undefined when the text ends inside an escape.
 */
function splitOptions(options: string): ReadonlyArray<string> | undefined {
  const tokens: string[] = []
  let current = ""
  let started = false
  let escaped = false
  for (const char of options) {
    if (escaped) {
      current += char
      escaped = false
    } else if (char === "\\") {
      escaped = true
      started = true
    } else if (isAsciiSpace(char)) {
      if (started) tokens.push(current)
      current = ""
      started = false
    } else {
      current += char
      started = true
    }
  }
  if (escaped) return undefined
  if (started) tokens.push(current)
  return tokens
}

/** C isspace in the C locale. */
function isAsciiSpace(char: string): boolean {
  return char === " " || char === "\t" || char === "\n" || char === "\v" || char === "\f" || char === "\r"
}

/**
 * Pushed chunks, read from the front. Chunks are never concatenated as they arrive; `take`
 * returns a view when the bytes sit in one chunk and copies only across chunks, so every byte is
 * copied at most once. Consumed chunks are dropped in batches, keeping removal amortized O(1).
 */
class ChunkQueue {
  private chunks: Uint8Array[] = []
  private head = 0
  private headOffsetBytes = 0
  private totalBytes = 0

  get lengthBytes(): number {
    return this.totalBytes
  }

  push(chunk: Uint8Array): void {
    if (chunk.byteLength === 0) return
    this.chunks.push(chunk)
    this.totalBytes += chunk.byteLength
  }

  clear(): void {
    this.chunks = []
    this.head = 0
    this.headOffsetBytes = 0
    this.totalBytes = 0
  }

  byteAt(index: number): number {
    assert(index >= 0 && index < this.totalBytes, "byteAt inside the buffered bytes")
    let offset = index + this.headOffsetBytes
    for (let i = this.head; ; i++) {
      const chunk = this.chunks[i]!
      if (offset < chunk.byteLength) return chunk[offset]!
      offset -= chunk.byteLength
    }
  }

  u32At(index: number): number {
    return ((this.byteAt(index) << 24) | (this.byteAt(index + 1) << 16) | (this.byteAt(index + 2) << 8) | this.byteAt(index + 3)) >>> 0
  }

  discard(lengthBytes: number): void {
    this.consume(lengthBytes, undefined)
  }

  take(lengthBytes: number): Uint8Array {
    const first = this.chunks[this.head]
    if (lengthBytes === 0) return new Uint8Array(0)
    if (first !== undefined && first.byteLength - this.headOffsetBytes >= lengthBytes) {
      const view = first.subarray(this.headOffsetBytes, this.headOffsetBytes + lengthBytes)
      this.consume(lengthBytes, undefined)
      return view
    }
    const out = new Uint8Array(lengthBytes)
    this.consume(lengthBytes, out)
    return out
  }

  /** Drops `lengthBytes` from the front, copying them into `into` when given. */
  private consume(lengthBytes: number, into: Uint8Array | undefined): void {
    assert(lengthBytes <= this.totalBytes, "consume at most the buffered bytes")
    let copied = 0
    while (copied < lengthBytes) {
      const chunk = this.chunks[this.head]!
      const available = chunk.byteLength - this.headOffsetBytes
      const step = Math.min(available, lengthBytes - copied)
      if (into !== undefined) into.set(chunk.subarray(this.headOffsetBytes, this.headOffsetBytes + step), copied)
      copied += step
      if (step === available) {
        this.head++
        this.headOffsetBytes = 0
      } else {
        this.headOffsetBytes += step
      }
    }
    this.totalBytes -= lengthBytes
    if (this.head === this.chunks.length) {
      this.chunks = []
      this.head = 0
    } else if (this.head >= CHUNK_COMPACTION_MIN && this.head * 2 >= this.chunks.length) {
      this.chunks = this.chunks.slice(this.head)
      this.head = 0
    }
  }
}

/** Consumed chunk slots tolerated before the array is compacted (keeps compaction amortized). */
const CHUNK_COMPACTION_MIN = 64
