/**
 * While a simulated run executes, ambient sources of non-determinism are replaced: Date,
 * performance.now, Math.random, crypto's random sources, process.nextTick, the real timers and
 * Promise.prototype.then (a real promise would resume a fiber after the synchronous run ends),
 * process.hrtime/uptime and node:crypto's random functions.
 * Each use is recorded with the caller's stack and fails the run as non-deterministic. Time and
 * random reads return virtual/seeded values so the run can go on and report every touch.
 */
import { webcrypto } from "node:crypto"
import { createRequire, syncBuiltinESMExports } from "node:module"
import seedrandom from "seedrandom"

/** node:crypto's CommonJS object: patching it (then syncing) reaches ESM importers too. */
const nodeCrypto = createRequire(import.meta.url)("node:crypto") as Record<string, unknown>
const NODE_CRYPTO_RANDOM = ["randomUUID", "randomBytes", "randomInt", "randomFillSync", "randomFill"] as const

export interface TripwireHit {
  readonly what: string
  readonly site: string
}

const SITE_FRAMES_MAX = 4
const HITS_KEPT_MAX = 20

export interface Tripwires {
  readonly hits: ReadonlyArray<TripwireHit>
  readonly hitCount: number
}

/**
 * Runs `body` with the trip-wires armed, restoring every global afterwards even when `body`
 * throws. `virtualNowMs` gives the value Date.now and friends return meanwhile.
 */
export function withTripwires<A>(seed: number, virtualNowMs: () => number, body: () => A): [A, Tripwires] {
  const hits: TripwireHit[] = []
  let hitCount = 0
  const hit = (what: string): void => {
    hitCount++
    if (hits.length >= HITS_KEPT_MAX) return
    const stack = (new Error().stack ?? "").split("\n").slice(3, 3 + SITE_FRAMES_MAX).map((line) => line.trim())
    hits.push({ what, site: stack.join(" <- ") })
  }
  const g = globalThis as unknown as Record<string, unknown>
  const RealDate = Date
  const saved = {
    Date: g["Date"],
    random: Math.random,
    performanceNow: performance.now,
    randomUUID: webcrypto.randomUUID,
    getRandomValues: webcrypto.getRandomValues,
    nextTick: process.nextTick,
    hrtime: process.hrtime,
    uptime: process.uptime,
    nodeCrypto: NODE_CRYPTO_RANDOM.map((name) => nodeCrypto[name]),
    setTimeout: g["setTimeout"],
    setInterval: g["setInterval"],
    setImmediate: g["setImmediate"],
    queueMicrotask: g["queueMicrotask"],
    then: Promise.prototype.then
  }
  const seeded = seedrandom.alea(`${seed}/tripwire`)

  class TrippedDate extends RealDate {
    constructor(...args: ReadonlyArray<unknown>) {
      if (args.length === 0) {
        hit("new Date()")
        super(virtualNowMs())
      } else {
        super(...(args as [number]))
      }
    }
    static override now(): number {
      hit("Date.now")
      return virtualNowMs()
    }
  }
  const fakeTimer = (name: string) => (..._args: ReadonlyArray<unknown>) => {
    hit(name)
    return undefined // never armed: it would fire after the run, outside virtual time
  }

  g["Date"] = TrippedDate
  Math.random = () => {
    hit("Math.random")
    return seeded()
  }
  performance.now = () => {
    hit("performance.now")
    return virtualNowMs()
  }
  webcrypto.randomUUID = (() => {
    hit("crypto.randomUUID")
    return "00000000-0000-4000-8000-000000000000"
  }) as typeof webcrypto.randomUUID
  webcrypto.getRandomValues = (<T extends ArrayBufferView | null>(array: T): T => {
    hit("crypto.getRandomValues")
    return array
  }) as typeof webcrypto.getRandomValues
  process.nextTick = fakeTimer("process.nextTick") as typeof process.nextTick
  const hrtime = ((previous?: [number, number]) => {
    hit("process.hrtime")
    return saved.hrtime(previous)
  }) as typeof process.hrtime
  hrtime.bigint = () => {
    hit("process.hrtime.bigint")
    return saved.hrtime.bigint()
  }
  process.hrtime = hrtime
  process.uptime = () => {
    hit("process.uptime")
    return saved.uptime()
  }
  NODE_CRYPTO_RANDOM.forEach((name, index) => {
    const real = saved.nodeCrypto[index] as (...args: ReadonlyArray<unknown>) => unknown
    nodeCrypto[name] = (...args: ReadonlyArray<unknown>) => {
      hit(`crypto.${name}`)
      return real(...args)
    }
  })
  syncBuiltinESMExports()
  g["setTimeout"] = fakeTimer("setTimeout")
  g["setInterval"] = fakeTimer("setInterval")
  g["setImmediate"] = fakeTimer("setImmediate")
  g["queueMicrotask"] = fakeTimer("queueMicrotask")
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  Promise.prototype.then = function (this: Promise<unknown>, ...args: Parameters<Promise<unknown>["then"]>) {
    hit("a real Promise (then)")
    return saved.then.apply(this, args)
  } as typeof Promise.prototype.then

  try {
    return [body(), { hits, get hitCount() { return hitCount } }]
  } finally {
    g["Date"] = saved.Date
    Math.random = saved.random
    performance.now = saved.performanceNow
    webcrypto.randomUUID = saved.randomUUID
    webcrypto.getRandomValues = saved.getRandomValues
    process.nextTick = saved.nextTick
    process.hrtime = saved.hrtime
    process.uptime = saved.uptime
    NODE_CRYPTO_RANDOM.forEach((name, index) => {
      nodeCrypto[name] = saved.nodeCrypto[index]
    })
    syncBuiltinESMExports()
    g["setTimeout"] = saved.setTimeout
    g["setInterval"] = saved.setInterval
    g["setImmediate"] = saved.setImmediate
    g["queueMicrotask"] = saved.queueMicrotask
    Promise.prototype.then = saved.then
  }
}
