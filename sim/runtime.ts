import { Clock, Duration, Effect, type Fiber, Random, Scheduler } from "effect"
import { Log, formatFields, type LogFields, type LogLevel } from "../core/io/log.js"
import type { Incarnation, Kernel } from "./kernel.js"

/**
 * The glue between Effect 4 and the kernel: one scheduler per node life (so a crash drops the
 * life's queued fiber steps), a virtual Clock, a seeded Random and a Log that writes the trace.
 * Effect 4 resumes a fiber inline inside whatever callback completes it, so the simulated
 * services check `life.alive` themselves; the scheduler is only the first line of defence.
 */

/** Virtual wall-clock origin: 2026-01-01T00:00:00Z, so logs show plausible dates. */
export const EPOCH_US = 1_767_225_600_000_000

export function simScheduler(kernel: Kernel, life: Incarnation): Scheduler.Scheduler {
  return new Scheduler.MixedScheduler("async", (task) => {
    let cancelled = false
    kernel.enqueue(() => {
      if (!cancelled) task()
    }, life)
    return () => {
      cancelled = true
    }
  })
}

export class SimClock implements Clock.Clock {
  constructor(readonly kernel: Kernel, readonly life: Incarnation, readonly skewUs = 0) {}
  private wallUs(): number {
    return EPOCH_US + this.kernel.nowUs + this.skewUs
  }
  currentTimeMillisUnsafe(): number {
    return Math.floor(this.wallUs() / 1000)
  }
  readonly currentTimeMillis = Effect.sync(() => this.currentTimeMillisUnsafe())
  currentTimeNanosUnsafe(): bigint {
    return BigInt(this.wallUs()) * 1000n
  }
  readonly currentTimeNanos = Effect.sync(() => this.currentTimeNanosUnsafe())
  monotonicTimeNanosUnsafe(): bigint {
    return BigInt(this.kernel.nowUs) * 1000n
  }
  readonly monotonicTimeNanos = Effect.sync(() => this.monotonicTimeNanosUnsafe())
  sleep(duration: Duration.Duration): Effect.Effect<void> {
    const us = Duration.toMicros(duration)
    const { kernel, life } = this
    return Effect.callback<void>((resume) => {
      if (!Number.isFinite(us) || !life.alive) return // never resumes
      const timer = kernel.after(Math.max(0, Math.ceil(us)), () => {
        if (life.alive) resume(Effect.void)
      }, life)
      return Effect.sync(() => kernel.cancel(timer))
    })
  }
}

/** A Log that appends "<µs> <node>#<life> <level> <message> k=v..." lines to the trace. */
export function simLog(kernel: Kernel, life: Incarnation, minimumLevel: LogLevel = "debug"): Log["Service"] {
  const rank: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 }
  return Log.of({
    emit: (level: LogLevel, message: string, fields?: LogFields) =>
      Effect.sync(() => {
        if (!life.alive || rank[level] < rank[minimumLevel]) return
        const rendered = formatFields(fields)
        kernel.log(life.label, rendered.length > 0 ? `${level} ${message} ${rendered}` : `${level} ${message}`)
      })
  })
}

/**
 * Starts `effect` as the root fiber of one node life: virtual clock (with the life's skew),
 * a Random seeded from (seed, node, life), and the life's scheduler. Nothing of `effect` runs
 * until the kernel runs: Effect.runFork evaluates a fiber's first steps inline, so the program
 * starts behind a yield, which puts its first step on the kernel's ready queue (inside the
 * run's trip-wires, and dropped if the life dies first).
 */
export function forkInLife<A, E>(
  kernel: Kernel,
  life: Incarnation,
  effect: Effect.Effect<A, E>,
  options: { readonly skewUs?: number } = {}
): Fiber.Fiber<A, E> {
  const program = Effect.andThen(Effect.yieldNow, effect).pipe(
    Effect.provideService(Clock.Clock, new SimClock(kernel, life, options.skewUs ?? 0)),
    Random.withSeed(`${kernel.seed}/${life.node}/${life.life}`)
  )
  return Effect.runFork(program, { scheduler: simScheduler(kernel, life) })
}
