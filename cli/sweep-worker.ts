// A sweep worker thread: runs the seeds the main thread posts and answers with each seed's
// outcome (small), or with a whole trace when asked to name a difference. Each worker is a
// fresh module instance, so a re-run here does not share module-global state with the thread
// that ran the seed first.
// The trip-wires first, before anything else loads and captures a real clock or timer.
import "../sim/tripwires.js"
import { parentPort } from "node:worker_threads"
import { setImmediate as nextTurn } from "node:timers/promises"
import { findScenario } from "../scenarios/registry.js"
import { takeLateCalls } from "../sim/world.js"
import type { Scenario } from "../scenarios/scenario.js"
import { type FromWorker, type SeedOutcome, type SeedTask, type ToWorker, outcomeOf } from "./sweep.js"

const port = parentPort
if (port === null) throw new Error("sweep-worker runs only as a worker thread")

port.on("message", (message: ToWorker) => {
  switch (message.type) {
    case "run":
      void runBatch(message.tasks)
      return
    case "trace": {
      const result = scenarioOf(message.task).run(message.task.seed, { recordTrace: true })
      port.postMessage({ type: "trace", lines: result.traceLines } satisfies FromWorker)
      return
    }
  }
})

/**
 * Runs each seed, then lets one real turn of the event loop pass: a real callback a seed left
 * behind (real I/O, a detached promise) calls into its world then, and the world records a
 * late call, which fails that seed as non-deterministic.
 */
async function runBatch(tasks: ReadonlyArray<SeedTask>): Promise<void> {
  for (const task of tasks) {
    const outcome = runOne(task)
    await nextTurn()
    const late = takeLateCalls()
    if (late.calls.length > 0 || late.dropped > 0) {
      const calls = late.calls.slice(0, 3).map((call) => `${call.who} ${call.what} (seed ${call.seed}${call.afterClose ? ", after its world was disposed" : ", between runs"})`)
      port!.postMessage({ type: "outcome", outcome: { ...outcome, verdict: "nondeterminism", detail: `${task.scenario} seed ${task.seed}: calls into the world after its run ended: ${calls.join("; ")}${late.dropped > 0 ? ` and ${late.dropped} more` : ""}` } } satisfies FromWorker)
      continue
    }
    port!.postMessage({ type: "outcome", outcome } satisfies FromWorker)
  }
  port!.postMessage({ type: "done" } satisfies FromWorker)
}

/**
 * A run that throws is a failed seed, not a failed sweep: the other seeds still run and this
 * one gets its repro line (a throw out of the simulator is a defect in it or in core/).
 */
function runOne(task: SeedTask): SeedOutcome {
  try {
    return outcomeOf(task, scenarioOf(task).run(task.seed, { recordTrace: false }))
  } catch (error) {
    const detail = `${task.scenario} seed ${task.seed}: the run threw ${error instanceof Error ? error.stack ?? error.message : String(error)}`
    return { index: task.index, traceHash: "threw", simulatedMs: 0, verdict: "safety", detail, marks: [], work: {} }
  }
}

function scenarioOf(task: SeedTask): Scenario {
  const scenario = findScenario(task.scenario)
  if (scenario === undefined) throw new Error(`sweep worker: unknown scenario "${task.scenario}"`)
  return scenario
}
