// Goal: `--broker-endpoint` accepts exactly http://host:port and etcd://host:port[,...],
// refuses everything else with a typed error that names the text, and the layer it names is
// the right one. Method: tables of accepted and refused texts, a fast-check property that
// random text either parses to something that prints back or is refused (never a throw), and
// layers from the flag against an embedded broker and a port where no etcd listens.
import { Context, Effect, Exit, Layer, Option, Result, Stream } from "effect"
import fc from "fast-check"
import { describe, expect, test } from "vitest"
import { Broker, BrokerError, type SafekeeperTimelineInfo } from "../core/io/broker.js"
import { Log } from "../core/io/log.js"
import { BROKER_ENDPOINT_DEFAULT, BrokerEndpointError, brokerLayerFromFlag, parseBrokerEndpoint } from "./broker-config.js"
import { serveEmbeddedBroker } from "./broker-embedded.js"
import { makeLiveLog } from "./log.js"
import { freeLoopbackPort } from "./testing/postgres.js"

const logLayer = Layer.succeed(Log, makeLiveLog({ output: { write: () => undefined } }))

const info: SafekeeperTimelineInfo = {
  safekeeperId: 1,
  tenantId: "t",
  timelineId: "l",
  term: 1,
  lastLogTerm: 1,
  flushLsn: 40,
  commitLsn: 40,
  backupLsn: 0,
  remoteConsistentLsn: 0,
  peerHorizonLsn: 0,
  localStartLsn: 40,
  standbyHorizon: 0,
  safekeeperConnstr: "127.0.0.1:5454",
  httpConnstr: "",
  availabilityZone: ""
}

describe("parseBrokerEndpoint", () => {
  test.each([
    ["http://127.0.0.1:50051", { _tag: "Http", endpoint: "http://127.0.0.1:50051" }],
    ["http://broker.local:1/", { _tag: "Http", endpoint: "http://broker.local:1" }],
    ["http://[::1]:50051", { _tag: "Http", endpoint: "http://[::1]:50051" }],
    ["etcd://127.0.0.1:2379", { _tag: "Etcd", endpoints: ["127.0.0.1:2379"] }],
    ["etcd://a:2379,b:2379,c:2379", { _tag: "Etcd", endpoints: ["a:2379", "b:2379", "c:2379"] }],
    [BROKER_ENDPOINT_DEFAULT, { _tag: "Http", endpoint: BROKER_ENDPOINT_DEFAULT }]
  ])("accepts %s", (text, expected) => {
    expect(parseBrokerEndpoint(text)).toEqual(Result.succeed(expected))
  })

  test.each([
    "",
    "127.0.0.1:50051", // no scheme
    "https://127.0.0.1:50051", // TLS is not served
    "grpc://127.0.0.1:50051",
    "http://127.0.0.1", // no port
    "http://127.0.0.1:0",
    "http://127.0.0.1:65536",
    "http://127.0.0.1:50051/v1",
    "http://:50051",
    "etcd://",
    "etcd://a:2379,",
    "etcd://a:2379,,b:2379",
    "etcd://a",
    "etcd://a:0",
    "etcd://a:2379,b:65536",
    "etcd://a:2379/prefix",
    "etcd://a:2379,a:2379",
    `etcd://${Array.from({ length: 17 }, (_, i) => `h${i}:2379`).join(",")}`,
    "ETCD://a:2379"
  ])("refuses %j with a BrokerEndpointError naming it", (text) => {
    const parsed = parseBrokerEndpoint(text)
    expect(Result.isFailure(parsed)).toBe(true)
    if (Result.isFailure(parsed)) {
      expect(parsed.failure).toBeInstanceOf(BrokerEndpointError)
      expect(parsed.failure.text).toBe(text)
      expect(parsed.failure.message).toContain(JSON.stringify(text))
    }
  })

  test("random text parses to an endpoint that prints back, or is refused; never a throw", () => {
    const member = fc.tuple(fc.constantFrom("a", "127.0.0.1", "h-1.example", "", "[::1]"), fc.oneof(fc.constantFrom(0, 1, 65_535, 65_536), fc.integer({ min: -1, max: 70_000 })))
      .map(([host, port]) => `${host}:${port}`)
    const text = fc.oneof(
      fc.string(),
      fc.tuple(fc.constantFrom("http://", "etcd://", "https://", ""), fc.array(fc.oneof(member, fc.string({ maxLength: 6 })), { minLength: 0, maxLength: 4 }))
        .map(([scheme, members]) => scheme + members.join(","))
    )
    fc.assert(fc.property(text, (input) => {
      const parsed = parseBrokerEndpoint(input)
      if (Result.isFailure(parsed)) return parsed.failure.text === input
      const endpoint = parsed.success
      return endpoint._tag === "Http"
        ? input.replace(/\/$/, "") === endpoint.endpoint
        : input === `etcd://${endpoint.endpoints.join(",")}` && endpoint.endpoints.every((m) => /^[^,/]+:[1-9][0-9]*$/.test(m))
    }), { numRuns: 2_000 })
  })
})

describe("brokerLayerFromFlag", () => {
  test("bad text: the layer fails with BrokerEndpointError", async () => {
    const exit = await Effect.runPromiseExit(Effect.scoped(Layer.build(brokerLayerFromFlag("etcd:/a:1").pipe(Layer.provide(logLayer)))))
    expect(Exit.isFailure(exit)).toBe(true)
    const error = Exit.findErrorOption(exit)
    expect(Option.isSome(error) && error.value instanceof BrokerEndpointError).toBe(true)
  })

  test("http://: a client of the embedded broker there", () =>
    Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const address = yield* serveEmbeddedBroker("127.0.0.1:0")
      const context = yield* Layer.build(brokerLayerFromFlag(`http://${address}`).pipe(Layer.provide(logLayer)))
      const broker = Context.get(context, Broker)
      yield* broker.publish(info)
      // The snapshot a new subscriber gets first holds what was published.
      const first = yield* Stream.runHead(broker.subscribe)
      expect(first).toEqual(Option.some(info))
    }))))

  test("etcd://: an etcd client, built without contacting etcd, whose publish fails Unavailable when none listens", async () => {
    const port = await freeLoopbackPort()
    const exit = await Effect.runPromiseExit(Effect.scoped(Effect.gen(function*() {
      const context = yield* Layer.build(brokerLayerFromFlag(`etcd://127.0.0.1:${port}`, { etcd: { callTimeoutMs: 500 } }).pipe(Layer.provide(logLayer)))
      return yield* Context.get(context, Broker).publish(info)
    })))
    const error = Exit.findErrorOption(exit)
    expect(Option.isSome(error) && error.value instanceof BrokerError && error.value.reason === "Unavailable").toBe(true)
  })
})
