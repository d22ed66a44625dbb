import * as fs from "node:fs"
import { Effect, Layer } from "effect"
import { assert } from "../core/assert.js"
import { Disk, DiskError, type DirectoryEntry, type DiskErrorReason, type DiskFile, type OpenOptions } from "../core/io/disk.js"

/**
 * Disk over node:fs with callback APIs (one libuv request per step, no FileHandle or Promise
 * allocation), so a WAL append costs one pwrite and a flush one fdatasync. Paths are used as
 * given: absolute, or relative to the process's working directory.
 */
export interface LiveDiskOptions {
  /** `--no-sync`: datasync, sync and syncDirectory become no-ops (tests, benchmarks only). */
  readonly noSync?: boolean
}

/** A single read or write larger than this is a caller bug (segments are 16 MiB). */
export const DISK_IO_BYTES_MAX = 1024 * 1024 * 1024

export function makeLiveDisk(options: LiveDiskOptions = {}): Disk["Service"] {
  const noSync = options.noSync === true
  return Disk.of({
    open: (path, openOptions) => {
      const flags = openFlags(openOptions)
      return Effect.map(
        fsCall<number>("open", path, (done) => fs.open(path, flags, done)),
        (fd) => makeFile(fd, path, noSync)
      )
    },
    readFile: (path) => fsCall<Uint8Array>("readFile", path, (done) => fs.readFile(path, done)),
    rename: (from, to) => fsCall<void>("rename", from, (done) => fs.rename(from, to, done)),
    unlink: (path) => fsCall<void>("unlink", path, (done) => fs.unlink(path, done)),
    mkdir: (path) => fsCall<void>("mkdir", path, (done) => fs.mkdir(path, { recursive: true }, (error) => done(error))),
    rmdir: (path) => fsCall<void>("rmdir", path, (done) => fs.rmdir(path, done)),
    list: (path) =>
      Effect.flatMap(
        fsCall<Array<fs.Dirent>>("list", path, (done) => fs.readdir(path, { withFileTypes: true }, done)),
        (dirents) =>
          Effect.map(
            Effect.forEach(dirents, (dirent) => entryOf(path, dirent)),
            (entries) => entries.sort((a, b) => Buffer.compare(Buffer.from(a.name), Buffer.from(b.name)))
          )
      ),
    stat: (path) =>
      fsCall<fs.Stats>("stat", path, (done) => fs.stat(path, done)).pipe(
        Effect.map((stats) => ({ kind: stats.isDirectory() ? "directory" as const : "file" as const, sizeBytes: stats.size })),
        Effect.catchIf(isNotFound, () => Effect.succeed(undefined))
      ),
    syncDirectory: (path) =>
      noSync ? Effect.void : fsCall<void>("syncDirectory", path, (done) => syncDirectory(path, done))
  })
}

export const liveDiskLayer = (options: LiveDiskOptions = {}): Layer.Layer<Disk> => Layer.succeed(Disk, makeLiveDisk(options))

type Done<A> = (error: NodeJS.ErrnoException | null, value: A) => void

/**
 * One fs request as an Effect. Uninterruptible because the kernel cannot cancel it: an
 * interrupted caller would otherwise move on (and maybe close the fd, letting the number be
 * reused) while the pwrite still runs.
 */
function fsCall<A>(operation: string, path: string, run: (done: Done<A>) => void): Effect.Effect<A, DiskError> {
  return Effect.uninterruptible(
    Effect.callback<A, DiskError>((resume) => {
      run((error, value) => resume(error ? Effect.fail(diskError(operation, path, error)) : Effect.succeed(value)))
    })
  )
}

function makeFile(fd: number, path: string, noSync: boolean): DiskFile {
  // Requests in flight hold the fd open: close waits for them, so the fd number cannot be
  // reused by another open() while a request still targets it.
  let state: "open" | "closing" | "closed" = "open"
  let inFlightCount = 0
  const closeWaiters: Array<() => void> = []

  const finishClose = (): void => {
    // A close error is not reported: durability comes from sync/datasync, never from close.
    fs.close(fd, () => {
      state = "closed"
      for (const wake of closeWaiters.splice(0)) wake()
    })
  }

  // `precondition` runs inside the effect, so a bad argument is a defect of the calling fiber.
  const withFd = <A>(operation: string, run: (done: Done<A>) => void, precondition?: () => void): Effect.Effect<A, DiskError> =>
    Effect.uninterruptible(
      Effect.callback<A, DiskError>((resume) => {
        precondition?.()
        if (state !== "open") return resume(Effect.fail(closedError(operation, path)))
        inFlightCount++
        run((error, value) => {
          inFlightCount--
          if (inFlightCount === 0 && state === "closing") finishClose()
          resume(error ? Effect.fail(diskError(operation, path, error)) : Effect.succeed(value))
        })
      })
    )

  const syncOr = (operation: string, run: (done: Done<void>) => void): Effect.Effect<void, DiskError> =>
    noSync
      ? Effect.suspend(() => (state === "open" ? Effect.void : Effect.fail(closedError(operation, path))))
      : withFd(operation, run)

  return {
    path,
    read: (offsetBytes, length) =>
      withFd<Uint8Array>("read", (done) => readFully(fd, offsetBytes, length, done), () => checkRange(offsetBytes, length)),
    write: (offsetBytes, data) =>
      withFd<void>("write", (done) => writeFully(fd, offsetBytes, data, done), () => checkRange(offsetBytes, data.length)),
    size: withFd<fs.Stats>("size", (done) => fs.fstat(fd, done)).pipe(Effect.map((stats) => stats.size)),
    truncate: (sizeBytes) =>
      withFd<void>("truncate", (done) => fs.ftruncate(fd, sizeBytes, (error) => done(error)), () => checkRange(sizeBytes, 0)),
    datasync: syncOr("datasync", (done) => fs.fdatasync(fd, (error) => done(error))),
    sync: syncOr("sync", (done) => fs.fsync(fd, (error) => done(error))),
    close: Effect.uninterruptible(
      Effect.callback<void>((resume) => {
        if (state === "closed") return resume(Effect.void)
        closeWaiters.push(() => resume(Effect.void))
        if (state === "open") {
          state = "closing"
          if (inFlightCount === 0) finishClose()
        }
      })
    )
  }
}

/** pwrite until every byte is written: a short write (signal, quota edge) is not an error. */
function writeFully(fd: number, offsetBytes: number, data: Uint8Array, done: Done<void>): void {
  let writtenBytes = 0
  const step = (): void => {
    if (writtenBytes === data.length) return done(null, undefined)
    fs.write(fd, data, writtenBytes, data.length - writtenBytes, offsetBytes + writtenBytes, (error, count) => {
      if (error) return done(error, undefined)
      // A zero-byte pwrite for a non-empty buffer would loop forever; the device is not taking data.
      if (count === 0) return done(errnoError("EIO", "pwrite wrote 0 bytes"), undefined)
      writtenBytes += count
      step()
    })
  }
  step()
}

/** pread until `length` bytes or end of file, so a result is short only at EOF. */
function readFully(fd: number, offsetBytes: number, length: number, done: Done<Uint8Array>): void {
  const buffer = Buffer.allocUnsafe(length)
  let readBytes = 0
  const step = (): void => {
    if (readBytes === length) return done(null, buffer)
    fs.read(fd, buffer, readBytes, length - readBytes, offsetBytes + readBytes, (error, count) => {
      if (error) return done(error, buffer)
      if (count === 0) return done(null, buffer.subarray(0, readBytes))
      readBytes += count
      step()
    })
  }
  step()
}

function syncDirectory(path: string, done: Done<void>): void {
  // O_RDONLY is enough for fsync on Linux; O_DIRECTORY refuses a file given by mistake.
  fs.open(path, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY, (openError, fd) => {
    if (openError) return done(openError, undefined)
    fs.fsync(fd, (syncError) => fs.close(fd, () => done(syncError, undefined)))
  })
}

function entryOf(directory: string, dirent: fs.Dirent): Effect.Effect<DirectoryEntry, DiskError> {
  if (!dirent.isSymbolicLink()) return Effect.succeed({ name: dirent.name, kind: dirent.isDirectory() ? "directory" : "file" })
  // A symlink counts as what it points to; a dangling one as a file (opening it gives NotFound).
  const target = `${directory}/${dirent.name}`
  return fsCall<fs.Stats>("list", target, (done) => fs.stat(target, done)).pipe(
    Effect.map((stats): DirectoryEntry => ({ name: dirent.name, kind: stats.isDirectory() ? "directory" : "file" })),
    Effect.catchIf(isNotFound, () => Effect.succeed<DirectoryEntry>({ name: dirent.name, kind: "file" }))
  )
}

function openFlags(options: OpenOptions | undefined): number {
  const { O_RDWR, O_CREAT, O_EXCL } = fs.constants
  if (options?.create !== true) return O_RDWR
  return O_RDWR | O_CREAT | (options.exclusive === true ? O_EXCL : 0)
}

function checkRange(offsetBytes: number, length: number): void {
  assert(Number.isSafeInteger(offsetBytes) && offsetBytes >= 0, `disk offset ${offsetBytes} is not a non-negative integer`)
  assert(Number.isSafeInteger(length) && length >= 0 && length <= DISK_IO_BYTES_MAX, `disk length ${length} out of range`)
  assert(offsetBytes + length <= Number.MAX_SAFE_INTEGER, "disk range ends past 2^53-1")
}

const REASON_BY_CODE: Readonly<Record<string, DiskErrorReason>> = {
  EIO: "EIO",
  ENOSPC: "ENOSPC",
  EDQUOT: "ENOSPC", // a full quota is a full disk to us
  ENOENT: "NotFound",
  EEXIST: "AlreadyExists",
  ENOTDIR: "NotADirectory",
  EISDIR: "IsADirectory",
  ENOTEMPTY: "DirectoryNotEmpty",
  EBADF: "Closed"
}

function diskError(operation: string, path: string, error: NodeJS.ErrnoException): DiskError {
  const reason = (error.code !== undefined ? REASON_BY_CODE[error.code] : undefined) ?? "Other"
  return new DiskError({ reason, operation, path, message: error.message })
}

const isNotFound = (error: DiskError): boolean => error.reason === "NotFound"

function closedError(operation: string, path: string): DiskError {
  return new DiskError({ reason: "Closed", operation, path, message: "file handle is closed" })
}

function errnoError(code: string, message: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: ${message}`), { code })
}
