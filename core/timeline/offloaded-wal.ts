import { Effect } from "effect"
import { type WalPositions, type WalStorage, WalStorageError } from "../acceptor/wal-storage.js"
import { Lsn } from "../wal/lsn.js"

/**
 * The WAL storage of an evicted timeline (Neon's `EvictionState::Offloaded`): nothing on local
 * disk, every position at the offloaded flush_lsn. Its acceptor still answers questions about
 * state (term, commit, flush) and takes broker info; anything that touches WAL first takes a
 * residence guard, which brings the timeline back. Reaching WAL here is refused, never fatal.
 */
export class OffloadedWal implements WalStorage {
  constructor(readonly flushLsn: Lsn) {}

  positions(): WalPositions {
    return { writeLsn: this.flushLsn, flushLsn: this.flushLsn, writeRecordLsn: this.flushLsn, flushRecordLsn: this.flushLsn }
  }

  private refuse(operation: string) {
    return Effect.fail(new WalStorageError({ reason: "Offloaded", message: `${operation}: the timeline is evicted (its WAL is in object storage only)` }))
  }

  write(): Effect.Effect<void, WalStorageError> {
    return this.refuse("write")
  }

  readonly flush: Effect.Effect<void, WalStorageError> = Effect.void

  truncate(): Effect.Effect<void, WalStorageError> {
    return this.refuse("truncate")
  }

  initializeFirstSegment(): Effect.Effect<void, WalStorageError> {
    return this.refuse("initialize")
  }

  removeUpTo(): Effect.Effect<void, WalStorageError> {
    return Effect.void
  }

  read(): Effect.Effect<Uint8Array, WalStorageError> {
    return this.refuse("read")
  }

  readonly close: Effect.Effect<void> = Effect.void
}
