import type { TripwireHit } from "../sim/tripwires.js"
import type { ServicePlan } from "./service.js"
import type { Violation, World } from "../sim/world.js"

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
  /** What a run report draws; recorded only with `recordTrace` (scenarios without it leave it out). */
  readonly timeline?: RunTimeline
}

/** A fault as it happened: crash, restart, wipe, pause, partition, heal, break, clog, disk error. */
export interface FaultEvent {
  readonly atUs: number
  readonly kind: string
  readonly nodes: ReadonlyArray<string>
  readonly detail?: string
}

/** One node's consensus position at a moment (drawn as term and LSN over time). */
export interface ProgressSample {
  readonly atUs: number
  readonly node: string
  readonly term: number
  readonly flushLsn: number
  readonly commitLsn: number
}

/** A protocol message between two nodes (drawn as a space-time diagram). */
export interface MessageEvent {
  readonly sentUs: number
  /** When the receiver read it; undefined when it was never read (a crash or a break came first). */
  readonly receivedUs?: number
  readonly from: string
  readonly to: string
  /** The message kind, as its tag: Greeting, VoteRequest, AppendRequest, XLogData, ... */
  readonly kind: string
  readonly detail?: string
}

export interface RunTimeline {
  readonly faults: ReadonlyArray<FaultEvent>
  readonly progress: ReadonlyArray<ProgressSample>
  readonly messages: ReadonlyArray<MessageEvent>
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
  /**
   * Scenarios driven by an explicit plan (scenarios/service.ts) expose it: `planOf(seed)` is the
   * plan `run(seed)` uses, and `runPlan` runs the seed with another plan (what `sk sim shrink`
   * cuts down). `run(seed)` equals `runPlan(seed, planOf(seed))`.
   */
  readonly planned?: {
    planOf(seed: number): ServicePlan
    runPlan(seed: number, plan: ServicePlan, options: ScenarioRunOptions): ScenarioResult
  }
}

/**
 * Assembles a run's result from its world: outcome, trace hash and size, and the work every
 * world does (disk totals over all nodes, crashes, exits, scheduler steps) after the
 * scenario's own figures.
 */
export function resultOf(world: World, run: {
  readonly scenario: string
  readonly config: string
  readonly nondeterminism: ReadonlyArray<TripwireHit>
  readonly marks: ReadonlySet<string>
  readonly work: Readonly<Record<string, number>>
}): ScenarioResult {
  const { kernel } = world
  const disks = [...world.disks.values()].map((disk) => disk.stats)
  const sum = (pick: (stats: (typeof disks)[number]) => number) => disks.reduce((total, stats) => total + pick(stats), 0)
  return {
    scenario: run.scenario,
    seed: kernel.seed,
    ok: world.violations.length === 0 && run.nondeterminism.length === 0,
    traceHash: kernel.trace.hash(),
    events: kernel.trace.lineCount,
    simulatedMs: Math.floor(kernel.nowUs / 1000),
    violations: world.violations,
    nondeterminism: run.nondeterminism,
    config: run.config,
    work: {
      ...run.work,
      fsyncs: sum((s) => s.fsyncs),
      bytesWritten: sum((s) => s.bytesWritten),
      tornWrites: sum((s) => s.tornWrites),
      droppedWrites: sum((s) => s.droppedWrites),
      undoneMetadata: sum((s) => s.undoneMetadata),
      injectedDiskErrors: sum((s) => s.injectedErrors),
      crashes: world.stats.crashes,
      operationCrashes: world.stats.operationCrashes,
      exits: world.stats.exits,
      connections: world.net.stats.connections,
      schedulerSteps: kernel.stats.tasks,
      timersFired: kernel.stats.timersFired
    },
    marks: [...run.marks].sort(),
    traceLines: kernel.trace.lines
  }
}
