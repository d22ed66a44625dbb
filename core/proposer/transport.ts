import { Context, type Effect, Schema } from "effect"
import type { TenantId, Term, TimelineId } from "../acceptor/state.js"
import type { AcceptorMessage, ProposerMessage } from "../protocol/consensus.js"
import type { Lsn } from "../wal/lsn.js"

/**
 * How the walproposer reaches safekeepers (reference §2, §3, §9): one consensus connection per
 * safekeeper (START_WAL_PUSH, then one consensus message per CopyData frame) and, for WAL the
 * proposer no longer holds, a replication stream from a safekeeper that has it (Neon's
 * neon_walreader: START_REPLICATION with `term`). The proposer is written against this
 * interface only; the live implementation speaks the Postgres wire protocol over Net, tests use
 * the in-memory one in `testing.ts`.
 */

export class LinkError extends Schema.TaggedError<LinkError>()("LinkError", {
  address: Schema.String,
  reason: Schema.Literals(["Connect", "Closed", "Malformed", "Refused", "TimedOut"]),
  message: Schema.String
}) {}

export interface SafekeeperLink {
  readonly address: string
  send(message: ProposerMessage): Effect.Effect<void, LinkError>
  /** The next acceptor message; fails with LinkError when the connection ends or a message is malformed. */
  readonly receive: Effect.Effect<AcceptorMessage, LinkError>
  readonly close: Effect.Effect<void>
}

export interface WalStreamChunk {
  readonly startLsn: Lsn
  readonly bytes: Uint8Array
}

export interface WalStream {
  /** next chunk, or undefined when the donor ended the stream */
  readonly next: Effect.Effect<WalStreamChunk | undefined, LinkError>
  readonly close: Effect.Effect<void>
}

export class SafekeeperTransport extends Context.Service<SafekeeperTransport, {
  /** Connects and runs START_WAL_PUSH (proto_version '3', allow_timeline_creation ...). */
  open(
    address: string,
    options: { readonly tenantId: TenantId; readonly timelineId: TimelineId; readonly allowTimelineCreation: boolean }
  ): Effect.Effect<SafekeeperLink, LinkError>
  /** START_REPLICATION PHYSICAL startLsn (term='term') on a safekeeper: its WAL up to its flush_lsn while its term stays `term`. */
  streamWal(
    address: string,
    options: { readonly tenantId: TenantId; readonly timelineId: TimelineId; readonly startLsn: Lsn; readonly term: Term }
  ): Effect.Effect<WalStream, LinkError>
}>()("sk/core/proposer/SafekeeperTransport") {}
