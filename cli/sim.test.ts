// Goal: `sk sim` behaves as documented: same seed → same trace hash within one process, across
// processes and across worker threads; distinct exit codes for safety, liveness and
// non-determinism; a sweep's summary and per-seed hashes do not depend on --jobs; a hash that
// does not repeat in another worker is named by its first differing trace line; repro lines
// name the commit (dirty or not); clear errors for bad input. Method: run the built CLI
// (`npm test` builds first) in child processes, the scenario and the sweep in-process, and
// compare.
import * as childProcess from "node:child_process"
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { PassThrough } from "node:stream"
import { fileURLToPath } from "node:url"
import { afterAll, describe, expect, test, vi } from "vitest"
import { findScenario } from "../scenarios/registry.js"
import type { Scenario, ScenarioResult } from "../scenarios/scenario.js"
import { describeCommit } from "../sim/version.js"
import { EXIT_LIVENESS, EXIT_NONDETERMINISM, EXIT_OK, EXIT_SAFETY, exitCodeOf, isLivenessViolation } from "./sim.js"
import { EXIT_COVERAGE, MARKS_ENFORCED_RUNS_MIN, planSweep, recheckSelection, runSweep, type SeedOutcome, summarize, worstVerdict } from "./sweep.js"

// Every child process this file or the code under test starts goes through these spies, so a
// test can prove that a sweep starts none with seeds in its argv (seed lists in argv failed
// with E2BIG near 19,000 seeds).
vi.mock("node:child_process", async (importOriginal) => {
  const actual = await importOriginal<typeof import("node:child_process")>()
  return {
    ...actual,
    spawn: vi.fn(actual.spawn),
    spawnSync: vi.fn(actual.spawnSync),
    exec: vi.fn(actual.exec),
    execSync: vi.fn(actual.execSync),
    execFile: vi.fn(actual.execFile),
    execFileSync: vi.fn(actual.execFileSync),
    fork: vi.fn(actual.fork)
  }
})

const SK = resolve(dirname(fileURLToPath(import.meta.url)), "../bin/sk.js")
const scratch = mkdtempSync(join(tmpdir(), "sk-sim-test-"))
afterAll(() => rmSync(scratch, { recursive: true, force: true }))

function sk(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  // --out keeps run reports out of the checkout's reports/out/.
  const out = args[1] === "run" || args[1] === "replay" ? ["--out", mkdtempSync(join(scratch, "out-"))] : []
  const child = childProcess.spawnSync(process.execPath, [SK, ...args, ...out], { encoding: "utf8", maxBuffer: 256 * 1024 * 1024 })
  return { status: child.status, stdout: child.stdout, stderr: child.stderr }
}

function fakeResult(violations: ReadonlyArray<string>, nondeterminism: number): ScenarioResult {
  return {
    scenario: "fake",
    seed: 0,
    ok: violations.length === 0 && nondeterminism === 0,
    traceHash: "0",
    events: 0,
    simulatedMs: 0,
    violations: violations.map((message) => ({ atUs: 0, who: "n1", message })),
    nondeterminism: Array.from({ length: nondeterminism }, () => ({ what: "Date.now", site: "here" })),
    config: "",
    work: {},
    marks: [],
    traceLines: []
  }
}

describe("sk sim", () => {
  test("same seed, same hash: in one process, across two processes; different seeds differ", () => {
    const scenario = findScenario("append-log")!
    const inProcess = [scenario.run(17, { recordTrace: false }), scenario.run(17, { recordTrace: false })]
    expect(inProcess[0]!.traceHash).toBe(inProcess[1]!.traceHash)
    expect(inProcess[0]!.work["recordsAcked"]).toBeGreaterThan(100) // the seed did real work
    const children = [sk("sim", "run", "--scenario", "append-log", "--seed", "17", "--json"), sk("sim", "run", "--scenario", "append-log", "--seed", "17", "--json")]
    for (const child of children) expect(child.status).toBe(0)
    const parsed = children.map((c) => JSON.parse(c.stdout) as Record<string, unknown>)
    expect(parsed[0]!["traceHash"]).toBe(inProcess[0]!.traceHash)
    expect(parsed[1]!["traceHash"]).toBe(inProcess[0]!.traceHash)
    for (const key of ["scenario", "seed", "ok", "traceHash", "events", "simulatedMs", "violations", "files"]) expect(parsed[0]).toHaveProperty(key)
    expect(parsed[0]!["ok"]).toBe(true)
    const hashes = new Set([17, 18, 19, 20, 21].map((seed) => scenario.run(seed, { recordTrace: false }).traceHash))
    expect(hashes.size).toBe(5)
  })

  test("exit codes of run: 0 pass, 2 safety violation, 3 non-determinism", () => {
    expect(sk("sim", "run", "--scenario", "append-log", "--seed", "1").status).toBe(EXIT_OK)
    const violated = sk("sim", "run", "--scenario", "append-log-planted-ack-before-fsync", "--seed", "0")
    expect(violated.status).toBe(EXIT_SAFETY)
    expect(violated.stdout).toMatch(/acknowledged record \d+ lost by a crash/)
    expect(violated.stdout).toMatch(/repro: sk sim run --scenario append-log-planted-ack-before-fsync --seed 0 .*commit \S+ effect 4\./)
    const unsynced = sk("sim", "run", "--scenario", "acceptor-storage-planted-no-fsync", "--seed", "0")
    expect(unsynced.status).toBe(EXIT_SAFETY)
    const clock = sk("sim", "run", "--scenario", "append-log-planted-wall-clock", "--seed", "0")
    expect(clock.status).toBe(EXIT_NONDETERMINISM)
    expect(clock.stdout).toMatch(/NON-DETERMINISM: touched Date\.now/)
  })

  test("verdicts: 'liveness:' violations alone exit 4; safety beats liveness; non-determinism beats both", () => {
    expect(isLivenessViolation({ message: "liveness: no commit in 5 s after faults stopped" })).toBe(true)
    expect(isLivenessViolation({ message: "commit_lsn went backwards (liveness phase)" })).toBe(false)
    expect(exitCodeOf(fakeResult([], 0))).toBe(EXIT_OK)
    expect(exitCodeOf(fakeResult(["liveness: stuck"], 0))).toBe(EXIT_LIVENESS)
    expect(exitCodeOf(fakeResult(["liveness: stuck", "acknowledged record 3 lost"], 0))).toBe(EXIT_SAFETY)
    expect(exitCodeOf(fakeResult(["liveness: stuck", "acknowledged record 3 lost"], 1))).toBe(EXIT_NONDETERMINISM)
    expect(worstVerdict(["liveness", "ok"])).toBe("liveness")
    expect(worstVerdict(["liveness", "safety", "liveness"])).toBe("safety")
    expect(worstVerdict(["safety", "nondeterminism", "liveness"])).toBe("nondeterminism")
    expect(worstVerdict([])).toBe("ok")
  })

  test("a sweep exits 2 with repro lines when a planted durability bug is caught, 3 on a trip-wire", () => {
    const sweep = sk("sim", "sweep", "--seeds", "2", "--scenario", "append-log-planted-ack-before-fsync", "--jobs", "2", "--json")
    expect(sweep.status).toBe(EXIT_SAFETY)
    const summary = JSON.parse(sweep.stdout) as { failures: Array<{ kind: string; repro: string }>; runs: number; exitCode: number }
    expect(summary.runs).toBe(2)
    expect(summary.exitCode).toBe(EXIT_SAFETY)
    expect(summary.failures.length).toBeGreaterThan(0)
    expect(summary.failures[0]!.kind).toBe("violation")
    expect(summary.failures[0]!.repro).toMatch(/^sk sim run --scenario append-log-planted-ack-before-fsync --seed \d+ .*commit \S+ effect 4\./)
    const clock = sk("sim", "sweep", "--seeds", "2", "--scenario", "append-log-planted-wall-clock", "--jobs", "1")
    expect(clock.status).toBe(EXIT_NONDETERMINISM)
    expect(clock.stdout).toMatch(/FAIL nondeterminism: .*touched Date\.now/)
  })

  test("a sweep names the first differing trace line when another worker disagrees (module-global state)", () => {
    for (const jobs of ["1", "2"]) {
      const sweep = sk("sim", "sweep", "--seeds", "2", "--recheck-every", "1", "--jobs", jobs, "--scenario", "append-log-planted-global-counter")
      expect(sweep.status).toBe(EXIT_NONDETERMINISM)
      expect(sweep.stdout).toMatch(/when re-run in worker \d+; first difference at trace line \d+: worker \d+ ".*", fresh worker \d+ ".*"/)
      expect(sweep.stdout).toMatch(/sk sim run --scenario append-log-planted-global-counter --seed 1/)
    }
  })

  test("--jobs 1 and --jobs 2 give the same per-seed hashes (equal to in-process runs) and the same summary", () => {
    const summaries = ["1", "2"].map((jobs) => {
      const hashes = join(scratch, `hashes-${jobs}.txt`)
      const sweep = sk("sim", "sweep", "--seeds", "6", "--start", "40", "--scenario", "append-log", "--jobs", jobs, "--recheck-every", "3", "--hashes", hashes, "--json")
      expect(sweep.status).toBe(EXIT_OK)
      const { elapsedMs, ...summary } = JSON.parse(sweep.stdout) as Record<string, unknown>
      expect(elapsedMs).toBeGreaterThan(0)
      return { summary, hashes: readFileSync(hashes, "utf8") }
    })
    expect(summaries[1]!.hashes).toBe(summaries[0]!.hashes)
    expect(summaries[1]!.summary).toEqual(summaries[0]!.summary)
    expect(summaries[0]!.summary["rechecked"]).toBe(2)
    const scenario = findScenario("append-log")!
    const expected = [40, 41, 42, 43, 44, 45].map((seed) => `append-log ${seed} ${scenario.run(seed, { recordTrace: false }).traceHash}\n`).join("")
    expect(summaries[0]!.hashes).toBe(expected)
  })

  test("replay prints the trace hash the sweep recorded for that seed, and writes its reports to --out", () => {
    const hashes = join(scratch, "hashes-replay.txt")
    expect(sk("sim", "sweep", "--seeds", "2", "--start", "7", "--scenario", "acceptor-storage", "--jobs", "2", "--hashes", hashes).status).toBe(EXIT_OK)
    const swept = readFileSync(hashes, "utf8").trim().split("\n").map((line) => line.split(" "))
    expect(swept.map(([, seed]) => seed)).toEqual(["7", "8"])
    const out = join(scratch, "replay-out")
    const child = childProcess.spawnSync(process.execPath, [SK, "sim", "replay", "8", "--scenario", "acceptor-storage", "--out", out], { encoding: "utf8", maxBuffer: 256 * 1024 * 1024 })
    expect(child.status).toBe(EXIT_OK)
    expect(child.stdout).toContain(`trace hash: ${swept[1]![2]}`)
    const trace = readFileSync(join(out, "trace.txt"), "utf8")
    expect(trace.split("\n").length).toBeGreaterThan(100)
    expect(child.stdout).toContain(trace.split("\n")[0]!) // the whole trace is printed too
    for (const name of ["trace.txt", "report.json", "report.txt", "report.html"]) {
      expect(existsSync(join(out, name))).toBe(true)
      expect(child.stdout).toContain(`wrote ${join(out, name)}`)
    }
  })

  test("progress goes to stderr as plain lines when it is not a terminal; stdout stays one JSON object", () => {
    const sweep = sk("sim", "sweep", "--seeds", "4", "--scenario", "acceptor-storage", "--jobs", "1", "--progress-interval-ms", "100", "--json")
    expect(sweep.status).toBe(EXIT_OK)
    expect(sweep.stderr).toMatch(/^sweep: \d+\/\d+ (runs|re-checks), 0 failed, \d+ s elapsed$/m)
    expect(sweep.stderr).not.toMatch(/\u001b\[/) // no terminal control sequences in a log
    expect(() => JSON.parse(sweep.stdout) as unknown).not.toThrow()
  })

  test("the re-check sends seeds to workers by message: no child process, no seed in any argv", async () => {
    const spies = [childProcess.spawn, childProcess.spawnSync, childProcess.exec, childProcess.execSync, childProcess.execFile, childProcess.execFileSync, childProcess.fork]
    for (const spy of spies) vi.mocked(spy).mockClear()
    const seeds = 3
    const start = 123_456_789
    const outcome = await runSweep({
      scenarios: [findScenario("acceptor-storage")!],
      start,
      seeds,
      shard: undefined,
      jobs: 1,
      recheckEvery: 1,
      progress: { tty: false, intervalMs: 60_000, stream: new PassThrough() }
    })
    expect(outcome.summary.rechecked).toBe(seeds) // every seed went through the re-check path
    expect(outcome.exitCode).toBe(EXIT_OK)
    const calls = spies.flatMap((spy) => vi.mocked(spy).mock.calls.map((call) => JSON.stringify(call)))
    // Only git may run (the commit of a repro line), and never with a seed in its arguments.
    for (const call of calls) {
      expect(call).toMatch(/^\["git",/)
      for (let seed = start; seed < start + seeds; seed++) expect(call).not.toContain(String(seed))
    }
  })

  test("sweep plan and re-check sample: spread over every scenario's range, every failing seed included", () => {
    const scenarios = [findScenario("append-log")!, findScenario("acceptor-storage")!]
    const tasks = planSweep(scenarios, 10, 100, { index: 1, count: 2 })
    expect(tasks.length).toBe(100)
    expect(tasks.every((task) => task.seed % 2 === 1)).toBe(true)
    expect(tasks.map((task) => task.index)).toEqual(tasks.map((_, index) => index))
    const outcomes: SeedOutcome[] = tasks.map((task) => ({ index: task.index, traceHash: "h", simulatedMs: 0, verdict: task.seed === 55 ? "liveness" : "ok", detail: undefined, marks: [], work: {} }))
    const sample = recheckSelection(tasks, outcomes, 20)
    for (const name of ["append-log", "acceptor-storage"]) {
      const seeds = sample.filter((task) => task.scenario === name).map((task) => task.seed)
      expect(seeds).toContain(11) // the first of the shard's range
      expect(seeds.length).toBeGreaterThanOrEqual(50 / 20) // at least 5%
      expect(Math.max(...seeds)).toBeGreaterThan(90) // spread to the end of the range
    }
    expect(sample.filter((task) => task.seed === 55).length).toBe(2) // the failing seed, in both scenarios
  })

  test("sweep verdicts: coverage marks required only from enough seeds; liveness exits 4; precedence over coverage", () => {
    const scenario: Scenario = { name: "fake", description: "", expectedMarks: ["rare", "common"], run: () => fakeResult([], 0) }
    const summaryOf = (seeds: number, verdictAt: (seed: number) => SeedOutcome["verdict"]) => {
      const tasks = planSweep([scenario], 0, seeds, undefined)
      const outcomes: SeedOutcome[] = tasks.map((task) => ({
        index: task.index,
        traceHash: `h${task.seed}`,
        simulatedMs: 1,
        verdict: verdictAt(task.seed),
        detail: verdictAt(task.seed) === "ok" ? undefined : `fake seed ${task.seed}: liveness: stuck`,
        marks: ["common"],
        work: { steps: 2 }
      }))
      return summarize({ scenarios: [scenario], start: 0, seeds }, tasks, outcomes, 0, [], 1)
    }
    const small = summaryOf(MARKS_ENFORCED_RUNS_MIN - 1, () => "ok")
    expect(small.exitCode).toBe(EXIT_OK)
    expect(small.coverageNotJudged).toEqual(["fake"])
    expect(small.summary.missedMarks).toEqual(["rare"])
    const large = summaryOf(MARKS_ENFORCED_RUNS_MIN, () => "ok")
    expect(large.exitCode).toBe(EXIT_COVERAGE)
    expect(large.coverageFailures).toEqual([{ scenario: "fake", mark: "rare", runs: MARKS_ENFORCED_RUNS_MIN }])
    expect(large.summary.marks).toEqual({ common: MARKS_ENFORCED_RUNS_MIN })
    expect(large.summary.work).toEqual({ steps: 2 * MARKS_ENFORCED_RUNS_MIN })
    const stuck = summaryOf(MARKS_ENFORCED_RUNS_MIN, (seed) => (seed === 42 ? "liveness" : "ok"))
    expect(stuck.exitCode).toBe(EXIT_LIVENESS)
    expect(stuck.summary.firstFailureAfterSeeds).toBe(43)
    expect(stuck.summary.failures.map((f) => [f.seed, f.detail])).toEqual([[42, "liveness failure: fake seed 42: liveness: stuck"]])
    const both = summaryOf(10, (seed) => (seed === 3 ? "liveness" : seed === 7 ? "safety" : "ok"))
    expect(both.exitCode).toBe(EXIT_SAFETY)
  })

  test("repro commit: short hash, +dirty when a tracked file changed (untracked files aside), unknown outside git", () => {
    const repo = join(scratch, "repo")
    mkdirSync(repo)
    const git = (...args: string[]) => childProcess.execFileSync("git", args, { cwd: repo, encoding: "utf8" })
    git("init", "--quiet")
    writeFileSync(join(repo, "a.txt"), "one\n")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "--quiet", "-m", "one")
    const head = git("rev-parse", "--short=12", "HEAD").trim()
    mkdirSync(join(repo, "sub"))
    expect(describeCommit(join(repo, "sub"))).toBe(head)
    writeFileSync(join(repo, "untracked.txt"), "scratch\n")
    expect(describeCommit(repo)).toBe(head)
    writeFileSync(join(repo, "a.txt"), "two\n")
    expect(describeCommit(repo)).toBe(`${head}+dirty`)
    const plain = join(scratch, "not-a-checkout")
    mkdirSync(plain)
    expect(describeCommit(plain)).toBe("unknown")
  })

  test.each([
    [["sim", "run", "--scenario", "nope", "--seed", "1"], /unknown scenario "nope"/],
    [["sim", "run", "--scenario", "append-log", "--seed", "abc"], /seed must be a non-negative integer/],
    [["sim", "run", "--scenario", "append-log", "--seed", "-1"], /seed must be a non-negative integer|unknown option/],
    [["sim", "run", "--scenario", "append-log", "--seed", "9007199254740992"], /at most 2\^53-1/],
    [["sim", "run", "--scenario", "append-log", "--seed", "1", "--bogus"], /unknown option '--bogus'/],
    [["sim", "sweep", "--seeds", "0"], /positive integer/],
    [["sim", "sweep", "--seeds", "5", "--shard", "3/2"], /shard index/],
    [["sim", "sweep", "--seeds", "4", "--start", "9007199254740990"], /runs past the largest seed/],
    [["sim", "sweep", "--seeds", "4", "--jobs", "0"], /positive integer/],
    [["sim", "sweep", "--seeds", "4", "--recheck-every", "21"], /at most 20/],
    [["sim", "frobnicate"], /unknown command/]
  ])("bad input %j gets a clear error and exit 1", (args, message) => {
    const result = sk(...args)
    expect(result.status).toBe(1)
    expect(result.stderr).toMatch(message)
  })

  test("every shard of a sweep re-checks some of its seeds in another worker", () => {
    for (const shard of ["0/2", "1/2"]) {
      const sweep = sk("sim", "sweep", "--seeds", "4", "--shard", shard, "--recheck-every", "10", "--scenario", "acceptor-storage", "--json")
      expect(sweep.status).toBe(EXIT_OK)
      const summary = JSON.parse(sweep.stdout) as { runs: number; rechecked: number }
      expect(summary.runs).toBe(2)
      expect(summary.rechecked).toBeGreaterThan(0)
    }
  })

  test("sim list names the scenarios", () => {
    const list = sk("sim", "list")
    expect(list.status).toBe(0)
    expect(list.stdout).toMatch(/^append-log\s/m)
  })
})
