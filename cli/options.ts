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

const DURATION_UNITS_US: Readonly<Record<string, number>> = { us: 1, ms: 1_000, s: 1_000_000, m: 60_000_000, h: 3_600_000_000 }

/**
 * Parses a duration as Neon's flags write them (humantime: "5000ms", "15m", "300s", "1h",
 * also "1m30s"); a bare number is seconds. Returns microseconds.
 */
export function parseDurationUs(text: string): number {
  const trimmed = text.trim()
  if (/^[0-9]+(\.[0-9]+)?$/.test(trimmed)) return checkedDuration(Number(trimmed) * 1_000_000, text)
  const parts = [...trimmed.matchAll(/([0-9]+(?:\.[0-9]+)?)\s*(us|ms|s|m|h)/g)]
  if (parts.length === 0 || parts.map((p) => p[0]).join("") !== trimmed.replace(/\s+/g, "")) {
    throw new InvalidArgumentError(`expected a duration such as 500ms, 5s, 15m or 1h, got "${text}"`)
  }
  return checkedDuration(parts.reduce((sum, p) => sum + Number(p[1]) * DURATION_UNITS_US[p[2]!]!, 0), text)
}

function checkedDuration(us: number, text: string): number {
  const rounded = Math.round(us)
  if (!Number.isSafeInteger(rounded) || rounded < 0) throw new InvalidArgumentError(`duration out of range: "${text}"`)
  return rounded
}

/** Parses a byte count: a non-negative integer, with an optional K/M/G (binary) suffix. */
export function parseBytes(text: string): number {
  const match = /^([0-9]+)([KMG]i?B?)?$/i.exec(text.trim())
  if (match === null) throw new InvalidArgumentError(`expected a byte count such as 134217728 or 128M, got "${text}"`)
  const unit = (match[2] ?? "").charAt(0).toUpperCase()
  const factor = unit === "K" ? 1024 : unit === "M" ? 1024 ** 2 : unit === "G" ? 1024 ** 3 : 1
  const value = Number(match[1]) * factor
  if (!Number.isSafeInteger(value)) throw new InvalidArgumentError(`byte count out of range: "${text}"`)
  return value
}
