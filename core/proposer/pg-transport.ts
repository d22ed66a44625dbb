import { Effect, Layer, Result } from "effect"
import type { TenantId, TimelineId } from "../acceptor/state.js"
import { Net } from "../io/net.js"
import { decodeAcceptorMessage, encodeProposerMessageParts } from "../protocol/consensus.js"
import { connectPg, type PgClient, type PgError } from "../protocol/pg-client.js"
import { decodeWalSenderMessage } from "../protocol/replication.js"
import { formatLsn, Lsn } from "../wal/lsn.js"
import { LinkError, SafekeeperTransport, type SafekeeperLink, type WalStream } from "./transport.js"

/**
 * The walproposer's transport over the Postgres wire protocol and the Net service, as the real
 * walproposer talks to safekeepers (reference §2, §3, §14): a replication connection with the
 * timeline in the startup options, START_WAL_PUSH, then one consensus message per CopyData
 * frame; and, for WAL it lacks, START_REPLICATION ... (term='N') as Neon's neon_walreader.
 */
export const WALPROPOSER_APPLICATION_NAME = "walproposer"
export const WALREADER_APPLICATION_NAME = "walproposer_walreader"

export const pgTransportLayer: Layer.Layer<SafekeeperTransport, never, Net> = Layer.effect(
  SafekeeperTransport,
  Effect.gen(function* () {
    const net = yield* Net
    const connect = (address: string, key: { readonly tenantId: TenantId; readonly timelineId: TimelineId }, applicationName: string) =>
      connectPg(address, {
        user: "walproposer",
        database: "replication",
        replication: "true",
        applicationName,
        options: `-c timeline_id=${key.timelineId} tenant_id=${key.tenantId}`
      }).pipe(Effect.provideService(Net, net), Effect.mapError((error) => linkError(address, "Connect", error)))

    return SafekeeperTransport.of({
      open: (address, options) =>
        Effect.gen(function* () {
          const client = yield* connect(address, options, WALPROPOSER_APPLICATION_NAME)
          const copy = yield* client.startCopyBoth(`START_WAL_PUSH (proto_version '3', allow_timeline_creation '${options.allowTimelineCreation}')`).pipe(
            Effect.mapError((error) => linkError(address, "Refused", error)),
            Effect.onError(() => client.close)
          )
          const link: SafekeeperLink = {
            address,
            // An AppendRequest's WAL goes out from the proposer's WAL buffer, not copied into a frame.
            send: (message) => Effect.mapError(copy.writeCopyDataParts(encodeProposerMessageParts(message)), (error) => linkError(address, "Closed", error)),
            receive: Effect.gen(function* () {
              const payload = yield* Effect.mapError(copy.readCopyData, (error) => linkError(address, "Closed", error))
              if (payload === undefined) return yield* new LinkError({ address, reason: "Closed", message: "the safekeeper ended the push" })
              const decoded = decodeAcceptorMessage(payload)
              if (Result.isFailure(decoded)) return yield* new LinkError({ address, reason: "Malformed", message: decoded.failure.message })
              return decoded.success
            }),
            close: client.close
          }
          return link
        }),

      streamWal: (address, options) =>
        Effect.gen(function* () {
          const client = yield* connect(address, options, WALREADER_APPLICATION_NAME)
          const copy = yield* client.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(options.startLsn)} (term='${options.term}')`).pipe(
            Effect.mapError((error) => linkError(address, "Refused", error)),
            Effect.onError(() => client.close)
          )
          return walStream(address, client, copy.readCopyData)
        })
    })
  })
)

/** XLogData chunks of a replication stream; keepalives are skipped (they carry no WAL). */
function walStream(address: string, client: PgClient, read: Effect.Effect<Uint8Array | undefined, PgError>): WalStream {
  return {
    next: Effect.gen(function* () {
      while (true) {
        const payload = yield* Effect.mapError(read, (error) => linkError(address, "Closed", error))
        if (payload === undefined) return undefined
        const decoded = decodeWalSenderMessage(payload)
        if (Result.isFailure(decoded)) return yield* new LinkError({ address, reason: "Malformed", message: decoded.failure.message })
        const message = decoded.success
        if (message._tag === "XLogData") return { startLsn: Lsn(message.dataStartLsn), bytes: message.data }
      }
    }),
    close: client.close
  }
}

function linkError(address: string, reason: LinkError["reason"], error: { readonly message: string; readonly _tag: string }): LinkError {
  return new LinkError({ address, reason, message: `${error._tag}: ${error.message}` })
}

