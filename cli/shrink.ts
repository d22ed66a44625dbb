import { mkdirSync, readFileSync, writeFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { type Command, InvalidArgumentError } from "commander"
import { Schema } from "effect"
import { findScenario, SCENARIOS } from "../scenarios/registry.js"
import type { Scenario, ScenarioResult } from "../scenarios/scenario.js"
import type { ServicePlan } from "../scenarios/service.js"
import { invariantOf, planKey, SHRINK_RUNS_MAX_DEFAULT, shrinkPlan, type ShrinkStep } from "../scenarios/shrink.js"
import { parsePositiveInteger, parseSeed } from "./options.js"
import { exitCodeOfVerdict, verdictOf } from "./sweep.js"

/**
 * `sk sim shrink`: cuts a failing seed's plan down (scenarios/shrink.ts) while the invariant of
 * its first violation still fails, writes the smallest plan to a file, and `--replay FILE` runs
 * such a file with `sk sim run`'s exit codes (0 pass, 2 safety, 3 non-determinism, 4 liveness).
 */
const PLAN_FILE_FORMAT = "sk-shrink-plan"
const PLAN_FILE_VERSION = 1

export class ShrinkError extends Schema.TaggedError<ShrinkError>()("ShrinkError", {
  reason: Schema.Literals(["NotPlanned", "NothingToShrink", "NoViolation", "BadPlanFile", "UnknownScenario"]),
  message: Schema.String
}) {}

export interface ShrinkOutcome {
  readonly scenario: string
  readonly seed: number
  readonly invariant: string
  readonly actionsBefore: number
  readonly actionsAfter: number
  readonly runs: number
  /** The run budget ran out: the plan may shrink further with a larger --max-runs. */
  readonly exhausted: boolean
  readonly plan: ServicePlan
  /** The shrunk plan's first violation of the invariant. */
  readonly violation: string
}

export function registerShrinkCommand(sim: Command): void {
  sim.command("shrink")
    .description("cut a failing seed's fault plan down while the same invariant still fails; write the smallest plan to a file; --replay FILE runs such a file")
    .option("--scenario <name>", "a planned scenario (swarm or an incident)")
    .option("--seed <n>", "the failing seed", parseSeed)
    .option("--max-runs <k>", `simulated runs at most (default ${SHRINK_RUNS_MAX_DEFAULT})`, parsePositiveInteger, SHRINK_RUNS_MAX_DEFAULT)
    .option("--out <file>", "write the plan here (default reports/out/shrink-<scenario>-<seed>.plan.json)")
    .option("--replay <file>", "run a plan file written by shrink; exit 0 pass, 2 safety, 3 non-determinism, 4 liveness")
    .option("--json", "print one JSON object")
    .addHelpText("after", "\nExit codes: 0 shrunk (or, with --replay, the plan passes), 1 usage or nothing to shrink; with --replay as `sk sim run`.")
    .action((options: ShrinkOptions) => {
      if (options.replay !== undefined) {
        if (options.scenario !== undefined || options.seed !== undefined) throw new InvalidArgumentError("--replay takes the scenario and seed from its file: name neither")
        const { file, result } = replayPlanFile(options.replay, findScenario)
        const verdict = verdictOf(result)
        if (options.json === true) {
          console.log(JSON.stringify({ scenario: file.scenario, seed: file.seed, invariant: file.invariant, verdict, traceHash: result.traceHash, violations: result.violations.map((v) => v.message) }))
        } else {
          console.log(replayText(file, result))
        }
        process.exitCode = exitCodeOfVerdict(verdict)
        return
      }
      if (options.scenario === undefined || options.seed === undefined) throw new InvalidArgumentError("name --scenario and --seed (or --replay FILE)")
      const scenario = findScenario(options.scenario)
      if (scenario === undefined) throw unknownScenario(options.scenario)
      const onStep = options.json === true ? undefined : (step: ShrinkStep) => process.stderr.write(`shrink: runs ${step.runs}, actions ${step.actions} (${step.step})\n`)
      const outcome = shrinkScenario(scenario, options.seed, { runsMax: options.maxRuns, ...(onStep !== undefined ? { onStep } : {}) })
      const planFile = options.out ?? join("reports", "out", `shrink-${scenario.name}-${options.seed}.plan.json`)
      writePlanFile(planFile, outcome)
      const replay = `sk sim shrink --replay ${planFile}`
      if (options.json === true) {
        const { plan, ...rest } = outcome
        console.log(JSON.stringify({ ...rest, planFile, replay, plan }))
        return
      }
      console.log(shrinkText(outcome, replay))
    })
}

interface ShrinkOptions {
  scenario?: string
  seed?: number
  maxRuns: number
  out?: string
  replay?: string
  json?: boolean
}

/**
 * Runs the seed's own plan; when it fails, shrinks it while a violation of the same invariant
 * (its first violation's) remains. Throws ShrinkError when the scenario has no plan or the seed
 * violates nothing.
 */
export function shrinkScenario(scenario: Scenario, seed: number, options: { readonly runsMax: number; readonly onStep?: (step: ShrinkStep) => void }): ShrinkOutcome {
  if (!Number.isInteger(options.runsMax) || options.runsMax < 1) throw new RangeError(`runsMax must be a positive integer, got ${options.runsMax}`)
  const planned = scenario.planned
  if (planned === undefined) {
    throw new ShrinkError({ reason: "NotPlanned", message: `scenario ${scenario.name} is not driven by a plan; shrink one of: ${SCENARIOS.filter((s) => s.planned !== undefined).map((s) => s.name).join(", ")}` })
  }
  const original = planned.planOf(seed)
  const first = planned.runPlan(seed, original, { recordTrace: false })
  const violation = first.violations[0]
  if (violation === undefined) {
    const why = first.nondeterminism.length > 0 ? "it fails only by non-determinism, which no plan change can be judged by" : "it passes"
    throw new ShrinkError({ reason: "NothingToShrink", message: `nothing to shrink: ${scenario.name} seed ${seed}: ${why}` })
  }
  const invariant = invariantOf(violation.message)
  // The violation each failing plan showed, so the repro names its own without another run.
  const shown = new Map<string, string>([[planKey(original), violation.message]])
  const fails = (plan: ServicePlan) => {
    const message = violationOf(planned.runPlan(seed, plan, { recordTrace: false }), invariant)
    if (message !== undefined) shown.set(planKey(plan), message)
    return message !== undefined
  }
  // The first run counts against --max-runs too.
  const onStep = options.onStep
  const shrunk = shrinkPlan(original, fails, {
    runsMax: options.runsMax - 1,
    ...(onStep !== undefined ? { onStep: (step: ShrinkStep) => onStep({ ...step, runs: step.runs + 1 }) } : {})
  })
  const final = shown.get(planKey(shrunk.plan))
  if (final === undefined) throw new Error(`shrink: no run of the shrunk plan of ${scenario.name} seed ${seed} showed ${invariant}`)
  return {
    scenario: scenario.name,
    seed,
    invariant,
    actionsBefore: original.actions.length,
    actionsAfter: shrunk.plan.actions.length,
    runs: shrunk.runs + 1,
    exhausted: shrunk.exhausted,
    plan: shrunk.plan,
    violation: final
  }
}

function violationOf(result: ScenarioResult, invariant: string): string | undefined {
  return result.violations.find((v) => invariantOf(v.message) === invariant)?.message
}

export function shrinkText(outcome: ShrinkOutcome, replay: string): string {
  return [
    ...outcome.plan.actions.map((action) => `  ${JSON.stringify(action)}`),
    `violation: ${outcome.violation}`,
    ...(outcome.exhausted ? ["run budget spent: a larger --max-runs may shrink further"] : []),
    `shrunk from ${outcome.actionsBefore} fault actions to ${outcome.actionsAfter} (runs: ${outcome.runs}); invariant: ${outcome.invariant}; replay: ${replay}`
  ].join("\n")
}

// ---- plan files -------------------------------------------------------------------------

const Range = Schema.Tuple([Schema.Number, Schema.Number])
const Pick = Schema.Number

const FaultActionSchema = Schema.Union([
  Schema.Struct({ kind: Schema.Literal("crash"), atUs: Schema.Number, role: Schema.Literals(["safekeeper", "compute"]), pick: Pick, restartAfterUs: Schema.Number }),
  Schema.Struct({ kind: Schema.Literal("wipe"), atUs: Schema.Number, pick: Pick, restartAfterUs: Schema.Number }),
  Schema.Struct({ kind: Schema.Literal("partition"), atUs: Schema.Number, pickA: Pick, pickB: Pick, withCompute: Schema.Boolean, oneWay: Schema.Boolean, durationUs: Schema.Number }),
  Schema.Struct({ kind: Schema.Literal("isolate"), atUs: Schema.Number, pick: Pick, durationUs: Schema.Number, only: Schema.optional(Schema.Literals(["outbound", "inbound"])) }),
  Schema.Struct({ kind: Schema.Literal("clog"), atUs: Schema.Number, pickA: Pick, pickB: Pick, withCompute: Schema.Boolean, durationUs: Schema.Number }),
  Schema.Struct({ kind: Schema.Literal("break"), atUs: Schema.Number, pickA: Pick, pickB: Pick }),
  Schema.Struct({ kind: Schema.Literal("disk-errors"), atUs: Schema.Number, pick: Pick, durationUs: Schema.Number, eioOnFsyncProbability: Schema.Number, enospcOnWriteProbability: Schema.Number, eioOnWriteProbability: Schema.Number }),
  Schema.Struct({ kind: Schema.Literal("start-compute"), atUs: Schema.Number, compute: Schema.Number }),
  Schema.Struct({ kind: Schema.Literal("pause"), atUs: Schema.Number, pick: Pick, durationUs: Schema.Number }),
  Schema.Struct({ kind: Schema.Literal("crash-pageserver"), atUs: Schema.Number, restartAfterUs: Schema.Number }),
  Schema.Struct({ kind: Schema.Literal("partition-store"), atUs: Schema.Number, pick: Pick, durationUs: Schema.Number }),
  Schema.Struct({ kind: Schema.Literal("partition-broker"), atUs: Schema.Number, pick: Pick, durationUs: Schema.Number }),
  Schema.Struct({ kind: Schema.Literal("idle"), atUs: Schema.Number, durationUs: Schema.Number })
])

const DiskFaultsSchema = Schema.Struct({
  writeLatencyUs: Schema.optional(Range),
  fsyncLatencyUs: Schema.optional(Range),
  eioOnWriteProbability: Schema.optional(Schema.Number),
  eioOnFsyncProbability: Schema.optional(Schema.Number),
  enospcOnWriteProbability: Schema.optional(Schema.Number),
  enospcOnFsyncProbability: Schema.optional(Schema.Number),
  capacityBytes: Schema.optional(Schema.Number),
  metadataCrashModel: Schema.optional(Schema.Literals(["prefix", "any-subset"])),
  lostPages: Schema.optional(Schema.Literals(["evicted", "readable-until-crash"]))
})

const ServicePlanSchema = Schema.Struct({
  config: Schema.String,
  safekeeperCount: Schema.Number,
  computeCount: Schema.Number,
  actions: Schema.Array(FaultActionSchema),
  faultPhaseUs: Schema.Number,
  livenessPhaseUs: Schema.Number,
  crashOnOperationProbability: Schema.Number,
  clockSkewUsMax: Schema.Number,
  chunkDelayUs: Range,
  fsyncLatencyUs: Range,
  diskFaults: Schema.optional(DiskFaultsSchema),
  rateBytesPerSecond: Schema.Number,
  messageBytes: Schema.Number,
  syncFirst: Schema.Boolean,
  segmentSizeBytes: Schema.Number,
  pageserver: Schema.optional(Schema.Boolean),
  clockDriftPpmMax: Schema.optional(Schema.Number),
  breakProbabilityPerChunk: Schema.optional(Schema.Number),
  chunkDelayTail: Schema.optional(Schema.Struct({ probability: Schema.Number, delayUs: Range })),
  capacityLimit: Schema.optional(Schema.Struct({ pick: Pick, capacityBytes: Schema.Number })),
  xlogSwitchEveryRecords: Schema.optional(Schema.Number),
  xlogSwitchSplitPadding: Schema.optional(Schema.Boolean),
  offload: Schema.optional(Schema.Struct({
    storeFaults: Schema.Struct({
      requestLatencyUs: Range,
      uploadBytesPerSecond: Schema.optional(Schema.Number),
      downloadBytesPerSecond: Schema.optional(Schema.Number),
      transientErrorProbability: Schema.Number,
      lostAckProbability: Schema.Number,
      requestTimeoutUs: Schema.Number
    }),
    brokerFaults: Schema.Struct({
      publishLatencyUs: Range,
      deliveryLagUs: Range,
      dropProbability: Schema.Number,
      duplicateProbability: Schema.Number,
      timeoutUs: Schema.Number
    }),
    partialBackupTimeoutUs: Schema.Number,
    eviction: Schema.Boolean,
    peerRecovery: Schema.Boolean
  }))
})

const PlanFileSchema = Schema.Struct({
  format: Schema.Literal(PLAN_FILE_FORMAT),
  version: Schema.Literal(PLAN_FILE_VERSION),
  scenario: Schema.String,
  seed: Schema.Number,
  invariant: Schema.String,
  plan: ServicePlanSchema
})

export type PlanFile = typeof PlanFileSchema.Type

export function writePlanFile(path: string, outcome: ShrinkOutcome): void {
  const file: PlanFile = { format: PLAN_FILE_FORMAT, version: PLAN_FILE_VERSION, scenario: outcome.scenario, seed: outcome.seed, invariant: outcome.invariant, plan: outcome.plan }
  mkdirSync(dirname(path), { recursive: true })
  writeFileSync(path, JSON.stringify(file, null, 2) + "\n")
}

export function readPlanFile(path: string): PlanFile {
  let json: unknown
  try {
    json = JSON.parse(readFileSync(path, "utf8"))
  } catch (error) {
    throw new ShrinkError({ reason: "BadPlanFile", message: `cannot read plan file ${path}: ${error instanceof Error ? error.message : String(error)}` })
  }
  try {
    return Schema.decodeUnknownSync(PlanFileSchema)(json)
  } catch (error) {
    throw new ShrinkError({ reason: "BadPlanFile", message: `${path} is not a shrink plan file (format ${PLAN_FILE_FORMAT} version ${PLAN_FILE_VERSION}): ${error instanceof Error ? error.message : String(error)}` })
  }
}

/** Runs a plan file's plan on its scenario and seed; `lookup` finds the scenario by name. */
export function replayPlanFile(path: string, lookup: (name: string) => Scenario | undefined): { readonly file: PlanFile; readonly result: ScenarioResult } {
  const file = readPlanFile(path)
  const scenario = lookup(file.scenario)
  if (scenario === undefined) throw unknownScenario(file.scenario)
  if (scenario.planned === undefined) throw new ShrinkError({ reason: "NotPlanned", message: `scenario ${scenario.name} is not driven by a plan` })
  return { file, result: scenario.planned.runPlan(file.seed, file.plan, { recordTrace: false }) }
}

function replayText(file: PlanFile, result: ScenarioResult): string {
  const verdict = verdictOf(result)
  return [
    `replay ${file.scenario} seed ${file.seed}: ${file.plan.actions.length} fault actions (shrunk for ${file.invariant})`,
    ...result.violations.map((v) => `VIOLATION at ${v.atUs} us on ${v.who}: ${v.message}`),
    ...result.nondeterminism.map((hit) => `NON-DETERMINISM: ${hit.what} at ${hit.site}`),
    `trace hash ${result.traceHash}`,
    `${verdict === "ok" ? "PASS" : `FAIL (${verdict})`}: exit ${exitCodeOfVerdict(verdict)}`
  ].join("\n")
}

function unknownScenario(name: string): ShrinkError {
  return new ShrinkError({ reason: "UnknownScenario", message: `unknown scenario "${name}"; known: ${SCENARIOS.map((s) => s.name).join(", ")}` })
}
