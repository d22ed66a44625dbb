import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as fsp from "node:fs/promises"
import * as nodePath from "node:path"
import { Effect, Exit, Layer, Stream } from "effect"
import { assert } from "../core/assert.js"
import { type ByteRange, RemoteStorage, RemoteStorageError, type RemoteObject, type RemoteStorageErrorReason, remotePathProblem } from "../core/io/remote-storage.js"

/**
 * Object storage in a local directory (Neon's `LocalFs`, the embedded default): an object is
 * the file `<root>/<RemotePath>`. Writes go to `<root>/.tmp/<unique>` first, are fsynced and
 * renamed into place, and the directories involved are fsynced, so an object is either absent
 * or whole after a crash, and a success means it survives one (core/io/remote-storage.ts).
 *
 * Several processes may share one root (the safekeepers of `sk local`): temp names carry the
 * pid, a per-process counter and random bytes, and nothing removes another writer's temp files. A temp file
 * left by a crash stays in `.tmp` (never listed); removing it is safe once no writer runs.
 */
export const LOCAL_TEMP_DIRECTORY = ".tmp"

/** A single get returns at most this much (segments are 16 MiB; a Buffer cannot pass 4 GiB). */
export const LOCAL_GET_BYTES_MAX = 1024 * 1024 * 1024
/** A put may declare at most this many bytes: it must fit a later get. */
export const LOCAL_PUT_BYTES_MAX = LOCAL_GET_BYTES_MAX
/** A list stops with a Permanent error past this many objects (a runaway prefix, not a timeline). */
export const LOCAL_LIST_OBJECTS_MAX = 1_000_000
assert(LOCAL_PUT_BYTES_MAX <= LOCAL_GET_BYTES_MAX, "every stored object can be read back whole")

export function makeLocalRemoteStorage(root: string): RemoteStorage["Service"] {
  const tempDirectory = nodePath.join(root, LOCAL_TEMP_DIRECTORY)
  const fileOf = (path: string): string => nodePath.join(root, ...path.split("/"))
  let tempCount = 0
  // The random part keeps a restarted process that got an old pid back (or a writer in another
  // pid namespace) off the names of leftover temp files.
  const tempFileOf = (): string => nodePath.join(tempDirectory, `${process.pid}-${++tempCount}-${crypto.randomBytes(6).toString("hex")}`)

  /** Moves a fully written and synced temp file into place, durably. */
  const publish = (operation: string, path: string, tempFile: string): Effect.Effect<void, RemoteStorageError> =>
    Effect.gen(function*() {
      const target = fileOf(path)
      yield* makeDirectoriesDurably(operation, path, nodePath.dirname(target))
      yield* fsStep(operation, path, () => fsp.rename(tempFile, target))
      yield* syncDirectory(operation, path, nodePath.dirname(target))
    })

  /** Runs `write` to fill a fresh temp file, then publishes it; any failure removes the temp file. */
  const viaTempFile = <E>(
    operation: string,
    path: string,
    write: (tempFile: string) => Effect.Effect<void, E | RemoteStorageError>
  ): Effect.Effect<void, E | RemoteStorageError> =>
    Effect.gen(function*() {
      yield* makeDirectoriesDurably(operation, path, tempDirectory)
      const tempFile = tempFileOf()
      yield* write(tempFile).pipe(
        Effect.andThen(publish(operation, path, tempFile)),
        Effect.onExit((exit) => Exit.isSuccess(exit) ? Effect.void : removeQuietly(tempFile))
      )
    })

  return RemoteStorage.of({
    put: <E>(path: string, body: Stream.Stream<Uint8Array, E>, lengthBytes: number) =>
      Effect.gen(function*() {
        yield* checkObjectPath("put", path)
        if (!Number.isSafeInteger(lengthBytes) || lengthBytes < 0 || lengthBytes > LOCAL_PUT_BYTES_MAX) {
          return yield* permanent("put", path, `declared length ${lengthBytes} is not an integer in [0, ${LOCAL_PUT_BYTES_MAX}]`)
        }
        yield* viaTempFile<E>("put", path, (tempFile) =>
          Effect.acquireUseRelease(
            // "wx": a temp name is never reused; meeting one means another process picked it.
            fsStep("put", path, () => fsp.open(tempFile, "wx"), TEMP_OVERRIDES),
            (handle) =>
              Effect.gen(function*() {
                let writtenBytes = 0
                yield* Stream.runForEach(body, (chunk) => {
                  // Refused before writing, so an over-long body never lands even in the temp file.
                  if (writtenBytes + chunk.length > lengthBytes) return lengthMismatch(path, lengthBytes, `more than ${lengthBytes}`)
                  const offsetBytes = writtenBytes
                  writtenBytes += chunk.length
                  return writeFully("put", path, handle, chunk, offsetBytes)
                })
                if (writtenBytes !== lengthBytes) return yield* lengthMismatch(path, lengthBytes, String(writtenBytes))
                yield* fsStep("put", path, () => handle.sync())
              }),
            (handle) => closeQuietly(handle)
          ))
      }),

    get: (path, range) =>
      Effect.gen(function*() {
        yield* checkObjectPath("get", path)
        if (range !== undefined) yield* checkRange(path, range)
        const file = fileOf(path)
        return yield* Effect.acquireUseRelease(
          fsStep("get", path, () => fsp.open(file, "r"), READ_OVERRIDES),
          (handle) =>
            Effect.gen(function*() {
              const stats = yield* fsStep("get", path, () => handle.stat(), READ_OVERRIDES)
              if (!stats.isFile()) return yield* notFound("get", path, "not a file")
              const startBytes = Math.min(range?.startBytes ?? 0, stats.size)
              const endBytes = Math.min(range?.endBytes ?? stats.size, stats.size)
              if (endBytes - startBytes > LOCAL_GET_BYTES_MAX) {
                return yield* permanent("get", path, `range of ${endBytes - startBytes} bytes is over ${LOCAL_GET_BYTES_MAX}`)
              }
              return yield* readFully(path, handle, startBytes, endBytes - startBytes)
            }),
          (handle) => closeQuietly(handle)
        )
      }),

    list: (prefix) =>
      Effect.gen(function*() {
        // The directory part of a prefix names a directory, so it must be a RemotePath (no
        // `..` walking out of root); the last part only filters names.
        const slash = prefix.lastIndexOf("/")
        const directoryPart = slash < 0 ? "" : prefix.slice(0, slash)
        const problem = directoryPart === "" && slash < 0 ? undefined : remotePathProblem(directoryPart)
        if (problem !== undefined) return yield* permanent("list", prefix, `bad prefix: ${problem}`)
        if (firstComponent(directoryPart) === LOCAL_TEMP_DIRECTORY) return []
        return yield* listUnder(root, directoryPart, prefix)
      }),

    delete: (path) =>
      Effect.gen(function*() {
        yield* checkObjectPath("delete", path)
        const file = fileOf(path)
        // Absent (or a directory: no object has that name) is success: deletes are retried.
        yield* fsStep("delete", path, () => fsp.unlink(file), READ_OVERRIDES).pipe(
          Effect.catchIf((error) => error.reason === "NotFound", () => Effect.void)
        )
        // Empty parent directories stay: removing one could race a put that just created it.
        // The directory may be gone, or a file (no object could have been there): nothing to sync.
        yield* syncDirectory("delete", path, nodePath.dirname(file), READ_OVERRIDES).pipe(
          Effect.catchIf((error) => error.reason === "NotFound", () => Effect.void)
        )
      }),

    copy: (from, to) =>
      Effect.gen(function*() {
        yield* checkObjectPath("copy", from)
        yield* checkObjectPath("copy", to)
        const source = fileOf(from)
        yield* viaTempFile<never>("copy", to, (tempFile) =>
          Effect.gen(function*() {
            yield* fsStep("copy", from, () => fsp.copyFile(source, tempFile, fs.constants.COPYFILE_EXCL), READ_OVERRIDES)
            yield* Effect.acquireUseRelease(
              fsStep("copy", to, () => fsp.open(tempFile, "r+"), TEMP_OVERRIDES),
              (handle) => fsStep("copy", to, () => handle.sync()),
              (handle) => closeQuietly(handle)
            )
          }))
      })
  })
}

export const localRemoteStorageLayer = (root: string): Layer.Layer<RemoteStorage> => Layer.succeed(RemoteStorage, makeLocalRemoteStorage(root))

// ---------------------------------------------------------------------------------------------
// Helpers

/** How errno codes map to reasons; codes absent here are Permanent (an unknown error is not retried blindly). */
const REASON_BY_CODE: Readonly<Record<string, RemoteStorageErrorReason>> = {
  ENOENT: "NotFound",
  ENOSPC: "Transient", // space may be freed (WAL removal, an operator)
  EDQUOT: "Transient",
  EIO: "Transient",
  EAGAIN: "Transient",
  EBUSY: "Transient",
  EINTR: "Transient",
  EMFILE: "Transient", // too many open files: others will close
  ENFILE: "Transient",
  ETIMEDOUT: "Transient", // a network file system
  ESTALE: "Transient",
  EACCES: "Permanent",
  EPERM: "Permanent",
  EROFS: "Permanent",
  ENOTDIR: "Permanent",
  EISDIR: "Permanent",
  ENAMETOOLONG: "Permanent",
  EEXIST: "Permanent",
  EINVAL: "Permanent"
}
type ReasonOverrides = Readonly<Record<string, RemoteStorageErrorReason>>
/** Reading an object: a path through a file, or a directory, names no object. */
const READ_OVERRIDES: ReasonOverrides = { ENOTDIR: "NotFound", EISDIR: "NotFound" }
/** The temp area vanishing under us (an operator cleaning it) is worth a retry, not a NotFound. */
const TEMP_OVERRIDES: ReasonOverrides = { ENOENT: "Transient", EEXIST: "Transient" }

/**
 * One file-system step. Uninterruptible: the kernel cannot cancel it, and an interrupted caller
 * must not close a handle a request still uses; interruption lands between steps.
 */
function fsStep<A>(operation: string, path: string, run: () => Promise<A>, overrides?: ReasonOverrides): Effect.Effect<A, RemoteStorageError> {
  return Effect.uninterruptible(Effect.tryPromise({ try: run, catch: (cause) => storageError(operation, path, cause, overrides) }))
}

function storageError(operation: string, path: string, cause: unknown, overrides?: ReasonOverrides): RemoteStorageError {
  const code = errnoCode(cause)
  const reason = (code !== undefined ? overrides?.[code] ?? REASON_BY_CODE[code] : undefined) ?? "Permanent"
  const message = cause instanceof Error ? cause.message : String(cause)
  return new RemoteStorageError({ reason, operation, path, message })
}

function errnoCode(cause: unknown): string | undefined {
  if (typeof cause !== "object" || cause === null || !("code" in cause)) return undefined
  return typeof cause.code === "string" ? cause.code : undefined
}

const permanent = (operation: string, path: string, message: string): Effect.Effect<never, RemoteStorageError> =>
  Effect.fail(new RemoteStorageError({ reason: "Permanent", operation, path, message }))

const notFound = (operation: string, path: string, message: string): Effect.Effect<never, RemoteStorageError> =>
  Effect.fail(new RemoteStorageError({ reason: "NotFound", operation, path, message }))

const lengthMismatch = (path: string, declaredBytes: number, actual: string): Effect.Effect<never, RemoteStorageError> =>
  permanent("put", path, `body length differs from the declared ${declaredBytes} bytes: got ${actual}`)

const firstComponent = (path: string): string => path.split("/")[0] ?? ""

function checkObjectPath(operation: string, path: string): Effect.Effect<void, RemoteStorageError> {
  const problem = remotePathProblem(path)
  if (problem !== undefined) return permanent(operation, path, `bad remote path: ${problem}`)
  if (firstComponent(path) === LOCAL_TEMP_DIRECTORY) return permanent(operation, path, `${LOCAL_TEMP_DIRECTORY} is reserved for uploads in progress`)
  if (path.includes("\0")) return permanent(operation, path, "bad remote path: NUL byte")
  return Effect.void
}

function checkRange(path: string, range: ByteRange): Effect.Effect<void, RemoteStorageError> {
  const { startBytes, endBytes } = range
  if (!Number.isSafeInteger(startBytes) || startBytes < 0) return permanent("get", path, `range start ${startBytes} is not a non-negative integer`)
  if (endBytes !== undefined && (!Number.isSafeInteger(endBytes) || endBytes < startBytes)) {
    return permanent("get", path, `range end ${endBytes} is not an integer at or after the start ${startBytes}`)
  }
  return Effect.void
}

/** pwrite until every byte is written: a short write is not an error. */
function writeFully(operation: string, path: string, handle: fsp.FileHandle, data: Uint8Array, offsetBytes: number): Effect.Effect<void, RemoteStorageError> {
  return fsStep(operation, path, async () => {
    let writtenBytes = 0
    while (writtenBytes < data.length) {
      const { bytesWritten } = await handle.write(data, writtenBytes, data.length - writtenBytes, offsetBytes + writtenBytes)
      // Zero bytes for a non-empty buffer would loop forever: the device is not taking data.
      if (bytesWritten === 0) throw Object.assign(new Error("EIO: pwrite wrote 0 bytes"), { code: "EIO" })
      writtenBytes += bytesWritten
    }
  })
}

/** pread until `length` bytes or end of file. Puts rename a new file into place, so an open object never changes under us. */
function readFully(path: string, handle: fsp.FileHandle, offsetBytes: number, length: number): Effect.Effect<Uint8Array, RemoteStorageError> {
  return fsStep("get", path, async () => {
    const buffer = new Uint8Array(length)
    let readBytes = 0
    while (readBytes < length) {
      const { bytesRead } = await handle.read(buffer, readBytes, length - readBytes, offsetBytes + readBytes)
      if (bytesRead === 0) break
      readBytes += bytesRead
    }
    return readBytes === length ? buffer : buffer.subarray(0, readBytes)
  })
}

const closeQuietly = (handle: fsp.FileHandle): Effect.Effect<void> =>
  // A close error is not reported: durability comes from fsync, never from close.
  Effect.uninterruptible(Effect.promise(() => handle.close().catch(() => undefined)))

const removeQuietly = (file: string): Effect.Effect<void> =>
  // Best effort: the temp file never became an object, so leaving it costs only space.
  Effect.uninterruptible(Effect.promise(() => fsp.unlink(file).catch(() => undefined)))

function syncDirectory(operation: string, path: string, directory: string, overrides?: ReasonOverrides): Effect.Effect<void, RemoteStorageError> {
  return fsStep(operation, path, async () => {
    // O_DIRECTORY refuses a file given by mistake; O_RDONLY is enough for fsync on Linux.
    const handle = await fsp.open(directory, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY)
    try {
      await handle.sync()
    } finally {
      await handle.close().catch(() => undefined)
    }
  }, overrides)
}

/** Directory levels a path may have; deeper means a bad root, not an object name. */
const DIRECTORY_DEPTH_MAX = 4096

/**
 * mkdir -p, durably: every directory this call creates is fsynced into its parent, so an
 * object renamed into it later is reachable after a crash.
 */
function makeDirectoriesDurably(operation: string, path: string, directory: string): Effect.Effect<void, RemoteStorageError> {
  return fsStep(operation, path, async () => {
    const missing: string[] = []
    let current = nodePath.resolve(directory)
    for (let depth = 0; !(await isDirectory(current)); depth++) {
      if (depth >= DIRECTORY_DEPTH_MAX) throw Object.assign(new Error(`ENAMETOOLONG: deeper than ${DIRECTORY_DEPTH_MAX} levels`), { code: "ENAMETOOLONG" })
      missing.unshift(current)
      const parent = nodePath.dirname(current)
      if (parent === current) break
      current = parent
    }
    for (const created of missing) {
      // EEXIST: another writer made it meanwhile; syncing its parent below is still ours to do.
      await fsp.mkdir(created).catch((error: unknown) => {
        if (errnoCode(error) !== "EEXIST") throw error
      })
    }
    for (const created of missing) {
      const handle = await fsp.open(nodePath.dirname(created), fs.constants.O_RDONLY | fs.constants.O_DIRECTORY)
      try {
        await handle.sync()
      } finally {
        await handle.close().catch(() => undefined)
      }
    }
  })
}

async function isDirectory(directory: string): Promise<boolean> {
  try {
    return (await fsp.stat(directory)).isDirectory()
  } catch (error) {
    if (errnoCode(error) === "ENOENT") return false
    throw error
  }
}

/**
 * Every object under `<root>/<directoryPart>` whose path starts with `prefix`, sorted by path
 * in byte order. Walks with an explicit stack (no recursion) and enters only directories whose
 * path can still match.
 */
function listUnder(root: string, directoryPart: string, prefix: string): Effect.Effect<ReadonlyArray<RemoteObject>, RemoteStorageError> {
  return fsStep("list", prefix, async () => {
    const objects: RemoteObject[] = []
    const pending: string[] = [directoryPart]
    while (pending.length > 0) {
      const relative = pending.pop() ?? ""
      let entries: fs.Dirent[]
      try {
        entries = await fsp.readdir(relative === "" ? root : nodePath.join(root, ...relative.split("/")), { withFileTypes: true })
      } catch (error) {
        // Nothing under a missing directory (or under a file, for a prefix through it).
        const code = errnoCode(error)
        if (code === "ENOENT" || code === "ENOTDIR") continue
        throw error
      }
      for (const entry of entries) {
        const child = relative === "" ? entry.name : `${relative}/${entry.name}`
        if (relative === "" && entry.name === LOCAL_TEMP_DIRECTORY) continue
        if (entry.isDirectory()) {
          const asDirectory = `${child}/`
          if (asDirectory.startsWith(prefix) || prefix.startsWith(asDirectory)) pending.push(child)
        } else if (entry.isFile() && child.startsWith(prefix)) {
          const sizeBytes = await fileSize(nodePath.join(root, ...child.split("/")))
          if (sizeBytes === undefined) continue // deleted while we listed
          if (objects.length >= LOCAL_LIST_OBJECTS_MAX) {
            throw Object.assign(new Error(`more than ${LOCAL_LIST_OBJECTS_MAX} objects under ${JSON.stringify(prefix)}`), { code: "EOVERFLOW" })
          }
          objects.push({ path: child, sizeBytes })
        }
      }
    }
    // Byte order of UTF-8, as S3 lists; JS string order differs for characters past U+FFFF.
    const keyed = objects.map((object) => ({ object, key: Buffer.from(object.path) }))
    return keyed.sort((a, b) => Buffer.compare(a.key, b.key)).map(({ object }) => object)
  })
}

async function fileSize(file: string): Promise<number | undefined> {
  try {
    return (await fsp.stat(file)).size
  } catch (error) {
    if (errnoCode(error) === "ENOENT") return undefined
    throw error
  }
}
