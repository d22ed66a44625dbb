// Goal: a new timeline's state follows reference §4 ("Creation") and passes the persisted-state
// rules, so it can be written as a control file at once. Method: both creation forms.
import { describe, expect, test } from "vitest"
import { Lsn } from "../wal/lsn.js"
import { encodeControlFile, decodeControlFile } from "./control-file.js"
import { EMPTY_MEMBER_CONFIGURATION, newTimelineState, persistedStateProblems, TenantId, Term, TimelineId } from "./state.js"

const base = {
  tenantId: TenantId("0123456789abcdef0123456789abcdef"),
  timelineId: TimelineId("fedcba9876543210fedcba9876543210"),
  mconf: EMPTY_MEMBER_CONFIGURATION,
  server: { pgVersion: 150004, systemId: 42n, walSegSizeBytes: 16 * 1024 * 1024 }
}

describe("newTimelineState", () => {
  test("implicit creation (START_WAL_PUSH): start = commit = 0, empty history, term 0", () => {
    const state = newTimelineState({ ...base, startLsn: Lsn(0), commitLsn: Lsn(0) })
    expect(state.acceptorState).toEqual({ term: Term(0), termHistory: [] })
    expect([state.timelineStartLsn, state.localStartLsn, state.commitLsn, state.backupLsn, state.peerHorizonLsn, state.remoteConsistentLsn]).toEqual([0, 0, 0, 0, 0, 0])
    expect(persistedStateProblems(state)).toEqual([])
  })

  test("creation with a start: history (0, start) once something is committed; positions at start", () => {
    const state = newTimelineState({ ...base, startLsn: Lsn(0x1000028), commitLsn: Lsn(0x1000100) })
    expect(state.acceptorState.termHistory).toEqual([{ term: Term(0), lsn: Lsn(0x1000028) }])
    expect(state.commitLsn).toBe(0x1000100)
    expect(state.timelineStartLsn).toBe(0x1000028)
    expect(state.localStartLsn).toBe(0x1000028)
    expect(state.backupLsn).toBe(0x1000028)
    expect(state.peerHorizonLsn).toBe(0x1000028)
    expect(state.remoteConsistentLsn).toBe(0)
    expect(state.evictionState).toEqual({ _tag: "Present" })
    const decoded = decodeControlFile(encodeControlFile(state))
    expect(decoded._tag).toBe("Success")
  })

  test("a commit below the start, or no segment size, is a programmer error", () => {
    expect(() => newTimelineState({ ...base, startLsn: Lsn(100), commitLsn: Lsn(50) })).toThrow(/commit_lsn/)
    expect(() => newTimelineState({ ...base, server: { ...base.server, walSegSizeBytes: 0 }, startLsn: Lsn(0), commitLsn: Lsn(0) })).toThrow(/segment size/)
  })
})
