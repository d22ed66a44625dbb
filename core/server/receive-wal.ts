import { type Cause, Effect, Fiber, Option, Queue, Result, Schema } from "effect"
import type { AcceptorFailure } from "../acceptor/acceptor.js"
import type { Disk } from "../io/disk.js"
import { monotonicUs, US_PER_SECOND } from "../io/clock.js"
import { type Log, logInfo } from "../io/log.js"
import {
  type AcceptorMessage,
  type AppendResponse,
  decodeProposerMessage,
  encodeAcceptorMessage,
  MalformedMessage,
  type ProposerGreeting,
  type ProposerMessage
} from "../protocol/consensus.js"
import type { PageserverFeedback } from "../protocol/pageserver-feedback.js"
import type { Timeline, UnevictFailure } from "../timeline/timeline.js"
import type { TimelineOpenFailure } from "../timeline/registry.js"
import type { ChannelError, CopyChannel } from "./copy-channel.js"

/**
 * The WAL receive pipeline of one START_WAL_PUSH connection (Neon's `receive_wal.rs`,
 * reference §8). A reader fiber decodes CopyData into proposer messages and feeds a bounded
 * queue; the acceptor loop drains it, writing appends without fsync while more input waits,
 * and issues one fsync and one AppendResponse when the queue runs dry or a second has passed
 * since the last flush, and once more when the connection ends (neon#9259: a VoteResponse
 * elsewhere reports a flushed LSN, so unflushed appends at disconnect must not linger).
 * Replies go through a bounded queue to a writer fiber, which also re-sends the last
 * AppendResponse with the pageserver's feedback whenever new feedback arrives.
 */
export const MSG_QUEUE_LENGTH_MAX = 256
export const REPLY_QUEUE_LENGTH_MAX = 16
export const FLUSH_INTERVAL_US = 1 * US_PER_SECOND

export class PushError extends Schema.TaggedError<PushError>()("PushError", {
  reason: Schema.Literals(["FirstMessageNotGreeting", "Malformed", "ConnectionEnded"]),
  message: Schema.String
}) {}

export type PushFailure = PushError | MalformedMessage | AcceptorFailure | ChannelError | TimelineOpenFailure | UnevictFailure

export interface PushOptions {
  /** Looks up or creates the timeline named by the greeting (creation as START_WAL_PUSH allows). */
  readonly timelineFor: (greeting: ProposerGreeting) => Effect.Effect<Timeline, TimelineOpenFailure, Disk | Log>
}

type Inbound =
  | { readonly _tag: "Message"; readonly message: ProposerMessage }
  /** The connection ended; `error` when it ended with bad input the client should hear about. */
  | { readonly _tag: "End"; readonly reason: string; readonly error?: MalformedMessage | ChannelError }
type Outbound =
  | { readonly _tag: "Reply"; readonly message: AcceptorMessage }
  | { readonly _tag: "Feedback"; readonly feedback: PageserverFeedback | undefined }

export const receiveWal = (channel: CopyChannel, options: PushOptions): Effect.Effect<void, PushFailure, Disk | Log> =>
  Effect.gen(function* () {
    const first = yield* channel.receive
    if (first._tag !== "Data") return yield* new PushError({ reason: "ConnectionEnded", message: "push ended before the greeting" })
    const greeting = yield* Effect.fromResult(decodeProposerMessage(first.payload))
    if (greeting._tag !== "ProposerGreeting") {
      return yield* new PushError({ reason: "FirstMessageNotGreeting", message: `first push message is ${greeting._tag}, not a ProposerGreeting` })
    }
    const timeline = yield* options.timelineFor(greeting)
    const receiver = timeline.registerReceiver()
    yield* Effect.ensuring(
      // A residence guard: an evicted timeline comes back before the first message, and stays.
      timeline.withResidence(pipeline(channel, timeline, greeting, receiver)),
      Effect.sync(() => timeline.unregisterReceiver(receiver.id))
    )
  })

const pipeline = (channel: CopyChannel, timeline: Timeline, greeting: ProposerGreeting, receiver: { status: "Voting" | "Streaming" }) =>
  Effect.gen(function* () {
    const inbox = yield* Queue.bounded<Inbound>(MSG_QUEUE_LENGTH_MAX)
    const outbox = yield* Queue.bounded<Outbound, Cause.Done>(REPLY_QUEUE_LENGTH_MAX)
    const greetingReply = yield* uninterruptible(timeline.handle(greeting))
    if (greetingReply !== undefined) yield* Queue.offer(outbox, { _tag: "Reply", message: greetingReply })

    const reader = yield* Effect.forkChild(readInbound(channel, inbox))
    const writer = yield* Effect.forkChild(writeOutbound(channel, outbox))
    const feedback = yield* Effect.forkChild(watchFeedback(timeline, outbox))

    let dirty = false
    let lastFlushUs = yield* monotonicUs
    const flush = Effect.gen(function* () {
      const reply = yield* uninterruptible(timeline.flush)
      yield* timeline.persistInMemoryIf("SegmentAhead")
      dirty = false
      lastFlushUs = yield* monotonicUs
      yield* Queue.offer(outbox, { _tag: "Reply", message: reply })
    })

    const result = yield* Effect.result(Effect.gen(function* () {
      while (true) {
        // Wait for input, but never sit on unflushed WAL past the flush interval.
        let next: Inbound | undefined = Option.getOrUndefined(yield* Queue.poll(inbox))
        if (next === undefined) {
          if (dirty) yield* flush
          next = yield* Queue.take(inbox)
        }
        if (next._tag === "End") {
          if (dirty) yield* flush
          if (next.error !== undefined) return yield* Effect.fail(next.error)
          return next.reason
        }
        const message = next.message
        let reply: AcceptorMessage | undefined
        if (message._tag === "AppendRequest") {
          reply = yield* uninterruptible(timeline.appendNoFlush(message))
          dirty = true
        } else {
          if (message._tag === "ProposerGreeting") {
            return yield* new PushError({ reason: "Malformed", message: "a second ProposerGreeting on one push connection" })
          }
          reply = yield* uninterruptible(timeline.handle(message))
          // A vote flushes WAL itself.
          if (message._tag === "VoteRequest") dirty = false
          if (message._tag === "ProposerElected") receiver.status = "Streaming"
        }
        if (reply !== undefined) yield* Queue.offer(outbox, { _tag: "Reply", message: reply })
        if (dirty && (yield* monotonicUs) - lastFlushUs >= FLUSH_INTERVAL_US) yield* flush
      }
    }))
    yield* Fiber.interrupt(feedback)
    yield* Fiber.interrupt(reader)
    yield* timeline.persistInMemoryIf("Always").pipe(Effect.ignore)
    // Let the writer send what is queued (the final flush's reply), then stop it.
    yield* Queue.end(outbox)
    yield* Fiber.join(writer).pipe(Effect.ignore)
    if (Result.isFailure(result)) return yield* result.failure
    yield* logInfo("push ended", { timeline: `${timeline.key.tenantId}/${timeline.key.timelineId}`, reason: result.success })
  })

/** CopyData → proposer messages; a malformed one ends the connection (its error goes in the queue). */
const readInbound = (channel: CopyChannel, inbox: Queue.Queue<Inbound>) =>
  Effect.gen(function* () {
    while (true) {
      const input = yield* Effect.result(channel.receive)
      if (Result.isFailure(input)) return yield* Queue.offer(inbox, { _tag: "End", reason: `connection: ${input.failure.message}`, error: input.failure })
      const copy = input.success
      if (copy._tag === "Done") return yield* Queue.offer(inbox, { _tag: "End", reason: "client sent CopyDone" })
      if (copy._tag === "Gone") return yield* Queue.offer(inbox, { _tag: "End", reason: copy.reason })
      const decoded = decodeProposerMessage(copy.payload)
      if (Result.isFailure(decoded)) return yield* Queue.offer(inbox, { _tag: "End", reason: decoded.failure.message, error: decoded.failure })
      yield* Queue.offer(inbox, { _tag: "Message", message: decoded.success })
    }
  })

const writeOutbound = (channel: CopyChannel, outbox: Queue.Dequeue<Outbound, Cause.Done>) =>
  Effect.gen(function* () {
    let lastAppendResponse: AppendResponse | undefined
    while (true) {
      const item = yield* Queue.take(outbox).pipe(Effect.catch(() => Effect.succeed(undefined)))
      if (item === undefined) return
      if (item._tag === "Reply") {
        if (item.message._tag === "AppendResponse") lastAppendResponse = item.message
        yield* channel.send(encodeAcceptorMessage(item.message))
      } else if (lastAppendResponse !== undefined && item.feedback !== undefined) {
        yield* channel.send(encodeAcceptorMessage({ ...lastAppendResponse, pageserverFeedback: item.feedback }))
      }
    }
  })

const watchFeedback = (timeline: Timeline, outbox: Queue.Queue<Outbound, Cause.Done>) =>
  Effect.gen(function* () {
    let seen = timeline.pageserverFeedback.get().sequence
    while (true) {
      const broadcast = yield* timeline.pageserverFeedback.waitUntil((b) => b.sequence !== seen)
      seen = broadcast.sequence
      yield* Queue.offer(outbox, { _tag: "Feedback", feedback: broadcast.feedback })
    }
  })

/** A durable step runs to its end even when the connection is being torn down. */
function uninterruptible<A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> {
  return Effect.uninterruptible(effect)
}
