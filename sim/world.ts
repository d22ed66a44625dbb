import { Cause, Effect, Exit, type Fiber } from "effect"
import { Disk } from "../core/io/disk.js"
import { Log } from "../core/io/log.js"
import { Net } from "../core/io/net.js"
import { SimDisk, type DiskFaults } from "./disk.js"
import { Incarnation, Kernel, LivelockError } from "./kernel.js"
import { SimNet, type NetFaults } from "./net.js"
import { EPOCH_US, LifeGate, gatedDisk, gatedNet, simLog, startLife, watchRealWaits, type SimScheduler } from "./runtime.js"
import { withTripwires, type TripwireHit } from "./tripwires.js"

/** A sweep calls this after each seed: late calls may arrive after a seed's result was assembled. */
export { takeLateCalls, type LateCall } from "./kernel.js"

/**
 * A simulated world: nodes with their own disks on one network, all in one kernel. A node
 * life (incarnation) runs the node's program as a root fiber; a crash is kill -9: the life is
 * marked dead (its tasks, timers and connections vanish, no finalizer runs), the disk applies
 * its crash model and the network resets the node's connections. A restart starts a new life
 * from what the disk kept. A pause holds a life's tasks and timers (a GC or VM stall) and lets
 * them run, overdue and in order, when it ends.
 *
 * A run fails (a violation) when it exceeds a step budget (a livelock), when it ends while a
 * fiber of a live node waits on real asynchronous work the kernel does not own, and when
 * anything calls into a node's services or scheduler while no run executes (DESIGN.md §3).
 */
export type NodeProgram = (node: string, life: Incarnation) => Effect.Effect<void, unknown, Disk | Net | Log>

export interface WorldOptions {
  readonly seed: number
  readonly nodes: ReadonlyArray<string>
  readonly program: NodeProgram
  readonly diskFaults: DiskFaults
  readonly netFaults: NetFaults
  /** Chance that any one Disk or Net operation of a node is where it crashes. */
  readonly crashOnOperationProbability: number
  /** Each node's clock is off by up to ± this much (fixed per node for the run). */
  readonly clockSkewUsMax: number
  /** A node that died (crash or exit) comes back after a delay drawn from this range. */
  readonly restartDelayUs: readonly [number, number]
  readonly recordTrace: boolean
  readonly traceHeader: ReadonlyArray<string>
  /** Nodes whose operations never crash (clients whose memory the checker trusts). */
  readonly crashExempt?: ReadonlyArray<string>
  /**
   * Each node's clock runs fast or slow by up to ± this many parts per million (fixed per node
   * for the run): its clock reads and its sleeps and timers stretch or shrink with it. 0 (the
   * default) draws nothing, so worlds without drift replay as before.
   */
  readonly clockDriftPpmMax?: number
  /** Step budgets (kernel.ts); the defaults suit every scenario. */
  readonly stepsPerInstantMax?: number
  readonly stepsMax?: number
}

export interface Violation {
  readonly atUs: number
  readonly who: string
  readonly message: string
}

export class World {
  readonly kernel: Kernel
  readonly net: SimNet
  readonly disks = new Map<string, SimDisk>()
  readonly violations: Violation[] = []
  readonly stats = { starts: 0, crashes: 0, operationCrashes: 0, exits: 0, wipes: 0, pauses: 0 }
  private readonly lives = new Map<string, Incarnation>()
  private readonly fibers = new Map<string, Fiber.Fiber<void, unknown>>()
  private readonly schedulers = new Map<string, SimScheduler>()
  private readonly skewUs = new Map<string, number>()
  private readonly driftPpm = new Map<string, number>()
  /** When the current pause of a life ends (a later pause may extend it). */
  private readonly pauseEndUs = new Map<Incarnation, number>()
  private readonly crashListeners: Array<(node: string) => void> = []
  /** Set once a run hit a step budget: later runs do nothing (the world is stuck). */
  private livelocked = false
  /** When false, crash-on-operation and restarts stop (the liveness phase). */
  faultsEnabled = true

  constructor(readonly options: WorldOptions) {
    this.kernel = new Kernel(options.seed, {
      recordTrace: options.recordTrace,
      traceHeader: options.traceHeader,
      ...(options.stepsPerInstantMax === undefined ? {} : { stepsPerInstantMax: options.stepsPerInstantMax }),
      ...(options.stepsMax === undefined ? {} : { stepsMax: options.stepsMax })
    })
    this.net = new SimNet(this.kernel, options.netFaults)
    const driftPpmMax = options.clockDriftPpmMax ?? 0
    // Beyond ±50% a clock is broken, not drifting (and at −100% it would stop).
    if (!Number.isSafeInteger(driftPpmMax) || driftPpmMax < 0 || driftPpmMax > 500_000) throw new Error(`clockDriftPpmMax ${driftPpmMax} out of [0, 500000]`)
    for (const node of options.nodes) {
      this.disks.set(node, new SimDisk(this.kernel, node, options.diskFaults))
      const skew = Math.round((this.kernel.nextFloat() * 2 - 1) * options.clockSkewUsMax)
      this.skewUs.set(node, skew)
      // Drawn only when asked for: a world without drift keeps the kernel's random stream.
      this.driftPpm.set(node, driftPpmMax > 0 ? Math.round((this.kernel.nextFloat() * 2 - 1) * driftPpmMax) : 0)
    }
    // Not traced: a late call may come from a real callback at a real moment (kernel.ts).
    this.kernel.onLateCall((call) => {
      this.violations.push({ atUs: this.kernel.nowUs, who: call.who, message: `late call: ${call.what} while no run executes${call.afterClose ? " (after dispose)" : ""}` })
    })
  }

  /** The node's clock drift in parts per million (positive: its clock runs fast). */
  clockDriftPpm(node: string): number {
    return this.driftPpm.get(node) ?? 0
  }

  isPaused(node: string): boolean {
    return this.lives.get(node)?.paused === true
  }

  /** Called after a node's crash model has been applied (checkers inspect the durable disk). */
  onCrash(listener: (node: string) => void): void {
    this.crashListeners.push(listener)
  }

  life(node: string): Incarnation | undefined {
    return this.lives.get(node)
  }

  isUp(node: string): boolean {
    return this.lives.get(node)?.alive === true
  }

  disk(node: string): SimDisk {
    const disk = this.disks.get(node)
    if (disk === undefined) throw new Error(`no node ${node}`)
    return disk
  }

  start(node: string): void {
    if (this.isUp(node)) return
    const life = new Incarnation(node, (this.lives.get(node)?.life ?? 0) + 1)
    this.lives.set(node, life)
    this.stats.starts++
    this.kernel.log(life.label, "world start")
    const exempt = this.options.crashExempt?.includes(node) === true
    const beforeOperation = exempt ? undefined : (operation: string, target: string) => this.maybeCrashAt(life, operation, target)
    const hooks = beforeOperation === undefined ? undefined : { beforeOperation }
    const gate = new LifeGate(this.kernel, life.label)
    const program = this.options.program(node, life).pipe(
      Effect.provideService(Disk, gatedDisk(this.disk(node).service(life, hooks), gate)),
      Effect.provideService(Net, gatedNet(this.net.service(life, node, hooks), gate)),
      Effect.provideService(Log, simLog(this.kernel, life))
    )
    const { fiber, scheduler } = startLife(this.kernel, life, program, { skewUs: this.skewUs.get(node) ?? 0, driftPpm: this.clockDriftPpm(node) })
    this.fibers.set(node, fiber)
    this.schedulers.set(node, scheduler)
    fiber.addObserver((exit) => this.onExit(life, exit))
  }

  /**
   * Stops scheduling the node's current life for `durationUs` (a GC or VM stall): its tasks
   * and due timers, disk and network completions included, are held and run when the pause
   * ends, in their original order, timers overdue. Bytes still arrive in its sockets meanwhile
   * (the OS keeps running); it just does not read or answer. A crash during the pause drops
   * what was held. Pausing a paused life extends the pause; pausing a down node does nothing.
   */
  pause(node: string, durationUs: number): void {
    if (!Number.isSafeInteger(durationUs) || durationUs < 0) throw new Error(`pause of ${durationUs} µs`)
    const life = this.lives.get(node)
    if (life === undefined || !life.alive) return
    const endUs = Math.max(this.kernel.nowUs + durationUs, this.pauseEndUs.get(life) ?? 0)
    this.pauseEndUs.set(life, endUs)
    this.stats.pauses++
    this.kernel.log(life.label, `world pause ${durationUs} µs (until ${endUs})`)
    this.kernel.pause(life)
    this.kernel.setTimer(endUs, () => {
      if (!life.alive || !life.paused || this.pauseEndUs.get(life) !== endUs) return // crashed, or extended
      this.pauseEndUs.delete(life)
      const held = this.kernel.resume(life)
      this.kernel.log(life.label, `world resume held=${held}`)
    }, undefined)
  }

  /** kill -9 of the node's current life. */
  crash(node: string, reason: string): void {
    const life = this.lives.get(node)
    if (life === undefined || !life.alive) return
    life.alive = false
    this.stats.crashes++
    this.kernel.log(life.label, `world crash (${reason})`)
    if (life.paused) {
      this.pauseEndUs.delete(life)
      this.kernel.log(life.label, `world dropped held=${this.kernel.resume(life)} (crashed while paused)`)
    }
    this.disk(node).crash()
    this.net.crashHost(node)
    for (const listener of this.crashListeners) listener(node)
  }

  /** Whole-disk loss: the node must be down; it comes back empty. */
  wipe(node: string): void {
    if (this.isUp(node)) throw new Error(`wipe of running node ${node}`)
    this.stats.wipes++
    this.kernel.log(node, "world wipe disk")
    this.disk(node).wipe()
  }

  restartLater(node: string): void {
    const [low, high] = this.options.restartDelayUs
    const delayUs = this.kernel.intBetween(low, high)
    this.kernel.after(delayUs, () => this.start(node), undefined)
  }

  violation(who: string, message: string): void {
    this.violations.push({ atUs: this.kernel.nowUs, who, message })
    this.kernel.log(who, `VIOLATION ${message}`)
  }

  /**
   * Runs the kernel until `untilUs` with the trip-wires armed. Returns the trip-wire hits
   * (each one means the run touched real time, randomness or timers: non-determinism). A run
   * that exceeds a step budget is a violation (a livelock) and ends the world's progress: later
   * runs return at once. At its end, a fiber of a live node still waiting on real asynchronous
   * work (a real I/O callback, a promise) is a violation: that wait is not the kernel's.
   */
  run(untilUs: number, options: { readonly stop?: () => boolean } = {}): ReadonlyArray<TripwireHit> {
    if (this.kernel.isClosed) throw new Error("run of a disposed world")
    if (this.livelocked) return []
    let livelock: LivelockError | undefined
    const [, wires] = withTripwires(this.options.seed, () => Math.floor((EPOCH_US + this.kernel.nowUs) / 1000), () =>
      watchRealWaits(() => {
        try {
          this.kernel.run({ untilUs, ...options })
        } catch (error) {
          if (!(error instanceof LivelockError)) throw error
          livelock = error
        }
      }))
    if (livelock !== undefined) {
      this.livelocked = true
      this.violation("world", livelock.message)
    }
    this.checkRealWaits()
    return wires.hits
  }

  /** Ends the run: every life dies without finalizers so no fiber outlives the world; any later call in is a late call. */
  dispose(): void {
    for (const life of this.lives.values()) life.alive = false
    this.kernel.close()
  }

  /** A fiber of a live node that started real async work and has not run since waits on something the kernel does not own. */
  private checkRealWaits(): void {
    for (const [node, scheduler] of this.schedulers) {
      const life = this.lives.get(node)
      if (life === undefined || !life.alive || scheduler.realWaits.size === 0) continue
      for (const [fiber, resourceType] of scheduler.realWaits) {
        if (fiber.pollUnsafe() !== undefined) continue
        this.violation(life.label, `the run ended while a fiber waits on real asynchronous work (${resourceType}) the kernel does not own: it would resume outside virtual time`)
      }
      scheduler.realWaits.clear()
    }
  }

  private maybeCrashAt(life: Incarnation, operation: string, target: string): boolean {
    if (!life.alive) return false
    if (!this.faultsEnabled || !this.kernel.chance(this.options.crashOnOperationProbability)) return true
    this.stats.operationCrashes++
    this.crash(life.node, `at ${operation} ${target}`)
    this.restartLater(life.node)
    return false
  }

  private onExit(life: Incarnation, exit: Exit.Exit<void, unknown>): void {
    if (!life.alive) return
    if (Exit.isFailure(exit) && Cause.hasDies(exit.cause)) {
      this.violation(life.label, `defect: ${firstLine(Cause.pretty(exit.cause))}`)
    }
    const how = Exit.isSuccess(exit) ? "exited" : `exited with ${firstLine(Cause.pretty(exit.cause))}`
    this.stats.exits++
    // A process that exits loses its unsynced writes like a crash would not: the OS keeps the
    // page cache. Model it as a clean exit: connections reset, disk untouched, then restart.
    life.alive = false
    this.kernel.log(life.label, `world ${how}`)
    this.net.crashHost(life.node)
    if (this.faultsEnabled || Exit.isFailure(exit)) this.restartLater(life.node)
  }
}

function firstLine(text: string): string {
  const line = text.split("\n").find((l) => l.trim().length > 0) ?? text
  return line.trim().slice(0, 200)
}
