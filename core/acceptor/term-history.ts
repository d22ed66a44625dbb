import { assert } from "../assert.js"
import { formatLsn, type Lsn } from "../wal/lsn.js"
import { INITIAL_TERM, type Term, type TermHistory, type TermLsn } from "./state.js"

/**
 * Term histories (Neon's `TermHistory`, reference §4 and §5): the list of term switches
 * (term, start LSN), oldest first. An acceptor's persisted history may run past the WAL it
 * holds (it adopts the proposer's whole history on ProposerElected), so every question about
 * "our log" looks only at the entries that start at or below flush_lsn.
 */

/** The entries that start at or below `upToLsn` (Neon's `TermHistory::up_to`). */
export function termHistoryUpTo(history: TermHistory, upToLsn: Lsn): TermHistory {
  let count = 0
  // Start LSNs never fall, so the kept entries are a prefix.
  while (count < history.length && history[count]!.lsn <= upToLsn) count++
  return count === history.length ? history : history.slice(0, count)
}

/**
 * The term of the last record in our log ("epoch" in Neon's APIs): the term of the last
 * entry starting at or below `flushLsn`, or 0 when there is none.
 */
export function lastLogTerm(history: TermHistory, flushLsn: Lsn): Term {
  const upTo = termHistoryUpTo(history, flushLsn)
  return upTo[upTo.length - 1]?.term ?? INITIAL_TERM
}

/**
 * Where the proposer's log and ours stop agreeing (Neon's `find_highest_common_point`; the
 * walproposer computes the same in `SendProposerElected`). The two arguments are not
 * symmetric: the proposer's log extends to +infinity in its last term, ours ends at
 * `acceptorEndLsn`. Returns the last common term and the LSN where it ends in the shorter of
 * the two logs, or undefined when the histories share no first entry.
 *
 * Asserted, as Neon does: our history ends at or below our WAL end (callers pass the history
 * cut at flush_lsn), and a term present in both histories starts at the same LSN in both
 * (a term has one proposer, and its history is adopted whole).
 */
export function findHighestCommonPoint(
  proposerHistory: TermHistory,
  acceptorHistory: TermHistory,
  acceptorEndLsn: Lsn
): TermLsn | undefined {
  const acceptorLast = acceptorHistory[acceptorHistory.length - 1]
  if (acceptorLast !== undefined) {
    assert(
      acceptorLast.lsn <= acceptorEndLsn,
      `acceptor term history ends at (${acceptorLast.term}, ${formatLsn(acceptorLast.lsn)}), above its WAL end ${formatLsn(acceptorEndLsn)}`
    )
  }
  let lastCommonIndex = -1
  const commonLength = Math.min(proposerHistory.length, acceptorHistory.length)
  for (let i = 0; i < commonLength; i++) {
    const proposerEntry = proposerHistory[i]!
    const acceptorEntry = acceptorHistory[i]!
    if (proposerEntry.term !== acceptorEntry.term) break
    assert(
      proposerEntry.lsn === acceptorEntry.lsn,
      `term ${proposerEntry.term} starts at ${formatLsn(proposerEntry.lsn)} for the proposer but at ${formatLsn(acceptorEntry.lsn)} for the acceptor`
    )
    lastCommonIndex = i
  }
  if (lastCommonIndex < 0) return undefined
  const term = proposerHistory[lastCommonIndex]!.term
  // The proposer's last term runs to +infinity: our end bounds it.
  if (lastCommonIndex === proposerHistory.length - 1) return { term, lsn: acceptorEndLsn }
  // Otherwise the common term ends where the next term starts, in whichever log is shorter.
  const proposerTermEnd = proposerHistory[lastCommonIndex + 1]!.lsn
  const acceptorTermEnd = acceptorHistory[lastCommonIndex + 1]?.lsn ?? acceptorEndLsn
  return { term, lsn: proposerTermEnd <= acceptorTermEnd ? proposerTermEnd : acceptorTermEnd }
}
