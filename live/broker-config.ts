import { Effect, Layer, Result, Schema } from "effect"
import { assertNever } from "../core/assert.js"
import type { Broker, BrokerError } from "../core/io/broker.js"
import type { Log } from "../core/io/log.js"
import { parseAddress } from "../core/io/net.js"
import { httpBrokerLayer, parseHttpEndpoint, type HttpBrokerOptions } from "./broker-embedded.js"
import type { EtcdBrokerOptions } from "./broker-etcd.js"

/**
 * `--broker-endpoint` (reference §13): where a safekeeper finds its broker.
 * - `http://host:port`: an embedded broker (`sk broker`, or the one `sk local` serves);
 * - `etcd://host:port[,host:port...]`: an etcd cluster, any member.
 * Neon's storage_broker listens on 127.0.0.1:50051 by default; so does `sk broker`.
 */
export const BROKER_LISTEN_DEFAULT = "127.0.0.1:50051"
export const BROKER_ENDPOINT_DEFAULT = `http://${BROKER_LISTEN_DEFAULT}`
/** Members an etcd endpoint lists at most (etcd clusters have 3 to 7). */
export const ETCD_ENDPOINT_COUNT_MAX = 16

export type BrokerEndpoint =
  | { readonly _tag: "Http"; readonly endpoint: string }
  | { readonly _tag: "Etcd"; readonly endpoints: ReadonlyArray<string> }

export class BrokerEndpointError extends Schema.TaggedError<BrokerEndpointError>()("BrokerEndpointError", {
  text: Schema.String,
  message: Schema.String
}) {}

export function parseBrokerEndpoint(text: string): Result.Result<BrokerEndpoint, BrokerEndpointError> {
  const refuse = (why: string) => Result.fail(new BrokerEndpointError({ text, message: `--broker-endpoint ${JSON.stringify(text)}: ${why}` }))
  if (text.startsWith("http://")) {
    if (parseHttpEndpoint(text) === undefined) return refuse("expected http://host:port with a non-zero port and no path")
    return Result.succeed({ _tag: "Http", endpoint: text.endsWith("/") ? text.slice(0, -1) : text })
  }
  if (text.startsWith("etcd://")) {
    const members = text.slice("etcd://".length).split(",")
    if (members.length > ETCD_ENDPOINT_COUNT_MAX) return refuse(`more than ${ETCD_ENDPOINT_COUNT_MAX} etcd members`)
    for (const member of members) {
      const address = parseAddress(member)
      if (address === undefined || address.host.length === 0 || address.port === 0 || /[/?#\s]/.test(member)) {
        return refuse(`expected etcd://host:port[,host:port...], got member ${JSON.stringify(member)}`)
      }
    }
    if (new Set(members).size !== members.length) return refuse("an etcd member is listed twice")
    return Result.succeed({ _tag: "Etcd", endpoints: members })
  }
  return refuse("expected http://host:port (embedded broker) or etcd://host:port[,host:port...]")
}

export interface BrokerLayerOptions {
  readonly http?: HttpBrokerOptions
  readonly etcd?: EtcdBrokerOptions
}

/** The Broker a `--broker-endpoint` names; the layer fails with BrokerEndpointError for bad text. */
export function brokerLayerFromFlag(text: string, options: BrokerLayerOptions = {}): Layer.Layer<Broker, BrokerError | BrokerEndpointError, Log> {
  const parsed = parseBrokerEndpoint(text)
  if (Result.isFailure(parsed)) {
    const refused: Effect.Effect<Layer.Layer<Broker, BrokerError, Log>, BrokerEndpointError> = Effect.fail(parsed.failure)
    return Layer.unwrap(refused)
  }
  return brokerLayerOf(parsed.success, options)
}

export function brokerLayerOf(endpoint: BrokerEndpoint, options: BrokerLayerOptions = {}): Layer.Layer<Broker, BrokerError, Log> {
  switch (endpoint._tag) {
    case "Http":
      return httpBrokerLayer(endpoint.endpoint, options.http)
    case "Etcd":
      // Loaded on demand: etcd3 and gRPC take ~0.27 s to load, which every safekeeper on the
      // embedded broker (and every short `sk` command) would otherwise pay.
      return Layer.unwrap(Effect.map(
        Effect.promise(() => import("./broker-etcd.js")),
        (etcd) => etcd.etcdBrokerLayer(endpoint.endpoints, options.etcd)
      ))
    default:
      return assertNever(endpoint, "broker endpoint kind")
  }
}
