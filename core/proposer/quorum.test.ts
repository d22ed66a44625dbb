// Goal: the proposer's quorum arithmetic keeps the promises safety rests on: commit_lsn is
// never above what a quorum (of every member set) has flushed at or past the term start, it
// only grows as flushes grow, the donor is the highest (last_log_term, flush_lsn) vote with
// ties to the earlier slot, truncate_lsn never passes commit or any safekeeper's flush, and the
// start point is where the acceptor's own rule puts it. Method: fast-check properties over
// random flush vectors, votes and configurations; a planted "max flush" commit rule shows the
// quorum property does fail on a wrong rule (so it is not vacuous); a few cases by hand for the
// start point.
import fc from "fast-check"
import { describe, expect, test } from "vitest"
import { EMPTY_MEMBER_CONFIGURATION, Generation, type MemberConfiguration, NodeId, Term, type TermHistory } from "../acceptor/state.js"
import { lastLogTerm } from "../acceptor/term-history.js"
import { Lsn } from "../wal/lsn.js"
import {
  advanceTruncateLsn,
  electionOutcome,
  hasQuorum,
  type MemberSet,
  memberSets,
  proposerTermHistory,
  quorumCommitLsn,
  quorumSize,
  startStreamingAt,
  type Vote
} from "./quorum.js"

const arbLsn = fc.integer({ min: 0, max: 1 << 30 }).map(Lsn)
const arbFlushes = fc.array(arbLsn, { minLength: 1, maxLength: 9 })
const legacySet = (n: number): ReadonlyArray<MemberSet> => memberSets(EMPTY_MEMBER_CONFIGURATION, Array.from({ length: n }, () => undefined))

const history = (...entries: ReadonlyArray<readonly [number, number]>): TermHistory =>
  entries.map(([term, lsn]) => ({ term: Term(term), lsn: Lsn(lsn) }))

/** How many members of `set` flushed at least `lsn` (counting flushes below the term start as 0). */
function holders(set: MemberSet, flushes: ReadonlyArray<Lsn>, lsn: number, start: number): number {
  return set.filter((slot) => slot !== undefined && flushes[slot]! >= start && flushes[slot]! >= lsn).length
}

/** The property a commit rule must keep: 0, or at/above the term start and held by a quorum of every set. */
function commitIsSafe(rule: (sets: ReadonlyArray<MemberSet>, flushes: ReadonlyArray<Lsn>, start: Lsn) => Lsn) {
  return fc.property(arbFlushes, arbLsn, (flushes, start) => {
    const sets = legacySet(flushes.length)
    const commit = rule(sets, flushes, start)
    if (commit === 0) return true
    return commit >= start && sets.every((set) => holders(set, flushes, commit, start) >= quorumSize(set.length))
  })
}

describe("quorum size", () => {
  test("a strict majority", () => {
    fc.assert(fc.property(fc.integer({ min: 1, max: 32 }), (n) => {
      const q = quorumSize(n)
      return 2 * q > n && q <= n && 2 * (q - 1) <= n
    }))
    expect([1, 2, 3, 4, 5].map(quorumSize)).toEqual([1, 2, 2, 3, 3])
  })
})

describe("commit_lsn", () => {
  test("never exceeds what a quorum holds at or past the term start", () => {
    fc.assert(commitIsSafe(quorumCommitLsn))
  })

  test("is the highest such LSN: any higher flush is held by less than a quorum", () => {
    fc.assert(fc.property(arbFlushes, arbLsn, (flushes, start) => {
      const [set] = legacySet(flushes.length)
      const commit = quorumCommitLsn([set!], flushes, start)
      return flushes.every((flush) => flush <= commit || flush < start || holders(set!, flushes, flush, start) < quorumSize(flushes.length))
    }))
  })

  test("a planted max-flush rule breaks the quorum property (the property can fail)", () => {
    const maxFlush = (_sets: ReadonlyArray<MemberSet>, flushes: ReadonlyArray<Lsn>, start: Lsn) =>
      Lsn(Math.max(0, ...flushes.filter((flush) => flush >= start)))
    const result = fc.check(commitIsSafe(maxFlush), { seed: 42 })
    expect(result.failed).toBe(true)
  })

  test("grows as flushes grow", () => {
    fc.assert(fc.property(
      arbFlushes.chain((flushes) => fc.tuple(fc.constant(flushes), fc.array(fc.nat({ max: 1 << 20 }), { minLength: flushes.length, maxLength: flushes.length }))),
      arbLsn,
      ([flushes, growth], start) => {
        const sets = legacySet(flushes.length)
        const grown = flushes.map((flush, i) => Lsn(flush + growth[i]!))
        return quorumCommitLsn(sets, grown, start) >= quorumCommitLsn(sets, flushes, start)
      }
    ))
  })

  test("a joint configuration commits only what a quorum of each set holds", () => {
    fc.assert(fc.property(
      fc.array(arbLsn, { minLength: 2, maxLength: 8 }),
      fc.integer({ min: 1, max: 1 << 30 }),
      fc.integer({ min: 0, max: 1 << 30 }),
      (flushes, seed, startRaw) => {
        const start = Lsn(startRaw % (1 << 20))
        // Two overlapping sets drawn from the slots (each non-empty).
        const n = flushes.length
        const old = Array.from({ length: n }, (_, slot) => slot).filter((slot) => ((seed >> slot) & 1) === 1 || slot === 0)
        const next = Array.from({ length: n }, (_, slot) => slot).filter((slot) => ((seed >> (slot + 8)) & 1) === 1 || slot === n - 1)
        const sets: ReadonlyArray<MemberSet> = [old, next]
        const commit = quorumCommitLsn(sets, flushes, start)
        const single = sets.map((set) => quorumCommitLsn([set], flushes, start))
        return commit === Math.min(...single) && (commit === 0 || sets.every((set) => holders(set, flushes, commit, start) >= quorumSize(set.length)))
      }
    ))
  })

  test("flushes below the term start count as 0 (Raft: no commit of earlier terms alone)", () => {
    const sets = legacySet(3)
    expect(quorumCommitLsn(sets, [Lsn(100), Lsn(90), Lsn(80)], Lsn(95))).toBe(0)
    expect(quorumCommitLsn(sets, [Lsn(100), Lsn(96), Lsn(80)], Lsn(95))).toBe(96)
    expect(quorumCommitLsn(sets, [Lsn(100), Lsn(96), Lsn(99)], Lsn(95))).toBe(99)
  })
})

describe("member sets", () => {
  const mconf = (generation: number, members: number[], newMembers?: number[]): MemberConfiguration => ({
    generation: Generation(generation),
    members: members.map((id) => ({ id: NodeId(id), host: `sk${id}`, pgPort: 5454 })),
    newMembers: newMembers?.map((id) => ({ id: NodeId(id), host: `sk${id}`, pgPort: 5454 }))
  })

  test("legacy: one set of every slot; with a configuration: members by node id, unmapped as undefined", () => {
    expect(memberSets(EMPTY_MEMBER_CONFIGURATION, [undefined, undefined, undefined])).toEqual([[0, 1, 2]])
    const slots = [NodeId(7), undefined, NodeId(5)]
    expect(memberSets(mconf(3, [5, 6, 7]), slots)).toEqual([[2, undefined, 0]])
    expect(memberSets(mconf(3, [5, 6, 7], [7, 8]), slots)).toEqual([[2, undefined, 0], [0, undefined]])
  })

  test("a quorum needs a majority of each set; unmapped members count as absent", () => {
    const sets = memberSets(mconf(3, [5, 6, 7], [7, 8]), [NodeId(7), NodeId(6), NodeId(5)])
    expect(hasQuorum(sets, () => true)).toBe(false) // new set: 8 is nobody, 1 of 2
    const greeted = memberSets(mconf(3, [5, 6, 7], [7, 8]), [NodeId(7), NodeId(8), NodeId(5)])
    expect(hasQuorum(greeted, (slot) => slot !== 1)).toBe(false)
    expect(hasQuorum(greeted, () => true)).toBe(true)
  })
})

describe("election", () => {
  const arbVote = (slot: number) =>
    fc.record({
      flush: fc.integer({ min: 0, max: 1000 }),
      lastTerm: fc.integer({ min: 0, max: 4 }),
      truncate: fc.integer({ min: 0, max: 1000 })
    }).map(({ flush, lastTerm, truncate }): Vote => ({
      slot,
      flushLsn: Lsn(flush),
      truncateLsn: Lsn(Math.min(truncate, flush)),
      termHistory: lastTerm === 0 ? [] : history([lastTerm, Math.min(flush, 10)])
    }))
  const arbVotes = fc.integer({ min: 1, max: 7 }).chain((n) => fc.tuple(...Array.from({ length: n }, (_, slot) => arbVote(slot))))

  test("the donor has the highest (last_log_term, flush_lsn), ties to the earlier slot; truncate is the max", () => {
    fc.assert(fc.property(arbVotes, (votes) => {
      const outcome = electionOutcome(votes)
      const key = (vote: Vote) => [lastLogTerm(vote.termHistory, vote.flushLsn), vote.flushLsn] as const
      const [donorTerm, donorFlush] = key(outcome.donor)
      for (const vote of votes) {
        const [term, flush] = key(vote)
        if (term > donorTerm || (term === donorTerm && flush > donorFlush)) return false
        if (term === donorTerm && flush === donorFlush && vote.slot < outcome.donor.slot) return false
      }
      return outcome.propTermStartLsn === outcome.donor.flushLsn &&
        outcome.truncateLsn === Math.max(...votes.map((vote) => vote.truncateLsn)) &&
        outcome.donorLastLogTerm === donorTerm
    }))
  })

  test("a higher last_log_term beats a longer log", () => {
    const outcome = electionOutcome([
      { slot: 0, flushLsn: Lsn(500), truncateLsn: Lsn(0), termHistory: history([1, 10]) },
      { slot: 1, flushLsn: Lsn(300), truncateLsn: Lsn(0), termHistory: history([1, 10], [2, 200]) }
    ])
    expect(outcome.donor.slot).toBe(1)
    expect(outcome.propTermStartLsn).toBe(300)
    expect(proposerTermHistory(outcome.donor.termHistory, Term(3), outcome.propTermStartLsn)).toEqual(history([1, 10], [2, 200], [3, 300]))
  })
})

describe("start point", () => {
  const ours = history([1, 100], [2, 500], [4, 900])

  test("an empty safekeeper starts at the beginning of our history", () => {
    expect(startStreamingAt(ours, [], Lsn(0))).toBe(100)
  })

  test("no common term: the beginning of our history", () => {
    expect(startStreamingAt(ours, history([3, 100]), Lsn(700))).toBe(100)
  })

  test("a safekeeper behind in a shared term continues from its flush", () => {
    expect(startStreamingAt(ours, history([1, 100]), Lsn(300))).toBe(300)
    expect(startStreamingAt(ours, history([1, 100], [2, 500]), Lsn(800))).toBe(800)
  })

  test("a safekeeper past a shared term's end in its own later term is truncated there", () => {
    // It kept term-2 WAL beyond 0/900 and then a term-3 tail we never adopted.
    expect(startStreamingAt(ours, history([1, 100], [2, 500], [3, 850]), Lsn(1200))).toBe(850)
    expect(startStreamingAt(ours, history([1, 100], [2, 500]), Lsn(1200))).toBe(900)
  })

  test("a safekeeper already in our term continues from its flush", () => {
    expect(startStreamingAt(ours, history([1, 100], [2, 500], [4, 900]), Lsn(1500))).toBe(1500)
  })
})

describe("truncate_lsn", () => {
  test("never falls, never passes commit_lsn or the lowest flush unless it was there already", () => {
    fc.assert(fc.property(arbLsn, arbFlushes, arbLsn, (truncate, flushes, commit) => {
      const next = advanceTruncateLsn(truncate, flushes, commit)
      return next >= truncate && (next === truncate || (next <= commit && next <= Math.min(...flushes)))
    }))
  })
})
