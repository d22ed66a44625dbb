import * as http from "node:http"
import { Cause, Clock, Effect, Layer, Queue, Result, Stream } from "effect"
import { assert } from "../core/assert.js"
import {
  Broker,
  BrokerError,
  brokerKey,
  decodeSafekeeperTimelineInfo,
  encodeSafekeeperTimelineInfo,
  type SafekeeperTimelineInfo
} from "../core/io/broker.js"
import { NetError, parseAddress } from "../core/io/net.js"

/**
 * The embedded broker (reference §10 "Broker"): what `sk broker` (and `sk local`) serves so
 * separate safekeeper processes of one machine can gossip without etcd installed. It keeps
 * the newest info per `brokerKey` and fans every accepted publish out to all subscribers:
 *
 * - `POST /v1/publish`: one JSON SafekeeperTimelineInfo → 200 `{}`; a body that is not JSON,
 *   misses or mistypes a field, or exceeds PUBLISH_BODY_BYTES_MAX → 400 `{"msg": ...}` and
 *   nothing is stored or sent.
 * - `GET /v1/subscribe`: newline-delimited JSON, first the current value of every live key
 *   (sorted by key, so a new subscriber learns the state at once), then every info published
 *   from then on. Empty lines are heartbeats: a client that hears nothing for a few of them
 *   knows the broker is gone even when TCP does not tell it. A subscriber that leaves more
 *   than `subscriberBufferBytesMax` unread is cut off (it resubscribes and gets a snapshot).
 * - `GET /v1/status`: `{"keys": N, "subscribers": M}`, for health checks and tests.
 *
 * An entry not refreshed within `ttlMs` is dropped, as an etcd lease would drop the keys of a
 * dead safekeeper, so late subscribers do not learn of it. Nothing is durable: a restarted
 * broker starts empty and fills within one publish interval.
 */
export interface EmbeddedBrokerOptions {
  /** An entry not republished within this long is forgotten. */
  readonly ttlMs?: number
  /** Period of the empty heartbeat lines sent to subscribers. */
  readonly heartbeatIntervalMs?: number
  /** Keys held at most; a publish of a new key beyond it gets 503. */
  readonly entryCountMax?: number
  /** Subscribers at most; one more gets 503. */
  readonly subscriberCountMax?: number
  /** Bytes a subscriber may leave unread before it is cut off (it resubscribes). */
  readonly subscriberBufferBytesMax?: number
}

export const EMBEDDED_BROKER_TTL_MS_DEFAULT = 10_000
export const HEARTBEAT_INTERVAL_MS_DEFAULT = 1_000
export const ENTRY_COUNT_MAX_DEFAULT = 65_536
export const SUBSCRIBER_COUNT_MAX_DEFAULT = 1_024
export const SUBSCRIBER_BUFFER_BYTES_MAX_DEFAULT = 4 * 1024 * 1024
/** One info is ~400 bytes of JSON; anything far larger is not one. */
export const PUBLISH_BODY_BYTES_MAX = 16 * 1024
/** A subscription line longer than this is not an info: the client gives up on the stream. */
export const SUBSCRIBE_LINE_BYTES_MAX = 64 * 1024
assert(PUBLISH_BODY_BYTES_MAX < SUBSCRIBE_LINE_BYTES_MAX, "every accepted publish fits in one subscription line")
assert(PUBLISH_BODY_BYTES_MAX < SUBSCRIBER_BUFFER_BYTES_MAX_DEFAULT, "a subscriber's buffer holds at least one info")

/** How long the server keeps an idle publisher's connection open. */
export const KEEP_ALIVE_TIMEOUT_MS = 60_000

export const PUBLISH_PATH = "/v1/publish"
export const SUBSCRIBE_PATH = "/v1/subscribe"
export const STATUS_PATH = "/v1/status"

/**
 * Serves the embedded broker on `listen` ("host:port"; port 0 picks a free one) until the
 * scope closes, which cuts every subscriber off (their streams fail with Unavailable).
 * Succeeds with the bound "host:port".
 */
export const serveEmbeddedBroker = (listen: string, options: EmbeddedBrokerOptions = {}) =>
  Effect.gen(function*() {
    const clock = yield* Clock.Clock
    const config = resolveServerOptions(options)
    const state = new BrokerState(config, () => Number(clock.monotonicTimeNanosUnsafe() / 1_000_000n))
    const server = yield* Effect.acquireRelease(
      bind(listen, state),
      (server) => Effect.callback<void>((resume) => {
        state.close()
        server.closeAllConnections()
        server.close(() => resume(Effect.void))
      })
    )
    yield* Effect.acquireRelease(
      Effect.sync(() => ({
        heartbeat: setInterval(() => state.heartbeat(), config.heartbeatIntervalMs),
        // Only frees memory: publish, subscribe and status expire entries themselves first,
        // so no answer ever holds an entry past its TTL.
        sweep: setInterval(() => state.expire(), Math.max(1, Math.floor(config.ttlMs / 4)))
      })),
      (timers) => Effect.sync(() => {
        clearInterval(timers.heartbeat)
        clearInterval(timers.sweep)
      })
    )
    const bound = server.address()
    assert(bound !== null && typeof bound === "object", "a listening TCP server has an address")
    return `${bound.address}:${bound.port}`
  })

/** The client of an embedded broker. */
export interface HttpBrokerOptions {
  /** A publish that has no answer within this long fails with Unavailable. */
  readonly publishTimeoutMs?: number
  /** A subscription that hears nothing (not even a heartbeat) this long fails with Unavailable. */
  readonly subscribeIdleTimeoutMs?: number
  /** Infos a subscription holds for a slow consumer; beyond, the oldest are dropped. */
  readonly subscribeBufferLengthMax?: number
}

export const PUBLISH_TIMEOUT_MS_DEFAULT = 2_000
export const SUBSCRIBE_IDLE_TIMEOUT_MS_DEFAULT = 5 * HEARTBEAT_INTERVAL_MS_DEFAULT
export const SUBSCRIBE_BUFFER_LENGTH_MAX_DEFAULT = 4_096
assert(SUBSCRIBE_IDLE_TIMEOUT_MS_DEFAULT > 2 * HEARTBEAT_INTERVAL_MS_DEFAULT, "one late heartbeat does not end a subscription")

/**
 * Broker over an embedded broker at `endpoint` ("http://host:port"). Publishes reuse
 * keep-alive connections (one info a second per timeline); each subscription holds a
 * connection of its own. The layer fails with Invalid for a malformed endpoint; nothing is
 * contacted until the first call, so a broker that is down only fails the calls.
 */
export const httpBrokerLayer = (endpoint: string, options: HttpBrokerOptions = {}): Layer.Layer<Broker, BrokerError> =>
  Layer.effect(Broker)(Effect.gen(function*() {
    const target = parseHttpEndpoint(endpoint)
    if (target === undefined) {
      return yield* new BrokerError({ reason: "Invalid", message: `broker endpoint is not http://host:port: ${endpoint}` })
    }
    const config = resolveClientOptions(options)
    const agent = yield* Effect.acquireRelease(
      Effect.sync(() => new http.Agent({ keepAlive: true, maxSockets: 4 })),
      (agent) => Effect.sync(() => agent.destroy())
    )
    return Broker.of({
      publish: (info) => publish(target, agent, config.publishTimeoutMs, info),
      subscribe: subscribe(target, config)
    })
  }))

// ---- server ----

interface ServerConfig {
  readonly ttlMs: number
  readonly heartbeatIntervalMs: number
  readonly entryCountMax: number
  readonly subscriberCountMax: number
  readonly subscriberBufferBytesMax: number
}

function resolveServerOptions(options: EmbeddedBrokerOptions): ServerConfig {
  const config: ServerConfig = {
    ttlMs: options.ttlMs ?? EMBEDDED_BROKER_TTL_MS_DEFAULT,
    heartbeatIntervalMs: options.heartbeatIntervalMs ?? HEARTBEAT_INTERVAL_MS_DEFAULT,
    entryCountMax: options.entryCountMax ?? ENTRY_COUNT_MAX_DEFAULT,
    subscriberCountMax: options.subscriberCountMax ?? SUBSCRIBER_COUNT_MAX_DEFAULT,
    subscriberBufferBytesMax: options.subscriberBufferBytesMax ?? SUBSCRIBER_BUFFER_BYTES_MAX_DEFAULT
  }
  assert(Number.isSafeInteger(config.ttlMs) && config.ttlMs > 0, "ttlMs must be a positive integer")
  assert(Number.isSafeInteger(config.heartbeatIntervalMs) && config.heartbeatIntervalMs > 0, "heartbeatIntervalMs must be a positive integer")
  assert(Number.isSafeInteger(config.entryCountMax) && config.entryCountMax > 0, "entryCountMax must be positive")
  assert(Number.isSafeInteger(config.subscriberCountMax) && config.subscriberCountMax > 0, "subscriberCountMax must be positive")
  assert(config.subscriberBufferBytesMax >= PUBLISH_BODY_BYTES_MAX, "a subscriber's buffer holds at least one info")
  return config
}

interface Entry {
  readonly line: string
  readonly refreshedMs: number
}

/** The broker's memory: plain and synchronous, driven by the HTTP handlers and two timers. */
class BrokerState {
  private readonly entries = new Map<string, Entry>()
  private readonly subscribers = new Set<http.ServerResponse>()
  private closed = false

  constructor(private readonly config: ServerConfig, private readonly nowMs: () => number) {}

  /** False when the key is new and the broker already holds entryCountMax keys. */
  publish(info: SafekeeperTimelineInfo): boolean {
    const key = brokerKey(info)
    this.expire()
    if (!this.entries.has(key) && this.entries.size >= this.config.entryCountMax) return false
    const line = `${encodeSafekeeperTimelineInfo(info)}\n`
    this.entries.set(key, { line, refreshedMs: this.nowMs() })
    for (const subscriber of this.subscribers) this.send(subscriber, line)
    return true
  }

  hasRoomForSubscriber(): boolean {
    return !this.closed && this.subscribers.size < this.config.subscriberCountMax
  }

  /** Attaches a subscriber whose 200 head is written; the caller checked hasRoomForSubscriber. */
  subscribe(response: http.ServerResponse): void {
    assert(this.hasRoomForSubscriber(), "a subscriber is attached only when there is room")
    this.expire()
    this.subscribers.add(response)
    response.once("close", () => this.subscribers.delete(response))
    const keys = [...this.entries.keys()].sort()
    // One write for the snapshot: the current state arrives as one chunk, before any news.
    const snapshot = keys.map((key) => this.entries.get(key)?.line ?? "").join("")
    // An empty snapshot is a heartbeat: the head goes out with it, and the client learns at once.
    this.send(response, snapshot.length > 0 ? snapshot : "\n")
  }

  status(): Readonly<Record<string, number>> {
    this.expire()
    return { keys: this.entries.size, subscribers: this.subscribers.size }
  }

  heartbeat(): void {
    for (const subscriber of this.subscribers) this.send(subscriber, "\n")
  }

  expire(): void {
    const deadlineMs = this.nowMs() - this.config.ttlMs
    for (const [key, entry] of this.entries) {
      if (entry.refreshedMs < deadlineMs) this.entries.delete(key)
    }
  }

  close(): void {
    this.closed = true
    for (const subscriber of this.subscribers) subscriber.destroy()
    this.subscribers.clear()
  }

  private send(subscriber: http.ServerResponse, text: string): void {
    // Unread bytes pile up in node's buffer for a consumer that stopped reading; past the
    // bound it is cut off rather than grow the broker without limit (it resubscribes).
    if (subscriber.writableLength + text.length > this.config.subscriberBufferBytesMax) {
      this.subscribers.delete(subscriber)
      subscriber.destroy()
      return
    }
    subscriber.write(text)
  }
}

function bind(listen: string, state: BrokerState): Effect.Effect<http.Server, NetError> {
  return Effect.callback<http.Server, NetError>((resume) => {
    const target = parseAddress(listen)
    if (target === undefined) {
      return resume(Effect.fail(new NetError({ reason: "InvalidAddress", address: listen, message: `not host:port: ${listen}` })))
    }
    const server = http.createServer((request, response) => handle(state, request, response))
    // Publishers come back every second or so on a kept-alive connection; node's 5 s default
    // would close idle ones just as a client reuses them (a spurious ECONNRESET publish).
    server.keepAliveTimeout = KEEP_ALIVE_TIMEOUT_MS
    let interrupted = false
    const onError = (error: NodeJS.ErrnoException): void => {
      server.close()
      const reason = error.code === "EADDRINUSE" ? "AddressInUse" : error.code === "EADDRNOTAVAIL" || error.code === "ENOTFOUND" ? "InvalidAddress" : "Other"
      resume(Effect.fail(new NetError({ reason, address: listen, message: error.message })))
    }
    server.once("error", onError)
    server.listen({ host: target.host, port: target.port }, () => {
      server.off("error", onError)
      if (interrupted) return void server.close()
      resume(Effect.succeed(server))
    })
    return Effect.sync(() => {
      interrupted = true
      server.close()
    })
  })
}

function handle(state: BrokerState, request: http.IncomingMessage, response: http.ServerResponse): void {
  const path = (request.url ?? "").split("?")[0]
  if (request.method === "POST" && path === PUBLISH_PATH) return handlePublish(state, request, response)
  if (request.method === "GET" && path === SUBSCRIBE_PATH) {
    request.resume()
    if (!state.hasRoomForSubscriber()) return reply(response, 503, { msg: "too many subscribers" })
    response.writeHead(200, { "content-type": "application/x-ndjson", "cache-control": "no-store" })
    return state.subscribe(response)
  }
  request.resume()
  if (request.method === "GET" && path === STATUS_PATH) return reply(response, 200, state.status())
  reply(response, 404, { msg: `no route for ${request.method ?? "?"} ${request.url ?? "?"}` })
}

function handlePublish(state: BrokerState, request: http.IncomingMessage, response: http.ServerResponse): void {
  const declared = Number(request.headers["content-length"] ?? "0")
  if (declared > PUBLISH_BODY_BYTES_MAX) return refuseOversized(request, response)
  const chunks: Buffer[] = []
  let bytes = 0
  let refused = false
  request.on("data", (chunk: Buffer) => {
    if (refused) return
    bytes += chunk.length
    if (bytes > PUBLISH_BODY_BYTES_MAX) {
      refused = true
      return refuseOversized(request, response)
    }
    chunks.push(chunk)
  })
  request.on("end", () => {
    if (refused) return
    const decoded = decodeInfoText(Buffer.concat(chunks).toString("utf8"))
    if (Result.isFailure(decoded)) return reply(response, 400, { msg: decoded.failure })
    if (!state.publish(decoded.success)) return reply(response, 503, { msg: "broker holds too many keys" })
    reply(response, 200, {})
  })
  request.on("error", () => response.destroy())
}

function refuseOversized(request: http.IncomingMessage, response: http.ServerResponse): void {
  // Close after answering: the rest of the body is not read.
  response.setHeader("connection", "close")
  reply(response, 400, { msg: `body over ${PUBLISH_BODY_BYTES_MAX} bytes` })
  request.resume()
}

function reply(response: http.ServerResponse, status: number, body: Readonly<Record<string, string | number>>): void {
  if (response.headersSent) return
  const text = JSON.stringify(body)
  response.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) })
  response.end(text)
}

/** One info from JSON text, or why not (for a 400). Extra fields are dropped by the schema. */
export function decodeInfoText(text: string): Result.Result<SafekeeperTimelineInfo, string> {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (error) {
    return Result.fail(`not JSON: ${error instanceof Error ? error.message : String(error)}`)
  }
  const decoded = decodeSafekeeperTimelineInfo(json)
  if (Result.isFailure(decoded)) return Result.fail(`not a SafekeeperTimelineInfo: ${decoded.failure.message}`)
  return Result.succeed(decoded.success)
}

// ---- client ----

interface HttpTarget {
  readonly host: string
  readonly port: number
  readonly endpoint: string
}

interface ClientConfig {
  readonly publishTimeoutMs: number
  readonly subscribeIdleTimeoutMs: number
  readonly subscribeBufferLengthMax: number
}

function resolveClientOptions(options: HttpBrokerOptions): ClientConfig {
  const config: ClientConfig = {
    publishTimeoutMs: options.publishTimeoutMs ?? PUBLISH_TIMEOUT_MS_DEFAULT,
    subscribeIdleTimeoutMs: options.subscribeIdleTimeoutMs ?? SUBSCRIBE_IDLE_TIMEOUT_MS_DEFAULT,
    subscribeBufferLengthMax: options.subscribeBufferLengthMax ?? SUBSCRIBE_BUFFER_LENGTH_MAX_DEFAULT
  }
  assert(Number.isSafeInteger(config.publishTimeoutMs) && config.publishTimeoutMs > 0, "publishTimeoutMs must be a positive integer")
  assert(Number.isSafeInteger(config.subscribeIdleTimeoutMs) && config.subscribeIdleTimeoutMs > 0, "subscribeIdleTimeoutMs must be a positive integer")
  assert(Number.isSafeInteger(config.subscribeBufferLengthMax) && config.subscribeBufferLengthMax > 0, "subscribeBufferLengthMax must be positive")
  return config
}

/** "http://host:port" (a trailing "/" allowed) → its parts; anything else → undefined. */
export function parseHttpEndpoint(endpoint: string): HttpTarget | undefined {
  const match = /^http:\/\/([^/?#]+)\/?$/.exec(endpoint)
  if (match === null) return undefined
  const address = parseAddress(match[1] ?? "")
  if (address === undefined || address.port === 0) return undefined
  // URL form "[::1]:port" → node's host "::1".
  const host = address.host.startsWith("[") && address.host.endsWith("]") ? address.host.slice(1, -1) : address.host
  if (host.length === 0) return undefined
  return { host, port: address.port, endpoint }
}

const unavailable = (target: HttpTarget, what: string) =>
  new BrokerError({ reason: "Unavailable", message: `broker ${target.endpoint}: ${what}` })

/** Bytes of an error answer's body kept for the message. */
const ERROR_BODY_BYTES_MAX = 1024

function publish(target: HttpTarget, agent: http.Agent, timeoutMs: number, info: SafekeeperTimelineInfo): Effect.Effect<void, BrokerError> {
  return Effect.callback<void, BrokerError>((resume) => {
    const body = encodeSafekeeperTimelineInfo(info)
    let settled = false
    const settle = (effect: Effect.Effect<void, BrokerError>): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      resume(effect)
    }
    const request = http.request({
      host: target.host,
      port: target.port,
      method: "POST",
      path: PUBLISH_PATH,
      agent,
      headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) }
    }, (response) => {
      const chunks: Buffer[] = []
      let bytes = 0
      response.on("data", (chunk: Buffer) => {
        if (bytes < ERROR_BODY_BYTES_MAX) chunks.push(chunk)
        bytes += chunk.length
      })
      response.on("end", () => {
        const status = response.statusCode ?? 0
        if (status === 200) return settle(Effect.void)
        const text = Buffer.concat(chunks).toString("utf8").slice(0, ERROR_BODY_BYTES_MAX)
        // 400 means this info was refused: retrying it cannot help. Anything else may pass.
        settle(Effect.fail(status === 400
          ? new BrokerError({ reason: "Invalid", message: `broker ${target.endpoint} refused the info: ${text}` })
          : unavailable(target, `publish answered ${status}: ${text}`)))
      })
      response.on("error", (error) => settle(Effect.fail(unavailable(target, `publish: ${error.message}`))))
    })
    const timer = setTimeout(() => {
      request.destroy()
      settle(Effect.fail(unavailable(target, `publish timed out after ${timeoutMs} ms`)))
    }, timeoutMs)
    request.on("error", (error) => settle(Effect.fail(unavailable(target, `publish: ${error.message}`))))
    request.end(body)
    return Effect.sync(() => {
      settled = true
      clearTimeout(timer)
      request.destroy()
    })
  })
}

function subscribe(target: HttpTarget, config: ClientConfig): Stream.Stream<SafekeeperTimelineInfo, BrokerError> {
  return Stream.callback<SafekeeperTimelineInfo, BrokerError>((queue) =>
    Effect.acquireRelease(
      Effect.sync(() => {
        const fail = (error: BrokerError): void => {
          Queue.failCauseUnsafe(queue, Cause.fail(error))
          request.destroy()
        }
        let lastHeardMs = 0
        const heard = (): void => {
          lastHeardMs = performance.now()
        }
        // Its own connection (agent: false): a subscription lives for hours, the pool is for publishes.
        const request = http.get({ host: target.host, port: target.port, path: SUBSCRIBE_PATH, agent: false }, (response) => {
          if (response.statusCode !== 200) {
            response.resume()
            return fail(unavailable(target, `subscribe answered ${response.statusCode ?? 0}`))
          }
          heard()
          let pending = ""
          response.setEncoding("utf8")
          response.on("data", (text: string) => {
            heard()
            pending += text
            let newline = pending.indexOf("\n")
            while (newline >= 0) {
              const line = pending.slice(0, newline)
              pending = pending.slice(newline + 1)
              newline = pending.indexOf("\n")
              if (line.length === 0) continue // a heartbeat
              const decoded = decodeInfoText(line)
              if (Result.isFailure(decoded)) {
                return fail(new BrokerError({ reason: "Invalid", message: `broker ${target.endpoint} sent a bad line: ${decoded.failure}` }))
              }
              Queue.offerUnsafe(queue, decoded.success)
            }
            if (pending.length > SUBSCRIBE_LINE_BYTES_MAX) {
              fail(new BrokerError({ reason: "Invalid", message: `broker ${target.endpoint} sent a line over ${SUBSCRIBE_LINE_BYTES_MAX} bytes` }))
            }
          })
          // A subscription never ends by itself: an end is the broker going away.
          response.on("end", () => fail(unavailable(target, "subscription ended")))
          response.on("close", () => fail(unavailable(target, "subscription closed")))
          response.on("error", (error) => fail(unavailable(target, `subscription: ${error.message}`)))
        })
        request.on("error", (error) => fail(unavailable(target, `subscribe: ${error.message}`)))
        heard()
        const idle = setInterval(() => {
          if (performance.now() - lastHeardMs > config.subscribeIdleTimeoutMs) {
            fail(unavailable(target, `nothing heard for ${config.subscribeIdleTimeoutMs} ms`))
          }
        }, Math.max(1, Math.floor(config.subscribeIdleTimeoutMs / 4)))
        return { request, idle }
      }),
      ({ request, idle }) => Effect.sync(() => {
        clearInterval(idle)
        request.destroy()
      })
    ), { bufferSize: config.subscribeBufferLengthMax, strategy: "sliding" })
}
