import { Effect, Fiber, Result, Schema } from "effect"
import { nowUs, sleepUs, US_PER_MS } from "../../core/io/clock.js"
import { Net } from "../../core/io/net.js"
import type { PageserverFeedback } from "../../core/protocol/pageserver-feedback.js"
import { connectPg, type CopyBoth, type PgConnectOptions } from "../../core/protocol/pg-client.js"
import { decodeWalSenderMessage, encodeNeonFeedback, pgTimestampUs } from "../../core/protocol/replication.js"
import { formatLsn, Lsn, parseLsn } from "../../core/wal/lsn.js"
import { makeLiveNet } from "../net.js"

/**
 * A pageserver stand-in for live tests: what WAL removal and eviction need from a pageserver,
 * and nothing else. It streams one timeline's committed WAL from every safekeeper at once
 * (`START_REPLICATION PHYSICAL <lsn>`, application_name `pageserver`, as Neon's walreceiver
 * does) and reports Neon's 'z' feedback with remote_consistent_lsn = what it received from that
 * safekeeper, as if every byte were uploaded at once. Each safekeeper gets its own stream, so
 * each learns the LSN directly rather than through the broker. A stream that ends (the
 * safekeeper ends an idle one once the pageserver has caught up, or the process was killed) is
 * opened again from where it stopped, but only once TIMELINE_STATUS shows committed WAL past
 * it: Neon's pageserver connects when the broker says commit_lsn moved, and a stream holds the
 * timeline resident, so reconnecting blindly would un-evict an idle timeline again and again.
 */
export interface PageserverStandinOptions {
  readonly tenantId: string
  readonly timelineId: string
  /** The safekeepers' pg addresses (host:port). */
  readonly safekeepers: ReadonlyArray<string>
  /** Where each stream starts: the timeline's first LSN (the start of its first segment). */
  readonly startLsn: number
  /** Feedback is sent at least this often while a stream is open (default 250 ms). */
  readonly feedbackIntervalMs?: number
  /** Pause before a stream is opened again (default 300 ms). */
  readonly reconnectDelayMs?: number
}

export class StandinStreamError extends Schema.TaggedError<StandinStreamError>()("StandinStreamError", {
  reason: Schema.Literals(["NonContiguous", "Malformed"]),
  message: Schema.String
}) {}

/** What the stand-in knows about one safekeeper. */
export interface StandinSafekeeperState {
  readonly address: string
  /** End of the contiguous WAL received from it (also the reported remote_consistent_lsn). */
  receivedLsn: number
  /** remote_consistent_lsn in the last feedback that reached the socket. */
  reportedLsn: number
  /** Streams opened so far. */
  streamCount: number
  /** commit_lsn in the last TIMELINE_STATUS answer. */
  commitLsn: number
  /** The last way a stream ended (for failure messages). */
  lastEnd: string
}

const FEEDBACK_INTERVAL_MS_DEFAULT = 250
const RECONNECT_DELAY_MS_DEFAULT = 300

export class PageserverStandin {
  readonly states: ReadonlyArray<StandinSafekeeperState>
  private readonly fibers: Array<Fiber.Fiber<void>>

  private constructor(states: ReadonlyArray<StandinSafekeeperState>, fibers: Array<Fiber.Fiber<void>>) {
    this.states = states
    this.fibers = fibers
  }

  static start(options: PageserverStandinOptions): PageserverStandin {
    const net = makeLiveNet({ connectTimeoutMs: 2_000 })
    const states = options.safekeepers.map((address): StandinSafekeeperState => ({ address, receivedLsn: options.startLsn, reportedLsn: 0, streamCount: 0, commitLsn: 0, lastEnd: "not started" }))
    const fibers = states.map((state) => Effect.runFork(Effect.provideService(streamForever(options, state), Net, net)))
    return new PageserverStandin(states, fibers)
  }

  state(address: string): StandinSafekeeperState {
    const state = this.states.find((s) => s.address === address)
    if (state === undefined) throw new Error(`the stand-in does not stream from ${address}`)
    return state
  }

  /** Interrupts every stream (their connections close) and waits until they are gone. */
  async stop(): Promise<void> {
    await Effect.runPromise(Effect.forEach(this.fibers.splice(0), (fiber) => Fiber.interrupt(fiber), { discard: true }))
  }

  describe(): string {
    return this.states.map((s) => `${s.address}: commit ${formatLsn(s.commitLsn)}, received ${formatLsn(s.receivedLsn)}, reported ${formatLsn(s.reportedLsn)}, ${s.streamCount} streams, last end: ${s.lastEnd}`).join("; ")
  }
}

const streamForever = (options: PageserverStandinOptions, state: StandinSafekeeperState): Effect.Effect<void, never, Net> =>
  Effect.gen(function* () {
    const connectOptions: PgConnectOptions = {
      user: "pageserver",
      database: "replication",
      replication: "true",
      applicationName: "pageserver",
      options: `-c timeline_id=${options.timelineId} tenant_id=${options.tenantId}`
    }
    // Ended only by interruption (stop).
    for (;;) {
      const status = yield* Effect.result(commitOf(state.address, connectOptions))
      if (Result.isSuccess(status) && status.success !== undefined) state.commitLsn = status.success
      if (Result.isFailure(status) || status.success === undefined || status.success <= state.receivedLsn) {
        if (Result.isFailure(status)) state.lastEnd = `TIMELINE_STATUS: ${status.failure._tag}: ${status.failure.message}`
        yield* sleepUs((options.reconnectDelayMs ?? RECONNECT_DELAY_MS_DEFAULT) * US_PER_MS)
        continue
      }
      const outcome = yield* Effect.result(Effect.scoped(streamOnce(options, state, connectOptions)))
      state.lastEnd = Result.isFailure(outcome) ? `${outcome.failure._tag}: ${outcome.failure.message}` : "the safekeeper ended the stream"
      yield* sleepUs((options.reconnectDelayMs ?? RECONNECT_DELAY_MS_DEFAULT) * US_PER_MS)
    }
  })

/** The safekeeper's commit_lsn (TIMELINE_STATUS, which does not make an evicted timeline resident); undefined when it has no such timeline. */
const commitOf = (address: string, connectOptions: PgConnectOptions) =>
  Effect.scoped(Effect.gen(function* () {
    const client = yield* Effect.acquireRelease(connectPg(address, connectOptions), (c) => c.terminate)
    const row = (yield* client.simpleQuery("TIMELINE_STATUS")).rows[0]
    const commit = row?.[1]
    if (commit === undefined || commit === null) return undefined
    const parsed = parseLsn(commit)
    return Result.isSuccess(parsed) ? parsed.success : undefined
  }))

const streamOnce = (options: PageserverStandinOptions, state: StandinSafekeeperState, connectOptions: PgConnectOptions) =>
  Effect.gen(function* () {
    const client = yield* Effect.acquireRelease(connectPg(state.address, connectOptions), (c) => c.close)
    const copy = yield* client.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(state.receivedLsn)}`)
    state.streamCount++
    const intervalUs = (options.feedbackIntervalMs ?? FEEDBACK_INTERVAL_MS_DEFAULT) * US_PER_MS
    yield* Effect.forkScoped(Effect.forever(Effect.andThen(sleepUs(intervalUs), sendFeedback(copy, state))))
    // Until the safekeeper ends the stream or it breaks.
    for (;;) {
      const payload = yield* copy.readCopyData
      if (payload === undefined) return
      const decoded = decodeWalSenderMessage(payload)
      if (Result.isFailure(decoded)) return yield* new StandinStreamError({ reason: "Malformed", message: decoded.failure.reason })
      const message = decoded.success
      if (message._tag === "XLogData") {
        if (message.data.byteLength === 0) continue
        if (message.dataStartLsn !== state.receivedLsn) {
          return yield* new StandinStreamError({ reason: "NonContiguous", message: `XLogData at ${formatLsn(message.dataStartLsn)}, expected ${formatLsn(state.receivedLsn)}` })
        }
        state.receivedLsn = message.dataStartLsn + message.data.byteLength
      } else if (message.replyRequested) {
        yield* sendFeedback(copy, state)
      }
    }
  })

const sendFeedback = (copy: CopyBoth, state: StandinSafekeeperState) =>
  Effect.gen(function* () {
    const lsn = state.receivedLsn
    const feedback: PageserverFeedback = {
      currentTimelineSizeBytes: 0,
      lastReceivedLsn: Lsn(lsn),
      diskConsistentLsn: Lsn(lsn),
      remoteConsistentLsn: Lsn(lsn),
      replyTimeUs: pgTimestampUs(yield* nowUs),
      shardNumber: 0,
      corruptionDetected: false
    }
    yield* copy.writeCopyData(encodeNeonFeedback(feedback))
    state.reportedLsn = lsn
  })
