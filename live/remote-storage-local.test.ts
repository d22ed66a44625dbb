// Goal: the local-directory RemoteStorage keeps the shared contract (the conformance suite)
// and its own promises: objects are plain files under the root, uploads go through `.tmp` and
// leave nothing there, `.tmp` is neither listed nor writable as an object, and errno codes map
// to the right reasons. Method: a fresh directory under os.tmpdir() per test, removed after;
// node:fs gives the independent view of what is on disk.
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Effect, Stream } from "effect"
import { afterAll, describe, expect, test } from "vitest"
import { bytesBody, RemoteStorage } from "../core/io/remote-storage.js"
import { pattern, patternBody, reasonOf, remoteStorageConformance } from "./remote-storage-conformance.js"
import { LOCAL_TEMP_DIRECTORY, localRemoteStorageLayer, makeLocalRemoteStorage } from "./remote-storage-local.js"

const parent = fs.mkdtempSync(path.join(os.tmpdir(), "sk-remote-local-"))
afterAll(() => {
  fs.rmSync(parent, { recursive: true, force: true })
})
let storeCount = 0
/** A root that does not exist yet: the store must create it (and its parents) itself. */
const freshRoot = (): string => path.join(parent, `store-${++storeCount}`, "nested", "root")

const run = <A, E>(effect: Effect.Effect<A, E>): Promise<A> => Effect.runPromise(effect)
const text = (value: string): Uint8Array => new TextEncoder().encode(value)

describe("conformance", () => {
  remoteStorageConformance(() => localRemoteStorageLayer(freshRoot()))
})

describe("on disk", () => {
  test("objects are files at their path; uploads leave nothing in .tmp", async () => {
    const root = freshRoot()
    const storage = makeLocalRemoteStorage(root)
    await run(storage.put("tenant/timeline/seg", patternBody(200_000, 30_000), 200_000))
    await run(storage.copy("tenant/timeline/seg", "tenant/copy"))
    expect(Buffer.compare(fs.readFileSync(path.join(root, "tenant", "timeline", "seg")), pattern(0, 200_000))).toBe(0)
    expect(fs.readFileSync(path.join(root, "tenant", "copy")).length).toBe(200_000)
    expect(fs.readdirSync(path.join(root, LOCAL_TEMP_DIRECTORY))).toEqual([])
  })

  test("failed and interrupted puts leave no temp file behind", async () => {
    const root = freshRoot()
    const storage = makeLocalRemoteStorage(root)
    expect(await run(reasonOf(storage.put("x/short", patternBody(10, 10), 11)))).toBe("Permanent")
    expect(await run(reasonOf(storage.put("x/long", patternBody(12, 10), 11)))).toBe("Permanent")
    await run(Effect.exit(Effect.timeout(storage.put("x/stalled", Stream.concat(patternBody(10, 10), Stream.never), 20), "100 millis")))
    expect(fs.readdirSync(path.join(root, LOCAL_TEMP_DIRECTORY))).toEqual([])
    expect(fs.existsSync(path.join(root, "x"))).toBe(false)
  })

  test(".tmp is reserved: never listed, never an object", async () => {
    const root = freshRoot()
    const storage = makeLocalRemoteStorage(root)
    await run(storage.put("a", bytesBody(text("a")), 1))
    // A leftover of a crashed upload.
    fs.writeFileSync(path.join(root, LOCAL_TEMP_DIRECTORY, "123-1"), "partial")
    expect((await run(storage.list(""))).map((object) => object.path)).toEqual(["a"])
    expect(await run(storage.list(".tmp"))).toEqual([])
    expect(await run(storage.list(".tmp/"))).toEqual([])
    expect(await run(reasonOf(storage.put(".tmp/x", bytesBody(text("x")), 1)))).toBe("Permanent")
    expect(await run(reasonOf(storage.get(".tmp/123-1")))).toBe("Permanent")
    expect(await run(reasonOf(storage.delete(".tmp/123-1")))).toBe("Permanent")
    expect(fs.existsSync(path.join(root, LOCAL_TEMP_DIRECTORY, "123-1"))).toBe(true)
    // Deeper ".tmp" components are ordinary names.
    await run(storage.put("t/.tmp", bytesBody(text("y")), 1))
    expect((await run(storage.list("t/"))).map((object) => object.path)).toEqual(["t/.tmp"])
  })

  test("a list prefix cannot walk out of the root", async () => {
    const root = freshRoot()
    const storage = makeLocalRemoteStorage(root)
    await run(storage.put("in", bytesBody(text("in")), 2))
    fs.writeFileSync(path.join(root, "..", "outside"), "out")
    for (const bad of ["../", "../o", "/", "/etc/", "a//b", "./", "a/../"]) {
      expect(await run(reasonOf(storage.list(bad)))).toBe("Permanent")
    }
    // The last part only filters names, so dots there are fine.
    expect(await run(storage.list(".."))).toEqual([])
  })

  test("a missing root lists empty and reads NotFound", async () => {
    const storage = makeLocalRemoteStorage(freshRoot())
    expect(await run(storage.list(""))).toEqual([])
    expect(await run(reasonOf(storage.get("a/b")))).toBe("NotFound")
    await run(storage.delete("a/b"))
  })

  test("a file where a directory is needed: reads NotFound, writes Permanent", async () => {
    const storage = makeLocalRemoteStorage(freshRoot())
    await run(storage.put("a", bytesBody(text("a")), 1))
    expect(await run(reasonOf(storage.get("a/b")))).toBe("NotFound")
    expect(await run(storage.list("a/"))).toEqual([])
    await run(storage.delete("a/b"))
    expect(await run(reasonOf(storage.put("a/b", bytesBody(text("b")), 1)))).toBe("Permanent")
    // A directory is no object either.
    await run(storage.put("d/x", bytesBody(text("x")), 1))
    expect(await run(reasonOf(storage.get("d")))).toBe("NotFound")
    expect(await run(reasonOf(storage.copy("d", "e")))).toBe("NotFound")
    await run(storage.delete("d"))
    expect((await run(storage.list(""))).map((object) => object.path)).toEqual(["a", "d/x"])
  })

  // Root ignores permission bits, so the check means nothing there.
  test.skipIf(process.getuid?.() === 0)("a directory without write permission fails Permanent (EACCES)", async () => {
    const root = freshRoot()
    const storage = makeLocalRemoteStorage(root)
    await run(storage.put("ro/x", bytesBody(text("x")), 1))
    fs.chmodSync(path.join(root, "ro"), 0o555)
    try {
      expect(await run(reasonOf(storage.put("ro/y", bytesBody(text("y")), 1)))).toBe("Permanent")
      expect(await run(reasonOf(storage.delete("ro/x")))).toBe("Permanent")
    } finally {
      fs.chmodSync(path.join(root, "ro"), 0o755)
    }
  })

  test("an unusable root is an error, not a crash: a root that is a file", async () => {
    const file = path.join(parent, `plain-file-${++storeCount}`)
    fs.writeFileSync(file, "not a directory")
    const storage = makeLocalRemoteStorage(file)
    expect(await run(reasonOf(storage.put("a", bytesBody(text("a")), 1)))).toBe("Permanent")
    expect(await run(reasonOf(storage.get("a")))).toBe("NotFound")
    expect(await run(storage.list(""))).toEqual([])
  })

  test("the layer provides the same store", async () => {
    const root = freshRoot()
    await run(Effect.provide(
      Effect.gen(function*() {
        const storage = yield* RemoteStorage
        yield* storage.put("via/layer", bytesBody(text("v")), 1)
      }),
      localRemoteStorageLayer(root)
    ))
    expect(fs.readFileSync(path.join(root, "via", "layer"), "utf8")).toBe("v")
  })
})
