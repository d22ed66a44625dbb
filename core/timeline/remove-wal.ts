import type { PersistedState } from "../acceptor/state.js"
import { Lsn, segmentNoOf } from "../wal/lsn.js"

/**
 * WAL removal (Neon's `remove_wal.rs`, reference §10): segments wholly below the horizon, the
 * lowest LSN some consumer may still need from local disk. Only persisted values count: after
 * a crash the node must not find itself short of WAL that its control file says it still
 * needs. The pageserver (remote_consistent_lsn), object storage (backup_lsn) and the quorum
 * (commit_lsn, flush_lsn) all bound it; lagging walsenders too with `--walsenders-keep-horizon`.
 */
export interface RemovalInput {
  readonly persisted: PersistedState
  readonly flushLsn: Lsn
  /** last received LSNs of walsenders (standbys, peers) when they keep the horizon. */
  readonly walsenderLsns: ReadonlyArray<Lsn>
}

export function removalHorizon(input: RemovalInput): Lsn {
  const { persisted } = input
  // backup_lsn always counts, as in Neon: with backup disabled here, a peer's uploads (heard
  // through the broker) still raise it; with no backup anywhere nothing is removed.
  let horizon = Math.min(persisted.remoteConsistentLsn, persisted.backupLsn, persisted.commitLsn, input.flushLsn)
  for (const lsn of input.walsenderLsns) if (lsn > 0) horizon = Math.min(horizon, lsn)
  return Lsn(horizon)
}

/**
 * The highest segment number that may be removed (segments ≤ it go), or undefined when none
 * may: the segment holding the horizon stays, and so does every segment a reader may still
 * start in.
 */
export function removableUpTo(horizon: Lsn, segmentSizeBytes: number): number | undefined {
  const segmentNo = segmentNoOf(horizon, segmentSizeBytes)
  return segmentNo === 0 ? undefined : segmentNo - 1
}
