import { Effect, Result, Schema } from "effect"
import { assert } from "../assert.js"
import type { TenantId, Term, TimelineId } from "../acceptor/state.js"
import { type Log, logWarn } from "../io/log.js"
import { MAX_SEND_SIZE_BYTES } from "../protocol/consensus.js"
import { WalDecoder } from "../wal/decoder.js"
import { formatLsn, Lsn, XLOG_BLCKSZ_BYTES } from "../wal/lsn.js"
import { type LinkError, SafekeeperTransport, type WalStream, type WalStreamChunk } from "./transport.js"
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

/** How far back from the term start the proposer looks for the last record (its first xl_prev). */
export const LAST_RECORD_LOOKBACK_BYTES = 8 * XLOG_BLCKSZ_BYTES

/**
 * The start of the last record that ends (aligned) at `endLsn`, read from a peer's WAL from at
 * most LAST_RECORD_LOOKBACK_BYTES before it (never below `lowestLsn`, a record start): the
 * first new record's xl_prev. Undefined when the peer cannot stream it or the last record
 * begins before the lookback window; the caller then writes xl_prev = 0 (see proposer.ts).
 */
export const lastRecordStart = Effect.fn("WalReader.lastRecordStart")(function* (options: {
  readonly tenantId: TenantId
  readonly timelineId: TimelineId
  readonly term: Term
  readonly peer: string
  readonly endLsn: Lsn
  readonly lowestLsn: Lsn
  readonly segmentSizeBytes: number
}): Effect.fn.Return<Lsn | undefined, never, SafekeeperTransport> {
  const { endLsn } = options
  if (endLsn <= options.lowestLsn) return undefined
  const pageStart = Math.floor(Math.max(0, endLsn - LAST_RECORD_LOOKBACK_BYTES) / XLOG_BLCKSZ_BYTES) * XLOG_BLCKSZ_BYTES
  const fromLsn = Lsn(Math.max(pageStart, options.lowestLsn))
  const made = WalDecoder.make({ startLsn: fromLsn, segmentSizeBytes: options.segmentSizeBytes })
  if (Result.isFailure(made)) return undefined
  const decoder = made.success
  let found: Lsn | undefined
  const transport = yield* SafekeeperTransport
  const scanned = yield* Effect.acquireUseRelease(
    transport.streamWal(options.peer, { tenantId: options.tenantId, timelineId: options.timelineId, startLsn: fromLsn, term: options.term }),
    (stream) =>
      Effect.gen(function* () {
        // One pass per chunk; the window is at most LAST_RECORD_LOOKBACK_BYTES + a page.
        while (decoder.position < endLsn && decoder.error === undefined) {
          const chunk = yield* stream.next
          if (chunk === undefined || chunk.bytes.byteLength === 0 || chunk.startLsn !== decoder.position) return false
          const bytes = chunk.bytes.subarray(0, Math.min(chunk.bytes.byteLength, endLsn - chunk.startLsn))
          const count = decoder.scan(bytes)
          const ends = decoder.recordEnds
          for (let i = 0; i < count; i++) if (ends.nextLsn(i) === endLsn) found = ends.startLsn(i)
        }
        return decoder.error === undefined
      }),
    (stream) => stream.close
  ).pipe(Effect.catch(() => Effect.succeed(false)))
  return scanned ? found : undefined
})
