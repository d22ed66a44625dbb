import { Etcd3, type IKeyValue, type Lease } from "etcd3"
import { Cause, Effect, Layer, Queue, Result, Stream } from "effect"
import { assert } from "../core/assert.js"
import { Broker, BrokerError, brokerKey, encodeSafekeeperTimelineInfo, type SafekeeperTimelineInfo } from "../core/io/broker.js"
import { Log } from "../core/io/log.js"
import { parseAddress } from "../core/io/net.js"
import { decodeInfoText } from "./broker-embedded.js"

/**
 * Broker over etcd (reference §10 "Broker", as Neon's safekeepers used it before their own
 * storage_broker): each info is the value of `<prefix>/<brokerKey(info)>`, put under one lease
 * of this client, kept alive while the process lives, so a safekeeper that dies (or stops)
 * drops out when the lease's TTL runs out. A lost lease (etcd was away longer than its TTL)
 * is granted again on the next publish. Subscribing reads every current value, then watches
 * the prefix from the revision after that read, so nothing falls in between.
 *
 * Every failure to reach etcd is Unavailable: a publish fails, a subscription ends, and the
 * caller retries. The client's own reconnecting is not relied on, so an outage is seen.
 */
export interface EtcdBrokerOptions {
  /** Key prefix of every info, without a trailing "/". */
  readonly prefix?: string
  /** TTL of the lease the infos are put under. */
  readonly leaseTtlSeconds?: number
  /** Deadline of each unary call (put, range, lease grant). */
  readonly callTimeoutMs?: number
  /** Infos a subscription holds for a slow consumer; beyond, the oldest are dropped. */
  readonly subscribeBufferLengthMax?: number
}

export const ETCD_PREFIX_DEFAULT = "sk/safekeeper-timeline-info"
/** Neon's default heartbeat timeout is 5 s: a dead safekeeper's info outlives it about as long. */
export const ETCD_LEASE_TTL_SECONDS_DEFAULT = 5
export const ETCD_CALL_TIMEOUT_MS_DEFAULT = 2_000
export const ETCD_SUBSCRIBE_BUFFER_LENGTH_MAX_DEFAULT = 4_096
/** Keys the initial read of a subscription returns at most (one per safekeeper per timeline). */
export const ETCD_SNAPSHOT_KEY_COUNT_MAX = 65_536
assert(ETCD_CALL_TIMEOUT_MS_DEFAULT < ETCD_LEASE_TTL_SECONDS_DEFAULT * 1000, "a put can finish within its lease's TTL")

export const etcdBrokerLayer = (endpoints: ReadonlyArray<string>, options: EtcdBrokerOptions = {}): Layer.Layer<Broker, BrokerError, Log> =>
  Layer.effect(Broker)(Effect.gen(function*() {
    const config = resolveOptions(options)
    const hosts = yield* hostsOf(endpoints)
    const log = yield* Log
    const warn = (message: string, fields: Readonly<Record<string, string>>): void => {
      Effect.runFork(log.emit("warn", message, fields))
    }
    const client = yield* Effect.acquireRelease(
      Effect.sync(() => new Etcd3({
        hosts: [...hosts],
        dialTimeout: config.callTimeoutMs,
        // Streams (watch, keepalive) live long; every other call gets a deadline, so a hung
        // etcd fails a publish instead of holding it.
        defaultCallOptions: (context) => (context.isStream ? {} : { deadline: new Date(Date.now() + config.callTimeoutMs) })
      })),
      (client) => Effect.sync(() => {
        // Released first: a lease whose client is closed would retry its keepalive every 100 ms
        // until twice its TTL passed. Not revoked: keys expire by TTL, as after a crash.
        lease?.release()
        lease = undefined
        client.close()
      })
    )
    let lease: Lease | undefined
    const currentLease = (): Lease => {
      if (lease !== undefined && !lease.revoked()) return lease
      const fresh = client.lease(config.leaseTtlSeconds, { autoKeepAlive: true })
      fresh.on("lost", (error) => {
        if (lease === fresh) lease = undefined
        warn("etcd broker lease lost; the next publish grants a new one", { error: error.message })
      })
      lease = fresh
      return fresh
    }
    const unavailable = (what: string) => (error: unknown) =>
      new BrokerError({ reason: "Unavailable", message: `etcd ${hosts.join(",")}: ${what}: ${messageOf(error)}` })

    return Broker.of({
      publish: (info) =>
        Effect.tryPromise({
          try: () => currentLease().put(`${config.prefix}/${brokerKey(info)}`).value(encodeSafekeeperTimelineInfo(info)).exec(),
          catch: unavailable("publish")
        }).pipe(Effect.asVoid),

      subscribe: Stream.callback<SafekeeperTimelineInfo, BrokerError>((queue) =>
        Effect.gen(function*() {
          const offer = (kv: IKeyValue): void => {
            const decoded = decodeValue(config.prefix, kv)
            if (Result.isFailure(decoded)) return warn("etcd broker: skipping a malformed value", { key: kv.key.toString("utf8"), error: decoded.failure })
            Queue.offerUnsafe(queue, decoded.success)
          }
          const snapshot = yield* Effect.tryPromise({
            try: () => client.getAll().prefix(`${config.prefix}/`).limit(ETCD_SNAPSHOT_KEY_COUNT_MAX).exec(),
            catch: unavailable("subscribe")
          })
          for (const kv of snapshot.kvs) offer(kv)
          const fail = (error: BrokerError): void => void Queue.failCauseUnsafe(queue, Cause.fail(error))
          yield* Effect.acquireRelease(
            Effect.sync(() => {
              // watcher() attaches at once; its listeners are in place before any event, which
              // create()'s promise would leave a gap for.
              const watcher = client.watch().prefix(`${config.prefix}/`).startRevision(String(BigInt(snapshot.header.revision) + 1n)).watcher()
              let connected = false
              const timer = setTimeout(() => {
                if (!connected) fail(unavailable("subscribe")(new Error(`watch not established within ${config.callTimeoutMs} ms`)))
              }, config.callTimeoutMs)
              watcher.on("connected", () => {
                connected = true
                clearTimeout(timer)
              })
              watcher.on("put", offer)
              // The client would reconnect and resume from its last revision; we end the stream
              // instead so the caller sees the outage (and resubscribes with a fresh snapshot).
              watcher.on("disconnected", (error) => fail(unavailable("watch disconnected")(error)))
              watcher.on("error", (error) => fail(unavailable("watch failed")(error)))
              watcher.on("end", () => fail(unavailable("watch")(new Error("ended"))))
              return { watcher, timer }
            }),
            ({ watcher, timer }) =>
              Effect.gen(function*() {
                clearTimeout(timer)
                yield* Effect.tryPromise(() => watcher.cancel()).pipe(Effect.timeout(config.callTimeoutMs), Effect.ignore)
              })
          )
        }), { bufferSize: config.subscribeBufferLengthMax, strategy: "sliding" })
    })
  }))

interface EtcdConfig {
  readonly prefix: string
  readonly leaseTtlSeconds: number
  readonly callTimeoutMs: number
  readonly subscribeBufferLengthMax: number
}

function resolveOptions(options: EtcdBrokerOptions): EtcdConfig {
  const config: EtcdConfig = {
    prefix: options.prefix ?? ETCD_PREFIX_DEFAULT,
    leaseTtlSeconds: options.leaseTtlSeconds ?? ETCD_LEASE_TTL_SECONDS_DEFAULT,
    callTimeoutMs: options.callTimeoutMs ?? ETCD_CALL_TIMEOUT_MS_DEFAULT,
    subscribeBufferLengthMax: options.subscribeBufferLengthMax ?? ETCD_SUBSCRIBE_BUFFER_LENGTH_MAX_DEFAULT
  }
  assert(config.prefix.length > 0 && !config.prefix.endsWith("/"), "the etcd prefix is non-empty without a trailing /")
  assert(Number.isSafeInteger(config.leaseTtlSeconds) && config.leaseTtlSeconds >= 2, "an etcd lease lives at least 2 s")
  assert(Number.isSafeInteger(config.callTimeoutMs) && config.callTimeoutMs > 0, "callTimeoutMs must be a positive integer")
  assert(Number.isSafeInteger(config.subscribeBufferLengthMax) && config.subscribeBufferLengthMax > 0, "subscribeBufferLengthMax must be positive")
  return config
}

/** "host:port" each → etcd3's "http://host:port"; none, or a malformed one → Invalid. */
function hostsOf(endpoints: ReadonlyArray<string>): Effect.Effect<ReadonlyArray<string>, BrokerError> {
  if (endpoints.length === 0) return Effect.fail(new BrokerError({ reason: "Invalid", message: "no etcd endpoint given" }))
  const hosts: string[] = []
  for (const endpoint of endpoints) {
    const address = parseAddress(endpoint)
    if (address === undefined || address.port === 0 || address.host.length === 0) {
      return Effect.fail(new BrokerError({ reason: "Invalid", message: `etcd endpoint is not host:port: ${endpoint}` }))
    }
    hosts.push(`http://${endpoint}`)
  }
  return Effect.succeed(hosts)
}

/** The info a key holds, checked to belong to that key (a stray value is not trusted). */
function decodeValue(prefix: string, kv: IKeyValue): Result.Result<SafekeeperTimelineInfo, string> {
  const decoded = decodeInfoText(kv.value.toString("utf8"))
  if (Result.isFailure(decoded)) return decoded
  const key = kv.key.toString("utf8")
  const expected = `${prefix}/${brokerKey(decoded.success)}`
  if (key !== expected) return Result.fail(`the info belongs under ${expected}`)
  return decoded
}

function messageOf(error: unknown): string {
  return error instanceof Error ? `${error.constructor.name}: ${error.message}` : String(error)
}
