// Goal: the simulated broker is gossip with exactly the faults asked for: every publish reaches
// every subscriber (its own included) after a lag unless dropped, maybe twice; a new
// subscription gets the latest value per key first; a partitioned node's publishes are lost,
// it hears nothing and its subscription fails Unavailable, and it can resubscribe once healed;
// dead lives publish nothing and hear nothing; a seed replays to the same trace. Method: Effect
// programs in lives of a bare Kernel (sim/runtime.ts) against one broker, recording what each
// subscriber receives and when.
import { Cause, Effect, Exit, type Fiber, Stream } from "effect"
import { describe, expect, test } from "vitest"
import { Broker, type BrokerError, type SafekeeperTimelineInfo } from "../core/io/broker.js"
import { Incarnation, Kernel } from "./kernel.js"
import { type BrokerFaults, NO_BROKER_FAULTS, SimBroker, SUBSCRIBER_BUFFER_LENGTH_MAX } from "./broker.js"
import { forkInLife } from "./runtime.js"

const info = (safekeeperId: number, commitLsn: number, timelineId = "l"): SafekeeperTimelineInfo => ({
  safekeeperId, tenantId: "t", timelineId, term: 1, lastLogTerm: 1, flushLsn: commitLsn, commitLsn, backupLsn: 0,
  remoteConsistentLsn: 0, peerHorizonLsn: 0, localStartLsn: 0, standbyHorizon: 0, safekeeperConnstr: `sk${safekeeperId}:5454`,
  httpConnstr: "", availabilityZone: ""
})

interface Received {
  readonly atUs: number
  readonly key: string
}

class Lab {
  readonly kernel: Kernel
  readonly broker: SimBroker
  private readonly lifeNumbers = new Map<string, number>()
  constructor(seed: number, faults: Partial<BrokerFaults> = {}) {
    this.kernel = new Kernel(seed)
    this.broker = new SimBroker(this.kernel, { ...NO_BROKER_FAULTS, ...faults })
  }

  start<A, E>(node: string, program: Effect.Effect<A, E, Broker>): { readonly life: Incarnation; readonly fiber: Fiber.Fiber<A, E> } {
    const number = (this.lifeNumbers.get(node) ?? 0) + 1
    this.lifeNumbers.set(node, number)
    const life = new Incarnation(node, number)
    return { life, fiber: forkInLife(this.kernel, life, Effect.provideService(program, Broker, this.broker.service(life, node))) }
  }

  /** A life of `node` that subscribes once and records what it receives ("<sk>@<commit>") until its stream fails. */
  listen(node: string): { readonly received: Received[]; readonly life: Incarnation; readonly fiber: Fiber.Fiber<void, BrokerError> } {
    const received: Received[] = []
    const kernel = this.kernel
    const { life, fiber } = this.start(node, Effect.flatMap(Effect.service(Broker), (broker) =>
      Stream.runForEach(broker.subscribe, (got) => Effect.sync(() => {
        received.push({ atUs: kernel.nowUs, key: `${got.safekeeperId}@${got.commitLsn}` })
      }))))
    return { received, life, fiber }
  }

  /** Publishes `infos` from `node`, one every `everyUs`, starting at `startUs`. */
  publish(node: string, infos: ReadonlyArray<SafekeeperTimelineInfo>, options: { readonly startUs?: number; readonly everyUs?: number } = {}) {
    return this.start(node, Effect.gen(function* () {
      const broker = yield* Broker
      yield* Effect.sleep(`${options.startUs ?? 10_000} micros`)
      for (const one of infos) {
        yield* broker.publish(one)
        yield* Effect.sleep(`${options.everyUs ?? 10_000} micros`)
      }
    }))
  }
}

const keys = (received: ReadonlyArray<Received>) => received.map((r) => r.key)
const fixed: Partial<BrokerFaults> = { publishLatencyUs: [500, 500], deliveryLagUs: [1_000, 1_000] }

describe("gossip", () => {
  test("every publish reaches every subscriber, the publisher's own included, after the publish latency and one lag", () => {
    const lab = new Lab(1, fixed)
    const a = lab.listen("a")
    const b = lab.listen("b")
    lab.publish("b", [info(2, 10), info(2, 20), info(2, 30)], { startUs: 10_000, everyUs: 10_000 })
    lab.kernel.run({ untilUs: 100_000 })
    for (const sub of [a, b]) {
      expect(keys(sub.received)).toEqual(["2@10", "2@20", "2@30"])
      // Published at 10 ms, 20.5 ms, 31 ms (each publish takes 0.5 ms), then 0.5 ms to the broker and 1 ms to the subscriber.
      expect(sub.received.map((r) => r.atUs)).toEqual([11_500, 22_000, 32_500])
    }
    expect(lab.broker.latest().get("t/l/safekeeper/2")?.commitLsn).toBe(30)
    expect(lab.broker.stats).toMatchObject({ publishes: 3, arrivals: 3, deliveries: 6, drops: 0, duplicates: 0 })
  })

  test("a new subscription gets the latest value of every key first (in key order), then new ones", () => {
    const lab = new Lab(1, fixed)
    lab.publish("a", [info(1, 10), info(1, 11), info(2, 5, "m"), info(3, 7)], { startUs: 1_000, everyUs: 1_000 })
    lab.kernel.run({ untilUs: 20_000 })
    const late = lab.listen("late")
    lab.publish("a", [info(1, 12)], { startUs: 1_000 })
    lab.kernel.run({ untilUs: 40_000 })
    expect(keys(late.received)).toEqual(["1@11", "3@7", "2@5", "1@12"])
  })

  test("lags are drawn per delivery within the range, so subscribers hear in their own order", () => {
    const lab = new Lab(4, { publishLatencyUs: [0, 0], deliveryLagUs: [1_000, 50_000] })
    const subs = ["a", "b", "c"].map((node) => lab.listen(node))
    const infos = Array.from({ length: 20 }, (_, i) => info(1, i))
    lab.publish("p", infos, { startUs: 0, everyUs: 2_000 })
    lab.kernel.run({ untilUs: 200_000 })
    const orders = subs.map((s) => keys(s.received).join(","))
    for (const s of subs) {
      expect([...keys(s.received)].sort()).toEqual(infos.map((i) => `1@${i.commitLsn}`).sort())
      s.received.forEach((r) => {
        const publishedAtUs = Number(r.key.split("@")[1]) * 2_000
        expect(r.atUs - publishedAtUs).toBeGreaterThanOrEqual(1_000)
        expect(r.atUs - publishedAtUs).toBeLessThanOrEqual(50_000)
      })
    }
    expect(new Set(orders).size).toBeGreaterThan(1) // reordered, differently for each
  })

  test("drops and duplicates: all, none, and some (per delivery)", () => {
    const run = (faults: Partial<BrokerFaults>) => {
      const lab = new Lab(2, { ...fixed, ...faults })
      const a = lab.listen("a")
      lab.publish("p", Array.from({ length: 100 }, (_, i) => info(1, i)), { startUs: 0, everyUs: 1_000 })
      lab.kernel.run({ untilUs: 1_000_000 })
      return { received: keys(a.received), stats: lab.broker.stats }
    }
    expect(run({ dropProbability: 1 }).received).toEqual([])
    const doubled = run({ duplicateProbability: 1 })
    expect(doubled.received).toEqual(Array.from({ length: 100 }, (_, i) => [`1@${i}`, `1@${i}`]).flat())
    const some = run({ dropProbability: 0.3, duplicateProbability: 0.2 })
    expect(some.stats.drops).toBeGreaterThan(10)
    expect(some.stats.drops).toBeLessThan(50)
    expect(some.stats.duplicates).toBeGreaterThan(5)
    expect(some.received.length).toBe(100 - some.stats.drops + some.stats.duplicates)
    expect(new Set(some.received).size).toBe(100 - some.stats.drops)
  })

  test("a subscriber that does not pull keeps the newest SUBSCRIBER_BUFFER_LENGTH_MAX deliveries", () => {
    const lab = new Lab(1, { publishLatencyUs: [0, 0], deliveryLagUs: [0, 0] })
    const count = SUBSCRIBER_BUFFER_LENGTH_MAX + 10
    // A stream that is pulled once and then stalls for 10 s while the publishes arrive.
    const stalled: string[] = []
    lab.start("stall", Effect.flatMap(Effect.service(Broker), (broker) =>
      Stream.runForEach(broker.subscribe, (i) => Effect.andThen(Effect.sync(() => stalled.push(`${i.commitLsn}`)), Effect.sleep(i.commitLsn === 0 ? "10 seconds" : "0 micros")))))
    lab.publish("p", Array.from({ length: count }, (_, i) => info(1, i)), { startUs: 10, everyUs: 10 })
    lab.kernel.run({ untilUs: 60_000_000 })
    expect(lab.broker.stats.overflows).toBe(count - 1 - SUBSCRIBER_BUFFER_LENGTH_MAX)
    expect(stalled.length).toBe(1 + SUBSCRIBER_BUFFER_LENGTH_MAX)
    expect(stalled.at(-1)).toBe(`${count - 1}`)
  })

  test("an invalid info fails Invalid and reaches nobody", () => {
    const lab = new Lab(1, fixed)
    const a = lab.listen("a")
    const { fiber } = lab.start("p", Effect.flatMap(Effect.service(Broker), (broker) => Effect.flip(broker.publish({ ...info(1, 1), flushLsn: "x" as unknown as number }))))
    lab.kernel.run({ untilUs: 100_000 })
    expect(fiber.pollUnsafe()).toMatchObject({ _tag: "Success", value: { reason: "Invalid" } })
    expect(a.received).toEqual([])
    expect(lab.broker.latest().size).toBe(0)
  })

  test("a subscription's end (interruption, take) unregisters it", () => {
    const lab = new Lab(1, fixed)
    const { fiber } = lab.start("a", Effect.flatMap(Effect.service(Broker), (broker) => Stream.runCollect(Stream.take(broker.subscribe, 2))))
    lab.publish("p", [info(1, 1), info(1, 2), info(1, 3)])
    lab.kernel.run({ untilUs: 25_000 })
    expect(lab.broker.subscriptionCount).toBe(0)
    expect(Exit.isSuccess(fiber.pollUnsafe()!)).toBe(true)
  })
})

describe("partitions", () => {
  test("a partitioned node's publishes are lost, it hears nothing, its stream fails Unavailable; healed, it resubscribes", () => {
    const lab = new Lab(1, { ...fixed, timeoutUs: 100_000 })
    const other = lab.listen("other")
    const cut = lab.listen("cut")
    lab.kernel.run({ untilUs: 1_000 })
    lab.broker.partition("cut")
    lab.publish("cut", [info(1, 1)], { startUs: 1_000 })
    lab.publish("other", [info(2, 1)], { startUs: 2_000 })
    lab.kernel.run({ untilUs: 50_000 })
    expect(keys(other.received)).toEqual(["2@1"])
    expect(cut.received).toEqual([])
    expect(cut.fiber.pollUnsafe()).toBeUndefined() // not failed yet: the keepalive has not given up
    lab.kernel.run({ untilUs: 101_000 })
    const exit = cut.fiber.pollUnsafe()
    expect(exit !== undefined && Exit.isFailure(exit) && Cause.squash(exit.cause)).toMatchObject({ reason: "Unavailable" })
    expect(lab.broker.latest().has("t/l/safekeeper/1")).toBe(false)
    // Resubscribing while still cut off fails the same way, after the timeout.
    const again = lab.listen("cut")
    lab.kernel.run({ untilUs: 150_000 })
    expect(again.fiber.pollUnsafe()).toBeUndefined()
    lab.kernel.run({ untilUs: 202_000 })
    expect(again.fiber.pollUnsafe()).toMatchObject({ _tag: "Failure" })
    lab.broker.heal("cut")
    const healed = lab.listen("cut")
    lab.publish("cut", [info(1, 2)], { startUs: 1_000 })
    lab.kernel.run({ untilUs: 300_000 })
    expect(keys(healed.received)).toEqual(["2@1", "1@2"])
    expect(keys(other.received)).toEqual(["2@1", "1@2"])
    expect(lab.broker.stats).toMatchObject({ lostPublishes: 1, subscriptionFailures: 2 })
  })

  test("a consumer that resubscribes with the same stream after Unavailable hears again once healed", () => {
    const lab = new Lab(1, { ...fixed, timeoutUs: 100_000 })
    const got: string[] = []
    let failures = 0
    lab.start("cut", Effect.flatMap(Effect.service(Broker), (broker) =>
      Effect.forever(Stream.runForEach(broker.subscribe, (i) => Effect.sync(() => got.push(`${i.commitLsn}`))).pipe(
        Effect.catchTag("BrokerError", () => Effect.andThen(Effect.sync(() => failures++), Effect.sleep("50 millis")))
      ))))
    lab.publish("p", Array.from({ length: 40 }, (_, i) => info(1, i)), { startUs: 0, everyUs: 10_000 })
    lab.kernel.setTimer(50_000, () => lab.broker.partition("cut"), undefined)
    lab.kernel.setTimer(250_000, () => lab.broker.heal("cut"), undefined)
    lab.kernel.run({ untilUs: 1_000_000 })
    expect(failures).toBe(1) // failed at 150 ms; resubscribed at 200 ms, still cut off; healed at 250 ms before that one timed out
    expect(got.slice(0, 5)).toEqual(["0", "1", "2", "3", "4"])
    expect(got).not.toContain("10")
    expect(got.at(-1)).toBe("39")
    expect(lab.broker.subscriptionCount).toBe(1)
  })

  test("a partition healed within the timeout: the stream survives, what fell in the partition is lost", () => {
    const lab = new Lab(1, { ...fixed, timeoutUs: 100_000 })
    const cut = lab.listen("cut")
    lab.publish("p", [info(1, 1), info(1, 2), info(1, 3)], { startUs: 10_000, everyUs: 20_000 })
    lab.kernel.setTimer(20_000, () => lab.broker.partition("cut"), undefined)
    lab.kernel.setTimer(40_000, () => lab.broker.heal("cut"), undefined)
    lab.kernel.run({ untilUs: 400_000 })
    expect(keys(cut.received)).toEqual(["1@1", "1@3"])
    expect(cut.fiber.pollUnsafe()).toBeUndefined()
  })

  test("a delivery on its way when the partition starts is lost", () => {
    const lab = new Lab(1, { ...fixed, timeoutUs: 100_000 })
    const cut = lab.listen("cut")
    lab.publish("p", [info(1, 1), info(1, 2)], { startUs: 10_000, everyUs: 20_000 })
    // 1@1 reaches the broker at 10.5 ms and would reach "cut" at 11.5 ms.
    lab.kernel.setTimer(11_000, () => lab.broker.partition("cut"), undefined)
    lab.kernel.setTimer(12_000, () => lab.broker.heal("cut"), undefined)
    lab.kernel.run({ untilUs: 400_000 })
    expect(keys(cut.received)).toEqual(["1@2"])
    expect(lab.broker.stats.partitionedDeliveries).toBe(1)
  })

  test("a subscription opened while partitioned and healed in time gets the latest values then", () => {
    const lab = new Lab(1, { ...fixed, timeoutUs: 100_000 })
    lab.publish("p", [info(1, 1)], { startUs: 0 })
    lab.kernel.run({ untilUs: 5_000 })
    lab.broker.partition("cut")
    const cut = lab.listen("cut")
    lab.kernel.run({ untilUs: 50_000 })
    expect(cut.received).toEqual([])
    lab.broker.heal("cut")
    lab.kernel.run({ untilUs: 400_000 })
    expect(keys(cut.received)).toEqual(["1@1"])
    expect(cut.fiber.pollUnsafe()).toBeUndefined()
  })
})

describe("lives", () => {
  test("a publisher that dies before its publish reaches the broker publishes nothing and never resumes", () => {
    const lab = new Lab(1, fixed)
    const a = lab.listen("a")
    let resumed = false
    const { life } = lab.start("p", Effect.flatMap(Effect.service(Broker), (broker) => Effect.gen(function* () {
      yield* Effect.sleep("1 milli")
      yield* broker.publish(info(1, 1))
      resumed = true
    })))
    lab.kernel.setTimer(1_200, () => {
      life.alive = false
    }, undefined)
    lab.kernel.run({ untilUs: 100_000 })
    expect(resumed).toBe(false)
    expect(a.received).toEqual([])
    expect(lab.broker.latest().size).toBe(0)
  })

  test("a dead subscriber hears nothing and is dropped; a call by a dead life does nothing", () => {
    const lab = new Lab(1, fixed)
    const dead = lab.listen("d")
    lab.kernel.run({ untilUs: 1_000 })
    dead.life.alive = false
    lab.publish("p", [info(1, 1)])
    lab.kernel.run({ untilUs: 100_000 })
    expect(dead.received).toEqual([])
    expect(lab.broker.subscriptionCount).toBe(0)
    const zombie = new Incarnation("z", 1)
    const service = lab.broker.service(zombie)
    zombie.alive = false
    lab.start("harness", Effect.gen(function* () {
      yield* Effect.forkChild(service.publish(info(9, 9)))
      yield* Effect.forkChild(Stream.runDrain(service.subscribe))
      yield* Effect.sleep("1 second")
    }))
    lab.kernel.run({ untilUs: 2_000_000 })
    expect(lab.broker.latest().has("t/l/safekeeper/9")).toBe(false)
    expect(lab.broker.stats.subscriptions).toBe(1)
  })

  test("a paused subscriber gets its deliveries when it resumes, in order", () => {
    const lab = new Lab(1, fixed)
    const a = lab.listen("a")
    lab.kernel.run({ untilUs: 1_000 })
    lab.kernel.pause(a.life)
    lab.publish("p", [info(1, 1), info(1, 2)], { startUs: 1_000 })
    lab.kernel.run({ untilUs: 50_000 })
    expect(a.received).toEqual([])
    lab.kernel.resume(a.life)
    lab.kernel.run({ untilUs: 60_000 })
    expect(a.received).toEqual([{ atUs: 50_000, key: "1@1" }, { atUs: 50_000, key: "1@2" }])
  })
})

describe("determinism", () => {
  const gossip = (seed: number) => {
    const lab = new Lab(seed, { deliveryLagUs: [100, 30_000], dropProbability: 0.2, duplicateProbability: 0.2 })
    const subs = ["a", "b", "c"].map((node) => lab.listen(node))
    for (const [i, node] of ["a", "b", "c"].entries()) lab.publish(node, Array.from({ length: 20 }, (_, n) => info(i + 1, n)), { startUs: 1_000 * i, everyUs: 5_000 })
    lab.kernel.setTimer(40_000, () => lab.broker.partition("c"), undefined)
    lab.kernel.setTimer(60_000, () => lab.broker.heal("c"), undefined)
    lab.kernel.run({ untilUs: 1_000_000 })
    return { hash: lab.kernel.trace.hash(), received: subs.map((s) => s.received.map((r) => `${r.atUs}:${r.key}`).join(",")) }
  }

  test("a seed replays to the same trace hash and deliveries; other seeds differ", () => {
    const first = gossip(11)
    expect(gossip(11)).toEqual(first)
    for (const seed of [12, 13]) {
      const other = gossip(seed)
      expect(other.hash).not.toBe(first.hash)
      expect(other.received).not.toEqual(first.received)
    }
  })

  test("no random draws with fixed latencies and no drops or duplicates", () => {
    const lab = new Lab(5, fixed)
    lab.listen("a")
    lab.publish("a", [info(1, 1), info(1, 2)])
    lab.kernel.run({ untilUs: 100_000 })
    expect(lab.broker.stats.deliveries).toBe(2)
    expect(lab.kernel.nextFloat()).toBe(new Kernel(5).nextFloat())
  })
})
