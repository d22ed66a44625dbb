import seedrandom from "seedrandom"
import { Trace } from "./trace.js"

/**
 * The deterministic core of the simulator, free of Effect: integer virtual time in µs, a
 * seeded PRNG, a FIFO ready queue and a timer heap ordered by (time, sequence). Everything
 * runs synchronously in `run`; ties break by insertion order, never by chance.
 */
export type Task = () => void

/** One life of a node. Tasks and timers of a dead incarnation are dropped (kill -9). */
export class Incarnation {
  alive = true
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

export interface KernelOptions {
  /** Record trace lines in memory (the hash is always computed). */
  readonly recordTrace?: boolean
  /** Header lines that open the trace (and its hash): scenario, seed, Effect version. */
  readonly traceHeader?: ReadonlyArray<string>
}

export class Kernel {
  nowUs = 0
  readonly random: seedrandom.PRNG
  readonly trace: Trace
  readonly stats = { tasks: 0, droppedTasks: 0, timersFired: 0 }
  private readyTasks: Task[] = []
  private readyOwners: (Incarnation | undefined)[] = []
  private readyHead = 0
  private readonly timers = new TimerHeap()
  private sequence = 0

  constructor(readonly seed: number, options: KernelOptions = {}) {
    this.random = seedrandom.alea(`${seed}/kernel`)
    this.trace = new Trace(options.recordTrace ?? true, options.traceHeader ?? [`seed ${seed}`])
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
   * true (checked between steps). Throws when more than `maxSteps` tasks ran (a livelock).
   */
  run(options: { readonly untilUs?: number; readonly maxSteps?: number; readonly stop?: () => boolean } = {}): void {
    const untilUs = options.untilUs ?? Number.POSITIVE_INFINITY
    const maxSteps = options.maxSteps ?? Number.POSITIVE_INFINITY
    for (;;) {
      while (this.pendingTasks > 0) {
        const owner = this.readyOwners[this.readyHead]
        const task = this.readyTasks[this.readyHead]!
        this.readyHead++
        this.compactReadyQueue()
        if (owner !== undefined && !owner.alive) {
          this.stats.droppedTasks++
          continue
        }
        this.stats.tasks++
        task()
        if (this.stats.tasks > maxSteps) throw new LivelockError(maxSteps)
      }
      if (options.stop !== undefined && options.stop()) return
      const timer = this.timers.peek()
      if (timer === undefined || timer.atUs > untilUs) {
        if (untilUs !== Number.POSITIVE_INFINITY) this.nowUs = Math.max(this.nowUs, untilUs)
        return
      }
      this.timers.pop()
      if (timer.cancelled || (timer.owner !== undefined && !timer.owner.alive)) continue
      this.nowUs = timer.atUs
      this.stats.timersFired++
      timer.task()
    }
  }

  private compactReadyQueue(): void {
    if (this.readyHead > 4096 && this.readyHead * 2 > this.readyTasks.length) {
      this.readyTasks = this.readyTasks.slice(this.readyHead)
      this.readyOwners = this.readyOwners.slice(this.readyHead)
      this.readyHead = 0
    }
  }
}

export class LivelockError extends Error {
  constructor(readonly maxSteps: number) {
    super(`more than ${maxSteps} scheduler steps: livelock`)
  }
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
