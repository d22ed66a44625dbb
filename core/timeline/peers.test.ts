import { describe, expect, it } from "vitest"
import type { SafekeeperTimelineInfo } from "../io/broker.js"
import { PeerTable } from "./peers.js"

function info(id: number, fields: Partial<SafekeeperTimelineInfo> = {}): SafekeeperTimelineInfo {
  return {
    safekeeperId: id, tenantId: "t", timelineId: "l", term: 1, lastLogTerm: 1, flushLsn: 100, commitLsn: 100, backupLsn: 0,
    remoteConsistentLsn: 0, peerHorizonLsn: 0, localStartLsn: 0, standbyHorizon: 0, safekeeperConnstr: "", httpConnstr: "",
    availabilityZone: "", ...fields
  }
}

describe("PeerTable", () => {
  it("keeps peers heard within the timeout, by id", () => {
    const table = new PeerTable()
    table.record(info(3), 1_000)
    table.record(info(1), 5_000)
    expect(table.fresh(6_000, 2_000).map((p) => p.info.safekeeperId)).toEqual([1])
    expect(table.fresh(6_000, 10_000).map((p) => p.info.safekeeperId)).toEqual([1, 3])
  })

  it("a stale (reordered) info refreshes the heartbeat but never moves positions back", () => {
    const table = new PeerTable()
    table.record(info(2, { flushLsn: 500, commitLsn: 400 }), 1_000)
    table.record(info(2, { flushLsn: 300, commitLsn: 300 }), 2_000)
    const [peer] = table.fresh(2_000, 0)
    expect(peer?.info.flushLsn).toBe(500)
    expect(peer?.heardAtUs).toBe(2_000)
    // A higher term wins even with lower positions (its WAL was truncated by the new proposer).
    table.record(info(2, { term: 2, flushLsn: 200, commitLsn: 200 }), 3_000)
    expect(table.all()[0]?.info.flushLsn).toBe(200)
  })
})
