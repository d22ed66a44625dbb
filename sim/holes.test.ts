// Goal: every escape that once left a simulated run green with a hash that changed from run to
// run is now reported as a trip-wire hit that names it. Method: a tiny program touches one
// escape inside `withTripwires` (or inside a simulated node via runTestWorld) and the hits must
// name it. Each of these cases passed unnoticed on the per-run trip-wires of commit 9557519
// (checked by running this file against that sim/tripwires.ts) except where a case says so.
import { Clock, Effect } from "effect"
import * as crypto from "node:crypto"
import { readFile, stat as promisesStat } from "node:fs/promises"
import { stat, statSync } from "node:fs"
import { uptime as osUptime, loadavg } from "node:os"
import { performance as perfHooksPerformance } from "node:perf_hooks"
import { cpuUsage, memoryUsage } from "node:process"
import { setTimeout as timersSetTimeout, setImmediate as timersSetImmediate } from "node:timers"
import { setTimeout as sleepPromise } from "node:timers/promises"
import { describe, expect, test } from "vitest"
import { withTripwires } from "./tripwires.js"
import { runTestWorld } from "./world-testing.js"

// References captured at module load, before any run: the classic escape of per-run patching.
const capturedSetTimeout = setTimeout
const capturedDateNow = Date.now
const capturedPerformanceNow = performance.now
const capturedMathRandom = Math.random
const capturedHrtime = process.hrtime
const dateMadeBeforeRuns = new Date(0)

const VIRTUAL_NOW_MS = 1_767_225_600_000

function hitsDuring(body: () => void): string[] {
  const [, wires] = withTripwires(9, () => VIRTUAL_NOW_MS, body)
  return wires.hits.map((hit) => hit.what)
}

/** Runs `body` as the whole program of a simulated client node; the error names the hits. */
function worldError(body: () => void): string {
  try {
    runTestWorld({ servers: {}, client: Effect.sync(body) })
  } catch (error) {
    return String(error)
  }
  return "no error: the run looked deterministic"
}

describe("escapes of the old trip-wires are caught", () => {
  test("setTimeout imported from node:timers", () => {
    let handle: unknown
    expect(hitsDuring(() => {
      handle = timersSetTimeout(() => {}, 1)
    })).toContain("setTimeout")
    expect(handle).toBeUndefined() // never armed: it would fire after the run
  })

  test("setImmediate imported from node:timers", () => {
    let handle: unknown
    expect(hitsDuring(() => {
      handle = timersSetImmediate(() => {})
    })).toContain("setImmediate")
    expect(handle).toBeUndefined()
  })

  test("setTimeout from node:timers/promises", () => {
    expect(hitsDuring(() => void sleepPromise(1))).toContain("timers/promises.setTimeout")
  })

  test("setTimeout captured at module load", () => {
    let handle: unknown
    expect(hitsDuring(() => {
      handle = capturedSetTimeout(() => {}, 1)
    })).toContain("setTimeout")
    expect(handle).toBeUndefined()
  })

  test("Date.now captured at module load, reading virtual time", () => {
    let now = 0
    expect(hitsDuring(() => {
      now = capturedDateNow()
    })).toContain("Date.now")
    expect(now).toBe(VIRTUAL_NOW_MS)
  })

  test("performance.now and Math.random captured at module load", () => {
    expect(hitsDuring(() => void capturedPerformanceNow.call(performance))).toContain("performance.now")
    expect(hitsDuring(() => void capturedMathRandom())).toContain("Math.random")
  })

  test("process.hrtime.bigint through a hrtime captured at module load", () => {
    expect(hitsDuring(() => void capturedHrtime.bigint())).toContain("process.hrtime.bigint")
  })

  test("setTimeout from node:timers inside a simulated node", () => {
    const message = worldError(() => void timersSetTimeout(() => {}, 1))
    expect(message).toContain("setTimeout")
  })
})

describe("Effect's default Clock reached inside a run", () => {
  // Effect 4.1.0's default Clock (internal/effect.js ClockImpl) reads Date.now() and calls
  // setTimeout by global name, but its monotonic time is `processHrtime.bigint()` on a
  // `process.hrtime` captured when effect loads: the old per-run replacement of process.hrtime
  // never reached it.
  test("Effect.runSync(Clock.monotonicTimeNanos)", () => {
    expect(hitsDuring(() => void Effect.runSync(Clock.monotonicTimeNanos))).toContain("process.hrtime.bigint")
  })

  test("Effect.runSync(Clock.monotonicTimeNanos) inside a simulated node", () => {
    expect(worldError(() => void Effect.runSync(Clock.monotonicTimeNanos))).toContain("process.hrtime.bigint")
  })

  // Caught by the old trip-wires too (global name lookups); kept so that it stays caught.
  test("Effect.runSync(Clock.currentTimeMillis) and Effect.sleep", () => {
    expect(hitsDuring(() => void Effect.runSync(Clock.currentTimeMillis))).toContain("Date.now")
    expect(hitsDuring(() => void Effect.runFork(Effect.sleep("1 second")))).toContain("setTimeout")
    expect(hitsDuring(() => {
      try {
        Effect.runSync(Effect.sleep("1 second"))
      } catch {
        // runSync refuses an effect that suspends; the sleep has already asked for its timer.
      }
    })).toContain("setTimeout")
  })
})

describe("clock, host and I/O reads the old trip-wires let through", () => {
  test.each<readonly [string, () => unknown]>([
    ["Intl.DateTimeFormat", () => new Intl.DateTimeFormat("en-US")],
    ["Intl.DateTimeFormat.format", () => Intl.DateTimeFormat("en-US").format()],
    ["Intl.DateTimeFormat.formatToParts", () => new Intl.DateTimeFormat("en-US").formatToParts()],
    ["Date.prototype.toLocaleString", () => new Date(0).toLocaleString()],
    ["Date.prototype.toLocaleTimeString", () => new Date(0).toLocaleTimeString()],
    ["performance.timeOrigin", () => performance.timeOrigin],
    ["performance.mark", () => performance.mark("hole")],
    ["crypto.generateKeySync", () => crypto.generateKeySync("hmac", { length: 64 })],
    ["crypto.generateKeyPairSync", () => crypto.generateKeyPairSync("ed25519")],
    ["process.cpuUsage", () => cpuUsage()],
    ["process.memoryUsage", () => memoryUsage()],
    ["process.memoryUsage.rss", () => process.memoryUsage.rss()],
    ["os.uptime", () => osUptime()],
    ["os.loadavg", () => loadavg()],
    ["fs.statSync", () => statSync(".")],
    ["fs.stat", () => stat(".", () => {})],
    ["fs/promises.stat", () => void promisesStat(".").catch(() => {})],
    ["fs/promises.readFile", () => void readFile("package.json").catch(() => {})],
    ["MessageChannel", () => new MessageChannel().port1.close()]
  ])("%s", (what, touch) => {
    expect(hitsDuring(() => void touch())).toContain(what)
  })

  // Caught by the old trip-wires too (patched per run); kept so that they stay caught.
  test.each<readonly [string, () => unknown]>([
    ["crypto.randomBytes", () => crypto.randomBytes(4)],
    ["crypto.randomInt", () => crypto.randomInt(10)],
    ["performance.now", () => perfHooksPerformance.now()]
  ])("%s (already caught before)", (what, touch) => {
    expect(hitsDuring(() => void touch())).toContain(what)
  })

  test("fs.statSync inside a simulated node", () => {
    expect(worldError(() => void statSync("."))).toContain("fs.statSync")
  })

  test("Intl.DateTimeFormat().format() reads virtual time, not the real clock", () => {
    let formatted = ""
    hitsDuring(() => {
      formatted = new Intl.DateTimeFormat("en-US", { timeZone: "UTC", dateStyle: "short", timeStyle: "medium" }).format()
    })
    expect(formatted).toBe("1/1/26, 12:00:00 AM")
  })
})

describe("Date without new, and Date identity across the run boundary", () => {
  test("Date() is reported (it once threw a TypeError instead)", () => {
    let text = ""
    expect(hitsDuring(() => {
      text = Date()
    })).toContain("Date()")
    expect(text).toBe(new Date(VIRTUAL_NOW_MS).toString())
  })

  test("a Date made before the run is still an instance of Date inside it", () => {
    let before = false
    let during = false
    const hits = hitsDuring(() => {
      before = dateMadeBeforeRuns instanceof Date
      during = new Date(5) instanceof Date
    })
    expect(before).toBe(true)
    expect(during).toBe(true)
    expect(hits).toEqual([]) // new Date(x) with an argument is deterministic
  })
})
