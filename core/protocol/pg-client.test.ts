// Goal: the Postgres client speaks the protocol as PostgreSQL 15 and the safekeeper expect
// (pg-replication.md §2-§5): startup with trust or cleartext password, simple queries, CopyBoth
// with both ways of ending it, and every failure typed (server errors keep the connection
// usable; protocol, network and bound violations do not). Method: an in-memory pair of
// Connections built on Effect queues; a scripted server on the other end that reads with the
// wire codec's frontend reader and answers with its backend encoders, byte for byte.
import { Cause, Effect, Exit, Fiber, Queue, Result } from "effect"
import { describe, expect, test } from "vitest"
import { concatBytes } from "../bytes.js"
import { Lsn } from "../wal/lsn.js"
import { type Connection, Net, NetError } from "../io/net.js"
import {
  encodeAuthenticationCleartextPassword,
  encodeAuthenticationOk,
  encodeAuthenticationRequest,
  encodeBackendKeyData,
  encodeCommandComplete,
  encodeCopyBothResponse,
  encodeCopyData,
  encodeCopyDone,
  encodeDataRow,
  encodeErrorResponse,
  encodeNoticeResponse,
  encodeParameterStatus,
  encodeReadyForQuery,
  encodeRowDescription,
  type FrontendMessage,
  INT4_OID,
  INT8_OID,
  PG_MESSAGE_LENGTH_MAX_BYTES,
  PgFrontendReader,
  PgWireError,
  type StartupPacket,
  TEXT_OID
} from "./pg-wire.js"
import { connectPg, type PgClient, PgClientError, type PgConnectOptions, PgServerError, QUERY_RESULT_ROW_COUNT_MAX, startPg } from "./pg-client.js"
import { decodeStandbyMessage, decodeWalSenderMessage, encodeStandbyStatusUpdate, encodeXLogDataFrame } from "./replication.js"

// ---- an in-memory duplex ----

/** One direction: chunks in order, then undefined for EOF. */
type Pipe = Queue.Queue<Uint8Array | undefined>

function endpoint(name: string, inbox: Pipe, outbox: Pipe): Connection {
  let eof = false
  let closed = false
  return {
    localAddress: name,
    remoteAddress: "peer",
    read: Effect.gen(function* () {
      if (closed) return yield* new NetError({ reason: "Closed", address: name, message: "read after close" })
      if (eof) return undefined
      const chunk = yield* Queue.take(inbox)
      if (chunk === undefined) eof = true
      return chunk
    }),
    write: (data) => closed
      ? Effect.fail(new NetError({ reason: "Closed", address: name, message: "write after close" }))
      : Effect.asVoid(Queue.offer(outbox, data.slice())),
    writev: (parts) => closed
      ? Effect.fail(new NetError({ reason: "Closed", address: name, message: "write after close" }))
      : Effect.asVoid(Queue.offer(outbox, concatBytes(parts).slice())),
    shutdownWrite: Effect.asVoid(Queue.offer(outbox, undefined)),
    close: Effect.suspend(() => {
      if (closed) return Effect.void
      closed = true
      return Effect.asVoid(Queue.offer(outbox, undefined))
    })
  }
}

const duplex = Effect.gen(function* () {
  const toServer: Pipe = yield* Queue.unbounded<Uint8Array | undefined>()
  const toClient: Pipe = yield* Queue.unbounded<Uint8Array | undefined>()
  return { client: endpoint("client", toClient, toServer), server: endpoint("server", toServer, toClient) }
})

// ---- a scripted server ----

type FromClient = StartupPacket | FrontendMessage | "EOF"

class ScriptedServer {
  private readonly reader = new PgFrontendReader()
  constructor(readonly connection: Connection) {}

  /** The next thing the client sent; "EOF" once it closed. Wire errors fail the script. */
  readonly receive: Effect.Effect<FromClient, NetError | PgWireError> = Effect.suspend(() => {
    const server = this
    return Effect.gen(function* () {
      for (;;) {
        const next = server.reader.next()
        if (Result.isFailure(next)) return yield* next.failure
        if (next.success !== undefined) return next.success
        const chunk = yield* server.connection.read
        if (chunk === undefined) return "EOF" as const
        server.reader.push(chunk)
      }
    })
  })

  send(...frames: ReadonlyArray<Uint8Array>): Effect.Effect<void, NetError> {
    return this.connection.write(Uint8Array.from(Buffer.concat(frames)))
  }

  /** Sends the frames one byte at a time, to cut every message at every boundary. */
  sendBytewise(...frames: ReadonlyArray<Uint8Array>): Effect.Effect<void, NetError> {
    const bytes = Uint8Array.from(Buffer.concat(frames))
    return Effect.forEach(bytes, (byte) => this.connection.write(Uint8Array.of(byte)), { discard: true })
  }
}

const READY_BURST = [
  encodeAuthenticationOk(),
  encodeParameterStatus("server_version", "15.20"),
  encodeParameterStatus("integer_datetimes", "on"),
  encodeBackendKeyData(4242, 0xdeadbeef),
  encodeReadyForQuery("I")
]

const OPTIONS: PgConnectOptions = {
  user: "repl",
  database: "replication",
  replication: "true",
  applicationName: "pg_receivewal",
  options: "-c timeline_id=112ded66422aa5e953e5440fa5427ac4 tenant_id=cf0480929707ee75372337efaa5ecf96"
}

/** Runs client and server together; the server's result and the client's come back. */
function run<A, E, B>(
  clientSide: (connection: Connection) => Effect.Effect<A, E>,
  serverSide: (server: ScriptedServer) => Effect.Effect<B, NetError | PgWireError>
): Promise<{ readonly client: Exit.Exit<A, E>; readonly server: B }> {
  return Effect.runPromise(Effect.gen(function* () {
    const { client, server } = yield* duplex
    const serverFiber = yield* Effect.forkChild(serverSide(new ScriptedServer(server)))
    const clientExit = yield* Effect.exit(clientSide(client))
    const serverResult = yield* Fiber.join(serverFiber)
    return { client: clientExit, server: serverResult }
  }))
}

/** The startup part of a server script: reads the StartupMessage, answers with `burst`. */
const acceptStartup = (server: ScriptedServer, burst: ReadonlyArray<Uint8Array> = READY_BURST) =>
  Effect.gen(function* () {
    const startup = yield* server.receive
    yield* server.send(...burst)
    return startup
  })

function failureOf<A, E>(exit: Exit.Exit<A, E>): E {
  expect(Exit.isFailure(exit)).toBe(true)
  if (!Exit.isFailure(exit)) throw new Error("expected a failure")
  const error = Cause.findError(exit.cause)
  if (Result.isFailure(error)) throw new Error(`expected a typed failure, got ${String(exit.cause)}`)
  return error.success
}

function valueOf<A, E>(exit: Exit.Exit<A, E>): A {
  if (Exit.isFailure(exit)) throw new Error(`expected success, got ${String(exit.cause)}`)
  return exit.value
}

// ---- tests ----

describe("startup", () => {
  test("sends the StartupMessage (no SSLRequest), collects ParameterStatus and BackendKeyData", async () => {
    const { client, server } = await run(
      (connection) => Effect.map(startPg(connection, OPTIONS), (pg) => ({ parameters: new Map(pg.parameters), key: pg.backendKey })),
      (server) => acceptStartup(server)
    )
    expect(server).toEqual({
      _tag: "StartupMessage",
      parameters: new Map([
        ["user", "repl"], ["database", "replication"], ["replication", "true"], ["application_name", "pg_receivewal"], ["options", OPTIONS.options!]
      ])
    })
    expect(valueOf(client)).toEqual({
      parameters: new Map([["server_version", "15.20"], ["integer_datetimes", "on"]]),
      key: { processId: 4242, secretKey: 0xdeadbeef }
    })
  })

  test("answers a cleartext password request with the password (a JWT for a safekeeper)", async () => {
    const { client, server } = await run(
      (connection) => Effect.map(startPg(connection, { ...OPTIONS, password: "token" }), () => "ok"),
      (server) => Effect.gen(function* () {
        yield* server.receive
        yield* server.send(encodeAuthenticationCleartextPassword())
        const password = yield* server.receive
        yield* server.sendBytewise(...READY_BURST)
        return password
      })
    )
    expect(valueOf(client)).toBe("ok")
    expect(server).toEqual({ _tag: "PasswordMessage", data: Uint8Array.from(Buffer.from("token\0")) })
  })

  test("no password to give, an unsupported method, a FATAL error, a message out of place", async () => {
    const cases: ReadonlyArray<readonly [ReadonlyArray<Uint8Array>, string]> = [
      [[encodeAuthenticationCleartextPassword()], "PasswordRequired"],
      [[encodeAuthenticationRequest(10, Uint8Array.from(Buffer.from("SCRAM-SHA-256\0\0")))], "UnsupportedAuthentication"],
      [[encodeReadyForQuery("I")], "UnexpectedMessage"],
      [[encodeAuthenticationOk(), encodeCopyDone()], "UnexpectedMessage"]
    ]
    for (const [burst, reason] of cases) {
      const { client } = await run((connection) => startPg(connection, OPTIONS), (server) => acceptStartup(server, burst))
      const error = failureOf(client)
      expect(error).toBeInstanceOf(PgClientError)
      expect(error instanceof PgClientError && error.reason).toBe(reason)
    }
    const { client } = await run((connection) => startPg(connection, OPTIONS), (server) => acceptStartup(server, [
      encodeErrorResponse({ severity: "FATAL", code: "28P01", message: "password authentication failed for user \"repl\"" })
    ]))
    expect(failureOf(client)).toMatchObject({ _tag: "PgServerError", severity: "FATAL", code: "28P01" })
  })

  test("connectPg opens the connection with Net, and a refused connect is a typed Net error", async () => {
    const exit = await Effect.runPromise(Effect.gen(function* () {
      const { client, server } = yield* duplex
      const serverFiber = yield* Effect.forkChild(acceptStartup(new ScriptedServer(server)))
      const net = Net.of({
        listen: () => Effect.die("unused"),
        connect: (address) => (address === "sk:5454" ? Effect.succeed(client) : Effect.fail(new NetError({ reason: "ConnectionRefused", address, message: "refused" })))
      })
      const connected = yield* Effect.exit(Effect.provideService(connectPg("sk:5454", OPTIONS), Net, net))
      yield* Fiber.join(serverFiber)
      const refused = yield* Effect.exit(Effect.provideService(connectPg("elsewhere:1", OPTIONS), Net, net))
      return { connected, refused }
    }))
    expect(valueOf(exit.connected).parameters.get("server_version")).toBe("15.20")
    const refused = failureOf(exit.refused)
    expect(refused).toMatchObject({ _tag: "PgClientError", reason: "Net" })
    expect(refused instanceof PgClientError && refused.cause).toBeInstanceOf(NetError)
  })
})

/** Starts, runs `body` with the client; the server answers with `script` after startup. */
function session<A, E, B>(
  body: (pg: PgClient) => Effect.Effect<A, E>,
  script: (server: ScriptedServer) => Effect.Effect<B, NetError | PgWireError>
) {
  return run(
    (connection) => Effect.flatMap(startPg(connection, OPTIONS), body),
    (server) => Effect.andThen(acceptStartup(server), script(server))
  )
}

describe("simple queries", () => {
  test("IDENTIFY_SYSTEM: columns, text values, NULL, command tag; notices are skipped", async () => {
    const { client, server } = await session(
      (pg) => pg.simpleQuery("IDENTIFY_SYSTEM"),
      (server) => Effect.gen(function* () {
        const query = yield* server.receive
        yield* server.sendBytewise(
          encodeNoticeResponse({ severity: "NOTICE", code: "00000", message: "hello" }),
          encodeRowDescription([{ name: "systemid", typeOid: TEXT_OID }, { name: "timeline", typeOid: INT4_OID }, { name: "xlogpos", typeOid: TEXT_OID }, { name: "dbname", typeOid: TEXT_OID }]),
          encodeDataRow(["7710987617075029990", "1", "0/503A600", null]),
          encodeCommandComplete("IDENTIFY_SYSTEM"),
          encodeParameterStatus("in_hot_standby", "off"),
          encodeReadyForQuery("I")
        )
        return query
      })
    )
    expect(server).toEqual({ _tag: "Query", text: "IDENTIFY_SYSTEM" })
    expect(valueOf(client)).toEqual({
      columns: ["systemid", "timeline", "xlogpos", "dbname"],
      rows: [["7710987617075029990", "1", "0/503A600", null]],
      commandTag: "IDENTIFY_SYSTEM"
    })
  })

  test("a server error is typed, read through to ReadyForQuery, and the connection stays usable", async () => {
    const { client } = await session(
      (pg) => Effect.gen(function* () {
        const failed = yield* Effect.flip(pg.simpleQuery("TIMELINE_HISTORY 1"))
        const next = yield* pg.simpleQuery("SHOW wal_segment_size")
        return { failed, next }
      }),
      (server) => Effect.gen(function* () {
        yield* server.receive
        // PostgreSQL 15 sends RowDescription before the error (pg-replication.md §3).
        yield* server.send(
          encodeRowDescription([{ name: "filename", typeOid: TEXT_OID }, { name: "content", typeOid: TEXT_OID }]),
          encodeErrorResponse({ severity: "ERROR", code: "58P01", message: "could not open file \"pg_wal/00000001.history\"", detail: "d", hint: "h" }),
          encodeReadyForQuery("I")
        )
        yield* server.receive
        yield* server.send(encodeRowDescription([{ name: "wal_segment_size", typeOid: TEXT_OID }]), encodeDataRow(["16MB"]), encodeCommandComplete("SHOW"), encodeReadyForQuery("I"))
      })
    )
    const { failed, next } = valueOf(client)
    expect(failed).toBeInstanceOf(PgServerError)
    expect(failed).toMatchObject({ severity: "ERROR", code: "58P01", message: "could not open file \"pg_wal/00000001.history\"", detail: "d", hint: "h" })
    expect(next).toEqual({ columns: ["wal_segment_size"], rows: [["16MB"]], commandTag: "SHOW" })
  })

  test("SET datestyle: a bare CommandComplete", async () => {
    const { client } = await session((pg) => pg.simpleQuery("SET datestyle TO 'ISO'"), (server) => Effect.andThen(server.receive, server.send(encodeCommandComplete("SELECT 1"), encodeReadyForQuery("I"))))
    expect(valueOf(client)).toEqual({ columns: [], rows: [], commandTag: "SELECT 1" })
  })

  test("connection closed mid-message, oversized message, rows beyond the bound, bad row", async () => {
    const expectReason = async (frames: ReadonlyArray<Uint8Array>, reason: string, close = true) => {
      const { client } = await session((pg) => pg.simpleQuery("IDENTIFY_SYSTEM"), (server) => Effect.gen(function* () {
        yield* server.receive
        yield* server.send(...frames)
        if (close) yield* server.connection.shutdownWrite
      }))
      const error = failureOf(client)
      expect(error).toMatchObject({ _tag: "PgClientError", reason })
      return error
    }
    const row = encodeRowDescription([{ name: "a", typeOid: INT8_OID }])
    const closed = await expectReason([row, encodeDataRow(["1"]).subarray(0, 7)], "ConnectionClosed")
    expect(closed.message).toContain("middle of a message")
    const header = new Uint8Array(5)
    new DataView(header.buffer).setUint8(0, 0x44)
    new DataView(header.buffer).setUint32(1, PG_MESSAGE_LENGTH_MAX_BYTES + 1)
    const oversized = await expectReason([header], "Wire", false)
    expect(oversized instanceof PgClientError && oversized.cause).toMatchObject({ _tag: "PgWireError", reason: "MessageTooLong" })
    const many = Array.from({ length: QUERY_RESULT_ROW_COUNT_MAX + 1 }, () => encodeDataRow(["1"]))
    await expectReason([row, ...many], "TooMuchData", false)
    await expectReason([row, encodeDataRow(["1", "2"])], "UnexpectedMessage", false)
    await expectReason([row, encodeDataRow([Uint8Array.of(0xff)])], "Wire", false)
    await expectReason([encodeCopyBothResponse()], "UnexpectedMessage", false)
  })

  test("after a protocol failure the client refuses further queries", async () => {
    const { client } = await session(
      (pg) => Effect.gen(function* () {
        yield* Effect.flip(pg.simpleQuery("IDENTIFY_SYSTEM"))
        return yield* Effect.flip(pg.simpleQuery("IDENTIFY_SYSTEM"))
      }),
      (server) => Effect.andThen(server.receive, server.send(encodeCopyDone()))
    )
    expect(valueOf(client)).toMatchObject({ _tag: "PgClientError", reason: "NotReady" })
  })
})

describe("CopyBoth", () => {
  const xlog = (start: number, data: ReadonlyArray<number>) =>
    encodeXLogDataFrame({ dataStartLsn: Lsn(start), walEndLsn: Lsn(0x5000100), sendTimeUs: 1, data: Uint8Array.from(data) })

  test("START_REPLICATION: WAL in, status out, client CopyDone, closing results, Terminate", async () => {
    const { client, server } = await session(
      (pg) => Effect.gen(function* () {
        const copy = yield* pg.startCopyBoth("START_REPLICATION 0/5000000 TIMELINE 1")
        const first = yield* copy.readCopyData
        const second = yield* copy.readCopyData
        yield* copy.writeCopyData(encodeStandbyStatusUpdate({ writeLsn: Lsn(0x5000004), flushLsn: Lsn(0), applyLsn: Lsn(0), sendTimeUs: 2, replyRequested: false }))
        const results = yield* copy.finish
        const after = yield* pg.simpleQuery("IDENTIFY_SYSTEM")
        yield* pg.terminate
        return { first, second, results, after }
      }),
      (server) => Effect.gen(function* () {
        const query = yield* server.receive
        yield* server.sendBytewise(encodeCopyBothResponse(), xlog(0x5000000, [1, 2]), xlog(0x5000002, [3, 4]))
        const status = yield* server.receive
        const done = yield* server.receive
        yield* server.send(encodeCopyDone(), encodeCommandComplete("START_STREAMING"), encodeCommandComplete("START_REPLICATION"), encodeReadyForQuery("I"))
        yield* server.receive
        yield* server.send(encodeCommandComplete("IDENTIFY_SYSTEM"), encodeReadyForQuery("I"))
        const terminate = yield* server.receive
        const eof = yield* server.receive
        return { query, status, done, terminate, eof }
      })
    )
    const { first, second, results, after } = valueOf(client)
    expect(Result.getOrThrow(decodeWalSenderMessage(first!))).toMatchObject({ _tag: "XLogData", dataStartLsn: 0x5000000, data: Uint8Array.of(1, 2) })
    expect(Result.getOrThrow(decodeWalSenderMessage(second!))).toMatchObject({ dataStartLsn: 0x5000002, data: Uint8Array.of(3, 4) })
    expect(results).toEqual([{ columns: [], rows: [], commandTag: "START_STREAMING" }, { columns: [], rows: [], commandTag: "START_REPLICATION" }])
    expect(after.commandTag).toBe("IDENTIFY_SYSTEM")
    expect(server.query).toEqual({ _tag: "Query", text: "START_REPLICATION 0/5000000 TIMELINE 1" })
    expect(server.status).toMatchObject({ _tag: "CopyData" })
    if (server.status !== "EOF" && server.status._tag === "CopyData") expect(Result.getOrThrow(decodeStandbyMessage(server.status.data))).toMatchObject({ _tag: "StandbyStatusUpdate", writeLsn: 0x5000004 })
    expect(server.done).toEqual({ _tag: "CopyDone" })
    expect(server.terminate).toEqual({ _tag: "Terminate" })
    expect(server.eof).toBe("EOF")
  })

  test("end of timeline: the server's CopyDone, then the next timeline's row (pg-replication.md §5)", async () => {
    const { client, server } = await session(
      (pg) => Effect.gen(function* () {
        const copy = yield* pg.startCopyBoth("START_REPLICATION 0/A000000 TIMELINE 1")
        const data = yield* copy.readCopyData
        const end = yield* copy.readCopyData
        const again = yield* copy.readCopyData
        return { data, end, again, results: yield* copy.finish }
      }),
      (server) => Effect.gen(function* () {
        yield* server.receive
        yield* server.send(encodeCopyBothResponse(), encodeCopyData(Uint8Array.of(0x77)), encodeCopyDone())
        const done = yield* server.receive
        yield* server.send(
          encodeRowDescription([{ name: "next_tli", typeOid: INT8_OID }, { name: "next_tli_startpos", typeOid: TEXT_OID }]),
          encodeDataRow(["2", "0/A008208"]),
          encodeCommandComplete("START_STREAMING"),
          encodeCommandComplete("START_REPLICATION"),
          encodeReadyForQuery("I")
        )
        return done
      })
    )
    expect(server).toEqual({ _tag: "CopyDone" })
    const { data, end, again, results } = valueOf(client)
    expect(data).toEqual(Uint8Array.of(0x77))
    expect(end).toBeUndefined()
    expect(again).toBeUndefined()
    expect(results).toEqual([
      { columns: ["next_tli", "next_tli_startpos"], rows: [["2", "0/A008208"]], commandTag: "START_STREAMING" },
      { columns: [], rows: [], commandTag: "START_REPLICATION" }
    ])
  })

  test("finish drops CopyData still in flight after the client's CopyDone", async () => {
    const { client } = await session(
      (pg) => Effect.flatMap(pg.startCopyBoth("START_REPLICATION 0/0"), (copy) => copy.finish),
      (server) => Effect.gen(function* () {
        yield* server.receive
        yield* server.send(encodeCopyBothResponse(), encodeCopyData(Uint8Array.of(1)), encodeCopyData(Uint8Array.of(2)))
        yield* server.receive
        yield* server.send(encodeCopyDone(), encodeCommandComplete("START_REPLICATION"), encodeReadyForQuery("I"))
      })
    )
    expect(valueOf(client)).toEqual([{ columns: [], rows: [], commandTag: "START_REPLICATION" }])
  })

  test("a walsender shutting down: CommandComplete COPY 0 with no CopyDone, then the socket closes", async () => {
    const { client } = await session(
      (pg) => Effect.gen(function* () {
        const copy = yield* pg.startCopyBoth("START_REPLICATION 0/A000000 TIMELINE 1")
        const end = yield* copy.readCopyData
        const finished = yield* Effect.flip(copy.finish)
        return { end, finished }
      }),
      (server) => Effect.gen(function* () {
        yield* server.receive
        yield* server.send(encodeCopyBothResponse(), encodeCommandComplete("COPY 0"))
        yield* server.connection.close
      })
    )
    const { end, finished } = valueOf(client)
    expect(end).toBeUndefined()
    expect(finished).toMatchObject({ _tag: "PgClientError", reason: "ConnectionClosed" })
  })

  test("refusals: an ErrorResponse instead of CopyBothResponse, and one after it (PostgreSQL 15)", async () => {
    const refused = await session(
      (pg) => Effect.gen(function* () {
        const error = yield* Effect.flip(pg.startCopyBoth("START_REPLICATION 0/FF000000 TIMELINE 5"))
        return { error, after: yield* pg.simpleQuery("TIMELINE_STATUS") }
      }),
      (server) => Effect.gen(function* () {
        yield* server.receive
        yield* server.send(encodeErrorResponse({ severity: "ERROR", code: "XX000", message: "requested timeline 5 is not in this server's history" }), encodeReadyForQuery("I"))
        yield* server.receive
        yield* server.send(encodeCommandComplete("TIMELINE_STATUS"), encodeReadyForQuery("I"))
      })
    )
    expect(valueOf(refused.client).error).toMatchObject({ _tag: "PgServerError", code: "XX000" })
    expect(valueOf(refused.client).after.commandTag).toBe("TIMELINE_STATUS")

    const late = await session(
      (pg) => Effect.gen(function* () {
        const copy = yield* pg.startCopyBoth("START_REPLICATION 0/FF000000 TIMELINE 1")
        const error = yield* Effect.flip(copy.readCopyData)
        const finished = yield* Effect.flip(copy.finish)
        return { error, finished, after: yield* pg.simpleQuery("IDENTIFY_SYSTEM") }
      }),
      (server) => Effect.gen(function* () {
        yield* server.receive
        yield* server.send(
          encodeCopyBothResponse(),
          encodeErrorResponse({ severity: "ERROR", code: "XX000", message: "requested starting point 0/FF000000 is ahead of the WAL flush position of this server 0/4ECCDE90" }),
          encodeReadyForQuery("I")
        )
        yield* server.receive // the client's CopyDone from finish
        yield* server.receive
        yield* server.send(encodeCommandComplete("IDENTIFY_SYSTEM"), encodeReadyForQuery("I"))
      })
    )
    const { error, finished, after } = valueOf(late.client)
    expect(error).toMatchObject({ _tag: "PgServerError", code: "XX000" })
    expect(finished).toBe(error)
    expect(after.commandTag).toBe("IDENTIFY_SYSTEM")
  })

  test("a query that does not start COPY is an unexpected message", async () => {
    const { client } = await session(
      (pg) => pg.startCopyBoth("IDENTIFY_SYSTEM"),
      (server) => Effect.andThen(server.receive, server.send(encodeCommandComplete("IDENTIFY_SYSTEM"), encodeReadyForQuery("I")))
    )
    expect(failureOf(client)).toMatchObject({ _tag: "PgClientError", reason: "UnexpectedMessage" })
  })
})
