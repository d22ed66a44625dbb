// Goal: every `sk` command refuses bad flags with a clear message and a non-zero exit, through
// the real binary (help rendering included: a bigint default once crashed it). Method: spawn the
// built CLI with bad arguments and read stderr.
import { spawnSync } from "node:child_process"
import { dirname, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, test } from "vitest"

const SK = resolve(dirname(fileURLToPath(import.meta.url)), "../bin/sk.js")

describe("sk bad input", () => {
  test.each([
    [["wal", "synth", "--out", "/tmp/sk-never", "--bytes", "-5"], /byte count must be a non-negative decimal integer/],
    [["wal", "synth", "--out", "/tmp/sk-never", "--bytes", "100", "--pg-version", "13"], /PostgreSQL version must be 14, 15, 16 or 17/],
    [["wal", "synth", "--out", "/tmp/sk-never", "--bytes", "100", "--start", "zz"], /not an LSN/],
    [["wal", "dump", "/nonexistent-sk-file"], /nonexistent-sk-file/],
    [["control", "dump", "/nonexistent-sk-file"], /nonexistent-sk-file/],
    [["nope"], /unknown command 'nope'/],
    [["--frobnicate"], /unknown option '--frobnicate'/]
  ])("%j is refused clearly", (args, message) => {
    const result = spawnSync(process.execPath, [SK, ...args], { encoding: "utf8" })
    expect(result.status).not.toBe(0)
    expect(result.stderr).toMatch(message)
    expect(result.stderr).not.toMatch(/serialize a BigInt|TypeError|at .*\.js:\d+/)
  })
})
