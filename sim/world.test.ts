// Goal: a world runs node programs deterministically, crashes them kill -9 style, restarts
// them from their disks, and reports any touch of real time, randomness or timers by name.
// Method: small node programs over the simulated Disk/Net, run twice and with planted calls.
import { Effect } from "effect"
import { describe, expect, test } from "vitest"
import { sleepUs } from "../core/io/clock.js"
import { Disk } from "../core/io/disk.js"
import { logInfo } from "../core/io/log.js"
import { Net } from "../core/io/net.js"
import { NO_DISK_FAULTS } from "./disk.js"
import { DEFAULT_NET_FAULTS } from "./net.js"
import { World, type NodeProgram } from "./world.js"

function makeWorld(seed: number, program: NodeProgram, crashOnOperationProbability = 0): World {
  return new World({
    seed,
    nodes: ["a", "b"],
    program,
    diskFaults: { ...NO_DISK_FAULTS, writeLatencyUs: [1, 20], fsyncLatencyUs: [100, 500] },
    netFaults: DEFAULT_NET_FAULTS,
    crashOnOperationProbability,
    clockSkewUsMax: 0,
    restartDelayUs: [1_000, 2_000],
    recordTrace: true,
    traceHeader: [`seed ${seed}`]
  })
}

/** Node "a" counts boots in a durable file and pings "b"; "b" echoes. */
const pingProgram: NodeProgram = (node) =>
  Effect.gen(function* () {
    const disk = yield* Disk
    const net = yield* Net
    yield* disk.mkdir("/d")
    yield* disk.syncDirectory("/") // the directory's own name must be durable too
    const file = yield* disk.open("/d/boots", { create: true })
    const size = yield* file.size
    const boots = size === 0 ? 0 : new DataView((yield* file.read(0, 4)).buffer).getUint32(0)
    const next = new Uint8Array(4)
    new DataView(next.buffer).setUint32(0, boots + 1)
    yield* file.write(0, next)
    yield* file.sync
    yield* disk.syncDirectory("/d")
    yield* logInfo("booted", { boots: boots + 1 })
    if (node === "b") {
      const listener = yield* net.listen("b:7")
      for (;;) {
        const connection = yield* listener.accept
        yield* Effect.forkChild(Effect.forever(Effect.flatMap(connection.read, (chunk): Effect.Effect<void, unknown> => chunk === undefined ? Effect.fail("eof") : connection.write(chunk))).pipe(Effect.ignore))
      }
    }
    for (;;) {
      yield* Effect.gen(function* () {
        const connection = yield* net.connect("b:7")
        for (let i = 0; i < 20; i++) {
          yield* connection.write(new Uint8Array([i]))
          const echoed = yield* connection.read
          yield* logInfo("echo", { value: echoed?.[0] })
          yield* sleepUs(1_000)
        }
      }).pipe(Effect.ignore)
      yield* sleepUs(5_000)
    }
  })

describe("world", () => {
  test("same seed, same trace; crashes and restarts keep synced data", () => {
    const runOnce = (seed: number) => {
      const world = makeWorld(seed, pingProgram, 0.01)
      world.start("a")
      world.start("b")
      world.kernel.after(30_000, () => {
        world.crash("b", "test")
        world.restartLater("b")
      }, undefined)
      const hits = world.run(200_000)
      world.dispose()
      return { hash: world.kernel.trace.hash(), lines: world.kernel.trace.lines, hits, world }
    }
    const first = runOnce(11)
    const second = runOnce(11)
    expect(first.hits).toEqual([])
    expect(second.hash).toBe(first.hash)
    expect(first.world.stats.crashes).toBeGreaterThan(0)
    expect(first.lines.some((l) => l.includes("echo"))).toBe(true)
    // Each boot of a node saw the previous boot's synced counter: boots count up without gaps.
    for (const node of ["a", "b"]) {
      const boots = first.lines.filter((l) => l.includes(`${node}#`) && l.includes("booted")).map((l) => Number(/boots=(\d+)/.exec(l)![1]))
      expect(boots.length).toBeGreaterThan(0)
      // "booted" is logged after the counter's fsync and directory fsyncs, so each logged boot
      // is durable: the next one counts strictly higher. (A life that crashed before logging
      // may still have bumped the counter: the crash model may keep unsynced writes.)
      for (let i = 1; i < boots.length; i++) expect(boots[i]!).toBeGreaterThan(boots[i - 1]!)
    }
    expect(runOnce(12).hash).not.toBe(first.hash)
  })

  test.each([
    ["Date.now", () => Date.now()],
    ["Math.random", () => Math.random()],
    ["setTimeout", () => setTimeout(() => {}, 10)]
  ])("a node that touches %s makes the run non-deterministic, named", (what, touch) => {
    const world = makeWorld(5, (node) => Effect.gen(function* () {
      yield* sleepUs(100)
      if (node === "a") yield* Effect.sync(() => void touch())
    }))
    world.start("a")
    world.start("b")
    const hits = world.run(10_000)
    expect(hits.map((h) => h.what)).toContain(what)
    expect(hits[0]!.site).toMatch(/world\.test/)
  })

  test("a wiped disk brings the node back empty", () => {
    const world = makeWorld(3, pingProgram)
    world.start("a")
    world.start("b")
    world.run(20_000)
    world.crash("b", "test")
    world.run(25_000)
    world.start("b")
    world.run(40_000)
    world.crash("b", "test")
    world.wipe("b")
    world.start("b")
    world.run(60_000)
    const boots = world.kernel.trace.lines.filter((l) => l.includes(" b#") && l.includes("booted")).map((l) => Number(/boots=(\d+)/.exec(l)![1]))
    expect(boots).toEqual([1, 2, 1])
    expect(() => world.wipe("b")).toThrow(/running/)
  })

  test("a node that touches the clock in its very first step is caught too", () => {
    const world = makeWorld(5, (node, life) =>
      node === "a" && life.life === 1 ? Effect.andThen(Effect.sync(() => void Date.now()), Effect.never) : Effect.never)
    world.start("a") // outside the run: the program's first step must wait for the kernel
    const hits = world.run(1_000)
    expect(hits.map((h) => h.what)).toContain("Date.now")
  })

  test("a defect in a node is a violation", () => {
    const world = makeWorld(5, () => Effect.die(new Error("boom")))
    world.start("a")
    world.run(1_000)
    expect(world.violations.map((v) => v.message).join()).toMatch(/defect/)
  })
})
