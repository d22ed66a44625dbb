import { execFileSync, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import type { Hunt } from "./hunt.js"

/**
 * `npm run mutants [filter]`: for each planted bug in mutants/*.patch (whose name contains the
 * filter, if given), copy the working tree to a scratch directory, apply the patch there (never
 * in the real tree), build, and sweep the patch's scenario (mutants/hunt.ts: worker threads,
 * doubling batches) until the first failing seed or the patch's seed cap. Prints per mutant
 * whether it was caught, the seeds to the first failure, the violated invariant and the
 * seconds, then a table and the median seeds-to-catch. Exit 1 if any escaped or did not apply.
 * A patch names its scenario and seed cap in a first line `# scenario: NAME seeds: N`.
 * SK_MUTANT_JOBS sets the sweep's worker threads (default 2: the machine is shared).
 */
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..")
const MUTANTS_DIR = path.join(ROOT, "mutants")
const COPY_EXCLUDES = new Set(["node_modules", "dist", ".git", "reports-out"])

interface Outcome {
  readonly name: string
  readonly hunt: Hunt | undefined
  /** Why the mutant was not hunted (the patch did not apply). */
  readonly problem: string | undefined
}

/** `# scenario: NAME seeds: N [marks: a,b]`: marks the bug should suppress (see hunt.ts). */
export function parseHeader(text: string): { readonly scenario: string; readonly seeds: number; readonly marks: ReadonlyArray<string> } | undefined {
  const header = /^# scenario: (\S+) seeds: (\d+)(?: marks: (\S+))?[ \t]*$/m.exec(text.split("\n")[0] ?? "")
  return header === null ? undefined : { scenario: header[1]!, seeds: Number(header[2]!), marks: header[3] === undefined ? [] : header[3].split(",") }
}

export function median(values: ReadonlyArray<number>): number | undefined {
  if (values.length === 0) return undefined
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

/** A copy of the tree (node_modules linked) in a new scratch directory. */
function scratchCopy(): string {
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "sk-mutant-"))
  copyTree(ROOT, scratch)
  fs.symlinkSync(path.join(ROOT, "node_modules"), path.join(scratch, "node_modules"))
  return scratch
}

function build(scratch: string): ReturnType<typeof spawnSync> {
  return spawnSync(process.execPath, [path.join(ROOT, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.json"], { cwd: scratch, encoding: "utf8" })
}

function huntOne(name: string, jobs: number, baseline: string): Outcome {
  const patchPath = path.join(MUTANTS_DIR, name)
  const header = parseHeader(fs.readFileSync(patchPath, "utf8"))
  if (header === undefined) return { name, hunt: undefined, problem: `first line must be "# scenario: NAME seeds: N"` }
  const scratch = scratchCopy()
  try {
    const patched = spawnSync("patch", ["-p1", "--quiet", "--forward", "--fuzz=0", "-i", patchPath], { cwd: scratch, encoding: "utf8" })
    if (patched.status !== 0) return { name, hunt: undefined, problem: `patch does not apply: ${patched.stdout}${patched.stderr}`.trim() }
    // A patch that breaks type checking still emits JavaScript; the simulator judges it.
    const built = build(scratch)
    if (built.status !== 0) process.stdout.write(`note: ${name} does not type-check in the scratch copy:\n${String(built.stdout)}`)
    const output = execFileSync(process.execPath, [path.join(scratch, "dist", "mutants", "hunt.js"), header.scenario, String(header.seeds), String(jobs), header.marks.join(","), baseline], {
      cwd: scratch,
      encoding: "utf8",
      maxBuffer: 64 * 1024 * 1024
    })
    return { name, hunt: JSON.parse(output.trim().split("\n").pop()!) as Hunt, problem: undefined }
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true })
  }
}

function main(): number {
  const only = process.argv[2]
  const jobs = Number(process.env["SK_MUTANT_JOBS"] ?? "2")
  if (!Number.isSafeInteger(jobs) || jobs < 1) throw new Error(`SK_MUTANT_JOBS must be a positive integer, not ${process.env["SK_MUTANT_JOBS"]}`)
  const patches = fs.readdirSync(MUTANTS_DIR).filter((name) => name.endsWith(".patch") && (only === undefined || name.includes(only))).sort()
  if (patches.length === 0) {
    process.stderr.write(`no mutant matches ${only ?? "(none)"}\n`)
    return 1
  }
  // The tree others edit may fail seeds by itself: a mutant's failing seed must pass here.
  const baseline = scratchCopy()
  const outcomes: Outcome[] = []
  try {
    const built = build(baseline)
    if (built.status !== 0) process.stdout.write(`note: the baseline does not type-check:\n${String(built.stdout)}`)
    for (const name of patches) outcomes.push(report(name, huntOne(name, jobs, baseline)))
  } finally {
    fs.rmSync(baseline, { recursive: true, force: true })
  }
  process.stdout.write(`\n${table(outcomes)}`)
  const caught = outcomes.flatMap((o) => (o.hunt !== undefined && o.hunt.firstFailingSeed !== null ? [o.hunt.seedsRun] : []))
  process.stdout.write(`caught ${caught.length}/${outcomes.length}; median seeds to catch: ${median(caught) ?? "-"}\n`)
  return caught.length === outcomes.length ? 0 : 1
}

/** Prints one mutant's line as soon as its hunt ends. */
function report(name: string, outcome: Outcome): Outcome {
  const hunt = outcome.hunt
  const skipped = hunt === undefined || hunt.baselineFailures.length === 0 ? "" : ` [seeds failing without the patch too, skipped: ${hunt.baselineFailures.join(", ")}]`
  if (hunt === undefined) {
    process.stdout.write(`BROKEN  ${name}: ${outcome.problem ?? "?"}\n`)
  } else if (hunt.firstFailingSeed === null) {
    const missed = hunt.missedMarks.length === 0 ? "" : `; marks never reached: ${hunt.missedMarks.join(", ")}`
    process.stdout.write(`ESCAPED ${name}: ${hunt.scenario} passed ${hunt.seedsRun} seeds (${hunt.seconds.toFixed(1)} s)${missed}${skipped}\n`)
  } else {
    process.stdout.write(`caught  ${name}: ${hunt.scenario} failed at seed ${hunt.firstFailingSeed} (${hunt.seedsRun} seeds, ${hunt.seconds.toFixed(1)} s): ${hunt.violation ?? ""}${skipped}\n`)
  }
  return outcome
}

/** A plain-text table: mutant, caught?, seeds to the first failure, invariant, seconds. */
export function table(outcomes: ReadonlyArray<Outcome>): string {
  const rows = [["mutant", "caught", "seeds", "invariant", "seconds"]]
  for (const { name, hunt, problem } of outcomes) {
    const mutant = name.replace(/\.patch$/, "")
    if (hunt === undefined) rows.push([mutant, "broken", "-", problem?.split("\n")[0] ?? "-", "-"])
    else rows.push([mutant, hunt.firstFailingSeed === null ? "ESCAPED" : "yes", String(hunt.seedsRun), hunt.invariant ?? "-", hunt.seconds.toFixed(1)])
  }
  const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => row[column]!.length)))
  return rows.map((row) => `${row.map((cell, column) => cell.padEnd(widths[column]!)).join("  ").trimEnd()}\n`).join("")
}

function copyTree(from: string, to: string): void {
  for (const entry of fs.readdirSync(from, { withFileTypes: true })) {
    if (COPY_EXCLUDES.has(entry.name)) continue
    const source = path.join(from, entry.name)
    const target = path.join(to, entry.name)
    if (entry.isDirectory()) {
      fs.mkdirSync(target)
      copyTree(source, target)
    } else if (entry.isFile()) {
      fs.copyFileSync(source, target)
    }
  }
}

const invokedDirectly = process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)
if (invokedDirectly) process.exitCode = main()
