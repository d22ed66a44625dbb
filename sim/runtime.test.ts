// Goal: the Effect glue is deterministic and its trip-wires catch ambient time, randomness and
// real timers. Method: run small fiber programs in a kernel, twice and with different seeds,
// and compare trace hashes; plant each forbidden call and expect it to be reported by name.
import { Effect, Fiber, Random } from "effect"
import fc from "fast-check"
import { randomBytes, randomUUID } from "node:crypto"
import { stat } from "node:fs"
import { describe, expect, test } from "vitest"
import { monotonicUs, sleepUs } from "../core/io/clock.js"
import { Incarnation, Kernel } from "./kernel.js"
import { SimClock, forkInLife, startLife, watchRealWaits } from "./runtime.js"
import { withTripwires } from "./tripwires.js"

function runToy(seed: number, body?: () => void): { hash: string; lines: string[]; hits: string[] } {
  const kernel = new Kernel(seed)
  const [, wires] = withTripwires(seed, () => kernel.nowUs / 1000, () => {
    for (const node of ["a", "b", "c"]) {
      const life = new Incarnation(node, 1)
      forkInLife(kernel, life, Effect.gen(function* () {
        const workers = [1, 2, 3].map((worker) =>
          Effect.gen(function* () {
            for (let i = 0; i < 5; i++) {
              const us = yield* Random.nextIntBetween(1, 1000)
              yield* sleepUs(us)
              kernel.log(life.label, `worker ${worker} step ${i}`)
              if (body !== undefined && worker === 1 && i === 2) body()
            }
          })
        )
        yield* Effect.all(workers, { concurrency: "unbounded" })
      }))
    }
    kernel.run()
  })
  return { hash: kernel.trace.hash(), lines: kernel.trace.lines, hits: wires.hits.map((h) => h.what) }
}

describe("sim runtime", () => {
  test("same seed gives the same trace, different seeds differ", () => {
    const a = runToy(7)
    const b = runToy(7)
    expect(a.hash).toBe(b.hash)
    expect(a.lines.length).toBeGreaterThan(40)
    expect(a.hits).toEqual([])
    const hashes = new Set([1, 2, 3, 4, 5, 6, 7, 8].map((seed) => runToy(seed).hash))
    expect(hashes.size).toBe(8)
  })

  test("a dead life's fibers never run again", () => {
    const kernel = new Kernel(1)
    const life = new Incarnation("n", 1)
    let steps = 0
    const fiber = forkInLife(kernel, life, Effect.forever(Effect.andThen(sleepUs(10), Effect.sync(() => void steps++))))
    kernel.run({ untilUs: 95 })
    expect(steps).toBe(9)
    life.alive = false
    kernel.run({ untilUs: 1000 })
    expect(steps).toBe(9)
    expect(fiber.pollUnsafe()).toBeUndefined() // no finalizer, no exit: kill -9
    void Fiber
  })

  test.each([
    ["Date.now", () => void Date.now()],
    ["new Date()", () => void new Date()],
    ["performance.now", () => void performance.now()],
    ["Math.random", () => void Math.random()],
    ["crypto.randomUUID", () => void crypto.randomUUID()],
    ["crypto.getRandomValues", () => void crypto.getRandomValues(new Uint8Array(4))],
    ["setTimeout", () => void setTimeout(() => {}, 1)],
    ["setInterval", () => void setInterval(() => {}, 1)],
    ["setImmediate", () => void setImmediate(() => {})],
    ["queueMicrotask", () => queueMicrotask(() => {})],
    ["process.nextTick", () => process.nextTick(() => {})],
    ["a real Promise (then)", () => void Promise.resolve(1).then((x) => x)],
    ["process.hrtime", () => void process.hrtime()],
    ["process.hrtime.bigint", () => void process.hrtime.bigint()],
    ["process.uptime", () => void process.uptime()],
    ["crypto.randomUUID", () => void randomUUID()],
    ["crypto.randomBytes", () => void randomBytes(4)]
  ])("trip-wire catches %s", (what, touch) => {
    const run = runToy(3, touch)
    expect(run.hits).toContain(what)
    // Globals are restored after the run.
    expect(Date.now()).toBeGreaterThan(1_700_000_000_000)
  })

  test("Effect.promise inside a run is caught", () => {
    const kernel = new Kernel(1)
    const [, wires] = withTripwires(1, () => 0, () => {
      forkInLife(kernel, new Incarnation("n", 1), Effect.promise(() => Promise.resolve(1)))
      kernel.run()
    })
    expect(wires.hits.map((h) => h.what)).toContain("a real Promise (then)")
  })
})

describe("clock drift", () => {
  test("kernelUsWhen is the first kernel time at which the node's local time reaches a value", () => {
    fc.assert(fc.property(fc.integer({ min: -500_000, max: 500_000 }), fc.integer({ min: 0, max: 10_000_000_000 }), (driftPpm, localUs) => {
      const clock = new SimClock(new Kernel(1), new Incarnation("n", 1), 0, driftPpm)
      const kernelUs = clock.kernelUsWhen(localUs)
      return clock.localUsAt(kernelUs) >= localUs && (kernelUs === 0 || clock.localUsAt(kernelUs - 1) < localUs)
    }))
  })

  test("a fast clock's sleep ends early in kernel time and its reads run ahead", () => {
    const kernel = new Kernel(1)
    const life = new Incarnation("n", 1)
    let seen: { readonly kernelUs: number; readonly localUs: number } | undefined
    forkInLife(kernel, life, Effect.gen(function* () {
      yield* sleepUs(1_000_000)
      seen = { kernelUs: kernel.nowUs, localUs: yield* monotonicUs }
    }), { driftPpm: 250_000 })
    kernel.run()
    expect(seen).toEqual({ kernelUs: 800_000, localUs: 1_000_000 })
  })

  test("out-of-range drift is refused", () => {
    expect(() => new SimClock(new Kernel(1), new Incarnation("n", 1), 0, -1_000_000)).toThrow(/out of range/)
  })
})

describe("the run boundary", () => {
  test("starting a life outside a run is the harness's business; a resume from outside is a late call", () => {
    const kernel = new Kernel(3)
    const life = new Incarnation("n", 1)
    let resumeLater: ((effect: Effect.Effect<void>) => void) | undefined
    forkInLife(kernel, life, Effect.callback<void>((resume) => {
      resumeLater = resume
    }))
    kernel.run()
    expect(kernel.lateCalls).toEqual([])
    resumeLater!(Effect.void) // as a real callback would, once the run is over
    expect(kernel.lateCalls.map((c) => `${c.who}: ${c.what}`)).toEqual(["n#1: a fiber ran (resumed from outside the kernel)"])
  })

  test("a fiber that starts real I/O is remembered until it runs again", () => {
    const kernel = new Kernel(4)
    const life = new Incarnation("n", 1)
    let resumeLater: ((effect: Effect.Effect<void>) => void) | undefined
    const { scheduler } = startLife(kernel, life, Effect.gen(function* () {
      yield* Effect.callback<void>((resume) => {
        stat(".", () => {})
        resumeLater = resume
      })
      yield* sleepUs(10)
    }))
    watchRealWaits(() => kernel.run())
    expect([...scheduler.realWaits.values()]).toEqual(["FSREQCALLBACK"])
    kernel.enqueue(() => resumeLater!(Effect.void), life)
    watchRealWaits(() => kernel.run())
    expect(scheduler.realWaits.size).toBe(0)
    // Outside watchRealWaits nothing is recorded (the hook is off between runs).
    stat(".", () => {})
    expect(scheduler.realWaits.size).toBe(0)
  })
})
