import { Effect } from "effect"
import { Incarnation, Kernel } from "../sim/kernel.js"
import { forkInLife } from "../sim/runtime.js"

/**
 * Simulator kernel throughput: the same ping-pong exchange (two nodes, each message delivered
 * after a seeded delay on the kernel's timer heap) written once with Effect fibers and an
 * Effect.callback mailbox, and once with plain callbacks. Both run in one process, one after
 * the other, several rounds, so the ratio is measured side by side on the same machine state.
 */
const ROUND_TRIPS = 50_000
const ROUNDS = 6

class Mailbox<A> {
  private readonly items: A[] = []
  private head = 0
  private waiter: ((effect: Effect.Effect<A>) => void) | undefined = undefined
  offer(item: A): void {
    const waiter = this.waiter
    if (waiter !== undefined) {
      this.waiter = undefined
      waiter(Effect.succeed(item))
    } else {
      this.items.push(item)
    }
  }
  readonly take: Effect.Effect<A> = Effect.callback<A>((resume) => {
    if (this.head < this.items.length) {
      const item = this.items[this.head++]!
      if (this.head === this.items.length) {
        this.items.length = 0
        this.head = 0
      }
      resume(Effect.succeed(item))
      return
    }
    this.waiter = resume
  })
}

function deliver(kernel: Kernel, to: Incarnation, task: () => void): void {
  kernel.after(kernel.intBetween(10, 500), task, to)
}

/** Returns simulated events (deliveries) per wall-clock second. */
function pingPongEffect(seed: number): { events: number; ms: number } {
  const kernel = new Kernel(seed, { recordTrace: false })
  const a = new Incarnation("a", 1)
  const b = new Incarnation("b", 1)
  const boxA = new Mailbox<number>()
  const boxB = new Mailbox<number>()
  let events = 0
  forkInLife(kernel, b, Effect.gen(function* () {
    for (;;) {
      const n = yield* boxB.take
      events++
      deliver(kernel, a, () => boxA.offer(n + 1))
    }
  }))
  forkInLife(kernel, a, Effect.gen(function* () {
    deliver(kernel, b, () => boxB.offer(0))
    for (let i = 0; i < ROUND_TRIPS; i++) {
      const n = yield* boxA.take
      events++
      if (i + 1 < ROUND_TRIPS) deliver(kernel, b, () => boxB.offer(n + 1))
    }
  }))
  const started = performance.now()
  kernel.run()
  return { events, ms: performance.now() - started }
}

function pingPongPlain(seed: number): { events: number; ms: number } {
  const kernel = new Kernel(seed, { recordTrace: false })
  const a = new Incarnation("a", 1)
  const b = new Incarnation("b", 1)
  let events = 0
  let trips = 0
  const onB = (n: number): void => {
    events++
    deliver(kernel, a, () => onA(n + 1))
  }
  const onA = (n: number): void => {
    events++
    trips++
    if (trips < ROUND_TRIPS) deliver(kernel, b, () => onB(n + 1))
  }
  kernel.enqueue(() => deliver(kernel, b, () => onB(0)), a)
  const started = performance.now()
  kernel.run()
  return { events, ms: performance.now() - started }
}

export function benchKernel(): void {
  console.log(`kernel ping-pong: ${ROUND_TRIPS} round trips per run, ${ROUNDS} rounds, Effect fibers vs plain callbacks`)
  const perSecond = (r: { events: number; ms: number }) => (r.events / r.ms) * 1000
  let bestEffect = 0
  let bestPlain = 0
  const ratios: number[] = []
  for (let round = 0; round < ROUNDS; round++) {
    const effect = pingPongEffect(round)
    const plain = pingPongPlain(round)
    if (effect.events !== plain.events) throw new Error(`the two exchanges differ: ${effect.events} vs ${plain.events} events`)
    bestEffect = Math.max(bestEffect, perSecond(effect))
    bestPlain = Math.max(bestPlain, perSecond(plain))
    ratios.push(perSecond(plain) / perSecond(effect))
    console.log(`  round ${round + 1}: effect ${fmt(perSecond(effect))} events/s, plain ${fmt(perSecond(plain))} events/s, ratio ${(perSecond(plain) / perSecond(effect)).toFixed(2)}x`)
  }
  const median = [...ratios].sort((a, b) => a - b)[Math.floor(ratios.length / 2)]!
  console.log(`  best: effect ${fmt(bestEffect)} events/s, plain ${fmt(bestPlain)} events/s; plain/effect: best-vs-best ${(bestPlain / bestEffect).toFixed(2)}x, median of rounds ${median.toFixed(2)}x (aim: within 4x)`)
  console.log("  (note: Effect 4.1.0 wraps every fiber suspension in an async_hooks AsyncResource; hiding process.getBuiltinModule before Effect loads lifted the Effect side by ~25% in one comparison)")
}

const fmt = (n: number) => Math.round(n).toLocaleString("en-US")
