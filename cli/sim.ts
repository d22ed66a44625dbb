import { writeFileSync } from "node:fs"
import { availableParallelism } from "node:os"
import { join } from "node:path"
import { type Command, InvalidArgumentError } from "commander"
import { DEFAULT_SWEEP_SCENARIOS, SCENARIOS, findScenario } from "../scenarios/registry.js"
import type { Scenario, ScenarioResult } from "../scenarios/scenario.js"
import { type RunContext, runHtml, runJson, runText, writeRunReport } from "../reports/run-report.js"
import { sweepHtml, sweepText } from "../reports/sweep-report.js"
import { EFFECT_VERSION, sourceCommit } from "../sim/version.js"
import { parsePositiveInteger, parseSeed, parseShard } from "./options.js"
import { registerShrinkCommand } from "./shrink.js"
import {
  EXIT_COVERAGE,
  MARKS_ENFORCED_RUNS_MIN,
  RECHECK_EVERY_MAX,
  type SweepOutcome,
  exitCodeOfVerdict,
  reproLine,
  runSweep,
  verdictOf
} from "./sweep.js"

export {
  EXIT_COVERAGE,
  EXIT_LIVENESS,
  EXIT_NONDETERMINISM,
  EXIT_OK,
  EXIT_SAFETY,
  EXIT_USAGE,
  LIVENESS_PREFIX,
  isLivenessViolation,
  reproLine
} from "./sweep.js"

/**
 * What `sk sim sweep` runs when no --scenario is named. Once the swarm scenario is registered
 * this becomes `[findScenario("swarm")!]`.
 */
/** The swarm over the whole service; `--scenario named` runs every other healthy scenario. */
const SWEEP_SCENARIOS_DEFAULT: ReadonlyArray<Scenario> = DEFAULT_SWEEP_SCENARIOS.filter((s) => s.name === "swarm")
const SWEEP_SCENARIOS_NAMED: ReadonlyArray<Scenario> = DEFAULT_SWEEP_SCENARIOS.filter((s) => s.name !== "swarm")
/** `sk sim replay` without --scenario replays this one (the first and quickest scenario). */
const REPLAY_SCENARIO_DEFAULT = "append-log"
/** Plain progress lines on a non-terminal (CI logs) come this often. */
const PROGRESS_INTERVAL_MS_DEFAULT = 5000

export function registerSimCommands(program: Command): void {
  const sim = program.command("sim").description("run the deterministic simulator")
    .addHelpText("after", [
      "",
      "Exit codes (run, replay, sweep): 0 ok, 1 usage, 2 safety violation, 3 non-determinism,",
      `4 liveness failure, 5 (sweep) a coverage mark never hit in at least ${MARKS_ENFORCED_RUNS_MIN} seeds of a scenario.`,
      "When several apply: non-determinism, then safety, then liveness, then coverage."
    ].join("\n"))

  sim.command("list").description("list the named scenarios").option("--json", "print JSON").action((options: { json?: boolean }) => {
    if (options.json === true) {
      console.log(JSON.stringify(SCENARIOS.map((s) => ({ name: s.name, description: s.description }))))
      return
    }
    for (const s of SCENARIOS) console.log(`${s.name.padEnd(36)} ${s.description}`)
  })

  sim.command("run")
    .description("run one seed of a scenario; print its outcome, trace hash and repro line; write its trace and reports to --out")
    .requiredOption("--scenario <name>", "scenario name (see `sk sim list`)", parseScenarioName)
    .requiredOption("--seed <n>", "seed, an integer in [0, 2^53-1]", parseSeed)
    .option("--json", "print one JSON object")
    .option("--out <dir>", "write trace.txt and the run reports here (default reports/out/<scenario>-<seed>/)")
    .option("--trace <file>", "also write the trace lines to FILE")
    .option("--report <file>", "also write the HTML report (with the whole trace) to FILE")
    .action((options: RunOptions) => {
      const result = options.scenario.run(options.seed, { recordTrace: true })
      const context = runContext(result)
      if (options.trace !== undefined) writeFileSync(options.trace, result.traceLines.join("\n") + "\n")
      if (options.report !== undefined) writeFileSync(options.report, runHtml(result, context))
      const { files } = writeRunReport(result, context, outDir(result, options.out))
      if (options.json === true) console.log(JSON.stringify({ ...runJson(result, context), files }))
      else console.log([runText(result, context), ...files.map((file) => `wrote ${file}`)].join("\n"))
      process.exitCode = exitCodeOf(result)
    })

  sim.command("replay")
    .description("re-run one seed, print its whole trace, outcome and trace hash (the hash a sweep records for that seed); write its reports to --out")
    .argument("<seed>", "seed", parseSeed)
    .option("--scenario <name>", `scenario name; name it, sweeps run several (default ${REPLAY_SCENARIO_DEFAULT})`, parseScenarioName, findScenario(REPLAY_SCENARIO_DEFAULT))
    .option("--out <dir>", "write trace.txt and the run reports here (default reports/out/<scenario>-<seed>/)")
    .action((seed: number, options: { scenario: Scenario; out?: string }) => {
      const result = options.scenario.run(seed, { recordTrace: true })
      const context = runContext(result)
      const { files } = writeRunReport(result, context, outDir(result, options.out))
      for (const line of result.traceLines) console.log(line)
      console.log([runText(result, context), ...files.map((file) => `wrote ${file}`)].join("\n"))
      process.exitCode = exitCodeOf(result)
    })

  sim.command("sweep")
    .description("run many seeds in worker threads; re-run a sample and every failing seed in another worker to prove their hashes repeat")
    .requiredOption("--seeds <n>", "number of seeds", parsePositiveInteger)
    .option("--start <s>", "first seed", parseSeed, 0)
    .option("--scenario <name>", `only this scenario, or "named" for every named scenario but the swarm, or "all" (default: ${SWEEP_SCENARIOS_DEFAULT.map((s) => s.name).join(", ")})`, parseSweepScenarios)
    .option("--shard <i/n>", "run only seeds with (seed mod n) == i", parseShard)
    .option("--jobs <j>", "worker threads (default: available parallelism)", parsePositiveInteger, availableParallelism())
    .option("--recheck-every <k>", `re-run every k-th seed in another worker (at most ${RECHECK_EVERY_MAX}: 5% or more)`, parseRecheckEvery, RECHECK_EVERY_MAX)
    .option("--json", "print one JSON summary")
    .option("--report <file>", "write an HTML report to FILE")
    .option("--hashes <file>", "write each run's trace hash to FILE, one \"scenario seed hash\" line per run in seed order")
    .option("--progress-interval-ms <ms>", "how often a non-terminal gets a progress line", parsePositiveInteger, PROGRESS_INTERVAL_MS_DEFAULT)
    .action(async (options: SweepOptions) => {
      if (options.start + options.seeds - 1 > Number.MAX_SAFE_INTEGER) {
        throw new InvalidArgumentError(`--start ${options.start} --seeds ${options.seeds} runs past the largest seed, 2^53-1`)
      }
      const outcome = await runSweep({
        scenarios: options.scenario ?? SWEEP_SCENARIOS_DEFAULT,
        start: options.start,
        seeds: options.seeds,
        shard: options.shard,
        jobs: options.jobs,
        recheckEvery: options.recheckEvery,
        progress: { tty: process.stderr.isTTY === true, intervalMs: options.progressIntervalMs, stream: process.stderr }
      })
      if (options.report !== undefined) writeFileSync(options.report, sweepHtml(outcome.summary))
      if (options.hashes !== undefined) writeFileSync(options.hashes, outcome.seedHashes.map((line) => `${line}\n`).join(""))
      console.log(options.json === true ? JSON.stringify(sweepJson(outcome)) : sweepOutcomeText(outcome))
      process.exitCode = outcome.exitCode
    })

  registerShrinkCommand(sim)
}

interface RunOptions {
  scenario: Scenario
  seed: number
  json?: boolean
  out?: string
  trace?: string
  report?: string
}

interface SweepOptions {
  seeds: number
  start: number
  scenario?: ReadonlyArray<Scenario>
  shard?: { index: number; count: number }
  jobs: number
  recheckEvery: number
  json?: boolean
  report?: string
  hashes?: string
  progressIntervalMs: number
}

export function exitCodeOf(result: ScenarioResult): number {
  return exitCodeOfVerdict(verdictOf(result))
}

function sweepJson(outcome: SweepOutcome) {
  return {
    ...outcome.summary,
    verdict: outcome.verdict,
    exitCode: outcome.exitCode,
    coverageFailures: outcome.coverageFailures,
    coverageNotJudged: outcome.coverageNotJudged,
    seedHashesDigest: outcome.seedHashesDigest
  }
}

/** The report's text, then what only the sweep knows: coverage judged or not, the hash digest, the verdict. */
function sweepOutcomeText(outcome: SweepOutcome): string {
  const lines = [sweepText(outcome.summary)]
  for (const failure of outcome.coverageFailures) {
    lines.push(`COVERAGE: ${failure.scenario} never reached mark ${failure.mark} in ${failure.runs} seeds`)
  }
  if (outcome.coverageNotJudged.length > 0) {
    lines.push(`marks not required of ${outcome.coverageNotJudged.join(", ")}: fewer than ${MARKS_ENFORCED_RUNS_MIN} seeds each`)
  }
  lines.push(`seed hashes digest: ${outcome.seedHashesDigest}`)
  const verdict = outcome.exitCode === EXIT_COVERAGE ? "coverage" : outcome.verdict
  lines.push(`${outcome.exitCode === 0 ? "PASS" : `FAIL (${verdict})`}: exit ${outcome.exitCode}`)
  return lines.join("\n")
}

function runContext(result: ScenarioResult): RunContext {
  return { effectVersion: EFFECT_VERSION, commit: sourceCommit(), repro: reproLine(result.scenario, result.seed) }
}

function outDir(result: ScenarioResult, out: string | undefined): string {
  return out ?? join("reports", "out", `${result.scenario}-${result.seed}`)
}

function parseRecheckEvery(text: string): number {
  const every = parsePositiveInteger(text)
  if (every > RECHECK_EVERY_MAX) throw new InvalidArgumentError(`--recheck-every must be at most ${RECHECK_EVERY_MAX} (re-check 5% of seeds or more), got ${every}`)
  return every
}

function parseSweepScenarios(text: string): ReadonlyArray<Scenario> {
  if (text === "named") return SWEEP_SCENARIOS_NAMED
  if (text === "all") return DEFAULT_SWEEP_SCENARIOS
  return [parseScenarioName(text)]
}

function parseScenarioName(name: string): Scenario {
  const scenario = findScenario(name)
  if (scenario === undefined) throw new InvalidArgumentError(`unknown scenario "${name}"; known: ${SCENARIOS.map((s) => s.name).join(", ")}`)
  return scenario
}
