import { createHash } from "node:crypto"
import { existsSync } from "node:fs"
import { dirname, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { Worker } from "node:worker_threads"
import cliProgress from "cli-progress"
import type { Scenario, ScenarioResult } from "../scenarios/scenario.js"
import { distinctHits } from "../reports/run-report.js"
import type { SweepFailure, SweepSummary } from "../reports/sweep-report.js"
import { firstDifference } from "../sim/trace.js"
import { EFFECT_VERSION, sourceCommit } from "../sim/version.js"
import type { Violation } from "../sim/world.js"

/**
 * `sk sim sweep`: seeds run in worker threads; a sample of seeds and every failing seed run
 * again in another worker to prove their trace hashes repeat. Results are gathered in seed
 * order, so the summary does not depend on how many workers ran or which finished first.
 */

// Exit codes of `sk sim run|replay|sweep`. Several kinds in one sweep: the first of
// non-determinism, safety, liveness, coverage wins (a hash that does not repeat makes every
// other verdict of that run doubtful; a lost commit matters more than a stall).
export const EXIT_OK = 0
export const EXIT_USAGE = 1
export const EXIT_SAFETY = 2
export const EXIT_NONDETERMINISM = 3
export const EXIT_LIVENESS = 4
/** A sweep large enough to judge coverage never reached a mark its scenarios expect. */
export const EXIT_COVERAGE = 5

/** Scenarios mark a liveness violation (no progress once faults stop) by starting its message so. */
export const LIVENESS_PREFIX = "liveness:"

export function isLivenessViolation(violation: Pick<Violation, "message">): boolean {
  return violation.message.startsWith(LIVENESS_PREFIX)
}

export type Verdict = "ok" | "liveness" | "safety" | "nondeterminism"

/** Worst first, as the exit code picks. */
const VERDICT_PRECEDENCE: ReadonlyArray<Verdict> = ["nondeterminism", "safety", "liveness", "ok"]

export function verdictOf(result: Pick<ScenarioResult, "violations" | "nondeterminism">): Verdict {
  if (result.nondeterminism.length > 0) return "nondeterminism"
  if (result.violations.some((v) => !isLivenessViolation(v))) return "safety"
  return result.violations.length > 0 ? "liveness" : "ok"
}

export function worstVerdict(verdicts: Iterable<Verdict>): Verdict {
  let worst = VERDICT_PRECEDENCE.length - 1
  for (const verdict of verdicts) worst = Math.min(worst, VERDICT_PRECEDENCE.indexOf(verdict))
  return VERDICT_PRECEDENCE[worst]!
}

export function exitCodeOfVerdict(verdict: Verdict): number {
  switch (verdict) {
    case "ok": return EXIT_OK
    case "liveness": return EXIT_LIVENESS
    case "safety": return EXIT_SAFETY
    case "nondeterminism": return EXIT_NONDETERMINISM
  }
}

export function reproLine(scenario: string, seed: number): string {
  return `sk sim run --scenario ${scenario} --seed ${seed}   # commit ${sourceCommit()} effect ${EFFECT_VERSION}`
}

/** The default share of seeds re-run in another worker: at least one in RECHECK_EVERY_MAX. */
export const RECHECK_EVERY_MAX = 20
/** Coverage marks are required only from this many runs of a scenario: small sweeps miss rare marks. */
export const MARKS_ENFORCED_RUNS_MIN = 100
/** Differing hashes whose first differing trace line is looked for (each costs two recorded runs). */
const DIFFERENCES_DESCRIBED_MAX = 5
/** Seeds handed to a worker at once: few enough to keep workers evenly loaded at the end. */
const BATCH_TASKS_MAX = 8
/** Detail kept per failing seed (messages stay small; the repro line shows everything). */
const DETAIL_VIOLATIONS_MAX = 5

/** One seed of one scenario; `index` is its place in seed order. */
export interface SeedTask {
  readonly index: number
  readonly scenario: string
  readonly seed: number
}

/** What a worker sends back per seed: only what the summary needs (no trace lines). */
export interface SeedOutcome {
  readonly index: number
  readonly traceHash: string
  readonly simulatedMs: number
  readonly verdict: Verdict
  readonly detail: string | undefined
  readonly marks: ReadonlyArray<string>
  readonly work: Readonly<Record<string, number>>
}

export type ToWorker =
  | { readonly type: "run"; readonly tasks: ReadonlyArray<SeedTask> }
  | { readonly type: "trace"; readonly task: SeedTask }

export type FromWorker =
  | { readonly type: "outcome"; readonly outcome: SeedOutcome }
  | { readonly type: "done" }
  | { readonly type: "trace"; readonly lines: ReadonlyArray<string> }

/** Runs one task where it stands (in a worker): the outcome a summary needs. */
export function outcomeOf(task: SeedTask, result: ScenarioResult): SeedOutcome {
  const verdict = verdictOf(result)
  return {
    index: task.index,
    traceHash: result.traceHash,
    simulatedMs: result.simulatedMs,
    verdict,
    detail: verdict === "ok" ? undefined : detailOf(result, verdict),
    marks: result.marks,
    work: result.work
  }
}

function detailOf(result: ScenarioResult, verdict: Verdict): string {
  if (verdict === "nondeterminism") {
    return `${result.scenario} seed ${result.seed}: touched ${distinctHits(result).map((h) => `${h.what} at ${h.site}`).join("; ")}`
  }
  const shown = result.violations.slice(0, DETAIL_VIOLATIONS_MAX).map((v) => `${v.who} at ${v.atUs} µs: ${v.message}`)
  const more = result.violations.length - shown.length
  return `${result.scenario} seed ${result.seed}: ${shown.join("; ")}${more > 0 ? `; and ${more} more` : ""}`
}

export interface SweepRequest {
  readonly scenarios: ReadonlyArray<Scenario>
  readonly start: number
  readonly seeds: number
  readonly shard: { readonly index: number; readonly count: number } | undefined
  readonly jobs: number
  readonly recheckEvery: number
  readonly progress: ProgressOptions
}

export interface ProgressOptions {
  /** A bar on a terminal; plain lines every `intervalMs` otherwise (CI logs). */
  readonly tty: boolean
  readonly intervalMs: number
  readonly stream: NodeJS.WritableStream
}

export interface SweepOutcome {
  readonly summary: SweepSummary
  readonly verdict: Verdict
  readonly exitCode: number
  /** Marks a scenario expected but never reached, where enough seeds ran to require them. */
  readonly coverageFailures: ReadonlyArray<{ readonly scenario: string; readonly mark: string; readonly runs: number }>
  /** Scenarios whose marks were not required (fewer than MARKS_ENFORCED_RUNS_MIN runs). */
  readonly coverageNotJudged: ReadonlyArray<string>
  /** "scenario seed traceHash", one per run in seed order. */
  readonly seedHashes: ReadonlyArray<string>
  /** SHA-256 over seedHashes: equal across --jobs and machines for the same code. */
  readonly seedHashesDigest: string
}

/** Seeds in order, scenario by scenario; a shard keeps the seeds with seed mod n = i. */
export function planSweep(scenarios: ReadonlyArray<Scenario>, start: number, seeds: number, shard: SweepRequest["shard"]): SeedTask[] {
  const tasks: SeedTask[] = []
  for (const scenario of scenarios) {
    for (let seed = start; seed < start + seeds; seed++) {
      if (shard !== undefined && seed % shard.count !== shard.index) continue
      tasks.push({ index: tasks.length, scenario: scenario.name, seed })
    }
  }
  return tasks
}

/**
 * Which tasks run again: every k-th by position within its scenario (spread over the range,
 * and every shard re-checks some of its own), plus every failing one.
 */
export function recheckSelection(tasks: ReadonlyArray<SeedTask>, outcomes: ReadonlyArray<SeedOutcome>, every: number): SeedTask[] {
  const positionInScenario = new Map<string, number>()
  return tasks.filter((task) => {
    const position = positionInScenario.get(task.scenario) ?? 0
    positionInScenario.set(task.scenario, position + 1)
    return position % every === 0 || outcomes[task.index]!.verdict !== "ok"
  })
}

export async function runSweep(request: SweepRequest): Promise<SweepOutcome> {
  const startedMs = Date.now()
  const tasks = planSweep(request.scenarios, request.start, request.seeds, request.shard)
  const outcomes: Array<SeedOutcome | undefined> = new Array<SeedOutcome | undefined>(tasks.length)
  const ranBy = new Array<number>(tasks.length)
  // With one job a second worker exists only to re-check: a re-run must happen in a fresh
  // module instance, or module-global state would repeat and hide itself.
  const workerCount = Math.max(1, Math.min(request.jobs, tasks.length))
  const pool: SweepWorker[] = []
  const workerAt = (id: number) => (pool[id] ??= new SweepWorker(id))
  const progress = startProgress(request.progress, tasks.length)
  let failed = 0
  try {
    let next = 0
    await Promise.all(Array.from({ length: workerCount }, async (_, id) => {
      const worker = workerAt(id)
      while (next < tasks.length) {
        const size = Math.max(1, Math.min(BATCH_TASKS_MAX, Math.ceil((tasks.length - next) / (2 * workerCount))))
        const batch = tasks.slice(next, next + size)
        next += batch.length
        await worker.run(batch, (outcome) => {
          outcomes[outcome.index] = outcome
          ranBy[outcome.index] = id
          if (outcome.verdict !== "ok") failed++
          progress.ran(failed)
        })
      }
    }))
    const ran = outcomes.map((o, index) => {
      if (o === undefined) throw new Error(`sweep: no outcome for ${tasks[index]!.scenario} seed ${tasks[index]!.seed}`)
      return o
    })

    const recheck = recheckSelection(tasks, ran, request.recheckEvery)
    progress.rechecking(recheck.length)
    const recheckWorkers = Math.max(2, workerCount)
    const rerunBy = new Map<number, number>()
    const rerunHash = new Map<number, string>()
    // Each worker re-runs what another ran, newest first, so a run that depends on what ran
    // before it in its thread sees a different history.
    await Promise.all(Array.from({ length: recheckWorkers }, async (_, id) => {
      const mine = recheck.filter((task) => (ranBy[task.index]! + 1) % recheckWorkers === id).reverse()
      if (mine.length === 0) return
      const worker = workerAt(id)
      for (let at = 0; at < mine.length; at += BATCH_TASKS_MAX) {
        await worker.run(mine.slice(at, at + BATCH_TASKS_MAX), (outcome) => {
          rerunBy.set(outcome.index, id)
          rerunHash.set(outcome.index, outcome.traceHash)
          if (outcome.traceHash !== ran[outcome.index]!.traceHash) failed++
          progress.rechecked(failed)
        })
      }
    }))

    const recheckFailures: Array<{ task: SeedTask; detail: string }> = []
    for (const task of recheck) {
      const first = ran[task.index]!
      const again = rerunHash.get(task.index)
      if (again === first.traceHash) continue
      const firstWorker = ranBy[task.index]!
      const secondWorker = rerunBy.get(task.index)!
      let detail = `${task.scenario} seed ${task.seed}: hash ${first.traceHash.slice(0, 16)} in worker ${firstWorker}, ${again?.slice(0, 16) ?? "none"} when re-run in worker ${secondWorker}`
      if (recheckFailures.length < DIFFERENCES_DESCRIBED_MAX) {
        // Against a fresh thread: its history (none) differs from the first worker's, so state
        // left behind by earlier runs shows up even where both re-check workers ran the same seeds.
        const fresh = workerAt(pool.length)
        detail += `; ${await describeDifference(task, workerAt(firstWorker), fresh)}`
        await fresh.close()
      }
      recheckFailures.push({ task, detail })
    }
    progress.stop(failed)
    return summarize(request, tasks, ran, recheck.length, recheckFailures, Date.now() - startedMs)
  } finally {
    progress.stop(failed)
    await Promise.all(pool.map((worker) => worker.close()))
  }
}

/** Records the trace in both workers (the second one fresh) and names the first line that differs. */
async function describeDifference(task: SeedTask, first: SweepWorker, second: SweepWorker): Promise<string> {
  const [here, there] = await Promise.all([first.trace(task), second.trace(task)])
  const index = firstDifference(here, there)
  if (index === undefined) return "traces recorded again are equal (the difference depends on what ran before in the thread)"
  return `first difference at trace line ${index + 1}: worker ${first.id} "${here[index] ?? "<end>"}", fresh worker ${second.id} "${there[index] ?? "<end>"}"`
}

/** The summary, in seed order whatever order the outcomes arrived in. */
export function summarize(
  request: Pick<SweepRequest, "scenarios" | "start" | "seeds">,
  tasks: ReadonlyArray<SeedTask>,
  outcomes: ReadonlyArray<SeedOutcome>,
  rechecked: number,
  recheckFailures: ReadonlyArray<{ task: SeedTask; detail: string }>,
  elapsedMs: number
): SweepOutcome {
  const failures: SweepFailure[] = []
  const verdicts: Verdict[] = []
  const marks = new Map<string, number>()
  const marksByScenario = new Map<string, Set<string>>()
  const runsByScenario = new Map<string, number>()
  const work: Record<string, number> = {}
  const seedHashes: string[] = []
  let simulatedMs = 0
  let firstFailureAfterSeeds: number | undefined
  for (const task of tasks) {
    const outcome = outcomes[task.index]!
    seedHashes.push(`${task.scenario} ${task.seed} ${outcome.traceHash}`)
    runsByScenario.set(task.scenario, (runsByScenario.get(task.scenario) ?? 0) + 1)
    simulatedMs += outcome.simulatedMs
    for (const [key, value] of Object.entries(outcome.work)) work[key] = (work[key] ?? 0) + value
    const reached = marksByScenario.get(task.scenario) ?? new Set<string>()
    marksByScenario.set(task.scenario, reached)
    for (const mark of outcome.marks) {
      marks.set(mark, (marks.get(mark) ?? 0) + 1)
      reached.add(mark)
    }
    if (outcome.verdict === "ok") continue
    verdicts.push(outcome.verdict)
    firstFailureAfterSeeds ??= task.index + 1
    failures.push({
      scenario: task.scenario,
      seed: task.seed,
      kind: outcome.verdict === "nondeterminism" ? "nondeterminism" : "violation",
      detail: outcome.verdict === "liveness" ? `liveness failure: ${outcome.detail ?? ""}` : outcome.detail ?? "",
      repro: reproLine(task.scenario, task.seed)
    })
  }
  for (const { task, detail } of recheckFailures) {
    verdicts.push("nondeterminism")
    failures.push({ scenario: task.scenario, seed: task.seed, kind: "nondeterminism", detail, repro: reproLine(task.scenario, task.seed) })
  }

  const coverageFailures: Array<{ scenario: string; mark: string; runs: number }> = []
  const coverageNotJudged: string[] = []
  const missed = new Set<string>()
  for (const scenario of request.scenarios) {
    const runs = runsByScenario.get(scenario.name) ?? 0
    const never = scenario.expectedMarks.filter((mark) => !(marksByScenario.get(scenario.name)?.has(mark) ?? false))
    for (const mark of never) missed.add(mark)
    if (runs < MARKS_ENFORCED_RUNS_MIN) {
      if (never.length > 0) coverageNotJudged.push(scenario.name)
      continue
    }
    for (const mark of [...never].sort()) coverageFailures.push({ scenario: scenario.name, mark, runs })
  }

  const summary: SweepSummary = {
    scenarios: request.scenarios.map((s) => s.name),
    seeds: request.seeds,
    start: request.start,
    runs: tasks.length,
    failures,
    firstFailureAfterSeeds,
    rechecked,
    simulatedMs,
    elapsedMs,
    marks: Object.fromEntries([...marks].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))),
    missedMarks: [...missed].sort(),
    work,
    effect: EFFECT_VERSION,
    commit: sourceCommit()
  }
  const verdict = worstVerdict(verdicts)
  const exitCode = verdict === "ok" && coverageFailures.length > 0 ? EXIT_COVERAGE : exitCodeOfVerdict(verdict)
  const digest = createHash("sha256")
  for (const line of seedHashes) digest.update(`${line}\n`)
  return { summary, verdict, exitCode, coverageFailures, coverageNotJudged, seedHashes, seedHashesDigest: digest.digest("hex") }
}

/** The compiled worker beside this module; from the sources (tests), the built one in dist/. */
function workerPath(): string {
  const here = fileURLToPath(import.meta.url)
  const beside = resolve(dirname(here), "sweep-worker.js")
  if (here.endsWith(".js")) return beside
  const built = resolve(dirname(here), "../dist/cli/sweep-worker.js")
  if (!existsSync(built)) throw new Error(`sweep: ${built} is missing; run npm run build`)
  return built
}

type Pending =
  | { readonly kind: "run"; readonly onOutcome: (outcome: SeedOutcome) => void; readonly resolve: () => void; readonly reject: (error: Error) => void }
  | { readonly kind: "trace"; readonly resolve: (lines: ReadonlyArray<string>) => void; readonly reject: (error: Error) => void }

/**
 * One worker thread, one request at a time. Seeds travel in messages, never in argv or
 * workerData (a seed list in argv once failed with E2BIG near 19,000 seeds).
 */
class SweepWorker {
  private readonly worker: Worker
  private pending: Pending | undefined
  private failure: Error | undefined

  constructor(readonly id: number) {
    this.worker = new Worker(workerPath())
    this.worker.on("message", (message: FromWorker) => this.receive(message))
    this.worker.on("error", (error) => this.fail(error))
    this.worker.on("exit", (code) => this.fail(new Error(`sweep worker ${id} exited with code ${code}`)))
  }

  run(tasks: ReadonlyArray<SeedTask>, onOutcome: (outcome: SeedOutcome) => void): Promise<void> {
    return new Promise((resolve, reject) => this.send({ type: "run", tasks }, { kind: "run", onOutcome, resolve, reject }, reject))
  }

  trace(task: SeedTask): Promise<ReadonlyArray<string>> {
    return new Promise((resolve, reject) => this.send({ type: "trace", task }, { kind: "trace", resolve, reject }, reject))
  }

  async close(): Promise<void> {
    this.failure ??= new Error(`sweep worker ${this.id} closed`)
    await this.worker.terminate()
  }

  private send(message: ToWorker, pending: Pending, reject: (error: Error) => void): void {
    if (this.failure !== undefined) return reject(this.failure)
    if (this.pending !== undefined) return reject(new Error(`sweep worker ${this.id} is busy`))
    this.pending = pending
    this.worker.postMessage(message)
  }

  private receive(message: FromWorker): void {
    const pending = this.pending
    if (pending === undefined) return this.fail(new Error(`sweep worker ${this.id} sent ${message.type} unasked`))
    if (message.type === "outcome" && pending.kind === "run") return pending.onOutcome(message.outcome)
    this.pending = undefined
    if (message.type === "done" && pending.kind === "run") return pending.resolve()
    if (message.type === "trace" && pending.kind === "trace") return pending.resolve(message.lines)
    pending.reject(new Error(`sweep worker ${this.id} sent ${message.type} while a ${pending.kind} was pending`))
  }

  private fail(error: Error): void {
    this.failure ??= error
    const pending = this.pending
    this.pending = undefined
    pending?.reject(this.failure)
  }
}

interface Progress {
  ran(failed: number): void
  rechecking(count: number): void
  rechecked(failed: number): void
  stop(failed: number): void
}

function startProgress(options: ProgressOptions, runs: number): Progress {
  let done = 0
  let total = runs
  let phase = "runs"
  if (options.tty) {
    const bar = new cliProgress.SingleBar({
      format: "sweep [{bar}] {value}/{total} {phase} | {failed} failed | {duration_formatted} elapsed, ETA {eta_formatted}",
      stream: options.stream,
      hideCursor: true
    }, cliProgress.Presets.shades_classic)
    bar.start(total, 0, { phase, failed: 0 })
    let stopped = false
    return {
      ran: (failed) => bar.update(++done, { failed }),
      rechecking: (count) => {
        phase = "re-checks"
        done = 0
        total = count
        bar.setTotal(total)
        bar.update(0, { phase })
      },
      rechecked: (failed) => bar.update(++done, { failed }),
      stop: (failed) => {
        if (stopped) return
        stopped = true
        bar.update(done, { failed })
        bar.stop()
      }
    }
  }
  const startedMs = Date.now()
  let failedNow = 0
  const timer = setInterval(() => {
    options.stream.write(`sweep: ${done}/${total} ${phase}, ${failedNow} failed, ${((Date.now() - startedMs) / 1000).toFixed(0)} s elapsed\n`)
  }, options.intervalMs)
  timer.unref()
  return {
    ran: (failed) => {
      done++
      failedNow = failed
    },
    rechecking: (count) => {
      phase = "re-checks"
      done = 0
      total = count
    },
    rechecked: (failed) => {
      done++
      failedNow = failed
    },
    stop: () => clearInterval(timer)
  }
}
