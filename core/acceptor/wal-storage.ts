import type { Effect } from "effect"
import { Schema } from "effect"
import type { DiskError } from "../io/disk.js"
import type { Lsn } from "../wal/lsn.js"

/**
 * What the acceptor needs from WAL storage (Neon's `wal_storage::Storage`, reference §7).
 * The segment store implements it on a Disk; tests may implement it in memory. The acceptor
 * rules are written only against this interface.
 */
export const WalStorageErrorReason = Schema.Literals([
  "Rewrite", // a write starts below write_lsn
  "Gap", // a write starts above write_lsn (and write_lsn is not 0)
  "TruncationPending", // a write arrived before the truncate that every load requires
  "TruncateAboveWrite", // truncate end above write_record_lsn
  "NoOpenSegment", // flush with nothing open (neon#11605)
  "Stopped", // an fsync failed earlier: the timeline is fail-stopped and never retries
  "EndBelowCommit", // on load, the WAL found ends below the persisted commit_lsn
  "Corrupt", // files on disk contradict each other
  "InvalidWal", // written bytes are not valid WAL, or an LSN is not a record boundary (nothing written)
  "Removed", // a read below what local disk keeps (removed after backup) with no object storage to read it from
  "Offloaded" // the timeline is evicted: its WAL is in object storage only (take a residence guard first)
])
export type WalStorageErrorReason = typeof WalStorageErrorReason.Type

export class WalStorageError extends Schema.TaggedError<WalStorageError>()("WalStorageError", {
  reason: WalStorageErrorReason,
  message: Schema.String
}) {}

export interface WalPositions {
  /** Bytes written (not necessarily durable). */
  readonly writeLsn: Lsn
  /** Bytes fsynced. */
  readonly flushLsn: Lsn
  /** End of the last complete record written. */
  readonly writeRecordLsn: Lsn
  /** End of the last complete record fsynced: the flush_lsn the acceptor reports. */
  readonly flushRecordLsn: Lsn
}

export interface WalStorage {
  /** Current positions (read synchronously: they live in memory). */
  positions(): WalPositions
  /** Writes `bytes` at `startLsn` (must equal write_lsn unless write_lsn is 0); no fsync. */
  write(startLsn: Lsn, bytes: Uint8Array): Effect.Effect<void, WalStorageError | DiskError>
  /** fsyncs everything written; afterwards flush == write for both pairs. */
  readonly flush: Effect.Effect<void, WalStorageError | DiskError>
  /** Drops WAL above `endLsn` durably (never called below commit: the acceptor asserts it). */
  truncate(endLsn: Lsn): Effect.Effect<void, WalStorageError | DiskError>
  /** Writes the generated prefix of the first segment (headers), not fsynced. */
  initializeFirstSegment(startLsn: Lsn): Effect.Effect<void, WalStorageError | DiskError>
  /** Removes segment files with segment number ≤ `segmentNo`. */
  removeUpTo(segmentNo: number): Effect.Effect<void, WalStorageError | DiskError>
  /**
   * Reads WAL bytes [startLsn, startLsn + length) still on disk; never crosses a segment. Returns
   * fewer bytes at a segment end or at write_lsn, and none at or past write_lsn.
   */
  read(startLsn: Lsn, length: number): Effect.Effect<Uint8Array, WalStorageError | DiskError>
  readonly close: Effect.Effect<void>
}
