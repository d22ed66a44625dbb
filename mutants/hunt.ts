import { findScenario } from "../scenarios/registry.js"

/**
 * Runs seeds of one scenario in order until the first failing one (the mutant runner calls
 * this inside a scratch copy with a planted bug applied) and prints one JSON line:
 * {"scenario", "seedsRun", "firstFailingSeed" | null, "seconds", "violation"}.
 */
const [scenarioName, seedCountText] = process.argv.slice(2)
const scenario = scenarioName === undefined ? undefined : findScenario(scenarioName)
const seedCount = Number(seedCountText ?? "1000")
if (scenario === undefined || !Number.isSafeInteger(seedCount) || seedCount <= 0) {
  process.stderr.write("usage: hunt <scenario> <seeds>\n")
  process.exit(1)
}
const startedMs = Date.now()
let firstFailingSeed: number | null = null
let violation: string | null = null
let seedsRun = 0
for (let seed = 0; seed < seedCount; seed++) {
  const result = scenario.run(seed, { recordTrace: false })
  seedsRun++
  if (!result.ok) {
    firstFailingSeed = seed
    const first = result.violations[0]
    violation = first === undefined ? `non-determinism: ${result.nondeterminism[0]?.what ?? "?"}` : `${first.who}: ${first.message}`
    break
  }
}
process.stdout.write(`${JSON.stringify({ scenario: scenario.name, seedsRun, firstFailingSeed, seconds: (Date.now() - startedMs) / 1000, violation })}\n`)
