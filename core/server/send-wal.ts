import { Effect, Fiber, Result, Schema } from "effect"
import type { Term } from "../acceptor/state.js"
import { assert } from "../assert.js"
import { nowUs, US_PER_SECOND } from "../io/clock.js"
import type { Disk, DiskError } from "../io/disk.js"
import type { WalStorageError } from "../acceptor/wal-storage.js"
import { type Log, logInfo } from "../io/log.js"
import { MAX_SEND_SIZE_BYTES } from "../protocol/consensus.js"
import {
  decodeStandbyMessage,
  encodeKeepalive,
  encodeXLogDataFrame,
  pgTimestampUs
} from "../protocol/replication.js"
import type { Timeline, TimelinePositions, WalSenderKind, WalSenderState } from "../timeline/timeline.js"
import { Watch } from "../timeline/watch.js"
import { formatLsn, Lsn, segmentNoOf, segmentStartLsn, XLOG_BLCKSZ_BYTES } from "../wal/lsn.js"
import type { ChannelError, CopyChannel } from "./copy-channel.js"

/**
 * The WAL sender of one START_REPLICATION connection (Neon's `send_wal.rs`, reference §9;
 * seed 000 is its ancestor). It streams XLogData chunks of at most MAX_SEND_SIZE that never
 * cross a segment, up to commit_lsn, or, in term mode (`(term='N')`, used by peers and the
 * walproposer to fetch uncommitted WAL), up to flush_lsn while the acceptor's term stays N. It waits on the timeline's watched positions instead of polling, sends
 * a keepalive after a second without WAL and whenever the client asks for a reply, and records
 * the client's feedback ('r', 'h', 'z') on its sender entry.
 */
export const KEEPALIVE_INTERVAL_US = 1 * US_PER_SECOND
assert(MAX_SEND_SIZE_BYTES % XLOG_BLCKSZ_BYTES === 0, "a send chunk is whole pages")

export class SendError extends Schema.TaggedError<SendError>()("SendError", {
  reason: Schema.Literals(["StartAhead", "StartBeforeTimeline", "TermChanged", "Malformed", "Stopped", "CaughtUp"]),
  /** SQLSTATE for the ErrorResponse. */
  code: Schema.String,
  message: Schema.String
}) {}

export interface SendOptions {
  readonly startLsn: Lsn
  /** Term mode: stream flushed (uncommitted) WAL while our term is this. */
  readonly term: Term | undefined
  readonly applicationName: string
  readonly kind: WalSenderKind
}

/** How a stream ended without error. */
export type SendEnd = "ClientDone" | "TermChanged" | "ClientGone"

/** Checks a start position before CopyBothResponse goes out, so refusals are plain errors. */
export function checkStart(timeline: Timeline, options: Pick<SendOptions, "startLsn" | "term">): SendError | undefined {
  const positions = timeline.positions.get()
  const persisted = timeline.persisted
  // Our term is N once we voted for N: from then on only term N's ProposerElected may truncate
  // our WAL, and never below our flush_lsn (its start point for us). So the stream may begin
  // before that Elected arrives (last_log_term still older), as Neon's walsender allows.
  if (options.term !== undefined && positions.term !== options.term) {
    return new SendError({
      reason: "TermChanged",
      code: "XX000",
      message: `requested term ${options.term}, but term is ${positions.term}`
    })
  }
  const end = endOf(positions, options.term)
  if (options.startLsn > end) {
    return new SendError({
      reason: "StartAhead",
      code: "XX000",
      message: `requested starting point ${formatLsn(options.startLsn)} is ahead of the WAL ${options.term === undefined ? "commit" : "flush"} position of this server ${formatLsn(end)}`
    })
  }
  // Below the timeline's first segment nothing exists; the first segment's headers do.
  const firstLsn = segmentStartLsn(segmentNoOf(persisted.timelineStartLsn, persisted.server.walSegSizeBytes), persisted.server.walSegSizeBytes)
  if (persisted.timelineStartLsn === 0 || options.startLsn < firstLsn || options.startLsn < segmentStartLsn(segmentNoOf(persisted.localStartLsn, persisted.server.walSegSizeBytes), persisted.server.walSegSizeBytes)) {
    return new SendError({
      reason: "StartBeforeTimeline",
      code: "58P01",
      message: `requested starting point ${formatLsn(options.startLsn)} is before the start of this timeline's WAL (${formatLsn(Math.max(firstLsn, persisted.localStartLsn))})`
    })
  }
  return undefined
}

export type SendFailure = ChannelError | SendError | WalStorageError | DiskError

export const sendWal = (channel: CopyChannel, timeline: Timeline, options: SendOptions): Effect.Effect<SendEnd, SendFailure, Disk | Log> =>
  Effect.gen(function* () {
    const sender = timeline.registerSender({ applicationName: options.applicationName, kind: options.kind, startLsn: options.startLsn })
    return yield* Effect.ensuring(stream(channel, timeline, sender, options), Effect.sync(() => timeline.unregisterSender(sender.id)))
  })

const stream = (channel: CopyChannel, timeline: Timeline, sender: WalSenderState, options: SendOptions) =>
  Effect.gen(function* () {
    // The reader sets these; the send loop reads them between chunks.
    const control: ClientControl = { ended: undefined, replyRequested: false, events: Watch.make(0) }
    const reader = yield* Effect.forkChild(readFeedback(channel, timeline, sender, control))
    const segmentBytes = timeline.segmentSizeBytes
    let position: number = options.startLsn
    yield* logInfo("walsender started", {
      timeline: `${timeline.key.tenantId}/${timeline.key.timelineId}`,
      application_name: options.applicationName,
      start_lsn: formatLsn(position),
      term: options.term
    })
    const result = yield* Effect.result(Effect.gen(function* () {
      while (true) {
        if (control.ended !== undefined) return control.ended
        const positions = timeline.positions.get()
        if (positions.stopped) return yield* new SendError({ reason: "Stopped", code: "XX000", message: "timeline stopped after a storage failure" })
        if (options.term !== undefined && positions.term !== options.term) return "TermChanged" as const
        const end = endOf(positions, options.term)
        if (end <= position) {
          if (control.replyRequested) {
            control.replyRequested = false
            yield* sendKeepalive(channel, end)
          }
          // Wait for WAL, a client request, or the keepalive interval, whichever is first.
          const walMoved = timeline.positions.waitUntil((p) => endOf(p, options.term) > position || p.term !== positions.term || p.stopped)
          const woke = yield* Effect.raceFirst(Effect.as(walMoved, "wal" as const), Effect.as(control.events.nextChange, "client" as const))
            .pipe(Effect.timeoutOption(`${KEEPALIVE_INTERVAL_US / 1000} millis`))
          if (woke._tag === "None") {
            // Neon ends an idle pageserver stream once the pageserver has everything committed
            // and no compute pushes: it reconnects when WAL comes (it matches "ending streaming").
            const now = timeline.positions.get()
            if (options.term === undefined && sender.pageserverFeedback !== undefined && timeline.walReceivers().length === 0 &&
              (now.commitLsn === 0 || now.remoteConsistentLsn >= now.commitLsn)) {
              return yield* new SendError({
                reason: "CaughtUp",
                code: "57P01",
                message: `ending streaming to ${options.applicationName}: receiver is caughtup and there is no computes`
              })
            }
            yield* sendKeepalive(channel, endOf(now, options.term))
          }
          continue
        }
        // Up to 128 KiB, whole pages unless it reaches the end, never across a segment.
        let chunkEnd = Math.min(position + MAX_SEND_SIZE_BYTES, end)
        if (chunkEnd < end) chunkEnd -= chunkEnd % XLOG_BLCKSZ_BYTES
        if (chunkEnd <= position) chunkEnd = Math.min(position + MAX_SEND_SIZE_BYTES, end)
        const segmentEnd = segmentStartLsn(segmentNoOf(position, segmentBytes) + 1, segmentBytes)
        if (chunkEnd > segmentEnd) chunkEnd = segmentEnd
        const data = yield* timeline.read(Lsn(position), chunkEnd - position)
        if (data.byteLength === 0) {
          // Storage holds less than flush_lsn says only while a truncation is under way.
          yield* timeline.positions.nextChange.pipe(Effect.timeoutOption(`${KEEPALIVE_INTERVAL_US / 1000} millis`))
          continue
        }
        // Term mode: the bytes are ours only if the term still holds after the read.
        if (options.term !== undefined && timeline.positions.get().term !== options.term) return "TermChanged" as const
        const sendTimeUs = pgTimestampUs(yield* nowUs)
        yield* channel.sendFrame(encodeXLogDataFrame({ dataStartLsn: Lsn(position), walEndLsn: Lsn(end), sendTimeUs, data }))
        position += data.byteLength
        sender.sentLsn = Lsn(position)
        if (control.replyRequested) {
          control.replyRequested = false
          yield* sendKeepalive(channel, end)
        }
      }
    }))
    yield* Fiber.interrupt(reader)
    if (Result.isFailure(result)) return yield* result.failure
    return result.success
  })

function endOf(positions: TimelinePositions, term: Term | undefined): number {
  return term === undefined ? positions.commitLsn : positions.flushLsn
}

/** What the feedback reader tells the send loop; `events` ticks on each such change. */
interface ClientControl {
  ended: SendEnd | undefined
  replyRequested: boolean
  readonly events: Watch<number>
}

const sendKeepalive = (channel: CopyChannel, walEndLsn: number) =>
  Effect.flatMap(nowUs, (now) => channel.send(encodeKeepalive({ walEndLsn: Lsn(walEndLsn), sendTimeUs: pgTimestampUs(now), replyRequested: true })))

/** The client's side of CopyBoth: feedback messages, CopyDone, or the end of the connection. */
const readFeedback = (
  channel: CopyChannel,
  timeline: Timeline,
  sender: WalSenderState,
  control: ClientControl
) =>
  Effect.gen(function* () {
    const poke = () => control.events.set(control.events.get() + 1)
    while (true) {
      const input = yield* Effect.result(channel.receive)
      if (Result.isFailure(input) || input.success._tag === "Gone") {
        control.ended = "ClientGone"
        return poke()
      }
      if (input.success._tag === "Done") {
        control.ended = "ClientDone"
        return poke()
      }
      const decoded = decodeStandbyMessage(input.success.payload)
      if (Result.isFailure(decoded)) {
        control.ended = "ClientGone"
        return poke()
      }
      const message = decoded.success
      switch (message._tag) {
        case "StandbyStatusUpdate":
          // Monotonic max: 0 means "not reported".
          if (message.writeLsn > sender.writeLsn) sender.writeLsn = message.writeLsn
          if (message.flushLsn > sender.flushLsn) sender.flushLsn = message.flushLsn
          if (message.applyLsn > sender.applyLsn) sender.applyLsn = message.applyLsn
          if (message.replyRequested) {
            control.replyRequested = true
            poke()
          }
          break
        case "HotStandbyFeedback":
          sender.hotStandby = { tsUs: message.sendTimeUs, xmin: message.xmin, catalogXmin: message.catalogXmin }
          break
        case "NeonFeedback":
          yield* Effect.uninterruptible(timeline.recordPageserverFeedback(sender, message.feedback)).pipe(Effect.ignore)
          break
      }
    }
  })
