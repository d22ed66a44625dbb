import { Effect, Option, Stream } from "effect"
import { TenantId, TimelineId } from "../acceptor/state.js"
import { Broker, type SafekeeperTimelineInfo } from "../io/broker.js"
import { monotonicUs, sleepUs, US_PER_SECOND } from "../io/clock.js"
import { logInfo, logWarn } from "../io/log.js"
import { type BackgroundConfig, type FatalHandler, ownInfo, runManager } from "./manager.js"
import type { TimelineRegistry } from "./registry.js"
import { timelineKeyText } from "./timeline.js"

/**
 * A safekeeper's background work: one manager per timeline (started as timelines load or are
 * created) and, when a broker is configured, the broker agent (Neon's `broker.rs`): it
 * publishes every active timeline's info once a second and applies everyone's info as it
 * arrives (Neon's `record_safekeeper_info`), resubscribing after a pause when the broker goes
 * away. Everything here runs until interrupted; the safekeeper's scope owns it.
 */
export const BROKER_PUSH_INTERVAL_US = 1 * US_PER_SECOND
export const BROKER_RETRY_US = 1 * US_PER_SECOND
export const INACTIVE_PUBLISH_ROUNDS = 3

export const runBackground = (registry: TimelineRegistry, config: BackgroundConfig, fatal: FatalHandler) =>
  Effect.gen(function* () {
    const broker = yield* Effect.serviceOption(Broker)
    if (Option.isSome(broker)) {
      yield* Effect.forkChild(publishLoop(registry, config, broker.value))
      yield* Effect.forkChild(subscribeLoop(registry, config, broker.value, fatal))
    }
    const started = new Set<string>()
    for (;;) {
      const seen = registry.opened.get()
      for (const timeline of registry.list()) {
        const label = timelineKeyText(timeline.key)
        if (started.has(label)) continue
        started.add(label)
        yield* Effect.forkChild(runManager(timeline, config, fatal))
      }
      yield* registry.opened.waitUntil((count) => count !== seen)
    }
  })

const publishLoop = (registry: TimelineRegistry, config: BackgroundConfig, broker: Broker["Service"]) =>
  Effect.gen(function* () {
    let failing = false
    // Rounds each timeline is still published after it turned inactive: peers must hear its
    // final positions (remote_consistent_lsn above all) to go idle too, and one message may be
    // lost; idle timelines are then quiet, as in Neon.
    const afterInactive = new Map<string, number>()
    for (;;) {
      for (const timeline of registry.list()) {
        const label = timelineKeyText(timeline.key)
        if (timeline.active) afterInactive.set(label, INACTIVE_PUBLISH_ROUNDS)
        else {
          const rounds = afterInactive.get(label) ?? 0
          if (rounds <= 0) continue
          afterInactive.set(label, rounds - 1)
        }
        const published = yield* Effect.result(broker.publish(ownInfo(timeline, config)))
        if (published._tag === "Failure" && !failing) {
          failing = true
          yield* logWarn("broker publish failed", { error: published.failure.message })
        } else if (published._tag === "Success" && failing) {
          failing = false
          yield* logInfo("broker publish recovered")
        }
      }
      yield* sleepUs(config.brokerPushIntervalUs ?? BROKER_PUSH_INTERVAL_US)
    }
  })

const subscribeLoop = (registry: TimelineRegistry, config: BackgroundConfig, broker: Broker["Service"], fatal: FatalHandler) =>
  Effect.gen(function* () {
    const apply = (info: SafekeeperTimelineInfo) =>
      Effect.gen(function* () {
        const timeline = registry.get({ tenantId: TenantId(info.tenantId), timelineId: TimelineId(info.timelineId) })
        if (timeline === undefined) return
        timeline.peers.record(info, yield* monotonicUs)
        if (info.safekeeperId === config.nodeId) return
        const applied = yield* Effect.result(timeline.applyPeerInfo(info))
        if (applied._tag === "Failure") {
          const error = applied.failure
          if (error._tag === "DiskError" || error._tag === "WalStorageError") yield* fatal(`applying peer info: ${error.message}`)
          else yield* logWarn("peer info not applied", { timeline: timelineKeyText(timeline.key), error: error.message })
        }
      })
    for (;;) {
      const ended = yield* Effect.result(Stream.runForEach(broker.subscribe, apply))
      yield* logWarn("broker subscription ended", ended._tag === "Failure" ? { error: ended.failure.message } : {})
      yield* sleepUs(BROKER_RETRY_US)
    }
  })
