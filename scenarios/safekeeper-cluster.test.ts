// Goal: seeds that once failed the safekeeper-cluster scenario stay fixed, and a seed replays to
// the same trace hash. Method: run each pinned seed (with the bug it exposed named beside it)
// and require a pass; run one seed twice in this process and compare hashes and traces.
import { describe, expect, test } from "vitest"
import { makeSafekeeperClusterScenario } from "./safekeeper-cluster.js"

const scenario = makeSafekeeperClusterScenario()

const REGRESSIONS: ReadonlyArray<readonly [number, string]> = [
  [86, "a term-mode stream refused before the donor processed ProposerElected: the proposer could never feed a laggard"],
  [461, "a broken donor stream left the first record of a term with xl_prev 0, which a safekeeper that knew the previous record refused forever"],
  [2, "a created data directory was not durable in its parent: a crash lost the control file of a granted vote"]
]

describe("safekeeper-cluster", () => {
  test.each(REGRESSIONS)("seed %i stays fixed (%s)", (seed) => {
    const result = scenario.run(seed, { recordTrace: false })
    expect(result.violations).toEqual([])
    expect(result.nondeterminism).toEqual([])
    expect(result.work["committedBytes"]).toBeGreaterThan(0)
  })

  test("a seed replays to the same trace hash in one process", () => {
    const first = scenario.run(5, { recordTrace: true })
    const second = scenario.run(5, { recordTrace: true })
    expect(second.traceHash).toBe(first.traceHash)
    expect(second.traceLines).toEqual(first.traceLines)
    expect(first.work["elections"]).toBeGreaterThan(0)
  })
})
