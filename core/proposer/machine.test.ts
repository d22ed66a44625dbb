// Goal: the walproposer state machine takes walproposer.c's decisions (reference §14): campaign
// at a quorum of greetings in a term above every term seen, elect at a quorum of votes with the
// right donor and start points, step down on any higher term or a refused vote it needed,
// commit only what a quorum flushed in its term, drop silent connections, reconnect offline
// ones, heartbeat when idle, give up without a quorum, and finish sync-safekeepers exactly when
// Neon does. Method: plain event sequences fed to `start`/`step`, checking the actions.
import { describe, expect, test } from "vitest"
import { EMPTY_HOT_STANDBY_FEEDBACK, type AcceptorMessage, type ProposerElected } from "../protocol/consensus.js"
import { Generation, type MemberConfiguration, NodeId, TenantId, Term, type TermHistory, TimelineId } from "../acceptor/state.js"
import { Lsn } from "../wal/lsn.js"
import {
  type ProposerAction,
  type ProposerConfig,
  type ProposerConfigInput,
  type ProposerEvent,
  type ProposerState,
  resolveConfig,
  start,
  step
} from "./machine.js"

const A = "sk1:5454"
const B = "sk2:5454"
const C = "sk3:5454"
const SECOND_US = 1_000_000

const history = (...entries: ReadonlyArray<readonly [number, number]>): TermHistory =>
  entries.map(([term, lsn]) => ({ term: Term(term), lsn: Lsn(lsn) }))

const greeting = (nodeId: number, term: number, mconf?: MemberConfiguration): AcceptorMessage => ({
  _tag: "AcceptorGreeting",
  nodeId: NodeId(nodeId),
  mconf: mconf ?? { generation: Generation(0), members: [], newMembers: undefined },
  term: Term(term)
})
const vote = (term: number, voteGiven: boolean, flushLsn: number, termHistory: TermHistory = [], truncateLsn = 0): AcceptorMessage => ({
  _tag: "VoteResponse",
  generation: Generation(0),
  term: Term(term),
  voteGiven,
  flushLsn: Lsn(flushLsn),
  truncateLsn: Lsn(truncateLsn),
  termHistory
})
const appended = (term: number, flushLsn: number, commitLsn = 0, generation = 0): AcceptorMessage => ({
  _tag: "AppendResponse",
  generation: Generation(generation),
  term: Term(term),
  flushLsn: Lsn(flushLsn),
  commitLsn: Lsn(commitLsn),
  hsFeedback: EMPTY_HOT_STANDBY_FEEDBACK,
  pageserverFeedback: undefined
})

/** Drives the machine and keeps every action, like the shell would see them. */
class Driver {
  readonly config: ProposerConfig
  state: ProposerState
  nowUs = 0
  actions: ProposerAction[] = []

  constructor(overrides: Partial<ProposerConfigInput> = {}) {
    this.config = resolveConfig({
      tenantId: TenantId("0123456789abcdef0123456789abcdef"),
      timelineId: TimelineId("fedcba9876543210fedcba9876543210"),
      safekeepers: [A, B, C],
      quorumTimeoutUs: 10 * SECOND_US,
      ...overrides
    })
    const first = start(this.config, 0)
    this.state = first.state
    this.actions = [...first.actions]
  }

  /** Feeds one event; returns the actions it produced. */
  on(event: ProposerEvent, advanceUs = 0): ReadonlyArray<ProposerAction> {
    this.nowUs += advanceUs
    const next = step(this.config, this.state, event, this.nowUs)
    this.state = next.state
    this.actions.push(...next.actions)
    return next.actions
  }

  slot(address: string): number {
    return this.config.safekeepers.indexOf(address)
  }

  connectionNo(address: string): number {
    return this.state.safekeepers[this.slot(address)]!.connectionNo
  }

  connected(address: string) {
    return this.on({ _tag: "Connected", slot: this.slot(address), connectionNo: this.connectionNo(address) })
  }

  receive(address: string, message: AcceptorMessage, advanceUs = 0) {
    return this.on({ _tag: "Received", slot: this.slot(address), connectionNo: this.connectionNo(address), message }, advanceUs)
  }

  fail(address: string) {
    return this.on({ _tag: "LinkFailed", slot: this.slot(address), connectionNo: this.connectionNo(address), reason: "Closed", message: "test" })
  }

  tick(advanceUs: number) {
    return this.on({ _tag: "Tick" }, advanceUs)
  }

  status(address: string) {
    return this.state.safekeepers[this.slot(address)]!.status
  }

  /** Connected and greeted at `term`. */
  greet(address: string, nodeId: number, term: number) {
    return [...this.connected(address), ...this.receive(address, greeting(nodeId, term))]
  }
}

const sent = (actions: ReadonlyArray<ProposerAction>) =>
  actions.flatMap((action) => (action._tag === "Send" ? [{ slot: action.slot, message: action.message }] : []))
const ofTag = <T extends ProposerAction["_tag"]>(actions: ReadonlyArray<ProposerAction>, tag: T) =>
  actions.filter((action): action is Extract<ProposerAction, { readonly _tag: T }> => action._tag === tag)

/** Elected in term 4 with A as donor (term-3 log to 0/500), B behind in term 3 and C empty. */
function electedDriver(overrides: Partial<ProposerConfigInput> = {}): Driver {
  const d = new Driver(overrides)
  d.greet(A, 1, 3)
  d.greet(B, 2, 2)
  d.greet(C, 3, 0)
  d.receive(A, vote(4, true, 500, history([1, 100], [3, 300]), 150))
  d.receive(B, vote(4, true, 400, history([1, 100], [3, 300]), 200))
  return d
}

describe("connecting and campaigning", () => {
  test("every safekeeper is connected at start; a connection is greeted with our configuration", () => {
    const d = new Driver()
    expect(ofTag(d.actions, "Connect").map((action) => action.slot)).toEqual([0, 1, 2])
    const [greet] = sent(d.connected(A))
    expect(greet!.message).toMatchObject({ _tag: "ProposerGreeting", pgVersion: 150004, walSegSizeBytes: 16 * 1024 * 1024, mconf: { generation: 0 } })
    expect(d.status(A)).toBe("HandshakeRecv")
  })

  test("a quorum of greetings starts the campaign one term above every term seen; later greeters are asked too", () => {
    const d = new Driver()
    expect(sent(d.greet(A, 1, 5))).toEqual([{ slot: 0, message: expect.objectContaining({ _tag: "ProposerGreeting" }) }])
    expect(d.state.phase).toBe("CollectingTerms")
    const campaign = d.greet(B, 2, 7)
    expect(d.state.phase).toBe("Campaign")
    expect(d.state.propTerm).toBe(8)
    expect(sent(campaign).filter((s) => s.message._tag === "VoteRequest").map((s) => s.slot)).toEqual([0, 1])
    const late = d.greet(C, 3, 2)
    expect(sent(late).at(-1)).toEqual({ slot: 2, message: { _tag: "VoteRequest", generation: 0, term: 8 } })
  })

  test("a greeting above our term after the campaign began is another proposer: HigherTerm", () => {
    const d = new Driver()
    d.greet(A, 1, 1)
    d.greet(B, 2, 1)
    const actions = d.greet(C, 3, 9)
    expect(ofTag(actions, "StepDown")).toEqual([expect.objectContaining({ reason: "HigherTerm" })])
    expect(d.state.phase).toBe("Done")
    expect(d.on({ _tag: "Tick" }, SECOND_US)).toEqual([])
  })

  test("events of an older connection are ignored", () => {
    const d = new Driver()
    const oldConnection = d.connectionNo(A)
    d.fail(A)
    d.tick(SECOND_US) // reconnect round
    expect(d.connectionNo(A)).toBe(oldConnection + 1)
    expect(d.on({ _tag: "Connected", slot: 0, connectionNo: oldConnection })).toEqual([])
    expect(d.on({ _tag: "Received", slot: 0, connectionNo: oldConnection, message: greeting(1, 0) })).toEqual([])
    expect(d.status(A)).toBe("Connecting")
  })

  test("a newer configuration is adopted while collecting terms, and ends us once campaigning", () => {
    const mconf: MemberConfiguration = {
      generation: Generation(2),
      members: [1, 2, 3].map((id) => ({ id: NodeId(id), host: `sk${id}`, pgPort: 5454 })),
      newMembers: undefined
    }
    const d = new Driver()
    d.connected(A)
    d.receive(A, greeting(1, 0, mconf))
    expect(d.state.mconf.generation).toBe(2)
    d.connected(B)
    const campaign = d.receive(B, greeting(2, 0, mconf))
    expect(sent(campaign).filter((s) => s.message._tag === "VoteRequest").map((s) => s.message)).toEqual([
      { _tag: "VoteRequest", generation: 2, term: 1 },
      { _tag: "VoteRequest", generation: 2, term: 1 }
    ])
    d.connected(C)
    const newer = d.receive(C, greeting(3, 0, { ...mconf, generation: Generation(3) }))
    expect(ofTag(newer, "StepDown")).toEqual([expect.objectContaining({ reason: "ConfigurationChanged" })])
  })
})

describe("votes and election", () => {
  test("a quorum of votes elects: the highest (last_log_term, flush) is the donor, it gets Elected first", () => {
    const d = new Driver()
    d.greet(A, 1, 3)
    d.greet(B, 2, 2)
    d.greet(C, 3, 0)
    expect(d.state.propTerm).toBe(4)
    // B has the longer log but of an older term: A (last_log_term 3) is the donor.
    d.receive(B, vote(4, true, 700, history([1, 100], [2, 300]), 200))
    const election = d.receive(A, vote(4, true, 500, history([1, 100], [3, 400]), 150))
    expect(d.state.phase).toBe("Elected")
    expect(d.state.election).toMatchObject({ donorSlot: 0, donorLastLogTerm: 3, propTermStartLsn: 500, termHistory: history([1, 100], [3, 400], [4, 500]) })
    expect(d.state.truncateLsn).toBe(200)
    expect(ofTag(election, "BeginTerm")).toHaveLength(1)
    const elected = sent(election).map((s) => ({ slot: s.slot, start: (s.message as ProposerElected).startStreamingAt }))
    // A continues at its flush; B's term-2 WAL (from 0/300 on) is not in our log and is cut.
    expect(elected).toEqual([{ slot: 0, start: 500 }, { slot: 1, start: 300 }])
    expect(ofTag(election, "StartStreaming").map((action) => [action.slot, action.startLsn])).toEqual([[0, 500], [1, 300]])
    // C votes late: it gets Elected at once, from the start of our history (it is empty).
    const late = d.receive(C, vote(4, true, 0))
    expect(sent(late)).toEqual([{ slot: 2, message: expect.objectContaining({ _tag: "ProposerElected", startStreamingAt: 100 }) }])
  })

  test("a new timeline starts at the initial LSN", () => {
    const d = new Driver()
    d.greet(A, 1, 0)
    d.greet(B, 2, 0)
    d.receive(A, vote(1, true, 0))
    d.receive(B, vote(1, true, 0))
    expect(d.state.election).toMatchObject({ propTermStartLsn: 0x1000028, termHistory: history([1, 0x1000028]) })
    expect(d.state.truncateLsn).toBe(0x1000028)
  })

  test("a refused vote: HigherTerm above our term, VoteRefused at our term while campaigning", () => {
    const higher = new Driver()
    higher.greet(A, 1, 0)
    higher.greet(B, 2, 0)
    expect(ofTag(higher.receive(A, vote(5, false, 0)), "StepDown")).toEqual([expect.objectContaining({ reason: "HigherTerm" })])
    const same = new Driver()
    same.greet(A, 1, 0)
    same.greet(B, 2, 0)
    expect(ofTag(same.receive(A, vote(1, false, 0)), "StepDown")).toEqual([expect.objectContaining({ reason: "VoteRefused" })])
  })

  test("a voter that reconnects during the campaign keeps its vote (it refuses the repeated request)", () => {
    const d = new Driver()
    d.greet(A, 1, 0)
    d.greet(B, 2, 0)
    d.receive(A, vote(1, true, 0))
    d.fail(A)
    d.tick(SECOND_US)
    d.greet(A, 1, 1)
    d.receive(A, vote(1, false, 0))
    expect(d.state.phase).toBe("Campaign")
    d.receive(B, vote(1, true, 0))
    expect(d.state.phase).toBe("Elected")
  })

  test("after the election a refused vote at our term is a reconnect: it gets Elected from its flush", () => {
    const d = electedDriver()
    d.fail(B)
    d.tick(SECOND_US)
    d.greet(B, 2, 4)
    const actions = d.receive(B, vote(4, false, 650, history([1, 100], [3, 300], [4, 500])))
    expect(sent(actions)).toEqual([{ slot: 1, message: expect.objectContaining({ _tag: "ProposerElected", startStreamingAt: 650 }) }])
  })
})

describe("streaming and commit", () => {
  test("commit_lsn is the quorum flush at or past the term start, broadcast when it grows; truncate_lsn follows", () => {
    const d = electedDriver()
    expect(ofTag(d.receive(A, appended(4, 500)), "Broadcast")).toEqual([]) // A alone: no quorum
    expect(d.state.commitLsn).toBe(0)
    // B at its start point 0/400: below the term start, it counts as 0.
    d.receive(B, appended(4, 400))
    expect(d.state.commitLsn).toBe(0)
    const grown = d.receive(B, appended(4, 520))
    expect(d.state.commitLsn).toBe(500)
    expect(ofTag(grown, "Broadcast")).toHaveLength(1)
    // C never answered (flush 0): truncate_lsn stays at the voters' 0/200.
    expect(d.state.truncateLsn).toBe(200)
    d.on({ _tag: "Received", slot: 2, connectionNo: d.connectionNo(C), message: vote(4, true, 0) })
    d.receive(C, appended(4, 510))
    expect(d.state.truncateLsn).toBe(500)
  })

  test("an append response in a higher term or another generation ends us", () => {
    expect(ofTag(electedDriver().receive(A, appended(5, 0)), "StepDown")).toEqual([expect.objectContaining({ reason: "HigherTerm" })])
    expect(ofTag(electedDriver().receive(A, appended(4, 500, 0, 7)), "StepDown")).toEqual([expect.objectContaining({ reason: "GenerationMismatch" })])
  })

  test("the source's end is reached once commit_lsn gets there", () => {
    const d = electedDriver()
    d.on({ _tag: "WalAvailable", endLsn: Lsn(900) })
    d.on({ _tag: "SourceEnded", endLsn: Lsn(900) })
    d.receive(A, appended(4, 900))
    expect(ofTag(d.receive(B, appended(4, 800)), "Finish")).toEqual([])
    expect(ofTag(d.receive(B, appended(4, 900)), "Finish")).toEqual([{ _tag: "Finish", lsn: 900 }])
  })
})

describe("timers", () => {
  test("a silent connection is dropped after the connection timeout and reconnected on the next round", () => {
    const d = electedDriver({ connectionTimeoutUs: 3 * SECOND_US })
    d.receive(A, appended(4, 500), SECOND_US)
    d.receive(B, appended(4, 500))
    const dropped = d.tick(2.5 * SECOND_US) // C greeted at 0 and never spoke again
    expect(ofTag(dropped, "Disconnect").map((action) => action.slot)).toEqual([2])
    expect(d.status(C)).toBe("Offline")
    const reconnect = d.tick(SECOND_US)
    expect(ofTag(reconnect, "Connect").map((action) => action.slot)).toEqual([2])
  })

  test("an idle elected proposer sends heartbeats", () => {
    const d = electedDriver({ heartbeatIntervalUs: SECOND_US })
    expect(ofTag(d.tick(SECOND_US / 2), "Broadcast")).toEqual([])
    expect(ofTag(d.tick(SECOND_US / 2), "Broadcast")).toHaveLength(1)
  })

  test("NoQuorum: not elected within the quorum timeout, or commit_lsn stuck while WAL waits", () => {
    const lonely = new Driver()
    lonely.greet(A, 1, 0)
    expect(ofTag(lonely.tick(9 * SECOND_US), "StepDown")).toEqual([])
    expect(ofTag(lonely.tick(2 * SECOND_US), "StepDown")).toEqual([expect.objectContaining({ reason: "NoQuorum" })])
    const stuck = electedDriver()
    stuck.receive(A, appended(4, 600))
    stuck.receive(B, appended(4, 600))
    stuck.on({ _tag: "WalAvailable", endLsn: Lsn(800) }, SECOND_US)
    expect(ofTag(stuck.tick(9 * SECOND_US), "StepDown")).toEqual([])
    expect(ofTag(stuck.tick(2 * SECOND_US), "StepDown")).toEqual([expect.objectContaining({ reason: "NoQuorum" })])
  })
})

describe("sync-safekeepers", () => {
  test("no WAL anywhere: finishes at 0/0 without sending Elected", () => {
    const d = new Driver({ syncSafekeepers: true })
    d.greet(A, 1, 0)
    d.greet(B, 2, 0)
    d.receive(A, vote(1, true, 0))
    const actions = d.receive(B, vote(1, true, 0))
    expect(ofTag(actions, "Finish")).toEqual([{ _tag: "Finish", lsn: 0 }])
    expect(sent(actions)).toEqual([])
  })

  test("truncate_lsn already at the term start: finishes at once", () => {
    const d = new Driver({ syncSafekeepers: true })
    d.greet(A, 1, 1)
    d.greet(B, 2, 1)
    d.receive(A, vote(2, true, 500, history([1, 100]), 500))
    const actions = d.receive(B, vote(2, true, 500, history([1, 100]), 400))
    expect(ofTag(actions, "Finish")).toEqual([{ _tag: "Finish", lsn: 500 }])
    expect(ofTag(actions, "BeginTerm")).toEqual([])
  })

  test("otherwise waits for a quorum commit and every connected safekeeper's persisted commit at the term start", () => {
    const d = new Driver({ syncSafekeepers: true })
    d.greet(A, 1, 1)
    d.greet(B, 2, 1)
    d.greet(C, 3, 1)
    d.receive(A, vote(2, true, 500, history([1, 100]), 300))
    const election = d.receive(B, vote(2, true, 450, history([1, 100]), 300))
    expect(ofTag(election, "Broadcast")).toHaveLength(1)
    d.receive(C, vote(2, true, 300, history([1, 100]), 300))
    d.receive(A, appended(2, 500, 500))
    d.receive(B, appended(2, 500, 500)) // quorum commit 0/500, but C has not persisted it
    expect(d.state.phase).toBe("Elected")
    expect(ofTag(d.receive(C, appended(2, 500, 450)), "Finish")).toEqual([])
    expect(ofTag(d.receive(C, appended(2, 500, 500)), "Finish")).toEqual([{ _tag: "Finish", lsn: 500 }])
  })

  test("an offline safekeeper does not hold the sync back", () => {
    const d = new Driver({ syncSafekeepers: true })
    d.greet(A, 1, 1)
    d.greet(B, 2, 1)
    d.receive(A, vote(2, true, 500, history([1, 100]), 300))
    d.receive(B, vote(2, true, 450, history([1, 100]), 300))
    d.fail(C)
    d.receive(A, appended(2, 500, 500))
    expect(ofTag(d.receive(B, appended(2, 500, 500)), "Finish")).toEqual([{ _tag: "Finish", lsn: 500 }])
  })
})
