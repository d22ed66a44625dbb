import { Cause, Effect, type Fiber, Queue, Result } from "effect"
import type { Acceptor } from "../acceptor/acceptor.js"
import { assert } from "../assert.js"
import type { Term } from "../acceptor/state.js"
import type { WalStorage } from "../acceptor/wal-storage.js"
import { sleepUs } from "../io/clock.js"
import { Disk } from "../io/disk.js"
import {
  type AcceptorMessage,
  decodeAcceptorMessage,
  decodeProposerMessage,
  encodeAcceptorMessage,
  encodeProposerMessage,
  MAX_SEND_SIZE_BYTES,
  type ProposerMessage
} from "../protocol/consensus.js"
import { formatLsn, Lsn } from "../wal/lsn.js"
import { LinkError, type SafekeeperLink, SafekeeperTransport, type WalStream } from "./transport.js"

/**
 * Test support: a SafekeeperTransport held in memory, each address served by a real Acceptor
 * (core/acceptor/acceptor.ts) over whatever WAL storage and Disk the test gives it. Every
 * message goes through the consensus codecs both ways, so what the proposer sends must be
 * valid on the wire. A connection is two bounded queues and a server fiber that hands the
 * acceptor one message at a time (as one START_WAL_PUSH connection does); an acceptor error
 * ends the connection (a real safekeeper sends ErrorResponse and closes). `streamWal` reads
 * the acceptor's flushed WAL while its term is the one asked for (reference §9).
 *
 * Faults: `setDown` makes connects fail and breaks open links and streams; `setUp` heals it,
 * optionally with a restarted acceptor. A defect in an acceptor (a broken invariant) is kept
 * in `defects` so the test can fail on it, and breaks the link.
 */

/** Messages in flight per direction of a link; a full queue makes the sender wait (TCP backpressure). */
const LINK_QUEUE_LENGTH_MAX = 64
/** How often a WAL stream at its end checks for more. */
const STREAM_POLL_US = 2_000

export interface MemorySafekeeper {
  readonly address: string
  readonly acceptor: Acceptor
  /** The storage the acceptor writes; `streamWal` reads it. */
  readonly wal: WalStorage
  /** The Disk of the safekeeper's current life (the acceptor persists its control file there). */
  readonly disk: Disk["Service"]
}

export interface MemoryTransportOptions {
  /** Delay of every message on a link and every chunk of a stream, µs. */
  readonly latencyUs?: number
}

interface Node {
  safekeeper: MemorySafekeeper
  up: boolean
  readonly links: Set<MemoryLink>
  readonly streams: Set<{ closed: boolean }>
}

class MemoryLink {
  closed = false
  server: Fiber.Fiber<void> | undefined
  constructor(
    readonly address: string,
    readonly outbound: Queue.Queue<ProposerMessage, Cause.Done>,
    readonly inbound: Queue.Queue<AcceptorMessage, LinkError>
  ) {}

  /** The proposer closes: like TCP, what it sent is still delivered and handled; replies are dropped. */
  close(): void {
    if (this.closed) return
    this.closed = true
    Queue.endUnsafe(this.outbound)
    Queue.shutdownUnsafe(this.inbound)
  }

  /** The connection breaks: unsent messages are lost, the proposer's next receive fails with `error`, the server stops. */
  break(error: LinkError): void {
    this.closed = true
    Queue.failCauseUnsafe(this.inbound, Cause.fail(error))
    Queue.shutdownUnsafe(this.outbound)
    this.server?.interruptUnsafe()
  }
}

export class MemoryTransport {
  readonly defects: string[] = []
  readonly stats = { linksOpened: 0, streamsOpened: 0, messagesHandled: 0, walStreamedBytes: 0 }
  private readonly nodes = new Map<string, Node>()
  private readonly latencyUs: number

  readonly service: SafekeeperTransport["Service"]

  constructor(options: MemoryTransportOptions = {}) {
    this.latencyUs = options.latencyUs ?? 0
    this.service = this.makeService()
  }

  add(safekeeper: MemorySafekeeper): void {
    this.nodes.set(safekeeper.address, { safekeeper, up: true, links: new Set(), streams: new Set() })
  }

  safekeeper(address: string): MemorySafekeeper {
    return this.node(address).safekeeper
  }

  /** Connects fail from now on; open links and streams break. */
  setDown(address: string): void {
    const node = this.node(address)
    node.up = false
    for (const link of node.links) link.break(new LinkError({ address, reason: "Closed", message: "safekeeper went down" }))
    node.links.clear()
    for (const stream of node.streams) stream.closed = true
    node.streams.clear()
  }

  /** Serves the address again, with a replacement (a restarted acceptor) if given. */
  setUp(address: string, replacement?: MemorySafekeeper): void {
    const node = this.node(address)
    if (replacement !== undefined) node.safekeeper = replacement
    node.up = true
  }

  private makeService(): SafekeeperTransport["Service"] {
    const self = this
    return SafekeeperTransport.of({
      open: (address) =>
        Effect.gen(function* () {
          const node = self.nodes.get(address)
          if (node === undefined || !node.up) return yield* new LinkError({ address, reason: "Connect", message: "connection refused" })
          self.stats.linksOpened++
          const link = new MemoryLink(
            address,
            yield* Queue.bounded<ProposerMessage, Cause.Done>(LINK_QUEUE_LENGTH_MAX),
            yield* Queue.bounded<AcceptorMessage, LinkError>(LINK_QUEUE_LENGTH_MAX)
          )
          node.links.add(link)
          link.server = yield* Effect.forkDetach(self.serve(node, link))
          const safekeeperLink: SafekeeperLink = {
            address,
            send: (message) =>
              Effect.suspend(() =>
                link.closed
                  ? Effect.fail(new LinkError({ address, reason: "Closed", message: "send on a closed connection" }))
                  : Effect.asVoid(Queue.offer(link.outbound, message))
              ),
            receive: Queue.take(link.inbound),
            close: Effect.sync(() => link.close())
          }
          return safekeeperLink
        }),
      streamWal: (address, options) =>
        Effect.suspend(() => {
          const node = self.nodes.get(address)
          if (node === undefined || !node.up) return Effect.fail(new LinkError({ address, reason: "Connect", message: "connection refused" }))
          self.stats.streamsOpened++
          const handle = { closed: false }
          node.streams.add(handle)
          return Effect.succeed(self.walStream(node, handle, options.startLsn, options.term))
        })
    })
  }

  /** The server side of one link: one message at a time into the acceptor, replies back. */
  private serve(node: Node, link: MemoryLink): Effect.Effect<void> {
    const { address } = link
    const self = this
    const handleOne = Effect.gen(function* () {
      const message = yield* Queue.take(link.outbound)
      if (self.latencyUs > 0) yield* sleepUs(self.latencyUs)
      const decoded = decodeProposerMessage(encodeProposerMessage(message))
      if (Result.isFailure(decoded)) return yield* new LinkError({ address, reason: "Malformed", message: decoded.failure.message })
      const { acceptor, disk } = node.safekeeper
      self.stats.messagesHandled++
      const reply = yield* acceptor.handle(decoded.success).pipe(
        Effect.provideService(Disk, disk),
        Effect.mapError((error) => new LinkError({ address, reason: "Refused", message: `${error._tag}: ${error.message}` }))
      )
      if (reply === undefined) return
      const replyDecoded = decodeAcceptorMessage(encodeAcceptorMessage(reply))
      if (Result.isFailure(replyDecoded)) return yield* new LinkError({ address, reason: "Malformed", message: replyDecoded.failure.message })
      if (self.latencyUs > 0) yield* sleepUs(self.latencyUs)
      if (!link.closed) yield* Queue.offer(link.inbound, replyDecoded.success)
    })
    // Runs until the link breaks, or is closed and every message sent before was handled.
    return Effect.forever(handleOne).pipe(
      Effect.catchIf(Cause.isDone, () => Effect.sync(() => node.links.delete(link))),
      Effect.catchDefect((defect) =>
        Effect.sync(() => {
          this.defects.push(`${address}: ${String(defect)}`)
          return new LinkError({ address, reason: "Closed", message: `acceptor defect: ${String(defect)}` })
        }).pipe(Effect.flatMap((error) => Effect.fail(error)))
      ),
      Effect.catch((error: LinkError) =>
        Effect.sync(() => {
          link.break(error)
          node.links.delete(link)
        })
      )
    )
  }

  private walStream(node: Node, handle: { closed: boolean }, startLsn: Lsn, term: Term): WalStream {
    const address = node.safekeeper.address
    let position = startLsn
    const self = this
    const next = Effect.gen(function* () {
      // One pass per poll while the stream waits at the acceptor's flush_lsn.
      for (;;) {
        if (handle.closed) return undefined
        if (!node.up) return yield* new LinkError({ address, reason: "Closed", message: "safekeeper went down" })
        const { acceptor, wal } = node.safekeeper
        if (acceptor.term() !== term) return undefined
        const flushLsn = acceptor.flushLsn()
        if (position < flushLsn) {
          const segmentSizeBytes = acceptor.persistedState().server.walSegSizeBytes
          const length = Math.min(MAX_SEND_SIZE_BYTES, flushLsn - position, segmentSizeBytes - (position % segmentSizeBytes))
          const bytes = yield* wal.read(position, length).pipe(
            Effect.mapError((error) => new LinkError({ address, reason: "Closed", message: `reading WAL at ${formatLsn(position)}: ${error.message}` }))
          )
          if (bytes.byteLength === 0) return yield* new LinkError({ address, reason: "Closed", message: `no WAL at ${formatLsn(position)}` })
          if (self.latencyUs > 0) yield* sleepUs(self.latencyUs)
          const chunk = { startLsn: position, bytes }
          position = Lsn(position + bytes.byteLength)
          self.stats.walStreamedBytes += bytes.byteLength
          return chunk
        }
        // Waiting at the end: the stream stops once this safekeeper's log is no longer ours.
        if (acceptor.lastLogTerm() !== term) return undefined
        yield* sleepUs(STREAM_POLL_US)
      }
    })
    return {
      next,
      close: Effect.sync(() => {
        handle.closed = true
        node.streams.delete(handle)
      })
    }
  }

  private node(address: string): Node {
    const node = this.nodes.get(address)
    assert(node !== undefined, `a safekeeper at ${address}`)
    return node
  }
}
