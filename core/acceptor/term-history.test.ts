// Goal: find_highest_common_point picks exactly the point where the proposer's log and ours stop
// agreeing, and the history helpers cut histories at flush_lsn as Neon does. Method: the three
// shapes Neon's own tests name (no common point, common term is the proposer's last, divergence
// in the middle) plus a fast-check property against a brute-force definition: histories are
// grown as a tree of elections (each new term copies a prefix of some earlier history, so a
// term present in two histories has the same past in both), every LSN position is compared,
// and the first position where the two logs name different terms is the answer.
import fc from "fast-check"
import { describe, expect, test } from "vitest"
import { InvariantViolation } from "../assert.js"
import { Lsn } from "../wal/lsn.js"
import { Term, type TermHistory, type TermLsn } from "./state.js"
import { findHighestCommonPoint, lastLogTerm, termHistoryUpTo } from "./term-history.js"

const history = (...entries: ReadonlyArray<readonly [number, number]>): TermHistory =>
  entries.map(([term, lsn]) => ({ term: Term(term), lsn: Lsn(lsn) }))
const point = (term: number, lsn: number): TermLsn => ({ term: Term(term), lsn: Lsn(lsn) })

describe("findHighestCommonPoint", () => {
  test("no common point when the first terms differ", () => {
    expect(findHighestCommonPoint(history([0, 1]), history([1, 1], [2, 2]), Lsn(3))).toBeUndefined()
    expect(findHighestCommonPoint(history([1, 10]), history(), Lsn(0))).toBeUndefined()
    expect(findHighestCommonPoint(history(), history([1, 10]), Lsn(20))).toBeUndefined()
  })

  test("common term is the proposer's last: our WAL end bounds it", () => {
    const both = history([1, 10], [2, 20])
    expect(findHighestCommonPoint(both, both, Lsn(32))).toEqual(point(2, 32))
    // A proposer re-sending Elected in its own term to an acceptor that already has it.
    expect(findHighestCommonPoint(history([1, 10], [2, 20], [5, 40]), history([1, 10], [2, 20], [5, 40]), Lsn(57))).toEqual(point(5, 57))
  })

  test("divergence in the middle: the common term ends where the shorter log starts the next", () => {
    // We went on in term 3 from 30; the proposer's log has term 4 from 40 instead.
    expect(findHighestCommonPoint(history([1, 10], [2, 20], [4, 40]), history([1, 10], [2, 20], [3, 30]), Lsn(40))).toEqual(point(2, 30))
    // Our term 3 started later than the proposer's term 4: the proposer's switch bounds it.
    expect(findHighestCommonPoint(history([1, 10], [2, 20], [4, 25]), history([1, 10], [2, 20], [3, 30]), Lsn(40))).toEqual(point(2, 25))
  })

  test("our history stops inside the common term: our WAL end bounds it", () => {
    expect(findHighestCommonPoint(history([1, 10], [2, 20], [4, 40]), history([1, 10], [2, 20]), Lsn(32))).toEqual(point(2, 32))
    expect(findHighestCommonPoint(history([1, 10], [2, 20], [4, 40]), history([1, 10], [2, 20]), Lsn(45))).toEqual(point(2, 40))
  })

  test("a history beyond our WAL end, or one term with two start LSNs, is a broken invariant", () => {
    expect(() => findHighestCommonPoint(history([1, 10]), history([1, 10], [2, 30]), Lsn(20))).toThrow(InvariantViolation)
    expect(() => findHighestCommonPoint(history([1, 10], [2, 20]), history([1, 10], [2, 25]), Lsn(30))).toThrow(/term 2 starts at/)
  })

  test("matches the brute-force definition on histories grown by elections", () => {
    fc.assert(
      fc.property(arbElectionScenario, ({ proposer, acceptor, acceptorEndLsn }) => {
        const found = findHighestCommonPoint(proposer, acceptor, acceptorEndLsn)
        const expected = bruteForceCommonLsn(proposer, acceptor, acceptorEndLsn)
        if (expected === undefined) return found === undefined
        if (found === undefined || found.lsn !== expected) return false
        // The term named is one both logs hold.
        return proposer.some((e) => e.term === found.term) && acceptor.some((e) => e.term === found.term)
      }),
      { numRuns: 2000 }
    )
  })
})

describe("termHistoryUpTo and lastLogTerm", () => {
  const h = history([1, 10], [2, 20], [3, 20], [5, 40])
  test("keeps the entries starting at or below the LSN", () => {
    expect(termHistoryUpTo(h, Lsn(9))).toEqual([])
    expect(termHistoryUpTo(h, Lsn(20))).toEqual(history([1, 10], [2, 20], [3, 20]))
    expect(termHistoryUpTo(h, Lsn(39))).toEqual(history([1, 10], [2, 20], [3, 20]))
    expect(termHistoryUpTo(h, Lsn(40))).toBe(h)
  })
  test("last_log_term is the term of the last entry at or below flush, else 0", () => {
    expect(lastLogTerm(h, Lsn(0))).toBe(0)
    expect(lastLogTerm(h, Lsn(15))).toBe(1)
    expect(lastLogTerm(h, Lsn(20))).toBe(3)
    expect(lastLogTerm(h, Lsn(100))).toBe(5)
  })
})

// ---- the brute-force definition and its generator ----

/** The term of position `lsn` in a log: the last switch at or below it. */
function termAt(history: TermHistory, lsn: number): number | undefined {
  let term: number | undefined
  for (const entry of history) if (entry.lsn <= lsn) term = entry.term
  return term
}

/**
 * Undefined when the histories share no term; otherwise the first position of our log where the
 * two logs name different terms (or our end when they agree all the way).
 */
function bruteForceCommonLsn(proposer: TermHistory, acceptor: TermHistory, acceptorEndLsn: number): number | undefined {
  const shared = proposer.some((p) => acceptor.some((a) => a.term === p.term))
  if (!shared) return undefined
  const start = proposer[0]!.lsn
  for (let lsn = start; lsn < acceptorEndLsn; lsn++) {
    if (termAt(proposer, lsn) !== termAt(acceptor, lsn)) return lsn
  }
  return Math.max(start, acceptorEndLsn)
}

interface ElectionScenario {
  readonly proposer: TermHistory
  readonly acceptor: TermHistory
  readonly acceptorEndLsn: Lsn
}

/**
 * A tree of histories: a root term, then elections, each copying a prefix of an earlier history
 * (the donor's log) and adding its own term at or after that prefix's last start. The proposer is
 * one history; the acceptor holds another up to some end LSN, with no term above the proposer's.
 */
const arbElectionScenario: fc.Arbitrary<ElectionScenario> = fc
  .record({
    rootTerm: fc.integer({ min: 0, max: 3 }),
    rootLsn: fc.integer({ min: 0, max: 8 }),
    elections: fc.array(
      fc.record({
        donor: fc.nat(),
        prefix: fc.nat(),
        termGap: fc.integer({ min: 1, max: 3 }),
        lsnGap: fc.integer({ min: 0, max: 8 })
      }),
      { maxLength: 7 }
    ),
    proposer: fc.nat(),
    acceptor: fc.nat(),
    endGap: fc.integer({ min: 0, max: 60 })
  })
  .map(({ rootTerm, rootLsn, elections, proposer, acceptor, endGap }) => {
    const histories: TermHistory[] = [history([rootTerm, rootLsn])]
    let lastTerm = rootTerm
    for (const election of elections) {
      const donor = histories[election.donor % histories.length]!
      const prefix = donor.slice(0, 1 + (election.prefix % donor.length))
      lastTerm += election.termGap
      histories.push([...prefix, { term: Term(lastTerm), lsn: Lsn(prefix[prefix.length - 1]!.lsn + election.lsnGap) }])
    }
    const proposerHistory = histories[proposer % histories.length]!
    const acceptorFull = histories[acceptor % histories.length]!
    const acceptorEndLsn = Lsn(acceptorFull[0]!.lsn + endGap)
    return { proposer: proposerHistory, acceptor: termHistoryUpTo(acceptorFull, acceptorEndLsn), acceptorEndLsn }
  })
  // The proposer's own term is the highest any acceptor it talks to has seen (it won their votes).
  .filter(({ proposer, acceptor }) => acceptor.every((entry) => entry.term <= proposer[proposer.length - 1]!.term))
