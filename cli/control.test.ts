// Goal: `sk control dump` prints a control file faithfully as text and JSON (LSNs as X/Y,
// u64 ids as decimal strings), and refuses bad files with a clear message and a non-zero exit.
// Method: control files written to a temporary directory by the codec, dumped through the
// commander command and through runControlDump; corrupt, missing and oversized inputs.
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Command } from "commander"
import { afterAll, describe, expect, test, vi } from "vitest"
import { encodeControlFile } from "../core/acceptor/control-file.js"
import { Generation, NodeId, type PersistedState, TenantId, Term, TimelineId, UNIX_EPOCH } from "../core/acceptor/state.js"
import { Lsn } from "../core/wal/lsn.js"
import { registerControlCommands, runControlDump } from "./control.js"

const directory = fs.mkdtempSync(path.join(os.tmpdir(), "sk-control-dump-"))
afterAll(() => fs.rmSync(directory, { recursive: true, force: true }))

const STATE: PersistedState = {
  tenantId: TenantId("cf0480929707ee75372337efaa5ecf96"),
  timelineId: TimelineId("112ded66422aa5e953e5440fa5427ac4"),
  mconf: { generation: Generation(3), members: [{ id: NodeId(1), host: "sk-1", pgPort: 5454 }], newMembers: [{ id: NodeId(2), host: "sk-2", pgPort: 5455 }] },
  acceptorState: { term: Term(7), termHistory: [{ term: Term(1), lsn: Lsn(0x1000000) }, { term: Term(7), lsn: Lsn(0x16b5a50) }] },
  server: { pgVersion: 170004, systemId: 0xf1d8e2a4b3c5d701n, walSegSizeBytes: 16777216 },
  proposerUuid: "00112233445566778899aabbccddeeff",
  timelineStartLsn: Lsn(0x1000000),
  localStartLsn: Lsn(0x1000000),
  commitLsn: Lsn(0x1_0000_0028),
  backupLsn: Lsn(0x1000000),
  peerHorizonLsn: Lsn(0x16b0000),
  remoteConsistentLsn: Lsn(0),
  partialBackup: { segments: [{ status: "Uploaded", name: "seg_7.partial", commitLsn: Lsn(0x16b5a48), flushLsn: Lsn(0x16b5a50), term: Term(7) }] },
  evictionState: { _tag: "Offloaded", flushLsn: Lsn(0x16b5a50) },
  creationTs: { secsSinceEpoch: 1700000000, nanosSinceEpoch: 123456789 }
}

function writeFile(name: string, bytes: Uint8Array): string {
  const file = path.join(directory, name)
  fs.mkdirSync(path.dirname(file), { recursive: true })
  fs.writeFileSync(file, bytes)
  return file
}

function dump(file: string, json: boolean) {
  let stdout = ""
  let stderr = ""
  const code = runControlDump(file, { json }, { stdout: (t) => { stdout += t }, stderr: (t) => { stderr += t } })
  return { code, stdout, stderr }
}

describe("sk control dump", () => {
  test("text output lists every field in file order", () => {
    const file = writeFile("v10/safekeeper.control", encodeControlFile(STATE))
    const { code, stdout, stderr } = dump(file, false)
    expect(code).toBe(0)
    expect(stderr).toBe("")
    const lines = stdout.split("\n").map((line) => line.replace(/\s+/g, " ").trim())
    expect(lines).toEqual(expect.arrayContaining([
      `file ${file}`,
      expect.stringMatching(/^format_version 10 \(crc32c 0x[0-9A-F]{8}\)$/),
      "tenant_id cf0480929707ee75372337efaa5ecf96",
      "mconf generation 3; members 1@sk-1:5454; new_members 2@sk-2:5455",
      "term 7",
      "term_history 2 entries",
      "partial_backup 1 segment",
      "term 1 from 0/1000000",
      "term 7 from 0/16B5A50",
      `system_id ${0xf1d8e2a4b3c5d701n}`,
      "commit_lsn 1/28",
      "Uploaded seg_7.partial commit 0/16B5A48 flush 0/16B5A50 term 7",
      "eviction_state Offloaded at 0/16B5A50",
      "creation_ts 2023-11-14T22:13:20.123456789Z (1700000000 s + 123456789 ns)"
    ]))
  })

  test("a timeline directory dumps the control file inside it", () => {
    writeFile("dir/safekeeper.control", encodeControlFile(STATE))
    const { code, stdout } = dump(path.join(directory, "dir"), false)
    expect(code).toBe(0)
    expect(stdout).toContain(path.join(directory, "dir", "safekeeper.control"))
  })

  test("--json through commander: Neon field names, LSNs as X/Y, u64 ids as decimal strings", async () => {
    const file = writeFile("json/safekeeper.control", encodeControlFile(STATE))
    const program = new Command().exitOverride()
    registerControlCommands(program)
    let written = ""
    const spy = vi.spyOn(process.stdout, "write").mockImplementation((chunk: string | Uint8Array) => {
      written += String(chunk)
      return true
    })
    try {
      await program.parseAsync(["control", "dump", file, "--json"], { from: "user" })
    } finally {
      spy.mockRestore()
    }
    expect(process.exitCode).toBe(0)
    process.exitCode = undefined
    const json = JSON.parse(written)
    expect(json.format_version).toBe(10)
    expect(json.state.server.system_id).toBe("17426927955128735489")
    expect(json.state.commit_lsn).toBe("1/28")
    expect(json.state.acceptor_state).toEqual({ term: 7, term_history: [{ term: 1, lsn: "0/1000000" }, { term: 7, lsn: "0/16B5A50" }] })
    expect(json.state.mconf).toEqual({ generation: 3, members: [{ id: 1, host: "sk-1", pg_port: 5454 }], new_members: [{ id: 2, host: "sk-2", pg_port: 5455 }] })
    expect(json.state.eviction_state).toEqual({ Offloaded: "0/16B5A50" })
    expect(json.state.creation_ts).toEqual({ secs_since_epoch: 1700000000, nanos_since_epoch: 123456789 })
  })

  test("a v9 file says creation_ts was not recorded", () => {
    const v9 = { ...STATE, mconf: { generation: Generation(0), members: [], newMembers: undefined }, creationTs: UNIX_EPOCH }
    const { code, stdout } = dump(writeFile("v9/safekeeper.control", encodeControlFile(v9)), false)
    expect(code).toBe(0)
    expect(stdout).toMatch(/format_version\s+9 /)
    expect(stdout).toMatch(/creation_ts\s+not stored in format v9/)
  })

  test("a corrupt file: message on stderr naming the file and the reason, exit 1, nothing on stdout", () => {
    const bytes = encodeControlFile(STATE).slice()
    bytes[30] = bytes[30]! ^ 0x40
    const file = writeFile("bad/safekeeper.control", bytes)
    const { code, stdout, stderr } = dump(file, true)
    expect(code).toBe(1)
    expect(stdout).toBe("")
    expect(stderr).toMatch(new RegExp(`^sk control dump: ${file}: BadChecksum: control file checksum mismatch`))
  })

  test("a missing file and an oversized one are refused", () => {
    const missing = dump(path.join(directory, "nope", "safekeeper.control"), false)
    expect(missing.code).toBe(1)
    expect(missing.stderr).toMatch(/ENOENT/)
    const big = writeFile("big/safekeeper.control", new Uint8Array(0))
    fs.truncateSync(big, 32 * 1024 * 1024 + 1)
    const oversized = dump(big, false)
    expect(oversized.code).toBe(1)
    expect(oversized.stderr).toMatch(/TooLarge/)
  })
})
