// Goal: `sk wal synth` writes full-size, correctly named segments that `sk wal dump` reads
// back record for record, and bad flags fail with a clear message and a non-zero exit.
// Method: run the commands in-process on a commander program with exitOverride, capturing
// stdout/stderr; small (1 MiB) segments keep it fast. pg_waldump's verdict on synth output
// is in core/wal/wal.slow.test.ts.
import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Command, CommanderError } from "commander"
import { afterAll, describe, expect, test, vi } from "vitest"
import { registerWalCommands, type SynthResult, type WalDumpSummary } from "./wal.js"

const SEGMENT = 1024 * 1024
const dirs: string[] = []
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true })
})
const tempDir = () => {
  const dir = mkdtempSync(join(tmpdir(), "sk-wal-cli-"))
  dirs.push(dir)
  return dir
}

async function run(args: ReadonlyArray<string>): Promise<{ stdout: string; stderr: string; exitCode: number }> {
  const program = new Command().name("sk").exitOverride()
  let stderr = ""
  let stdout = ""
  program.configureOutput({ writeErr: (text) => (stderr += text), writeOut: (text) => (stdout += text) })
  registerWalCommands(program)
  const spy = vi.spyOn(process.stdout, "write").mockImplementation((chunk: string | Uint8Array) => {
    stdout += typeof chunk === "string" ? chunk : Buffer.from(chunk).toString("utf8")
    return true
  })
  try {
    await program.parseAsync(["node", "sk", ...args])
    return { stdout, stderr, exitCode: 0 }
  } catch (error) {
    if (error instanceof CommanderError) return { stdout, stderr, exitCode: error.exitCode }
    throw error
  } finally {
    spy.mockRestore()
  }
}

describe("sk wal synth and dump", () => {
  test("synth writes full segments that dump decodes to the same count", async () => {
    const out = tempDir()
    const synth = await run(["wal", "synth", "--out", out, "--bytes", String(3 * SEGMENT), "--seed", "5", "--segment-size", String(SEGMENT), "--switch"])
    expect(synth.exitCode).toBe(0)
    const result = JSON.parse(synth.stdout) as SynthResult
    const names = readdirSync(out).sort()
    expect(names[0]).toBe("000000010000000000000001")
    for (const name of names) expect(statSync(join(out, name)).size).toBe(SEGMENT)
    expect(result.startLsn).toBe("0/100028")
    expect(result.segmentSpanningRecords).toBeGreaterThan(0)
    expect(result.switches).toBe(1)

    const dump = await run(["wal", "dump", "--json", "--segment-size", String(SEGMENT), ...names.reverse().map((name) => join(out, name))])
    expect(dump.exitCode).toBe(0)
    const summary = JSON.parse(dump.stdout) as WalDumpSummary
    expect(summary).toMatchObject({
      firstLsn: "0/100028",
      nextLsn: result.endLsn,
      records: result.records,
      segments: names.length,
      stopReason: "ZeroLength",
      stopLsn: result.endLsn,
      rmgrs: { LogicalMessage: result.records - 1, XLOG: 1 }
    })
    expect(summary.stoppedBecause).toMatch(/invalid record length/)

    const lines = await run(["wal", "dump", "--segment-size", String(SEGMENT), out])
    const recordLines = lines.stdout.trim().split("\n").filter((line) => line.startsWith("lsn: "))
    expect(recordLines).toHaveLength(result.records)
    expect(recordLines[0]).toMatch(/^lsn: 0\/100028 prev: 0\/0 len: \d+ rmgr: LogicalMessage MESSAGE xid: 0$/)
    expect(lines.stdout).toMatch(/rmgr: XLOG SWITCH/)
    expect(lines.stdout.trim().split("\n").at(-1)).toMatch(/^stopped: invalid record length/)
  })

  test("the same seed writes the same bytes; --start and --pg-version are honoured", async () => {
    const [a, b] = [tempDir(), tempDir()]
    const args = ["--bytes", "300000", "--seed", "9", "--segment-size", String(SEGMENT), "--start", "0/300100", "--pg-version", "170002", "--sysid", "18446744073709551615"]
    expect((await run(["wal", "synth", "--out", a, ...args])).exitCode).toBe(0)
    expect((await run(["wal", "synth", "--out", b, ...args])).exitCode).toBe(0)
    const names = readdirSync(a).sort()
    expect(names).toEqual(["000000010000000000000003"])
    const { readFileSync } = await import("node:fs")
    expect(readFileSync(join(a, names[0]!)).equals(readFileSync(join(b, names[0]!)))).toBe(true)
    const segment = readFileSync(join(a, names[0]!))
    expect(segment.readUInt16LE(0)).toBe(0xd116)
    expect(segment.readBigUInt64LE(24)).toBe(18446744073709551615n)
    // Decoding from the segment start lands on --start: the prefix fakes a continuation up to it.
    const dump = JSON.parse((await run(["wal", "dump", "--json", "--segment-size", String(SEGMENT), a])).stdout) as WalDumpSummary
    expect(dump.firstLsn).toBe("0/300100")
  })

  test("bad flags fail clearly and non-zero", async () => {
    const out = tempDir()
    const cases: ReadonlyArray<readonly [ReadonlyArray<string>, RegExp]> = [
      [["wal", "synth", "--out", out, "--bytes", "abc"], /byte count must be a non-negative decimal integer/],
      [["wal", "synth", "--out", out, "--bytes", "0"], /byte count must be 1\.\./],
      [["wal", "synth", "--bytes", "100"], /required option '--out <dir>'/],
      [["wal", "synth", "--out", out], /required option '--bytes <n>'/],
      [["wal", "synth", "--out", out, "--bytes", "100", "--segment-size", "1000"], /segment size must be a power of two/],
      [["wal", "synth", "--out", out, "--bytes", "100", "--start", "0/28"], /segment 1 or later/],
      [["wal", "synth", "--out", out, "--bytes", "100", "--start", "0/1000003"], /not a record start/],
      [["wal", "synth", "--out", out, "--bytes", "100", "--start", "zzz"], /not an LSN/],
      [["wal", "synth", "--out", out, "--bytes", "100", "--pg-version", "13"], /14, 15, 16 or 17/],
      [["wal", "synth", "--out", out, "--bytes", "100", "--sysid", "-1"], /system id must be a decimal u64/],
      [["wal", "synth", "--out", out, "--bytes", "100", "--sysid", "18446744073709551616"], /fit in 64 bits/],
      [["wal", "dump", join(out, "missing-file")], /cannot read/],
      [["wal", "dump", "--segment-size", "3"], /missing required argument|segment size/]
    ]
    for (const [args, message] of cases) {
      const result = await run(args)
      expect(result.exitCode, args.join(" ")).not.toBe(0)
      expect(result.stderr, args.join(" ")).toMatch(message)
    }
    const notSegment = join(out, "notes.txt")
    writeFileSync(notSegment, "x")
    const result = await run(["wal", "dump", notSegment])
    expect(result.exitCode).not.toBe(0)
    expect(result.stderr).toMatch(/not named as a WAL segment/)
  })

  test("a .partial file wins over the full name of the same segment", async () => {
    const out = tempDir()
    await run(["wal", "synth", "--out", out, "--bytes", String(SEGMENT + SEGMENT / 2), "--seed", "4", "--segment-size", String(SEGMENT)])
    const { copyFileSync, truncateSync } = await import("node:fs")
    const second = join(out, "000000010000000000000002")
    copyFileSync(second, `${second}.partial`)
    truncateSync(second, 8192) // a stale short copy that must not be read
    const summary = JSON.parse((await run(["wal", "dump", "--json", "--segment-size", String(SEGMENT), out])).stdout) as WalDumpSummary
    expect(summary.stopReason).toBe("ZeroLength")
    expect(summary.segments).toBe(2)
    const twice = await run(["wal", "dump", "--segment-size", String(SEGMENT), second, second])
    expect(twice.stderr).toMatch(/given twice/)
  })

  test("a missing segment in the middle stops the dump there", async () => {
    const out = tempDir()
    await run(["wal", "synth", "--out", out, "--bytes", String(3 * SEGMENT), "--seed", "2", "--segment-size", String(SEGMENT)])
    rmSync(join(out, "000000010000000000000002"))
    const summary = JSON.parse((await run(["wal", "dump", "--json", "--segment-size", String(SEGMENT), out])).stdout) as WalDumpSummary
    expect(summary.stopReason).toBe("MissingSegment")
    expect(summary.stopLsn).toBe("0/200000")
    expect(summary.stoppedBecause).toMatch(/000000010000000000000002 is missing/)
  })
})
