import { createHook } from "node:async_hooks"
import { Clock, Duration, Effect, Fiber, Random, Scheduler } from "effect"
import type { Disk, DiskFile } from "../core/io/disk.js"
import { Log, formatFields, type LogFields, type LogLevel } from "../core/io/log.js"
import type { Connection, Listener, Net } from "../core/io/net.js"
import type { Incarnation, Kernel } from "./kernel.js"

/**
 * The glue between Effect 4 and the kernel: one scheduler per node life (so a crash drops the
 * life's queued fiber steps), a virtual Clock (with the node's skew and drift), a seeded Random
 * and a Log that writes the trace. Effect 4 resumes a fiber inline inside whatever callback
 * completes it, so the simulated services check `life.alive` themselves; the scheduler is only
 * the first line of defence.
 *
 * Everything here also guards the run boundary (DESIGN.md §3): a call into a life's services or
 * scheduler while no run executes is reported to the kernel as a late call, and a fiber that
 * starts real asynchronous work (a callback from real I/O, a promise) is remembered until it
 * runs again, so the world can fail a run that ends while such a fiber waits.
 */

/** Virtual wall-clock origin: 2026-01-01T00:00:00Z, so logs show plausible dates. */
export const EPOCH_US = 1_767_225_600_000_000

/** The async_hooks type Effect 4.1 gives the AsyncResource it makes at every fiber suspension. */
const EFFECT_FIBER_RESOURCE = "effect/Fiber"

const PPM = 1_000_000
/** A drift at or below −100% would stop or reverse a node's clock. */
const DRIFT_PPM_LIMIT = 500_000

/** Reports calls into one life while its kernel is not open (no run executes). */
export class LifeGate {
  constructor(readonly kernel: Kernel, readonly who: string) {}
  check(what: string): void {
    if (!this.kernel.isOpen) this.kernel.lateCall(this.who, what)
  }
}

/**
 * A life's scheduler. Fiber steps go onto the kernel's ready queue as tasks of the life.
 * `shouldYield` runs at every step of every fiber that uses this scheduler; its first step
 * after a (re)start is where a resume from outside the kernel shows (a late call), and where a
 * fiber that had started real asynchronous work is seen running again.
 */
export class SimScheduler extends Scheduler.MixedScheduler {
  /** Fibers that started real async work (resource type) and have not run since. */
  readonly realWaits = new Map<Fiber.Fiber<unknown, unknown>, string>()

  constructor(readonly kernel: Kernel, readonly life: Incarnation) {
    super("async", (task) => {
      if (!kernel.isOpen) kernel.lateCall(life.label, "scheduler (a fiber step queued)")
      let cancelled = false
      kernel.enqueue(() => {
        if (!cancelled) task()
      }, life)
      return () => {
        cancelled = true
      }
    })
  }

  override shouldYield(fiber: Fiber.Fiber<unknown, unknown>): boolean {
    // runLoop zeroes the count and adds one before asking: 1 is a fiber's first step of a slice.
    if (fiber.currentOpCount === 1) this.entered(fiber)
    return fiber.currentOpCount >= fiber.cache.maxOpsBeforeYield
  }

  noteRealWait(fiber: Fiber.Fiber<unknown, unknown>, resourceType: string): void {
    if (!this.realWaits.has(fiber)) this.realWaits.set(fiber, resourceType)
  }

  private entered(fiber: Fiber.Fiber<unknown, unknown>): void {
    if (!this.kernel.isOpen) this.kernel.lateCall(this.life.label, "a fiber ran (resumed from outside the kernel)")
    if (this.realWaits.size > 0) this.realWaits.delete(fiber)
  }
}

/** Kept for callers that only need a scheduler. */
export function simScheduler(kernel: Kernel, life: Incarnation): Scheduler.Scheduler {
  return new SimScheduler(kernel, life)
}

/**
 * A node's clock. Its local time runs at (1 + drift) of kernel time: reads advance that fast,
 * and a sleep of d local µs takes about d / (1 + drift) kernel µs (DESIGN.md §5: drift
 * stretches or shrinks a node's timers and sleeps, since timeouts depend on them). Wall time
 * adds the node's fixed skew. Local time is measured from kernel time 0 (the node's boot of
 * its hardware clock), so it does not jump at a restart.
 */
export class SimClock implements Clock.Clock {
  private readonly rate: number
  private readonly gate: LifeGate

  constructor(readonly kernel: Kernel, readonly life: Incarnation, readonly skewUs = 0, readonly driftPpm = 0) {
    if (!Number.isInteger(driftPpm) || Math.abs(driftPpm) > DRIFT_PPM_LIMIT) throw new Error(`clock drift ${driftPpm} ppm out of range`)
    this.rate = driftPpm / PPM
    this.gate = new LifeGate(kernel, life.label)
  }

  /** The node's local time at kernel time `kernelUs`. */
  localUsAt(kernelUs: number): number {
    return this.driftPpm === 0 ? kernelUs : kernelUs + Math.floor(kernelUs * this.rate)
  }

  /** The first kernel time at which local time reaches `localUs` (local time is non-decreasing). */
  kernelUsWhen(localUs: number): number {
    if (this.driftPpm === 0) return localUs
    let kernelUs = Math.ceil(localUs / (1 + this.rate))
    while (this.localUsAt(kernelUs) < localUs) kernelUs++
    while (kernelUs > 0 && this.localUsAt(kernelUs - 1) >= localUs) kernelUs--
    return kernelUs
  }

  private localNowUs(): number {
    return this.localUsAt(this.kernel.nowUs)
  }
  private wallUs(): number {
    return EPOCH_US + this.localNowUs() + this.skewUs
  }
  currentTimeMillisUnsafe(): number {
    this.gate.check("Clock.currentTimeMillis")
    return Math.floor(this.wallUs() / 1000)
  }
  readonly currentTimeMillis = Effect.sync(() => this.currentTimeMillisUnsafe())
  currentTimeNanosUnsafe(): bigint {
    this.gate.check("Clock.currentTimeNanos")
    return BigInt(this.wallUs()) * 1000n
  }
  readonly currentTimeNanos = Effect.sync(() => this.currentTimeNanosUnsafe())
  monotonicTimeNanosUnsafe(): bigint {
    this.gate.check("Clock.monotonicTimeNanos")
    return BigInt(this.localNowUs()) * 1000n
  }
  readonly monotonicTimeNanos = Effect.sync(() => this.monotonicTimeNanosUnsafe())
  sleep(duration: Duration.Duration): Effect.Effect<void> {
    const us = Duration.toMicros(duration)
    const { kernel, life, gate } = this
    return Effect.callback<void>((resume) => {
      gate.check("Clock.sleep")
      if (!Number.isFinite(us) || !life.alive) return // never resumes
      const delayUs = Math.max(0, Math.ceil(us))
      const wake = () => {
        if (life.alive) resume(Effect.void)
      }
      const timer = this.driftPpm === 0
        ? kernel.after(delayUs, wake, life)
        : kernel.setTimer(this.kernelUsWhen(this.localNowUs() + delayUs), wake, life)
      return Effect.sync(() => kernel.cancel(timer))
    })
  }
}

/** A Random that reports late calls and otherwise is the seeded one it wraps. */
class GatedRandom implements Random.Random {
  constructor(private readonly inner: Random.Random, private readonly gate: LifeGate) {}
  nextIntUnsafe(): number {
    this.gate.check("Random.nextInt")
    return this.inner.nextIntUnsafe()
  }
  nextDoubleUnsafe(): number {
    this.gate.check("Random.nextDouble")
    return this.inner.nextDoubleUnsafe()
  }
}

/** A Log that appends "<µs> <node>#<life> <level> <message> k=v..." lines to the trace. */
export function simLog(kernel: Kernel, life: Incarnation, minimumLevel: LogLevel = "debug"): Log["Service"] {
  const rank: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 }
  const gate = new LifeGate(kernel, life.label)
  return Log.of({
    emit: (level: LogLevel, message: string, fields?: LogFields) =>
      Effect.sync(() => {
        gate.check("Log.emit")
        if (!life.alive || rank[level] < rank[minimumLevel]) return
        const rendered = formatFields(fields)
        kernel.log(life.label, rendered.length > 0 ? `${level} ${message} ${rendered}` : `${level} ${message}`)
      })
  })
}

/** Runs `effect` after reporting `what` to the gate if the kernel is not open then. */
function gated<A, E>(gate: LifeGate, what: string, effect: () => Effect.Effect<A, E>): Effect.Effect<A, E> {
  return Effect.suspend(() => {
    gate.check(what)
    return effect()
  })
}

/** The life's Disk, reporting every operation (and every operation on its files) made while no run executes. */
export function gatedDisk(disk: Disk["Service"], gate: LifeGate): Disk["Service"] {
  const file = (inner: DiskFile): DiskFile => ({
    path: inner.path,
    read: (offsetBytes, length) => gated(gate, "Disk read", () => inner.read(offsetBytes, length)),
    write: (offsetBytes, data) => gated(gate, "Disk write", () => inner.write(offsetBytes, data)),
    size: gated(gate, "Disk size", () => inner.size),
    truncate: (sizeBytes) => gated(gate, "Disk truncate", () => inner.truncate(sizeBytes)),
    datasync: gated(gate, "Disk datasync", () => inner.datasync),
    sync: gated(gate, "Disk sync", () => inner.sync),
    close: gated(gate, "Disk close", () => inner.close)
  })
  return {
    open: (path, options) => Effect.map(gated(gate, "Disk open", () => disk.open(path, options)), file),
    readFile: (path) => gated(gate, "Disk readFile", () => disk.readFile(path)),
    rename: (from, to) => gated(gate, "Disk rename", () => disk.rename(from, to)),
    unlink: (path) => gated(gate, "Disk unlink", () => disk.unlink(path)),
    mkdir: (path) => gated(gate, "Disk mkdir", () => disk.mkdir(path)),
    rmdir: (path) => gated(gate, "Disk rmdir", () => disk.rmdir(path)),
    list: (path) => gated(gate, "Disk list", () => disk.list(path)),
    stat: (path) => gated(gate, "Disk stat", () => disk.stat(path)),
    syncDirectory: (path) => gated(gate, "Disk syncDirectory", () => disk.syncDirectory(path))
  }
}

/** The life's Net, reporting every operation (and every operation on its listeners and connections) made while no run executes. */
export function gatedNet(net: Net["Service"], gate: LifeGate): Net["Service"] {
  const connection = (inner: Connection): Connection => ({
    localAddress: inner.localAddress,
    remoteAddress: inner.remoteAddress,
    read: gated(gate, "Net read", () => inner.read),
    write: (data) => gated(gate, "Net write", () => inner.write(data)),
    writev: (parts) => gated(gate, "Net writev", () => inner.writev(parts)),
    shutdownWrite: gated(gate, "Net shutdownWrite", () => inner.shutdownWrite),
    close: gated(gate, "Net close", () => inner.close)
  })
  const listener = (inner: Listener): Listener => ({
    address: inner.address,
    accept: Effect.map(gated(gate, "Net accept", () => inner.accept), connection),
    close: gated(gate, "Net unlisten", () => inner.close)
  })
  return {
    listen: (address) => Effect.map(gated(gate, "Net listen", () => net.listen(address)), listener),
    connect: (address) => Effect.map(gated(gate, "Net connect", () => net.connect(address)), connection)
  }
}

export interface LifeOptions {
  readonly skewUs?: number
  readonly driftPpm?: number
}

/** A started life: its root fiber and its scheduler (which knows the life's real waits). */
export interface LifeRuntime<A, E> {
  readonly fiber: Fiber.Fiber<A, E>
  readonly scheduler: SimScheduler
}

/**
 * Starts `effect` as the root fiber of one node life: virtual clock (with the life's skew and
 * drift), a Random seeded from (seed, node, life), and the life's scheduler. Nothing of
 * `effect` runs until the kernel runs: Effect.runFork evaluates a fiber's first steps inline,
 * so the program starts behind a yield, which puts its first step on the kernel's ready queue
 * (inside the run's trip-wires, and dropped if the life dies first). Those inline steps are the
 * harness's, so the kernel admits them.
 */
export function startLife<A, E>(kernel: Kernel, life: Incarnation, effect: Effect.Effect<A, E>, options: LifeOptions = {}): LifeRuntime<A, E> {
  const gate = new LifeGate(kernel, life.label)
  const withRandom = Effect.flatMap(Effect.service(Random.Random), (seeded) => Effect.provideService(effect, Random.Random, new GatedRandom(seeded, gate)))
  const program = Effect.andThen(Effect.yieldNow, withRandom).pipe(
    Effect.provideService(Clock.Clock, new SimClock(kernel, life, options.skewUs ?? 0, options.driftPpm ?? 0)),
    Random.withSeed(`${kernel.seed}/${life.node}/${life.life}`)
  )
  const scheduler = new SimScheduler(kernel, life)
  const fiber = kernel.admit(() => Effect.runFork(program, { scheduler }))
  return { fiber, scheduler }
}

export function forkInLife<A, E>(kernel: Kernel, life: Incarnation, effect: Effect.Effect<A, E>, options: LifeOptions = {}): Fiber.Fiber<A, E> {
  return startLife(kernel, life, effect, options).fiber
}

/**
 * Watches, while `body` runs, for real asynchronous resources (a real I/O request, a promise, a
 * real timer) created by a fiber of a simulated life: the kernel does not own such a wait, so
 * its resume would come after the run, outside virtual time. async_hooks reports each resource
 * synchronously at its creation, inside the fiber that made it, so the record is deterministic.
 * Effect's own per-suspension AsyncResource is not one of them.
 */
export function watchRealWaits<A>(body: () => A): A {
  if (realWaitDepth++ === 0) realWaitHook.enable()
  try {
    return body()
  } finally {
    if (--realWaitDepth === 0) realWaitHook.disable()
  }
}

let realWaitDepth = 0
const realWaitHook = createHook({
  init(_asyncId: number, type: string) {
    if (type === EFFECT_FIBER_RESOURCE) return
    const fiber = Fiber.getCurrent()
    if (fiber === undefined) return
    const scheduler = fiber.cache.scheduler
    if (scheduler instanceof SimScheduler) scheduler.noteRealWait(fiber, type)
  }
})
