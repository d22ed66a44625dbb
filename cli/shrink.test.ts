// Goal: `sk sim shrink` finds a small plan that still fails the same invariant, the same way
// every time, within its run budget, and its plan file replays to the same failure. Method: ddmin
// on synthetic predicates (a known minimal failing set); the plan simplifications on a fake run;
// then a real end to end shrink of a service run forced to fail liveness (a liveness phase of
// 1 us), no bug planted in core.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, describe, expect, test } from "vitest"
import type { Scenario } from "../scenarios/scenario.js"
import { type FaultAction, runService, type ServicePlan } from "../scenarios/service.js"
import { ddmin, invariantOf, RunBudget, shrinkPlan } from "../scenarios/shrink.js"
import { swarmPlan } from "../scenarios/swarm.js"
import { readPlanFile, replayPlanFile, ShrinkError, shrinkScenario, shrinkText, writePlanFile } from "./shrink.js"
import { EXIT_LIVENESS, exitCodeOfVerdict, verdictOf } from "./sweep.js"

const scratch = mkdtempSync(join(tmpdir(), "sk-shrink-test-"))
afterAll(() => rmSync(scratch, { recursive: true, force: true }))

const range = (n: number) => Array.from({ length: n }, (_, i) => i)

/** A predicate that fails when `needed` are all present; counts its calls. */
function needsAll(needed: ReadonlyArray<number>, runsMax = 1000) {
  let calls = 0
  const budget = new RunBudget<ReadonlyArray<number>>(runsMax, (subset) => {
    calls++
    return needed.every((n) => subset.includes(n))
  }, (subset) => subset.join(","))
  return { test: (subset: ReadonlyArray<number>) => budget.test(subset), budget, calls: () => calls }
}

describe("ddmin", () => {
  test("finds the minimal failing subset, in order", () => {
    for (const needed of [[17], [3, 40], [0, 31, 63], [5, 6, 7, 8]]) {
      const { test: fails } = needsAll(needed)
      expect(ddmin(range(64), fails)).toEqual(needed)
    }
  })

  test("an item-free failure costs one run", () => {
    const { test: fails, calls } = needsAll([])
    expect(ddmin(range(50), fails)).toEqual([])
    expect(calls()).toBe(1)
  })

  test("the result is 1-minimal for a non-monotone predicate: removing any one item passes", () => {
    // Fails when the sum of the subset is odd and at least 3 items remain: not monotone.
    const fails = (subset: ReadonlyArray<number>) => subset.length >= 3 && subset.reduce((a, b) => a + b, 0) % 2 === 1
    const found = ddmin(range(30), fails)
    expect(fails(found)).toBe(true)
    for (let i = 0; i < found.length; i++) expect(fails(found.filter((_, j) => j !== i))).toBe(false)
  })

  test("deterministic: the same input gives the same output and the same runs", () => {
    const a = needsAll([9, 22, 23])
    const b = needsAll([9, 22, 23])
    expect(ddmin(range(40), a.test)).toEqual(ddmin(range(40), b.test))
    expect(a.calls()).toBe(b.calls())
  })

  test("respects the run budget and returns a failing set when it runs out", () => {
    for (const runsMax of [1, 2, 5, 9]) {
      const { test: fails, calls, budget } = needsAll([11, 50], runsMax)
      const found = ddmin(range(64), fails)
      expect(calls()).toBeLessThanOrEqual(runsMax)
      expect(budget.exhausted).toBe(true)
      expect([11, 50].every((n) => found.includes(n))).toBe(true)
    }
  })

  test("memoises: a subset tried twice runs once", () => {
    const { budget } = needsAll([1])
    budget.test([1, 2])
    budget.test([1, 2])
    expect(budget.runs).toBe(1)
  })
})

describe("shrinkPlan", () => {
  const base = swarmPlan(7)

  test("keeps the failure-causing action and drops the simplifiable rest", () => {
    const culprit: FaultAction = { kind: "wipe", atUs: 1_000, pick: 0.1, restartAfterUs: 50_000 }
    const plan: ServicePlan = { ...base, actions: [...base.actions, culprit], computeCount: 3, crashOnOperationProbability: 0.001, pageserver: true, rateBytesPerSecond: 1024 * 1024 }
    // A fake run: fails when a wipe at 1 ms remains, whatever else changes.
    const fails = (p: ServicePlan) => p.actions.some((a) => a.kind === "wipe" && a.atUs === 1_000)
    const steps: string[] = []
    const shrunk = shrinkPlan(plan, fails, { runsMax: 300, onStep: (s) => steps.push(s.step) })
    expect(shrunk.plan.actions).toEqual([culprit])
    expect(shrunk.plan.computeCount).toBe(1)
    expect(shrunk.plan.crashOnOperationProbability).toBe(0)
    expect(shrunk.plan.pageserver).toBe(false)
    expect(shrunk.plan.rateBytesPerSecond).toBe(16 * 1024)
    expect(shrunk.plan.faultPhaseUs).toBeLessThan(plan.faultPhaseUs)
    expect(shrunk.plan.livenessPhaseUs).toBe(plan.livenessPhaseUs)
    expect(steps).toContain("ddmin")
    expect(shrunk.exhausted).toBe(false)
    // Deterministic.
    expect(shrinkPlan(plan, fails, { runsMax: 300 })).toEqual(shrunk)
  })

  test("a simplification the failure needs is not kept", () => {
    const plan: ServicePlan = { ...base, computeCount: 3, pageserver: true }
    const fails = (p: ServicePlan) => p.computeCount >= 2 && p.pageserver === true
    const shrunk = shrinkPlan(plan, fails, { runsMax: 300 })
    expect(shrunk.plan.computeCount).toBe(2)
    expect(shrunk.plan.pageserver).toBe(true)
    expect(fails(shrunk.plan)).toBe(true)
  })

  test("stops at the run budget", () => {
    let runs = 0
    const shrunk = shrinkPlan(base, () => {
      runs++
      return true
    }, { runsMax: 3 })
    expect(runs).toBe(3)
    expect(shrunk.runs).toBe(3)
    expect(shrunk.exhausted).toBe(true)
  })

  test("invariantOf names the invariant of a violation message", () => {
    expect(invariantOf("commit-durability: lost 0/1234")).toBe("commit-durability")
    expect(invariantOf("liveness: no commit in 6 s")).toBe("liveness")
  })
})

describe("sk sim shrink end to end", () => {
  // A test-only planned scenario over the real service whose liveness phase is too short for
  // anything to commit (1 us): every plan fails "liveness:", so the shrink must reach 0 actions.
  const name = "shrink-test-liveness"
  const planOf = (seed: number): ServicePlan => ({ ...swarmPlan(seed), livenessPhaseUs: 1, faultPhaseUs: 400_000 })
  let runs = 0
  const scenario: Scenario = {
    name,
    description: "swarm plans with a liveness phase of 1 us (test only)",
    expectedMarks: [],
    run: (seed, options) => runService(name, seed, planOf(seed), options),
    planned: {
      planOf,
      runPlan: (seed, plan, options) => {
        runs++
        return runService(name, seed, plan, options)
      }
    }
  }
  const seed = 3

  test("shrinks a failing seed's plan to no actions; the plan file replays to the same invariant", () => {
    runs = 0
    const before = planOf(seed)
    expect(before.actions.length).toBeGreaterThan(3)
    const lines: string[] = []
    const outcome = shrinkScenario(scenario, seed, { runsMax: 40, onStep: (s) => lines.push(`${s.step} ${s.actions}`) })
    expect(outcome.invariant).toBe("liveness")
    expect(outcome.actionsBefore).toBe(before.actions.length)
    expect(outcome.actionsAfter).toBe(0)
    // Every simulated run counts, the seed's own first run too.
    expect(outcome.runs).toBe(runs)
    expect(runs).toBeLessThanOrEqual(40)
    // ddmin's first try, the empty list, already fails.
    expect(lines[0]).toBe("ddmin 0")
    expect(shrinkText(outcome, "sk sim shrink --replay F")).toContain(`shrunk from ${before.actions.length} fault actions to 0 (runs: ${outcome.runs}); invariant: liveness; replay: sk sim shrink --replay F`)

    const file = join(scratch, "plan.json")
    writePlanFile(file, outcome)
    expect(readPlanFile(file).plan).toEqual(outcome.plan)
    const replayed = replayPlanFile(file, (n) => (n === name ? scenario : undefined))
    expect(replayed.result.violations.some((v) => invariantOf(v.message) === "liveness")).toBe(true)
    expect(exitCodeOfVerdict(verdictOf(replayed.result))).toBe(EXIT_LIVENESS)
  })

  test("--max-runs bounds every run, the first one included", () => {
    runs = 0
    const outcome = shrinkScenario(scenario, seed, { runsMax: 3 })
    expect(runs).toBe(3)
    expect(outcome.runs).toBe(3)
    expect(outcome.exhausted).toBe(true)
    expect(outcome.invariant).toBe("liveness")
  })

  test("a passing seed has nothing to shrink", () => {
    const passing: Scenario = { ...scenario, planned: { planOf: () => ({ ...planOf(seed), actions: [] }), runPlan: () => ({ ...runService(name, seed, planOf(seed), { recordTrace: false }), violations: [] }) } }
    expect(() => shrinkScenario(passing, seed, { runsMax: 5 })).toThrow(ShrinkError)
    expect(() => shrinkScenario(passing, seed, { runsMax: 5 })).toThrow(/nothing to shrink/)
  })

  test("a malformed plan file is refused with a typed error", () => {
    const file = join(scratch, "bad.json")
    writeFileSync(file, JSON.stringify({ format: "sk-shrink-plan", version: 1, scenario: name, seed, invariant: "liveness", plan: { actions: [{ kind: "nuke" }] } }))
    expect(() => readPlanFile(file)).toThrow(ShrinkError)
    expect(readFileSync(file, "utf8")).toContain("nuke")
  })

  test("a plan's XLOG_SWITCH workload survives the plan file (it would be dropped as an unknown field)", () => {
    const file = join(scratch, "switch.json")
    const plan: ServicePlan = { ...swarmPlan(seed), xlogSwitchEveryRecords: 500, xlogSwitchSplitPadding: true }
    writeFileSync(file, JSON.stringify({ format: "sk-shrink-plan", version: 1, scenario: name, seed, invariant: "liveness", plan }))
    expect(readPlanFile(file).plan).toEqual(plan)
  })
})
