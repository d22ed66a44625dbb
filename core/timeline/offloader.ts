import { assert } from "../assert.js"
import { NodeId } from "../acceptor/state.js"
import type { SafekeeperTimelineInfo } from "../io/broker.js"
import { US_PER_SECOND } from "../io/clock.js"
import { segmentNoOf } from "../wal/lsn.js"

/**
 * Who uploads a timeline's WAL (Neon's `wal_backup::determine_offloader`, reference §10). Every
 * safekeeper decides alone from the broker data it has heard, with no coordination: fed the
 * same peer table, all of them pick the same node, and when their tables differ (gossip lags)
 * two may upload for a while, which is harmless because uploads of a segment are identical
 * PUTs of committed WAL. Plain functions: the manager calls them on every pass.
 */

/** `--heartbeat-timeout`: a peer not heard from for this long is not a candidate. */
export const DEFAULT_HEARTBEAT_TIMEOUT_US = 5 * US_PER_SECOND
/** `--max-offloader-lag`: a candidate this far behind the most advanced commit_lsn is not caught up. */
export const DEFAULT_MAX_OFFLOADER_LAG_BYTES = 128 * 1024 * 1024

export interface HeardPeer {
  readonly info: SafekeeperTimelineInfo
  /** When this safekeeper last heard `info` (its own clock). */
  readonly heardAtUs: number
}

export interface OffloaderElection {
  /** Who asks (the caller runs the backup iff the pick is this id); the pick never depends on it. */
  readonly selfId: NodeId
  /** 32 hex digits. */
  readonly timelineId: string
  readonly nowUs: number
  readonly heartbeatTimeoutUs: number
  readonly maxOffloaderLagBytes: number
  /** This safekeeper's backup_lsn: a candidate must hold WAL from there on. */
  readonly backupLsn: number
  /** What the broker said about each safekeeper of the timeline (self included, as heard back). */
  readonly peers: ReadonlyArray<HeardPeer>
}

/**
 * The offloader, or undefined when nobody qualifies. Candidates: heard within the heartbeat
 * timeout, and holding WAL from backup_lsn on (local_start_lsn ≤ backup_lsn: a safekeeper that
 * joined later cannot upload what it never had). Caught up: commit_lsn within the lag of the
 * highest candidate commit_lsn. Pick caughtup[timeline_id as u128 % count], sorted by id, so
 * timelines spread over the safekeepers while each timeline sticks to one.
 */
export function electOffloader(election: OffloaderElection): NodeId | undefined {
  assert(election.heartbeatTimeoutUs >= 0, "heartbeat timeout is not negative")
  assert(election.maxOffloaderLagBytes >= 0, "offloader lag is not negative")
  // The newest info per node: the table may hold duplicates when the broker redelivers.
  const newest = new Map<number, HeardPeer>()
  for (const peer of election.peers) {
    const known = newest.get(peer.info.safekeeperId)
    if (known === undefined || peer.heardAtUs > known.heardAtUs) newest.set(peer.info.safekeeperId, peer)
  }
  const candidates = [...newest.values()]
    .filter((peer) => election.nowUs - peer.heardAtUs <= election.heartbeatTimeoutUs && peer.info.localStartLsn <= election.backupLsn)
    .map((peer) => peer.info)
  if (candidates.length === 0) return undefined
  const maxCommitLsn = Math.max(...candidates.map((info) => info.commitLsn))
  const caughtUp = candidates
    .filter((info) => info.commitLsn >= maxCommitLsn - election.maxOffloaderLagBytes)
    .map((info) => info.safekeeperId)
    .sort((a, b) => a - b)
  assert(caughtUp.length > 0, "the most advanced candidate is caught up")
  const index = Number(timelineIdAsU128(election.timelineId) % BigInt(caughtUp.length))
  return NodeId(caughtUp[index]!)
}

export interface BackupNeed {
  /** Computes streaming to this safekeeper right now. */
  readonly computeCount: number
  readonly commitLsn: number
  readonly backupLsn: number
  readonly segmentSizeBytes: number
}

/**
 * Whether the timeline wants an offloader (reference §10): while a compute streams (more WAL is
 * coming), or while a whole committed segment is not in object storage yet.
 */
export function isBackupRequired(need: BackupNeed): boolean {
  return need.computeCount > 0 ||
    segmentNoOf(need.commitLsn, need.segmentSizeBytes) > segmentNoOf(need.backupLsn, need.segmentSizeBytes)
}

/**
 * Neon's `u128::from(TimelineId)`: the id's 16 bytes (in the order its hex text shows them)
 * read little-endian, so the pick matches Neon's for the same timeline and peers.
 */
export function timelineIdAsU128(timelineId: string): bigint {
  assert(/^[0-9a-fA-F]{32}$/.test(timelineId), "a timeline id is 32 hex digits")
  let value = 0n
  for (let byte = 15; byte >= 0; byte--) value = (value << 8n) | BigInt(parseInt(timelineId.slice(byte * 2, byte * 2 + 2), 16))
  return value
}
