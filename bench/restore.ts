import { spawnSync } from "node:child_process"
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"

/**
 * Start-up cost of `sk wal fetch` as PostgreSQL's restore_command (DESIGN.md §9, issue 8):
 * PostgreSQL spawns it once per 16 MiB segment, so its fixed cost is paid per segment. Each
 * figure is the median wall time of one spawned process over the same file, beside baselines
 * measured in the same run, interleaved round by round so machine noise hits all alike:
 * - `cp` of the segment file (what a restore_command of `cp /archive/%f %p` costs), and
 *   `dd conv=fsync` (a copy that also makes the file durable, as `sk wal fetch` does);
 * - `node -e 0` (the floor for any command written for Node);
 * - `sk wal fetch` from a plain local directory (read directly with node:fs), from the same
 *   directory given as Neon's TOML (through the RemoteStorage layer, which loads Effect), and
 *   `sk wal fetch --help` (start-up alone).
 * Environment: SK_BENCH_RESTORE_RUNS (default 21).
 */
const SEGMENT_BYTES = 16 * 1024 * 1024
const TENANT = "0123456789abcdef0123456789abcdef"
const TIMELINE = "fedcba9876543210fedcba9876543210"
const SEGMENT = "000000010000000000000003"
const SK = resolve(dirname(fileURLToPath(import.meta.url)), "../../bin/sk.js")
const RUNS_DEFAULT = 21

interface Contender {
  readonly name: string
  readonly command: string
  readonly args: ReadonlyArray<string>
}

export function benchRestore(): void {
  const runs = Number(process.env["SK_BENCH_RESTORE_RUNS"] ?? RUNS_DEFAULT)
  if (!Number.isSafeInteger(runs) || runs < 1) throw new Error(`SK_BENCH_RESTORE_RUNS must be a positive integer, got ${runs}`)
  const directory = mkdtempSync(join(tmpdir(), "sk-bench-restore-"))
  try {
    const store = join(directory, "store")
    const objectDirectory = join(store, TENANT, TIMELINE)
    mkdirSync(objectDirectory, { recursive: true })
    const source = join(objectDirectory, SEGMENT)
    const segment = new Uint8Array(SEGMENT_BYTES)
    for (let i = 0; i < segment.length; i += 4096) segment[i] = (i >>> 12) & 0xff
    writeFileSync(source, segment)
    const target = join(directory, "RECOVERYXLOG")
    const fetchArgs = (spec: string) => [SK, "wal", "fetch", "--remote-storage", spec, "--tenant-id", TENANT, "--timeline-id", TIMELINE, SEGMENT, target]
    const contenders: ReadonlyArray<Contender> = [
      { name: "cp", command: "cp", args: [source, target] },
      { name: "dd conv=fsync", command: "dd", args: [`if=${source}`, `of=${target}`, "bs=1M", "conv=fsync", "status=none"] },
      { name: "node -e 0", command: process.execPath, args: ["-e", "0"] },
      { name: "sk wal fetch --help", command: process.execPath, args: [SK, "wal", "fetch", "--help"] },
      { name: "sk wal fetch (local directory)", command: process.execPath, args: fetchArgs(store) },
      { name: "sk wal fetch (TOML: RemoteStorage layer)", command: process.execPath, args: fetchArgs(`{ local_path = ${JSON.stringify(store)} }`) }
    ]
    // Each contender once before timing: page cache warm, and a broken one fails the bench.
    for (const contender of contenders) {
      runOnce(contender)
      if (contender.name.startsWith("sk wal fetch (") && !readFileSync(target).equals(Buffer.from(segment))) {
        throw new Error(`${contender.name} wrote different bytes`)
      }
    }
    const samples = new Map<string, number[]>(contenders.map((contender) => [contender.name, []]))
    for (let round = 0; round < runs; round++) {
      for (const contender of contenders) samples.get(contender.name)?.push(runOnce(contender))
    }
    console.log(`restore: one 16 MiB segment per spawned process, median of ${runs} interleaved runs (min in brackets)`)
    const medianOf = (name: string) => median(samples.get(name) ?? [])
    const cpMs = medianOf("cp")
    const nodeMs = medianOf("node -e 0")
    for (const contender of contenders) {
      const times = samples.get(contender.name) ?? []
      const ms = median(times)
      console.log(`  ${contender.name.padEnd(42)} ${ms.toFixed(1).padStart(7)} ms (${Math.min(...times).toFixed(1)})` +
        `  ${(ms / cpMs).toFixed(1).padStart(5)}x cp  ${(ms / nodeMs).toFixed(2).padStart(5)}x node -e 0`)
    }
  } finally {
    rmSync(directory, { recursive: true, force: true })
  }
}

function runOnce(contender: Contender): number {
  const started = performance.now()
  const result = spawnSync(contender.command, contender.args, { stdio: ["ignore", "ignore", "pipe"], encoding: "utf8" })
  const elapsedMs = performance.now() - started
  if (result.status !== 0) throw new Error(`${contender.name} exited ${result.status}: ${result.stderr}`)
  return elapsedMs
}

function median(values: ReadonlyArray<number>): number {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle] ?? NaN : ((sorted[middle - 1] ?? NaN) + (sorted[middle] ?? NaN)) / 2
}
