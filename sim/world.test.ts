// Goal: a world runs node programs deterministically, crashes them kill -9 style, restarts
// them from their disks, and reports any touch of real time, randomness or timers by name.
// Method: small node programs over the simulated Disk/Net, run twice and with planted calls.
import { Clock, Deferred, Duration, Effect, Fiber, Random } from "effect"
import { readFile } from "node:fs"
import { readFile as readFilePromise } from "node:fs/promises"
import { fileURLToPath } from "node:url"
import { describe, expect, test } from "vitest"
import { monotonicUs, sleepUs } from "../core/io/clock.js"
import { Disk } from "../core/io/disk.js"
import { Log, logInfo } from "../core/io/log.js"
import { Net } from "../core/io/net.js"
import { NO_DISK_FAULTS } from "./disk.js"
import { takeLateCalls } from "./kernel.js"
import { DEFAULT_NET_FAULTS } from "./net.js"
import { runTestWorld } from "./world-testing.js"
import { World, type NodeProgram, type WorldOptions } from "./world.js"

function makeWorld(seed: number, program: NodeProgram, crashOnOperationProbability = 0, extra: Partial<WorldOptions> = {}): World {
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
    traceHeader: [`seed ${seed}`],
    ...extra
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
    expect(first.world.violations).toEqual([]) // none of the run-level checks flags a normal program
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

const THIS_FILE = fileURLToPath(import.meta.url)
/** Lets real callbacks and promise continuations that a run left behind arrive (polls up to 5 s). */
async function realTurns(until: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !until(); i++) await new Promise<void>((resolve) => setTimeout(resolve, 10))
}

describe("a livelock fails the run instead of hanging it", () => {
  test("Effect.forever(Effect.yieldNow) in a node is a violation, and the world makes no more progress", () => {
    const world = makeWorld(5, (node) => node === "a" ? Effect.forever(Effect.yieldNow) : Effect.never)
    world.start("a")
    world.start("b")
    expect(world.run(10_000)).toEqual([])
    expect(world.violations.map((v) => v.message)).toEqual([expect.stringMatching(/livelock: more than 100000 steps at virtual time 0 µs without time advancing \(last step: a#1\)/)])
    const nowUs = world.kernel.nowUs
    world.run(20_000)
    expect(world.kernel.nowUs).toBe(nowUs)
    world.dispose()
  })

  test("a test world whose client livelocks throws the livelock instead of hanging", () => {
    expect(() => runTestWorld({ servers: {}, client: Effect.forever(Effect.yieldNow), stepsPerInstantMax: 10_000 })).toThrow(/livelock: more than 10000 steps/)
  })

  test("a node whose time creeps forward runs into the total budget, which a world can lower", () => {
    const world = makeWorld(5, (node) => node === "a" ? Effect.forever(sleepUs(1)) : Effect.never, 0, { stepsMax: 20_000 })
    world.start("a")
    world.run(10_000_000)
    expect(world.violations.map((v) => v.message)).toEqual([expect.stringMatching(/livelock: more than 20000 steps in the run/)])
    expect(world.kernel.nowUs).toBeLessThan(20_000)
    world.dispose()
  })
})

describe("a run that ends while a live node waits on something the kernel does not own fails", () => {
  test.each<readonly [string, Effect.Effect<unknown>]>([
    ["fs.readFile through Effect.callback", Effect.callback<void>((resume) => void readFile(THIS_FILE, () => resume(Effect.void)))],
    ["fs/promises.readFile through Effect.promise", Effect.promise(() => readFilePromise(THIS_FILE))],
    ["a detached async continuation", Effect.callback<void>((resume) => {
      void (async () => {
        await null
        resume(Effect.void)
      })()
    })]
  ])("%s", async (_name, wait) => {
    takeLateCalls()
    let resumed = false
    const world = makeWorld(5, (node) => node === "a"
      ? Effect.gen(function* () {
        yield* sleepUs(100)
        yield* wait
        resumed = true
        yield* Effect.never
      })
      : Effect.never)
    world.start("a")
    world.start("b")
    world.run(10_000)
    const messages = world.violations.map((v) => `${v.who}: ${v.message}`)
    expect(messages).toEqual([expect.stringMatching(/^a#1: the run ended while a fiber waits on real asynchronous work \(\w+\) the kernel does not own/)])
    world.dispose()
    // And when the real callback comes, after the run, the resume is a late call too.
    await realTurns(() => resumed)
    expect(resumed).toBe(true) // Effect resumes a fiber inline in the callback: node code ran outside any run
    expect(world.violations.slice(1).map((v) => v.message)).toContain("late call: a fiber ran (resumed from outside the kernel) while no run executes (after dispose)")
    expect(takeLateCalls().calls).toContainEqual({ seed: 5, who: "a#1", what: "a fiber ran (resumed from outside the kernel)", afterClose: true })
  })

  test("waits the kernel owns are not flagged: timers, net waiters, Deferreds, joins, never", () => {
    const world = makeWorld(6, pingProgram)
    world.start("a")
    world.start("b")
    world.run(20_000) // stops while connections wait for bytes, fibers sleep and "b" waits in accept
    expect(world.violations).toEqual([])
    const other = makeWorld(6, () => Effect.gen(function* () {
      const fiber = yield* Effect.forkChild(Effect.never)
      const deferred = yield* Deferred.make<void>()
      yield* Effect.forkChild(Deferred.await(deferred))
      yield* Effect.forkChild(Effect.callback<void>(() => {}))
      yield* Effect.all([sleepUs(1_000_000), Fiber.join(fiber)], { concurrency: "unbounded" })
    }))
    other.start("a")
    other.run(1_000)
    expect(other.violations).toEqual([])
  })

  test("a wait of a node that crashed is not the run's failure", () => {
    const world = makeWorld(5, (node, life) => node === "a" && life.life === 1
      ? Effect.callback<void>((resume) => void readFile(THIS_FILE, () => resume(Effect.void)))
      : Effect.never)
    world.start("a")
    world.kernel.after(500, () => world.crash("a", "test"), undefined)
    world.run(1_000)
    expect(world.violations).toEqual([])
    world.dispose()
  })
})

describe("a call into a world while no run executes is a failure", () => {
  interface Captured {
    readonly clock: Clock.Clock
    readonly random: Random.Random
    readonly disk: Disk["Service"]
    readonly net: Net["Service"]
    readonly log: Log["Service"]
  }
  const capturing = (into: { captured?: Captured }): NodeProgram => (node) =>
    node !== "a" ? Effect.never : Effect.gen(function* () {
      into.captured = {
        clock: yield* Effect.clockWith(Effect.succeed),
        random: yield* Effect.service(Random.Random),
        disk: yield* Disk,
        net: yield* Net,
        log: yield* Log
      }
      yield* Effect.never
    })

  test.each<readonly [string, (c: Captured) => void]>([
    ["Clock.currentTimeMillis", (c) => void c.clock.currentTimeMillisUnsafe()],
    ["Clock.monotonicTimeNanos", (c) => void c.clock.monotonicTimeNanosUnsafe()],
    ["Clock.sleep", (c) => void Effect.runFork(c.clock.sleep(Duration.millis(1)))],
    ["Random.nextDouble", (c) => void c.random.nextDoubleUnsafe()],
    ["Disk mkdir", (c) => void Effect.runFork(c.disk.mkdir("/late"))],
    ["Net connect", (c) => void Effect.runFork(c.net.connect("b:7"))],
    ["Log.emit", (c) => void Effect.runFork(c.log.emit("info", "late"))]
  ])("%s between runs and after dispose", (what, call) => {
    takeLateCalls()
    const into: { captured?: Captured } = {}
    const world = makeWorld(5, capturing(into))
    world.start("a")
    world.start("b")
    world.run(1_000)
    expect(world.violations).toEqual([])
    call(into.captured!) // between runs: the life is alive, nothing runs it
    world.run(2_000)
    world.dispose()
    call(into.captured!)
    const late = world.violations.filter((v) => v.message.startsWith(`late call: ${what}`))
    expect(late.map((v) => v.message)).toEqual([
      `late call: ${what} while no run executes`,
      `late call: ${what} while no run executes (after dispose)`
    ])
    expect(late.every((v) => v.who === "a#1")).toBe(true)
    const taken = takeLateCalls().calls.filter((c) => c.what === what)
    expect(taken.map((c) => c.afterClose)).toEqual([false, true])
    // Late calls never reach the trace: they may come at any real moment.
    expect(world.kernel.trace.lines.some((l) => l.includes("late call"))).toBe(false)
  })

  test("a disposed world refuses to run", () => {
    const world = makeWorld(5, () => Effect.never)
    world.dispose()
    expect(() => world.run(1_000)).toThrow(/disposed/)
  })
})

describe("clock drift", () => {
  const DRIFT_PPM_MAX = 100_000
  /** Each node sleeps one local second and logs when, in kernel time, it woke and what its clock read. */
  const sleeper: NodeProgram = () => Effect.gen(function* () {
    const before = yield* monotonicUs
    yield* sleepUs(1_000_000)
    const after = yield* monotonicUs
    yield* logInfo("woke", { local: after - before })
  })

  test("a node's sleeps take 1/(1+drift) of their length in kernel time, and its clock reads advance at 1+drift", () => {
    const world = makeWorld(2, sleeper, 0, { clockDriftPpmMax: DRIFT_PPM_MAX })
    world.start("a")
    world.start("b")
    world.run(2_000_000)
    const drifts = ["a", "b"].map((node) => world.clockDriftPpm(node))
    expect(drifts.every((d) => Math.abs(d) <= DRIFT_PPM_MAX)).toBe(true)
    // This seed draws one clock clearly slow and the other clearly fast.
    expect(drifts[0]!).toBeLessThan(-30_000)
    expect(drifts[1]!).toBeGreaterThan(30_000)
    for (const [i, node] of ["a", "b"].entries()) {
      const line = world.kernel.trace.lines.find((l) => l.includes(` ${node}#1 info woke`))!
      const wokeAtUs = Number(line.split(" ")[0])
      expect(Math.abs(wokeAtUs - 1_000_000 / (1 + drifts[i]! / 1e6))).toBeLessThanOrEqual(1)
      // The node itself saw (at least) the second it asked for, by its own clock.
      const local = Number(/local=(\d+)/.exec(line)![1])
      expect(local).toBeGreaterThanOrEqual(1_000_000)
      expect(local).toBeLessThanOrEqual(1_000_001)
    }
    expect(world.violations).toEqual([])
  })

  test("no drift by default, and none drawn: the kernel's random stream is unchanged", () => {
    const plain = makeWorld(21, sleeper)
    const zero = makeWorld(21, sleeper, 0, { clockDriftPpmMax: 0 })
    for (const world of [plain, zero]) {
      world.start("a")
      world.run(2_000_000)
    }
    expect(plain.clockDriftPpm("a")).toBe(0)
    expect(plain.kernel.trace.lines.find((l) => l.includes("woke"))).toMatch(/^1000000 a#1 info woke local=1000000/)
    expect(plain.kernel.nextFloat()).toBe(zero.kernel.nextFloat())
  })
})

describe("pauses", () => {
  test("a paused node's timers fire late, overdue and in their order; others keep running", () => {
    const world = makeWorld(8, (node) => Effect.gen(function* () {
      const timers = [300, 100, 200].map((us) => Effect.andThen(sleepUs(us), logInfo("timer", { us })))
      yield* Effect.all(timers, { concurrency: "unbounded" })
      if (node === "b") yield* logInfo("b done")
    }))
    world.start("a")
    world.start("b")
    world.kernel.after(50, () => world.pause("a", 1_000), undefined)
    world.run(5_000)
    const lines = world.kernel.trace.lines.filter((l) => / (a|b)#1 (info|world pause|world resume)/.test(l))
    expect(lines).toEqual([
      "50 a#1 world pause 1000 µs (until 1050)",
      "100 b#1 info timer us=100",
      "200 b#1 info timer us=200",
      "300 b#1 info timer us=300",
      "300 b#1 info b done",
      "1050 a#1 world resume held=3",
      "1050 a#1 info timer us=100",
      "1050 a#1 info timer us=200",
      "1050 a#1 info timer us=300"
    ])
    expect(world.violations).toEqual([])
  })

  test("a paused node does not answer a peer until it resumes", () => {
    const answers: number[] = []
    const world = makeWorld(9, (node) => Effect.gen(function* () {
      const net = yield* Net
      if (node === "b") {
        const listener = yield* net.listen("b:7")
        const connection = yield* listener.accept
        for (;;) {
          const chunk = yield* connection.read
          if (chunk === undefined) return
          yield* connection.write(chunk)
        }
      }
      yield* sleepUs(100)
      const connection = yield* net.connect("b:7")
      for (let i = 0; i < 3; i++) {
        yield* connection.write(new Uint8Array([i]))
        yield* connection.read
        answers.push(world.kernel.nowUs)
        yield* sleepUs(20_000)
      }
    }).pipe(Effect.ignore, Effect.andThen(Effect.never)))
    world.start("a")
    world.start("b")
    // The second ping leaves "a" about 20 ms after the first answer: "b" is paused from 10 ms to 60 ms.
    world.kernel.after(10_000, () => world.pause("b", 50_000), undefined)
    world.run(200_000)
    expect(answers).toHaveLength(3)
    expect(answers[0]!).toBeLessThan(10_000)
    expect(answers[1]!).toBeGreaterThanOrEqual(60_000) // answered only once resumed
    expect(answers[2]! - answers[1]!).toBeLessThan(30_000) // and normally after that
    expect(world.violations).toEqual([])
  })

  test("a crash while paused drops what was held; the node restarts unpaused", () => {
    const world = makeWorld(10, (_node, life) => Effect.gen(function* () {
      yield* logInfo("up", { life: life.life })
      yield* sleepUs(100)
      yield* logInfo("slept", { life: life.life })
      yield* Effect.never
    }))
    world.start("a")
    world.kernel.after(50, () => world.pause("a", 10_000), undefined)
    world.kernel.after(500, () => {
      expect(world.isPaused("a")).toBe(true)
      world.crash("a", "test")
      world.start("a")
    }, undefined)
    world.run(20_000)
    const lines = world.kernel.trace.lines.filter((l) => / a#\d /.test(l)).map((l) => l.replace(/^\d+ /, ""))
    expect(lines).toEqual([
      "a#1 world start",
      "a#1 info up life=1",
      "a#1 world pause 10000 µs (until 10050)",
      "a#1 world crash (test)",
      "a#1 world dropped held=1 (crashed while paused)",
      "a#2 world start",
      "a#2 info up life=2",
      "a#2 info slept life=2"
    ])
    expect(world.isPaused("a")).toBe(false)
  })

  test("pauses replay: same seed, same trace", () => {
    const runOnce = () => {
      const world = makeWorld(12, pingProgram, 0.01, { clockDriftPpmMax: 2_000 })
      world.start("a")
      world.start("b")
      for (const [atUs, node] of [[10_000, "a"], [40_000, "b"], [41_000, "a"]] as const) world.kernel.after(atUs, () => world.pause(node, 7_000), undefined)
      world.run(100_000)
      world.dispose()
      return world.kernel.trace.hash()
    }
    expect(runOnce()).toBe(runOnce())
  })
})
