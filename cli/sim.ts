import { execFileSync, spawnSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { type Command, InvalidArgumentError } from "commander"
import { DEFAULT_SWEEP_SCENARIOS, SCENARIOS, findScenario } from "../scenarios/registry.js"
import type { Scenario, ScenarioResult } from "../scenarios/scenario.js"
import { distinctHits, runHtml, runJson, runText } from "../reports/run-report.js"
import { type SweepFailure, type SweepSummary, sweepHtml, sweepText } from "../reports/sweep-report.js"
import { firstDifference } from "../sim/trace.js"
import { EFFECT_VERSION } from "../sim/version.js"
import { parsePositiveInteger, parseSeed, parseShard } from "./options.js"

/** Exit codes of `sk sim`: distinct for a violated invariant and for non-determinism. */
export const EXIT_OK = 0
export const EXIT_USAGE = 1
export const EXIT_VIOLATION = 2
export const EXIT_NONDETERMINISM = 3

const SK_BIN = resolve(dirname(fileURLToPath(import.meta.url)), "../../bin/sk.js")
/** Every RECHECK_EVERY-th seed of a sweep is re-run in a child process. */
const RECHECK_EVERY_DEFAULT = 50

export function registerSimCommands(program: Command): void {
  const sim = program.command("sim").description("run the deterministic simulator")

  sim.command("list").description("list the named scenarios").option("--json", "print JSON").action((options: { json?: boolean }) => {
    if (options.json === true) {
      console.log(JSON.stringify(SCENARIOS.map((s) => ({ name: s.name, description: s.description }))))
      return
    }
    for (const s of SCENARIOS) console.log(`${s.name.padEnd(36)} ${s.description}`)
  })

  sim.command("run")
    .description("run one seed of a scenario and print its outcome, trace hash and repro line")
    .requiredOption("--scenario <name>", "scenario name (see `sk sim list`)", parseScenarioName)
    .requiredOption("--seed <n>", "seed, an integer in [0, 2^53-1]", parseSeed)
    .option("--json", "print one JSON object")
    .option("--trace <file>", "write the trace lines to FILE")
    .option("--report <file>", "write an HTML report (with the whole trace) to FILE")
    .action((options: { scenario: Scenario; seed: number; json?: boolean; trace?: string; report?: string }) => {
      const recordTrace = options.trace !== undefined || options.report !== undefined || options.json === true
      const result = options.scenario.run(options.seed, { recordTrace })
      if (options.trace !== undefined) writeFileSync(options.trace, result.traceLines.join("\n") + "\n")
      if (options.report !== undefined) writeFileSync(options.report, runHtml(result, runContext(result)))
      if (options.json === true) console.log(JSON.stringify(runJson(result, runContext(result))))
      else console.log(runText(result, runContext(result)))
      process.exitCode = exitCodeOf(result)
    })

  sim.command("replay")
    .description("re-run one seed and print its whole trace")
    .argument("<seed>", "seed", parseSeed)
    .option("--scenario <name>", "scenario name", parseScenarioName, findScenario("append-log"))
    .action((seed: number, options: { scenario: Scenario }) => {
      const result = options.scenario.run(seed, { recordTrace: true })
      for (const line of result.traceLines) console.log(line)
      console.log(runText(result, runContext(result)))
      process.exitCode = exitCodeOf(result)
    })

  sim.command("sweep")
    .description("run many seeds, re-run a sample in a child process to prove the hashes repeat")
    .requiredOption("--seeds <n>", "number of seeds", parsePositiveInteger)
    .option("--start <s>", "first seed", parseSeed, 0)
    .option("--scenario <name>", "only this scenario", parseScenarioName)
    .option("--shard <i/n>", "run only seeds with (seed mod n) == i", parseShard)
    .option("--recheck-every <k>", "re-run every k-th seed in a child process", parsePositiveInteger, RECHECK_EVERY_DEFAULT)
    .option("--json", "print one JSON summary")
    .option("--report <file>", "write an HTML report to FILE")
    .action((options: SweepOptions) => {
      if (options.start + options.seeds - 1 > Number.MAX_SAFE_INTEGER) {
        throw new InvalidArgumentError(`--start ${options.start} --seeds ${options.seeds} runs past the largest seed, 2^53-1`)
      }
      process.exitCode = sweep(options)
    })

  // Internal: hashes of a list of seeds, used by `sweep` to re-run seeds in a fresh process.
  sim.command("hashes", { hidden: true })
    .requiredOption("--scenario <name>", "scenario name", parseScenarioName)
    .requiredOption("--seed-list <list>", "comma-separated seeds", (text: string) => text.split(",").map(parseSeed))
    .option("--trace-dir <dir>", "write each seed's trace to DIR/<seed>.trace")
    .action((options: { scenario: Scenario; seedList: number[]; traceDir?: string }) => {
      for (const seed of options.seedList) {
        const result = options.scenario.run(seed, { recordTrace: options.traceDir !== undefined })
        if (options.traceDir !== undefined) writeFileSync(join(options.traceDir, `${seed}.trace`), result.traceLines.join("\n"))
        console.log(JSON.stringify({ seed, traceHash: result.traceHash }))
      }
    })
}

interface SweepOptions {
  seeds: number
  start: number
  scenario?: Scenario
  shard?: { index: number; count: number }
  recheckEvery: number
  json?: boolean
  report?: string
}

function sweep(options: SweepOptions): number {
  const scenarios = options.scenario !== undefined ? [options.scenario] : DEFAULT_SWEEP_SCENARIOS
  const failures: SweepFailure[] = []
  const marks = new Map<string, number>()
  const work: Record<string, number> = {}
  let runs = 0
  let firstFailureAfterSeeds: number | undefined
  let simulatedMs = 0
  let rechecked = 0
  const startedMs = Date.now()
  for (const scenario of scenarios) {
    const recheck: Array<{ seed: number; traceHash: string }> = []
    let ranHere = 0
    for (let seed = options.start; seed < options.start + options.seeds; seed++) {
      if (options.shard !== undefined && seed % options.shard.count !== options.shard.index) continue
      const result = scenario.run(seed, { recordTrace: false })
      // Sampled by position among the seeds this shard runs, so every shard re-checks some.
      const sampled = ranHere % options.recheckEvery === 0
      ranHere++
      runs++
      simulatedMs += result.simulatedMs
      for (const [key, value] of Object.entries(result.work)) work[key] = (work[key] ?? 0) + value
      for (const mark of result.marks) marks.set(mark, (marks.get(mark) ?? 0) + 1)
      if (!result.ok) {
        failures.push(failureOf(result))
        firstFailureAfterSeeds ??= runs
      }
      if (!result.ok || sampled) recheck.push({ seed, traceHash: result.traceHash })
    }
    rechecked += recheck.length
    failures.push(...recheckInChild(scenario, recheck))
  }
  const elapsedMs = Date.now() - startedMs
  const expected = new Set(scenarios.flatMap((s) => s.expectedMarks))
  const missedMarks = [...expected].filter((mark) => !marks.has(mark)).sort()
  const summary: SweepSummary = {
    scenarios: scenarios.map((s) => s.name),
    seeds: options.seeds,
    start: options.start,
    runs,
    failures,
    firstFailureAfterSeeds,
    rechecked,
    simulatedMs,
    elapsedMs,
    marks: Object.fromEntries([...marks].sort(([a], [b]) => (a < b ? -1 : 1))),
    missedMarks,
    work,
    effect: EFFECT_VERSION,
    commit: gitCommit()
  }
  if (options.report !== undefined) writeFileSync(options.report, sweepHtml(summary))
  console.log(options.json === true ? JSON.stringify(summary) : sweepText(summary))
  if (failures.some((f) => f.kind === "nondeterminism")) return EXIT_NONDETERMINISM
  return failures.length > 0 ? EXIT_VIOLATION : EXIT_OK
}

/**
 * Re-runs seeds in a fresh process, in reverse order (so a run that depends on what ran before
 * it in the process shows up too); a differing hash is non-determinism, named by its first
 * differing trace line.
 */
function recheckInChild(scenario: Scenario, seeds: ReadonlyArray<{ seed: number; traceHash: string }>): SweepFailure[] {
  if (seeds.length === 0) return []
  const seedList = seeds.map((s) => s.seed).reverse().join(",")
  const child = spawnSync(process.execPath, [SK_BIN, "sim", "hashes", "--scenario", scenario.name, "--seed-list", seedList], {
    encoding: "utf8",
    maxBuffer: 64 * 1024 * 1024
  })
  if (child.status !== 0) {
    return [{ scenario: scenario.name, seed: seeds[0]!.seed, kind: "nondeterminism", detail: `re-check process failed: ${child.stderr.trim()}`, repro: reproLine(scenario.name, seeds[0]!.seed) }]
  }
  const childHashes = new Map<number, string>()
  for (const line of child.stdout.split("\n")) {
    if (line.trim().length === 0) continue
    const parsed = JSON.parse(line) as { seed: number; traceHash: string }
    childHashes.set(parsed.seed, parsed.traceHash)
  }
  const failures: SweepFailure[] = []
  for (const { seed, traceHash } of seeds) {
    if (childHashes.get(seed) === traceHash) continue
    failures.push({
      scenario: scenario.name,
      seed,
      kind: "nondeterminism",
      detail: `${scenario.name} seed ${seed}: hash ${traceHash.slice(0, 16)} here, ${childHashes.get(seed)?.slice(0, 16) ?? "none"} in a child process; ${describeDifference(scenario, seed)}`,
      repro: reproLine(scenario.name, seed)
    })
  }
  return failures
}

/** Records the trace here and in a child process and names the first line that differs. */
export function describeDifference(scenario: Scenario, seed: number): string {
  const here = scenario.run(seed, { recordTrace: true }).traceLines
  const dir = mkdtempSync(join(tmpdir(), "sk-recheck-"))
  try {
    execFileSync(process.execPath, [SK_BIN, "sim", "hashes", "--scenario", scenario.name, "--seed-list", String(seed), "--trace-dir", dir])
    const there = readFileSync(join(dir, `${seed}.trace`), "utf8").split("\n")
    const index = firstDifference(here, there)
    if (index === undefined) return "traces recorded again are equal (the difference depends on what ran before in the process)"
    return `first difference at trace line ${index + 1}: here "${here[index] ?? "<end>"}", child "${there[index] ?? "<end>"}"`
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

function failureOf(result: ScenarioResult): SweepFailure {
  const nondeterministic = result.nondeterminism.length > 0
  const detail = nondeterministic
    ? `${result.scenario} seed ${result.seed}: touched ${distinctHits(result).map((h) => `${h.what} at ${h.site}`).join("; ")}`
    : `${result.scenario} seed ${result.seed}: ${result.violations.map((v) => `${v.who} at ${v.atUs} µs: ${v.message}`).join("; ")}`
  return { scenario: result.scenario, seed: result.seed, kind: nondeterministic ? "nondeterminism" : "violation", detail, repro: reproLine(result.scenario, result.seed) }
}

export function exitCodeOf(result: ScenarioResult): number {
  if (result.nondeterminism.length > 0) return EXIT_NONDETERMINISM
  return result.violations.length > 0 ? EXIT_VIOLATION : EXIT_OK
}

function runContext(result: ScenarioResult) {
  return { effectVersion: EFFECT_VERSION, commit: gitCommit(), repro: reproLine(result.scenario, result.seed) }
}

export function reproLine(scenario: string, seed: number): string {
  return `sk sim run --scenario ${scenario} --seed ${seed}   # commit ${gitCommit()} effect ${EFFECT_VERSION}`
}

let cachedCommit: string | undefined
function gitCommit(): string {
  if (cachedCommit === undefined) {
    try {
      cachedCommit = execFileSync("git", ["rev-parse", "--short=12", "HEAD"], { cwd: dirname(SK_BIN), encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim()
    } catch {
      cachedCommit = "unknown"
    }
  }
  return cachedCommit
}

function parseScenarioName(name: string): Scenario {
  const scenario = findScenario(name)
  if (scenario === undefined) throw new InvalidArgumentError(`unknown scenario "${name}"; known: ${SCENARIOS.map((s) => s.name).join(", ")}`)
  return scenario
}
