import type { Effect } from "effect"
import type { NetError } from "../io/net.js"
import type { PgWireError } from "../protocol/pg-wire.js"

/**
 * The CopyBoth phase of one connection as the WAL pipelines see it: payloads of CopyData
 * frames in each direction. The connection handler owns the framing; the pipelines only move
 * messages, so they run the same over any transport.
 */
export type CopyInput =
  | { readonly _tag: "Data"; readonly payload: Uint8Array }
  /** The client sent CopyDone: it wants the stream to end cleanly. */
  | { readonly _tag: "Done" }
  /** The client sent CopyFail, Terminate, or closed the connection. */
  | { readonly _tag: "Gone"; readonly reason: string }

export type ChannelError = NetError | PgWireError

export interface CopyChannel {
  /** Only one fiber reads at a time. */
  readonly receive: Effect.Effect<CopyInput, ChannelError>
  /** One CopyData frame; writes from several fibers are serialized by the channel. */
  send(payload: Uint8Array): Effect.Effect<void, ChannelError>
  /** A prebuilt frame (XLogData is framed in one allocation on the hot path). */
  sendFrame(frame: Uint8Array): Effect.Effect<void, ChannelError>
}
