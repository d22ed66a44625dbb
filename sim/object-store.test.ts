// Goal: the simulated object store keeps exactly the promises of core/io/remote-storage.ts and
// injects only the faults it is asked for: whole objects appear at once, a lost acknowledgement
// really stored, a transient error really left nothing, a dead life's call never lands and
// never resumes, a partitioned node times out, and a seed replays to the same trace. Method:
// Effect programs run in lives of a bare Kernel (sim/runtime.ts) against one store; results
// are compared with a plain Map model (fast-check for the workloads).
import { Cause, Effect, Exit, type Fiber, Stream } from "effect"
import fc from "fast-check"
import { describe, expect, test } from "vitest"
import { bytesBody, RemoteStorage, RemoteStorageError, type RemoteStorageErrorReason } from "../core/io/remote-storage.js"
import { Incarnation, Kernel } from "./kernel.js"
import { NO_OBJECT_STORE_FAULTS, type ObjectStoreFaults, SimObjectStore } from "./object-store.js"
import { forkInLife } from "./runtime.js"
import { NO_DISK_FAULTS } from "./disk.js"
import { DEFAULT_NET_FAULTS } from "./net.js"
import { World } from "./world.js"

class Lab {
  readonly kernel: Kernel
  readonly store: SimObjectStore
  private readonly lifeNumbers = new Map<string, number>()
  constructor(seed: number, faults: Partial<ObjectStoreFaults> = {}) {
    this.kernel = new Kernel(seed)
    this.store = new SimObjectStore(this.kernel, { ...NO_OBJECT_STORE_FAULTS, ...faults })
  }

  /** Starts `program` in a new life of `node`. */
  start<A, E>(node: string, program: Effect.Effect<A, E, RemoteStorage>): { readonly life: Incarnation; readonly fiber: Fiber.Fiber<A, E> } {
    const number = (this.lifeNumbers.get(node) ?? 0) + 1
    this.lifeNumbers.set(node, number)
    const life = new Incarnation(node, number)
    const fiber = forkInLife(this.kernel, life, Effect.provideService(program, RemoteStorage, this.store.service(life, node)))
    return { life, fiber }
  }

  /** Runs `program` on node "n" to its end; returns its exit. */
  exit<A, E>(program: Effect.Effect<A, E, RemoteStorage>, node = "n"): Exit.Exit<A, E> {
    const { fiber } = this.start(node, program)
    this.kernel.run()
    const exit = fiber.pollUnsafe()
    if (exit === undefined) throw new Error("program did not finish")
    return exit
  }

  run<A, E>(program: Effect.Effect<A, E, RemoteStorage>, node = "n"): A {
    const exit = this.exit(program, node)
    if (Exit.isFailure(exit)) throw new Error(Cause.pretty(exit.cause))
    return exit.value
  }
}

const storage = Effect.service(RemoteStorage)
const bytes = (length: number, fill: number): Uint8Array => new Uint8Array(length).fill(fill)
const text = (s: string): Uint8Array => new TextEncoder().encode(s)
const put = (path: string, data: Uint8Array, chunkBytes = 1 << 20) =>
  Effect.flatMap(storage, (s) => s.put(path, bytesBody(data, chunkBytes), data.byteLength))
const get = (path: string, range?: { readonly startBytes: number; readonly endBytes?: number }) => Effect.flatMap(storage, (s) => s.get(path, range))
const reasonOf = <A, R>(effect: Effect.Effect<A, RemoteStorageError, R>): Effect.Effect<RemoteStorageErrorReason | "ok", never, R> =>
  Effect.match(effect, { onFailure: (error) => error.reason, onSuccess: () => "ok" as const })

describe("requests", () => {
  test("put, get (whole and ranged), list sorted by prefix in byte order, copy, delete", () => {
    const lab = new Lab(1)
    const data = Uint8Array.from({ length: 3000 }, (_, i) => i % 251)
    const result = lab.run(Effect.gen(function* () {
      const s = yield* storage
      yield* s.put("t/l/000000010000000000000002", bytesBody(data, 700), data.byteLength)
      yield* s.put("t/l/000000010000000000000001", bytesBody(text("one")), 3)
      // Code point order (UTF-8 byte order): U+FFFF sorts before U+1F600, which JavaScript's < reverses.
      yield* s.put("t/l/\u{1F600}", bytesBody(text("smile")), 5)
      yield* s.put("t/l/\uFFFF", bytesBody(text("max")), 3)
      yield* s.put("t/other", bytesBody(text("x")), 1)
      yield* s.put("u/l/a", bytesBody(new Uint8Array(0)), 0)
      const whole = yield* s.get("t/l/000000010000000000000002")
      const middle = yield* s.get("t/l/000000010000000000000002", { startBytes: 100, endBytes: 1100 })
      const tail = yield* s.get("t/l/000000010000000000000002", { startBytes: 2990, endBytes: 5000 })
      const past = yield* s.get("t/l/000000010000000000000002", { startBytes: 4000 })
      const empty = yield* s.get("u/l/a")
      const listed = yield* s.list("t/l/")
      const all = yield* s.list("")
      yield* s.copy("t/l/000000010000000000000001", "u/l/copy")
      const copied = yield* s.get("u/l/copy")
      yield* s.delete("t/other")
      yield* s.delete("t/other") // absent: still success
      const gone = yield* reasonOf(s.get("t/other"))
      const copyAbsent = yield* reasonOf(s.copy("t/other", "u/x"))
      return { whole, middle, tail, past, empty, listed, all, copied, gone, copyAbsent }
    }))
    expect(result.whole).toEqual(data)
    expect(result.middle).toEqual(data.subarray(100, 1100))
    expect(result.tail).toEqual(data.subarray(2990))
    expect(result.past.byteLength).toBe(0)
    expect(result.empty.byteLength).toBe(0)
    expect(result.listed).toEqual([
      { path: "t/l/000000010000000000000001", sizeBytes: 3 },
      { path: "t/l/000000010000000000000002", sizeBytes: 3000 },
      { path: "t/l/\uFFFF", sizeBytes: 3 },
      { path: "t/l/\u{1F600}", sizeBytes: 5 }
    ])
    expect(result.all.map((o) => o.path)).toEqual([
      "t/l/000000010000000000000001", "t/l/000000010000000000000002", "t/l/\uFFFF", "t/l/\u{1F600}", "t/other", "u/l/a"
    ])
    expect(new TextDecoder().decode(result.copied)).toBe("one")
    expect(result.gone).toBe("NotFound")
    expect(result.copyAbsent).toBe("NotFound")
    expect(lab.store.paths("u/")).toEqual(["u/l/a", "u/l/copy"])
    expect(lab.store.stats).toMatchObject({ puts: 6, copies: 1, deletes: 2, notFound: 2, transientErrors: 0, lostAcks: 0 })
  })

  test("a got object is the caller's copy: changing it changes nothing stored", () => {
    const lab = new Lab(1)
    const got = lab.run(Effect.andThen(put("a", bytes(10, 7)), get("a")))
    got.fill(0)
    expect(lab.store.object("a")).toEqual(bytes(10, 7))
  })

  test("invalid paths, ranges and lengths fail Permanent at once and store nothing", () => {
    const lab = new Lab(1)
    const reasons = lab.run(Effect.gen(function* () {
      const s = yield* storage
      const out: Array<RemoteStorageErrorReason | "ok"> = []
      for (const path of ["", "/abs", "a//b", "a/./b", "a/../b", "a/"]) out.push(yield* reasonOf(s.put(path, bytesBody(text("x")), 1)))
      out.push(yield* reasonOf(s.put("short", bytesBody(text("abc")), 4)))
      out.push(yield* reasonOf(s.put("long", bytesBody(text("abcde"), 2), 4)))
      out.push(yield* reasonOf(s.put("negative", bytesBody(text("")), -1)))
      out.push(yield* reasonOf(s.get("a/../b")))
      out.push(yield* reasonOf(s.list("/t")))
      out.push(yield* reasonOf(s.copy("a", "b/")))
      yield* s.put("ok", bytesBody(text("abc")), 3)
      out.push(yield* reasonOf(s.get("ok", { startBytes: 2, endBytes: 1 })))
      out.push(yield* reasonOf(s.get("ok", { startBytes: -1 })))
      out.push(yield* reasonOf(s.list("t/")))
      out.push(yield* reasonOf(s.list("t/partial-name")))
      return out
    }))
    expect(reasons).toEqual([...Array<string>(12).fill("Permanent"), "Permanent", "Permanent", "ok", "ok"])
    expect([...lab.store.objects().keys()]).toEqual(["ok"])
    expect(lab.store.stats.permanentErrors).toBe(14)
  })

  test("a body's own failure passes through and stores nothing", () => {
    const lab = new Lab(1)
    class BodyBroke extends Error {}
    const body = Stream.concat(Stream.make(text("ab")), Stream.fail(new BodyBroke()))
    const exit = lab.exit(Effect.flatMap(storage, (s) => s.put("x", body, 4)))
    expect(Exit.isFailure(exit) && Cause.squash(exit.cause) instanceof BodyBroke).toBe(true)
    expect(lab.store.objects().size).toBe(0)
  })

  test("requests take their latency; a slow upload takes time proportional to its length", () => {
    const lab = new Lab(1, { requestLatencyUs: [2_000, 2_000], uploadBytesPerSecond: 1_000_000, downloadBytesPerSecond: 4_000_000 })
    const times = lab.run(Effect.gen(function* () {
      const at = () => lab.kernel.nowUs
      const t0 = at()
      yield* put("big", bytes(500_000, 1), 64 * 1024)
      const t1 = at()
      yield* get("big")
      const t2 = at()
      yield* get("big", { startBytes: 0, endBytes: 4 })
      const t3 = at()
      return [t1 - t0, t2 - t1, t3 - t2]
    }))
    expect(times).toEqual([500_000 + 2_000, 2_000 + 125_000, 2_000 + 1])
  })
})

describe("faults", () => {
  test("a get during a slow upload sees NotFound or the old object, whole, then the new one; never part", () => {
    const lab = new Lab(3, { requestLatencyUs: [100, 900], uploadBytesPerSecond: 2_500_000 })
    lab.run(put("seg", bytes(50_000, 1)))
    const upload = lab.start("writer", put("seg", bytes(50_000, 2), 2048))
    const seen: number[] = []
    const reader = lab.start("reader", Effect.gen(function* () {
      for (let i = 0; i < 200; i++) {
        const got = yield* get("seg")
        expect(got.byteLength).toBe(50_000)
        expect(got.every((b) => b === got[0])).toBe(true)
        seen.push(got[0]!)
        yield* Effect.sleep("200 micros")
      }
    }))
    lab.kernel.run()
    expect(Exit.isSuccess(upload.fiber.pollUnsafe()!)).toBe(true)
    expect(Exit.isSuccess(reader.fiber.pollUnsafe()!)).toBe(true)
    // Old while the body was on its way, new after: one switch, and both seen.
    const switchAt = seen.indexOf(2)
    expect(switchAt).toBeGreaterThan(10)
    expect(seen.slice(0, switchAt).every((v) => v === 1)).toBe(true)
    expect(seen.slice(switchAt).every((v) => v === 2)).toBe(true)
  })

  test("a lost acknowledgement fails Transient though the put, copy or delete happened", () => {
    const lossy = new Lab(1, { lostAckProbability: 1 })
    const reasons = lossy.run(Effect.gen(function* () {
      const s = yield* storage
      return [
        yield* reasonOf(s.put("a", bytesBody(text("v1")), 2)),
        yield* reasonOf(s.copy("a", "b")),
        yield* reasonOf(s.delete("a")),
        yield* reasonOf(s.get("b"))
      ]
    }))
    expect(reasons).toEqual(["Transient", "Transient", "Transient", "ok"])
    expect([...lossy.store.objects().entries()]).toEqual([["b", text("v1")]])
    expect(lossy.store.stats).toMatchObject({ lostAcks: 3, puts: 1, copies: 1, deletes: 1, gets: 1 })
  })

  test("a transient error leaves nothing: no object, no delete, no copy", () => {
    const lab = new Lab(2, { transientErrorProbability: 0.5 })
    const snapshot = () => new Map(lab.store.objects())
    const failures: string[] = []
    lab.run(Effect.gen(function* () {
      const s = yield* storage
      for (let i = 0; i < 40; i++) {
        const before = snapshot()
        const [what, call] = [
          ["put", s.put(`p${i % 3}`, bytesBody(bytes(10, i)), 10)],
          ["copy", s.copy(`p${i % 3}`, `c${i % 2}`)],
          ["delete", s.delete(`p${(i + 1) % 3}`)]
        ][i % 3] as [string, Effect.Effect<void, RemoteStorageError>]
        const reason = yield* reasonOf(call)
        if (reason === "Transient") {
          failures.push(what)
          expect(snapshot()).toEqual(before)
        }
      }
    }))
    expect(new Set(failures)).toEqual(new Set(["put", "copy", "delete"]))
    expect(lab.store.stats.transientErrors).toBe(failures.length)
    expect(lab.store.stats.lostAcks).toBe(0)
  })

  test("once faults stop (the liveness phase), requests succeed", () => {
    const lab = new Lab(1, { transientErrorProbability: 1, lostAckProbability: 1 })
    expect(lab.run(reasonOf(put("x", text("v"))))).toBe("Transient")
    expect(lab.store.objects().size).toBe(0)
    lab.store.stopFaults()
    expect(lab.run(reasonOf(put("x", text("v"))))).toBe("ok")
    expect(lab.run(get("x"))).toEqual(text("v"))
  })

  test("a life that dies mid-upload or while waiting for the answer never lands its put and never resumes", () => {
    for (const dieAtUs of [50_000, 100_500]) {
      const lab = new Lab(1, { requestLatencyUs: [1_000, 1_000], uploadBytesPerSecond: 1_000_000 })
      let resumed = false
      const { life, fiber } = lab.start("n", Effect.tap(put("x", bytes(100_000, 5), 4096), () => Effect.sync(() => {
        resumed = true
      })))
      lab.kernel.setTimer(dieAtUs, () => {
        life.alive = false
      }, undefined)
      lab.kernel.run()
      expect(lab.store.objects().size).toBe(0)
      expect(resumed).toBe(false)
      expect(fiber.pollUnsafe()).toBeUndefined()
      expect(lab.store.stats.puts).toBe(0)
    }
  })

  test("a call made by a dead life does nothing and never resumes", () => {
    const lab = new Lab(1)
    const life = new Incarnation("n", 1)
    const service = lab.store.service(life)
    life.alive = false
    let resumed = false
    const fiber = forkInLife(lab.kernel, new Incarnation("harness", 1), Effect.gen(function* () {
      yield* Effect.forkChild(Effect.tap(service.put("x", bytesBody(text("v")), 1), () => Effect.sync(() => {
        resumed = true
      })))
      yield* Effect.sleep("1 second")
    }))
    lab.kernel.run()
    expect(Exit.isSuccess(fiber.pollUnsafe()!)).toBe(true)
    expect(resumed).toBe(false)
    expect(lab.store.objects().size).toBe(0)
    expect(lab.store.stats.requests).toBe(0)
  })

  test("an interrupted put (a caller's timeout) lands nothing", () => {
    const lab = new Lab(1, { requestLatencyUs: [1_000, 1_000], uploadBytesPerSecond: 1_000_000 })
    const exit = lab.exit(Effect.timeoutOption(put("x", bytes(100_000, 5), 4096), "50 millis"))
    expect(exit).toMatchObject({ _tag: "Success" })
    lab.kernel.run()
    expect(lab.store.objects().size).toBe(0)
  })

  test("a paused caller's put lands while it is paused; the answer reaches it when it resumes", () => {
    const lab = new Lab(1, { requestLatencyUs: [1_000, 1_000] })
    let doneAtUs = -1
    const { life } = lab.start("n", Effect.tap(put("x", text("v")), () => Effect.sync(() => {
      doneAtUs = lab.kernel.nowUs
    })))
    lab.kernel.setTimer(500, () => lab.kernel.pause(life), undefined)
    lab.kernel.setTimer(50_000, () => lab.kernel.resume(life), undefined)
    lab.kernel.run({ untilUs: 10_000 })
    expect(lab.store.object("x")).toEqual(text("v"))
    expect(doneAtUs).toBe(-1)
    lab.kernel.run()
    expect(doneAtUs).toBe(50_000)
  })

  test("a partitioned node's requests time out Transient and take no effect; others go on; heal restores it", () => {
    const lab = new Lab(1, { requestLatencyUs: [1_000, 1_000], requestTimeoutUs: 300_000 })
    lab.run(put("a", text("v1")))
    lab.store.partition("cut")
    const t0 = lab.kernel.nowUs
    const cut = lab.run(Effect.gen(function* () {
      const s = yield* storage
      return [yield* reasonOf(s.get("a")), yield* reasonOf(s.put("a", bytesBody(text("v2")), 2)), yield* reasonOf(s.delete("a"))]
    }), "cut")
    expect(cut).toEqual(["Transient", "Transient", "Transient"])
    expect(lab.kernel.nowUs - t0).toBe(3 * 300_000)
    expect(lab.store.object("a")).toEqual(text("v1"))
    expect(lab.run(reasonOf(get("a")), "other")).toBe("ok")
    lab.store.heal("cut")
    expect(lab.run(reasonOf(put("a", text("v3"))), "cut")).toBe("ok")
    expect(lab.store.object("a")).toEqual(text("v3"))
    expect(lab.store.stats.timeouts).toBe(3)
  })

  test("a partition that starts while the request is in flight: nothing happens, the caller times out", () => {
    const lab = new Lab(1, { requestLatencyUs: [1_000, 1_000], requestTimeoutUs: 300_000 })
    const { fiber } = lab.start("cut", reasonOf(put("a", text("v"))))
    lab.kernel.setTimer(500, () => lab.store.partition("cut"), undefined)
    lab.kernel.run()
    expect(fiber.pollUnsafe()).toMatchObject({ value: "Transient" })
    expect(lab.kernel.nowUs).toBe(301_000)
    expect(lab.store.objects().size).toBe(0)
  })
})

describe("in a World", () => {
  test("the store outlives node lives: a crash mid-upload lands nothing, the next life reads what the last one stored", () => {
    const outcome: string[] = []
    const world = new World({
      seed: 3, nodes: ["a"], diskFaults: NO_DISK_FAULTS, netFaults: DEFAULT_NET_FAULTS, crashOnOperationProbability: 0,
      clockSkewUsMax: 0, restartDelayUs: [1_000, 1_000], recordTrace: true, traceHeader: [],
      program: (node, life) => {
        const program = life.life === 1
          ? Effect.gen(function* () {
            yield* put("x", text("v1"))
            yield* put("y", bytes(1_000_000, 1), 10_000) // 1 s at 1 MB/s: the crash comes first
            outcome.push("life 1 finished")
          })
          : Effect.gen(function* () {
            outcome.push(`x=${new TextDecoder().decode(yield* get("x"))}`, `y=${yield* reasonOf(get("y"))}`)
            yield* Effect.never
          })
        return Effect.provideService(program, RemoteStorage, store.service(life, node))
      }
    })
    const store = new SimObjectStore(world.kernel, { ...NO_OBJECT_STORE_FAULTS, uploadBytesPerSecond: 1_000_000 })
    world.start("a")
    world.kernel.setTimer(300_000, () => {
      world.crash("a", "test")
      world.restartLater("a")
    }, undefined)
    const hits = world.run(3_000_000)
    world.dispose()
    expect(hits).toEqual([])
    expect(world.violations).toEqual([])
    expect(outcome).toEqual(["x=v1", "y=NotFound"])
    expect([...store.objects().keys()]).toEqual(["x"])
  })
})

describe("determinism", () => {
  const faulty: Partial<ObjectStoreFaults> = {
    requestLatencyUs: [100, 5_000], uploadBytesPerSecond: 5_000_000, transientErrorProbability: 0.2, lostAckProbability: 0.2
  }
  /** Two nodes putting, getting and deleting with faults; the outcomes and the trace hash. */
  const workload = (seed: number): { readonly hash: string; readonly outcomes: string } => {
    const lab = new Lab(seed, faulty)
    const outcomes: string[] = []
    const client = (node: string) => Effect.gen(function* () {
      const s = yield* storage
      for (let i = 0; i < 30; i++) {
        const path = `t/${i % 4}`
        outcomes.push(`${node} put ${yield* reasonOf(s.put(path, bytesBody(bytes(1000 + i, i), 300), 1000 + i))}`)
        outcomes.push(`${node} get ${yield* reasonOf(s.get(path))}`)
        if (i % 3 === 0) outcomes.push(`${node} delete ${yield* reasonOf(s.delete(path))}`)
      }
    })
    lab.start("a", client("a"))
    lab.start("b", client("b"))
    lab.kernel.run()
    return { hash: lab.kernel.trace.hash(), outcomes: outcomes.join("\n") }
  }

  test("a seed replays to the same trace hash and outcomes; other seeds differ", () => {
    const first = workload(7)
    expect(workload(7)).toEqual(first)
    const others = [8, 9, 10].map(workload)
    for (const other of others) {
      expect(other.hash).not.toBe(first.hash)
      expect(other.outcomes).not.toBe(first.outcomes)
    }
  })

  test("the stored bytes are in the trace hash", () => {
    const hashOf = (fill: number) => {
      const lab = new Lab(1)
      lab.run(put("x", bytes(100, fill)))
      return lab.kernel.trace.hash()
    }
    expect(hashOf(1)).toBe(hashOf(1))
    expect(hashOf(1)).not.toBe(hashOf(2))
  })

  test("no random draws without faults and with a fixed latency, so other worlds replay as before", () => {
    const lab = new Lab(5, { requestLatencyUs: [1_000, 1_000] })
    lab.run(Effect.gen(function* () {
      yield* put("x", text("v"))
      yield* get("x")
      yield* Effect.flatMap(storage, (s) => s.list(""))
      yield* Effect.flatMap(storage, (s) => s.copy("x", "y"))
      yield* Effect.flatMap(storage, (s) => s.delete("x"))
    }))
    expect(lab.kernel.nextFloat()).toBe(new Kernel(5).nextFloat())
  })
})

describe("against a Map model", () => {
  type Op =
    | { readonly kind: "put"; readonly path: string; readonly value: number; readonly length: number }
    | { readonly kind: "get"; readonly path: string }
    | { readonly kind: "delete"; readonly path: string }
    | { readonly kind: "copy"; readonly from: string; readonly path: string }
    | { readonly kind: "list"; readonly prefix: string }
  const arbPath = fc.constantFrom("a", "a/b", "a/c", "b", "b/a")
  const arbOp: fc.Arbitrary<Op> = fc.oneof(
    fc.record({ kind: fc.constant("put" as const), path: arbPath, value: fc.integer({ min: 0, max: 255 }), length: fc.integer({ min: 0, max: 3000 }) }),
    fc.record({ kind: fc.constant("get" as const), path: arbPath }),
    fc.record({ kind: fc.constant("delete" as const), path: arbPath }),
    fc.record({ kind: fc.constant("copy" as const), from: arbPath, path: arbPath }),
    fc.record({ kind: fc.constant("list" as const), prefix: fc.constantFrom("", "a", "a/", "b/", "c") })
  )
  const valueOf = (op: { readonly value: number; readonly length: number }) => bytes(op.length, op.value)

  /** Runs `ops` one after another on one node; `check` runs after each (inside the run) with the op and its outcome. */
  const drive = (lab: Lab, ops: ReadonlyArray<Op>, check: (op: Op, outcome: Exit.Exit<unknown, RemoteStorageError>) => void) =>
    lab.run(Effect.gen(function* () {
      const s = yield* storage
      for (const op of ops) {
        const call: Effect.Effect<unknown, RemoteStorageError> =
          op.kind === "put" ? s.put(op.path, bytesBody(valueOf(op), 1024), op.length)
          : op.kind === "get" ? s.get(op.path)
          : op.kind === "delete" ? s.delete(op.path)
          : op.kind === "copy" ? s.copy(op.from, op.path)
          : s.list(op.prefix)
        check(op, yield* Effect.exit(call))
      }
    }))

  test("without faults: every answer and the final contents equal the model's", () => {
    fc.assert(fc.property(fc.array(arbOp, { maxLength: 40 }), fc.nat(1000), (ops, seed) => {
      const lab = new Lab(seed, { requestLatencyUs: [10, 2_000], uploadBytesPerSecond: 20_000_000 })
      const model = new Map<string, Uint8Array>()
      drive(lab, ops, (op, outcome) => {
        if (op.kind === "put") {
          model.set(op.path, valueOf(op))
          expect(outcome).toMatchObject({ _tag: "Success" })
        } else if (op.kind === "get") {
          const want = model.get(op.path)
          if (want === undefined) expect(Exit.isFailure(outcome) && Cause.squash(outcome.cause)).toMatchObject({ reason: "NotFound" })
          else expect(outcome).toEqual(Exit.succeed(want))
        } else if (op.kind === "delete") {
          model.delete(op.path)
          expect(outcome).toMatchObject({ _tag: "Success" })
        } else if (op.kind === "copy") {
          const source = model.get(op.from)
          if (source === undefined) expect(Exit.isFailure(outcome) && Cause.squash(outcome.cause)).toMatchObject({ reason: "NotFound" })
          else {
            model.set(op.path, source)
            expect(outcome).toMatchObject({ _tag: "Success" })
          }
        } else {
          const want = [...model.entries()].filter(([p]) => p.startsWith(op.prefix)).sort(([a], [b]) => (a < b ? -1 : 1))
            .map(([path, v]) => ({ path, sizeBytes: v.byteLength }))
          expect(outcome).toEqual(Exit.succeed(want))
        }
      })
      expect(new Map(lab.store.objects())).toEqual(model)
    }), { numRuns: 60 })
  })

  test("with lost acknowledgements and transient errors: acknowledged changes hold, and only written values are ever stored", () => {
    fc.assert(fc.property(fc.array(arbOp, { maxLength: 40 }), fc.nat(1000), (ops, seed) => {
      const lab = new Lab(seed, { requestLatencyUs: [10, 2_000], transientErrorProbability: 0.25, lostAckProbability: 0.25 })
      // Every value ever sent to a path (puts, and copies of whatever their source may hold).
      const written = new Map<string, Uint8Array[]>()
      const note = (path: string, value: Uint8Array) => written.set(path, [...(written.get(path) ?? []), value])
      drive(lab, ops, (op, outcome) => {
        if (op.kind === "put") note(op.path, valueOf(op))
        if (op.kind === "copy") for (const v of written.get(op.from) ?? []) note(op.path, v)
        const stored = lab.store.object(op.kind === "list" ? "" : op.path)
        if (Exit.isSuccess(outcome)) {
          if (op.kind === "put") expect(stored).toEqual(valueOf(op))
          if (op.kind === "delete") expect(stored).toBeUndefined()
          if (op.kind === "copy") expect(stored).toEqual(lab.store.object(op.from))
        } else {
          expect(Cause.squash(outcome.cause)).toBeInstanceOf(RemoteStorageError)
        }
        for (const [path, value] of lab.store.objects()) expect(written.get(path) ?? []).toContainEqual(value)
      })
      return true
    }), { numRuns: 60 })
  })
})
