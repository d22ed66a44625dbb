// Goal: the pageserver's safekeeper choice follows Neon's connection manager rules (ranking by
// commit_lsn, retry cooldown with exponential backoff reset by progress, the three switch
// reasons) and never picks a safekeeper in cooldown. Method: plain-function examples for each
// rule, then fast-check properties over random event sequences.
import fc from "fast-check"
import { describe, expect, test } from "vitest"
import {
  bestCandidate,
  connectionEnded,
  type ConnectionManagerConfig,
  type ConnectionManagerState,
  connectionEstablished,
  connectionStarted,
  inCooldown,
  initialState,
  messageReceived,
  nextBackoffUs,
  nextCandidate,
  registerCandidate,
  timeUntilNextRetryUs
} from "./connection-manager.js"

const CONFIG: ConnectionManagerConfig = {
  walConnectTimeoutUs: 2_000_000,
  laggingWalTimeoutUs: 3_000_000,
  maxLsnWalLagBytes: 1_000_000,
  retryBackoffMinUs: 100_000,
  retryBackoffMaxUs: 1_600_000,
  retryBackoffMultiplier: 2
}

const withCandidates = (entries: ReadonlyArray<readonly [string, number, number?]>, nowUs = 0): ConnectionManagerState =>
  entries.reduce((state, [sk, commitLsn, flushLsn]) => registerCandidate(state, sk, { commitLsn, flushLsn: flushLsn ?? commitLsn }, nowUs), initialState(CONFIG))

/** Connects to `sk` at `nowUs` and marks the stream open with `commitLsn`. */
const connected = (state: ConnectionManagerState, sk: string, nowUs: number, commitLsn: number) =>
  connectionEstablished(connectionStarted(state, sk, nowUs), nowUs, commitLsn)

describe("ranking", () => {
  test("with no connection, the highest commit_lsn wins", () => {
    const decision = nextCandidate(withCandidates([["a", 100], ["b", 300], ["c", 200]]), 0, 0)
    expect(decision.candidate).toEqual({ safekeeper: "b", reason: { _tag: "NoExistingConnection" } })
  })

  test("ties go to the higher flush_lsn, then to the smaller address", () => {
    expect(nextCandidate(withCandidates([["c", 300, 400], ["a", 300, 350], ["b", 300, 400]]), 0, 0).candidate?.safekeeper).toBe("b")
    expect(nextCandidate(withCandidates([["c", 300], ["a", 300], ["b", 300]]), 0, 0).candidate?.safekeeper).toBe("a")
  })

  test("a commit_lsn of 0 or below the receiver's position is not eligible", () => {
    const state = withCandidates([["a", 0], ["b", 90], ["c", 150]])
    expect(nextCandidate(state, 0, 100).candidate?.safekeeper).toBe("c")
    expect(nextCandidate(withCandidates([["a", 0], ["b", 90]]), 0, 100).candidate).toBeUndefined()
  })

  test("candidates not heard from within laggingWalTimeout are forgotten", () => {
    const state = registerCandidate(withCandidates([["a", 500]], 0), "b", { commitLsn: 100, flushLsn: 100 }, 2_000_000)
    const decision = nextCandidate(state, CONFIG.laggingWalTimeoutUs, 0)
    expect(decision.candidate?.safekeeper).toBe("b")
    expect([...decision.state.candidates.keys()]).toEqual(["b"])
  })
})

describe("retry cooldown", () => {
  test("an ended connection cools its safekeeper until start + backoff, and the backoff grows", () => {
    let state = connectionStarted(withCandidates([["a", 100], ["b", 50]]), "a", 1_000)
    state = connectionEnded(state)
    expect(state.retries.get("a")).toEqual({ nextRetryAtUs: 1_000 + CONFIG.retryBackoffMinUs, backoffUs: 2 * CONFIG.retryBackoffMinUs })
    expect(inCooldown(state, "a", 1_000 + CONFIG.retryBackoffMinUs - 1)).toBe(true)
    expect(nextCandidate(state, 2_000, 0).candidate?.safekeeper).toBe("b")
    expect(timeUntilNextRetryUs(state, 2_000)).toBe(1_000 + CONFIG.retryBackoffMinUs - 2_000)
    expect(nextCandidate(state, 1_000 + CONFIG.retryBackoffMinUs, 0).candidate?.safekeeper).toBe("a")
  })

  test("processed WAL resets the backoff of the connected safekeeper; a keepalive does not", () => {
    let state = connectionEnded(connectionStarted(withCandidates([["a", 100]]), "a", 0))
    state = connected(state, "a", 500_000, 100)
    const keepalive = messageReceived(state, { walEndLsn: 100, processedWal: false }, 600_000)
    expect(keepalive.backoffReset).toBe(false)
    expect(keepalive.state.retries.has("a")).toBe(true)
    const wal = messageReceived(keepalive.state, { walEndLsn: 200, receivedEndLsn: 200, processedWal: true }, 700_000)
    expect(wal.backoffReset).toBe(true)
    expect(wal.state.retries.has("a")).toBe(false)
    expect(wal.state.candidates.get("a")?.commitLsn).toBe(200)
  })

  test("the backoff is clamped to [min, max]", () => {
    expect(nextBackoffUs(CONFIG, CONFIG.retryBackoffMaxUs)).toBe(CONFIG.retryBackoffMaxUs)
    expect(nextBackoffUs(CONFIG, 1)).toBe(CONFIG.retryBackoffMinUs)
  })
})

describe("switching", () => {
  test("NoKeepAlives: nothing on the connection for walConnectTimeout, even before it opened", () => {
    const state = connectionStarted(withCandidates([["a", 100], ["b", 100]]), "a", 0)
    expect(nextCandidate(state, CONFIG.walConnectTimeoutUs, 0).candidate).toBeUndefined()
    const decision = nextCandidate(state, CONFIG.walConnectTimeoutUs + 1, 0)
    expect(decision.candidate?.safekeeper).toBe("b")
    expect(decision.candidate?.reason._tag).toBe("NoKeepAlives")
  })

  test("no switch before the connection opened, however far a candidate leads", () => {
    const state = connectionStarted(withCandidates([["a", 100], ["b", 100 + 10 * CONFIG.maxLsnWalLagBytes]]), "a", 0)
    expect(nextCandidate(state, 1_000, 0).candidate).toBeUndefined()
  })

  test("LaggingWal: a candidate ahead by maxLsnWalLag or more", () => {
    const base = connected(withCandidates([["a", 100], ["b", 100 + CONFIG.maxLsnWalLagBytes - 1]]), "a", 0, 100)
    expect(nextCandidate(base, 1_000, 100).candidate).toBeUndefined()
    const ahead = registerCandidate(base, "b", { commitLsn: 100 + CONFIG.maxLsnWalLagBytes, flushLsn: 100 + CONFIG.maxLsnWalLagBytes }, 1_000)
    const decision = nextCandidate(ahead, 1_000, 100)
    expect(decision.candidate?.reason).toEqual({ _tag: "LaggingWal", currentCommitLsn: 100, candidateCommitLsn: 100 + CONFIG.maxLsnWalLagBytes, thresholdBytes: CONFIG.maxLsnWalLagBytes })
  })

  test("NoWalTimeout: another safekeeper has WAL we wait for longer than laggingWalTimeout", () => {
    let state = connected(withCandidates([["a", 100], ["b", 100]]), "a", 0, 100)
    // Keepalives keep coming (no NoKeepAlives), but b has more WAL that a never sends.
    const step = (s: ConnectionManagerState, nowUs: number) => {
      const kept = messageReceived(s, { walEndLsn: 100, processedWal: false }, nowUs).state
      return registerCandidate(kept, "b", { commitLsn: 5_000, flushLsn: 5_000 }, nowUs)
    }
    state = step(state, 1_000_000)
    let decision = nextCandidate(state, 1_000_000, 100)
    expect(decision.candidate).toBeUndefined()
    expect(decision.state.connection?.discoveredWal).toEqual({ lsn: 5_000, discoveredAtUs: 1_000_000 })
    state = step(decision.state, 1_000_000 + CONFIG.laggingWalTimeoutUs)
    decision = nextCandidate(state, 1_000_000 + CONFIG.laggingWalTimeoutUs, 100)
    expect(decision.candidate).toBeUndefined()
    state = step(decision.state, 1_000_001 + CONFIG.laggingWalTimeoutUs)
    decision = nextCandidate(state, 1_000_001 + CONFIG.laggingWalTimeoutUs, 100)
    expect(decision.candidate?.safekeeper).toBe("b")
    expect(decision.candidate?.reason._tag).toBe("NoWalTimeout")
  })

  test("no switch when the connected safekeeper keeps up with the best candidate", () => {
    let state = connected(withCandidates([["a", 100], ["b", 100]]), "a", 0, 100)
    for (let t = 500_000; t <= 20_000_000; t += 500_000) {
      state = messageReceived(state, { walEndLsn: 100 + t, receivedEndLsn: 100 + t, processedWal: true }, t).state
      state = registerCandidate(state, "b", { commitLsn: 100 + t, flushLsn: 100 + t }, t)
      const decision = nextCandidate(state, t, 100 + t)
      expect(decision.candidate).toBeUndefined()
      state = decision.state
    }
  })
})

// ---- properties ----

const SAFEKEEPERS = ["sk1", "sk2", "sk3", "sk4"] as const

type Event =
  | { readonly _tag: "Heard"; readonly sk: number; readonly commitLsn: number; readonly flushExtra: number }
  | { readonly _tag: "Connect" }
  | { readonly _tag: "Opened" }
  | { readonly _tag: "Message"; readonly walBytes: number }
  | { readonly _tag: "Ended" }

const arbEvent: fc.Arbitrary<Event> = fc.oneof(
  fc.record({ _tag: fc.constant("Heard" as const), sk: fc.nat({ max: SAFEKEEPERS.length - 1 }), commitLsn: fc.nat({ max: 5_000_000 }), flushExtra: fc.nat({ max: 1000 }) }),
  fc.record({ _tag: fc.constant("Connect" as const) }),
  fc.record({ _tag: fc.constant("Opened" as const) }),
  fc.record({ _tag: fc.constant("Message" as const), walBytes: fc.nat({ max: 100_000 }) }),
  fc.record({ _tag: fc.constant("Ended" as const) })
)
// Mostly short steps, so that connects fall inside cooldowns and candidates stay fresh.
const arbAdvanceUs = fc.oneof({ arbitrary: fc.nat({ max: 60_000 }), weight: 4 }, { arbitrary: fc.nat({ max: 4_000_000 }), weight: 1 })
const arbSteps = fc.array(fc.tuple(arbEvent, arbAdvanceUs), { maxLength: 80 })

/**
 * Drives the manager as the pageserver does: time moves on, events arrive, and on "Connect"
 * the caller follows `nextCandidate`. `check` sees every decision with the state it came from.
 */
function drive(
  steps: ReadonlyArray<readonly [Event, number]>,
  check: (before: ConnectionManagerState, nowUs: number, positionLsn: number, chosen: string | undefined) => void
): void {
  let state = initialState(CONFIG)
  let nowUs = 0
  let positionLsn = 0
  for (const [event, advanceUs] of steps) {
    nowUs += advanceUs
    switch (event._tag) {
      case "Heard":
        state = registerCandidate(state, SAFEKEEPERS[event.sk]!, { commitLsn: event.commitLsn, flushLsn: event.commitLsn + event.flushExtra }, nowUs)
        break
      case "Connect": {
        const decision = nextCandidate(state, nowUs, positionLsn)
        check(state, nowUs, positionLsn, decision.candidate?.safekeeper)
        state = decision.state
        if (decision.candidate !== undefined) {
          state = connectionStarted(connectionEnded(state), decision.candidate.safekeeper, nowUs)
        }
        break
      }
      case "Opened":
        state = connectionEstablished(state, nowUs)
        break
      case "Message": {
        const commit = state.connection === undefined ? 0 : state.candidates.get(state.connection.safekeeper)?.commitLsn ?? 0
        const gotWal = event.walBytes > 0 && state.connection !== undefined
        if (gotWal) positionLsn += event.walBytes
        state = messageReceived(state, { walEndLsn: Math.max(commit, positionLsn), receivedEndLsn: gotWal ? positionLsn : undefined, processedWal: gotWal }, nowUs).state
        break
      }
      case "Ended":
        state = connectionEnded(state)
        break
    }
  }
}

describe("properties", () => {
  test("never chooses a safekeeper in cooldown, nor the one it is connected to", () => {
    fc.assert(fc.property(arbSteps, (steps) => {
      drive(steps, (before, nowUs, _position, chosen) => {
        if (chosen === undefined) return
        expect(inCooldown(before, chosen, nowUs)).toBe(false)
        expect(chosen).not.toBe(before.connection?.safekeeper)
      })
    }), { numRuns: 1000 })
  })

  test("a choice is the best eligible candidate: no fresh, eligible one ranks above it", () => {
    fc.assert(fc.property(arbSteps, (steps) => {
      drive(steps, (before, nowUs, positionLsn, chosen) => {
        if (chosen === undefined) return
        const info = before.candidates.get(chosen)!
        expect(info.commitLsn).toBeGreaterThanOrEqual(positionLsn)
        for (const [sk, other] of before.candidates) {
          if (sk === chosen || sk === before.connection?.safekeeper || inCooldown(before, sk, nowUs)) continue
          if (nowUs - other.heardAtUs >= CONFIG.laggingWalTimeoutUs || other.commitLsn === 0 || other.commitLsn < positionLsn) continue
          const better = other.commitLsn > info.commitLsn || (other.commitLsn === info.commitLsn && (other.flushLsn > info.flushLsn || (other.flushLsn === info.flushLsn && sk < chosen)))
          expect(better).toBe(false)
        }
      })
    }))
  })

  test("the choice does not depend on the order candidates were heard in", () => {
    const arbCandidates = fc.uniqueArray(fc.record({ sk: fc.constantFrom(...SAFEKEEPERS), commitLsn: fc.integer({ min: 1, max: 1000 }), flushLsn: fc.integer({ min: 1, max: 1000 }) }), { selector: (c) => c.sk })
    fc.assert(fc.property(arbCandidates, fc.infiniteStream(fc.nat()), (candidates, keys) => {
      const shuffled = [...candidates].map((c) => ({ c, key: keys.next().value as number })).sort((a, b) => a.key - b.key).map(({ c }) => c)
      const build = (list: typeof candidates) => list.reduce((s, c) => registerCandidate(s, c.sk, c, 0), initialState(CONFIG))
      expect(bestCandidate(build(shuffled), 0, 0, undefined)?.safekeeper).toBe(bestCandidate(build(candidates), 0, 0, undefined)?.safekeeper)
    }))
  })

  test("backoff grows by the multiplier on each end up to the max, and resets to min after progress", () => {
    fc.assert(fc.property(fc.integer({ min: 1, max: 12 }), fc.integer({ min: 0, max: 5 }), (failures, afterReset) => {
      let state = withCandidates([["a", 100]])
      let expected = CONFIG.retryBackoffMinUs
      let nowUs = 0
      for (let i = 0; i < failures; i++) {
        state = connectionEnded(connectionStarted(state, "a", nowUs))
        expect(state.retries.get("a")?.nextRetryAtUs).toBe(nowUs + expected)
        expected = Math.min(CONFIG.retryBackoffMaxUs, expected * 2)
        expect(state.retries.get("a")?.backoffUs).toBe(expected)
        nowUs += 10_000_000
      }
      state = connected(state, "a", nowUs, 100)
      state = messageReceived(state, { walEndLsn: 200, receivedEndLsn: 200, processedWal: true }, nowUs).state
      expect(state.retries.has("a")).toBe(false)
      expected = CONFIG.retryBackoffMinUs
      for (let i = 0; i < afterReset; i++) {
        state = connectionEnded(state)
        expect(state.retries.get("a")?.nextRetryAtUs).toBe(nowUs + expected)
        expected = Math.min(CONFIG.retryBackoffMaxUs, expected * 2)
        nowUs += 10_000_000
        state = connectionStarted(state, "a", nowUs)
      }
    }))
  })
})
