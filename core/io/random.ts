import { Effect, Random } from "effect"

/**
 * Randomness comes from Effect's Random service: seeded per node life in the simulator,
 * Effect's default generator in the live world. Core never reads a global random source.
 */

/** An integer in [minInclusive, maxExclusive). */
export const randomIntBetween = (minInclusive: number, maxExclusive: number): Effect.Effect<number> =>
  Random.nextIntBetween(minInclusive, maxExclusive, { halfOpen: true })

/** A uniformly random value in [0, 1). */
export const randomFraction: Effect.Effect<number> = Random.next

/** Jitter a duration by up to ±fraction of itself (for backoffs and timeouts). */
export const jitterUs = (us: number, fraction: number): Effect.Effect<number> =>
  Effect.map(Random.next, (r) => Math.max(0, Math.round(us * (1 + fraction * (2 * r - 1)))))
