// Goal: the control file is saved and loaded on a real disk exactly as on the simulated one:
// atomic replace through `.partial`, a corrupt file refused with a typed error naming the
// reason, and `sk control dump` reading what we wrote. Method: live/disk.ts in a temp dir.
import { spawnSync } from "node:child_process"
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { Effect, Exit } from "effect"
import { afterAll, describe, expect, test } from "vitest"
import { makeLiveDisk } from "../../live/disk.js"
import { Disk } from "../io/disk.js"
import { Lsn } from "../wal/lsn.js"
import { CONTROL_FILE_NAME, loadControlFile, persistControlFile } from "./control-file.js"
import { EMPTY_MEMBER_CONFIGURATION, newTimelineState, TenantId, Term, TimelineId } from "./state.js"

const SK = resolve(dirname(fileURLToPath(import.meta.url)), "../../bin/sk.js")
const directory = mkdtempSync(join(tmpdir(), "sk-control-"))
afterAll(() => rmSync(directory, { recursive: true, force: true }))

const run = <A, E>(effect: Effect.Effect<A, E, Disk>) => Effect.runPromiseExit(Effect.provideService(effect, Disk, makeLiveDisk()))

const state = newTimelineState({
  tenantId: TenantId("0123456789abcdef0123456789abcdef"),
  timelineId: TimelineId("fedcba9876543210fedcba9876543210"),
  mconf: EMPTY_MEMBER_CONFIGURATION,
  server: { pgVersion: 150004, systemId: 7_000_000_000_000_000_001n, walSegSizeBytes: 16 * 1024 * 1024 },
  startLsn: Lsn(0x1000028),
  commitLsn: Lsn(0x1000028)
})

describe("control file on a real disk", () => {
  test("save, replace, load; no .partial left behind; sk control dump reads it", async () => {
    expect(Exit.isSuccess(await run(persistControlFile(directory, state, { noSync: false })))).toBe(true)
    const next = { ...state, acceptorState: { term: Term(7), termHistory: state.acceptorState.termHistory } }
    expect(Exit.isSuccess(await run(persistControlFile(directory, next, { noSync: false })))).toBe(true)
    const loaded = await run(loadControlFile(directory))
    expect(Exit.isSuccess(loaded) && loaded.value).toEqual(next)
    expect(readdirSync(directory)).toEqual([CONTROL_FILE_NAME])
    const dump = spawnSync(process.execPath, [SK, "control", "dump", join(directory, CONTROL_FILE_NAME), "--json"], { encoding: "utf8" })
    expect(dump.status).toBe(0)
    expect(dump.stdout).toContain("fedcba9876543210fedcba9876543210")
  })

  test("a flipped byte is refused as BadChecksum, by the loader and by sk control dump", async () => {
    const path = join(directory, CONTROL_FILE_NAME)
    const bytes = readFileSync(path)
    bytes[20] = bytes[20]! ^ 0x40
    writeFileSync(path, bytes)
    const loaded = await run(loadControlFile(directory))
    expect(Exit.isFailure(loaded)).toBe(true)
    expect(JSON.stringify(loaded)).toContain("BadChecksum")
    const dump = spawnSync(process.execPath, [SK, "control", "dump", path], { encoding: "utf8" })
    expect(dump.status).not.toBe(0)
    expect(dump.stderr).toMatch(/BadChecksum|checksum/i)
  })
})
