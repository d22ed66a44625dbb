import { spawnSync } from "node:child_process"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

/**
 * Sweeps one scenario until its first failing seed (the mutant runner calls this inside a
 * scratch copy with a planted bug applied and built) and prints one JSON line (a `Hunt`).
 * Seeds run through `sk sim sweep` in worker threads, in batches that double (4, 8, 16, ...)
 * so a quick catch costs few seeds and a long hunt few process starts; the first failure is
 * the lowest failing seed of the first batch that has one. A bug whose only symptom is that
 * something stops happening (a liveness bug the checker cannot time) names marks it should
 * suppress: if the cap passes with none of them reached in any batch, the sweep's coverage
 * judgement catches it (as `sk sim sweep` does from 100 runs: exit 5). A failing seed counts
 * only if it passes in the baseline (the same tree built without the patch): the tree others
 * are editing may fail some seeds by itself. Usage:
 * hunt <scenario> <cap> [jobs] [mark,mark...] [baseline dir].
 */
export interface Hunt {
  readonly scenario: string
  readonly seedsRun: number
  readonly firstFailingSeed: number | null
  readonly seconds: number
  /** The first violation's text, as the sweep reports it (who, time, message). */
  readonly violation: string | null
  /** The violated invariant: the message before its first ':' (or "nondeterminism", "threw"). */
  readonly invariant: string | null
  /** Failing seeds skipped because they fail in the baseline too. */
  readonly baselineFailures: ReadonlyArray<number>
  /** Marks the scenario expects that no batch reached (the sweeps' missedMarks, intersected). */
  readonly missedMarks: ReadonlyArray<string>
}

/** What the sweep's `--json` summary holds that a hunt reads. */
interface SweepJson {
  readonly runs: number
  readonly failures: ReadonlyArray<{ readonly seed: number; readonly kind: string; readonly detail: string }>
  readonly missedMarks: ReadonlyArray<string>
}

const FIRST_BATCH_SEEDS = 4

/** The invariant a sweep failure's detail names: "<scenario> seed N: <who> at T µs: <invariant>: ...". */
export function invariantOf(kind: string, detail: string): string {
  if (kind === "nondeterminism") return "nondeterminism"
  if (/: the run threw /.test(detail)) return "threw"
  const match = /seed \d+: .*? at -?\d+ µs: ([^:;]+)/.exec(detail)
  // Scenarios older than the swarm name no invariant: their message, without its LSN, is one.
  return (match === null ? detail.split(":")[0]! : match[1]!).replace(/ at LSN \d+\s*$/, "").trim()
}

/** The violation text without the "<scenario> seed N: " prefix (and a liveness prefix kept). */
function violationOf(detail: string): string {
  return detail.replace(/^(liveness failure: )?\S+ seed \d+: /, "$1")
}

function parseSweep(stdout: string): SweepJson {
  const line = stdout.trim().split("\n").pop() ?? ""
  const parsed: unknown = JSON.parse(line)
  if (typeof parsed !== "object" || parsed === null || !("failures" in parsed) || !("runs" in parsed) || !("missedMarks" in parsed)) {
    throw new Error(`hunt: not a sweep summary: ${line.slice(0, 200)}`)
  }
  return parsed as SweepJson
}

/** One `sk sim sweep --json` in `root`. */
function sweep(root: string, scenario: string, start: number, seeds: number, jobs: number): SweepJson {
  const run = spawnSync(process.execPath, [
    path.join(root, "bin", "sk.js"), "sim", "sweep", "--scenario", scenario, "--start", String(start), "--seeds", String(seeds),
    "--jobs", String(jobs), "--recheck-every", "20", "--json"
  ], { cwd: root, encoding: "utf8", maxBuffer: 64 * 1024 * 1024 })
  if (run.error !== undefined) throw run.error
  // Exit codes 2..5 are verdicts (safety, nondeterminism, liveness, coverage); 1 is a usage error.
  if (run.status === 1 || run.status === null) throw new Error(`hunt: sweep failed (${run.status ?? run.signal}): ${run.stderr.slice(-2000)}`)
  return parseSweep(run.stdout)
}

export function hunt(root: string, scenario: string, cap: number, jobs: number, suppressedMarks: ReadonlyArray<string> = [], baseline?: string): Hunt {
  const startedMs = Date.now()
  let missed: ReadonlyArray<string> | undefined
  const baselineFailures: number[] = []
  let start = 0
  let batch = FIRST_BATCH_SEEDS
  while (start < cap) {
    const seeds = Math.min(batch, cap - start)
    const summary = sweep(root, scenario, start, seeds, jobs)
    missed = missed === undefined ? summary.missedMarks : missed.filter((mark) => summary.missedMarks.includes(mark))
    const first = [...summary.failures].sort((a, b) => a.seed - b.seed).find((failure) => {
      if (baseline === undefined || sweep(baseline, scenario, failure.seed, 1, 1).failures.length === 0) return true
      if (!baselineFailures.includes(failure.seed)) baselineFailures.push(failure.seed)
      return false
    })
    if (first !== undefined) {
      return {
        scenario,
        seedsRun: first.seed + 1,
        firstFailingSeed: first.seed,
        seconds: (Date.now() - startedMs) / 1000,
        violation: violationOf(first.detail),
        invariant: invariantOf(first.kind, first.detail),
        baselineFailures,
        missedMarks: missed
      }
    }
    start += seeds
    batch *= 2
  }
  const seconds = (Date.now() - startedMs) / 1000
  const missedMarks = missed ?? []
  const suppressed = suppressedMarks.filter((mark) => missedMarks.includes(mark))
  if (suppressed.length > 0) {
    // Caught by coverage: the whole hunt counts as the failing sweep, its last seed as the first failure.
    const violation = `coverage: ${suppressed.join(", ")} never reached in ${start} seeds`
    return { scenario, seedsRun: start, firstFailingSeed: start - 1, seconds, violation, invariant: "coverage", baselineFailures, missedMarks }
  }
  return { scenario, seedsRun: start, firstFailingSeed: null, seconds, violation: null, invariant: null, baselineFailures, missedMarks }
}

const invokedDirectly = process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)
if (invokedDirectly) {
  const [scenario, capText, jobsText, marksText, baseline] = process.argv.slice(2)
  const cap = Number(capText ?? "100")
  const jobs = Number(jobsText ?? "2")
  if (scenario === undefined || !Number.isSafeInteger(cap) || cap <= 0 || !Number.isSafeInteger(jobs) || jobs <= 0) {
    process.stderr.write("usage: hunt <scenario> <cap> [jobs]\n")
    process.exit(1)
  }
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..")
  const marks = marksText === undefined || marksText === "" ? [] : marksText.split(",")
  process.stdout.write(`${JSON.stringify(hunt(root, scenario, cap, jobs, marks, baseline === "" ? undefined : baseline))}\n`)
}
