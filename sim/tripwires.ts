/**
 * While a simulated run executes, ambient sources of non-determinism are replaced: Date,
 * performance.now, Math.random, crypto's random sources, process.nextTick, the real timers and
 * Promise.prototype.then (a real promise would resume a fiber after the synchronous run ends).
 * Each use is recorded with the caller's stack and fails the run as non-deterministic. Time and
 * random reads return virtual/seeded values so the run can go on and report every touch.
 */
import { webcrypto } from "node:crypto"
import seedrandom from "seedrandom"

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
    g["setTimeout"] = saved.setTimeout
    g["setInterval"] = saved.setInterval
    g["setImmediate"] = saved.setImmediate
    g["queueMicrotask"] = saved.queueMicrotask
    Promise.prototype.then = saved.then
  }
}
