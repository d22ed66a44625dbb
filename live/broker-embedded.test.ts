// Goal: the embedded broker and its HTTP client keep the Broker contract of core/io/broker.ts
// across separate clients: a publish reaches every subscriber, a new subscriber hears the
// newest value of every live key first, keys expire when not refreshed, malformed publishes are
// refused with 400 and change nothing, and a subscription fails with Unavailable when the
// broker goes away (silently or not). Method: a server on 127.0.0.1:0 per test, separate client
// layers built in the test's scope, polling waits bounded by a deadline.
import * as http from "node:http"
import { Context, Effect, Exit, Fiber, Layer, Option, Scope, Stream } from "effect"
import fc from "fast-check"
import { describe, expect, test } from "vitest"
import { Broker, BrokerError, type SafekeeperTimelineInfo } from "../core/io/broker.js"
import { httpBrokerLayer, parseHttpEndpoint, PUBLISH_BODY_BYTES_MAX, serveEmbeddedBroker, type HttpBrokerOptions } from "./broker-embedded.js"

const run = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>): Promise<A> => Effect.runPromise(Effect.scoped(effect))

const info = (overrides: Partial<SafekeeperTimelineInfo> = {}): SafekeeperTimelineInfo => ({
  safekeeperId: 1,
  tenantId: "de200bd42b49cc1814412c7e592dd6e9",
  timelineId: "b1d5c8f5b5a4d1d3c3f8e6a2e0d6f4a1",
  term: 3,
  lastLogTerm: 3,
  flushLsn: 0x1_6b37_8d40,
  commitLsn: 0x1_6b37_8d40,
  backupLsn: 0x1_6000_0000,
  remoteConsistentLsn: 0x1_6b00_0000,
  peerHorizonLsn: 0x1_6b00_0000,
  localStartLsn: 0x1_0000_0028,
  standbyHorizon: 0,
  safekeeperConnstr: "127.0.0.1:5454",
  httpConnstr: "127.0.0.1:7676",
  availabilityZone: "az-1",
  ...overrides
})

const client = (address: string, options?: HttpBrokerOptions) =>
  Effect.map(Layer.build(httpBrokerLayer(`http://${address}`, options)), (context) => Context.get(context, Broker))

/** Collects a subscription in the background; `seen` grows as infos arrive. */
const collect = (broker: Broker["Service"]) =>
  Effect.gen(function*() {
    const seen: SafekeeperTimelineInfo[] = []
    const fiber = yield* Effect.forkScoped(Stream.runForEach(broker.subscribe, (item) => Effect.sync(() => void seen.push(item))))
    return { seen, fiber }
  })

const WAIT_MS_MAX = 5_000
const waitFor = (what: string, condition: () => boolean) =>
  Effect.gen(function*() {
    for (let waitedMs = 0; !condition(); waitedMs += 10) {
      if (waitedMs > WAIT_MS_MAX) return yield* Effect.die(new Error(`timed out waiting for ${what}`))
      yield* Effect.sleep("10 millis")
    }
  })

/** POSTs raw bytes to the broker; resolves with the status. */
const postRaw = (address: string, body: string | Buffer, path = "/v1/publish") =>
  new Promise<number>((resolve, reject) => {
    const target = parseHttpEndpoint(`http://${address}`)
    if (target === undefined) return reject(new Error(`bad address ${address}`))
    const request = http.request({ host: target.host, port: target.port, method: "POST", path, agent: false }, (response) => {
      response.resume()
      response.on("end", () => resolve(response.statusCode ?? 0))
    })
    request.on("error", reject)
    request.end(body)
  })

/** The infos a fresh subscriber hears first, up to `sentinel` (published after subscribing). */
const snapshotOf = (broker: Broker["Service"], sentinel: SafekeeperTimelineInfo) =>
  Effect.gen(function*() {
    const { seen } = yield* collect(broker)
    // The snapshot comes in the subscribe answer, before anything published after it; the
    // sentinel is republished until heard in case the first one raced the subscription.
    for (let i = 0; !seen.some((item) => item.safekeeperId === sentinel.safekeeperId); i++) {
      if (i > WAIT_MS_MAX / 50) return yield* Effect.die(new Error("sentinel never heard"))
      yield* broker.publish(sentinel)
      yield* Effect.sleep("50 millis")
    }
    return seen.slice(0, seen.findIndex((item) => item.safekeeperId === sentinel.safekeeperId))
  })

describe("embedded broker", () => {
  test("a publish from one client reaches another client's subscription", () =>
    run(Effect.gen(function*() {
      const address = yield* serveEmbeddedBroker("127.0.0.1:0")
      const a = yield* client(address)
      const b = yield* client(address)
      const { seen } = yield* collect(b)
      const first = info({ safekeeperId: 1 })
      // Until b's subscription is attached, a publish may reach it only through the snapshot.
      yield* waitFor("b hears the first info", () => seen.length > 0).pipe(
        Effect.raceFirst(Effect.forever(Effect.andThen(a.publish(first), Effect.sleep("50 millis"))))
      )
      const second = info({ safekeeperId: 2, commitLsn: 0x1_6b37_9000, flushLsn: 0x1_6b37_9000 })
      yield* a.publish(second)
      yield* waitFor("b hears the second info", () => seen.some((item) => item.safekeeperId === 2))
      expect(seen.find((item) => item.safekeeperId === 2)).toEqual(second)
      expect(seen.find((item) => item.safekeeperId === 1)).toEqual(first)
      // A publisher hears itself too: its own liveness signal (reference §10).
      const own = yield* collect(a)
      yield* waitFor("a hears the snapshot", () => own.seen.length >= 2)
    })))

  test("a new subscriber hears the newest value of every key first, sorted by key", () =>
    run(Effect.gen(function*() {
      const address = yield* serveEmbeddedBroker("127.0.0.1:0")
      const a = yield* client(address)
      yield* a.publish(info({ safekeeperId: 2, commitLsn: 100 }))
      yield* a.publish(info({ safekeeperId: 1, commitLsn: 100 }))
      yield* a.publish(info({ safekeeperId: 1, commitLsn: 200 }))
      yield* a.publish(info({ safekeeperId: 3, tenantId: "00", commitLsn: 50 }))
      const b = yield* client(address)
      const first = yield* Stream.runCollect(Stream.take(b.subscribe, 3))
      expect(first.map((item) => [item.tenantId === "00" ? "00" : "t", item.safekeeperId, item.commitLsn])).toEqual([
        ["00", 3, 50],
        ["t", 1, 200],
        ["t", 2, 100]
      ])
    })))

  test("a key not refreshed within the TTL is dropped; a refreshed one stays", () =>
    run(Effect.gen(function*() {
      // Margins for a loaded machine: refreshes come at a sixth of the TTL.
      const ttlMs = 600
      const address = yield* serveEmbeddedBroker("127.0.0.1:0", { ttlMs })
      const a = yield* client(address)
      yield* a.publish(info({ safekeeperId: 1 }))
      yield* a.publish(info({ safekeeperId: 2 }))
      const before = yield* snapshotOf(yield* client(address), info({ safekeeperId: 90 }))
      expect(before.map((item) => item.safekeeperId)).toEqual([1, 2])
      // Twice the TTL: key 2 is refreshed every TTL/6, key 1 (and sentinel 90) never.
      for (let i = 0; i < 12; i++) {
        yield* a.publish(info({ safekeeperId: 2, commitLsn: i }))
        yield* Effect.sleep(`${ttlMs / 6} millis`)
      }
      const after = yield* snapshotOf(yield* client(address), info({ safekeeperId: 91 }))
      expect(after.map((item) => [item.safekeeperId, item.commitLsn])).toEqual([[2, 11]])
    })))

  test("malformed publishes are refused with 400 and store nothing", async () => {
    const scope = Effect.runSync(Scope.make())
    try {
      const address = await Effect.runPromise(Scope.provide(scope)(serveEmbeddedBroker("127.0.0.1:0")))
      const good = info()
      const fields = Object.keys(good) as Array<keyof SafekeeperTimelineInfo>
      const wrongType = fc.oneof(fc.constant(null), fc.boolean(), fc.array(fc.integer(), { maxLength: 2 }), fc.dictionary(fc.string(), fc.integer(), { maxKeys: 2 }))
      const body = fc.oneof(
        // Not JSON at all, or JSON of the wrong shape.
        fc.string({ maxLength: 200 }).filter((text) => !isJson(text)),
        fc.json({ maxDepth: 2 }),
        // One field missing.
        fc.constantFrom(...fields).map((field) => {
          const copy: Record<string, unknown> = { ...good }
          delete copy[field]
          return JSON.stringify(copy)
        }),
        // One field of the wrong type (a string where a number goes and the reverse, or neither).
        fc.tuple(fc.constantFrom(...fields), fc.oneof(wrongType, fc.string(), fc.double({ noNaN: true }))).filter(([field, value]) =>
          typeof good[field] === "number" ? typeof value !== "number" : typeof value !== "string"
        ).map(([field, value]) => JSON.stringify({ ...good, [field]: value })),
        // A valid info padded past the body limit.
        fc.integer({ min: 1, max: 4 * PUBLISH_BODY_BYTES_MAX }).map((extra) =>
          JSON.stringify({ ...good, padding: "x".repeat(PUBLISH_BODY_BYTES_MAX + extra) })
        ),
        // Truncated JSON.
        fc.integer({ min: 1, max: JSON.stringify(good).length - 1 }).map((length) => JSON.stringify(good).slice(0, length))
      )
      await fc.assert(fc.asyncProperty(body, async (text) => {
        expect(await postRaw(address, text)).toBe(400)
      }), { numRuns: 200 })
      // The schema checks types, not the trailing junk that JSON.parse refuses anyway.
      expect(await postRaw(address, Buffer.from([0xff, 0xfe, 0x00]))).toBe(400)
      expect(await postRaw(address, JSON.stringify(good), "/v1/elsewhere")).toBe(404)
      const snapshot = await run(Effect.flatMap(client(address), (b) => snapshotOf(b, info({ safekeeperId: 99 }))))
      expect(snapshot).toEqual([])
      // And the same good info is accepted: the refusals were about the bodies.
      expect(await postRaw(address, JSON.stringify(good))).toBe(200)
    } finally {
      await Effect.runPromise(Scope.close(scope, Exit.void))
    }
  })

  test("a subscriber that stops reading is cut off at its buffer bound; the others go on", () =>
    run(Effect.gen(function*() {
      const address = yield* serveEmbeddedBroker("127.0.0.1:0", { subscriberBufferBytesMax: PUBLISH_BODY_BYTES_MAX })
      const target = parseHttpEndpoint(`http://${address}`)
      if (target === undefined) return yield* Effect.die(new Error("bad address"))
      // A raw subscriber that reads the head and then nothing: the kernel's buffers fill, then node's.
      let stalledResponse: http.IncomingMessage | undefined
      yield* Effect.callback<void>((resume) => {
        http.get({ host: target.host, port: target.port, path: "/v1/subscribe", agent: false }, (response) => {
          response.pause()
          stalledResponse = response
          resume(Effect.void)
        })
      })
      const a = yield* client(address)
      const { seen } = yield* collect(a)
      for (let i = 0; (yield* Effect.promise(() => status(address))).subscribers < 2; i++) {
        if (i > 500) return yield* Effect.die(new Error("the subscribers never attached"))
        yield* Effect.sleep("10 millis")
      }
      // ~15 KiB infos (a long zone name), so a few MB of them overflow loopback's buffers.
      const zone = "z".repeat(PUBLISH_BODY_BYTES_MAX - 1024)
      let published = 0
      for (; (yield* Effect.promise(() => status(address))).subscribers > 1; published++) {
        if (published > 10_000) return yield* Effect.die(new Error("the stalled subscriber was never cut off"))
        yield* a.publish(info({ safekeeperId: published % 8, commitLsn: published, availabilityZone: zone }))
      }
      yield* waitFor("the reading subscriber hears the last info", () => seen.some((item) => item.commitLsn === published - 1))
      // The stalled one, reading again, finds its stream ended short of what was published.
      const stalled = stalledResponse
      if (stalled === undefined) return yield* Effect.die(new Error("no stalled response"))
      const infosRead = yield* Effect.callback<number>((resume) => {
        let text = ""
        stalled.setEncoding("utf8")
        stalled.on("data", (chunk: string) => void (text += chunk))
        stalled.on("close", () => resume(Effect.succeed(text.split("\n").filter((line) => line.length > 0).length)))
        stalled.resume()
      })
      expect(infosRead).toBeGreaterThan(0)
      expect(infosRead).toBeLessThan(published)
    })))

  test("a subscription fails with Unavailable when the broker stops, and publishing too", () =>
    run(Effect.gen(function*() {
      const serverScope = yield* Scope.make()
      const address = yield* Scope.provide(serverScope)(serveEmbeddedBroker("127.0.0.1:0"))
      // An idle timeout far beyond the test's wait: the broken connection itself must end it.
      const a = yield* client(address, { subscribeIdleTimeoutMs: 60_000 })
      const { seen, fiber } = yield* collect(a)
      yield* a.publish(info())
      yield* waitFor("the subscription hears the info", () => seen.length > 0)
      yield* Scope.close(serverScope, Exit.void)
      const exit = yield* Fiber.await(fiber).pipe(Effect.timeout("5 seconds"))
      expect(unavailable(exit)).toBe(true)
      expect(unavailable(yield* Effect.exit(a.publish(info())))).toBe(true)
      // Resubscribing to a broker that is not there fails the same way.
      expect(unavailable(yield* Effect.exit(Stream.runDrain(a.subscribe)))).toBe(true)
    })))

  test("a subscription to a broker that goes silent fails with Unavailable after the idle timeout", () =>
    run(Effect.gen(function*() {
      // A server that answers 200 and then says nothing, as a hung broker or a cut link would.
      const address = yield* silentServer
      const a = yield* client(address, { subscribeIdleTimeoutMs: 200, publishTimeoutMs: 200 })
      const started = performance.now()
      const exit = yield* Effect.exit(Stream.runDrain(a.subscribe)).pipe(Effect.timeout("5 seconds"))
      expect(unavailable(exit)).toBe(true)
      expect(performance.now() - started).toBeGreaterThanOrEqual(150)
      // A publish it never answers times out the same way.
      expect(unavailable(yield* Effect.exit(a.publish(info())))).toBe(true)
    })))

  test("the client layer refuses an endpoint that is not http://host:port", async () => {
    for (const endpoint of ["127.0.0.1:50051", "http://127.0.0.1", "https://127.0.0.1:1", "http://host:0", "http://h:1/path", "etcd://h:1"]) {
      const exit = await Effect.runPromiseExit(Effect.scoped(Layer.build(httpBrokerLayer(endpoint))))
      expect(Exit.isFailure(exit) && JSON.stringify(exit.cause).includes("Invalid"), endpoint).toBe(true)
    }
    expect(parseHttpEndpoint("http://[::1]:50051")).toEqual({ host: "::1", port: 50051, endpoint: "http://[::1]:50051" })
  })

  test("a bind on a port in use fails with AddressInUse", () =>
    run(Effect.gen(function*() {
      const address = yield* serveEmbeddedBroker("127.0.0.1:0")
      const exit = yield* Effect.exit(serveEmbeddedBroker(address))
      expect(Exit.isFailure(exit) && JSON.stringify(exit.cause).includes("AddressInUse")).toBe(true)
    })))
})

function unavailable<A, E>(exit: Exit.Exit<A, E>): boolean {
  if (!Exit.isFailure(exit)) return false
  const error = Exit.findErrorOption(exit)
  return Option.isSome(error) && error.value instanceof BrokerError && error.value.reason === "Unavailable"
}

/** The broker's GET /v1/status. */
const status = (address: string) =>
  new Promise<{ keys: number; subscribers: number }>((resolve, reject) => {
    http.get(`http://${address}/v1/status`, { agent: false }, (response) => {
      let body = ""
      response.setEncoding("utf8")
      response.on("data", (text: string) => void (body += text))
      response.on("end", () => resolve(JSON.parse(body) as { keys: number; subscribers: number }))
    }).on("error", reject)
  })

function isJson(text: string): boolean {
  try {
    JSON.parse(text)
    return true
  } catch {
    return false
  }
}

const silentServer = Effect.acquireRelease(
  Effect.callback<http.Server>((resume) => {
    const server = http.createServer((request, response) => {
      if (request.method === "GET") {
        response.writeHead(200)
        response.flushHeaders()
      }
      // Publishes get no answer at all.
    })
    server.listen({ host: "127.0.0.1", port: 0 }, () => resume(Effect.succeed(server)))
  }),
  (server) => Effect.callback<void>((resume) => {
    server.closeAllConnections()
    server.close(() => resume(Effect.void))
  })
).pipe(Effect.map((server) => {
  const bound = server.address()
  return typeof bound === "object" && bound !== null ? `${bound.address}:${bound.port}` : ""
}))
