// A sweep worker thread: runs the seeds the main thread posts and answers with each seed's
// outcome (small), or with a whole trace when asked to name a difference. Each worker is a
// fresh module instance, so a re-run here does not share module-global state with the thread
// that ran the seed first.
import { parentPort } from "node:worker_threads"
import { findScenario } from "../scenarios/registry.js"
import type { Scenario } from "../scenarios/scenario.js"
import { type FromWorker, type SeedOutcome, type SeedTask, type ToWorker, outcomeOf } from "./sweep.js"

const port = parentPort
if (port === null) throw new Error("sweep-worker runs only as a worker thread")

port.on("message", (message: ToWorker) => {
  switch (message.type) {
    case "run":
      for (const task of message.tasks) port.postMessage({ type: "outcome", outcome: runOne(task) } satisfies FromWorker)
      port.postMessage({ type: "done" } satisfies FromWorker)
      return
    case "trace": {
      const result = scenarioOf(message.task).run(message.task.seed, { recordTrace: true })
      port.postMessage({ type: "trace", lines: result.traceLines } satisfies FromWorker)
      return
    }
  }
})

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
