import type { SafekeeperTimelineInfo } from "../io/broker.js"

/**
 * What one timeline heard about its safekeepers from the broker (Neon keeps it in
 * `PeersInfo`): the newest info per safekeeper and when it arrived, by the local monotonic
 * clock. Gossip can be stale, lost or reordered, so a newer arrival never replaces an info
 * that is ahead of it (the same safekeeper's positions only move forward within a term).
 */
export interface HeardPeer {
  readonly info: SafekeeperTimelineInfo
  readonly heardAtUs: number
}

export class PeerTable {
  private readonly peers = new Map<number, HeardPeer>()

  record(info: SafekeeperTimelineInfo, nowUs: number): void {
    const previous = this.peers.get(info.safekeeperId)
    // A duplicate or an older message refreshes the heartbeat but not the positions.
    const newer = previous === undefined || info.term > previous.info.term ||
      (info.term === previous.info.term && info.flushLsn >= previous.info.flushLsn && info.commitLsn >= previous.info.commitLsn)
    this.peers.set(info.safekeeperId, { info: newer ? info : previous.info, heardAtUs: nowUs })
  }

  /** Every safekeeper heard within `timeoutUs` of `nowUs`, by id. */
  fresh(nowUs: number, timeoutUs: number): ReadonlyArray<HeardPeer> {
    return [...this.peers.values()].filter((peer) => nowUs - peer.heardAtUs <= timeoutUs).sort((a, b) => a.info.safekeeperId - b.info.safekeeperId)
  }

  all(): ReadonlyArray<HeardPeer> {
    return [...this.peers.values()].sort((a, b) => a.info.safekeeperId - b.info.safekeeperId)
  }
}
