import { Context, Effect, Schema, type Scope, Stream } from "effect"

/**
 * HTTP as a service (DESIGN.md §3): the management API is a handler from request to
 * response, written once in `core`; `live` serves it with `node:http`, the simulator over its
 * simulated connections. Peer calls (pull_timeline, restore, migrate) go through `HttpClient`.
 * Requests arrive with their whole body (the server caps its size); a response body may stream
 * (a snapshot is gigabytes), and a stream that fails mid-way is cut short on the wire, so the
 * client sees a truncated body, never a complete-looking one.
 */

/** The largest request body read; a longer one gets 413 before the handler runs. */
export const REQUEST_BODY_BYTES_MAX = 1 << 20

export interface HttpRequest {
  readonly method: string
  /** The path without the query, percent-decoding not applied (ids and LSNs never need it). */
  readonly path: string
  /** Query parameters; a repeated name keeps its last value. */
  readonly query: ReadonlyMap<string, string>
  /** Header names lowercase; a repeated header keeps its last value. */
  readonly headers: ReadonlyMap<string, string>
  readonly body: Uint8Array
}

export class HttpBodyError extends Schema.TaggedError<HttpBodyError>()("HttpBodyError", {
  message: Schema.String
}) {}

export type HttpBody = Uint8Array | { readonly stream: Stream.Stream<Uint8Array, HttpBodyError>; readonly lengthBytes?: number }

export interface HttpResponse {
  readonly status: number
  readonly headers: Readonly<Record<string, string>>
  readonly body: HttpBody
}

/** A handler never fails: every error is already a response (4xx or 5xx with a JSON body). */
export type HttpHandler<R = never> = (request: HttpRequest) => Effect.Effect<HttpResponse, never, R>

const utf8 = new TextEncoder()

export function jsonResponse(status: number, value: unknown, headers: Readonly<Record<string, string>> = {}): HttpResponse {
  return { status, headers: { "content-type": "application/json", ...headers }, body: utf8.encode(JSON.stringify(value)) }
}

/** Neon's error body: `{"msg": "..."}`. */
export function errorResponse(status: number, message: string): HttpResponse {
  return jsonResponse(status, { msg: message })
}

// ---- serving ----

export class HttpServeError extends Schema.TaggedError<HttpServeError>()("HttpServeError", {
  address: Schema.String,
  message: Schema.String
}) {}

export interface BoundHttpServer {
  /** The bound address (with the real port when 0 was asked for). */
  readonly address: string
}

/** Serves a handler at host:port until the scope closes (then open connections are dropped). */
export class HttpServer extends Context.Service<HttpServer, {
  serve<R>(address: string, handler: HttpHandler<R>): Effect.Effect<BoundHttpServer, HttpServeError, R | Scope.Scope>
}>()("sk/core/server/HttpServer") {}

// ---- client ----

export const HttpClientErrorReason = Schema.Literals([
  "Connect", // refused, timed out, unreachable
  "Protocol", // not HTTP, or a body that ended before its length
  "Timeout",
  "TooLarge"
])
export type HttpClientErrorReason = typeof HttpClientErrorReason.Type

export class HttpClientError extends Schema.TaggedError<HttpClientError>()("HttpClientError", {
  reason: HttpClientErrorReason,
  address: Schema.String,
  message: Schema.String
}) {}

export interface HttpClientRequest {
  readonly method: string
  /** Path and query, e.g. `/v1/tenant/timeline?x=1`. */
  readonly path: string
  readonly headers?: Readonly<Record<string, string>>
  readonly body?: Uint8Array
}

export interface HttpClientResponse {
  readonly status: number
  readonly headers: ReadonlyMap<string, string>
  /** The body, once: a truncated body fails with reason Protocol. */
  readonly body: Stream.Stream<Uint8Array, HttpClientError>
}

/** One request per connection (Connection: close); the response's scope holds the connection. */
export class HttpClient extends Context.Service<HttpClient, {
  request(address: string, request: HttpClientRequest): Effect.Effect<HttpClientResponse, HttpClientError, Scope.Scope>
}>()("sk/core/server/HttpClient") {}

/** Reads a whole (small) body: at most `limitBytes`. */
export const readBody = (response: HttpClientResponse, address: string, limitBytes = 16 << 20): Effect.Effect<Uint8Array, HttpClientError> =>
  Effect.gen(function* () {
    const chunks: Uint8Array[] = []
    let total = 0
    yield* Stream.runForEach(response.body, (chunk) => Effect.gen(function* () {
      total += chunk.byteLength
      if (total > limitBytes) return yield* new HttpClientError({ reason: "TooLarge", address, message: `body over ${limitBytes} bytes` })
      chunks.push(chunk)
    }))
    const out = new Uint8Array(total)
    let offset = 0
    for (const chunk of chunks) {
      out.set(chunk, offset)
      offset += chunk.byteLength
    }
    return out
  })

/** A JSON call: status and parsed body (undefined for an empty body). */
export const requestJson = (address: string, request: HttpClientRequest): Effect.Effect<{ readonly status: number; readonly json: unknown }, HttpClientError, HttpClient> =>
  Effect.scoped(Effect.gen(function* () {
    const client = yield* HttpClient
    const response = yield* client.request(address, {
      ...request,
      headers: { accept: "application/json", ...(request.body !== undefined ? { "content-type": "application/json" } : {}), ...request.headers }
    })
    const bytes = yield* readBody(response, address)
    const text = new TextDecoder().decode(bytes)
    if (text.length === 0) return { status: response.status, json: undefined }
    const parsed = yield* Effect.try({
      try: () => JSON.parse(text) as unknown,
      catch: () => new HttpClientError({ reason: "Protocol", address, message: `not JSON: ${text.slice(0, 200)}` })
    })
    return { status: response.status, json: parsed }
  }))
