import { InvalidArgumentError } from "commander"

/** Parses a seed: an integer in [0, 2^53−1] (DESIGN.md §3). */
export function parseSeed(text: string): number {
  if (!/^[0-9]+$/.test(text)) throw new InvalidArgumentError(`seed must be a non-negative integer, got "${text}"`)
  const seed = Number(text)
  if (!Number.isSafeInteger(seed)) throw new InvalidArgumentError(`seed must be at most 2^53-1, got "${text}"`)
  return seed
}

/** Parses a positive integer count (seeds, bytes, ...). */
export function parsePositiveInteger(text: string): number {
  if (!/^[0-9]+$/.test(text)) throw new InvalidArgumentError(`expected a positive integer, got "${text}"`)
  const value = Number(text)
  if (!Number.isSafeInteger(value) || value <= 0) throw new InvalidArgumentError(`expected a positive integer, got "${text}"`)
  return value
}

/** Parses "i/n" (0-based shard index i of n shards). */
export function parseShard(text: string): { readonly index: number; readonly count: number } {
  const match = /^([0-9]+)\/([0-9]+)$/.exec(text)
  if (match === null) throw new InvalidArgumentError(`shard must look like i/n, got "${text}"`)
  const index = Number(match[1])
  const count = Number(match[2])
  if (count <= 0 || index >= count) throw new InvalidArgumentError(`shard index must be below the shard count, got "${text}"`)
  return { index, count }
}
