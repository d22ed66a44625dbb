// Goal: the offloader election of reference §10 is deterministic across safekeepers and picks
// only a live, caught-up candidate holding WAL from backup_lsn on; isBackupRequired follows
// the same section. Method: fast-check over peer tables (ids, commit/start LSNs, heard times,
// duplicates, orders); each safekeeper is fed the same table in its own order, and the pick is
// checked against the rules; known picks computed by hand from Neon's little-endian u128.
import fc from "fast-check"
import { describe, expect, test } from "vitest"
import { NodeId } from "../acceptor/state.js"
import type { SafekeeperTimelineInfo } from "../io/broker.js"
import { electOffloader, type HeardPeer, isBackupRequired, timelineIdAsU128 } from "./offloader.js"

const TIMELINE = "fedcba9876543210fedcba9876543210"
const MIB = 1024 * 1024

function info(id: number, fields: Partial<SafekeeperTimelineInfo> = {}): SafekeeperTimelineInfo {
  return {
    safekeeperId: id, tenantId: "0123456789abcdef0123456789abcdef", timelineId: TIMELINE, term: 1, lastLogTerm: 1,
    flushLsn: 0, commitLsn: 0, backupLsn: 0, remoteConsistentLsn: 0, peerHorizonLsn: 0, localStartLsn: 0,
    standbyHorizon: 0, safekeeperConnstr: `sk${id}:5454`, httpConnstr: "", availabilityZone: "", ...fields
  }
}

const base = { timelineId: TIMELINE, nowUs: 10_000_000, heartbeatTimeoutUs: 5_000_000, maxOffloaderLagBytes: 128 * MIB, backupLsn: 0 }

const arbPeer: fc.Arbitrary<HeardPeer> = fc.record({
  id: fc.integer({ min: 1, max: 8 }),
  commitLsn: fc.integer({ min: 0, max: 512 * MIB }),
  localStartLsn: fc.constantFrom(0, 0, 16 * MIB, 64 * MIB),
  heardAtUs: fc.integer({ min: 0, max: 10_000_000 })
}).map((p) => ({ info: info(p.id, { commitLsn: p.commitLsn, localStartLsn: p.localStartLsn }), heardAtUs: p.heardAtUs }))
const arbElection = fc.record({
  peers: fc.array(arbPeer, { maxLength: 10 }),
  backupLsn: fc.constantFrom(0, 16 * MIB, 32 * MIB, 128 * MIB),
  timelineId: fc.uint8Array({ minLength: 16, maxLength: 16 }).map((b) => Buffer.from(b).toString("hex")),
  maxOffloaderLagBytes: fc.constantFrom(0, 16 * MIB, 128 * MIB)
})

/** The newest entry per node, as the election must read the table. */
function newestPerNode(peers: ReadonlyArray<HeardPeer>): Map<number, HeardPeer> {
  const newest = new Map<number, HeardPeer>()
  for (const peer of peers) {
    const known = newest.get(peer.info.safekeeperId)
    if (known === undefined || peer.heardAtUs > known.heardAtUs) newest.set(peer.info.safekeeperId, peer)
  }
  return newest
}

describe("electOffloader", () => {
  test("every safekeeper fed the same peer table elects the same node, whatever its order", () => {
    fc.assert(fc.property(arbElection, fc.array(fc.integer({ min: 1, max: 8 }), { minLength: 1, maxLength: 5 }), fc.infiniteStream(fc.nat()),
      (election, selves, randomness) => {
        const picks = selves.map((selfId) => {
          const shuffled = [...election.peers].map((peer) => ({ peer, key: randomness.next().value })).sort((a, b) => a.key - b.key).map((x) => x.peer)
          return electOffloader({ ...base, ...election, selfId: NodeId(selfId), peers: shuffled })
        })
        return picks.every((pick) => pick === picks[0])
      }))
  })

  test("the pick is live, holds WAL from backup_lsn, and is caught up; no candidates, no pick", () => {
    fc.assert(fc.property(arbElection, (election) => {
      const pick = electOffloader({ ...base, ...election, selfId: NodeId(1) })
      const candidates = [...newestPerNode(election.peers).values()]
        .filter((p) => base.nowUs - p.heardAtUs <= base.heartbeatTimeoutUs && p.info.localStartLsn <= election.backupLsn)
      if (candidates.length === 0) return pick === undefined
      if (pick === undefined) return false
      const chosen = candidates.find((p) => p.info.safekeeperId === pick)
      const maxCommit = Math.max(...candidates.map((p) => p.info.commitLsn))
      return chosen !== undefined && chosen.info.commitLsn >= maxCommit - election.maxOffloaderLagBytes
    }))
  })

  test("a stale peer, a peer that started after backup_lsn, and a lagging peer are never picked", () => {
    const peers: HeardPeer[] = [
      { info: info(1, { commitLsn: 300 * MIB }), heardAtUs: 4_000_000 }, // heard 6 s ago: stale
      { info: info(2, { commitLsn: 300 * MIB, localStartLsn: 32 * MIB }), heardAtUs: 9_000_000 }, // joined after backup_lsn
      { info: info(3, { commitLsn: 100 * MIB }), heardAtUs: 9_000_000 }, // 200 MiB behind node 4
      { info: info(4, { commitLsn: 300 * MIB }), heardAtUs: 9_500_000 }
    ]
    expect(electOffloader({ ...base, selfId: NodeId(3), backupLsn: 16 * MIB, peers })).toBe(4)
    // Only the newest entry of a node counts: an old entry heard in time does not revive it.
    const revived = [...peers, { info: info(1, { commitLsn: 300 * MIB }), heardAtUs: 3_000_000 }]
    expect(electOffloader({ ...base, selfId: NodeId(3), backupLsn: 16 * MIB, peers: revived })).toBe(4)
    expect(electOffloader({ ...base, selfId: NodeId(3), backupLsn: 16 * MIB, peers: [] })).toBeUndefined()
  })

  test("the pick is caughtup[timeline id as little-endian u128 % count], sorted by id", () => {
    // 0x01 in the first byte (LE: the lowest) and zeros elsewhere is 1; big-endian would be 2^120.
    const one = "01000000000000000000000000000000"
    expect(timelineIdAsU128(one)).toBe(1n)
    expect(timelineIdAsU128("000000000000000000000000000000ff")).toBe(0xffn << 120n)
    const peers = [7, 3, 5].map((id) => ({ info: info(id), heardAtUs: 9_000_000 }))
    // Sorted [3, 5, 7]: LE 1 % 3 = 1 → node 5; LE 2 % 3 = 2 → node 7.
    expect(electOffloader({ ...base, selfId: NodeId(3), timelineId: one, peers })).toBe(5)
    expect(electOffloader({ ...base, selfId: NodeId(3), timelineId: "02000000000000000000000000000000", peers })).toBe(7)
    // Where byte order matters: over [3, 5], LE 2^120 % 2 = 0 → node 3, while BE 1 % 2 = 1 would pick node 5.
    const leOnly = "00000000000000000000000000000001"
    expect(electOffloader({ ...base, selfId: NodeId(3), timelineId: leOnly, peers: peers.filter((p) => p.info.safekeeperId !== 7) })).toBe(3)
  })
})

describe("isBackupRequired", () => {
  test("while a compute streams, or while a whole committed segment is not backed up", () => {
    const segmentSizeBytes = 16 * MIB
    expect(isBackupRequired({ computeCount: 1, commitLsn: 100, backupLsn: 100, segmentSizeBytes })).toBe(true)
    expect(isBackupRequired({ computeCount: 0, commitLsn: 16 * MIB - 1, backupLsn: 0, segmentSizeBytes })).toBe(false)
    expect(isBackupRequired({ computeCount: 0, commitLsn: 16 * MIB, backupLsn: 0, segmentSizeBytes })).toBe(true)
    expect(isBackupRequired({ computeCount: 0, commitLsn: 40 * MIB, backupLsn: 32 * MIB, segmentSizeBytes })).toBe(false)
    expect(isBackupRequired({ computeCount: 0, commitLsn: 48 * MIB + 8, backupLsn: 32 * MIB, segmentSizeBytes })).toBe(true)
  })
})
