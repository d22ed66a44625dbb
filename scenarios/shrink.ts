import type { FaultAction, ServicePlan } from "./service.js"

/**
 * Shrinking a failing plan (`sk sim shrink`): delta debugging (Zeller and Hildebrandt, ddmin)
 * over the fault actions, then simplifications of the rest of the plan, keeping each step only
 * while the same invariant still fails. Pure: the caller passes the test (one simulated run per
 * call), so the same plan and test give the same result, and every call counts against a run
 * budget. Runs are memoised by plan, so a candidate tried twice costs one run.
 */

/** Default of --max-runs: about as long as a short sweep. */
export const SHRINK_RUNS_MAX_DEFAULT = 300
/** Halving the fault phase stops here: below it no fault has time to matter. */
const FAULT_PHASE_US_MIN = 10_000
/** Halving the WAL rate stops here (the walproposer still writes a record every few ms). */
const RATE_BYTES_PER_SECOND_MIN = 16 * 1024
/** ddmin, then simplifications, repeated while a round changes the plan; bounded anyway. */
const ROUNDS_MAX = 4

/** Counts runs against a budget; `test` answers undefined once the budget is spent. */
export class RunBudget<A> {
  runs = 0
  private readonly seen = new Map<string, boolean>()
  constructor(
    readonly runsMax: number,
    private readonly fails: (candidate: A) => boolean,
    private readonly keyOf: (candidate: A) => string
  ) {
    if (!Number.isInteger(runsMax) || runsMax < 0) throw new RangeError(`runsMax must be a non-negative integer, got ${runsMax}`)
  }

  get exhausted(): boolean {
    return this.runs >= this.runsMax
  }

  /** Whether the candidate still fails; undefined when the budget is spent (the caller stops). */
  test(candidate: A): boolean | undefined {
    const key = this.keyOf(candidate)
    const known = this.seen.get(key)
    if (known !== undefined) return known
    if (this.exhausted) return undefined
    this.runs++
    const failed = this.fails(candidate)
    this.seen.set(key, failed)
    return failed
  }
}

/**
 * ddmin: the smallest failing subset it finds of `items` (1-minimal when the budget allows: no
 * single item can be removed). Tests the empty list first (a failure that needs no item at all
 * is common and costs one run), then subsets and complements of n chunks, n = 2, 4, ... up to
 * single items. `items` is assumed to fail. Order is kept.
 */
export function ddmin<A>(items: ReadonlyArray<A>, test: (subset: ReadonlyArray<A>) => boolean | undefined): ReadonlyArray<A> {
  if (items.length === 0) return items
  const none = test([])
  if (none === true || none === undefined) return none === true ? [] : items
  let current = items
  let chunkCount = 2
  while (current.length >= 2) {
    const chunks = split(current, chunkCount)
    let reduced: ReadonlyArray<A> | undefined
    let nextChunkCount = chunkCount
    // A chunk alone: with two chunks a chunk is the other's complement, tried below anyway.
    if (chunks.length > 2) {
      for (const chunk of chunks) {
        const failed = test(chunk)
        if (failed === undefined) return current
        if (failed) {
          reduced = chunk
          nextChunkCount = 2
          break
        }
      }
    }
    if (reduced === undefined) {
      for (let i = 0; i < chunks.length; i++) {
        const complement = chunks.filter((_, j) => j !== i).flat()
        const failed = test(complement)
        if (failed === undefined) return current
        if (failed) {
          reduced = complement
          nextChunkCount = Math.max(chunkCount - 1, 2)
          break
        }
      }
    }
    if (reduced !== undefined) {
      current = reduced
      chunkCount = Math.min(nextChunkCount, current.length)
    } else if (chunkCount >= current.length) {
      break
    } else {
      chunkCount = Math.min(chunkCount * 2, current.length)
    }
  }
  // One item left: it alone fails, and the empty list passed above.
  return current
}

/** `items` in `count` contiguous chunks of near-equal length (the first ones one longer). */
function split<A>(items: ReadonlyArray<A>, count: number): A[][] {
  const chunks: A[][] = []
  let start = 0
  for (let i = 0; i < count; i++) {
    const length = Math.floor(items.length / count) + (i < items.length % count ? 1 : 0)
    chunks.push(items.slice(start, start + length))
    start += length
  }
  return chunks.filter((chunk) => chunk.length > 0)
}

export interface ShrinkStep {
  /** What was tried last and kept: "ddmin", "fewer computes", "no pageserver", ... */
  readonly step: string
  readonly runs: number
  readonly actions: number
}

export interface ShrinkPlanResult {
  readonly plan: ServicePlan
  readonly runs: number
  /** The budget ran out before the plan stopped shrinking. */
  readonly exhausted: boolean
}

/**
 * Shrinks `plan`, which fails, while `fails` holds: ddmin over its actions, then, each kept only
 * if the plan still fails: fewer computes, every action aimed at one node removed, a shorter
 * fault phase, no crashes between I/O operations, no pageserver, a lower WAL rate; repeated while
 * a round changes anything. Never touches the liveness phase (a shorter one fails liveness by
 * itself) nor the number of safekeepers (action targets are picks among them).
 */
export function shrinkPlan(
  plan: ServicePlan,
  fails: (plan: ServicePlan) => boolean,
  options: { readonly runsMax: number; readonly onStep?: (step: ShrinkStep) => void }
): ShrinkPlanResult {
  const budget = new RunBudget<ServicePlan>(options.runsMax, fails, planKey)
  let current = plan
  const keep = (step: string, candidate: ServicePlan): boolean => {
    if (planKey(candidate) === planKey(current)) return false
    if (budget.test(candidate) !== true) return false
    current = candidate
    options.onStep?.({ step, runs: budget.runs, actions: current.actions.length })
    return true
  }
  for (let round = 0; round < ROUNDS_MAX && !budget.exhausted; round++) {
    const before = planKey(current)
    const base = current
    const actions = ddmin(base.actions, (subset) => budget.test({ ...base, actions: subset }))
    if (actions.length < base.actions.length) {
      current = { ...base, actions }
      options.onStep?.({ step: "ddmin", runs: budget.runs, actions: actions.length })
    }
    for (const [step, simplify] of SIMPLIFICATIONS) {
      // Each simplification repeats while it keeps failing (halving the rate, one compute less...).
      for (let again = true; again && !budget.exhausted;) {
        const candidates = simplify(current)
        again = false
        for (const candidate of candidates) {
          if (keep(step, candidate)) {
            again = true
            break
          }
          if (budget.exhausted) break
        }
      }
    }
    if (planKey(current) === before) break
  }
  return { plan: current, runs: budget.runs, exhausted: budget.exhausted }
}

type Simplification = readonly [string, (plan: ServicePlan) => ReadonlyArray<ServicePlan>]

const SIMPLIFICATIONS: ReadonlyArray<Simplification> = [
  ["fewer computes", fewerComputes],
  ["one node's actions removed", withoutOneTarget],
  ["shorter fault phase", shorterFaultPhase],
  ["no crashes between I/O operations", (plan) => plan.crashOnOperationProbability > 0 ? [{ ...plan, crashOnOperationProbability: 0 }] : []],
  ["no pageserver", noPageserver],
  ["no per-chunk faults", (plan) => (plan.breakProbabilityPerChunk ?? 0) > 0 || plan.chunkDelayTail !== undefined ? [{ ...withoutKeys(plan, "chunkDelayTail"), breakProbabilityPerChunk: 0 }] : []],
  ["no full disk", (plan) => plan.capacityLimit !== undefined ? [withoutKeys(plan, "capacityLimit")] : []],
  ["no object storage faults", noOffloadFaults],
  ["lower WAL rate", lowerRate]
]

function withoutKeys(plan: ServicePlan, key: "chunkDelayTail" | "capacityLimit"): ServicePlan {
  const copy: { -readonly [K in keyof ServicePlan]: ServicePlan[K] } = { ...plan }
  delete copy[key]
  return copy
}

/** One compute and no start-compute first; else one compute less (its start dropped). */
function fewerComputes(plan: ServicePlan): ReadonlyArray<ServicePlan> {
  if (plan.computeCount <= 1 && !plan.actions.some((a) => a.kind === "start-compute")) return []
  const only: ServicePlan = { ...plan, computeCount: 1, actions: plan.actions.filter((a) => a.kind !== "start-compute") }
  if (plan.computeCount <= 2) return [only]
  const computeCount = plan.computeCount - 1
  return [only, { ...plan, computeCount, actions: plan.actions.filter((a) => a.kind !== "start-compute" || a.compute < computeCount) }]
}

/**
 * Every action aimed at one target removed, one candidate per target. A target is a static
 * name: the safekeeper a pick lands on when all are up, the compute a start names. Picks choose
 * among the nodes up when the action fires, so this is an approximation of "one node's events".
 */
function withoutOneTarget(plan: ServicePlan): ReadonlyArray<ServicePlan> {
  const targets = [...new Set(plan.actions.flatMap((a) => targetsOf(a, plan.safekeeperCount)))].sort()
  if (targets.length <= 1) return []
  return targets.map((target) => ({ ...plan, actions: plan.actions.filter((a) => !targetsOf(a, plan.safekeeperCount).includes(target)) }))
}

export function targetsOf(action: FaultAction, safekeeperCount: number): ReadonlyArray<string> {
  const sk = (pick: number) => `sk${Math.min(safekeeperCount - 1, Math.floor(pick * safekeeperCount)) + 1}`
  switch (action.kind) {
    case "crash": return action.role === "safekeeper" ? [sk(action.pick)] : ["computes"]
    case "wipe":
    case "disk-errors":
    case "isolate":
    case "pause": return [sk(action.pick)]
    case "partition":
    case "clog": return action.withCompute ? ["computes", sk(action.pickB)] : [sk(action.pickA), sk(action.pickB)]
    case "break": return ["computes", sk(action.pickB)]
    case "start-compute": return [`compute${action.compute + 1}`]
    case "crash-pageserver": return ["pageserver"]
    case "partition-store": return [sk(action.pick), "object-store"]
    case "partition-broker": return [sk(action.pick), "broker"]
    case "idle": return ["computes"]
  }
}

/** Half the fault phase, dropping the actions after it. */
function shorterFaultPhase(plan: ServicePlan): ReadonlyArray<ServicePlan> {
  const faultPhaseUs = Math.max(FAULT_PHASE_US_MIN, Math.floor(plan.faultPhaseUs / 2))
  if (faultPhaseUs >= plan.faultPhaseUs) return []
  return [{ ...plan, faultPhaseUs, actions: plan.actions.filter((a) => a.atUs < faultPhaseUs) }]
}

function noPageserver(plan: ServicePlan): ReadonlyArray<ServicePlan> {
  if (plan.pageserver !== true) return []
  return [{ ...plan, pageserver: false, actions: plan.actions.filter((a) => a.kind !== "crash-pageserver") }]
}

/** Object storage and broker without faults (and no store or broker partitions). */
function noOffloadFaults(plan: ServicePlan): ReadonlyArray<ServicePlan> {
  const offload = plan.offload
  if (offload === undefined) return []
  const faulty = offload.storeFaults.transientErrorProbability > 0 || offload.storeFaults.lostAckProbability > 0 ||
    offload.brokerFaults.dropProbability > 0 || offload.brokerFaults.duplicateProbability > 0 ||
    plan.actions.some((a) => a.kind === "partition-store" || a.kind === "partition-broker")
  if (!faulty) return []
  return [{
    ...plan,
    offload: {
      ...offload,
      storeFaults: { ...offload.storeFaults, transientErrorProbability: 0, lostAckProbability: 0 },
      brokerFaults: { ...offload.brokerFaults, dropProbability: 0, duplicateProbability: 0 }
    },
    actions: plan.actions.filter((a) => a.kind !== "partition-store" && a.kind !== "partition-broker")
  }]
}

function lowerRate(plan: ServicePlan): ReadonlyArray<ServicePlan> {
  const rateBytesPerSecond = Math.max(RATE_BYTES_PER_SECOND_MIN, Math.floor(plan.rateBytesPerSecond / 2))
  return rateBytesPerSecond < plan.rateBytesPerSecond ? [{ ...plan, rateBytesPerSecond }] : []
}

/** A plan's identity for memoising runs (JSON of plain data: key order is the builders'). */
export function planKey(plan: ServicePlan): string {
  return JSON.stringify(plan)
}

/** The invariant a violation names: its message up to the first colon. */
export function invariantOf(message: string): string {
  const colon = message.indexOf(":")
  return colon < 0 ? message : message.slice(0, colon)
}
