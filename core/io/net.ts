import { Context, Effect, Schema } from "effect"

/**
 * Connections carrying ordered byte streams between `host:port` addresses. Writes wait while
 * the send buffer is full (backpressure); a stream can be half-closed (`shutdownWrite`) or
 * broken (reset). Message framing is the protocol's job, never the network's.
 */
export const NetErrorReason = Schema.Literals([
  "ConnectionRefused", // nothing listens at the address
  "ConnectionReset", // the stream broke (peer crashed, partition outlasted the timeout, reset)
  "TimedOut", // a connect attempt got no answer
  "AddressInUse",
  "Closed", // used after close
  "InvalidAddress",
  "Other"
])
export type NetErrorReason = typeof NetErrorReason.Type

export class NetError extends Schema.TaggedError<NetError>()("NetError", {
  reason: NetErrorReason,
  address: Schema.String,
  message: Schema.String
}) {}

export interface Connection {
  readonly localAddress: string
  readonly remoteAddress: string
  /** The next chunk of bytes, or undefined once the peer has shut down its write side (EOF). */
  readonly read: Effect.Effect<Uint8Array | undefined, NetError>
  /**
   * Queues all of `data`, waiting while the send buffer is full. The connection may hold on to
   * `data` until it is sent: the caller must not change it after the call.
   */
  write(data: Uint8Array): Effect.Effect<void, NetError>
  /**
   * Queues `parts` one after another as one write (as writev(2)): a header and a body kept in
   * separate buffers go out without being joined, and no other write comes between them. The
   * same waiting and ownership rules as `write` hold for every part.
   */
  writev(parts: ReadonlyArray<Uint8Array>): Effect.Effect<void, NetError>
  /** Half-close: the peer reads EOF after the bytes already written. */
  readonly shutdownWrite: Effect.Effect<void, NetError>
  /** Closes both directions; unread and unsent bytes are dropped. Idempotent. */
  readonly close: Effect.Effect<void>
}

export interface Listener {
  /** The bound address (with the real port when 0 was asked for). */
  readonly address: string
  readonly accept: Effect.Effect<Connection, NetError>
  readonly close: Effect.Effect<void>
}

export class Net extends Context.Service<Net, {
  listen(address: string): Effect.Effect<Listener, NetError>
  connect(address: string): Effect.Effect<Connection, NetError>
}>()("sk/core/io/Net") {}

/** Splits "host:port"; undefined when malformed. */
export function parseAddress(address: string): { readonly host: string; readonly port: number } | undefined {
  const i = address.lastIndexOf(":")
  if (i <= 0) return undefined
  const portText = address.slice(i + 1)
  if (!/^[0-9]{1,5}$/.test(portText)) return undefined
  const port = Number(portText)
  if (port > 65535) return undefined
  return { host: address.slice(0, i), port }
}
