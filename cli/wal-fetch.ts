import { type Command, InvalidArgumentError, Option } from "commander"
import { closeSync, type Dirent, fsyncSync, openSync, readdirSync, readSync, renameSync, rmSync, statSync, writeSync } from "node:fs"
import { join } from "node:path"
// Type-only: `sk wal fetch` runs once per segment as PostgreSQL's restore_command, so its
// module loads nothing heavy at start-up; Effect and the storage layers are imported only by a
// fetch that goes through them (not for a local directory, `--help` or a non-segment name).
import type * as EffectModule from "effect/Effect"
import type { Layer } from "effect/Layer"
import type { RemoteObject, RemoteStorage, RemoteStorageError } from "../core/io/remote-storage.js"

/**
 * `sk wal fetch --remote-storage <spec> --tenant-id T --timeline-id L %f %p`: PostgreSQL's
 * restore_command served from the WAL service's object storage (issue 8, item 8). A full
 * segment object is written to %p as it is; for the open segment, the newest partial object
 * (reference §10, "Partial backup") zero-padded to the segment size, as PostgreSQL accepts it
 * under the full name (pg-replication.md §9: replay stops at the flush LSN and keeps the rows).
 *
 * Exit statuses, from PostgreSQL's RestoreArchivedFile / shell_restore (xlogarchive.c,
 * shell_restore.c) and wait_result_is_any_signal (wait_error.c):
 * - 0: restored.
 * - any status 1..125: "file not found" (logged at DEBUG2). In archive recovery that ends
 *   recovery and promotes: PostgreSQL does not tell "absent" from "the store is down".
 * - 143 (128+SIGTERM) or death by SIGTERM: the startup process exits as for a fast shutdown.
 * - any other status above 125, or any signal: FATAL, recovery aborts and can be retried.
 * So only a segment the store truly does not hold may exit 1. A store that cannot answer
 * (unreachable, bad credentials, a corrupt object, retries exhausted) must never look like the
 * end of WAL: recovery would end early, promote, and fork a new timeline without WAL that was
 * committed. Those exit with a status PostgreSQL treats as FATAL, chosen above 192 so it reads
 * neither as "command not found" (126, 127) nor as a shell's 128+signal (up to 128+64).
 * The same holds for failing to write %p (a full pg_wal) and for a misconfigured command (bad
 * flags): commander's usual status 1 would silently end recovery, so those are FATAL too.
 * Checked by hand against PostgreSQL 15 (pg_basebackup -X none, recovery.signal): from a local
 * store it restored segments 2 and 3 and the padded partial of 4, replay stopped at the flush
 * LSN ("invalid record length ... got 0") with the last committed row kept; with an unreachable
 * S3 endpoint the startup process logged "FATAL: could not restore file ... exit code 200" and
 * the server shut down without promoting. A standby that also streams pays for this choice: a
 * store outage stops it instead of letting it fall back to streaming.
 */
export const WAL_FETCH_EXIT_RESTORED = 0
export const WAL_FETCH_EXIT_MISSING = 1
export const WAL_FETCH_EXIT_STORAGE_ERROR = 200
export const WAL_FETCH_EXIT_WRITE_ERROR = 201
export const WAL_FETCH_EXIT_USAGE = 202

/** Neon's default `wal_seg_size` and PostgreSQL's. */
export const WAL_FETCH_SEGMENT_SIZE_DEFAULT_BYTES = 16 * 1024 * 1024
/** Attempts of one fetch (list, then get) on a transient error or an object gone between them. */
export const WAL_FETCH_ATTEMPTS_MAX = 3
/** Backoff before the second attempt; doubled for each later one. */
export const WAL_FETCH_BACKOFF_FIRST_MS = 100
/** Zero-padding is written in chunks of this size (16 MiB is not allocated twice). */
const ZERO_CHUNK_BYTES = 1024 * 1024

const SEGMENT_NAME = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$/
/** `<segment>_<last_log_term>_<flush %016X>_<commit %016X>_sk<id>.partial` (core/timeline's layout). */
const PARTIAL_NAME = /^([0-9A-F]{24})_(0|[1-9][0-9]{0,15})_([0-9A-F]{16})_([0-9A-F]{16})_sk(0|[1-9][0-9]{0,15})\.partial$/
const HEX_ID = /^[0-9a-fA-F]{32}$/

export interface WalFetchOptions {
  readonly remoteStorage: string
  readonly tenantId: string
  readonly timelineId: string
  readonly walSegSize: number
}

/** Makes the storage layer for a `--remote-storage` spec; a test injects its own. */
export type OpenRemoteStorage = (spec: string) => Promise<Layer<RemoteStorage, RemoteStorageError>>

/**
 * Registers `fetch` under `sk wal`. Without `openStorage`, a spec that is plainly a local
 * directory is read directly (restoreFromLocalDirectory) and anything else goes through
 * live/remote-storage-config.ts; with it, every fetch goes through the layer it makes.
 */
export function registerWalFetchCommand(wal: Command, openStorage?: OpenRemoteStorage): void {
  wal.command("fetch")
    .description("restore_command: write WAL segment <file> from the WAL service's object storage to <path> (exit 1: not held)")
    .argument("<file>", "segment file name PostgreSQL asks for (%f)")
    .argument("<path>", "where PostgreSQL wants it written (%p)")
    .requiredOption("--remote-storage <spec>", "object storage: a local directory, s3://bucket/prefix?region=&endpoint=, or Neon's TOML")
    .requiredOption("--tenant-id <hex>", "tenant id (32 hex digits)", parseIdArgument("tenant"))
    .requiredOption("--timeline-id <hex>", "timeline id (32 hex digits)", parseIdArgument("timeline"))
    .addOption(new Option("--wal-seg-size <bytes>", "WAL segment size").argParser(parseSegmentSizeArgument).default(WAL_FETCH_SEGMENT_SIZE_DEFAULT_BYTES))
    .addHelpText("after", [
      "",
      "Exit status: 0 restored; 1 not held (PostgreSQL goes on to its next WAL source);",
      `${WAL_FETCH_EXIT_STORAGE_ERROR} storage unreachable or corrupt, ${WAL_FETCH_EXIT_WRITE_ERROR} <path> not written, ${WAL_FETCH_EXIT_USAGE} bad arguments`,
      "(all above 125: PostgreSQL stops recovery instead of taking them for the end of WAL)."
    ].join("\n"))
    // Bad flags would exit 1 by default, which PostgreSQL reads as "not found": recovery would
    // end silently on a typo. Help and version still exit 0.
    .exitOverride((error) => process.exit(error.exitCode === 0 ? 0 : WAL_FETCH_EXIT_USAGE))
    .action(async (segmentName: string, targetPath: string, options: WalFetchOptions) => {
      process.exitCode = await runWalFetch(segmentName, targetPath, options, openStorage)
    })
}

/** The whole command: returns its exit status, with at most one line on stderr. */
export async function runWalFetch(segmentName: string, targetPath: string, options: WalFetchOptions, openStorage?: OpenRemoteStorage): Promise<number> {
  if (!isWalSegmentName(segmentName, options.walSegSize)) {
    // History (`00000002.history`), backup labels and anything else: the WAL service holds
    // segments only, so "not found" is the truthful answer (PostgreSQL probes for histories).
    process.stderr.write(`sk wal fetch: ${segmentName}: not held (the WAL service stores WAL segments only)\n`)
    return WAL_FETCH_EXIT_MISSING
  }
  const request: RestoreRequest = {
    prefix: `${options.tenantId}/${options.timelineId}`,
    segmentName,
    targetPath,
    segmentSizeBytes: options.walSegSize
  }
  const localRoot = openStorage === undefined ? plainLocalRoot(options.remoteStorage) : undefined
  let outcome: RestoreOutcome
  if (localRoot !== undefined) {
    const problem = localRootProblem(localRoot)
    if (problem !== undefined) return usageError(problem)
    outcome = restoreFromLocalDirectory(localRoot, request)
  } else {
    let layer: Layer<RemoteStorage, RemoteStorageError>
    try {
      layer = await (openStorage ?? openConfiguredStorage)(options.remoteStorage)
    } catch (error) {
      return usageError(messageOf(error))
    }
    outcome = await restoreSegment(request, layer)
  }
  switch (outcome.status) {
    case "restored":
      return WAL_FETCH_EXIT_RESTORED
    case "missing":
      process.stderr.write(`sk wal fetch: ${segmentName}: ${outcome.message}\n`)
      return WAL_FETCH_EXIT_MISSING
    case "storage-error":
      process.stderr.write(`sk wal fetch: ${segmentName}: object storage error, not treated as a missing file: ${outcome.message}\n`)
      return WAL_FETCH_EXIT_STORAGE_ERROR
    case "write-error":
      process.stderr.write(`sk wal fetch: ${segmentName}: could not write ${targetPath}: ${outcome.message}\n`)
      return WAL_FETCH_EXIT_WRITE_ERROR
  }
}

function usageError(problem: string): number {
  process.stderr.write(`sk wal fetch: --remote-storage: ${problem}\n`)
  return WAL_FETCH_EXIT_USAGE
}

// ---------------------------------------------------------------------------------------------
// Choosing the object: plain functions.

/** What a partial object's name says. */
export interface PartialObjectName {
  readonly segmentName: string
  readonly lastLogTerm: number
  readonly flushLsn: number
  readonly commitLsn: number
  readonly nodeId: number
}

export type RestorePick =
  | { readonly kind: "full"; readonly object: RemoteObject }
  | { readonly kind: "partial"; readonly object: RemoteObject; readonly partial: PartialObjectName }

/**
 * Which object restores `segmentName`: the full segment when it exists; else the newest
 * partial of that segment: highest last_log_term (a later term's WAL wins even when shorter: a
 * longer partial of an older term may hold a tail the new term truncated), then highest flush
 * LSN, then highest commit LSN; equal in all three (the same WAL uploaded by several
 * safekeepers), the lowest node id, so the answer does not depend on listing order.
 * Objects are matched by the last part of their path; others are ignored.
 */
export function pickRestoreObject(objects: ReadonlyArray<RemoteObject>, segmentName: string): RestorePick | undefined {
  let best: { readonly object: RemoteObject; readonly partial: PartialObjectName } | undefined
  for (const object of objects) {
    const name = baseName(object.path)
    if (name === segmentName) return { kind: "full", object }
    const partial = parsePartialObjectName(name)
    if (partial === undefined || partial.segmentName !== segmentName) continue
    if (best === undefined || comparePartials(partial, best.partial) > 0) best = { object, partial }
  }
  return best === undefined ? undefined : { kind: "partial", ...best }
}

/** Positive when `a` is newer than `b` (see pickRestoreObject); 0 only for the same fields. */
export function comparePartials(a: PartialObjectName, b: PartialObjectName): number {
  return a.lastLogTerm - b.lastLogTerm || a.flushLsn - b.flushLsn || a.commitLsn - b.commitLsn || b.nodeId - a.nodeId
}

export function parsePartialObjectName(name: string): PartialObjectName | undefined {
  const match = PARTIAL_NAME.exec(name)
  if (match === null) return undefined
  const numbers = [Number(match[2]!), parseInt(match[3]!, 16), parseInt(match[4]!, 16), Number(match[5]!)] as const
  // Above 2^53−1 a number would round: the comparison could pick the wrong partial.
  if (!numbers.every((n) => Number.isSafeInteger(n))) return undefined
  return { segmentName: match[1]!, lastLogTerm: numbers[0], flushLsn: numbers[1], commitLsn: numbers[2], nodeId: numbers[3] }
}

/** A PostgreSQL WAL segment file name for this segment size (`XLogFromFileName` accepts it). */
export function isWalSegmentName(name: string, segmentSizeBytes: number): boolean {
  const match = SEGMENT_NAME.exec(name)
  return match !== null && parseInt(match[3]!, 16) < 0x1_0000_0000 / segmentSizeBytes
}

/** The segment number a segment file name stands for (the name must pass isWalSegmentName). */
export function segmentNoOfName(name: string, segmentSizeBytes: number): number {
  const match = SEGMENT_NAME.exec(name)
  if (match === null) throw new Error(`not a segment name: ${name}`)
  return parseInt(match[2]!, 16) * (0x1_0000_0000 / segmentSizeBytes) + parseInt(match[3]!, 16)
}

/** What to read for a pick: its first `meaningfulBytes`, the rest of the segment is zeros. */
export type RestorePlan =
  | { readonly kind: "read"; readonly path: string; readonly meaningfulBytes: number }
  | { readonly kind: "empty"; readonly message: string }
  | { readonly kind: "corrupt"; readonly message: string }

/**
 * Checks a pick against the segment size. A full object must be exactly one segment (the
 * only way to learn that the store and PostgreSQL agree on it). A partial's flush LSN must fall
 * in its own segment, and the object must hold exactly its first `flush % segsize` bytes (as
 * Neon uploads it) or a whole zero-padded segment. A partial flushed to its segment's very
 * start holds no WAL of it: restoring zeros would say nothing, so it counts as not held.
 */
export function planRestore(pick: RestorePick, segmentSizeBytes: number): RestorePlan {
  const path = pick.object.path
  const sizeBytes = pick.object.sizeBytes
  if (pick.kind === "full") {
    if (sizeBytes !== segmentSizeBytes) {
      return { kind: "corrupt", message: `${path} holds ${sizeBytes} bytes, not one segment of ${segmentSizeBytes} (corrupt, or --wal-seg-size is wrong)` }
    }
    return { kind: "read", path, meaningfulBytes: segmentSizeBytes }
  }
  const segmentNo = segmentNoOfName(pick.partial.segmentName, segmentSizeBytes)
  if (Math.floor(pick.partial.flushLsn / segmentSizeBytes) !== segmentNo) {
    return { kind: "corrupt", message: `${path}: its flush LSN is not in segment ${pick.partial.segmentName} (corrupt name, or --wal-seg-size is wrong)` }
  }
  const meaningfulBytes = pick.partial.flushLsn % segmentSizeBytes
  if (sizeBytes !== meaningfulBytes && sizeBytes !== segmentSizeBytes) {
    return { kind: "corrupt", message: `${path} holds ${sizeBytes} bytes, its name says ${meaningfulBytes} (corrupt)` }
  }
  if (meaningfulBytes === 0) return { kind: "empty", message: `newest partial ${path} holds no WAL of the segment` }
  return { kind: "read", path, meaningfulBytes }
}

// ---------------------------------------------------------------------------------------------
// The fetch: Effect for the storage calls, plain node:fs for the one local file.

export interface RestoreRequest {
  /** `<tenant>/<timeline>`: the timeline's objects live under it. */
  readonly prefix: string
  readonly segmentName: string
  readonly targetPath: string
  readonly segmentSizeBytes: number
}

export type RestoreOutcome =
  | { readonly status: "restored"; readonly kind: "full" | "partial"; readonly objectPath: string; readonly meaningfulBytes: number }
  | { readonly status: "missing"; readonly message: string }
  | { readonly status: "storage-error"; readonly message: string }
  | { readonly status: "write-error"; readonly message: string }

type Fetched =
  | { readonly status: "fetched"; readonly kind: "full" | "partial"; readonly objectPath: string; readonly bytes: Uint8Array }
  | { readonly status: "missing"; readonly message: string }
  | { readonly status: "storage-error"; readonly message: string }

/** Fetches the segment through `layer` and writes it to `targetPath`; never throws for I/O. */
export async function restoreSegment(request: RestoreRequest, layer: Layer<RemoteStorage, RemoteStorageError>): Promise<RestoreOutcome> {
  const [Effect, { RemoteStorage }] = await Promise.all([import("effect/Effect"), import("../core/io/remote-storage.js")])
  const program = Effect.gen(function*() {
    const storage = yield* RemoteStorage
    return yield* fetchWithRetries(Effect, storage, request)
  })
  const fetched = await Effect.runPromise(Effect.provide(program, layer).pipe(
    Effect.catch((error: RemoteStorageError): EffectModule.Effect<Fetched> =>
      Effect.succeed({ status: "storage-error", message: describeStorageError(error) }))
  )).catch((defect: unknown): Fetched => ({ status: "storage-error", message: `unexpected failure: ${messageOf(defect)}` }))
  if (fetched.status !== "fetched") return fetched
  const written = writeSegmentFile(request.targetPath, fetched.bytes, request.segmentSizeBytes)
  if (written !== undefined) return { status: "write-error", message: written }
  return { status: "restored", kind: fetched.kind, objectPath: fetched.objectPath, meaningfulBytes: fetched.bytes.length }
}

/** list, pick, get; again after a transient error or an object that vanished in between. */
function fetchWithRetries(
  Effect: typeof EffectModule,
  storage: RemoteStorage["Service"],
  request: RestoreRequest
): EffectModule.Effect<Fetched, RemoteStorageError> {
  return Effect.gen(function*() {
    let lastProblem = ""
    for (let attempt = 1; attempt <= WAL_FETCH_ATTEMPTS_MAX; attempt++) {
      if (attempt > 1) yield* Effect.sleep(WAL_FETCH_BACKOFF_FIRST_MS * 2 ** (attempt - 2))
      const result = yield* Effect.result(fetchOnce(Effect, storage, request))
      if (result._tag === "Success") {
        if (result.success !== "vanished") return result.success
        lastProblem = "the chosen object disappeared between list and get"
        continue
      }
      const error = result.failure
      if (error.reason !== "Transient") return yield* Effect.fail(error)
      lastProblem = describeStorageError(error)
    }
    return { status: "storage-error", message: `gave up after ${WAL_FETCH_ATTEMPTS_MAX} attempts: ${lastProblem}` } satisfies Fetched
  })
}

function fetchOnce(
  Effect: typeof EffectModule,
  storage: RemoteStorage["Service"],
  request: RestoreRequest
): EffectModule.Effect<Fetched | "vanished", RemoteStorageError> {
  return Effect.gen(function*() {
    // Segment names have a fixed length, so this prefix lists exactly the segment's objects.
    const objects = yield* storage.list(`${request.prefix}/${request.segmentName}`)
    const pick = pickRestoreObject(objects, request.segmentName)
    if (pick === undefined) return { status: "missing", message: "not held by the WAL service" } satisfies Fetched
    const plan = planRestore(pick, request.segmentSizeBytes)
    if (plan.kind === "empty") return { status: "missing", message: plan.message } satisfies Fetched
    if (plan.kind === "corrupt") return { status: "storage-error", message: plan.message } satisfies Fetched
    const got = yield* Effect.result(storage.get(plan.path, { startBytes: 0, endBytes: plan.meaningfulBytes }))
    if (got._tag === "Failure") {
      if (got.failure.reason === "NotFound") return "vanished" as const
      return yield* Effect.fail(got.failure)
    }
    if (got.success.length !== plan.meaningfulBytes) {
      return { status: "storage-error", message: `${plan.path}: read ${got.success.length} bytes, expected ${plan.meaningfulBytes} (corrupt)` } satisfies Fetched
    }
    return { status: "fetched", kind: pick.kind, objectPath: plan.path, bytes: got.success } satisfies Fetched
  })
}

/**
 * Writes `<target>.tmp` (the bytes, then real zeros up to the segment size: PostgreSQL may
 * later write into this segment, and a sparse tail would turn a full disk into a failure in
 * the middle of it), fsyncs it and renames it over `target`. Returns a problem, or undefined.
 * No directory fsync: PostgreSQL renames the restored file itself (durable_rename).
 */
export function writeSegmentFile(target: string, bytes: Uint8Array, segmentSizeBytes: number): string | undefined {
  const temp = `${target}.tmp`
  let fd: number | undefined
  try {
    fd = openSync(temp, "w", 0o600)
    writeAll(fd, bytes, 0)
    if (bytes.length < segmentSizeBytes) {
      const zeros = new Uint8Array(Math.min(ZERO_CHUNK_BYTES, segmentSizeBytes - bytes.length))
      for (let offset = bytes.length; offset < segmentSizeBytes; offset += zeros.length) {
        writeAll(fd, zeros.subarray(0, Math.min(zeros.length, segmentSizeBytes - offset)), offset)
      }
    }
    fsyncSync(fd)
    closeSync(fd)
    fd = undefined
    renameSync(temp, target)
    return undefined
  } catch (error) {
    if (fd !== undefined) closeQuietly(fd)
    rmSync(temp, { force: true })
    return messageOf(error)
  }
}

function writeAll(fd: number, bytes: Uint8Array, positionBytes: number): void {
  for (let done = 0; done < bytes.length;) {
    done += writeSync(fd, bytes, done, bytes.length - done, positionBytes + done)
  }
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd)
  } catch {
    // Already failing; the write's error is the one reported.
  }
}

/** The real store for a spec (live/remote-storage-config.ts): loaded only when a fetch runs. */
async function openConfiguredStorage(spec: string): Promise<Layer<RemoteStorage, RemoteStorageError>> {
  const { parseRemoteStorageFlag, remoteStorageLayer } = await import("../live/remote-storage-config.js")
  const config = parseRemoteStorageFlag(spec)
  if (config._tag === "Failure") throw new Error(config.failure.message)
  if (config.success.kind === "local") {
    const problem = localRootProblem(config.success.root)
    if (problem !== undefined) throw new Error(problem)
  }
  return remoteStorageLayer(config.success)
}

// ---------------------------------------------------------------------------------------------
// The local-directory store, read without Effect. Loading Effect and its Schema costs ~0.2 s
// of CPU before anything happens, paid once per segment when PostgreSQL restores through a
// local store; plain node:fs reads the same layout in a few milliseconds. The layout is
// live/remote-storage-local.ts's (object = file `<root>/<RemotePath>`); cli/wal-fetch.test.ts
// checks that objects that store writes come back the same through both paths, and that
// plainLocalRoot never claims a spec live/remote-storage-config.ts reads otherwise.

/**
 * The root directory when `spec` is surely a local directory for live/remote-storage-config.ts
 * (a path, or `local://<path>`); undefined leaves the spec to that module (S3, TOML, odd forms).
 */
export function plainLocalRoot(spec: string): string | undefined {
  if (spec.length === 0 || spec.length > LOCAL_SPEC_CHARACTERS_MAX || spec !== spec.trim() || spec.includes("\0")) return undefined
  if (spec.startsWith("{")) return undefined
  if (spec.startsWith("local://")) return spec.length > "local://".length ? spec.slice("local://".length) : undefined
  if (/^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(spec)) return undefined
  return spec
}
const LOCAL_SPEC_CHARACTERS_MAX = 4096

/**
 * A local store whose root is absent lists nothing, so every segment would be "missing" and
 * recovery would end at once on a mistyped path: refuse it instead.
 */
function localRootProblem(root: string): string | undefined {
  try {
    return statSync(root).isDirectory() ? undefined : `${root} is not a directory`
  } catch (error) {
    return `local store ${root}: ${messageOf(error)}`
  }
}

/** restoreSegment over a local directory, synchronously: list, pick, read, write. */
export function restoreFromLocalDirectory(root: string, request: RestoreRequest): RestoreOutcome {
  let lastProblem = ""
  for (let attempt = 1; attempt <= WAL_FETCH_ATTEMPTS_MAX; attempt++) {
    let fetched: Fetched | "vanished"
    try {
      fetched = fetchLocalOnce(root, request)
    } catch (error) {
      // EACCES, EIO, ...: retrying a local disk would not help; never "missing".
      return { status: "storage-error", message: `${root}: ${messageOf(error)}` }
    }
    if (fetched === "vanished") {
      lastProblem = "the chosen object disappeared between list and get"
      continue
    }
    if (fetched.status !== "fetched") return fetched
    const written = writeSegmentFile(request.targetPath, fetched.bytes, request.segmentSizeBytes)
    if (written !== undefined) return { status: "write-error", message: written }
    return { status: "restored", kind: fetched.kind, objectPath: fetched.objectPath, meaningfulBytes: fetched.bytes.length }
  }
  return { status: "storage-error", message: `gave up after ${WAL_FETCH_ATTEMPTS_MAX} attempts: ${lastProblem}` }
}

function fetchLocalOnce(root: string, request: RestoreRequest): Fetched | "vanished" {
  const directory = join(root, ...request.prefix.split("/"))
  const objects: RemoteObject[] = []
  let entries: ReadonlyArray<Dirent> = []
  try {
    entries = readdirSync(directory, { withFileTypes: true })
  } catch (error) {
    // As the local store: nothing under a missing directory.
    if (!isErrno(error, "ENOENT") && !isErrno(error, "ENOTDIR")) throw error
  }
  for (const entry of entries) {
    if (!entry.isFile() || !entry.name.startsWith(request.segmentName)) continue
    const sizeBytes = fileSizeOrUndefined(join(directory, entry.name))
    if (sizeBytes !== undefined) objects.push({ path: `${request.prefix}/${entry.name}`, sizeBytes })
  }
  const pick = pickRestoreObject(objects, request.segmentName)
  if (pick === undefined) return { status: "missing", message: "not held by the WAL service" }
  const plan = planRestore(pick, request.segmentSizeBytes)
  if (plan.kind === "empty") return { status: "missing", message: plan.message }
  if (plan.kind === "corrupt") return { status: "storage-error", message: plan.message }
  const file = join(root, ...plan.path.split("/"))
  let fd: number
  try {
    fd = openSync(file, "r")
  } catch (error) {
    if (isErrno(error, "ENOENT")) return "vanished"
    throw error
  }
  try {
    const bytes = new Uint8Array(plan.meaningfulBytes)
    let readBytes = 0
    while (readBytes < bytes.length) {
      const n = readSync(fd, bytes, readBytes, bytes.length - readBytes, readBytes)
      if (n === 0) break
      readBytes += n
    }
    if (readBytes !== plan.meaningfulBytes) {
      return { status: "storage-error", message: `${plan.path}: read ${readBytes} bytes, expected ${plan.meaningfulBytes} (corrupt)` }
    }
    return { status: "fetched", kind: pick.kind, objectPath: plan.path, bytes }
  } finally {
    closeQuietly(fd)
  }
}

function fileSizeOrUndefined(file: string): number | undefined {
  try {
    return statSync(file).size
  } catch (error) {
    if (isErrno(error, "ENOENT")) return undefined // deleted while we listed
    throw error
  }
}

function isErrno(error: unknown, code: string): boolean {
  return typeof error === "object" && error !== null && "code" in error && error.code === code
}

function describeStorageError(error: RemoteStorageError): string {
  return `${error.operation} ${error.path}: ${error.reason}: ${error.message}`
}

function baseName(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1)
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}

function parseIdArgument(what: string): (text: string) => string {
  return (text) => {
    if (!HEX_ID.test(text)) throw new InvalidArgumentError(`${what} id must be 32 hex digits, got "${text}"`)
    return text.toLowerCase()
  }
}

function parseSegmentSizeArgument(text: string): number {
  const value = /^[0-9]+$/.test(text) ? Number(text) : NaN
  const valid = Number.isSafeInteger(value) && value >= 1024 * 1024 && value <= 1024 * 1024 * 1024 && (value & (value - 1)) === 0
  if (!valid) throw new InvalidArgumentError(`WAL segment size must be a power of two from 1 MiB to 1 GiB in bytes, got "${text}"`)
  return value
}
