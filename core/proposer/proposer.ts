import { Cause, Deferred, Duration, Effect, Fiber, Queue, Result } from "effect"
import { assert, assertNever } from "../assert.js"
import { INVALID_GENERATION, type Term } from "../acceptor/state.js"
import { monotonicUs, sleepUs } from "../io/clock.js"
import { Log } from "../io/log.js"
import type { AppendRequest, ProposerMessage } from "../protocol/consensus.js"
import { formatLsn, Lsn } from "../wal/lsn.js"
import {
  type Election,
  ProposerError,
  type ProposerAction,
  type ProposerConfigInput,
  type ProposerEvent,
  type ProposerProgress,
  type ProposerState,
  progressOf,
  resolveConfig,
  start,
  step
} from "./machine.js"
import { type LinkError, type SafekeeperLink, SafekeeperTransport } from "./transport.js"
import { WAL_BUFFER_BYTES_MAX_DEFAULT, WalBuffer } from "./wal-buffer.js"
import { lastRecordStart, makeWalReader, type PeerWal, type WalReader, type WalUnavailable } from "./wal-reader.js"
import type { WalSourceFactory } from "./wal-source.js"

export { ProposerError, type ProposerErrorReason, type ProposerProgress } from "./machine.js"

/**
 * The walproposer (reference §14) as an Effect program: the shell around the state machine in
 * machine.ts. One coordinator fiber owns the state: it takes events from a bounded queue, lets
 * the machine decide, and carries out the actions. Around it:
 * - per safekeeper connection, a connection fiber (connect, then read messages into the queue)
 *   and a writer fiber (sends what the machine asks, and streams AppendRequests from the WAL
 *   buffer, or from a peer below it, to that safekeeper);
 * - a ticker (reconnects, heartbeats, timeouts are decided on its ticks);
 * - after the election, a pump that moves new WAL from the WalSource into the buffer.
 * Writers read the coordinator's latest state (commit_lsn, truncate_lsn, peers) but never
 * change it; everything runs on one thread, so they see it between two events.
 *
 * Not done (the C walproposer does): hot standby and pageserver feedback in AppendResponses are
 * ignored (no backpressure from the pageserver, no replication slots); there is no graceful
 * shutdown beyond the final broadcast; the WAL of a term that precedes the buffer is always read
 * from a peer, never from local storage.
 */

export interface ProposerOptions extends ProposerConfigInput {
  /** New WAL from the term start on (normal mode); without it the proposer only heartbeats. */
  readonly walSource?: WalSourceFactory
  /** Finish once commit_lsn reaches the end of the first chunk at or past termStart + totalBytes. */
  readonly totalBytes?: number
  /** The in-memory window of recent WAL kept for laggards (wal-buffer.ts). */
  readonly walBufferBytesMax?: number
  /** The pump stops asking the source for WAL while this much waits for commit. */
  readonly uncommittedBytesMax?: number
  /** Called after every change of the election, commit_lsn, truncate_lsn or a safekeeper's flush_lsn. */
  readonly onProgress?: (progress: ProposerProgress) => void
}

export interface ProposerResult {
  readonly term: Term
  /** sync-safekeepers: the LSN the safekeepers were synced to (0/0 without WAL); otherwise commit_lsn. */
  readonly lsn: Lsn
  /** 0 when sync-safekeepers found no WAL. */
  readonly termStartLsn: Lsn
  readonly commitLsn: Lsn
  readonly truncateLsn: Lsn
}

/** Tries to read the record before the term start (its xl_prev) before stepping down. */
export const LAST_RECORD_ATTEMPTS_MAX = 3
/** Events waiting for the coordinator; producers wait when it is full. */
export const EVENT_QUEUE_LENGTH_MAX = 1024
/** A writer gets at most a greeting, a vote request, Elected, Stream, a poke and Final per connection. */
const WRITER_COMMANDS_MAX = 8
export const UNCOMMITTED_BYTES_MAX_DEFAULT = 4 * 1024 * 1024
/** Ticks come this many times per shortest timeout, so each fires within a quarter of itself. */
const TICKS_PER_TIMEOUT = 4
const TICK_US_MIN = 1000
assert(UNCOMMITTED_BYTES_MAX_DEFAULT <= WAL_BUFFER_BYTES_MAX_DEFAULT, "uncommitted WAL fits the buffer")

type WriterCommand =
  | { readonly _tag: "Message"; readonly message: ProposerMessage }
  | { readonly _tag: "Stream"; readonly startLsn: Lsn }
  | { readonly _tag: "Poke" }
  | { readonly _tag: "Final"; readonly done: Deferred.Deferred<void> }

interface Connection {
  readonly slot: number
  readonly connectionNo: number
  readonly commands: Queue.Queue<WriterCommand>
  /** A Poke is queued and not yet taken: pokes coalesce. */
  pokePending: boolean
  fiber: Fiber.Fiber<void> | undefined
}

type Outcome =
  | { readonly _tag: "Finish"; readonly lsn: Lsn }
  | { readonly _tag: "StepDown"; readonly action: Extract<ProposerAction, { readonly _tag: "StepDown" }> }

const EMPTY_WAL = new Uint8Array(0)

/**
 * Runs one walproposer to its end. The body runs in a fiber of its own, tied to a scope that
 * closes when it ends: its connection, writer, ticker and pump fibers are its children, so they
 * all stop with it, also when the caller's fiber lives on (a compute restarting its proposer).
 * Run inline, they outlived it as children of the caller: a writer blocked on a full socket
 * went on streaming an old term's WAL after the proposer had stepped down (swarm seed 1515).
 */
export const runProposer = (options: ProposerOptions): Effect.Effect<ProposerResult, ProposerError, SafekeeperTransport | Log> =>
  Effect.scoped(Effect.flatMap(Effect.forkScoped(runProposerBody(options)), Fiber.join))

const runProposerBody = Effect.fn("Proposer.run")(function* (
  options: ProposerOptions
): Effect.fn.Return<ProposerResult, ProposerError, SafekeeperTransport | Log> {
  const config = resolveConfig(options)
  const walBufferBytesMax = options.walBufferBytesMax ?? WAL_BUFFER_BYTES_MAX_DEFAULT
  const uncommittedBytesMax = options.uncommittedBytesMax ?? Math.min(UNCOMMITTED_BYTES_MAX_DEFAULT, walBufferBytesMax)
  assert(uncommittedBytesMax > 0 && uncommittedBytesMax <= walBufferBytesMax, "uncommitted WAL fits the buffer")
  assert(options.totalBytes === undefined || options.totalBytes >= 0, "a WAL total is not negative")
  assert(options.totalBytes === undefined || options.walSource !== undefined || config.syncSafekeepers, "a WAL total needs a WAL source")
  const transport = yield* SafekeeperTransport
  const log = yield* Log
  const events = yield* Queue.bounded<ProposerEvent>(EVENT_QUEUE_LENGTH_MAX)
  const pumpWake = yield* Queue.sliding<void>(1)
  const connections = new Map<number, Connection>()
  const { tenantId, timelineId } = config
  let buffer: WalBuffer | undefined

  const offer = (event: ProposerEvent) => Effect.asVoid(Queue.offer(events, event))
  // A defect in any child fiber (a broken invariant) ends the whole proposer with it, instead
  // of leaving a writer or the pump silently dead while the coordinator goes on.
  const childDefect = yield* Deferred.make<never>()
  const supervised = <A, E, R>(child: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    Effect.tapCause(child, (cause) => (Cause.hasDies(cause) ? Deferred.failCause(childDefect, Cause.die(Cause.squash(cause))) : Effect.void))

  let transition = start(config, yield* monotonicUs)
  let state: ProposerState = transition.state

  // ---- safekeepers a laggard's WAL can come from ----

  /** Active safekeepers other than `readerSlot` that hold our log past `lsn`: the donor first, then the most advanced. */
  const peersFor = (readerSlot: number) => (lsn: Lsn): ReadonlyArray<PeerWal> => {
    const election = state.election
    if (election === undefined) return []
    const peers: Array<PeerWal & { readonly slot: number }> = []
    state.safekeepers.forEach((sk, slot) => {
      if (slot === readerSlot || sk.status !== "Active") return
      const endLsn = slot === election.donorSlot ? Lsn(Math.max(election.propTermStartLsn, sk.flushLsn)) : sk.flushLsn
      if (endLsn > lsn) peers.push({ slot, address: sk.address, endLsn })
    })
    const rank = (peer: { readonly slot: number }) => (peer.slot === election.donorSlot ? 0 : 1)
    return peers.sort((a, b) => rank(a) - rank(b) || b.endLsn - a.endLsn || a.slot - b.slot)
  }

  // ---- one safekeeper connection ----

  const runWriter = (connection: Connection, link: SafekeeperLink) => {
    let streamingAt: Lsn | undefined
    let reader: WalReader | undefined

    /** walproposer `SendAppendRequests`: everything up to the buffer's end, and at least one message when forced. */
    const sendAppends = (force: boolean) =>
      Effect.gen(function* () {
        const walBuffer = buffer
        assert(walBuffer !== undefined && streamingAt !== undefined && reader !== undefined, "streaming after the election")
        let sent = false
        // One pass per AppendRequest: each carries WAL (streamingAt moves on), but for one empty heartbeat.
        while (streamingAt < walBuffer.endLsn || (force && !sent)) {
          const endLsn = walBuffer.endLsn
          const walData = streamingAt < endLsn ? yield* reader.read(streamingAt, endLsn) : EMPTY_WAL
          const request: AppendRequest = {
            _tag: "AppendRequest",
            generation: state.mconf.generation,
            term: state.propTerm,
            beginLsn: streamingAt,
            endLsn: Lsn(streamingAt + walData.byteLength),
            commitLsn: state.commitLsn,
            truncateLsn: state.truncateLsn,
            walData
          }
          yield* link.send(request)
          streamingAt = request.endLsn
          sent = true
        }
      })

    const handle = (command: WriterCommand) =>
      Effect.gen(function* () {
        switch (command._tag) {
          case "Message":
            return yield* link.send(command.message)
          case "Stream": {
            assert(buffer !== undefined && command.startLsn <= buffer.endLsn, `stream from ${formatLsn(command.startLsn)} within our WAL`)
            streamingAt = command.startLsn
            reader = makeWalReader({ tenantId, timelineId, term: state.propTerm, buffer, peers: peersFor(connection.slot) })
            return yield* sendAppends(true)
          }
          case "Poke":
            connection.pokePending = false
            if (streamingAt !== undefined) yield* sendAppends(true)
            return
          case "Final":
            if (streamingAt !== undefined) yield* sendAppends(true)
            yield* Deferred.succeed(command.done, undefined)
            return
          default:
            return assertNever(command, "writer command")
        }
      })

    const { slot, connectionNo } = connection
    // Runs until its connection is interrupted or fails.
    return Effect.forever(Effect.flatMap(Queue.take(connection.commands), handle)).pipe(
      Effect.catchTags({
        LinkError: (error: LinkError) => offer({ _tag: "LinkFailed", slot, connectionNo, reason: error.reason, message: error.message }),
        WalUnavailable: (error: WalUnavailable) => offer({ _tag: "WalUnavailable", slot, lsn: Lsn(error.lsn), message: error.message })
      }),
      Effect.ensuring(Effect.suspend(() => reader?.close ?? Effect.void))
    )
  }

  const runConnection = (connection: Connection) => {
    const { slot, connectionNo } = connection
    const address = config.safekeepers[slot]!
    // Timeline creation is for the legacy world; with generations the storage controller creates it.
    const open = transport.open(address, { tenantId, timelineId, allowTimelineCreation: config.mconf.generation === INVALID_GENERATION })
    const use = (link: SafekeeperLink) =>
      Effect.gen(function* () {
        yield* offer({ _tag: "Connected", slot, connectionNo })
        yield* Effect.forkChild(supervised(runWriter(connection, link)))
        // Reads until the connection fails or is interrupted.
        return yield* Effect.forever(Effect.flatMap(link.receive, (message) => offer({ _tag: "Received", slot, connectionNo, message })))
      })
    // The connect itself stays interruptible (a connection timeout interrupts a hung connect);
    // once it returned, the link is closed however the connection ends.
    return Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(restore(open), (link) => restore(use(link)).pipe(Effect.ensuring(link.close)))
    ).pipe(
      Effect.catch((error: LinkError) => offer({ _tag: "LinkFailed", slot, connectionNo, reason: error.reason, message: error.message }))
    )
  }

  const command = (connection: Connection, writerCommand: WriterCommand) => {
    const offered = Queue.offerUnsafe(connection.commands, writerCommand)
    assert(offered, `writer of ${config.safekeepers[connection.slot]} holds at most ${WRITER_COMMANDS_MAX} commands`)
  }

  const currentConnection = (slot: number, connectionNo: number): Connection | undefined => {
    const connection = connections.get(slot)
    return connection !== undefined && connection.connectionNo === connectionNo ? connection : undefined
  }

  // ---- after the election: new WAL into the buffer ----

  const runPump = (election: Election, donorAddress: string, factory: WalSourceFactory, walBuffer: WalBuffer) =>
    Effect.gen(function* () {
      const startLsn = election.propTermStartLsn
      const timelineStartLsn = election.termHistory[0]!.lsn
      let prevLsn: Lsn | undefined
      if (startLsn > timelineStartLsn) {
        // A compute knows the last record from its basebackup; we read it from the donor. A
        // wrong xl_prev would be refused by any safekeeper whose decoder knows the previous
        // record, so a failed read is retried, then the proposer steps down (never guesses).
        const lookup = lastRecordStart({
          tenantId,
          timelineId,
          term: state.propTerm,
          peer: donorAddress,
          endLsn: startLsn,
          lowestLsn: timelineStartLsn,
          segmentSizeBytes: config.walSegSizeBytes
        })
        let failure: string | undefined
        for (let attempt = 1; attempt <= LAST_RECORD_ATTEMPTS_MAX; attempt++) {
          const outcome = yield* Effect.result(lookup)
          if (Result.isSuccess(outcome)) {
            prevLsn = outcome.success
            failure = prevLsn === undefined ? `no record ends at the term start ${formatLsn(startLsn)}` : undefined
            break
          }
          failure = `${outcome.failure._tag}: ${outcome.failure.message}`
          if (outcome.failure._tag === "WalUnavailable") break
          yield* sleepUs(config.reconnectTimeoutUs)
        }
        if (failure !== undefined) {
          return yield* offer({ _tag: "WalUnavailable", slot: election.donorSlot, lsn: startLsn, message: `the last record before the term start: ${failure}` })
        }
      }
      const source = yield* factory({ startLsn, prevLsn })
      const limitLsn = options.totalBytes === undefined ? Number.POSITIVE_INFINITY : startLsn + options.totalBytes
      // One pass per chunk, until the source ends or the total is reached.
      for (;;) {
        if (walBuffer.endLsn >= limitLsn) return yield* offer({ _tag: "SourceEnded", endLsn: walBuffer.endLsn })
        // One pass per commit_lsn move, until the uncommitted WAL fits the window again.
        while (walBuffer.endLsn - Math.max(state.commitLsn, startLsn) >= uncommittedBytesMax) yield* Queue.take(pumpWake)
        const chunk = yield* source.next
        if (chunk === undefined) return yield* offer({ _tag: "SourceEnded", endLsn: walBuffer.endLsn })
        walBuffer.append(chunk.startLsn, chunk.bytes)
        yield* offer({ _tag: "WalAvailable", endLsn: walBuffer.endLsn })
      }
    })

  // ---- the coordinator ----

  const apply = (actions: ReadonlyArray<ProposerAction>) =>
    Effect.gen(function* () {
      for (const action of actions) {
        switch (action._tag) {
          case "Connect": {
            const commands = yield* Queue.bounded<WriterCommand>(WRITER_COMMANDS_MAX)
            const connection: Connection = { slot: action.slot, connectionNo: action.connectionNo, commands, pokePending: false, fiber: undefined }
            connections.set(action.slot, connection)
            connection.fiber = yield* Effect.forkChild(supervised(runConnection(connection)))
            break
          }
          case "Send": {
            const connection = currentConnection(action.slot, action.connectionNo)
            if (connection !== undefined) command(connection, { _tag: "Message", message: action.message })
            break
          }
          case "StartStreaming": {
            const connection = currentConnection(action.slot, action.connectionNo)
            if (connection !== undefined) command(connection, { _tag: "Stream", startLsn: action.startLsn })
            break
          }
          case "Disconnect": {
            const connection = currentConnection(action.slot, action.connectionNo)
            if (connection === undefined) break
            connections.delete(action.slot)
            // Interrupt without waiting for its finalizers (closing the link).
            if (connection.fiber !== undefined) yield* Effect.forkChild(Fiber.interrupt(connection.fiber))
            break
          }
          case "Broadcast":
            for (const connection of connections.values()) {
              if (state.safekeepers[connection.slot]?.status !== "Active" || connection.pokePending) continue
              connection.pokePending = true
              command(connection, { _tag: "Poke" })
            }
            break
          case "BeginTerm": {
            const walBuffer = new WalBuffer(action.election.propTermStartLsn, walBufferBytesMax)
            buffer = walBuffer
            if (!config.syncSafekeepers && options.walSource !== undefined) {
              yield* Effect.forkChild(supervised(runPump(action.election, action.donorAddress, options.walSource, walBuffer)))
            }
            break
          }
          case "Log":
            yield* log.emit(action.level, action.message, action.fields)
            break
          case "Progress":
            if (options.onProgress !== undefined) options.onProgress(progressOf(state))
            break
          case "Finish":
            return { _tag: "Finish", lsn: action.lsn } as const
          case "StepDown":
            return { _tag: "StepDown", action } as const
          default:
            return assertNever(action, "proposer action")
        }
      }
      return undefined
    })

  const tickUs = Math.max(TICK_US_MIN, Math.floor(Math.min(config.reconnectTimeoutUs, config.heartbeatIntervalUs, config.connectionTimeoutUs) / TICKS_PER_TIMEOUT))
  // Runs until the proposer ends (children are interrupted then).
  yield* Effect.forkChild(Effect.forever(Effect.andThen(sleepUs(tickUs), offer({ _tag: "Tick" }))))

  let outcome: Outcome | undefined = yield* apply(transition.actions)
  // One pass per event, until the machine finishes or steps down.
  while (outcome === undefined) {
    const event = yield* Effect.raceFirst(Queue.take(events), Deferred.await(childDefect))
    const nowUs = yield* monotonicUs
    const commitBefore = state.commitLsn
    transition = step(config, state, event, nowUs)
    state = transition.state
    if (state.commitLsn > commitBefore) Queue.offerUnsafe(pumpWake, undefined)
    buffer?.releaseBelow(state.truncateLsn)
    outcome = yield* apply(transition.actions)
  }

  if (outcome._tag === "StepDown") {
    return yield* new ProposerError({ reason: outcome.action.reason, term: state.propTerm, message: outcome.action.message })
  }
  // Let every streaming safekeeper hear the last commit_lsn and truncate_lsn before we go
  // (sync-safekeepers: the next one can then skip recovery); bounded, no reply awaited.
  const finals: Array<Deferred.Deferred<void>> = []
  for (const connection of connections.values()) {
    if (state.safekeepers[connection.slot]?.status !== "Active") continue
    const done = yield* Deferred.make<void>()
    command(connection, { _tag: "Final", done })
    finals.push(done)
  }
  yield* Effect.forEach(finals, Deferred.await, { discard: true }).pipe(Effect.timeoutOption(Duration.micros(BigInt(config.heartbeatIntervalUs))))
  return {
    term: state.propTerm,
    lsn: outcome.lsn,
    termStartLsn: state.election?.propTermStartLsn ?? Lsn(0),
    commitLsn: state.commitLsn,
    truncateLsn: state.truncateLsn
  }
})
