import { Effect } from "effect"
import { assert } from "../assert.js"
import { concatBytes } from "../bytes.js"
import { monotonicUs, sleepUs, US_PER_SECOND } from "../io/clock.js"
import { MAX_SEND_SIZE_BYTES } from "../protocol/consensus.js"
import { WalGenerator } from "../wal/generator.js"
import type { Lsn } from "../wal/lsn.js"
import type { PgMajorVersion } from "../wal/page.js"
import type { WalStreamChunk } from "./transport.js"

/**
 * Where the proposer's new WAL comes from: in a compute, the WAL Postgres writes from the term
 * start on (walproposer reads it from pg_wal after the walsender wakes it); in the simulator
 * and `sk proposer`, a synthetic stream of valid records. The proposer asks for the next chunk
 * whenever it wants more; a paced source makes it wait.
 */
export interface WalSource {
  /**
   * The WAL that continues where the previous chunk ended (the first chunk starts at the
   * `startLsn` the source was made with), ending at a record boundary, so every chunk end is a
   * flush_lsn an acceptor can report and a commit_lsn the proposer can reach. `undefined` once
   * the source has ended.
   */
  readonly next: Effect.Effect<WalStreamChunk | undefined>
}

/** Where the elected proposer's WAL starts. */
export interface WalSourceStart {
  /** propTermStartLsn: a record boundary (the donor's flush_lsn, or the initial LSN). */
  readonly startLsn: Lsn
  /**
   * Start of the last record before `startLsn` (the first new record's xl_prev), when the
   * proposer could find it; undefined when it could not, or when no WAL precedes `startLsn`.
   */
  readonly prevLsn: Lsn | undefined
}

/** Made by the proposer once it knows where its term starts. */
export type WalSourceFactory = (start: WalSourceStart) => Effect.Effect<WalSource>

export interface SyntheticWalOptions {
  readonly segmentSizeBytes: number
  readonly systemId: bigint
  readonly pgVersion: PgMajorVersion
  /** Postgres timeline id of the WAL (1 unless a test says otherwise). */
  readonly timelineId?: number
  /** Bytes per second of WAL; 0 or Infinity: as fast as the proposer asks. */
  readonly rateBytesPerSecond: number
  /** Stop once this many bytes were produced (the last record may overshoot it); unbounded when absent. */
  readonly totalBytes?: number
  /** Payload bytes of each logical message (the record is ~60 bytes longer). */
  readonly messageBytes?: number
  /** A chunk holds whole records up to about this many bytes (at least one record). */
  readonly chunkBytesMax?: number
  /**
   * Every N-th record is an XLOG_SWITCH (pg_switch_wal, archive_timeout): the rest of its
   * segment is zero padding and the next record starts the next segment. A switch ends its
   * chunk. Absent: no switches.
   */
  readonly switchEveryRecords?: number
  /**
   * Send the switch record in one chunk and its padding in the next (Neon #11092: the
   * safekeeper knows the switch record ends its segment while the bytes on disk stop short).
   * Not done when the record's chunk reaches `totalBytes` (the padding would never be asked for).
   */
  readonly splitSwitchPadding?: boolean
  /** Told of every switch record generated (sent or not: a term change may drop it). */
  readonly onSwitch?: (switchRecord: SwitchRecord) => void
}

/** An XLOG_SWITCH the source generated: the record's own bytes (page headers included) at its LSNs. */
export interface SwitchRecord {
  readonly startLsn: Lsn
  readonly endLsn: Lsn
  /** The end of its segment, where the next record goes. */
  readonly nextLsn: Lsn
  /** WAL bytes [startLsn, endLsn). */
  readonly bytes: Uint8Array
}

export const SYNTHETIC_MESSAGE_BYTES_DEFAULT = 200
const MESSAGE_PREFIX = "sk-proposer"

/**
 * Valid WAL: logical messages (pg_logical_emit_message) laid out by WalGenerator with page
 * headers, continuation records, an xl_prev chain and CRCs, produced at `rateBytesPerSecond`
 * measured from the source's creation on the Clock. Record payloads are deterministic (they
 * depend on the record's number only), so a seed reproduces the bytes.
 */
export function syntheticWalSource(options: SyntheticWalOptions): WalSourceFactory {
  const messageBytes = options.messageBytes ?? SYNTHETIC_MESSAGE_BYTES_DEFAULT
  const chunkBytesMax = options.chunkBytesMax ?? MAX_SEND_SIZE_BYTES
  const totalBytes = options.totalBytes ?? Number.POSITIVE_INFINITY
  const rate = options.rateBytesPerSecond
  assert(rate >= 0, "a WAL rate is not negative")
  assert(Number.isSafeInteger(messageBytes) && messageBytes >= 0, "message size is a byte count")
  assert(Number.isSafeInteger(chunkBytesMax) && chunkBytesMax > 0, "chunk size is a positive byte count")
  assert(totalBytes >= 0, "a WAL total is not negative")
  const switchEvery = options.switchEveryRecords
  assert(switchEvery === undefined || (Number.isSafeInteger(switchEvery) && switchEvery >= 1), "a switch period is a positive record count")
  const paced = rate > 0 && Number.isFinite(rate)

  return (start) =>
    Effect.gen(function* () {
      const generator = new WalGenerator({
        startLsn: start.startLsn,
        segmentSizeBytes: options.segmentSizeBytes,
        systemId: options.systemId,
        pgVersion: options.pgVersion,
        timelineId: options.timelineId ?? 1,
        prevLsn: start.prevLsn
      })
      const startedUs = yield* monotonicUs
      let producedBytes = 0
      // Padding after a switch costs Postgres nothing to produce: the rate paces the rest.
      let pacedBytes = 0
      let recordNo = 0
      let recordsSinceSwitch = 0
      let pendingPadding: WalStreamChunk | undefined

      const nextChunk = Effect.gen(function* () {
        if (pendingPadding !== undefined) {
          const padding = pendingPadding
          pendingPadding = undefined
          return padding
        }
        if (producedBytes >= totalBytes) return undefined
        const startLsn = generator.insertLsn
        const pieces: Uint8Array[] = []
        let chunkBytes = 0
        // One pass per record; stops at the chunk size, the total or a switch, after at least one record.
        do {
          if (switchEvery !== undefined && ++recordsSinceSwitch >= switchEvery) {
            recordsSinceSwitch = 0
            const record = generator.appendSwitch()
            const recordEnd = record.endLsn - record.fromLsn
            options.onSwitch?.({
              startLsn: record.startLsn,
              endLsn: record.endLsn,
              nextLsn: record.nextLsn,
              bytes: record.bytes.slice(record.startLsn - record.fromLsn, recordEnd)
            })
            pacedBytes += recordEnd
            const split = options.splitSwitchPadding === true && record.nextLsn > record.endLsn &&
              producedBytes + chunkBytes + recordEnd < totalBytes
            if (split) {
              pieces.push(record.bytes.subarray(0, recordEnd))
              pendingPadding = { startLsn: record.endLsn, bytes: record.bytes.subarray(recordEnd) }
            } else {
              pieces.push(record.bytes)
            }
            chunkBytes += record.bytes.byteLength
            break
          }
          const record = generator.appendLogicalMessage(MESSAGE_PREFIX, messagePayload(recordNo++, messageBytes))
          pieces.push(record.bytes)
          chunkBytes += record.bytes.byteLength
          pacedBytes += record.bytes.byteLength
        } while (chunkBytes + messageBytes < chunkBytesMax && producedBytes + chunkBytes < totalBytes)
        producedBytes += chunkBytes
        if (paced) {
          const dueUs = startedUs + Math.ceil((pacedBytes * US_PER_SECOND) / rate)
          const nowUs = yield* monotonicUs
          if (dueUs > nowUs) yield* sleepUs(dueUs - nowUs)
        }
        return { startLsn, bytes: concatBytes(pieces) }
      })
      return { next: nextChunk }
    })
}

/** The payload of record `recordNo`: a pattern that differs by record and position, so misplaced bytes show. */
export function messagePayload(recordNo: number, lengthBytes: number): Uint8Array {
  const bytes = new Uint8Array(lengthBytes)
  for (let i = 0; i < lengthBytes; i++) bytes[i] = (i * 31 + recordNo * 7 + (i >>> 8)) & 0xff
  return bytes
}
