import { spawn } from "node:child_process"
import { loadavg } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { findScenario } from "../scenarios/registry.js"

/**
 * Simulator speed on the swarm scenario (issue 7), four figures measured in one run:
 * - seeds/s and trace events/s of one in-process worker (one core), over RATE_SEEDS seeds;
 * - the wall-time speed-up of `sk sim sweep --jobs 2` over `--jobs 1` (child processes, same seeds),
 *   and that both give the same seed-hash digest (a seed replays the same on any worker);
 * - a worker's heap after gc every HEAP_SAMPLE_EVERY seeds, over as many seeds as fit in
 *   HEAP_BUDGET_MS (1,000 swarm seeds do not fit a bench run on a 2-core machine), and its slope.
 * The machine may be shared: CPU time is printed beside wall time, and the load average with them.
 */
const RATE_SEEDS = 40
const SWEEP_SEEDS = 40
const HEAP_SAMPLE_EVERY = 25
const HEAP_BUDGET_MS = 120_000
const HEAP_SAMPLES_MIN = 3
const AIM_SEEDS_PER_CORE = 10

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..")

interface SweepTiming {
  readonly wallMs: number
  readonly digest: string
  readonly exitCode: number
  readonly summary: string | undefined
}

export async function benchSim(): Promise<void> {
  const scenario = findScenario("swarm")
  if (scenario === undefined) throw new Error("swarm scenario missing")
  const gc = (globalThis as { gc?: () => void }).gc
  console.log(`sim: the ${scenario.name} scenario; load average ${loadavg().map((l) => l.toFixed(1)).join(" ")} on this machine before the run`)

  // Phase 1 and 3 share one loop: rate over the first RATE_SEEDS seeds, heap samples throughout.
  // Only time inside scenario.run counts towards the rate, so gc() for the samples does not.
  const heapMb = (): number => {
    gc?.()
    return process.memoryUsage().heapUsed / (1024 * 1024)
  }
  const baselineMb = heapMb()
  const samples: Array<{ seeds: number; mb: number }> = []
  let runMs = 0
  let events = 0
  let failures = 0
  let rate: { seeds: number; wallMs: number; cpuMs: number; events: number } | undefined
  const cpuStart = process.cpuUsage()
  let seed = 0
  // The heap series goes on for HEAP_BUDGET_MS after the rate seeds, and to at least
  // HEAP_SAMPLES_MIN samples so that a slope exists even on a slow or crowded machine.
  let heapStarted = 0
  while (rate === undefined || samples.length < HEAP_SAMPLES_MIN || performance.now() - heapStarted < HEAP_BUDGET_MS) {
    const runStarted = performance.now()
    const result = scenario.run(seed, { recordTrace: false })
    runMs += performance.now() - runStarted
    events += result.events
    if (!result.ok) failures++
    seed++
    if (seed === RATE_SEEDS) {
      const cpu = process.cpuUsage(cpuStart)
      rate = { seeds: seed, wallMs: runMs, cpuMs: (cpu.user + cpu.system) / 1000, events }
      const perS = (n: number, ms: number) => n / (ms / 1000)
      // On a shared machine wall time counts the time others held the core; CPU time does not.
      console.log(`  in-process, one worker, seeds 0..${seed - 1}, per CPU-second of this process (gc threads included): ` +
        `${perS(seed, rate.cpuMs).toFixed(2)} seeds/s per core (aim: >= ${AIM_SEEDS_PER_CORE} swarm seeds/s per core), ` +
        `${fmt(perS(events, rate.cpuMs))} simulated trace events/s per core, ${fmt(events / seed)} events per seed, ${failures} failing seeds`)
      console.log(`  the same by wall time: ${perS(seed, runMs).toFixed(2)} seeds/s, ${fmt(perS(events, runMs))} events/s (wall ${(runMs / 1000).toFixed(1)} s, CPU ${(rate.cpuMs / 1000).toFixed(1)} s)`)
      heapStarted = performance.now()
    }
    if (seed % HEAP_SAMPLE_EVERY === 0) samples.push({ seeds: seed, mb: heapMb() })
  }
  const { slopeMbPerSeed } = fitLine(samples.map((s) => [s.seeds, s.mb]))
  console.log(`  heap MB after gc (${gc === undefined ? "no --expose-gc: noisy" : "--expose-gc"}): before ${baselineMb.toFixed(1)}; after every ${HEAP_SAMPLE_EVERY} seeds of ${seed} (${(HEAP_BUDGET_MS / 1000).toFixed(0)} s budget after the rate seeds): ` +
    samples.map((s) => s.mb.toFixed(1)).join(" "))
  console.log(`  heap slope: ${(slopeMbPerSeed * 1024).toFixed(1)} KB per seed (least squares over ${samples.length} samples; ` +
    `${(slopeMbPerSeed * 1000).toFixed(1)} MB per 1,000 seeds; aim: flat), ${failures} failing seeds of ${seed}`)

  // Phase 2: the CLI sweep as child processes, --jobs 1 then --jobs 2, same seeds.
  const one = await timeSweep(1)
  const two = await timeSweep(2)
  console.log(`  sweep of ${SWEEP_SEEDS} seeds (child processes, trip-wires on): --jobs 1 ${(one.wallMs / 1000).toFixed(1)} s (${(SWEEP_SEEDS / (one.wallMs / 1000)).toFixed(2)} seeds/s), ` +
    `--jobs 2 ${(two.wallMs / 1000).toFixed(1)} s (${(SWEEP_SEEDS / (two.wallMs / 1000)).toFixed(2)} seeds/s); speed-up ${(one.wallMs / two.wallMs).toFixed(2)}x (aim: near 2x on 2 free cores)`)
  if (one.digest !== two.digest) throw new Error(`sweep seed-hash digests differ across --jobs: ${one.digest} vs ${two.digest}`)
  console.log(`  --jobs 1: ${one.summary ?? "?"} (exit ${one.exitCode}); --jobs 2: ${two.summary ?? "?"} (exit ${two.exitCode}); same seed-hash digest ${one.digest.slice(0, 16)}...`)
  console.log(`  load average after: ${loadavg().map((l) => l.toFixed(1)).join(" ")} (above 2 on this 2-core machine, others shared the cores: per-core figures are low)`)
}

function timeSweep(jobs: number): Promise<SweepTiming> {
  return new Promise((resolve, reject) => {
    const args = ["bin/sk.js", "sim", "sweep", "--scenario", "swarm", "--seeds", String(SWEEP_SEEDS), "--jobs", String(jobs)]
    const started = performance.now()
    const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    let err = ""
    child.stdout.on("data", (chunk: Buffer) => { out += chunk.toString("utf8") })
    child.stderr.on("data", (chunk: Buffer) => { err += chunk.toString("utf8") })
    child.on("error", reject)
    child.on("close", (code) => {
      const wallMs = performance.now() - started
      const digest = /seed hashes digest: ([0-9a-f]+)/.exec(out)?.[1]
      // A sweep that finds failing seeds still exits with a digest (exit 2 names a safety
      // failure): its timing stands. No digest means the sweep itself broke.
      if (digest === undefined) {
        reject(new Error(`sk sim sweep --jobs ${jobs} exited ${code} without a digest:\n${out.slice(-2000)}\n${err.slice(-2000)}`))
        return
      }
      resolve({ wallMs, digest, exitCode: code ?? -1, summary: /^sweep: (.*)$/m.exec(out)?.[1] })
    })
  })
}

/** Least-squares line through (x, y) points; slope 0 with fewer than two points. */
export function fitLine(points: ReadonlyArray<readonly [number, number]>): { slopeMbPerSeed: number } {
  const n = points.length
  if (n < 2) return { slopeMbPerSeed: 0 }
  let sx = 0
  let sy = 0
  for (const [x, y] of points) {
    sx += x
    sy += y
  }
  const mx = sx / n
  const my = sy / n
  let sxy = 0
  let sxx = 0
  for (const [x, y] of points) {
    sxy += (x - mx) * (y - my)
    sxx += (x - mx) * (x - mx)
  }
  return { slopeMbPerSeed: sxx === 0 ? 0 : sxy / sxx }
}

const fmt = (n: number) => Math.round(n).toLocaleString("en-US")
