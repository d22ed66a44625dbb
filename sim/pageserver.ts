import { Duration, Effect, Fiber, Result, Schema } from "effect"
import type { TenantId, TimelineId } from "../core/acceptor/state.js"
import { assert } from "../core/assert.js"
import { monotonicUs, nowUs, sleepUs, US_PER_SECOND } from "../core/io/clock.js"
import { Disk, type DiskError, joinPath, parentPath } from "../core/io/disk.js"
import { type Log, logDebug, logInfo } from "../core/io/log.js"
import type { Net } from "../core/io/net.js"
import { jitterUs, randomIntBetween } from "../core/io/random.js"
import type { PageserverFeedback } from "../core/protocol/pageserver-feedback.js"
import { connectPg, type CopyBoth, type PgClient, type PgConnectOptions } from "../core/protocol/pg-client.js"
import { decodeWalSenderMessage, encodeNeonFeedback, pgTimestampUs } from "../core/protocol/replication.js"
import { Watch } from "../core/timeline/watch.js"
import { formatLsn, Lsn, parseLsn } from "../core/wal/lsn.js"
import {
  CONNECTION_MANAGER_CONFIG_DEFAULT,
  type ConnectionManagerConfig,
  type ConnectionManagerState,
  connectionEnded,
  connectionEstablished,
  connectionStarted,
  describeReason,
  initialState,
  messageReceived,
  nextCandidate,
  type ReconnectReason,
  registerCandidate,
  timeUntilNextRetryUs
} from "../core/walreceiver/connection-manager.js"
import type { Incarnation } from "./kernel.js"

/**
 * A model pageserver for a World node: it streams one timeline's committed WAL from the
 * safekeepers as Neon's pageserver walreceiver does, without ingesting it into layers.
 *
 * - Choice: core/walreceiver/connection-manager.ts decides where to stream from. It learns about
 *   each safekeeper from TIMELINE_STATUS probes (flush_lsn, commit_lsn: what core/server answers
 *   today; there is no broker yet) and from the stream itself (walEnd of XLogData and keepalives).
 * - Stream: the real pg protocol client, startup options `-c timeline_id=... tenant_id=...`,
 *   application_name `pageserver`, IDENTIFY_SYSTEM, then plain `START_REPLICATION PHYSICAL X/Y`
 *   (no term: Neon's pageserver streams committed WAL only) from the end of what it received.
 * - Persisting: WAL received is "persisted" after a random delay: the persisted LSN (Neon's
 *   remote_consistent_lsn; also reported as disk_consistent_lsn) advances, durably, on the node's
 *   simulated Disk: `<datadir>/<tenant>_<timeline>.remote_consistent_lsn` is replaced atomically
 *   (temp file, fsync, rename, directory fsync) before the new value is used or reported. A crash
 *   loses everything else; a restart streams again from the persisted LSN.
 * - Feedback: Neon's 'z' (ps_writelsn = received, ps_flushlsn = ps_applylsn = persisted) every
 *   `feedbackIntervalUs`, whenever the persisted LSN moves, and when a keepalive asks for a reply.
 *
 * The checker sees everything through `hooks`, called only while this node life is alive.
 */
export interface PageserverHooks {
  /** WAL received at `startLsn` (a copy: the checker may keep it). Ranges are contiguous within a life. */
  readonly onWalReceived?: (event: { readonly safekeeper: string; readonly startLsn: Lsn; readonly bytes: Uint8Array }) => void
  /** The persisted LSN is durable at `lsn` (reported to safekeepers only from now on). */
  readonly onPersisted?: (event: { readonly lsn: Lsn }) => void
  /**
   * A new connection is chosen: `from` is the safekeeper streamed from last (undefined at a
   * life's first choice; equal to `to` when reconnecting to the same one).
   */
  readonly onSwitch?: (event: { readonly from: string | undefined; readonly to: string; readonly reason: ReconnectReason }) => void
  /** WAL from `safekeeper` cleared its retry backoff. */
  readonly onBackoffReset?: (event: { readonly safekeeper: string }) => void
  /** Feedback sent to `safekeeper`. */
  readonly onFeedbackSent?: (event: { readonly safekeeper: string; readonly feedback: PageserverFeedback }) => void
  /** A life started from `persistedLsn` (the initial LSN when nothing was persisted yet). */
  readonly onStart?: (event: { readonly persistedLsn: Lsn; readonly fromDisk: boolean }) => void
}

export interface PageserverOptions {
  readonly tenantId: TenantId
  readonly timelineId: TimelineId
  /** Safekeepers' pg addresses (host:port). */
  readonly safekeepers: ReadonlyArray<string>
  /** Where streaming starts when nothing is persisted (the timeline's first LSN, as a basebackup gives). */
  readonly initialLsn: Lsn
  readonly datadir?: string
  /** Overrides of Neon's defaults (10 s timeouts are long for a short simulated run). */
  readonly manager?: Partial<ConnectionManagerConfig>
  /** Each safekeeper is probed this often (jittered ±20 %). */
  readonly probeIntervalUs?: number
  /** A probe that takes longer has failed. */
  readonly probeTimeoutUs?: number
  /** Delay between receiving WAL and persisting it, drawn per persist. */
  readonly persistDelayUs?: readonly [number, number]
  readonly feedbackIntervalUs?: number
  /** The manager re-checks its rules at least this often. */
  readonly managerTickUs?: number
  readonly hooks?: PageserverHooks
  /** Hooks fire only while this life is alive (a crashed node tells the checker nothing). */
  readonly life?: Incarnation
}

export const PAGESERVER_DATADIR_DEFAULT = "/pageserver"
export const PAGESERVER_APPLICATION_NAME = "pageserver"
export const PROBE_INTERVAL_US_DEFAULT = 500_000
export const PROBE_TIMEOUT_US_DEFAULT = 1 * US_PER_SECOND
export const PERSIST_DELAY_US_DEFAULT: readonly [number, number] = [20_000, 300_000]
/** Neon's pageserver sends feedback at least this often (wal_receiver_status_interval-like). */
export const FEEDBACK_INTERVAL_US_DEFAULT = 1 * US_PER_SECOND
export const MANAGER_TICK_US_DEFAULT = 100_000
/** The persisted-LSN file holds one LSN in text; anything longer is not ours. */
const STATE_FILE_BYTES_MAX = 64

export class PageserverError extends Schema.TaggedError<PageserverError>()("PageserverError", {
  reason: Schema.Literals(["ConnectTimeout", "Stream", "NonContiguous", "Malformed", "BadStateFile"]),
  message: Schema.String
}) {}

export type PageserverFailure = PageserverError | DiskError

/** The pageserver node's program: runs until its life ends; fails only on a disk error or a bad state file. */
export const pageserverProgram = (options: PageserverOptions): Effect.Effect<void, PageserverFailure, Disk | Net | Log> =>
  Effect.gen(function* () {
    const config: ConnectionManagerConfig = { ...CONNECTION_MANAGER_CONFIG_DEFAULT, ...options.manager }
    const datadir = options.datadir ?? PAGESERVER_DATADIR_DEFAULT
    const statePath = joinPath(datadir, `${options.tenantId}_${options.timelineId}.remote_consistent_lsn`)
    const persistDelayUs = options.persistDelayUs ?? PERSIST_DELAY_US_DEFAULT
    assert(persistDelayUs[0] >= 0 && persistDelayUs[0] <= persistDelayUs[1], "persist delay range is [low, high]")
    const alive = () => options.life?.alive !== false
    const hooks = options.hooks ?? {}

    const loaded = yield* loadPersistedLsn(datadir, statePath)
    const startLsn = loaded ?? options.initialLsn
    const node: NodeState = {
      receivedLsn: startLsn,
      persistedLsn: startLsn,
      manager: initialState(config),
      lastSafekeeper: undefined,
      connectionNo: 0,
      current: undefined,
      wake: Watch.make(0),
      received: Watch.make(startLsn),
      persisted: Watch.make(startLsn)
    }
    if (alive()) hooks.onStart?.({ persistedLsn: Lsn(startLsn), fromDisk: loaded !== undefined })
    yield* logInfo("pageserver started", { persisted_lsn: formatLsn(startLsn), from_disk: loaded !== undefined })

    const connectOptions: PgConnectOptions = {
      user: "pageserver",
      database: "replication",
      replication: "true",
      applicationName: PAGESERVER_APPLICATION_NAME,
      options: `-c timeline_id=${options.timelineId} tenant_id=${options.tenantId}`
    }
    const context: Context = { options, config, node, alive, hooks, connectOptions }

    const probers = options.safekeepers.map((safekeeper) => probeForever(context, safekeeper))
    yield* Effect.all([manageForever(context), persistForever(context, statePath, persistDelayUs), ...probers], { concurrency: "unbounded", discard: true })
  })

// ---- state shared by the node's fibers (one thread: plain mutation between yields) ----

interface NodeState {
  /** End of the contiguous WAL received in this life. */
  receivedLsn: number
  /** Durable; what feedback reports as remote_consistent_lsn. */
  persistedLsn: number
  manager: ConnectionManagerState
  lastSafekeeper: string | undefined
  connectionNo: number
  current: { readonly no: number; readonly safekeeper: string; readonly fiber: Fiber.Fiber<void>; ended: boolean } | undefined
  /** Ticks when the manager should look again (a connection ended, a probe answered). */
  readonly wake: Watch<number>
  readonly received: Watch<number>
  readonly persisted: Watch<number>
}

interface Context {
  readonly options: PageserverOptions
  readonly config: ConnectionManagerConfig
  readonly node: NodeState
  readonly alive: () => boolean
  readonly hooks: PageserverHooks
  readonly connectOptions: PgConnectOptions
}

const poke = (watch: Watch<number>) => watch.set(watch.get() + 1)

// ---- the manager: apply the connection manager's decisions ----

const manageForever = (context: Context): Effect.Effect<never, never, Net | Log> =>
  Effect.forever(Effect.gen(function* () {
    const { node, hooks } = context
    const now = yield* monotonicUs
    if (node.current?.ended === true) {
      node.manager = connectionEnded(node.manager)
      node.current = undefined
    }
    const decision = nextCandidate(node.manager, now, node.receivedLsn)
    node.manager = decision.state
    const candidate = decision.candidate
    if (candidate !== undefined) {
      const previous = node.current
      if (previous !== undefined) {
        node.current = undefined
        yield* Fiber.interrupt(previous.fiber)
        node.manager = connectionEnded(node.manager)
      }
      const from = node.lastSafekeeper
      if (context.alive()) hooks.onSwitch?.({ from, to: candidate.safekeeper, reason: candidate.reason })
      const fields = { from, to: candidate.safekeeper, reason: candidate.reason._tag, detail: describeReason(candidate.reason), received_lsn: formatLsn(node.receivedLsn) }
      // The coverage mark is a move to another safekeeper; a first choice or a reconnect is not.
      if (from !== undefined && from !== candidate.safekeeper) yield* logInfo("pageserver switched safekeeper", fields)
      else yield* logInfo("pageserver connecting to safekeeper", fields)
      node.lastSafekeeper = candidate.safekeeper
      node.manager = connectionStarted(node.manager, candidate.safekeeper, now)
      const no = ++node.connectionNo
      const fiber = yield* Effect.forkChild(runConnection(context, no, candidate.safekeeper))
      node.current = { no, safekeeper: candidate.safekeeper, fiber, ended: false }
    }
    const tickUs = context.options.managerTickUs ?? MANAGER_TICK_US_DEFAULT
    const retryUs = timeUntilNextRetryUs(node.manager, now)
    const waitUs = Math.max(1, Math.min(tickUs, retryUs ?? tickUs))
    yield* node.wake.nextChange.pipe(Effect.timeoutOption(Duration.micros(BigInt(waitUs))))
  }))

// ---- one connection ----

const runConnection = (context: Context, no: number, safekeeper: string): Effect.Effect<void, never, Net | Log> =>
  Effect.gen(function* () {
    const outcome = yield* Effect.result(stream(context, no, safekeeper))
    const message = Result.isFailure(outcome) ? `${outcome.failure._tag}: ${outcome.failure.message}` : "the safekeeper ended the stream"
    yield* logInfo("pageserver connection ended", { safekeeper, connection: no, received_lsn: formatLsn(context.node.receivedLsn), error: message })
    const current = context.node.current
    if (current !== undefined && current.no === no) {
      current.ended = true
      poke(context.node.wake)
    }
  })

type StreamFailure = PageserverError | { readonly _tag: string; readonly message: string }

const stream = (context: Context, no: number, safekeeper: string): Effect.Effect<void, StreamFailure, Net | Log> =>
  Effect.gen(function* () {
    const { node, config } = context
    const isCurrent = () => node.current === undefined || node.current.no === no
    const opened = yield* openStream(context, safekeeper).pipe(Effect.timeoutOrElse({
      duration: Duration.micros(BigInt(config.walConnectTimeoutUs)),
      orElse: () => Effect.fail(new PageserverError({ reason: "ConnectTimeout", message: `no stream from ${safekeeper} within ${config.walConnectTimeoutUs} us` }))
    }))
    const { client, copy, commitLsn } = opened
    yield* Effect.ensuring(
      Effect.gen(function* () {
        if (isCurrent()) node.manager = connectionEstablished(node.manager, yield* monotonicUs, commitLsn)
        const feedback = yield* Effect.forkChild(feedbackForever(context, safekeeper, copy))
        yield* Effect.ensuring(receive(context, no, safekeeper, copy), Fiber.interrupt(feedback))
      }),
      client.close
    )
  })

interface OpenedStream {
  readonly client: PgClient
  readonly copy: CopyBoth
  readonly commitLsn: number | undefined
}

/** Startup, IDENTIFY_SYSTEM (its xlogpos is the safekeeper's commit_lsn), START_REPLICATION from what we have. */
const openStream = (context: Context, safekeeper: string): Effect.Effect<OpenedStream, StreamFailure, Net> =>
  Effect.gen(function* () {
    const client = yield* connectPg(safekeeper, context.connectOptions)
    return yield* Effect.onError(Effect.gen(function* () {
      const identify = yield* client.simpleQuery("IDENTIFY_SYSTEM")
      const xlogpos = identify.rows[0]?.[2]
      const parsed = xlogpos === undefined || xlogpos === null ? undefined : parseLsn(xlogpos)
      const commitLsn = parsed !== undefined && Result.isSuccess(parsed) ? parsed.success : undefined
      const copy = yield* client.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(context.node.receivedLsn)}`)
      return { client, copy, commitLsn }
    }), () => client.close)
  })

/** XLogData and keepalives until the stream ends or breaks. */
const receive = (context: Context, no: number, safekeeper: string, copy: CopyBoth): Effect.Effect<void, StreamFailure, Log> =>
  Effect.gen(function* () {
    const { node, hooks } = context
    const isCurrent = () => node.current !== undefined && node.current.no === no
    // Ends only when the safekeeper ends the stream or it breaks: Effect.forever would hide that.
    while (true) {
      const payload = yield* copy.readCopyData
      if (payload === undefined) return
      const decoded = decodeWalSenderMessage(payload)
      if (Result.isFailure(decoded)) return yield* new PageserverError({ reason: "Malformed", message: decoded.failure.reason })
      const message = decoded.success
      const now = yield* monotonicUs
      if (message._tag === "XLogData") {
        const bytes = message.data
        if (bytes.byteLength > 0) {
          // The walsender starts exactly where we asked and sends consecutive chunks.
          if (message.dataStartLsn !== node.receivedLsn) {
            return yield* new PageserverError({ reason: "NonContiguous", message: `XLogData at ${formatLsn(message.dataStartLsn)}, expected ${formatLsn(node.receivedLsn)}` })
          }
          if (context.alive()) hooks.onWalReceived?.({ safekeeper, startLsn: Lsn(message.dataStartLsn), bytes: bytes.slice() })
          node.receivedLsn = message.dataStartLsn + bytes.byteLength
          node.received.set(node.receivedLsn)
        }
        if (!isCurrent()) continue
        const update = messageReceived(node.manager, {
          walEndLsn: message.walEndLsn,
          receivedEndLsn: bytes.byteLength > 0 ? node.receivedLsn : undefined,
          processedWal: bytes.byteLength > 0
        }, now)
        node.manager = update.state
        if (update.backoffReset) {
          if (context.alive()) hooks.onBackoffReset?.({ safekeeper })
          yield* logInfo("pageserver backoff reset", { safekeeper, received_lsn: formatLsn(node.receivedLsn) })
        }
      } else {
        if (isCurrent()) node.manager = messageReceived(node.manager, { walEndLsn: message.walEndLsn, processedWal: false }, now).state
        if (message.replyRequested) yield* sendFeedback(context, safekeeper, copy)
      }
    }
  })

/** Feedback every interval and whenever the persisted LSN moves. */
const feedbackForever = (context: Context, safekeeper: string, copy: CopyBoth): Effect.Effect<void, StreamFailure, Log> =>
  Effect.gen(function* () {
    const intervalUs = context.options.feedbackIntervalUs ?? FEEDBACK_INTERVAL_US_DEFAULT
    yield* sendFeedback(context, safekeeper, copy)
    while (true) {
      yield* context.node.persisted.nextChange.pipe(Effect.timeoutOption(Duration.micros(BigInt(intervalUs))))
      yield* sendFeedback(context, safekeeper, copy)
    }
  })

const sendFeedback = (context: Context, safekeeper: string, copy: CopyBoth): Effect.Effect<void, StreamFailure> =>
  Effect.gen(function* () {
    const { node } = context
    // Only what is durable is reported consistent: a safekeeper may drop WAL below it.
    const feedback: PageserverFeedback = {
      currentTimelineSizeBytes: 0,
      lastReceivedLsn: Lsn(node.receivedLsn),
      diskConsistentLsn: Lsn(node.persistedLsn),
      remoteConsistentLsn: Lsn(node.persistedLsn),
      replyTimeUs: pgTimestampUs(yield* nowUs),
      shardNumber: 0,
      corruptionDetected: false
    }
    yield* copy.writeCopyData(encodeNeonFeedback(feedback))
    if (context.alive()) context.hooks.onFeedbackSent?.({ safekeeper, feedback })
  })

// ---- probes ----

/** TIMELINE_STATUS of one safekeeper, again and again; an answer refreshes its candidate info. */
const probeForever = (context: Context, safekeeper: string): Effect.Effect<never, never, Net | Log> =>
  Effect.forever(Effect.gen(function* () {
    const timeoutUs = context.options.probeTimeoutUs ?? PROBE_TIMEOUT_US_DEFAULT
    const status = yield* probe(context, safekeeper).pipe(
      Effect.timeoutOption(Duration.micros(BigInt(timeoutUs))),
      Effect.result
    )
    if (Result.isSuccess(status) && status.success._tag === "Some" && status.success.value !== undefined) {
      const { commitLsn, flushLsn } = status.success.value
      context.node.manager = registerCandidate(context.node.manager, safekeeper, { commitLsn, flushLsn }, yield* monotonicUs)
      poke(context.node.wake)
    } else {
      const why = Result.isFailure(status) ? status.failure.message : status.success._tag === "None" ? "timed out" : "no such timeline"
      yield* logDebug("pageserver probe failed", { safekeeper, error: why })
    }
    yield* Effect.flatMap(jitterUs(context.options.probeIntervalUs ?? PROBE_INTERVAL_US_DEFAULT, 0.2), sleepUs)
  }))

const probe = (context: Context, safekeeper: string) =>
  Effect.gen(function* () {
    const client = yield* connectPg(safekeeper, context.connectOptions)
    return yield* Effect.ensuring(Effect.gen(function* () {
      const result = yield* client.simpleQuery("TIMELINE_STATUS")
      const row = result.rows[0]
      if (row === undefined) return undefined
      const flush = row[0] === null || row[0] === undefined ? undefined : parseLsn(row[0])
      const commit = row[1] === null || row[1] === undefined ? undefined : parseLsn(row[1])
      if (flush === undefined || commit === undefined || Result.isFailure(flush) || Result.isFailure(commit)) return undefined
      return { flushLsn: flush.success, commitLsn: commit.success }
    }), client.terminate)
  })

// ---- persisting ----

/** Persists what was received, after a random delay, for ever. */
const persistForever = (context: Context, statePath: string, delayUs: readonly [number, number]): Effect.Effect<never, DiskError, Disk | Log> =>
  Effect.forever(Effect.gen(function* () {
    const { node } = context
    yield* node.received.waitUntil((lsn) => lsn > node.persistedLsn)
    // What has arrived now becomes durable after the delay (as a layer flush and upload would).
    const target = node.receivedLsn
    yield* Effect.flatMap(randomIntBetween(delayUs[0], delayUs[1] + 1), sleepUs)
    yield* writePersistedLsn(statePath, target)
    assert(target >= node.persistedLsn, "the persisted LSN never goes back")
    node.persistedLsn = target
    if (context.alive()) context.hooks.onPersisted?.({ lsn: Lsn(target) })
    yield* logDebug("pageserver persisted", { lsn: formatLsn(target) })
    node.persisted.set(target)
  }))

/** The persisted LSN from the last life, or undefined on a first start. Makes the data directory durable. */
const loadPersistedLsn = (datadir: string, statePath: string): Effect.Effect<Lsn | undefined, PageserverFailure, Disk> =>
  Effect.gen(function* () {
    const disk = yield* Disk
    yield* disk.mkdir(datadir)
    // A directory we just created must survive a crash with the file that will be renamed into it.
    yield* disk.syncDirectory(parentPath(datadir))
    const existing = yield* Effect.result(disk.readFile(statePath))
    if (Result.isFailure(existing)) {
      if (existing.failure.reason === "NotFound") return undefined
      return yield* existing.failure
    }
    const bytes = existing.success
    const text = bytes.byteLength > STATE_FILE_BYTES_MAX ? undefined : new TextDecoder().decode(bytes).trim()
    const parsed = text === undefined ? undefined : parseLsn(text)
    if (parsed === undefined || Result.isFailure(parsed)) {
      return yield* new PageserverError({ reason: "BadStateFile", message: `${statePath} does not hold an LSN` })
    }
    return parsed.success
  })

/** Atomic replace: temp file, fsync, rename, directory fsync. Only then is the value durable. */
const writePersistedLsn = (statePath: string, lsn: number): Effect.Effect<void, DiskError, Disk> =>
  Effect.gen(function* () {
    const disk = yield* Disk
    const temp = `${statePath}.tmp`
    const file = yield* disk.open(temp, { create: true })
    yield* Effect.ensuring(
      Effect.gen(function* () {
        yield* file.truncate(0)
        yield* file.write(0, new TextEncoder().encode(`${formatLsn(lsn)}\n`))
        yield* file.sync
      }),
      file.close
    )
    yield* disk.rename(temp, statePath)
    yield* disk.syncDirectory(parentPath(statePath))
  })
