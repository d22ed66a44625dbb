import { Effect, Result, Schema } from "effect"
import { assert } from "../assert.js"
import type { TenantId, Term, TimelineId } from "../acceptor/state.js"
import { type Log, logWarn } from "../io/log.js"
import { MAX_SEND_SIZE_BYTES } from "../protocol/consensus.js"
import { WalDecoder } from "../wal/decoder.js"
import { formatLsn, Lsn, XLOG_BLCKSZ_BYTES } from "../wal/lsn.js"
import { LinkError, SafekeeperTransport, type WalStream, type WalStreamChunk } from "./transport.js"
import type { WalBuffer } from "./wal-buffer.js"

/**
 * Reading the elected proposer's log for one safekeeper connection (Neon's neon_walreader,
 * reference §9 and §14): from the proposer's WAL buffer when it still holds the bytes, else
 * from a peer safekeeper that has them, over START_REPLICATION with term = our term. A peer
 * that voted for us and received ProposerElected holds our log up to its flush_lsn, and its
 * stream stops as soon as its term moves on, so what it sends is ours.
 */

export class WalUnavailable extends Schema.TaggedError<WalUnavailable>()("WalUnavailable", {
  lsn: Schema.Number,
  message: Schema.String
}) {}

/** A safekeeper that holds our log up to `endLsn`. */
export interface PeerWal {
  readonly address: string
  readonly endLsn: Lsn
}

export interface WalReaderOptions {
  readonly tenantId: TenantId
  readonly timelineId: TimelineId
  /** Our term: peers stream only while theirs is the same. */
  readonly term: Term
  readonly buffer: WalBuffer
  /** Safekeepers that hold our log past `lsn`, best first; the reader's own safekeeper is not among them. */
  readonly peers: (lsn: Lsn) => ReadonlyArray<PeerWal>
}

export interface WalReader {
  /**
   * WAL from `fromLsn`: at least one byte, at most MAX_SEND_SIZE_BYTES, never past `toLsn`
   * (at most the buffer's end). Fails when neither the buffer nor any peer has `fromLsn`.
   */
  read(fromLsn: Lsn, toLsn: Lsn): Effect.Effect<Uint8Array, WalUnavailable, SafekeeperTransport | Log>
  /** Closes the peer stream, if one is open. */
  readonly close: Effect.Effect<void>
}

export function makeWalReader(options: WalReaderOptions): WalReader {
  const { buffer } = options
  let stream: WalStream | undefined
  /** The peer the open stream comes from. */
  let streamPeer = ""
  /** LSN of the next byte the open stream delivers. */
  let streamLsn = Lsn(0)
  /** Bytes received from the stream and not yet handed out. */
  let pending: WalStreamChunk | undefined

  const closeStream = Effect.suspend(() => {
    const open = stream
    stream = undefined
    pending = undefined
    return open === undefined ? Effect.void : open.close
  })

  const openStream = (fromLsn: Lsn, address: string) =>
    Effect.andThen(
      closeStream,
      // Interruptible while connecting; once open, the stream is remembered (and so closed later).
      Effect.uninterruptibleMask((restore) =>
        Effect.map(
          restore(SafekeeperTransport.use((transport) =>
            transport.streamWal(address, { tenantId: options.tenantId, timelineId: options.timelineId, startLsn: fromLsn, term: options.term })
          )),
          (opened) => {
            stream = opened
            streamLsn = fromLsn
            streamPeer = address
          }
        )
      )
    )

  /** The next chunk of the open stream, checked to continue where the last one ended. */
  const pull = Effect.gen(function* () {
    assert(stream !== undefined, "pull from an open stream")
    const chunk = yield* stream.next
    if (chunk === undefined || chunk.bytes.byteLength === 0) return false
    if (chunk.startLsn !== streamLsn) {
      yield* logWarn("proposer: peer WAL stream out of order", { peer: streamPeer, expected: formatLsn(streamLsn), got: formatLsn(chunk.startLsn) })
      return false
    }
    pending = chunk
    streamLsn = Lsn(chunk.startLsn + chunk.bytes.byteLength)
    return true
  })

  /** Bytes from `fromLsn` out of `pending`, up to `limitLsn`; undefined when pending does not hold `fromLsn`. */
  const takePending = (fromLsn: Lsn, limitLsn: Lsn): Uint8Array | undefined => {
    if (pending === undefined) return undefined
    const pendingEnd = pending.startLsn + pending.bytes.byteLength
    if (fromLsn < pending.startLsn || fromLsn >= pendingEnd) return undefined
    const offset = fromLsn - pending.startLsn
    return pending.bytes.subarray(offset, Math.min(limitLsn, pendingEnd) - pending.startLsn)
  }

  const readFromPeers = (fromLsn: Lsn, limitLsn: Lsn) =>
    Effect.gen(function* () {
      const held = takePending(fromLsn, limitLsn)
      if (held !== undefined) return held
      // The open stream continues at fromLsn: its next chunk holds it.
      if (stream !== undefined && streamLsn === fromLsn) {
        const next = yield* pull.pipe(Effect.catch(() => Effect.succeed(false)))
        const bytes = next ? takePending(fromLsn, limitLsn) : undefined
        if (bytes !== undefined) return bytes
      }
      // Otherwise (re)open, trying each peer once: one pass per peer.
      for (const peer of options.peers(fromLsn)) {
        if (peer.endLsn <= fromLsn) continue
        const opened = yield* openStream(fromLsn, peer.address).pipe(
          Effect.andThen(pull),
          Effect.catch((error: LinkError) =>
            Effect.as(logWarn("proposer: peer WAL stream failed", { peer: peer.address, from: formatLsn(fromLsn), reason: error.reason, error: error.message }), false)
          )
        )
        const bytes = opened ? takePending(fromLsn, limitLsn) : undefined
        if (bytes !== undefined) return bytes
        yield* closeStream
      }
      return yield* new WalUnavailable({
        lsn: fromLsn,
        message: `no safekeeper could stream ${formatLsn(fromLsn)}; the proposer holds WAL from ${formatLsn(buffer.startLsn)}`
      })
    })

  return {
    read: (fromLsn, toLsn) =>
      Effect.suspend(() => {
        assert(fromLsn < toLsn && toLsn <= buffer.endLsn, `read [${formatLsn(fromLsn)}, ${formatLsn(toLsn)}) within the proposer's WAL (to ${formatLsn(buffer.endLsn)})`)
        const limitLsn = Lsn(Math.min(toLsn, fromLsn + MAX_SEND_SIZE_BYTES))
        if (fromLsn >= buffer.startLsn) return Effect.as(closeStream, buffer.read(fromLsn, limitLsn))
        return readFromPeers(fromLsn, Lsn(Math.min(limitLsn, buffer.startLsn)))
      }),
    close: closeStream
  }
}

/** How far back from the term start the proposer first looks for the last record (its first xl_prev). */
export const LAST_RECORD_LOOKBACK_BYTES = 8 * XLOG_BLCKSZ_BYTES
/** Each retry looks this many times further back, down to the timeline start. */
const LOOKBACK_GROWTH = 8

/**
 * The start of the record that ends at `endLsn` (the term start), read from a peer holding our
 * log (Neon's compute knows it from its basebackup). The first new record's xl_prev must be
 * exactly this: a safekeeper whose decoder knows the previous record refuses anything else.
 * Looks back a window, then wider ones down to `lowestLsn`; undefined only when no record ends
 * at `endLsn` at all (the term starts at the timeline's first record). A failed stream is a
 * LinkError: the caller retries or steps down, never guesses.
 */
export const lastRecordStart = Effect.fn("WalReader.lastRecordStart")(function* (options: {
  readonly tenantId: TenantId
  readonly timelineId: TimelineId
  readonly term: Term
  readonly peer: string
  readonly endLsn: Lsn
  readonly lowestLsn: Lsn
  readonly segmentSizeBytes: number
}): Effect.fn.Return<Lsn | undefined, LinkError | WalUnavailable, SafekeeperTransport> {
  const { endLsn } = options
  if (endLsn <= options.lowestLsn) return undefined
  const transport = yield* SafekeeperTransport
  // One pass per window; windows grow geometrically, so a handful reach any timeline start.
  for (let lookbackBytes = LAST_RECORD_LOOKBACK_BYTES; ; lookbackBytes *= LOOKBACK_GROWTH) {
    const pageStart = Math.floor(Math.max(0, endLsn - lookbackBytes) / XLOG_BLCKSZ_BYTES) * XLOG_BLCKSZ_BYTES
    const fromLsn = Lsn(Math.max(pageStart, options.lowestLsn))
    const made = WalDecoder.make({ startLsn: fromLsn, segmentSizeBytes: options.segmentSizeBytes })
    if (Result.isFailure(made)) return yield* new WalUnavailable({ lsn: fromLsn, message: `cannot decode from ${formatLsn(fromLsn)}: ${made.failure.message}` })
    const decoder = made.success
    let found: Lsn | undefined
    yield* Effect.acquireUseRelease(
      transport.streamWal(options.peer, { tenantId: options.tenantId, timelineId: options.timelineId, startLsn: fromLsn, term: options.term }),
      (stream) =>
        Effect.gen(function* () {
          // One pass per chunk, until the decoder reaches the term start.
          while (decoder.position < endLsn && decoder.error === undefined) {
            const chunk = yield* stream.next
            if (chunk === undefined || chunk.bytes.byteLength === 0 || chunk.startLsn !== decoder.position) {
              return yield* new LinkError({ address: options.peer, reason: "Closed", message: `WAL stream ended at ${formatLsn(decoder.position)} before ${formatLsn(endLsn)}` })
            }
            const bytes = chunk.bytes.subarray(0, Math.min(chunk.bytes.byteLength, endLsn - chunk.startLsn))
            const count = decoder.scan(bytes)
            const ends = decoder.recordEnds
            for (let i = 0; i < count; i++) if (ends.nextLsn(i) === endLsn) found = ends.startLsn(i)
          }
        }),
      (stream) => stream.close
    )
    if (decoder.error !== undefined) {
      // The zero padding after an XLOG_SWITCH has no page headers (PostgreSQL 11+ zeroes them
      // too): a window that starts there cannot decode, but one from its segment's start can.
      const retryLsn = Math.max(fromLsn - (fromLsn % options.segmentSizeBytes), options.lowestLsn)
      if (decoder.error.lsn === fromLsn && retryLsn < fromLsn) {
        // The loop grows the window by LOOKBACK_GROWTH: the next one starts at retryLsn.
        lookbackBytes = (endLsn - retryLsn) / LOOKBACK_GROWTH
        continue
      }
      return yield* new WalUnavailable({ lsn: decoder.position, message: `the peer's WAL does not decode before the term start: ${String(decoder.error)}` })
    }
    if (found !== undefined || fromLsn <= options.lowestLsn) return found
  }
})
