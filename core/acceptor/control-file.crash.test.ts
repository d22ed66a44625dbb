// Goal: saving the control file is atomic under the simulator's full crash model (DESIGN.md §5):
// a crash before any Disk operation of a save leaves exactly the old or exactly the new state,
// never a half-written, missing or corrupt file; once the save returned, only the new state.
// Method: on SimDisk, persist an old state durably, then persist a new one and crash before its
// k-th Disk operation, for every k and many kernel seeds (different subsets of unsynced writes
// survive, torn at sectors, reordered; renames without a directory fsync may be undone); reload
// in a new life and compare. A control run shows the model is strong enough to break a save that
// skips its fsyncs.
import { Effect, Exit } from "effect"
import { describe, expect, test } from "vitest"
import { DiskLab } from "../../sim/testing.js"
import { Disk } from "../io/disk.js"
import { Lsn } from "../wal/lsn.js"
import { loadControlFile, persistControlFile } from "./control-file.js"
import { EMPTY_MEMBER_CONFIGURATION, type PersistedState, TenantId, Term, TimelineId, UNIX_EPOCH } from "./state.js"

const DIRECTORY = "/tenant/timeline"
const SEEDS = 40

function stateWith(term: number, commitLsn: number): PersistedState {
  return {
    tenantId: TenantId("cf0480929707ee75372337efaa5ecf96"),
    timelineId: TimelineId("112ded66422aa5e953e5440fa5427ac4"),
    mconf: EMPTY_MEMBER_CONFIGURATION,
    acceptorState: { term: Term(term), termHistory: [{ term: Term(term), lsn: Lsn(0x1000000) }] },
    server: { pgVersion: 150004, systemId: 7_000_000_000_000_000_001n, walSegSizeBytes: 16 * 1024 * 1024 },
    proposerUuid: "00112233445566778899aabbccddeeff",
    timelineStartLsn: Lsn(0x1000000),
    localStartLsn: Lsn(0x1000000),
    commitLsn: Lsn(commitLsn),
    backupLsn: Lsn(0x1000000),
    peerHorizonLsn: Lsn(0x1000000),
    remoteConsistentLsn: Lsn(0x1000000),
    // A long partial-backup list makes the file span several sectors, so tearing matters.
    partialBackup: {
      segments: Array.from({ length: 12 }, (_, i) => ({
        status: i === 11 ? "Uploaded" as const : "Deleting" as const,
        name: `000000010000000000000001_${term}_${i.toString().padStart(60, "0")}_sk1.partial`,
        commitLsn: Lsn(0x1000000),
        flushLsn: Lsn(0x1000000),
        term: Term(term)
      }))
    },
    evictionState: { _tag: "Present" },
    creationTs: UNIX_EPOCH
  }
}

const OLD = stateWith(3, 0x1100000)
const NEW = stateWith(4, 0x1200000)

/** The timeline directory exists durably and holds the old state. */
const setUp = Effect.gen(function* () {
  const disk = yield* Disk
  yield* disk.mkdir(DIRECTORY)
  yield* disk.syncDirectory("/")
  yield* disk.syncDirectory("/tenant")
  yield* persistControlFile(DIRECTORY, OLD, { noSync: false })
})

describe("control file saves under the simulator's crash model", () => {
  test("a crash before any Disk operation of a save leaves the old or the new state", () => {
    let sawOld = 0
    let sawNew = 0
    let points = 0
    for (let seed = 0; seed < SEEDS; seed++) {
      // Count the save's Disk operations on a clean run, then crash before each of them.
      const base = new DiskLab(seed)
      const prepared = base.run(setUp)
      expect(prepared._tag === "done" && Exit.isSuccess(prepared.exit)).toBe(true)
      base.crash() // the old state was saved durably: a crash now must keep it
      const full = base.run(persistControlFile(DIRECTORY, NEW, { noSync: false }))
      expect(full._tag).toBe("done")
      const saveOperations = full.operations
      expect(saveOperations).toBeGreaterThanOrEqual(4)
      for (let k = 0; k <= saveOperations; k++) {
        const lab = new DiskLab(seed * 1000 + k)
        expect(lab.run(setUp)._tag).toBe("done")
        lab.crash()
        const saved = lab.run(persistControlFile(DIRECTORY, NEW, { noSync: false }), { crashBeforeOperation: k })
        if (saved._tag === "done") {
          expect(Exit.isSuccess(saved.exit)).toBe(true)
          lab.crash() // after the save returned: only the new state may be found
        }
        const loaded = lab.run(loadControlFile(DIRECTORY))
        expect(loaded._tag).toBe("done")
        if (loaded._tag !== "done") continue
        expect(Exit.isSuccess(loaded.exit), `seed ${seed} crash before op ${k}: ${String(loaded.exit)}`).toBe(true)
        if (!Exit.isSuccess(loaded.exit)) continue
        points++
        const term = loaded.exit.value.acceptorState.term
        if (saved._tag === "done") expect(loaded.exit.value).toEqual(NEW)
        else if (term === 3) {
          expect(loaded.exit.value).toEqual(OLD)
          sawOld++
        } else {
          expect(loaded.exit.value).toEqual(NEW)
          sawNew++
        }
      }
    }
    expect(points).toBeGreaterThan(SEEDS * 4)
    // Both outcomes of an interrupted save occur (the rename may or may not have survived).
    expect(sawOld).toBeGreaterThan(0)
    expect(sawNew).toBeGreaterThan(0)
  })

  test("control: without its fsyncs a save can leave a broken or old file after returning", () => {
    let broken = 0
    for (let seed = 0; seed < SEEDS; seed++) {
      const lab = new DiskLab(seed)
      expect(lab.run(setUp)._tag).toBe("done")
      lab.crash()
      const saved = lab.run(persistControlFile(DIRECTORY, NEW, { noSync: true }))
      expect(saved._tag).toBe("done")
      lab.crash()
      const loaded = lab.run(loadControlFile(DIRECTORY))
      if (loaded._tag !== "done" || !Exit.isSuccess(loaded.exit) || loaded.exit.value.acceptorState.term !== 4) broken++
    }
    expect(broken).toBeGreaterThan(0)
  })
})
