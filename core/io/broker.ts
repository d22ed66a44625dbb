import { Context, Effect, Schema, Stream } from "effect"

/**
 * The storage broker (reference §10 "Broker"): safekeepers publish one `SafekeeperTimelineInfo`
 * per active timeline about once a second and subscribe to everyone's (their own included: it
 * is their liveness signal to themselves). Nothing in it is durable or authoritative: it is
 * gossip, and every consumer treats it as possibly stale, lost or reordered. Each world
 * provides it: live, an embedded broker (`sk broker`, or inside `sk local`) or etcd with leased
 * keys; the simulator, a broker node that lags, drops and partitions.
 */
export const SafekeeperTimelineInfo = Schema.Struct({
  safekeeperId: Schema.Number,
  tenantId: Schema.String,
  timelineId: Schema.String,
  term: Schema.Number,
  lastLogTerm: Schema.Number,
  flushLsn: Schema.Number,
  commitLsn: Schema.Number,
  backupLsn: Schema.Number,
  remoteConsistentLsn: Schema.Number,
  peerHorizonLsn: Schema.Number,
  localStartLsn: Schema.Number,
  /** The minimal LSN a standby still needs (0 = none). */
  standbyHorizon: Schema.Number,
  /** host:port of its Postgres-protocol listener. */
  safekeeperConnstr: Schema.String,
  /** host:port of its HTTP listener ("" = none). */
  httpConnstr: Schema.String,
  availabilityZone: Schema.String
})
export type SafekeeperTimelineInfo = typeof SafekeeperTimelineInfo.Type

export const BrokerErrorReason = Schema.Literals([
  "Unavailable", // cannot reach the broker now: retry
  "Invalid" // a malformed message or configuration
])
export type BrokerErrorReason = typeof BrokerErrorReason.Type

export class BrokerError extends Schema.TaggedError<BrokerError>()("BrokerError", {
  reason: BrokerErrorReason,
  message: Schema.String
}) {}

export class Broker extends Context.Service<Broker, {
  /** Publishes one safekeeper's info for one timeline (the newest replaces older ones). */
  publish(info: SafekeeperTimelineInfo): Effect.Effect<void, BrokerError>
  /**
   * Every info published from now on, by anyone (own included), until the stream fails
   * (the broker went away: resubscribe after a pause). May drop, duplicate or lag.
   */
  readonly subscribe: Stream.Stream<SafekeeperTimelineInfo, BrokerError>
}>()("sk/core/io/Broker") {}

export const decodeSafekeeperTimelineInfo = Schema.decodeUnknownResult(SafekeeperTimelineInfo)
export const encodeSafekeeperTimelineInfo = (info: SafekeeperTimelineInfo): string => JSON.stringify(info)

/** The broker key of one safekeeper's info about one timeline (etcd keeps one value per key). */
export const brokerKey = (info: Pick<SafekeeperTimelineInfo, "tenantId" | "timelineId" | "safekeeperId">): string =>
  `${info.tenantId}/${info.timelineId}/safekeeper/${info.safekeeperId}`
