import { Context, Effect, Schema, Stream } from "effect"

/**
 * Object storage (Neon's `remote_storage` crate, `GenericRemoteStorage`): objects named by
 * `/`-separated relative paths (`RemotePath`: no leading `/`, no `.` or `..` parts, no empty
 * parts). Each world provides it: live, a local directory (the embedded default) or S3; the
 * simulator, an object store with latency and faults.
 *
 * What a success means: after `put` succeeds the whole object is durable and visible to every
 * later `get` and `list`; a failed `put` may still have happened (a lost acknowledgement), so
 * callers retry idempotently (same name, same bytes). An object is never visible half-written.
 */
export const RemoteStorageErrorReason = Schema.Literals([
  "NotFound", // no object by that name
  "Transient", // timeouts, throttling, 5xx, connection resets, lost acknowledgements: retry
  "Permanent", // bad credentials, missing bucket, invalid request, a corrupt answer: retrying will not help
  "Cancelled" // the call was interrupted
])
export type RemoteStorageErrorReason = typeof RemoteStorageErrorReason.Type

export class RemoteStorageError extends Schema.TaggedError<RemoteStorageError>()("RemoteStorageError", {
  reason: RemoteStorageErrorReason,
  operation: Schema.String,
  path: Schema.String,
  message: Schema.String
}) {}

export const isTransientRemoteError = (error: RemoteStorageError): boolean => error.reason === "Transient"

/** One listed object. */
export interface RemoteObject {
  readonly path: string
  readonly sizeBytes: number
}

/** A byte range [startBytes, endBytes); endBytes undefined = to the end of the object. */
export interface ByteRange {
  readonly startBytes: number
  readonly endBytes?: number
}

export class RemoteStorage extends Context.Service<RemoteStorage, {
  /**
   * Uploads `lengthBytes` bytes from `body` (pulled as it is sent, never all in memory at once)
   * as `path`, replacing any object there. Fails (Permanent) when the body's length differs.
   */
  put<E>(path: string, body: Stream.Stream<Uint8Array, E>, lengthBytes: number): Effect.Effect<void, RemoteStorageError | E>
  /** The whole object, or a range of it (a range past the end is cut at the end). */
  get(path: string, range?: ByteRange): Effect.Effect<Uint8Array, RemoteStorageError>
  /** Every object whose path starts with `prefix`, sorted by path (byte order). */
  list(prefix: string): Effect.Effect<ReadonlyArray<RemoteObject>, RemoteStorageError>
  /** Removes an object; an absent object is success (deletes are retried). */
  delete(path: string): Effect.Effect<void, RemoteStorageError>
  /** Server-side copy; NotFound when `from` is absent. */
  copy(from: string, to: string): Effect.Effect<void, RemoteStorageError>
}>()("sk/core/io/RemoteStorage") {}

/** Checks a RemotePath: relative, `/`-separated, no empty, `.` or `..` parts. */
export function remotePathProblem(path: string): string | undefined {
  if (path.length === 0) return "empty path"
  if (path.startsWith("/")) return "absolute path"
  for (const part of path.split("/")) {
    if (part.length === 0) return "empty path component"
    if (part === "." || part === "..") return `path component ${JSON.stringify(part)}`
  }
  return undefined
}

/** Joins RemotePath parts with "/". */
export const remotePath = (...parts: ReadonlyArray<string>): string => parts.filter((p) => p.length > 0).join("/")

/** A body held in memory, as a stream of chunks of at most `chunkBytes`. */
export function bytesBody(bytes: Uint8Array, chunkBytes = 1 << 20): Stream.Stream<Uint8Array> {
  const chunks: Uint8Array[] = []
  for (let offset = 0; offset < bytes.length; offset += chunkBytes) chunks.push(bytes.subarray(offset, Math.min(bytes.length, offset + chunkBytes)))
  return Stream.fromIterable(chunks)
}
