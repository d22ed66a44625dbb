import { Context, Effect, Schema } from "effect"

/**
 * The file system as durability depends on it. Paths are POSIX-style strings ("/" separated);
 * each world roots them where it likes (live: a real directory, sim: a node's disk).
 *
 * What survives a crash (DESIGN.md §5): data written to a file survives once that file has been
 * `sync`ed (or `datasync`ed); a create, rename or unlink survives once its parent directory has
 * been `syncDirectory`ed. Anything else may be lost, torn, or undone.
 */
export const DiskErrorReason = Schema.Literals([
  "EIO", // the device failed the operation; after a failed fsync the unsynced pages are gone
  "ENOSPC", // out of space
  "NotFound",
  "AlreadyExists",
  "NotADirectory",
  "IsADirectory",
  "DirectoryNotEmpty",
  "Closed", // the handle was closed
  "Other"
])
export type DiskErrorReason = typeof DiskErrorReason.Type

export class DiskError extends Schema.TaggedError<DiskError>()("DiskError", {
  reason: DiskErrorReason,
  operation: Schema.String,
  path: Schema.String,
  message: Schema.String
}) {}

export interface DiskFile {
  readonly path: string
  /** Reads up to `length` bytes at `offsetBytes`; shorter only at the end of the file. */
  read(offsetBytes: number, length: number): Effect.Effect<Uint8Array, DiskError>
  /** Writes all of `data` at `offsetBytes`, extending the file (with zeros in any gap) as needed. */
  write(offsetBytes: number, data: Uint8Array): Effect.Effect<void, DiskError>
  readonly size: Effect.Effect<number, DiskError>
  /** Shrinks, or extends with zeros, to exactly `sizeBytes`. */
  truncate(sizeBytes: number): Effect.Effect<void, DiskError>
  /** fdatasync: the file's data and size are durable once this succeeds. */
  readonly datasync: Effect.Effect<void, DiskError>
  /** fsync: data and all metadata are durable once this succeeds. */
  readonly sync: Effect.Effect<void, DiskError>
  readonly close: Effect.Effect<void>
}

export interface OpenOptions {
  /** Create the file when missing. */
  readonly create?: boolean
  /** With `create`, fail with AlreadyExists when the file exists. */
  readonly exclusive?: boolean
}

export interface DirectoryEntry {
  readonly name: string
  readonly kind: "file" | "directory"
}

export class Disk extends Context.Service<Disk, {
  open(path: string, options?: OpenOptions): Effect.Effect<DiskFile, DiskError>
  /** Reads a whole file (for small files: control files, configs). */
  readFile(path: string): Effect.Effect<Uint8Array, DiskError>
  /** Atomically replaces `to` with `from` (POSIX rename); durable after `syncDirectory`. */
  rename(from: string, to: string): Effect.Effect<void, DiskError>
  unlink(path: string): Effect.Effect<void, DiskError>
  /** Creates a directory and any missing parents; succeeds when it exists. */
  mkdir(path: string): Effect.Effect<void, DiskError>
  /** Removes an empty directory. */
  rmdir(path: string): Effect.Effect<void, DiskError>
  /** Entries of a directory, sorted by name (byte order) so callers see a stable order. */
  list(path: string): Effect.Effect<ReadonlyArray<DirectoryEntry>, DiskError>
  /** Size of a file, or undefined when nothing exists at `path`. */
  stat(path: string): Effect.Effect<{ readonly kind: "file" | "directory"; readonly sizeBytes: number } | undefined, DiskError>
  /** fsync of a directory: makes creates, renames and unlinks inside it durable. */
  syncDirectory(path: string): Effect.Effect<void, DiskError>
}>()("sk/core/io/Disk") {}

/** Joins path parts with "/" and collapses duplicate separators. */
export function joinPath(...parts: ReadonlyArray<string>): string {
  return parts.filter((p) => p.length > 0).join("/").replace(/\/+/g, "/")
}

/** The parent directory of a path ("." for a bare name). */
export function parentPath(path: string): string {
  const i = path.replace(/\/+$/, "").lastIndexOf("/")
  if (i < 0) return "."
  if (i === 0) return "/"
  return path.slice(0, i)
}
