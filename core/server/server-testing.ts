import { Effect, Result } from "effect"
import { NodeId } from "../acceptor/state.js"
import { sleepUs } from "../io/clock.js"
import { Net, type Connection, type NetError } from "../io/net.js"
import {
  type BackendMessage,
  encodeCopyData,
  encodeQuery,
  encodeStartupMessage,
  PgBackendReader,
  type PgWireError
} from "../protocol/pg-wire.js"
import { runSafekeeper } from "./safekeeper.js"

/**
 * Test support for the server: a safekeeper program for a simulated node, and a raw client
 * that writes any bytes and reads backend messages, so tests can send what no real client
 * would (garbage, oversized lengths, frames cut anywhere).
 */
export const TEST_TENANT = "0123456789abcdef0123456789abcdef"
export const TEST_TIMELINE = "fedcba9876543210fedcba9876543210"
export const SK_PORT = 5454

export const safekeeperNode = (id: number) =>
  Effect.scoped(runSafekeeper({ nodeId: NodeId(id), datadir: "/data", listenPg: `sk${id}:${SK_PORT}`, noSync: false }))

export class RawClient {
  private readonly reader = new PgBackendReader()
  private ended = false

  constructor(readonly connection: Connection) {}

  /** Connects, retrying while the server is not listening yet. */
  static connect(address: string): Effect.Effect<RawClient, NetError, Net> {
    return Effect.gen(function* () {
      const net = yield* Net
      for (let attempt = 0; ; attempt++) {
        const connected = yield* Effect.result(net.connect(address))
        if (Result.isSuccess(connected)) return new RawClient(connected.success)
        if (attempt >= 50) return yield* Effect.fail(connected.failure)
        yield* sleepUs(20_000)
      }
    })
  }

  /** Connects and completes a startup; returns the client after ReadyForQuery. */
  static session(address: string, parameters: Record<string, string> = {}): Effect.Effect<RawClient, NetError | PgWireError | Error, Net> {
    return Effect.gen(function* () {
      const client = yield* RawClient.connect(address)
      yield* client.write(encodeStartupMessage(Object.entries({ user: "test", replication: "true", ...parameters })))
      const messages = yield* client.readUntil((m) => m._tag === "ReadyForQuery" || m._tag === "ErrorResponse")
      const last = messages[messages.length - 1]
      if (last?._tag !== "ReadyForQuery") return yield* Effect.fail(new Error(`startup failed: ${JSON.stringify(last)}`))
      return client
    })
  }

  write(bytes: Uint8Array): Effect.Effect<void, NetError> {
    return this.connection.write(bytes)
  }

  /** The next backend message, or undefined once the server closed. */
  readonly next: Effect.Effect<BackendMessage | undefined, NetError | PgWireError> = Effect.suspend(() => {
    const self = this
    return Effect.gen(function* () {
      while (true) {
        const decoded = self.reader.next()
        if (Result.isFailure(decoded)) return yield* Effect.fail(decoded.failure)
        if (decoded.success !== undefined) return decoded.success
        if (self.ended) return undefined
        const chunk = yield* self.connection.read.pipe(Effect.catch(() => Effect.succeed(undefined)))
        if (chunk === undefined) self.ended = true
        else self.reader.push(chunk)
      }
    })
  })

  /** Messages up to and including the first one `last` accepts (or all until the server closed). */
  readUntil(last: (message: BackendMessage) => boolean): Effect.Effect<BackendMessage[], NetError | PgWireError> {
    const self = this
    return Effect.gen(function* () {
      const messages: BackendMessage[] = []
      while (true) {
        const message = yield* self.next
        if (message === undefined) return messages
        messages.push(message)
        if (last(message)) return messages
      }
    })
  }

  /** A simple query's messages through ReadyForQuery. */
  query(text: string): Effect.Effect<BackendMessage[], NetError | PgWireError> {
    return Effect.andThen(this.write(encodeQuery(text)), this.readUntil((m) => m._tag === "ReadyForQuery"))
  }

  copyData(payload: Uint8Array): Effect.Effect<void, NetError> {
    return this.write(encodeCopyData(payload))
  }

  readonly close: Effect.Effect<void> = Effect.suspend(() => this.connection.close)
}

export const timelineOptions = (tenant = TEST_TENANT, timeline = TEST_TIMELINE) => ({ options: `-c tenant_id=${tenant} timeline_id=${timeline}` })

const textDecoder = new TextDecoder()

/** The text values of the DataRows among `messages`. */
export function rowsOf(messages: ReadonlyArray<BackendMessage>): Array<Array<string | null>> {
  return messages.flatMap((m) => (m._tag === "DataRow" ? [m.values.map((v) => (v === null ? null : textDecoder.decode(v)))] : []))
}

export function errorOf(messages: ReadonlyArray<BackendMessage>): { readonly code: string; readonly message: string; readonly severity: string } | undefined {
  const error = messages.find((m) => m._tag === "ErrorResponse")
  return error?._tag === "ErrorResponse" ? { code: error.notice.code, message: error.notice.message, severity: error.notice.severity } : undefined
}
