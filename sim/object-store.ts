import { Effect, Stream } from "effect"
import { assert } from "../core/assert.js"
import { type ByteRange, type RemoteObject, RemoteStorage, RemoteStorageError, type RemoteStorageErrorReason, remotePathProblem } from "../core/io/remote-storage.js"
import type { Incarnation, Kernel } from "./kernel.js"
import { LifeGate } from "./runtime.js"
import { compareCodePoints, drawUs, remoteRequest, waitInLife } from "./remote-call.js"

/**
 * The world's object store (DESIGN.md §5 "object storage"), like one S3 bucket: it neither
 * crashes nor loses data, so its state outlives every node life. Each request takes a latency
 * drawn per request; a put also sends its body at `uploadBytesPerSecond` (a slow upload takes
 * time proportional to its length) and a get receives at `downloadBytesPerSecond`. Faults:
 * - a transient error: the request fails Transient and nothing happened;
 * - a lost acknowledgement (put, delete, copy): the change DID happen, the caller sees Transient;
 * - a node cut off from the store (`partition`): its requests fail Transient after
 *   `requestTimeoutUs`, and nothing they asked for happens.
 *
 * A put pulls its body in the caller's fiber (nothing lands if the caller dies or is
 * interrupted while sending) and the object appears whole, at once, when the store answers:
 * a get never sees part of an upload. Every stored object's bytes are folded into the trace's
 * data digest when they are written (DESIGN.md §3). A call from a dead life never takes effect
 * and never resumes (remote-call.ts). Random draws come from the kernel's stream, and none is
 * made for a fault whose probability is 0 or a fixed latency, so a world that never uses the
 * store replays as before.
 */
export interface ObjectStoreFaults {
  /** Per request latency (request to answer), uniform in [low, high]. */
  readonly requestLatencyUs: readonly [number, number]
  /** Upload speed of a put's body; undefined = instant. */
  readonly uploadBytesPerSecond?: number
  /** Download speed of a get's answer; undefined = instant. */
  readonly downloadBytesPerSecond?: number
  /** Chance that a request fails Transient before it takes effect (503 SlowDown, a reset). */
  readonly transientErrorProbability: number
  /** Chance that a put, delete or copy takes effect but its answer is lost (the caller sees Transient). */
  readonly lostAckProbability: number
  /** How long a request from a partitioned node waits before it fails Transient. */
  readonly requestTimeoutUs: number
}

export const NO_OBJECT_STORE_FAULTS: ObjectStoreFaults = {
  requestLatencyUs: [1_000, 5_000],
  transientErrorProbability: 0,
  lostAckProbability: 0,
  requestTimeoutUs: 1_000_000
}

export interface ObjectStoreHooks {
  /**
   * Called before each operation (put, get, list, delete, copy) with the path it concerns.
   * Returning false means the world crashed the node right there: the operation does not
   * happen and never resumes (the world's crash-on-operation points, as for Disk and Net).
   */
  beforeOperation?(operation: string, path: string): boolean
}

/** What changed in the store, for checkers watching it online. */
export type ObjectStoreChange =
  | { readonly kind: "put"; readonly path: string; readonly bytes: Uint8Array; readonly by: string }
  | { readonly kind: "copy"; readonly path: string; readonly from: string; readonly bytes: Uint8Array; readonly by: string }
  | { readonly kind: "delete"; readonly path: string; readonly by: string }

export interface ObjectStoreStats {
  /** Requests admitted (valid, from a live caller). */
  requests: number
  /** Puts that stored an object (lost acknowledgements included), and their bytes. */
  puts: number
  putBytes: number
  gets: number
  lists: number
  /** Deletes and copies that took effect (lost acknowledgements included). */
  deletes: number
  copies: number
  /** Injected transient errors (nothing happened). */
  transientErrors: number
  /** Changes that happened while the caller was told Transient. */
  lostAcks: number
  /** Requests of a partitioned node that timed out. */
  timeouts: number
  /** Requests refused as invalid, or a body of the wrong length. */
  permanentErrors: number
  notFound: number
}

const US_PER_SECOND = 1_000_000

export class SimObjectStore {
  readonly stats: ObjectStoreStats = {
    requests: 0, puts: 0, putBytes: 0, gets: 0, lists: 0, deletes: 0, copies: 0,
    transientErrors: 0, lostAcks: 0, timeouts: 0, permanentErrors: 0, notFound: 0
  }
  private readonly store = new Map<string, Uint8Array>()
  private readonly partitioned = new Set<string>()
  private readonly changeListeners: Array<(change: ObjectStoreChange) => void> = []
  /** False once the liveness phase begins: no more transient errors or lost acknowledgements. */
  private faultsOn = true

  constructor(readonly kernel: Kernel, readonly faults: ObjectStoreFaults) {
    const [low, high] = faults.requestLatencyUs
    assert(Number.isSafeInteger(low) && Number.isSafeInteger(high) && 0 <= low && low <= high, "requestLatencyUs is an integer range")
    assert(faults.transientErrorProbability >= 0 && faults.transientErrorProbability <= 1, "transientErrorProbability is a probability")
    assert(faults.lostAckProbability >= 0 && faults.lostAckProbability <= 1, "lostAckProbability is a probability")
    assert(Number.isSafeInteger(faults.requestTimeoutUs) && faults.requestTimeoutUs > 0, "requestTimeoutUs is positive")
    for (const speed of [faults.uploadBytesPerSecond, faults.downloadBytesPerSecond]) {
      assert(speed === undefined || (Number.isFinite(speed) && speed > 0), "a transfer speed is positive")
    }
  }

  /** The RemoteStorage service for one life of `node`. */
  service(life: Incarnation, node: string = life.node, hooks?: ObjectStoreHooks): RemoteStorage["Service"] {
    const caller: Caller = { life, node, hooks, gate: new LifeGate(this.kernel, life.label) }
    return RemoteStorage.of({
      put: (path, body, lengthBytes) => this.put(caller, path, body, lengthBytes),
      get: (path, range) => this.get(caller, path, range),
      list: (prefix) => this.list(caller, prefix),
      delete: (path) => this.delete(caller, path),
      copy: (from, to) => this.copy(caller, from, to)
    })
  }

  // ---------------------------------------------------------------- faults

  /** Requests from `node` fail Transient after the request timeout until `heal(node)`. */
  partition(node: string): void {
    this.kernel.log("s3", `partition ${node}`)
    this.partitioned.add(node)
  }

  heal(node: string): void {
    this.kernel.log("s3", `heal ${node}`)
    this.partitioned.delete(node)
  }

  healAll(): void {
    this.kernel.log("s3", "heal-all")
    this.partitioned.clear()
  }

  isPartitioned(node: string): boolean {
    return this.partitioned.has(node)
  }

  /** No more transient errors or lost acknowledgements, for good (the liveness phase); latency stays. */
  stopFaults(): void {
    this.kernel.log("s3", "faults off")
    this.faultsOn = false
  }

  // ---------------------------------------------------------------- inspection (no time, no draws)

  /** Every object, by path. The bytes are the store's own: read them, never change them. */
  objects(): ReadonlyMap<string, Uint8Array> {
    return this.store
  }

  object(path: string): Uint8Array | undefined {
    return this.store.get(path)
  }

  /** Paths starting with `prefix`, in byte order. */
  paths(prefix = ""): ReadonlyArray<string> {
    return [...this.store.keys()].filter((path) => path.startsWith(prefix)).sort(compareCodePoints)
  }

  /** Called at each change, at the instant it happens (lost acknowledgements included). */
  onChange(listener: (change: ObjectStoreChange) => void): void {
    this.changeListeners.push(listener)
  }

  // ---------------------------------------------------------------- operations

  private put<E>(caller: Caller, path: string, body: Stream.Stream<Uint8Array, E>, lengthBytes: number): Effect.Effect<void, RemoteStorageError | E> {
    return Effect.suspend(() => {
      const refused = this.admit(caller, "put", path, remotePathProblem(path))
      if (refused !== undefined) return refused
      if (!Number.isSafeInteger(lengthBytes) || lengthBytes < 0) {
        return this.permanent(caller, "put", path, `length ${lengthBytes} is not a byte count`)
      }
      if (this.partitioned.has(caller.node)) return this.timeOut(caller, "put", path)
      // The body goes out in the caller's fiber: if the caller dies or is interrupted while
      // sending, the upload is abandoned and nothing lands.
      const parts: Uint8Array[] = []
      let sentBytes = 0
      let waitedUs = 0
      let tooLong: RemoteStorageError | undefined
      const send = Stream.runForEach(body, (chunk) =>
        Effect.suspend(() => {
          if (sentBytes + chunk.byteLength > lengthBytes) {
            tooLong = this.error("Permanent", "put", path, `the body is longer than ${lengthBytes} bytes`)
            return Effect.fail(tooLong)
          }
          parts.push(chunk.slice()) // the caller may reuse its buffer
          sentBytes += chunk.byteLength
          const dueUs = this.transferUs(sentBytes, this.faults.uploadBytesPerSecond)
          const waitUs = dueUs - waitedUs
          waitedUs = dueUs
          return waitInLife(this.kernel, caller.life, waitUs)
        }))
      return send.pipe(
        Effect.tapError((error) => Effect.sync(() => {
          if (tooLong !== undefined && error === tooLong) this.refuse(caller, tooLong)
          else this.kernel.log(caller.life.label, `s3 put ${path} body failed after ${sentBytes} bytes`)
        })),
        Effect.flatMap(() => {
          if (sentBytes !== lengthBytes) return this.permanent(caller, "put", path, `the body has ${sentBytes} bytes, not ${lengthBytes}`)
          return this.request(caller, "put", path, () => {
            const bytes = joinParts(parts, sentBytes)
            this.store.set(path, bytes)
            this.stats.puts++
            this.stats.putBytes += bytes.byteLength
            // The data digest (DESIGN.md §3), when the object becomes visible.
            this.kernel.trace.foldBytes(`s3 ${path}`, bytes)
            this.notify({ kind: "put", path, bytes, by: caller.life.label })
            return { value: undefined, detail: `+${bytes.byteLength}` }
          }, { mutation: true })
        })
      )
    })
  }

  private get(caller: Caller, path: string, range: ByteRange | undefined): Effect.Effect<Uint8Array, RemoteStorageError> {
    return Effect.suspend(() => {
      const refused = this.admit(caller, "get", path, remotePathProblem(path))
      if (refused !== undefined) return refused
      if (range !== undefined) {
        const { startBytes, endBytes } = range
        const valid = Number.isSafeInteger(startBytes) && startBytes >= 0 &&
          (endBytes === undefined || (Number.isSafeInteger(endBytes) && endBytes >= startBytes))
        if (!valid) return this.permanent(caller, "get", path, `invalid range [${startBytes}, ${endBytes ?? ""})`)
      }
      if (this.partitioned.has(caller.node)) return this.timeOut(caller, "get", path)
      return this.request(caller, "get", path, () => {
        const stored = this.store.get(path)
        if (stored === undefined) return undefined
        this.stats.gets++
        const startBytes = Math.min(range?.startBytes ?? 0, stored.byteLength)
        const endBytes = Math.min(range?.endBytes ?? stored.byteLength, stored.byteLength)
        const bytes = stored.slice(startBytes, endBytes) // a copy: the caller owns it
        return {
          value: bytes,
          detail: range === undefined ? `${bytes.byteLength} bytes` : `[${startBytes}, ${endBytes})`,
          transferUs: this.transferUs(bytes.byteLength, this.faults.downloadBytesPerSecond)
        }
      }, { mutation: false })
    })
  }

  private list(caller: Caller, prefix: string): Effect.Effect<ReadonlyArray<RemoteObject>, RemoteStorageError> {
    return Effect.suspend(() => {
      // A prefix may end inside a name ("tenant/time") or with a "/"; what comes before must be a path.
      const stem = prefix.endsWith("/") ? prefix.slice(0, -1) : prefix
      const problem = prefix.length === 0 ? undefined : remotePathProblem(stem)
      const refused = this.admit(caller, "list", prefix, problem)
      if (refused !== undefined) return refused
      if (this.partitioned.has(caller.node)) return this.timeOut(caller, "list", prefix)
      return this.request(caller, "list", prefix, () => {
        this.stats.lists++
        const listed = this.paths(prefix).map((path): RemoteObject => ({ path, sizeBytes: this.store.get(path)!.byteLength }))
        return { value: listed, detail: `${listed.length} objects` }
      }, { mutation: false })
    })
  }

  private delete(caller: Caller, path: string): Effect.Effect<void, RemoteStorageError> {
    return Effect.suspend(() => {
      const refused = this.admit(caller, "delete", path, remotePathProblem(path))
      if (refused !== undefined) return refused
      if (this.partitioned.has(caller.node)) return this.timeOut(caller, "delete", path)
      return this.request(caller, "delete", path, () => {
        // An absent object is success: deletes are retried.
        const existed = this.store.delete(path)
        this.stats.deletes++
        if (existed) this.notify({ kind: "delete", path, by: caller.life.label })
        return { value: undefined, detail: existed ? "removed" : "absent" }
      }, { mutation: true })
    })
  }

  private copy(caller: Caller, from: string, to: string): Effect.Effect<void, RemoteStorageError> {
    return Effect.suspend(() => {
      const what = `${from} -> ${to}`
      const refused = this.admit(caller, "copy", what, remotePathProblem(from) ?? remotePathProblem(to))
      if (refused !== undefined) return refused
      if (this.partitioned.has(caller.node)) return this.timeOut(caller, "copy", what)
      return this.request(caller, "copy", what, () => {
        const bytes = this.store.get(from)
        if (bytes === undefined) return undefined
        this.store.set(to, bytes) // stored bytes are never changed, so sharing them is safe
        this.stats.copies++
        // Same bytes as the source's put, already folded: the trace line covers the copy.
        this.notify({ kind: "copy", path: to, from, bytes, by: caller.life.label })
        return { value: undefined, detail: `+${bytes.byteLength}` }
      }, { mutation: true })
    })
  }

  // ---------------------------------------------------------------- request machinery

  /**
   * The store answers after one latency: then it draws a transient error (nothing happens),
   * else `apply` runs (undefined = NotFound), then for a change it draws a lost
   * acknowledgement (it happened; the caller sees Transient). A node cut off by then gets
   * nothing done and times out. The answer of a get reaches the caller after its download.
   */
  private request<A>(
    caller: Caller,
    operation: string,
    path: string,
    apply: () => Applied<A> | undefined,
    options: { readonly mutation: boolean }
  ): Effect.Effect<A, RemoteStorageError> {
    const { life } = caller
    const latencyUs = drawUs(this.kernel, this.faults.requestLatencyUs)
    const answer = remoteRequest<Answer<A>, never>(this.kernel, life, latencyUs, () => {
      if (this.partitioned.has(caller.node)) {
        this.stats.timeouts++
        this.kernel.log(life.label, `s3 ${operation} ${path} timed out (partitioned)`)
        return Effect.succeed({ error: this.error("Transient", operation, path, "request timed out (the store is unreachable)"), delayUs: this.faults.requestTimeoutUs })
      }
      if (this.faultsOn && this.kernel.chance(this.faults.transientErrorProbability)) {
        this.stats.transientErrors++
        this.kernel.log(life.label, `s3 ${operation} ${path} Transient (injected)`)
        return Effect.succeed({ error: this.error("Transient", operation, path, "503 SlowDown (injected)"), delayUs: 0 })
      }
      const applied = apply()
      if (applied === undefined) {
        this.stats.notFound++
        this.kernel.log(life.label, `s3 ${operation} ${path} NotFound`)
        return Effect.succeed({ error: this.error("NotFound", operation, path, "no such object"), delayUs: 0 })
      }
      if (options.mutation && this.faultsOn && this.kernel.chance(this.faults.lostAckProbability)) {
        this.stats.lostAcks++
        this.kernel.log(life.label, `s3 ${operation} ${path} ${applied.detail} ack lost`)
        return Effect.succeed({ error: this.error("Transient", operation, path, "connection reset before the answer (the request took effect)"), delayUs: 0 })
      }
      this.kernel.log(life.label, `s3 ${operation} ${path} ${applied.detail}`)
      return Effect.succeed({ value: applied.value, delayUs: applied.transferUs ?? 0 })
    })
    return Effect.flatMap(answer, (outcome) => {
      const after = waitInLife(this.kernel, life, outcome.delayUs)
      return "error" in outcome ? Effect.andThen(after, Effect.fail(outcome.error)) : Effect.as(after, outcome.value)
    })
  }

  /** Admits a call: undefined to go on, or the effect a refused one returns (never, for a dead or crashed caller). */
  private admit(caller: Caller, operation: string, path: string, problem: string | undefined): Effect.Effect<never, RemoteStorageError> | undefined {
    caller.gate.check(`RemoteStorage ${operation}`)
    if (!caller.life.alive) return Effect.never
    const hook = caller.hooks?.beforeOperation
    if (hook !== undefined && !hook(operation, path)) return Effect.never
    if (!caller.life.alive) return Effect.never
    if (problem !== undefined) return this.permanent(caller, operation, path, `invalid path: ${problem}`)
    this.stats.requests++
    return undefined
  }

  /** A partitioned caller's request hangs until its timeout, then fails Transient; nothing happens. */
  private timeOut(caller: Caller, operation: string, path: string): Effect.Effect<never, RemoteStorageError> {
    this.kernel.log(caller.life.label, `s3 ${operation} ${path} sent while partitioned`)
    return Effect.andThen(waitInLife(this.kernel, caller.life, this.faults.requestTimeoutUs), Effect.suspend(() => {
      this.stats.timeouts++
      this.kernel.log(caller.life.label, `s3 ${operation} ${path} timed out (partitioned)`)
      return Effect.fail(this.error("Transient", operation, path, "request timed out (the store is unreachable)"))
    }))
  }

  private permanent(caller: Caller, operation: string, path: string, message: string): Effect.Effect<never, RemoteStorageError> {
    const error = this.error("Permanent", operation, path, message)
    this.refuse(caller, error)
    return Effect.fail(error)
  }

  private refuse(caller: Caller, error: RemoteStorageError): void {
    this.stats.permanentErrors++
    this.kernel.log(caller.life.label, `s3 ${error.operation} ${error.path} Permanent: ${error.message}`)
  }

  private error(reason: RemoteStorageErrorReason, operation: string, path: string, message: string): RemoteStorageError {
    return new RemoteStorageError({ reason, operation, path, message })
  }

  /** Microseconds to move `bytes` at `bytesPerSecond` (0 when the speed is unlimited). */
  private transferUs(bytes: number, bytesPerSecond: number | undefined): number {
    return bytesPerSecond === undefined ? 0 : Math.ceil((bytes * US_PER_SECOND) / bytesPerSecond)
  }

  private notify(change: ObjectStoreChange): void {
    for (const listener of this.changeListeners) listener(change)
  }
}

interface Caller {
  readonly life: Incarnation
  readonly node: string
  readonly hooks: ObjectStoreHooks | undefined
  readonly gate: LifeGate
}

interface Applied<A> {
  readonly value: A
  /** What the trace line says happened. */
  readonly detail: string
  /** Time the answer takes to reach the caller after the store answered (a download). */
  readonly transferUs?: number
}

type Answer<A> =
  | { readonly value: A; readonly delayUs: number }
  | { readonly error: RemoteStorageError; readonly delayUs: number }

function joinParts(parts: ReadonlyArray<Uint8Array>, totalBytes: number): Uint8Array {
  if (parts.length === 1) return parts[0]!
  const joined = new Uint8Array(totalBytes)
  let offset = 0
  for (const part of parts) {
    joined.set(part, offset)
    offset += part.byteLength
  }
  return joined
}
