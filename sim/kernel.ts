import seedrandom from "seedrandom"
import { Trace } from "./trace.js"

/**
 * The deterministic core of the simulator, free of Effect: integer virtual time in µs, a
 * seeded PRNG, a FIFO ready queue and a timer heap ordered by (time, sequence). Everything
 * runs synchronously in `run`; ties break by insertion order, never by chance.
 */
export type Task = () => void

/**
 * One life of a node. Tasks and timers of a dead incarnation are dropped (kill -9); those of a
 * paused one are held by the kernel until it resumes (a GC or VM stall, DESIGN.md §5).
 */
export class Incarnation {
  alive = true
  paused = false
  constructor(readonly node: string, readonly life: number) {}
  get label(): string {
    return `${this.node}#${this.life}`
  }
}

export interface Timer {
  readonly atUs: number
  readonly sequence: number
  readonly task: Task
  readonly owner: Incarnation | undefined
  cancelled: boolean
}

/** Seeds are integers in [0, 2^53−1] (DESIGN.md §3). */
export function isValidSeed(seed: number): boolean {
  return Number.isSafeInteger(seed) && seed >= 0
}

/**
 * Step budgets (a step is a task run or a timer fired). A livelock is a failure, not a hang
 * (DESIGN.md §3): `Effect.forever(Effect.yieldNow)` never lets virtual time advance, and
 * `Effect.forever(sleep(1 µs))` creeps. Measured over every scenario in the tree when these
 * were set (50 seeds of each at commit 7fa3399, 10 of each scenario added since): at most 49
 * steps at one instant and 25,599 in a run (a step drains a fiber's whole batch of Effect
 * tasks; see `stats.instantStepsMax`). The defaults leave about 2000 and 200 times that; a
 * spinning fiber costs about a microsecond a step, so the instant budget trips within a
 * fraction of a second.
 */
export const STEPS_PER_INSTANT_MAX_DEFAULT = 100_000
export const STEPS_MAX_DEFAULT = 5_000_000

export interface KernelOptions {
  /** Record trace lines in memory (the hash is always computed). */
  readonly recordTrace?: boolean
  /** Header lines that open the trace (and its hash): scenario, seed, Effect version. */
  readonly traceHeader?: ReadonlyArray<string>
  /** Steps allowed while virtual time stands still; one more is a livelock. */
  readonly stepsPerInstantMax?: number
  /** Steps allowed over the kernel's whole life; one more is a livelock. */
  readonly stepsMax?: number
}

/** A call into the simulation when no run executes (DESIGN.md §3): node code outside virtual time. */
export interface LateCall {
  readonly seed: number
  readonly who: string
  readonly what: string
  /** True when it came after the world was disposed (`close`), false between runs. */
  readonly afterClose: boolean
}

/** How many late calls one kernel keeps (and passes to the process-wide list); the rest are counted. */
const LATE_CALLS_KEPT_MAX = 20
const PROCESS_LATE_CALLS_KEPT_MAX = 1000

export class Kernel {
  nowUs = 0
  readonly random: seedrandom.PRNG
  readonly trace: Trace
  readonly stats = { tasks: 0, droppedTasks: 0, timersFired: 0, heldTasks: 0, instantStepsMax: 0, lateCalls: 0 }
  readonly stepsPerInstantMax: number
  readonly stepsMax: number
  /** Late calls seen (the first LATE_CALLS_KEPT_MAX; `stats.lateCalls` counts all). */
  readonly lateCalls: LateCall[] = []
  private readyTasks: Task[] = []
  private readyOwners: (Incarnation | undefined)[] = []
  private readyHead = 0
  private readonly timers = new TimerHeap()
  private sequence = 0
  private steps = 0
  /** Steps since virtual time last advanced. */
  private instantSteps = 0
  /** What paused lives would have run, in order. */
  private readonly held = new Map<Incarnation, Task[]>()
  /** > 0 while node code may run: inside `run`, or while the harness starts a life (`admit`). */
  private openDepth = 0
  private closed = false
  private readonly lateCallListeners: Array<(call: LateCall) => void> = []

  constructor(readonly seed: number, options: KernelOptions = {}) {
    this.random = seedrandom.alea(`${seed}/kernel`)
    this.trace = new Trace(options.recordTrace ?? true, options.traceHeader ?? [`seed ${seed}`])
    this.stepsPerInstantMax = options.stepsPerInstantMax ?? STEPS_PER_INSTANT_MAX_DEFAULT
    this.stepsMax = options.stepsMax ?? STEPS_MAX_DEFAULT
  }

  /** True while node code may run: a run executes, or the harness is starting a life. */
  get isOpen(): boolean {
    return this.openDepth > 0 && !this.closed
  }

  /** Runs `body` (harness code that starts node code, such as forking a life's root fiber) as if inside a run. */
  admit<A>(body: () => A): A {
    this.openDepth++
    try {
      return body()
    } finally {
      this.openDepth--
    }
  }

  /** The run is over for good (World.dispose): any later call in is a late call, and `run` refuses. */
  close(): void {
    this.closed = true
  }

  get isClosed(): boolean {
    return this.closed
  }

  /**
   * Records a call into the simulation while it is not open (`who` called, `what` it was).
   * Never touches the trace: a late call may come from a real callback at a real moment, and
   * the trace must stay a function of the seed.
   */
  lateCall(who: string, what: string): void {
    this.stats.lateCalls++
    if (this.lateCalls.length >= LATE_CALLS_KEPT_MAX) return
    const call: LateCall = { seed: this.seed, who, what, afterClose: this.closed }
    this.lateCalls.push(call)
    recordProcessLateCall(call)
    for (const listener of this.lateCallListeners) listener(call)
  }

  onLateCall(listener: (call: LateCall) => void): void {
    this.lateCallListeners.push(listener)
  }

  /** Appends a trace line: virtual time, who, what. Never fiber ids or wall-clock. */
  log(who: string, event: string): void {
    this.trace.record(`${this.nowUs} ${who} ${event}`)
  }

  enqueue(task: Task, owner: Incarnation | undefined): void {
    this.readyTasks.push(task)
    this.readyOwners.push(owner)
  }

  setTimer(atUs: number, task: Task, owner: Incarnation | undefined): Timer {
    const timer: Timer = { atUs: Math.max(Math.floor(atUs), this.nowUs), sequence: this.sequence++, task, owner, cancelled: false }
    this.timers.push(timer)
    return timer
  }

  after(delayUs: number, task: Task, owner: Incarnation | undefined): Timer {
    return this.setTimer(this.nowUs + delayUs, task, owner)
  }

  cancel(timer: Timer): void {
    timer.cancelled = true
  }

  /** From now on the life's tasks and due timers are held, in the order they would have run. */
  pause(owner: Incarnation): void {
    owner.paused = true
  }

  /**
   * The life runs again: what was held runs next (ahead of the ready queue, so nothing the
   * life enqueued later overtakes it), in its original order, timers overdue. A dead life's
   * held tasks are dropped. Returns how many were held.
   */
  resume(owner: Incarnation): number {
    owner.paused = false
    const tasks = this.held.get(owner)
    if (tasks === undefined) return 0
    this.held.delete(owner)
    if (!owner.alive) {
      this.stats.droppedTasks += tasks.length
      return tasks.length
    }
    this.readyTasks.splice(this.readyHead, 0, ...tasks)
    this.readyOwners.splice(this.readyHead, 0, ...tasks.map(() => owner))
    return tasks.length
  }

  /** A float in [0, 1) from the kernel's stream (fault decisions, latencies). */
  nextFloat(): number {
    return this.random()
  }

  /** An integer in [minInclusive, maxInclusive]. */
  intBetween(minInclusive: number, maxInclusive: number): number {
    return minInclusive + Math.floor(this.random() * (maxInclusive - minInclusive + 1))
  }

  chance(probability: number): boolean {
    return probability > 0 && this.random() < probability
  }

  pick<A>(items: ReadonlyArray<A>): A {
    if (items.length === 0) throw new Error("pick from an empty list")
    return items[Math.floor(this.random() * items.length)]!
  }

  get pendingTasks(): number {
    return this.readyTasks.length - this.readyHead
  }

  get pendingTimers(): number {
    return this.timers.size
  }

  /**
   * Runs until nothing is left to do, virtual time would pass `untilUs`, or `stop()` returns
   * true (checked between steps). Throws LivelockError when a step budget runs out; the kernel
   * is then in a consistent state (the step that crossed the budget completed).
   */
  run(options: { readonly untilUs?: number; readonly stop?: () => boolean } = {}): void {
    if (this.closed) throw new Error("run of a closed kernel (the world was disposed)")
    this.openDepth++
    try {
      this.loop(options.untilUs ?? Number.POSITIVE_INFINITY, options.stop)
    } finally {
      this.openDepth--
      if (this.instantSteps > this.stats.instantStepsMax) this.stats.instantStepsMax = this.instantSteps
    }
  }

  private loop(untilUs: number, stop: (() => boolean) | undefined): void {
    for (;;) {
      while (this.pendingTasks > 0) {
        const owner = this.readyOwners[this.readyHead]
        const task = this.readyTasks[this.readyHead]!
        this.readyHead++
        this.compactReadyQueue()
        if (owner !== undefined && (!owner.alive || owner.paused)) {
          if (owner.alive) this.hold(owner, task)
          else this.stats.droppedTasks++
          continue
        }
        this.stats.tasks++
        task()
        this.countStep(owner)
      }
      if (stop !== undefined && stop()) return
      const timer = this.timers.peek()
      if (timer === undefined || timer.atUs > untilUs) {
        if (untilUs !== Number.POSITIVE_INFINITY && untilUs > this.nowUs) this.advanceTo(untilUs)
        return
      }
      this.timers.pop()
      const owner = timer.owner
      if (timer.cancelled || (owner !== undefined && !owner.alive)) continue
      if (timer.atUs > this.nowUs) this.advanceTo(timer.atUs)
      if (owner !== undefined && owner.paused) {
        this.hold(owner, timer.task)
        continue
      }
      this.stats.timersFired++
      timer.task()
      this.countStep(owner)
    }
  }

  private countStep(owner: Incarnation | undefined): void {
    if (++this.instantSteps > this.stepsPerInstantMax) {
      throw new LivelockError("instant", this.stepsPerInstantMax, this.nowUs, owner?.label)
    }
    if (++this.steps > this.stepsMax) throw new LivelockError("total", this.stepsMax, this.nowUs, owner?.label)
  }

  private advanceTo(atUs: number): void {
    if (this.instantSteps > this.stats.instantStepsMax) this.stats.instantStepsMax = this.instantSteps
    this.instantSteps = 0
    this.nowUs = atUs
  }

  private hold(owner: Incarnation, task: Task): void {
    this.stats.heldTasks++
    let tasks = this.held.get(owner)
    if (tasks === undefined) {
      tasks = []
      this.held.set(owner, tasks)
    }
    tasks.push(task)
  }

  private compactReadyQueue(): void {
    if (this.readyHead > 4096 && this.readyHead * 2 > this.readyTasks.length) {
      this.readyTasks = this.readyTasks.slice(this.readyHead)
      this.readyOwners = this.readyOwners.slice(this.readyHead)
      this.readyHead = 0
    }
  }
}

/** A step budget ran out: "instant" while virtual time stood still, "total" over the kernel's life. */
export class LivelockError extends Error {
  constructor(readonly budget: "instant" | "total", readonly steps: number, readonly atUs: number, readonly lastOwner: string | undefined) {
    super(budget === "instant"
      ? `livelock: more than ${steps} steps at virtual time ${atUs} µs without time advancing (last step: ${lastOwner ?? "harness"})`
      : `livelock: more than ${steps} steps in the run (at ${atUs} µs, last step: ${lastOwner ?? "harness"})`)
  }
}

/**
 * Late calls of every kernel in this process, for a sweep to consult after each seed (a late
 * call may arrive after the seed's result was assembled). One list per process even when a
 * test runner loads this module more than once.
 */
interface ProcessLateCalls {
  readonly calls: LateCall[]
  dropped: number
}
const PROCESS_LATE_CALLS_KEY = Symbol.for("sk/sim/kernel/late-calls")
const processSlot = globalThis as unknown as Record<symbol, ProcessLateCalls | undefined>
const processLateCalls: ProcessLateCalls = processSlot[PROCESS_LATE_CALLS_KEY] ??= { calls: [], dropped: 0 }

function recordProcessLateCall(call: LateCall): void {
  if (processLateCalls.calls.length >= PROCESS_LATE_CALLS_KEPT_MAX) processLateCalls.dropped++
  else processLateCalls.calls.push(call)
}

/** Returns the late calls recorded since the last take (and how many did not fit), and clears them. */
export function takeLateCalls(): { readonly calls: ReadonlyArray<LateCall>; readonly dropped: number } {
  const taken = { calls: processLateCalls.calls.splice(0), dropped: processLateCalls.dropped }
  processLateCalls.dropped = 0
  return taken
}

/** Binary min-heap on (atUs, sequence). */
class TimerHeap {
  private readonly heap: Timer[] = []
  get size(): number {
    return this.heap.length
  }
  peek(): Timer | undefined {
    return this.heap[0]
  }
  push(timer: Timer): void {
    const heap = this.heap
    heap.push(timer)
    let i = heap.length - 1
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (!before(heap[i]!, heap[parent]!)) break
      ;[heap[i], heap[parent]] = [heap[parent]!, heap[i]!]
      i = parent
    }
  }
  pop(): Timer | undefined {
    const heap = this.heap
    const top = heap[0]
    const last = heap.pop()
    if (top === undefined || last === undefined || heap.length === 0) return top
    heap[0] = last
    let i = 0
    for (;;) {
      const left = 2 * i + 1
      const right = left + 1
      let smallest = i
      if (left < heap.length && before(heap[left]!, heap[smallest]!)) smallest = left
      if (right < heap.length && before(heap[right]!, heap[smallest]!)) smallest = right
      if (smallest === i) return top
      ;[heap[i], heap[smallest]] = [heap[smallest]!, heap[i]!]
      i = smallest
    }
  }
}

const before = (a: Timer, b: Timer): boolean => a.atUs < b.atUs || (a.atUs === b.atUs && a.sequence < b.sequence)
