// Goal: every RemoteStorage world keeps the contract of core/io/remote-storage.ts. Method: one
// suite, run by each world's test file against a fresh, empty store per test (a temp
// directory, a fresh prefix in a bucket), driving the service through Effects only, so the
// same expectations hold for a local directory and for S3.
import { Cause, Effect, Exit, type Layer, Schema, Stream } from "effect"
import { expect, test } from "vitest"
import { bytesBody, RemoteStorage, type RemoteStorageError, type RemoteStorageErrorReason } from "../core/io/remote-storage.js"

export interface ConformanceOptions {
  /** Objects in the many-objects list test: over 1000 crosses an S3 page. */
  readonly manyObjectCount?: number
  /**
   * The server keeps what it received of an aborted upload (s3rver writes straight into the
   * object's file). Then a failed put may leave (or overwrite with) a truncated object, and the
   * suite checks only what the client controls: such an object is shorter than declared, never
   * a whole-looking one. AWS S3 and the local store keep nothing.
   */
  readonly abortedUploadsMayLeaveObjects?: boolean
  /**
   * The server cannot answer a ranged get of an empty object (s3rver claims one byte in a 206
   * and sends none; S3 answers 416, which the client turns into an empty answer): skip that one
   * check.
   */
  readonly skipRangedGetOfEmptyObject?: boolean
}

/** Registers the suite's tests; `freshStore` gives a layer over a new, empty store on each call. */
export function remoteStorageConformance(freshStore: () => Layer.Layer<RemoteStorage>, options: ConformanceOptions = {}): void {
  const manyObjectCount = options.manyObjectCount ?? 1100
  const leaky = options.abortedUploadsMayLeaveObjects === true
  /** What failed puts left under `prefix`: nothing, or (leaky servers) objects shorter than declared. */
  const expectNothingWhole = (prefix: string, declaredBytes: Readonly<Record<string, number>>) =>
    Effect.gen(function*() {
      const storage = yield* RemoteStorage
      const left = yield* storage.list(prefix)
      if (!leaky) return expect(left).toEqual([])
      for (const object of left) expect(object.sizeBytes).toBeLessThan(declaredBytes[object.path] ?? 0)
    })
  const check = (name: string, body: Effect.Effect<void, unknown, RemoteStorage>): void => {
    test(name, () => Effect.runPromise(Effect.provide(body, freshStore())))
  }

  check("a multi-MiB streamed body round-trips, and list reports its size", Effect.gen(function*() {
    const storage = yield* RemoteStorage
    const lengthBytes = 5 * 1024 * 1024 + 7
    let pulledChunkCount = 0
    // Generated as pulled, so the test also shows put takes a body it never holds whole.
    const body = patternBody(lengthBytes, 64 * 1024).pipe(Stream.tap(() => Effect.sync(() => void pulledChunkCount++)))
    yield* storage.put("tenant/timeline/000000010000000000000001", body, lengthBytes)
    expect(pulledChunkCount).toBe(Math.ceil(lengthBytes / (64 * 1024)))
    const back = yield* storage.get("tenant/timeline/000000010000000000000001")
    expect(back.length).toBe(lengthBytes)
    expect(Buffer.compare(back, pattern(0, lengthBytes))).toBe(0)
    expect(yield* storage.list("tenant/")).toEqual([{ path: "tenant/timeline/000000010000000000000001", sizeBytes: lengthBytes }])
  }))

  check("ranged gets: inside, cut at the end, empty past it; bad ranges refused", Effect.gen(function*() {
    const storage = yield* RemoteStorage
    const sizeBytes = 300_000
    yield* storage.put("r/object", patternBody(sizeBytes, 40_000), sizeBytes)
    const range = (startBytes: number, endBytes?: number) => storage.get("r/object", endBytes === undefined ? { startBytes } : { startBytes, endBytes })
    expect(Buffer.compare(yield* range(0, 10), pattern(0, 10))).toBe(0)
    expect(Buffer.compare(yield* range(123_456, 200_001), pattern(123_456, 200_001 - 123_456))).toBe(0)
    expect(Buffer.compare(yield* range(1000), pattern(1000, sizeBytes - 1000))).toBe(0)
    expect(Buffer.compare(yield* range(sizeBytes - 5, sizeBytes + 100), pattern(sizeBytes - 5, 5))).toBe(0)
    expect((yield* range(sizeBytes, sizeBytes)).length).toBe(0)
    expect((yield* range(5, 5)).length).toBe(0)
    expect((yield* range(sizeBytes)).length).toBe(0)
    expect((yield* range(sizeBytes + 10, sizeBytes + 20)).length).toBe(0)
    expect(Buffer.compare(yield* range(0), pattern(0, sizeBytes))).toBe(0)
    expect(yield* reasonOf(range(10, 5))).toBe("Permanent")
    expect(yield* reasonOf(range(-1, 5))).toBe("Permanent")
    expect(yield* reasonOf(range(1.5))).toBe("Permanent")
    expect(yield* reasonOf(storage.get("r/absent", { startBytes: 0, endBytes: 10 }))).toBe("NotFound")
    expect(yield* reasonOf(storage.get("r/absent", { startBytes: 3, endBytes: 3 }))).toBe("NotFound")
  }))

  check("an empty object exists, is empty, and lists with size 0", Effect.gen(function*() {
    const storage = yield* RemoteStorage
    yield* storage.put("e/empty", Stream.empty, 0)
    expect((yield* storage.get("e/empty")).length).toBe(0)
    if (options.skipRangedGetOfEmptyObject !== true) expect((yield* storage.get("e/empty", { startBytes: 0, endBytes: 10 })).length).toBe(0)
    expect((yield* storage.get("e/empty", { startBytes: 0, endBytes: 0 })).length).toBe(0)
    expect(yield* storage.list("e/")).toEqual([{ path: "e/empty", sizeBytes: 0 }])
  }))

  check("list: by string prefix, recursive, sorted in byte order", Effect.gen(function*() {
    const storage = yield* RemoteStorage
    const paths = ["a/b/2", "a/b/1", "a/bc", "a/c/d/e", "b", "a/b/10", "a/B", "z/\u00e9", "z/e", "z/\u{1F600}", "z/\uFFFD"]
    for (const path of paths) yield* storage.put(path, bytesBody(text(path)), text(path).length)
    const listed = (prefix: string) => Effect.map(storage.list(prefix), (objects) => objects.map((object) => object.path))
    expect(yield* listed("a/b/")).toEqual(["a/b/1", "a/b/10", "a/b/2"])
    // A prefix is a string, not a directory: "a/b" also takes "a/bc".
    expect(yield* listed("a/b")).toEqual(["a/b/1", "a/b/10", "a/b/2", "a/bc"])
    expect(yield* listed("a/")).toEqual(["a/B", "a/b/1", "a/b/10", "a/b/2", "a/bc", "a/c/d/e"])
    expect(yield* listed("a/c")).toEqual(["a/c/d/e"])
    expect(yield* listed("a/b/1")).toEqual(["a/b/1", "a/b/10"])
    expect(yield* listed("b")).toEqual(["b"])
    expect(yield* listed("nothing/")).toEqual([])
    expect(yield* listed("a/b/1/")).toEqual([])
    // UTF-8 byte order: U+FFFD (EF BF BD) sorts before U+1F600 (F0 9F 98 80), unlike UTF-16.
    expect(yield* listed("z/")).toEqual(["z/e", "z/\u00e9", "z/\uFFFD", "z/\u{1F600}"])
    const all = yield* storage.list("")
    expect(all.map((object) => object.path)).toEqual([...paths].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y))))
    for (const object of all) expect(object.sizeBytes).toBe(text(object.path).length)
  }))

  check(`list returns all of ${manyObjectCount} objects under one prefix (S3 pages)`, Effect.gen(function*() {
    const storage = yield* RemoteStorage
    const names = Array.from({ length: manyObjectCount }, (_, index) => `many/${String(index).padStart(5, "0")}`)
    yield* Effect.forEach(names, (name) => storage.put(name, bytesBody(text(name)), text(name).length), { concurrency: 16, discard: true })
    yield* storage.put("manx", bytesBody(text("x")), 1) // a neighbour the prefix must leave out
    const listed = yield* storage.list("many/")
    expect(listed.length).toBe(manyObjectCount)
    expect(listed.map((object) => object.path)).toEqual(names)
    expect(listed.every((object) => object.sizeBytes === 10)).toBe(true)
  }))

  check("put replaces an object; get of an absent one is NotFound", Effect.gen(function*() {
    const storage = yield* RemoteStorage
    expect(yield* reasonOf(storage.get("p/x"))).toBe("NotFound")
    yield* storage.put("p/x", bytesBody(text("first version")), 13)
    yield* storage.put("p/x", bytesBody(text("second")), 6)
    expect(Buffer.from(yield* storage.get("p/x")).toString()).toBe("second")
    expect(yield* storage.list("p/")).toEqual([{ path: "p/x", sizeBytes: 6 }])
  }))

  check("delete removes, and deleting an absent object succeeds", Effect.gen(function*() {
    const storage = yield* RemoteStorage
    yield* storage.put("d/x", bytesBody(text("bytes")), 5)
    yield* storage.put("d/y", bytesBody(text("bytes")), 5)
    yield* storage.delete("d/x")
    expect(yield* reasonOf(storage.get("d/x"))).toBe("NotFound")
    yield* storage.delete("d/x")
    yield* storage.delete("never/was")
    expect((yield* storage.list("d/")).map((object) => object.path)).toEqual(["d/y"])
  }))

  check("copy makes an independent object; copying an absent one is NotFound", Effect.gen(function*() {
    const storage = yield* RemoteStorage
    const lengthBytes = 1024 * 1024 + 3
    yield* storage.put("c/source", patternBody(lengthBytes, 100_000), lengthBytes)
    yield* storage.put("c/other/target", bytesBody(text("old")), 3)
    yield* storage.copy("c/source", "c/other/target")
    yield* storage.copy("c/source", "c/new/deep/target")
    expect(Buffer.compare(yield* storage.get("c/other/target"), pattern(0, lengthBytes))).toBe(0)
    expect(Buffer.compare(yield* storage.get("c/new/deep/target"), pattern(0, lengthBytes))).toBe(0)
    yield* storage.delete("c/source")
    expect((yield* storage.get("c/new/deep/target")).length).toBe(lengthBytes)
    expect(yield* reasonOf(storage.copy("c/source", "c/again"))).toBe("NotFound")
    expect(yield* reasonOf(storage.get("c/again"))).toBe("NotFound")
  }))

  check("a body shorter or longer than declared fails Permanent and leaves no object (nor harms the old one)", Effect.gen(function*() {
    const storage = yield* RemoteStorage
    expect(yield* reasonOf(storage.put("m/short", patternBody(50_000, 8192), 50_001))).toBe("Permanent")
    expect(yield* reasonOf(storage.put("m/long", patternBody(50_001, 8192), 50_000))).toBe("Permanent")
    // Too long by one byte that arrives (late) after the declared length is complete: the last
    // chunk must be held back until the body ends, or the server has the whole declared body
    // and stores it before the client sees the extra byte.
    const lateByte = Stream.fromEffect(Effect.as(Effect.sleep("300 millis"), new Uint8Array(1)))
    expect(yield* reasonOf(storage.put("m/extra", Stream.concat(patternBody(8192, 8192), lateByte), 8192))).toBe("Permanent")
    expect(yield* reasonOf(storage.put("m/empty", Stream.empty, 1))).toBe("Permanent")
    expect(yield* reasonOf(storage.put("m/zero", patternBody(1, 1), 0))).toBe("Permanent")
    yield* expectNothingWhole("m/", { "m/short": 50_001, "m/long": 50_000, "m/extra": 8192, "m/empty": 1, "m/zero": 1 })
    yield* storage.put("k/kept", bytesBody(text("original")), 8)
    expect(yield* reasonOf(storage.put("k/kept", bytesBody(text("replacement")), 5))).toBe("Permanent")
    const kept = Buffer.from(yield* storage.get("k/kept")).toString()
    if (leaky) expect(kept === "original" || kept.length < 5).toBe(true)
    else expect(kept).toBe("original")
    expect((yield* storage.list("k/")).map((object) => object.path)).toEqual(["k/kept"])
  }))

  check("a body that fails hands its own error back and leaves no object", Effect.gen(function*() {
    const storage = yield* RemoteStorage
    const body = Stream.concat(patternBody(100_000, 10_000), Stream.fail(new BodyBroke({ atBytes: 100_000 })))
    const exit = yield* Effect.exit(storage.put("f/broken", body, 200_000))
    expect(Exit.isFailure(exit) && Cause.squash(exit.cause)).toBeInstanceOf(BodyBroke)
    yield* expectNothingWhole("f/", { "f/broken": 200_000 })
  }))

  check("an interrupted put leaves no object, and the store still works after", Effect.gen(function*() {
    const storage = yield* RemoteStorage
    // A body that stalls forever after its first chunk: only interruption ends the put.
    const stalled = Stream.concat(patternBody(64 * 1024, 64 * 1024), Stream.never)
    const exit = yield* Effect.exit(Effect.timeout(storage.put("i/stalled", stalled, 128 * 1024), "300 millis"))
    expect(Exit.isFailure(exit)).toBe(true)
    yield* expectNothingWhole("i/", { "i/stalled": 128 * 1024 })
    yield* storage.put("i/after", bytesBody(text("ok")), 2)
    expect(Buffer.from(yield* storage.get("i/after")).toString()).toBe("ok")
  }))

  check("bad paths are refused as Permanent by every operation", Effect.gen(function*() {
    const storage = yield* RemoteStorage
    yield* storage.put("good", bytesBody(text("g")), 1)
    for (const bad of ["", "/abs", "a//b", "a/./b", "a/../b", "a/", "..", "./x"]) {
      expect(yield* reasonOf(storage.put(bad, bytesBody(text("x")), 1))).toBe("Permanent")
      expect(yield* reasonOf(storage.get(bad))).toBe("Permanent")
      expect(yield* reasonOf(storage.delete(bad))).toBe("Permanent")
      expect(yield* reasonOf(storage.copy("good", bad))).toBe("Permanent")
      expect(yield* reasonOf(storage.copy(bad, "good2"))).toBe("Permanent")
    }
    expect(yield* reasonOf(storage.put("neg", Stream.empty, -1))).toBe("Permanent")
    expect(yield* reasonOf(storage.put("frac", Stream.empty, 0.5))).toBe("Permanent")
    expect((yield* storage.list("")).map((object) => object.path)).toEqual(["good"])
  }))
}

class BodyBroke extends Schema.TaggedError<BodyBroke>()("BodyBroke", { atBytes: Schema.Number }) {}

/** The reason a call failed with; fails the test when it succeeds or fails otherwise. */
export function reasonOf<A>(effect: Effect.Effect<A, RemoteStorageError>): Effect.Effect<RemoteStorageErrorReason> {
  return Effect.flatMap(Effect.exit(effect), (exit) => {
    if (Exit.isSuccess(exit)) return Effect.die(new Error(`expected a RemoteStorageError, got success: ${String(exit.value)}`))
    const failure = exit.cause.reasons.find((reason) => reason._tag === "Fail")
    if (failure === undefined || failure._tag !== "Fail") return Effect.die(new Error(`expected a failure, got ${Cause.pretty(exit.cause)}`))
    return Effect.succeed(failure.error.reason)
  })
}

/** Byte `i` of every test body: position-dependent, so a shifted or reordered chunk shows. */
const patternByte = (index: number): number => (index * 131 + (index >>> 12) * 7 + 17) & 0xff

export function pattern(offsetBytes: number, length: number): Uint8Array {
  const bytes = new Uint8Array(length)
  for (let i = 0; i < length; i++) bytes[i] = patternByte(offsetBytes + i)
  return bytes
}

/** `lengthBytes` of the pattern, made chunk by chunk as the consumer pulls. */
export function patternBody(lengthBytes: number, chunkBytes: number): Stream.Stream<Uint8Array> {
  return Stream.unfold(0, (offsetBytes) => {
    if (offsetBytes >= lengthBytes) return Effect.succeed(undefined)
    const length = Math.min(chunkBytes, lengthBytes - offsetBytes)
    return Effect.succeed([pattern(offsetBytes, length), offsetBytes + length] as const)
  })
}

const text = (value: string): Uint8Array => new TextEncoder().encode(value)
