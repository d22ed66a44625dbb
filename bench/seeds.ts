import { findScenario } from "../scenarios/registry.js"

/**
 * Seeds per second of the reference scenario, and the heap after every 100 seeds of 1,000 run
 * in one process. A world that leaks (fibers, timers, listeners kept by a global) shows up as
 * heap growth from seed to seed; the aim is flat. Run with --expose-gc for exact figures.
 */
const SEEDS = 1000
const SAMPLE_EVERY = 100

export function benchSeeds(): void {
  const scenario = findScenario("append-log")
  if (scenario === undefined) throw new Error("append-log scenario missing")
  const gc = (globalThis as { gc?: () => void }).gc
  const heapMb = () => {
    gc?.()
    return process.memoryUsage().heapUsed / (1024 * 1024)
  }
  console.log(`seeds: ${SEEDS} seeds of ${scenario.name} in one process${gc === undefined ? " (no --expose-gc: heap figures are noisy)" : ""}`)
  const baseline = heapMb()
  const samples: number[] = []
  const started = performance.now()
  let simulatedMs = 0
  let events = 0
  let failures = 0
  for (let seed = 0; seed < SEEDS; seed++) {
    const result = scenario.run(seed, { recordTrace: false })
    simulatedMs += result.simulatedMs
    events += result.events
    if (!result.ok) failures++
    if ((seed + 1) % SAMPLE_EVERY === 0) samples.push(heapMb())
  }
  const elapsedMs = performance.now() - started
  console.log(`  ${(SEEDS / (elapsedMs / 1000)).toFixed(1)} seeds/s, ${Math.round(events / (elapsedMs / 1000)).toLocaleString("en-US")} trace events/s, ` +
    `${(simulatedMs / elapsedMs).toFixed(1)}x faster than real time, ${failures} failing seeds`)
  console.log(`  heap MB: before ${baseline.toFixed(1)}; after each ${SAMPLE_EVERY} seeds: ${samples.map((s) => s.toFixed(1)).join(" ")}`)
  const first = samples[0] ?? baseline
  const last = samples[samples.length - 1] ?? baseline
  console.log(`  growth from seed ${SAMPLE_EVERY} to seed ${SEEDS}: ${(last - first).toFixed(1)} MB (${((last / first - 1) * 100).toFixed(1)}%, aim: flat)`)
}
