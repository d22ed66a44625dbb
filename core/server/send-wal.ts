import { Effect, Fiber, Result, Schema } from "effect"
import type { Term } from "../acceptor/state.js"
import { assert } from "../assert.js"
import { nowUs, US_PER_SECOND } from "../io/clock.js"
import type { Disk, DiskError } from "../io/disk.js"
import { type Log, logInfo } from "../io/log.js"
import { MAX_SEND_SIZE_BYTES } from "../protocol/consensus.js"
import {
  decodeStandbyMessage,
  encodeKeepalive,
  pgTimestampUs,
  XLOG_DATA_FRAME_HEADER_BYTES,
  writeXLogDataFrameHeader
} from "../protocol/replication.js"
import type { Timeline, TimelinePositions, UnevictFailure, WalReadFailure, WalSenderKind, WalSenderState } from "../timeline/timeline.js"
import { Watch } from "../timeline/watch.js"
import { formatLsn, Lsn, segmentNoOf, segmentStartLsn, XLOG_BLCKSZ_BYTES } from "../wal/lsn.js"
import { READ_HEADROOM_BYTES_MAX } from "../wal/segment-store.js"
import type { ChannelError, CopyChannel } from "./copy-channel.js"

/**
 * The WAL sender of one START_REPLICATION connection (Neon's `send_wal.rs`, reference §9;
 * seed 000 is its ancestor). It streams XLogData chunks of at most MAX_SEND_SIZE that never
 * cross a segment, up to commit_lsn, or, in term mode (`(term='N')`, used by peers and the
 * walproposer to fetch uncommitted WAL), up to flush_lsn while the acceptor's term stays N. It waits on the timeline's watched positions instead of polling, sends
 * a keepalive after a second without WAL and whenever the client asks for a reply, and records
 * the client's feedback ('r', 'h', 'z') on its sender entry.
 *
 * Throughput (bench/service.ts, send). Each chunk is one allocation: the segment store reads the
 * WAL straight into the frame, after room for its headers. While a frame is being written (a
 * 128 KiB write waits for the socket to drain), the next chunk is already being read: at most
 * one chunk is read ahead, cut by the same rules against the end of WAL known when it was
 * started, and its bytes are sent only after the same term check as any other.
 */
export const KEEPALIVE_INTERVAL_US = 1 * US_PER_SECOND
/** Chunks read ahead of the frame being written (each at most MAX_SEND_SIZE_BYTES). */
export const SEND_READ_AHEAD_CHUNK_COUNT_MAX = 1
assert(MAX_SEND_SIZE_BYTES % XLOG_BLCKSZ_BYTES === 0, "a send chunk is whole pages")
assert(XLOG_DATA_FRAME_HEADER_BYTES <= READ_HEADROOM_BYTES_MAX, "the store leaves room for a frame's headers")

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

export type SendFailure = ChannelError | SendError | WalReadFailure | UnevictFailure

export const sendWal = (channel: CopyChannel, timeline: Timeline, options: SendOptions): Effect.Effect<SendEnd, SendFailure, Disk | Log> =>
  Effect.gen(function* () {
    const sender = timeline.registerSender({ applicationName: options.applicationName, kind: options.kind, startLsn: options.startLsn })
    // A residence guard: an evicted timeline is brought back (on-demand download) and stays.
    return yield* Effect.ensuring(timeline.withResidence(stream(channel, timeline, sender, options)), Effect.sync(() => timeline.unregisterSender(sender.id)))
  })

const stream = (channel: CopyChannel, timeline: Timeline, sender: WalSenderState, options: SendOptions) =>
  Effect.gen(function* () {
    // The reader sets these; the send loop reads them between chunks.
    const control: ClientControl = { ended: undefined, replyRequested: false, events: Watch.make(0) }
    const reader = yield* Effect.forkChild(readFeedback(channel, timeline, sender, control))
    let position: number = options.startLsn
    yield* logInfo("walsender started", {
      timeline: `${timeline.key.tenantId}/${timeline.key.timelineId}`,
      application_name: options.applicationName,
      start_lsn: formatLsn(position),
      term: options.term
    })
    // Chunks from `position` on, consecutive, read while earlier frames were written.
    const ahead: Array<Reading> = []
    const result = yield* Effect.result(Effect.gen(function* () {
      while (true) {
        if (control.ended !== undefined) return control.ended
        const positions = timeline.positions.get()
        if (positions.stopped) return yield* new SendError({ reason: "Stopped", code: "XX000", message: "timeline stopped after a storage failure" })
        if (options.term !== undefined && positions.term !== options.term) return "TermChanged" as const
        const end = endOf(positions, options.term)
        if (ahead.length === 0 && end <= position) {
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
        const reading = ahead.shift()
        const chunk = reading === undefined
          ? yield* readChunk(timeline, position, chunkEndOf(position, end, timeline.segmentSizeBytes), end)
          : yield* Fiber.join(reading.fiber)
        assert(chunk.startLsn === position, "the chunk read is the one at the send position")
        const dataBytes = chunk.frame.byteLength - XLOG_DATA_FRAME_HEADER_BYTES
        if (chunk.startLsn + dataBytes !== chunk.plannedEndLsn) {
          // Storage held less than planned (a truncation under way): what was read after it
          // starts in the wrong place.
          yield* interruptAll(ahead)
        }
        if (dataBytes === 0) {
          // Storage holds less than flush_lsn says only while a truncation is under way.
          yield* timeline.positions.nextChange.pipe(Effect.timeoutOption(`${KEEPALIVE_INTERVAL_US / 1000} millis`))
          continue
        }
        // Term mode: the bytes are ours only if the term still holds after the read.
        if (options.term !== undefined && timeline.positions.get().term !== options.term) return "TermChanged" as const
        const nextPosition = position + dataBytes
        // Read the next chunks while this frame goes out. A term change meanwhile is caught by
        // the check above before their bytes are sent.
        const nextEnd = endOf(timeline.positions.get(), options.term)
        let plannedLsn = ahead.at(-1)?.plannedEndLsn ?? nextPosition
        // One pass per chunk started: at most SEND_READ_AHEAD_CHUNK_COUNT_MAX.
        while (ahead.length < SEND_READ_AHEAD_CHUNK_COUNT_MAX && nextEnd > plannedLsn) {
          const plannedEndLsn = chunkEndOf(plannedLsn, nextEnd, timeline.segmentSizeBytes)
          ahead.push({ plannedEndLsn, fiber: yield* Effect.forkChild(readChunk(timeline, plannedLsn, plannedEndLsn, nextEnd)) })
          plannedLsn = plannedEndLsn
        }
        const sendTimeUs = pgTimestampUs(yield* nowUs)
        writeXLogDataFrameHeader(chunk.frame, { dataStartLsn: Lsn(position), walEndLsn: Lsn(chunk.walEndLsn), sendTimeUs })
        yield* channel.sendFrame(chunk.frame)
        position = nextPosition
        sender.sentLsn = Lsn(position)
        if (control.replyRequested) {
          control.replyRequested = false
          yield* sendKeepalive(channel, chunk.walEndLsn)
        }
      }
    }))
    yield* interruptAll(ahead)
    yield* Fiber.interrupt(reader)
    if (Result.isFailure(result)) return yield* result.failure
    return result.success
  })

function endOf(positions: TimelinePositions, term: Term | undefined): number {
  return term === undefined ? positions.commitLsn : positions.flushLsn
}

/** Where the chunk from `position` ends: up to 128 KiB, whole pages unless it reaches `end`, never across a segment. */
export function chunkEndOf(position: number, end: number, segmentBytes: number): number {
  assert(end > position, "a chunk holds WAL")
  let chunkEnd = Math.min(position + MAX_SEND_SIZE_BYTES, end)
  if (chunkEnd < end) chunkEnd -= chunkEnd % XLOG_BLCKSZ_BYTES
  if (chunkEnd <= position) chunkEnd = Math.min(position + MAX_SEND_SIZE_BYTES, end)
  const segmentEnd = segmentStartLsn(segmentNoOf(position, segmentBytes) + 1, segmentBytes)
  if (chunkEnd > segmentEnd) chunkEnd = segmentEnd
  return chunkEnd
}

/** One XLogData frame in the making: its WAL is in place, its headers are written when it is sent. */
interface Chunk {
  readonly startLsn: number
  /** Where it ends if storage holds all of it (chunkEndOf). */
  readonly plannedEndLsn: number
  /** The end of WAL the chunk was cut against: the frame's walEnd. */
  readonly walEndLsn: number
  /** XLOG_DATA_FRAME_HEADER_BYTES of room, then the WAL (none when storage holds less). */
  readonly frame: Uint8Array
}

/** The chunk [startLsn, plannedEndLsn) (chunkEndOf against `walEndLsn`), or what storage holds of it. */
const readChunk = (timeline: Timeline, startLsn: number, plannedEndLsn: number, walEndLsn: number): Effect.Effect<Chunk, WalReadFailure, Log> =>
  Effect.map(readFrame(timeline, startLsn, plannedEndLsn - startLsn), (frame) => ({ startLsn, plannedEndLsn, walEndLsn, frame }))

/** A chunk being read ahead. */
interface Reading {
  readonly plannedEndLsn: number
  readonly fiber: Fiber.Fiber<Chunk, WalReadFailure>
}

const interruptAll = (readings: Array<Reading>): Effect.Effect<void> =>
  Effect.forEach(readings.splice(0), (reading) => Fiber.interrupt(reading.fiber), { discard: true })

/**
 * The WAL [position, position + length) after room for the frame's headers, in one buffer. The
 * segment store reads it in place; any other storage is copied (tests with storage in memory).
 */
function readFrame(timeline: Timeline, position: number, length: number): Effect.Effect<Uint8Array, WalReadFailure, Log> {
  return timeline.readWithHeadroom(Lsn(position), length, XLOG_DATA_FRAME_HEADER_BYTES)
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
