// Goal: the permanent trip-wire wrappers are installed before any test module loads, behave as
// the real functions when no run is active, report to the innermost active run, and survive
// the ways a process rearranges its globals (vitest's nextTick swap, a second copy of the
// module). Method: check the wrappers from a module that imports the trip-wires only later,
// then exercise them outside and inside runs. sim/holes.test.ts covers each escape.
import { createRequire } from "node:module"
import { statSync } from "node:fs"
import { setTimeout as timersSetTimeout } from "node:timers"
import { describe, expect, test, vi } from "vitest"

// Before this file imports sim/tripwires.ts: only vitest's setupFiles can have installed them.
const installedBeforeImport = Symbol.for("sk/sim/tripwires") in globalThis
const setTimeoutBeforeImport = setTimeout
const { tripwiresActive, withTripwires } = await import("./tripwires.js")

const require = createRequire(import.meta.url)

function hitsDuring(body: () => void): string[] {
  return withTripwires(1, () => 1_000, body)[1].hits.map((hit) => hit.what)
}

describe("installation", () => {
  test("vitest's setupFiles installed the wrappers before test modules load", () => {
    expect(installedBeforeImport).toBe(true)
    expect(hitsDuring(() => void setTimeoutBeforeImport(() => {}, 1))).toEqual(["setTimeout"])
  })

  test("the global timers, node:timers and its ESM exports are one wrapper", () => {
    const timers = require("node:timers") as { setTimeout: unknown }
    expect(timers.setTimeout).toBe(globalThis.setTimeout)
    expect(timersSetTimeout).toBe(globalThis.setTimeout)
  })

  test("loading the module again installs nothing twice", async () => {
    const dateNow = Date.now
    const dateConstructor = Date
    vi.resetModules()
    const again = await import("./tripwires.js")
    expect(Date.now).toBe(dateNow)
    expect(Date).toBe(dateConstructor)
    // The wrappers installed by the first copy report to runs of the second.
    const [, wires] = again.withTripwires(1, () => 0, () => void Date.now())
    expect(wires.hits.map((hit) => hit.what)).toEqual(["Date.now"])
  })
})

describe("outside a run the wrappers are the real functions", () => {
  test("timers fire, clocks read real time", async () => {
    expect(tripwiresActive()).toBe(false)
    await new Promise<void>((resolve) => setTimeout(resolve, 1))
    await new Promise<void>((resolve) => setImmediate(resolve))
    await new Promise<void>((resolve) => process.nextTick(resolve))
    await new Promise<void>((resolve) => queueMicrotask(resolve))
    expect(Date.now()).toBeGreaterThan(1_700_000_000_000)
    expect(Math.abs(new Date().getTime() - Date.now())).toBeLessThan(60_000)
    expect(performance.now()).toBeGreaterThan(0)
    expect(process.hrtime.bigint()).toBeGreaterThan(0n)
    const random = Math.random()
    expect(random >= 0 && random < 1).toBe(true)
    expect(statSync(".").isDirectory()).toBe(true)
  })

  test("Date keeps its behaviour and identity", () => {
    expect(typeof Date()).toBe("string")
    expect(new Date(0).getTime()).toBe(0)
    expect(new Date("2026-01-01T00:00:00Z").getTime()).toBe(Date.UTC(2026, 0, 1))
    expect(Date.parse("1970-01-01T00:00:01Z")).toBe(1000)
    expect(new Date() instanceof Date).toBe(true)
    expect(Date.prototype.constructor).toBe(Date)
    expect(Date.name).toBe("Date")
    expect(Date.length).toBe(7)
    class Stamp extends Date {}
    expect(new Stamp(5).getTime()).toBe(5)
    expect(new Stamp() instanceof Date).toBe(true)
    expect(Object.prototype.toString.call(new Date(0))).toBe("[object Date]")
  })

  test("Intl.DateTimeFormat keeps its behaviour and identity", () => {
    const format = new Intl.DateTimeFormat("en-US", { timeZone: "UTC", year: "numeric" })
    expect(format.format(new Date(0))).toBe("1970")
    expect(format.format).toBe(format.format)
    expect(Intl.DateTimeFormat("en-US") instanceof Intl.DateTimeFormat).toBe(true)
    expect(Intl.DateTimeFormat.supportedLocalesOf(["en-US"])).toEqual(["en-US"])
  })
})

describe("inside a run", () => {
  test("a hit names its caller", () => {
    const [, wires] = withTripwires(1, () => 0, () => void Date.now())
    expect(wires.hits.length).toBe(1)
    expect(wires.hits[0]!.site).toContain("tripwires.test.ts")
  })

  test("a nested run gets its own hits and hands the slot back, also after a throw", () => {
    const [inner, outer] = withTripwires(1, () => 0, () => {
      void Math.random()
      const nested = hitsDuring(() => void Date.now())
      expect(() => withTripwires(1, () => 0, () => {
        throw new Error("boom")
      })).toThrow("boom")
      void performance.now()
      return nested
    })
    expect(inner).toEqual(["Date.now"])
    expect(outer.hits.map((hit) => hit.what)).toEqual(["Math.random", "performance.now"])
    expect(tripwiresActive()).toBe(false)
  })

  test("hits beyond the kept maximum are still counted", () => {
    const [, wires] = withTripwires(1, () => 0, () => {
      for (let i = 0; i < 100; i++) void Date.now()
    })
    expect(wires.hitCount).toBe(100)
    expect(wires.hits.length).toBeLessThan(100)
  })

  test("Math.random is seeded by the run's seed", () => {
    const draw = (seed: number): number => withTripwires(seed, () => 0, () => Math.random())[0]
    expect(draw(3)).toBe(draw(3))
    expect(draw(3)).not.toBe(draw(4))
  })

  test("formatting a hit's stack may read files without recursing into the trip-wires", () => {
    const previous = Error.prepareStackTrace
    Error.prepareStackTrace = (error) => {
      statSync(".") // as a source-map loader would
      return String(error)
    }
    try {
      expect(hitsDuring(() => void Date.now())).toEqual(["Date.now"])
    } finally {
      Error.prepareStackTrace = previous
    }
  })

  test("process.nextTick stays caught after someone patches it (vitest does, around its RPC)", async () => {
    // Synchronous between the assignment and the restore: vitest's own deferred restore of
    // process.nextTick would otherwise undo the assignment.
    const original = process.nextTick
    let delegated = 0
    process.nextTick = ((callback: () => void) => {
      delegated++
      original(callback)
    }) as typeof process.nextTick
    let ranInside = false
    let ranOutside = false
    let hits: string[]
    try {
      hits = hitsDuring(() => process.nextTick(() => void (ranInside = true)))
      process.nextTick(() => void (ranOutside = true))
    } finally {
      process.nextTick = original
    }
    expect(process.nextTick).toBe(original)
    expect(hits).toEqual(["process.nextTick"])
    expect(delegated).toBe(2)
    await new Promise<void>((resolve) => setImmediate(resolve))
    expect(ranOutside).toBe(true)
    expect(ranInside).toBe(false) // never armed inside the run
  })
})
