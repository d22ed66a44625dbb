import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { EMPTY_MEMBER_CONFIGURATION, newTimelineState, type PersistedState, TenantId, TimelineId } from "../acceptor/state.js"
import { Lsn } from "../wal/lsn.js"
import { removableUpTo, removalHorizon } from "./remove-wal.js"

const SEG = 16 * 1024 * 1024

function state(fields: Partial<Pick<PersistedState, "commitLsn" | "backupLsn" | "remoteConsistentLsn">>): PersistedState {
  const base = newTimelineState({
    tenantId: TenantId("0".repeat(32)),
    timelineId: TimelineId("1".repeat(32)),
    mconf: EMPTY_MEMBER_CONFIGURATION,
    server: { pgVersion: 150000, systemId: 1n, walSegSizeBytes: SEG },
    startLsn: Lsn(0),
    commitLsn: Lsn(0),
    creationTs: { secsSinceEpoch: 0, nanosSinceEpoch: 0 }
  })
  return { ...base, ...fields }
}

describe("WAL removal horizon", () => {
  it("is the minimum of the persisted pageserver, backup and commit positions and flush_lsn", () => {
    const persisted = state({ commitLsn: Lsn(5 * SEG + 10), backupLsn: Lsn(3 * SEG), remoteConsistentLsn: Lsn(4 * SEG + 1) })
    expect(removalHorizon({ persisted, flushLsn: Lsn(6 * SEG), walsenderLsns: [] })).toBe(3 * SEG)
    expect(removalHorizon({ persisted: { ...persisted, backupLsn: Lsn(9 * SEG) }, flushLsn: Lsn(6 * SEG), walsenderLsns: [] })).toBe(4 * SEG + 1)
    expect(removalHorizon({ persisted: { ...persisted, backupLsn: Lsn(9 * SEG) }, flushLsn: Lsn(6 * SEG), walsenderLsns: [Lsn(2 * SEG + 5)] })).toBe(2 * SEG + 5)
  })

  it("keeps everything without a backup (backup_lsn 0) or a pageserver (remote_consistent_lsn 0)", () => {
    expect(removalHorizon({ persisted: state({ commitLsn: Lsn(5 * SEG), backupLsn: Lsn(0), remoteConsistentLsn: Lsn(5 * SEG) }), flushLsn: Lsn(5 * SEG), walsenderLsns: [] })).toBe(0)
    expect(removalHorizon({ persisted: state({ commitLsn: Lsn(5 * SEG), backupLsn: Lsn(5 * SEG), remoteConsistentLsn: Lsn(0) }), flushLsn: Lsn(5 * SEG), walsenderLsns: [] })).toBe(0)
  })

  it("removes whole segments strictly below the horizon's segment", () => {
    expect(removableUpTo(Lsn(0), SEG)).toBeUndefined()
    expect(removableUpTo(Lsn(SEG - 1), SEG)).toBeUndefined()
    expect(removableUpTo(Lsn(SEG), SEG)).toBe(0)
    expect(removableUpTo(Lsn(3 * SEG + 7), SEG)).toBe(2)
  })

  it("never removes a segment holding WAL at or above any bound", () => {
    fc.assert(fc.property(
      fc.array(fc.integer({ min: 0, max: 40 * SEG }), { minLength: 4, maxLength: 4 }),
      fc.array(fc.integer({ min: 0, max: 40 * SEG }), { maxLength: 3 }),
      ([commit, backup, remote, flush], senders) => {
        const persisted = state({ commitLsn: Lsn(commit!), backupLsn: Lsn(backup!), remoteConsistentLsn: Lsn(remote!) })
        const horizon = removalHorizon({ persisted, flushLsn: Lsn(flush!), walsenderLsns: senders.map(Lsn) })
        const upTo = removableUpTo(horizon, SEG)
        if (upTo === undefined) return
        const removedEnd = (upTo + 1) * SEG
        for (const bound of [commit!, backup!, remote!, flush!, ...senders.filter((s) => s > 0)]) expect(removedEnd).toBeLessThanOrEqual(bound)
      }
    ))
  })
})
