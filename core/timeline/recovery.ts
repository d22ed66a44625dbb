import { Duration, Effect, Option, Result, Schema } from "effect"
import type { AcceptorFailure } from "../acceptor/acceptor.js"
import { type NodeId, Term, type TermHistory, type TermLsn } from "../acceptor/state.js"
import { findHighestCommonPoint, lastLogTerm } from "../acceptor/term-history.js"
import { assert } from "../assert.js"
import type { SafekeeperTimelineInfo } from "../io/broker.js"
import { monotonicUs, nowUs, sleepUs, US_PER_SECOND } from "../io/clock.js"
import type { Disk } from "../io/disk.js"
import { type Log, logInfo, logWarn } from "../io/log.js"
import type { Net } from "../io/net.js"
import {
  type AcceptorMessage,
  type AppendRequest,
  decodeAcceptorMessage,
  encodeProposerMessage,
  MAX_SEND_SIZE_BYTES,
  type ProposerMessage,
  type VoteResponse
} from "../protocol/consensus.js"
import { connectPg, type CopyBoth, type PgConnectOptions, type PgError } from "../protocol/pg-client.js"
import { decodeWalSenderMessage, encodeStandbyStatusUpdate, pgTimestampUs } from "../protocol/replication.js"
import { formatLsn, Lsn } from "../wal/lsn.js"
import type { Timeline } from "./timeline.js"

/**
 * Peer recovery (Neon's `recovery.rs`, reference §10, `--peer-recovery`, off by default): a
 * safekeeper that lags and has no compute streaming to it pulls the WAL it misses from the
 * most advanced peer, over the term mode of the replication protocol (`START_REPLICATION
 * PHYSICAL <lsn> (term='T')`, reference §9, core/server/send-wal.ts), and feeds it to its own
 * acceptor as if term T's proposer had sent it. The rules stay the acceptor's: we vote for T
 * locally (never for a term below ours), take T's history with a ProposerElected that starts at
 * the last point our log and the donor's share (truncating an uncommitted tail of an older
 * term, as any proposer of T would), then append.
 *
 * The donor's term history. Neon reads it from the donor's HTTP status (step 1); we have no
 * HTTP API yet, and the replication protocol has nothing that carries it (TIMELINE_STATUS
 * answers flush and commit only; TIMELINE_HISTORY is Postgres's timeline files). The consensus
 * protocol has: a VoteRequest for the donor's *own* term gets `vote_given = false` and changes
 * nothing (an acceptor votes only for a term above its own, reference §5), and its VoteResponse
 * carries the donor's term, flush_lsn and term history up to flush_lsn. So we probe the donor
 * over START_WAL_PUSH with a greeting and that VoteRequest, and read the answer: it is Neon's
 * step 1 too (the term must be unchanged), with fresher values than the broker's. The only
 * state it can change on the donor: a donor whose term fell below the broker's (it lost its
 * disk) would raise its term to T, a term it had already voted in, with nobody to use the vote.
 * While probing, the donor counts one more (voting, not streaming) receiver.
 */
export const PEER_RECOVERY_INTERVAL_US_DEFAULT = 2 * US_PER_SECOND
/** Neon ends a recovery stream that brought nothing for this long. */
export const PEER_RECOVERY_SILENCE_TIMEOUT_US_DEFAULT = 30 * US_PER_SECOND
export const PEER_RECOVERY_CONNECT_TIMEOUT_US_DEFAULT = 10 * US_PER_SECOND
/** Appended but not flushed WAL at most (the receive pipeline also flushes once a second). */
export const RECOVERY_UNFLUSHED_BYTES_MAX = 16 * MAX_SEND_SIZE_BYTES
export const RECOVERY_FLUSH_INTERVAL_US = 1 * US_PER_SECOND
/** Messages the probe reads before its VoteResponse: the greeting's answer, then the vote's. */
const PROBE_REPLY_COUNT_MAX = 2
assert(RECOVERY_UNFLUSHED_BYTES_MAX >= MAX_SEND_SIZE_BYTES, "a flush batch holds at least one chunk")

export const peerRecoveryApplicationName = (nodeId: NodeId): string => `safekeeper_${nodeId}`

export interface RecoveryPosition {
  readonly term: Term
  readonly lastLogTerm: Term
  readonly flushLsn: Lsn
}

/**
 * Donors, best first (reference §10): peers whose (last_log_term, flush_lsn) is above ours,
 * whose term equals their last_log_term (their log is their term's: the term mode serves it
 * as long as that term holds), and whose term is at least ours (we must be able to vote for
 * it). Best: highest (last_log_term, flush_lsn), then the lowest safekeeper id, so every
 * safekeeper orders the same infos the same way.
 */
export function pickDonors(self: RecoveryPosition, peers: ReadonlyArray<SafekeeperTimelineInfo>): ReadonlyArray<SafekeeperTimelineInfo> {
  return peers
    .filter((peer) =>
      (peer.lastLogTerm > self.lastLogTerm || (peer.lastLogTerm === self.lastLogTerm && peer.flushLsn > self.flushLsn)) &&
      peer.term === peer.lastLogTerm &&
      peer.term >= self.term
    )
    .sort((a, b) => b.lastLogTerm - a.lastLogTerm || b.flushLsn - a.flushLsn || a.safekeeperId - b.safekeeperId)
}

/**
 * Where a proposer of the donor's term would start streaming to us: the end of the last term
 * our log and the donor's share, or the donor's first entry when they share none (what the
 * acceptor's decideElected computes and requires as start_streaming_at).
 */
export function recoveryStartPoint(donorHistory: TermHistory, ourHistory: TermHistory, ourFlushLsn: Lsn): TermLsn | undefined {
  if (donorHistory.length === 0) return undefined
  return findHighestCommonPoint(donorHistory, ourHistory, ourFlushLsn) ?? donorHistory[0]
}

export interface PeerRecoveryOptions {
  readonly nodeId: NodeId
  /** Fresh broker infos of this timeline (the manager drops peers not heard within the heartbeat timeout). */
  readonly peers: Effect.Effect<ReadonlyArray<SafekeeperTimelineInfo>>
  readonly intervalUs?: number
  readonly silenceTimeoutUs?: number
  readonly connectTimeoutUs?: number
}

export class RecoveryError extends Schema.TaggedError<RecoveryError>()("RecoveryError", {
  reason: Schema.Literals(["ConnectTimeout", "Probe", "Malformed"]),
  message: Schema.String
}) {}

type RecoveryFailure = RecoveryError | PgError | AcceptorFailure

/** Why one recovery stream ended (the `reason` of "peer recovery finished"). */
export type RecoveryEnd =
  | "caught up" // a keepalive came once the donor was no longer a donor
  | "silence" // nothing for silenceTimeoutUs
  | "term changed" // our term moved (a compute, or another recovery's vote)
  | "donor ended" // the donor closed the stream (its term moved: the walsender ends)
  | "timeline stopped"

/** Runs forever (until interrupted): one recovery attempt every interval. Failures are logged, never raised. */
export const runPeerRecovery = (timeline: Timeline, options: PeerRecoveryOptions): Effect.Effect<never, never, Net | Disk | Log> =>
  Effect.forever(Effect.gen(function* () {
    yield* sleepUs(options.intervalUs ?? PEER_RECOVERY_INTERVAL_US_DEFAULT)
    const attempt = yield* Effect.result(recoverOnce(timeline, options))
    if (Result.isFailure(attempt)) {
      yield* logWarn("peer recovery failed", { error: attempt.failure._tag, message: attempt.failure.message })
    }
  }))

/** One pass: pick a donor, take its term, stream from it until one of the stop conditions. */
export const recoverOnce = (timeline: Timeline, options: PeerRecoveryOptions): Effect.Effect<void, RecoveryFailure, Net | Disk | Log> =>
  Effect.gen(function* () {
    if (!recoveryAllowed(timeline)) return
    const donor = yield* currentDonor(timeline, options)
    if (donor === undefined) return
    const connectTimeoutUs = options.connectTimeoutUs ?? PEER_RECOVERY_CONNECT_TIMEOUT_US_DEFAULT
    const donorTerm = Term(donor.term)

    // Neon's step 1, by the probe described at the top: the donor's term must be unchanged.
    const status = yield* probeDonor(timeline, donor, connectTimeoutUs)
    if (status.term !== donorTerm) {
      yield* logInfo("peer recovery skipped", { donor: donor.safekeeperId, reason: "donor term changed", term: donorTerm, donor_term: status.term })
      return
    }
    const donorLastLogTerm = lastLogTerm(status.termHistory, status.flushLsn)
    const mine = timeline.positions.get()
    if (pickDonors(mine, [{ ...donor, lastLogTerm: donorLastLogTerm, flushLsn: status.flushLsn }]).length === 0) return
    // A compute may have come while we probed: it has the say, not us.
    if (!recoveryAllowed(timeline)) return

    // Step 2: vote for the donor's term locally (our term never goes down: skip if above).
    const generation = timeline.persisted.mconf.generation
    const vote = yield* uninterruptible(timeline.handle({ _tag: "VoteRequest", generation, term: donorTerm }))
    if (vote?._tag !== "VoteResponse" || vote.term !== donorTerm) {
      yield* logInfo("peer recovery skipped", { donor: donor.safekeeperId, reason: "our term is above the donor's", term: donorTerm })
      return
    }
    const start = recoveryStartPoint(status.termHistory, timeline.acceptor.termHistory(), timeline.acceptor.flushLsn())
    if (start === undefined) return
    yield* uninterruptible(timeline.handle({
      _tag: "ProposerElected",
      generation,
      term: donorTerm,
      startStreamingAt: start.lsn,
      termHistory: status.termHistory
    }))

    // Steps 3 and 4: stream and append until a stop condition.
    yield* logInfo("peer recovery started", { donor: donor.safekeeperId, start_lsn: formatLsn(start.lsn), term: donorTerm })
    const end = yield* streamFromDonor(timeline, options, donor, donorTerm, start.lsn, connectTimeoutUs).pipe(
      Effect.tapError((error) =>
        logInfo("peer recovery finished", { donor: donor.safekeeperId, flush_lsn: formatLsn(timeline.acceptor.flushLsn()), reason: `error: ${error._tag}` })
      )
    )
    yield* logInfo("peer recovery finished", { donor: donor.safekeeperId, flush_lsn: formatLsn(timeline.acceptor.flushLsn()), reason: end })
  })

/**
 * Neon's rule: no recovery while a compute streams to us (its proposer is the one to bring us
 * WAL; our own vote would only get in its way). A compute still voting does not count, as in
 * Neon's `get_num_streaming`.
 */
function recoveryAllowed(timeline: Timeline): boolean {
  if (timeline.positions.get().stopped) return false
  return !timeline.walReceivers().some((receiver) => receiver.status === "Streaming")
}

/** donor[0] among the fresh infos of this timeline's peers, against our position now. */
const currentDonor = (timeline: Timeline, options: PeerRecoveryOptions) =>
  Effect.map(options.peers, (peers) => {
    // Our own info is in the broker's list too; after a truncation it may show more than we
    // hold now, and we must never pick ourselves.
    const others = peers.filter((peer) =>
      peer.safekeeperId !== options.nodeId && peer.tenantId === timeline.key.tenantId && peer.timelineId === timeline.key.timelineId
    )
    return pickDonors(timeline.positions.get(), others)[0]
  })

const connectOptions = (timeline: Timeline, nodeId: NodeId): PgConnectOptions => ({
  user: peerRecoveryApplicationName(nodeId),
  database: "replication",
  replication: "true",
  applicationName: peerRecoveryApplicationName(nodeId),
  options: `-c timeline_id=${timeline.key.timelineId} tenant_id=${timeline.key.tenantId}`
})

/** Connects and starts a CopyBoth within the connect timeout; the client is closed on any failure. */
const openCopy = (address: string, connect: PgConnectOptions, query: string, timeoutUs: number) =>
  Effect.gen(function* () {
    const opened = yield* Effect.gen(function* () {
      const client = yield* connectPg(address, connect)
      const copy = yield* Effect.onError(client.startCopyBoth(query), () => client.close)
      return { client, copy }
    }).pipe(Effect.timeoutOption(Duration.micros(BigInt(timeoutUs))))
    if (Option.isNone(opened)) {
      return yield* new RecoveryError({ reason: "ConnectTimeout", message: `no ${query.split(" ")[0]} with ${address} within ${timeoutUs / US_PER_SECOND} s` })
    }
    return opened.value
  })

/** The donor's term, flush_lsn and term history, from a VoteRequest for its own term (see the top). */
const probeDonor = (timeline: Timeline, donor: SafekeeperTimelineInfo, timeoutUs: number): Effect.Effect<VoteResponse, RecoveryFailure, Net | Log> =>
  Effect.gen(function* () {
    const persisted = timeline.persisted
    const { client, copy } = yield* openCopy(
      donor.safekeeperConnstr,
      connectOptions(timeline, timeline.nodeId),
      // Never create the timeline on the donor: one without it has nothing for us.
      "START_WAL_PUSH (proto_version '3', allow_timeline_creation 'false')",
      timeoutUs
    )
    return yield* Effect.ensuring(
      Effect.gen(function* () {
        const send = (message: ProposerMessage) => copy.writeCopyData(encodeProposerMessage(message))
        yield* send({
          _tag: "ProposerGreeting",
          tenantId: timeline.key.tenantId,
          timelineId: timeline.key.timelineId,
          mconf: persisted.mconf,
          pgVersion: persisted.server.pgVersion,
          // 0, as sync-safekeepers sends: the probe must not teach the donor a system id.
          systemId: 0n,
          walSegSizeBytes: persisted.server.walSegSizeBytes
        })
        yield* send({ _tag: "VoteRequest", generation: persisted.mconf.generation, term: Term(donor.term) })
        for (let i = 0; i < PROBE_REPLY_COUNT_MAX; i++) {
          const reply = yield* readAcceptorMessage(copy, donor.safekeeperConnstr)
          if (reply._tag === "VoteResponse") {
            // Equal term: the donor cannot have voted. Anything else is a donor breaking §5.
            if (reply.voteGiven && reply.term === donor.term) {
              yield* logWarn("peer recovery probe got a vote", { donor: donor.safekeeperId, term: reply.term })
            }
            return reply
          }
        }
        return yield* new RecoveryError({ reason: "Probe", message: `${donor.safekeeperConnstr} sent no VoteResponse` })
      }).pipe(Effect.timeoutOption(Duration.micros(BigInt(timeoutUs))), Effect.flatMap((reply) =>
        Option.isSome(reply)
          ? Effect.succeed(reply.value)
          : Effect.fail(new RecoveryError({ reason: "Probe", message: `no VoteResponse from ${donor.safekeeperConnstr} within ${timeoutUs / US_PER_SECOND} s` }))
      )),
      client.close
    )
  })

const readAcceptorMessage = (copy: CopyBoth, address: string): Effect.Effect<AcceptorMessage, RecoveryFailure> =>
  Effect.gen(function* () {
    const payload = yield* copy.readCopyData
    if (payload === undefined) return yield* new RecoveryError({ reason: "Probe", message: `${address} ended the push before its VoteResponse` })
    const decoded = decodeAcceptorMessage(payload)
    if (Result.isFailure(decoded)) return yield* new RecoveryError({ reason: "Malformed", message: `${address}: ${decoded.failure.message}` })
    return decoded.success
  })

/** Streams the donor's WAL of term T from `startLsn` into our acceptor until a stop condition. */
const streamFromDonor = (
  timeline: Timeline,
  options: PeerRecoveryOptions,
  donor: SafekeeperTimelineInfo,
  term: Term,
  startLsn: Lsn,
  connectTimeoutUs: number
): Effect.Effect<RecoveryEnd, RecoveryFailure, Net | Disk> =>
  Effect.gen(function* () {
    const silenceTimeoutUs = options.silenceTimeoutUs ?? PEER_RECOVERY_SILENCE_TIMEOUT_US_DEFAULT
    const { client, copy } = yield* openCopy(
      donor.safekeeperConnstr,
      connectOptions(timeline, options.nodeId),
      `START_REPLICATION PHYSICAL ${formatLsn(startLsn)} (term='${term}')`,
      connectTimeoutUs
    )
    return yield* Effect.ensuring(receive(timeline, options, copy, term, silenceTimeoutUs), client.close)
  })

const receive = (timeline: Timeline, options: PeerRecoveryOptions, copy: CopyBoth, term: Term, silenceTimeoutUs: number) =>
  Effect.gen(function* () {
    const generation = timeline.persisted.mconf.generation
    let unflushedBytes = 0
    let lastFlushUs = yield* monotonicUs
    const flush = Effect.gen(function* () {
      if (unflushedBytes === 0) return
      yield* uninterruptible(timeline.flush)
      yield* timeline.persistInMemoryIf("SegmentAhead")
      unflushedBytes = 0
      lastFlushUs = yield* monotonicUs
    })
    const ended = (end: RecoveryEnd) => Effect.as(flush, end)

    while (true) {
      const positions = timeline.positions.get()
      if (positions.stopped) return "timeline stopped" as const
      if (positions.term !== term) return yield* ended("term changed")
      // A term change ends the stream at once, not at the donor's next message (which a
      // partitioned donor may never send): the connection is closed after it anyway.
      const termChanged = Effect.as(timeline.positions.waitUntil((p) => p.term !== term || p.stopped), "term changed" as const)
      const next = yield* Effect.raceFirst(copy.readCopyData, termChanged).pipe(Effect.timeoutOption(Duration.micros(BigInt(silenceTimeoutUs))))
      if (Option.isNone(next)) return yield* ended("silence")
      const payload = next.value
      if (payload === "term changed") continue
      if (payload === undefined) return yield* ended("donor ended")
      const decoded = decodeWalSenderMessage(payload)
      if (Result.isFailure(decoded)) return yield* new RecoveryError({ reason: "Malformed", message: decoded.failure.message })
      const message = decoded.success
      if (message._tag === "PrimaryKeepalive") {
        // The donor has nothing new for now: make what we have durable, then see whether it
        // is still ahead of us (Neon stops here once it is not).
        yield* flush
        if (message.replyRequested) {
          const flushLsn = timeline.acceptor.flushLsn()
          yield* copy.writeCopyData(encodeStandbyStatusUpdate({
            writeLsn: flushLsn,
            flushLsn,
            applyLsn: Lsn(0),
            sendTimeUs: pgTimestampUs(yield* nowUs),
            replyRequested: false
          }))
        }
        const donor = yield* currentDonor(timeline, options)
        if (donor === undefined) return "caught up" as const
        continue
      }
      if (timeline.positions.get().term !== term) return yield* ended("term changed")
      // The walsender sends at most MAX_SEND_SIZE per frame; a larger one is still cut to the
      // AppendRequest bound rather than trusted.
      for (let offset = 0; offset < message.data.byteLength; offset += MAX_SEND_SIZE_BYTES) {
        const walData = message.data.subarray(offset, Math.min(offset + MAX_SEND_SIZE_BYTES, message.data.byteLength))
        const beginLsn = Lsn(message.dataStartLsn + offset)
        const request: AppendRequest = {
          _tag: "AppendRequest",
          generation,
          term,
          beginLsn,
          endLsn: Lsn(beginLsn + walData.byteLength),
          commitLsn: Lsn(0),
          truncateLsn: Lsn(0),
          walData
        }
        yield* uninterruptible(timeline.appendNoFlush(request))
        unflushedBytes += walData.byteLength
      }
      if (unflushedBytes >= RECOVERY_UNFLUSHED_BYTES_MAX || (yield* monotonicUs) - lastFlushUs >= RECOVERY_FLUSH_INTERVAL_US) yield* flush
    }
  })

/** A durable acceptor step runs to its end even if recovery is interrupted meanwhile. */
const uninterruptible = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.uninterruptible(effect)
