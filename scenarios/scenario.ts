import type { TripwireHit } from "../sim/tripwires.js"
import type { Violation } from "../sim/world.js"

/** What one seeded run of a scenario reports (the CLI prints it; sweeps aggregate it). */
export interface ScenarioResult {
  readonly scenario: string
  readonly seed: number
  /** No violated invariant and no non-determinism. */
  readonly ok: boolean
  readonly traceHash: string
  readonly events: number
  readonly simulatedMs: number
  readonly violations: ReadonlyArray<Violation>
  readonly nondeterminism: ReadonlyArray<TripwireHit>
  /** The fault configuration this seed expanded to. */
  readonly config: string
  /** How much real work the run did (records acknowledged, fsyncs, crashes, ...). */
  readonly work: Readonly<Record<string, number>>
  /** Coverage marks reached ("sometimes" assertions). */
  readonly marks: ReadonlyArray<string>
  readonly traceLines: ReadonlyArray<string>
}

export interface ScenarioRunOptions {
  /** Keep trace lines in memory (needed for --trace and for naming the first difference). */
  readonly recordTrace: boolean
}

export interface Scenario {
  readonly name: string
  readonly description: string
  /** Coverage marks a healthy sweep is expected to reach. */
  readonly expectedMarks: ReadonlyArray<string>
  run(seed: number, options: ScenarioRunOptions): ScenarioResult
}
