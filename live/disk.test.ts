// Goal: the live Disk does what core/io/disk.ts promises, on a real file system. Method: each
// test gets a fresh directory under os.tmpdir(), drives the Disk service through Effects, and
// checks the results against node:fs directly where an independent view helps.
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Effect, Exit } from "effect"
import { afterEach, beforeEach, describe, expect, test } from "vitest"
import { Disk, DiskError } from "../core/io/disk.js"
import { liveDiskLayer, makeLiveDisk } from "./disk.js"

let root = ""
beforeEach(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), "sk-live-disk-"))
})
afterEach(() => {
  fs.rmSync(root, { recursive: true, force: true })
})

const disk = makeLiveDisk()
const run = <A, E>(effect: Effect.Effect<A, E>): Promise<A> => Effect.runPromise(effect)
const bytes = (...values: number[]): Uint8Array => Uint8Array.from(values)

/** Runs an effect expected to fail with a DiskError and returns that error. */
async function failure<A>(effect: Effect.Effect<A, DiskError>): Promise<DiskError> {
  const exit = await Effect.runPromiseExit(effect)
  if (Exit.isSuccess(exit)) throw new Error(`expected a DiskError, got ${String(exit.value)}`)
  const error = exit.cause.reasons.find((reason) => reason._tag === "Fail")
  if (error === undefined || error._tag !== "Fail") throw new Error("expected a failure, got a defect or interrupt")
  return error.error
}

describe("files", () => {
  test("write at offsets, read back, size", async () => {
    const file = await run(disk.open(`${root}/a`, { create: true }))
    await run(file.write(0, bytes(1, 2, 3, 4)))
    await run(file.write(2, bytes(9, 9, 9)))
    expect(await run(file.size)).toBe(5)
    expect([...await run(file.read(0, 5))]).toEqual([1, 2, 9, 9, 9])
    expect([...await run(file.read(1, 2))]).toEqual([2, 9])
    // Short only at EOF; at or past EOF the read is empty.
    expect([...await run(file.read(3, 100))]).toEqual([9, 9])
    expect((await run(file.read(5, 10))).length).toBe(0)
    expect((await run(file.read(50, 10))).length).toBe(0)
    await run(file.datasync)
    await run(file.sync)
    await run(file.close)
    expect([...fs.readFileSync(`${root}/a`)]).toEqual([1, 2, 9, 9, 9])
  })

  test("a write past the end fills the gap with zeros", async () => {
    const file = await run(disk.open(`${root}/gap`, { create: true }))
    await run(file.write(0, bytes(7)))
    await run(file.write(10, bytes(8, 8)))
    expect([...await run(file.read(0, 100))]).toEqual([7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 8])
    await run(file.close)
  })

  test("a large write lands whole (pwrite loop)", async () => {
    const data = new Uint8Array(8 * 1024 * 1024 + 13)
    for (let i = 0; i < data.length; i++) data[i] = (i * 31 + 7) & 0xff
    const file = await run(disk.open(`${root}/big`, { create: true }))
    await run(file.write(4096, data.subarray(1)))
    const back = await run(file.read(4096, data.length))
    expect(back.length).toBe(data.length - 1)
    expect(Buffer.compare(back, data.subarray(1))).toBe(0)
    await run(file.close)
  })

  test("truncate shrinks and extends with zeros", async () => {
    const file = await run(disk.open(`${root}/t`, { create: true }))
    await run(file.write(0, bytes(1, 2, 3, 4, 5)))
    await run(file.truncate(2))
    expect([...await run(file.read(0, 10))]).toEqual([1, 2])
    await run(file.truncate(6))
    expect(await run(file.size)).toBe(6)
    expect([...await run(file.read(0, 10))]).toEqual([1, 2, 0, 0, 0, 0])
    await run(file.close)
  })

  test("readFile reads the whole file", async () => {
    fs.writeFileSync(`${root}/r`, Buffer.from("control"))
    expect(Buffer.from(await run(disk.readFile(`${root}/r`))).toString()).toBe("control")
  })

  test("noSync keeps the data path and skips only the syncs", async () => {
    const unsynced = makeLiveDisk({ noSync: true })
    const file = await run(unsynced.open(`${root}/n`, { create: true }))
    await run(file.write(0, bytes(5)))
    await run(file.datasync)
    await run(file.sync)
    await run(unsynced.syncDirectory(root))
    expect([...await run(file.read(0, 1))]).toEqual([5])
    await run(file.close)
    expect((await failure(file.datasync)).reason).toBe("Closed")
  })

  test("close is idempotent and waits for requests in flight", async () => {
    fs.writeFileSync(`${root}/c`, Buffer.alloc(1024 * 1024, 3))
    // A read past EOF takes two preads (data, then 0 bytes); a close that did not wait for the
    // request would land between them and the second pread would hit a closed fd.
    for (let round = 0; round < 20; round++) {
      const file = await run(disk.open(`${root}/c`))
      const [read] = await Promise.all([run(Effect.result(file.read(0, 2 * 1024 * 1024))), run(file.close), run(file.close)])
      expect(read._tag === "Success" && read.success.length).toBe(1024 * 1024)
    }
  })
})

describe("directories", () => {
  test("mkdir -p, list sorted by bytes, stat, rename, unlink, rmdir, syncDirectory", async () => {
    await run(disk.mkdir(`${root}/d/e/f`))
    await run(disk.mkdir(`${root}/d/e/f`)) // exists: fine
    for (const name of ["b", "a", "B", "\u00e9", "a0"]) fs.writeFileSync(`${root}/d/${name}`, name)
    expect(await run(disk.list(`${root}/d`))).toEqual([
      { name: "B", kind: "file" },
      { name: "a", kind: "file" },
      { name: "a0", kind: "file" },
      { name: "b", kind: "file" },
      { name: "e", kind: "directory" },
      { name: "\u00e9", kind: "file" }
    ])
    expect(await run(disk.stat(`${root}/d/a0`))).toEqual({ kind: "file", sizeBytes: 2 })
    expect(await run(disk.stat(`${root}/d/e`))).toMatchObject({ kind: "directory" })
    expect(await run(disk.stat(`${root}/d/missing`))).toBeUndefined()

    await run(disk.rename(`${root}/d/a`, `${root}/d/b`)) // replaces b atomically
    expect(fs.readFileSync(`${root}/d/b`, "utf8")).toBe("a")
    expect(await run(disk.stat(`${root}/d/a`))).toBeUndefined()
    await run(disk.syncDirectory(`${root}/d`))

    await run(disk.unlink(`${root}/d/b`))
    expect(fs.existsSync(`${root}/d/b`)).toBe(false)
    await run(disk.rmdir(`${root}/d/e/f`))
    expect(fs.existsSync(`${root}/d/e/f`)).toBe(false)
  })

  test("list resolves symlinks to what they point at", async () => {
    fs.mkdirSync(`${root}/real`)
    fs.symlinkSync(`${root}/real`, `${root}/link`)
    fs.symlinkSync(`${root}/nowhere`, `${root}/dangling`)
    expect(await run(disk.list(root))).toEqual([
      { name: "dangling", kind: "file" },
      { name: "link", kind: "directory" },
      { name: "real", kind: "directory" }
    ])
  })

  test("relative paths resolve against the working directory", async () => {
    const relative = path.relative(process.cwd(), `${root}/rel`)
    await run(Effect.provide(Disk.use((d) => d.mkdir(relative)), liveDiskLayer()))
    expect(fs.statSync(`${root}/rel`).isDirectory()).toBe(true)
  })
})

describe("errors", () => {
  test("open of a missing file without create is NotFound", async () => {
    const error = await failure(disk.open(`${root}/missing`))
    expect(error).toBeInstanceOf(DiskError)
    expect(error).toMatchObject({ reason: "NotFound", operation: "open", path: `${root}/missing` })
    expect(error.message).toContain("ENOENT")
  })

  test("exclusive create of an existing file is AlreadyExists", async () => {
    fs.writeFileSync(`${root}/x`, "x")
    expect((await failure(disk.open(`${root}/x`, { create: true, exclusive: true }))).reason).toBe("AlreadyExists")
    // Without exclusive the same open succeeds and keeps the content.
    const file = await run(disk.open(`${root}/x`, { create: true }))
    expect(await run(file.size)).toBe(1)
    await run(file.close)
  })

  test("rmdir of a non-empty directory is DirectoryNotEmpty", async () => {
    fs.mkdirSync(`${root}/full`)
    fs.writeFileSync(`${root}/full/f`, "")
    expect(await failure(disk.rmdir(`${root}/full`))).toMatchObject({ reason: "DirectoryNotEmpty", operation: "rmdir" })
  })

  test("use after close is Closed", async () => {
    const file = await run(disk.open(`${root}/closed`, { create: true }))
    await run(file.close)
    for (const effect of [file.read(0, 1), file.write(0, bytes(1)), file.size, file.truncate(0), file.sync, file.datasync]) {
      expect((await failure(effect)).reason).toBe("Closed")
    }
  })

  test("directory and not-a-directory mistakes", async () => {
    fs.mkdirSync(`${root}/dir`)
    fs.writeFileSync(`${root}/file`, "")
    expect((await failure(disk.open(`${root}/dir`))).reason).toBe("IsADirectory")
    expect((await failure(disk.list(`${root}/file`))).reason).toBe("NotADirectory")
    expect((await failure(disk.syncDirectory(`${root}/file`))).reason).toBe("NotADirectory")
    expect((await failure(disk.unlink(`${root}/missing`))).reason).toBe("NotFound")
    expect((await failure(disk.rename(`${root}/missing`, `${root}/other`))).reason).toBe("NotFound")
    expect((await failure(disk.readFile(`${root}/missing`))).reason).toBe("NotFound")
  })

  test("a negative offset is a defect, not a DiskError", async () => {
    const file = await run(disk.open(`${root}/neg`, { create: true }))
    const exit = await Effect.runPromiseExit(file.read(-1, 1))
    expect(Exit.isFailure(exit) && exit.cause.reasons.some((reason) => reason._tag === "Die")).toBe(true)
    await run(file.close)
  })
})
