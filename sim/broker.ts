import { Effect, Result, Stream } from "effect"
import { assert } from "../core/assert.js"
import { Broker, BrokerError, brokerKey, decodeSafekeeperTimelineInfo, encodeSafekeeperTimelineInfo, type SafekeeperTimelineInfo } from "../core/io/broker.js"
import type { Incarnation, Kernel, Timer } from "./kernel.js"
import { LifeGate } from "./runtime.js"
import { compareCodePoints, drawUs, remoteRequest } from "./remote-call.js"

/**
 * The world's storage broker (reference §10 "Broker"; DESIGN.md §5): gossip, never durable or
 * authoritative. It keeps the latest info per key (`brokerKey`: tenant/timeline/safekeeper) and
 * fans every publish out to every subscriber (the publisher's own included), each delivery
 * with its own lag, drop and duplicate draws, so deliveries may come late, twice, out of order
 * or never. A new subscription is first given the latest value of every key (as the embedded
 * broker and etcd's get-then-watch do), then what arrives after it.
 *
 * A node cut off from the broker (`partition`): its publishes are lost (the push stream has
 * not noticed yet, so the publish itself succeeds), nothing is delivered to it, and after
 * `timeoutUs` its subscriptions fail Unavailable (the keepalive gave up); a subscription opened
 * while cut off fails the same way. Once healed, a resubscribe works. Deliveries that fall in
 * a partition are lost for good (gossip consumers tolerate loss; a real stream might deliver
 * some late).
 *
 * Fenced to the life like the object store (remote-call.ts): a dead life's publish never lands
 * and its calls never resume; deliveries are tasks of the subscriber's life, held while it is
 * paused and dropped when it dies. Every info that reaches the broker is folded into the
 * trace's data digest. Draws come from the kernel's stream, none for a fixed lag or a zero
 * probability.
 */
export interface BrokerFaults {
  /** A publish reaches the broker (and its caller resumes) after this, uniform in [low, high]. */
  readonly publishLatencyUs: readonly [number, number]
  /** From the broker to one subscriber, per delivery, uniform in [low, high]. */
  readonly deliveryLagUs: readonly [number, number]
  /** Chance that one delivery to one subscriber is lost. */
  readonly dropProbability: number
  /** Chance that one delivery to one subscriber comes twice (each with its own lag). */
  readonly duplicateProbability: number
  /** A partitioned node's subscriptions fail Unavailable after this. */
  readonly timeoutUs: number
}

export const NO_BROKER_FAULTS: BrokerFaults = {
  publishLatencyUs: [200, 2_000],
  deliveryLagUs: [200, 2_000],
  dropProbability: 0,
  duplicateProbability: 0,
  timeoutUs: 2_000_000
}

/** Deliveries a subscriber has not pulled yet; beyond it the oldest is dropped (a slow consumer lags). */
export const SUBSCRIBER_BUFFER_LENGTH_MAX = 1024

export interface BrokerHooks {
  /** As ObjectStoreHooks: false means the world crashed the node right there. */
  beforeOperation?(operation: string, key: string): boolean
}

export interface BrokerStats {
  /** Publishes admitted, and those lost to a partition or to the publisher's death. */
  publishes: number
  lostPublishes: number
  /** Infos that reached the broker. */
  arrivals: number
  deliveries: number
  drops: number
  duplicates: number
  /** Deliveries lost because the subscriber was partitioned. */
  partitionedDeliveries: number
  /** Deliveries pushed out of a full subscriber buffer. */
  overflows: number
  subscriptions: number
  subscriptionFailures: number
  invalid: number
}

export class SimBroker {
  readonly stats: BrokerStats = {
    publishes: 0, lostPublishes: 0, arrivals: 0, deliveries: 0, drops: 0, duplicates: 0,
    partitionedDeliveries: 0, overflows: 0, subscriptions: 0, subscriptionFailures: 0, invalid: 0
  }
  private readonly latestByKey = new Map<string, SafekeeperTimelineInfo>()
  /** Open subscriptions, in the order they were opened (fan-out order). */
  private readonly subscribers = new Set<Subscriber>()
  /** Partitioned nodes, each with the number of its partition (a subscription's timeout checks it is still the same one). */
  private readonly partitioned = new Map<string, number>()
  private partitionCount = 0
  private faultsOn = true

  constructor(readonly kernel: Kernel, readonly faults: BrokerFaults) {
    for (const [name, [low, high]] of [["publishLatencyUs", faults.publishLatencyUs], ["deliveryLagUs", faults.deliveryLagUs]] as const) {
      assert(Number.isSafeInteger(low) && Number.isSafeInteger(high) && 0 <= low && low <= high, `${name} is an integer range`)
    }
    assert(faults.dropProbability >= 0 && faults.dropProbability <= 1, "dropProbability is a probability")
    assert(faults.duplicateProbability >= 0 && faults.duplicateProbability <= 1, "duplicateProbability is a probability")
    assert(Number.isSafeInteger(faults.timeoutUs) && faults.timeoutUs > 0, "timeoutUs is positive")
  }

  /** The Broker service for one life of `node`. */
  service(life: Incarnation, node: string = life.node, hooks?: BrokerHooks): Broker["Service"] {
    const caller: Caller = { life, node, hooks, gate: new LifeGate(this.kernel, life.label) }
    return Broker.of({
      publish: (info) => this.publish(caller, info),
      subscribe: this.subscribe(caller)
    })
  }

  // ---------------------------------------------------------------- faults

  partition(node: string): void {
    this.kernel.log("broker", `partition ${node}`)
    if (this.partitioned.has(node)) return
    this.partitioned.set(node, ++this.partitionCount)
    for (const subscriber of this.subscribers) if (subscriber.node === node) this.failLater(subscriber)
  }

  heal(node: string): void {
    this.kernel.log("broker", `heal ${node}`)
    if (!this.partitioned.delete(node)) return
    // A subscribe sent while cut off reaches the broker now (TCP retransmits it): it gets the latest values.
    for (const subscriber of this.subscribers) {
      if (subscriber.node !== node || !subscriber.needsSnapshot || subscriber.failure !== undefined) continue
      subscriber.needsSnapshot = false
      this.giveSnapshot(subscriber)
    }
  }

  healAll(): void {
    for (const node of [...this.partitioned.keys()]) this.heal(node)
  }

  isPartitioned(node: string): boolean {
    return this.partitioned.has(node)
  }

  /** No more drops or duplicates, for good (the liveness phase); lags stay. */
  stopFaults(): void {
    this.kernel.log("broker", "faults off")
    this.faultsOn = false
  }

  // ---------------------------------------------------------------- inspection (no time, no draws)

  /** The latest info per key, as the broker holds it. */
  latest(): ReadonlyMap<string, SafekeeperTimelineInfo> {
    return this.latestByKey
  }

  get subscriptionCount(): number {
    let count = 0
    for (const subscriber of this.subscribers) if (subscriber.life.alive) count++
    return count
  }

  // ---------------------------------------------------------------- publish

  private publish(caller: Caller, info: SafekeeperTimelineInfo): Effect.Effect<void, BrokerError> {
    return Effect.suspend(() => {
      caller.gate.check("Broker publish")
      if (!this.permits(caller, "publish", `${info.tenantId}/${info.timelineId}`)) return Effect.never
      const decoded = decodeSafekeeperTimelineInfo(info)
      if (Result.isFailure(decoded)) {
        this.stats.invalid++
        this.kernel.log(caller.life.label, `broker publish Invalid: ${decoded.failure.message}`)
        return Effect.fail(new BrokerError({ reason: "Invalid", message: `invalid timeline info: ${decoded.failure.message}` }))
      }
      this.stats.publishes++
      const value = decoded.success
      const sentCutOff = this.partitioned.has(caller.node)
      return remoteRequest(this.kernel, caller.life, drawUs(this.kernel, this.faults.publishLatencyUs), () => {
        if (sentCutOff || this.partitioned.has(caller.node)) {
          this.stats.lostPublishes++
          this.kernel.log(caller.life.label, `broker publish ${brokerKey(value)} lost (partitioned)`)
        } else {
          this.arrive(value, caller.life.label)
        }
        return Effect.void
      })
    })
  }

  private arrive(info: SafekeeperTimelineInfo, by: string): void {
    const key = brokerKey(info)
    this.latestByKey.set(key, info)
    this.stats.arrivals++
    this.kernel.trace.foldBytes(`broker ${key}`, textEncoder.encode(encodeSafekeeperTimelineInfo(info)))
    this.kernel.log("broker", `publish ${key} by ${by} term=${info.term} flush=${info.flushLsn} commit=${info.commitLsn} backup=${info.backupLsn}`)
    for (const subscriber of [...this.subscribers]) {
      if (!subscriber.life.alive) {
        this.close(subscriber) // a crashed life's stream: nothing will pull it again
        continue
      }
      if (subscriber.failure !== undefined) continue
      if (this.partitioned.has(subscriber.node)) {
        this.stats.partitionedDeliveries++
        continue
      }
      if (this.faultsOn && this.kernel.chance(this.faults.dropProbability)) {
        this.stats.drops++
        this.kernel.log("broker", `drop ${key} -> ${subscriber.life.label}`)
        continue
      }
      this.sendLater(subscriber, key, info)
      if (this.faultsOn && this.kernel.chance(this.faults.duplicateProbability)) {
        this.stats.duplicates++
        this.sendLater(subscriber, key, info)
      }
    }
  }

  // ---------------------------------------------------------------- subscribe

  private subscribe(caller: Caller): Stream.Stream<SafekeeperTimelineInfo, BrokerError> {
    const open = Effect.acquireRelease(
      Effect.suspend(() => {
        caller.gate.check("Broker subscribe")
        if (!this.permits(caller, "subscribe", "")) return Effect.never
        return Effect.succeed(this.open(caller))
      }),
      (subscriber) => Effect.sync(() => this.close(subscriber))
    )
    return Stream.unwrap(Effect.map(open, (subscriber) => Stream.fromEffectRepeat(this.take(caller, subscriber))))
  }

  private open(caller: Caller): Subscriber {
    const subscriber: Subscriber = {
      life: caller.life, node: caller.node, label: caller.life.label, buffer: [], waiting: undefined,
      failure: undefined, closed: false, needsSnapshot: false, failTimer: undefined
    }
    this.subscribers.add(subscriber)
    this.stats.subscriptions++
    const cutOff = this.partitioned.has(caller.node)
    this.kernel.log(caller.life.label, `broker subscribe${cutOff ? " (partitioned)" : ""}`)
    if (cutOff) {
      subscriber.needsSnapshot = true
      this.failLater(subscriber)
    } else {
      this.giveSnapshot(subscriber)
    }
    return subscriber
  }

  /** The next delivery, waiting for one; after the buffered ones, the stream's failure. */
  private take(caller: Caller, subscriber: Subscriber): Effect.Effect<SafekeeperTimelineInfo, BrokerError> {
    const take: Effect.Effect<SafekeeperTimelineInfo, BrokerError> = Effect.suspend(() => {
      caller.gate.check("Broker subscription pull")
      if (!subscriber.life.alive) return Effect.never
      const next = subscriber.buffer.shift()
      if (next !== undefined) return Effect.succeed(next)
      if (subscriber.failure !== undefined) return Effect.fail(subscriber.failure)
      return Effect.callback<SafekeeperTimelineInfo, BrokerError>((resume) => {
        if (!subscriber.life.alive) return
        subscriber.waiting = () => resume(take) // woken: look again
        return Effect.sync(() => {
          subscriber.waiting = undefined
        })
      })
    })
    return take
  }

  private giveSnapshot(subscriber: Subscriber): void {
    const keys = [...this.latestByKey.keys()].sort(compareCodePoints)
    for (const key of keys) this.push(subscriber, this.latestByKey.get(key)!)
    if (keys.length > 0) this.kernel.log("broker", `snapshot ${keys.length} -> ${subscriber.label}`)
    this.wake(subscriber)
  }

  /** A delivery after one lag, as a task of the subscriber's life (held while paused, dropped when dead). */
  private sendLater(subscriber: Subscriber, key: string, info: SafekeeperTimelineInfo): void {
    this.kernel.after(drawUs(this.kernel, this.faults.deliveryLagUs), () => {
      if (!subscriber.life.alive || subscriber.closed || subscriber.failure !== undefined) return
      if (this.partitioned.has(subscriber.node)) {
        this.stats.partitionedDeliveries++
        return
      }
      this.stats.deliveries++
      this.kernel.log("broker", `deliver ${key} -> ${subscriber.label}`)
      this.push(subscriber, info)
      this.wake(subscriber)
    }, subscriber.life)
  }

  private push(subscriber: Subscriber, info: SafekeeperTimelineInfo): void {
    if (subscriber.buffer.length >= SUBSCRIBER_BUFFER_LENGTH_MAX) {
      subscriber.buffer.shift()
      this.stats.overflows++
    }
    subscriber.buffer.push(info)
  }

  /** After the timeout, a subscription still cut off by the same partition fails Unavailable. */
  private failLater(subscriber: Subscriber): void {
    const partition = this.partitioned.get(subscriber.node)
    if (subscriber.failTimer !== undefined) this.kernel.cancel(subscriber.failTimer)
    subscriber.failTimer = this.kernel.after(this.faults.timeoutUs, () => {
      subscriber.failTimer = undefined
      if (subscriber.closed || subscriber.failure !== undefined || this.partitioned.get(subscriber.node) !== partition) return
      subscriber.failure = new BrokerError({ reason: "Unavailable", message: "broker unreachable: the subscription timed out" })
      this.subscribers.delete(subscriber)
      this.stats.subscriptionFailures++
      this.kernel.log(subscriber.label, "broker subscription failed Unavailable (partitioned)")
      this.wake(subscriber)
    }, undefined)
  }

  private close(subscriber: Subscriber): void {
    if (subscriber.closed) return
    subscriber.closed = true
    subscriber.buffer.length = 0
    if (subscriber.failTimer !== undefined) this.kernel.cancel(subscriber.failTimer)
    this.subscribers.delete(subscriber)
  }

  /** Resumes a waiting pull as a task of its own life (never inline from another's code path). */
  private wake(subscriber: Subscriber): void {
    const waiting = subscriber.waiting
    if (waiting === undefined) return
    subscriber.waiting = undefined
    this.kernel.enqueue(() => {
      if (subscriber.life.alive) waiting()
    }, subscriber.life)
  }

  private permits(caller: Caller, operation: string, key: string): boolean {
    if (!caller.life.alive) return false
    const hook = caller.hooks?.beforeOperation
    if (hook !== undefined && !hook(operation, key)) return false
    return caller.life.alive
  }
}

const textEncoder = new TextEncoder()

interface Caller {
  readonly life: Incarnation
  readonly node: string
  readonly hooks: BrokerHooks | undefined
  readonly gate: LifeGate
}

interface Subscriber {
  readonly life: Incarnation
  readonly node: string
  readonly label: string
  /** Delivered, not yet pulled (at most SUBSCRIBER_BUFFER_LENGTH_MAX). */
  readonly buffer: SafekeeperTimelineInfo[]
  /** Set while a pull waits: resumes it so it looks again. */
  waiting: (() => void) | undefined
  failure: BrokerError | undefined
  closed: boolean
  /** Opened while partitioned: the latest values come when healed. */
  needsSnapshot: boolean
  failTimer: Timer | undefined
}
