import { Cause, Effect, Exit, type Fiber } from "effect"
import { Disk } from "../core/io/disk.js"
import { Log } from "../core/io/log.js"
import { Net } from "../core/io/net.js"
import { SimDisk, type DiskFaults } from "./disk.js"
import { Incarnation, Kernel } from "./kernel.js"
import { SimNet, type NetFaults } from "./net.js"
import { EPOCH_US, forkInLife, simLog } from "./runtime.js"
import { withTripwires, type TripwireHit } from "./tripwires.js"

/**
 * A simulated world: nodes with their own disks on one network, all in one kernel. A node
 * life (incarnation) runs the node's program as a root fiber; a crash is kill -9: the life is
 * marked dead (its tasks, timers and connections vanish, no finalizer runs), the disk applies
 * its crash model and the network resets the node's connections. A restart starts a new life
 * from what the disk kept.
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
  readonly stats = { starts: 0, crashes: 0, operationCrashes: 0, exits: 0, wipes: 0 }
  private readonly lives = new Map<string, Incarnation>()
  private readonly fibers = new Map<string, Fiber.Fiber<void, unknown>>()
  private readonly skewUs = new Map<string, number>()
  private readonly crashListeners: Array<(node: string) => void> = []
  /** When false, crash-on-operation and restarts stop (the liveness phase). */
  faultsEnabled = true

  constructor(readonly options: WorldOptions) {
    this.kernel = new Kernel(options.seed, { recordTrace: options.recordTrace, traceHeader: options.traceHeader })
    this.net = new SimNet(this.kernel, options.netFaults)
    for (const node of options.nodes) {
      this.disks.set(node, new SimDisk(this.kernel, node, options.diskFaults))
      const skew = Math.round((this.kernel.nextFloat() * 2 - 1) * options.clockSkewUsMax)
      this.skewUs.set(node, skew)
    }
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
    const program = this.options.program(node, life).pipe(
      Effect.provideService(Disk, this.disk(node).service(life, hooks)),
      Effect.provideService(Net, this.net.service(life, node, hooks)),
      Effect.provideService(Log, simLog(this.kernel, life))
    )
    const fiber = forkInLife(this.kernel, life, program, { skewUs: this.skewUs.get(node) ?? 0 })
    this.fibers.set(node, fiber)
    fiber.addObserver((exit) => this.onExit(life, exit))
  }

  /** kill -9 of the node's current life. */
  crash(node: string, reason: string): void {
    const life = this.lives.get(node)
    if (life === undefined || !life.alive) return
    life.alive = false
    this.stats.crashes++
    this.kernel.log(life.label, `world crash (${reason})`)
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
   * (each one means the run touched real time, randomness or timers: non-determinism).
   */
  run(untilUs: number, options: { readonly stop?: () => boolean; readonly maxSteps?: number } = {}): ReadonlyArray<TripwireHit> {
    const [, wires] = withTripwires(this.options.seed, () => Math.floor((EPOCH_US + this.kernel.nowUs) / 1000), () =>
      this.kernel.run({ untilUs, ...options }))
    return wires.hits
  }

  /** Ends the run: every life dies without finalizers so no fiber outlives the world. */
  dispose(): void {
    for (const life of this.lives.values()) life.alive = false
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
