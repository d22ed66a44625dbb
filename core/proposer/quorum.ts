import { assert } from "../assert.js"
import {
  INVALID_GENERATION,
  MEMBER_COUNT_MAX,
  type MemberConfiguration,
  type NodeId,
  type Term,
  type TermHistory
} from "../acceptor/state.js"
import { findHighestCommonPoint, lastLogTerm } from "../acceptor/term-history.js"
import { formatLsn, Lsn } from "../wal/lsn.js"

/**
 * The walproposer's quorum arithmetic (reference §14; walproposer.c `TermsCollected`,
 * `VotesCollected`, `GetAcknowledgedByQuorumWALPosition`, `SendProposerElected`,
 * `HandleSafekeeperResponse`). Plain functions over plain data: the proposer's state machine
 * calls them, the properties in quorum.test.ts check them.
 *
 * Safekeepers are numbered by slot: their position in the proposer's configured list. A member
 * set names safekeepers by node id; it is mapped to slots through the node ids the safekeepers
 * sent in their greetings (a member no slot has greeted as is `undefined`: it counts as absent).
 */

/** A strict majority: the legacy quorum (n/2+1) and a member set's (`MsetQuorum`). */
export function quorumSize(memberCount: number): number {
  assert(Number.isInteger(memberCount) && memberCount >= 1, `a quorum of ${memberCount} members`)
  return Math.floor(memberCount / 2) + 1
}

/** A member set as slots; `undefined` for a member that no greeted slot is. */
export type MemberSet = ReadonlyArray<number | undefined>

/**
 * The sets a quorum must be found in. Legacy (generation 0): one set, every slot. With a
 * configuration: its members and, in a joint configuration, its new members; each must have a
 * majority (Neon's `*Mset` helpers).
 */
export function memberSets(mconf: MemberConfiguration, slotNodeIds: ReadonlyArray<NodeId | undefined>): ReadonlyArray<MemberSet> {
  if (mconf.generation === INVALID_GENERATION) {
    assert(slotNodeIds.length >= 1 && slotNodeIds.length <= MEMBER_COUNT_MAX, `1..${MEMBER_COUNT_MAX} safekeepers`)
    return [slotNodeIds.map((_, slot) => slot)]
  }
  assert(mconf.members.length >= 1, `generation ${mconf.generation} has members`)
  const slotOf = (id: NodeId): number | undefined => {
    const slot = slotNodeIds.indexOf(id)
    return slot < 0 ? undefined : slot
  }
  const sets: MemberSet[] = [mconf.members.map((member) => slotOf(member.id))]
  if (mconf.newMembers !== undefined && mconf.newMembers.length > 0) sets.push(mconf.newMembers.map((member) => slotOf(member.id)))
  return sets
}

/** Whether every set has a majority of members for which `holds` is true. */
export function hasQuorum(sets: ReadonlyArray<MemberSet>, holds: (slot: number) => boolean): boolean {
  assert(sets.length >= 1, "at least one member set")
  return sets.every((set) => set.filter((slot) => slot !== undefined && holds(slot)).length >= quorumSize(set.length))
}

/**
 * The LSN a quorum has flushed: per set, each member's last reported flush_lsn, counted as 0
 * below `propTermStartLsn` (Raft: entries of earlier terms are committed only through one of
 * ours), sorted ascending, element [n − quorum]; over both sets of a joint configuration, the
 * lower. 0 while no quorum has reached the term start.
 */
export function quorumCommitLsn(sets: ReadonlyArray<MemberSet>, flushLsnBySlot: ReadonlyArray<Lsn>, propTermStartLsn: Lsn): Lsn {
  assert(sets.length >= 1, "at least one member set")
  let committed = Number.POSITIVE_INFINITY
  for (const set of sets) {
    const flushes = set.map((slot) => {
      const flush = slot === undefined ? 0 : flushLsnBySlot[slot]!
      return flush >= propTermStartLsn ? flush : 0
    }).sort((a, b) => a - b)
    committed = Math.min(committed, flushes[flushes.length - quorumSize(flushes.length)]!)
  }
  return Lsn(committed)
}

/** What a granted vote told us (VoteResponse), with the slot it came from. */
export interface Vote {
  readonly slot: number
  readonly flushLsn: Lsn
  readonly truncateLsn: Lsn
  /** The voter's history up to its flush_lsn. */
  readonly termHistory: TermHistory
}

export interface ElectionOutcome {
  /** The voter with the highest (last_log_term, flush_lsn): its log becomes ours. */
  readonly donor: Vote
  readonly donorLastLogTerm: Term
  /** The donor's flush_lsn: where our term starts (0 when no voter holds WAL). */
  readonly propTermStartLsn: Lsn
  /** The highest truncate_lsn any voter reported. */
  readonly truncateLsn: Lsn
}

/**
 * Picks the donor among a quorum of votes: the highest (last_log_term, flush_lsn), ties to the
 * earlier slot (Neon walks slots in order and replaces the donor only on a strictly higher vote).
 */
export function electionOutcome(votes: ReadonlyArray<Vote>): ElectionOutcome {
  assert(votes.length >= 1, "an election needs votes")
  let donor: Vote | undefined
  let donorLastLogTerm = 0
  let truncateLsn = 0
  for (const vote of [...votes].sort((a, b) => a.slot - b.slot)) {
    const term = lastLogTerm(vote.termHistory, vote.flushLsn)
    if (donor === undefined || term > donorLastLogTerm || (term === donorLastLogTerm && vote.flushLsn > donor.flushLsn)) {
      donor = vote
      donorLastLogTerm = term
    }
    truncateLsn = Math.max(truncateLsn, vote.truncateLsn)
  }
  assert(donor !== undefined, "a donor among the votes")
  return {
    donor,
    donorLastLogTerm: lastLogTerm(donor.termHistory, donor.flushLsn),
    propTermStartLsn: donor.flushLsn,
    truncateLsn: Lsn(truncateLsn)
  }
}

/** The elected proposer's history: the donor's, then (our term, where it starts). */
export function proposerTermHistory(donorHistory: TermHistory, propTerm: Term, propTermStartLsn: Lsn): TermHistory {
  const last = donorHistory[donorHistory.length - 1]
  if (last !== undefined) {
    assert(last.term < propTerm, `our term ${propTerm} is above the donor's last term ${last.term}`)
    assert(last.lsn <= propTermStartLsn, `the donor's last term starts at ${formatLsn(last.lsn)}, above our start ${formatLsn(propTermStartLsn)}`)
  }
  return [...donorHistory, { term: propTerm, lsn: propTermStartLsn }]
}

/**
 * Where to stream to a safekeeper from (walproposer `SendProposerElected`): the end of the
 * highest term both logs share (its flush_lsn when that term is ours), or with no common term
 * the start of our history. It is what the acceptor computes too, and it refuses any other.
 */
export function startStreamingAt(proposerHistory: TermHistory, acceptorHistory: TermHistory, acceptorFlushLsn: Lsn): Lsn {
  const first = proposerHistory[0]
  assert(first !== undefined, "the proposer's history has our term")
  const point = findHighestCommonPoint(proposerHistory, acceptorHistory, acceptorFlushLsn)
  return point === undefined ? first.lsn : point.lsn
}

/**
 * The lowest LSN the proposer may still need to send (`HandleSafekeeperResponse`): what every
 * safekeeper has flushed, never above commit_lsn (a safekeeper of an earlier term may report a
 * flush that is not ours), and never lower than before.
 */
export function advanceTruncateLsn(truncateLsn: Lsn, flushLsnBySlot: ReadonlyArray<Lsn>, commitLsn: Lsn): Lsn {
  assert(flushLsnBySlot.length >= 1, "at least one safekeeper")
  const candidate = Math.min(Math.min(...flushLsnBySlot), commitLsn)
  return Lsn(Math.max(truncateLsn, candidate))
}
