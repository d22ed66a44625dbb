import { Clock, Duration, Effect } from "effect"

/**
 * Time comes from Effect's Clock service, which each world provides: the live world keeps
 * Effect's real clock, the simulator provides a virtual one per node life. Core code reads
 * time only through these helpers, in integer microseconds.
 */
export const nowUs: Effect.Effect<number> = Effect.map(Clock.currentTimeNanos, (ns) => Number(ns / 1000n))

/** Monotonic time in µs, for measuring intervals (never goes back, unlike wall time). */
export const monotonicUs: Effect.Effect<number> = Effect.clockWith((clock) =>
  Effect.sync(() => Number(clock.monotonicTimeNanosUnsafe() / 1000n))
)

export const sleepUs = (us: number): Effect.Effect<void> => Effect.sleep(Duration.micros(BigInt(Math.max(0, Math.floor(us)))))

export const US_PER_MS = 1000
export const US_PER_SECOND = 1_000_000
