import { Effect, Layer, Result } from "effect"
import { decodeControlFile } from "../core/acceptor/control-file.js"
import type { TermHistory } from "../core/acceptor/state.js"
import { firstByteDifference } from "../core/bytes.js"
import { SafekeeperTransport, type SafekeeperLink } from "../core/proposer/transport.js"
import type { AcceptorMessage, ProposerMessage } from "../core/protocol/consensus.js"
import { formatLsn, segmentFileName, segmentNoOf, segmentStartLsn } from "../core/wal/lsn.js"
import { PagedContent } from "./disk-content.js"
import type { Incarnation } from "./kernel.js"
import type { World } from "./world.js"

/**
 * The safety checker of the whole service (DESIGN.md §6 items 1–7), fed by what it can see
 * without trusting the code under test: every consensus message a proposer sends and receives
 * (a tap on its transport), the safekeepers' disks after each crash, and what consumers
 * (pageservers) received. Each violation names its invariant, the node, the term and the LSN:
 *
 * - `one-proposer-per-term`: no two proposer runs send ProposerElected in the same term;
 * - `durable-vote`: after a crash, the control file's term covers every vote granted, and the
 *   durable term never decreases from one crash to the next;
 * - `commit-le-quorum-flush`: a commit_lsn sent is at most the quorum's flush_lsn in its term;
 * - `commit-monotonic`: a proposer's commit_lsn never goes back within its term;
 * - `log-matching`: WAL re-sent from an earlier term is what that term wrote; every safekeeper's
 *   durable WAL, read through its own term history, is what the owning terms wrote;
 * - `commit-durability`: a new term never starts below the highest commit, its history keeps the
 *   committed bytes, and every safekeeper's disk holds them after the final crash;
 * - `ack-after-fsync`: after a crash, the WAL a safekeeper acknowledged as flushed in its current
 *   term is on its disk;
 * - `no-vote-after-disk-loss`: a safekeeper that lost its disk grants no vote for the timeline;
 * - `consumer-wal-stable`: every WAL byte a consumer received is committed WAL, unchanged.
 */
export interface ServiceCheckerOptions {
  /** Safekeeper node names, and the address computes reach each at. */
  readonly safekeepers: ReadonlyArray<{ readonly node: string; readonly address: string }>
  readonly timelineDir: string
  readonly segmentSizeBytes: number
}

export class ServiceChecker {
  /** Bytes sent in AppendRequests of each term, at their LSNs. */
  private readonly sentByTerm = new Map<number, PagedContent>()
  private readonly historyByTerm = new Map<number, TermHistory>()
  private readonly electedBy = new Map<number, string>()
  private readonly electedAtUs = new Map<number, number>()
  /** Highest flush_lsn each safekeeper (by address) reported to the proposer of a term. */
  private readonly flushByTerm = new Map<number, Map<string, number>>()
  private readonly grantedTerm = new Map<string, number>()
  private readonly durableTerm = new Map<string, number>()
  private readonly durableCommit = new Map<string, number>()
  private readonly consumerPersistedLsn = new Map<string, number>()
  /** The term of the last ProposerElected sent to each safekeeper, and what it then acknowledged. */
  private readonly electedSentTerm = new Map<string, number>()
  private readonly acked = new Map<string, { readonly term: number; readonly flushLsn: number }>()
  private readonly commitByTerm = new Map<number, number>()
  /** Safekeepers that lost their disk, with when: replies on connections opened before came from the old life. */
  private readonly wiped = new Map<string, number>()
  private readonly consumed: Array<{ readonly who: string; readonly lsn: number; readonly bytes: Uint8Array }> = []
  private readonly committed = new PagedContent()
  readonly marks = new Set<string>()
  readonly progress: Array<{ atUs: number; node: string; term: number; flushLsn: number; commitLsn: number }> = []
  readonly messages: Array<{ sentUs: number; receivedUs?: number; from: string; to: string; kind: string; detail?: string }> = []
  private readonly lastSampleUs = new Map<string, number>()
  maxCommitLsn = 0
  timelineStartLsn = 0
  elections = 0
  appends = 0
  bytesSent = 0
  resentBytes = 0
  votesRefused = 0
  consumedBytes = 0
  livenessStarted = false
  commitsAfterLiveness = 0
  /** Proposer runs that were elected and had not stepped down, by compute: competing computes. */
  private readonly activeByCompute = new Map<string, number>()

  constructor(private readonly world: World, readonly options: ServiceCheckerOptions, private readonly recordTimeline: boolean) {}

  private get nowUs(): number {
    return this.world.kernel.nowUs
  }

  private nodeOf(address: string): string {
    return this.options.safekeepers.find((sk) => sk.address === address)?.node ?? address
  }

  private addressOf(node: string): string {
    return this.options.safekeepers.find((sk) => sk.node === node)?.address ?? node
  }

  violation(invariant: string, who: string, term: number | undefined, lsn: number | undefined, message: string): void {
    const where = [term !== undefined ? `term ${term}` : undefined, lsn !== undefined ? `lsn ${formatLsn(lsn)}` : undefined].filter((x) => x !== undefined).join(" ")
    this.world.violation(who, `${invariant}: ${message}${where.length > 0 ? ` (${where})` : ""}`)
  }

  get latestTerm(): number {
    let term = 0
    for (const t of this.electedBy.keys()) term = Math.max(term, t)
    return term
  }

  /** Highest flush_lsn the safekeeper reported in the latest elected term. */
  flushInLatestTerm(node: string): number {
    return this.flushByTerm.get(this.latestTerm)?.get(this.addressOf(node)) ?? 0
  }

  markWiped(node: string): void {
    this.wiped.set(this.addressOf(node), this.nowUs)
    this.acked.delete(this.addressOf(node))
  }

  isWiped(node: string): boolean {
    return this.wiped.has(this.addressOf(node))
  }

  private imageOf(term: number): PagedContent {
    let image = this.sentByTerm.get(term)
    if (image === undefined) {
      image = new PagedContent()
      this.sentByTerm.set(term, image)
    }
    return image
  }

  private sample(node: string, term: number, flushLsn: number, commitLsn: number): void {
    if (!this.recordTimeline) return
    const last = this.lastSampleUs.get(node)
    if (last !== undefined && this.nowUs - last < 20_000) return
    this.lastSampleUs.set(node, this.nowUs)
    this.progress.push({ atUs: this.nowUs, node, term, flushLsn, commitLsn })
  }

  private message(from: string, to: string, kind: string, detail: string | undefined, direction: "sent" | "received"): void {
    if (!this.recordTimeline || this.messages.length >= 200_000) return
    // The tap sits at the proposer: it sees when a request leaves and when a reply arrives.
    this.messages.push(direction === "sent"
      ? { sentUs: this.nowUs, from, to, kind, ...(detail !== undefined ? { detail } : {}) }
      : { sentUs: this.nowUs, receivedUs: this.nowUs, from, to, kind, detail: `${detail ?? ""} (seen on arrival)`.trim() })
  }

  /** The transport of one proposer run of `compute`, with every message also shown to the checker. */
  tap(life: Incarnation, compute: string, run: string, allowTimelineCreation: boolean): Layer.Layer<SafekeeperTransport, never, SafekeeperTransport> {
    const self = this
    let term: number | undefined
    let lastCommitSent = 0
    const voteFlush = new Map<string, number>()
    const sent = (address: string, message: ProposerMessage) => {
      if (!life.alive) return
      self.message(compute, self.nodeOf(address), message._tag, message._tag === "AppendRequest" ? `${formatLsn(message.beginLsn)}..${formatLsn(message.endLsn)} commit ${formatLsn(message.commitLsn)}` : "term" in message ? `term ${message.term}` : undefined, "sent")
      switch (message._tag) {
        case "ProposerElected": {
          term = message.term
          self.electedSentTerm.set(address, Math.max(self.electedSentTerm.get(address) ?? 0, message.term))
          const current = self.acked.get(address)
          if (current !== undefined && current.term < message.term) self.acked.delete(address)
          const earlier = self.electedBy.get(message.term)
          if (earlier !== undefined && earlier !== run) self.violation("one-proposer-per-term", compute, message.term, undefined, `two proposers elected: ${earlier} and ${run}`)
          if (earlier === undefined) {
            self.electedBy.set(message.term, run)
            self.electedAtUs.set(message.term, self.nowUs)
            self.historyByTerm.set(message.term, message.termHistory)
            self.elections++
            self.onElected(compute, message.term, message.termHistory)
            const active = self.activeByCompute.get(compute) ?? 0
            self.activeByCompute.set(compute, active + 1)
            for (const [other, count] of self.activeByCompute) if (other !== compute && count > 0) self.marks.add("competing-computes")
          }
          if (message.startStreamingAt < (voteFlush.get(address) ?? 0)) self.marks.add("truncated-tail")
          return
        }
        case "AppendRequest": {
          if (term === undefined || message.term !== term) return
          self.appends++
          if (message.commitLsn < lastCommitSent) {
            self.violation("commit-monotonic", compute, term, message.commitLsn, `commit_lsn went back from ${formatLsn(lastCommitSent)}`)
          }
          lastCommitSent = Math.max(lastCommitSent, message.commitLsn)
          if (message.walData.byteLength > 0) {
            self.bytesSent += message.walData.byteLength
            const history = self.historyByTerm.get(term)!
            const termStart = history[history.length - 1]!.lsn
            if (message.beginLsn < termStart) {
              const resentEnd = Math.min(termStart, message.endLsn)
              self.resentBytes += resentEnd - message.beginLsn
              self.checkOwned(history, message.beginLsn, message.walData.subarray(0, resentEnd - message.beginLsn), compute, term, `term ${term} re-sent`)
            }
            self.imageOf(term).write(message.beginLsn, message.walData, message.walData.byteLength)
          }
          self.onCommit(compute, term, message.commitLsn)
          return
        }
        default:
          return
      }
    }
    const received = (address: string, message: AcceptorMessage, openedUs: number) => {
      if (!life.alive) return
      const node = self.nodeOf(address)
      self.message(node, compute, message._tag, "term" in message ? `term ${message.term}` : undefined, "received")
      if (message._tag === "VoteResponse") {
        voteFlush.set(address, message.flushLsn)
        if (message.voteGiven) {
          self.grantedTerm.set(address, Math.max(self.grantedTerm.get(address) ?? 0, message.term))
          const wipedUs = self.wiped.get(address)
          if (wipedUs !== undefined && openedUs > wipedUs) self.violation("no-vote-after-disk-loss", node, message.term, message.flushLsn, "granted a vote for a timeline whose disk it lost")
        } else {
          self.votesRefused++
          self.marks.add("vote-refused")
        }
      }
      if (message._tag === "AppendResponse" && term !== undefined && message.term === term) {
        let flushes = self.flushByTerm.get(term)
        if (flushes === undefined) {
          flushes = new Map()
          self.flushByTerm.set(term, flushes)
        }
        flushes.set(address, Math.max(flushes.get(address) ?? 0, message.flushLsn))
        if (term >= (self.electedSentTerm.get(address) ?? 0)) {
          const before = self.acked.get(address)
          if (before === undefined || before.term < term || before.flushLsn < message.flushLsn) self.acked.set(address, { term, flushLsn: message.flushLsn })
        }
        self.sample(node, term, message.flushLsn, message.commitLsn)
      }
    }
    const stepDown = () => {
      if (term === undefined) return
      self.activeByCompute.set(compute, Math.max(0, (self.activeByCompute.get(compute) ?? 0) - 1))
      term = undefined
    }
    return Layer.effect(SafekeeperTransport, Effect.gen(function* () {
      const inner = yield* SafekeeperTransport
      yield* Effect.addFinalizer(() => Effect.sync(stepDown))
      return SafekeeperTransport.of({
        open: (address, options) =>
          Effect.suspend(() => {
            const openedUs = self.nowUs
            return Effect.map(inner.open(address, { ...options, allowTimelineCreation }), (link): SafekeeperLink => ({
              address: link.address,
              send: (message) => Effect.andThen(Effect.sync(() => sent(address, message)), link.send(message)),
              receive: Effect.tap(link.receive, (message) => Effect.sync(() => received(address, message, openedUs))),
              close: link.close
            }))
          }),
        streamWal: (address, options) => inner.streamWal(address, options)
      })
    }))
  }

  /** A new term: it must start at or above every commit, and its history must keep committed bytes. */
  private onElected(compute: string, term: number, history: TermHistory): void {
    const termStart = history[history.length - 1]!.lsn
    if (this.timelineStartLsn === 0) this.timelineStartLsn = history[0]!.lsn
    if (history.length > 1) this.marks.add("new-term-over-old-wal")
    // Only commits of lower terms bind a new term: a proposer elected late in a lower term than
    // one that already committed is harmless (the acceptors of the higher term refuse it).
    const bindingCommit = this.maxCommitBelow(term)
    if (termStart < bindingCommit) {
      this.violation("commit-durability", compute, term, termStart, `the term starts below commit_lsn ${formatLsn(bindingCommit)} of an earlier term: committed WAL would be truncated`)
      return
    }
    const start = this.timelineStartLsn
    const committed = this.committed.read(start, bindingCommit - start)
    this.checkOwned(history, start, committed, compute, term, `term ${term}'s history over the committed prefix`, "commit-durability")
  }

  /** commit ≤ quorum flush of the term, then the newly committed bytes join the committed image. */
  private maxCommitBelow(term: number): number {
    let max = 0
    for (const [t, lsn] of this.commitByTerm) if (t < term) max = Math.max(max, lsn)
    return max
  }

  private onCommit(compute: string, term: number, commitLsn: number): void {
    if (commitLsn <= (this.commitByTerm.get(term) ?? 0)) return
    const flushes = [...(this.flushByTerm.get(term)?.values() ?? [])].sort((a, b) => b - a)
    const quorum = Math.floor(this.options.safekeepers.length / 2) + 1
    const quorumFlush = flushes[quorum - 1] ?? 0
    if (commitLsn > quorumFlush) {
      this.violation("commit-le-quorum-flush", compute, term, commitLsn, `commit_lsn above the quorum flush ${formatLsn(quorumFlush)} (flushes ${flushes.map(formatLsn).join(",")})`)
      return
    }
    this.commitByTerm.set(term, commitLsn)
    const history = this.historyByTerm.get(term)!
    if (commitLsn <= this.maxCommitLsn) {
      // A lower term committing late (rare): what it commits must be what is committed there.
      if (term < this.latestTerm) {
        const start = this.timelineStartLsn
        this.checkOwned(history, start, this.committed.read(start, commitLsn - start), compute, term, `term ${term}'s late commit over the committed log`, "commit-durability")
      }
      return
    }
    for (let lsn = Math.max(this.maxCommitLsn, this.timelineStartLsn); lsn < commitLsn;) {
      const owner = ownerOf(history, lsn)
      const end = Math.min(commitLsn, owner.endLsn)
      const bytes = this.imageOf(owner.term).read(lsn, end - lsn)
      if (bytes.byteLength < end - lsn) {
        this.violation("commit-durability", compute, term, lsn + bytes.byteLength, `committed ${formatLsn(end)}, but term ${owner.term} never sent WAL there`)
        return
      }
      this.committed.write(lsn, bytes, bytes.byteLength)
      lsn = end
    }
    this.maxCommitLsn = commitLsn
    if (this.livenessStarted) this.commitsAfterLiveness++
    this.checkConsumedUpTo(commitLsn)
  }

  /** `bytes` at `startLsn` must equal what the owning terms of `history` sent there. */
  private checkOwned(history: TermHistory, startLsn: number, bytes: Uint8Array, who: string, term: number, what: string, invariant = "log-matching"): boolean {
    for (let lsn = startLsn; lsn < startLsn + bytes.byteLength;) {
      const owner = ownerOf(history, lsn)
      const end = Math.min(startLsn + bytes.byteLength, owner.endLsn)
      const image = this.sentByTerm.get(owner.term)
      if (image !== undefined) {
        const expected = image.read(lsn, end - lsn)
        const found = bytes.subarray(lsn - startLsn, lsn - startLsn + expected.byteLength)
        const differs = firstByteDifference(found, expected)
        if (differs !== undefined) {
          this.violation(invariant, who, term, lsn + differs, `${what}: WAL differs from what term ${owner.term} wrote there`)
          return false
        }
      }
      lsn = end
    }
    return true
  }

  /** A consumer made `lsn` durable (remote_consistent_lsn): it never goes back, even across restarts. */
  consumerPersisted(who: string, lsn: number): void {
    const before = this.consumerPersistedLsn.get(who) ?? 0
    if (lsn < before) this.violation("remote-consistent-monotonic", who, undefined, lsn, `remote_consistent_lsn went back from ${formatLsn(before)}`)
    if (lsn > this.maxCommitLsn) this.violation("consumer-wal-stable", who, undefined, lsn, `persisted WAL up to ${formatLsn(lsn)}, past every commit_lsn sent`)
    this.consumerPersistedLsn.set(who, Math.max(before, lsn))
  }

  /** A consumer (pageserver, replica) received WAL: it must be committed and never change. */
  consumerReceived(who: string, lsn: number, bytes: Uint8Array): void {
    if (bytes.byteLength === 0) return
    this.consumedBytes += bytes.byteLength
    // Every commit_lsn a safekeeper knows came from a proposer, through this checker first.
    if (lsn + bytes.byteLength > this.maxCommitLsn) {
      this.violation("consumer-wal-stable", who, undefined, this.maxCommitLsn, `a consumer received WAL up to ${formatLsn(lsn + bytes.byteLength)}, past every commit_lsn sent`)
    }
    this.consumed.push({ who, lsn, bytes: bytes.slice() })
    this.checkConsumedUpTo(this.maxCommitLsn)
  }

  private checkConsumedUpTo(commitLsn: number): void {
    let kept = 0
    for (const item of this.consumed) {
      const end = item.lsn + item.bytes.byteLength
      if (end > commitLsn) {
        this.consumed[kept++] = item
        continue
      }
      const expected = this.committed.read(item.lsn, item.bytes.byteLength)
      const differs = firstByteDifference(item.bytes, expected)
      if (differs !== undefined || expected.byteLength < item.bytes.byteLength) {
        this.violation("consumer-wal-stable", item.who, undefined, item.lsn + (differs ?? expected.byteLength), "a consumer received WAL that differs from the committed log")
      }
    }
    this.consumed.length = kept
  }

  /** After a crash: durable votes, a durable term that never decreases, acknowledged WAL on disk. */
  onSafekeeperCrash(node: string): void {
    const address = this.addressOf(node)
    if (this.maxCommitLsn > this.timelineStartLsn) this.marks.add("sk-crash-after-commit")
    const granted = this.grantedTerm.get(address) ?? 0
    const state = this.readControlFile(node)
    if (state === "unreadable") return
    if (state === undefined) {
      if (granted > 0 && !this.wiped.has(address)) this.violation("durable-vote", node, granted, undefined, "granted a vote, but its control file is gone after a crash")
      return
    }
    const term = state.acceptorState.term
    if (!this.wiped.has(address) && term < granted) this.violation("durable-vote", node, granted, undefined, `durable term ${term} after a crash, below the vote it granted`)
    const before = this.durableTerm.get(address) ?? 0
    if (term < before) this.violation("durable-vote", node, term, undefined, `durable term went back from ${before}`)
    this.durableTerm.set(address, Math.max(before, term))
    // The persisted commit_lsn never goes back (a restart must not lose what it had persisted).
    const commitBefore = this.durableCommit.get(address) ?? 0
    if (!this.wiped.has(address) && state.commitLsn < commitBefore) {
      this.violation("commit-monotonic", node, term, state.commitLsn, `persisted commit_lsn went back from ${formatLsn(commitBefore)}`)
    }
    this.durableCommit.set(address, Math.max(commitBefore, state.commitLsn))
    const acked = this.acked.get(address)
    const history = acked === undefined ? undefined : this.historyByTerm.get(acked.term)
    if (acked !== undefined && history !== undefined) {
      const start = Math.max(this.timelineStartLsn, state.localStartLsn)
      const problem = this.compareDisk(node, start, acked.flushLsn, history, acked.term, "ack-after-fsync", "acknowledged as flushed")
      if (problem) this.marks.add("ack-check-failed")
      else if (acked.flushLsn > start) this.marks.add("acked-wal-survived-crash")
    }
  }

  private readControlFile(node: string) {
    const bytes = this.world.disk(node).readFileNow(`${this.options.timelineDir}/safekeeper.control`)
    if (bytes === undefined) return undefined
    const decoded = decodeControlFile(bytes)
    if (Result.isFailure(decoded)) {
      this.violation("durable-vote", node, undefined, undefined, `control file unreadable after a crash: ${decoded.failure.message}`)
      return "unreadable" as const
    }
    return decoded.success
  }

  /**
   * The node's durable WAL over [fromLsn, toLsn) against what the owning terms of `history`
   * sent; true when a violation was reported.
   */
  private compareDisk(node: string, fromLsn: number, toLsn: number, history: TermHistory, term: number, invariant: string, what: string): boolean {
    const disk = this.world.disk(node)
    const segmentBytes = this.options.segmentSizeBytes
    for (let lsn = fromLsn; lsn < toLsn;) {
      const segmentNo = segmentNoOf(lsn, segmentBytes)
      const name = segmentFileName(1, segmentNo, segmentBytes)
      const file = disk.readFileNow(`${this.options.timelineDir}/${name}`) ?? disk.readFileNow(`${this.options.timelineDir}/${name}.partial`)
      if (file === undefined) {
        this.violation(invariant, node, term, lsn, `segment ${name} with WAL ${what} up to ${formatLsn(toLsn)} is missing from disk`)
        return true
      }
      const end = Math.min(toLsn, segmentStartLsn(segmentNo + 1, segmentBytes))
      const offset = lsn - segmentStartLsn(segmentNo, segmentBytes)
      const found = file.subarray(offset, offset + (end - lsn))
      if (found.byteLength < end - lsn) {
        this.violation(invariant, node, term, lsn + found.byteLength, `WAL ${what} up to ${formatLsn(toLsn)} is not on disk`)
        return true
      }
      if (!this.checkOwned(history, lsn, found, node, term, `WAL ${what} on disk`, invariant)) return true
      lsn = end
    }
    return false
  }

  /**
   * The end of the run: crash every safekeeper (the world has done so); each disk must hold the
   * committed WAL it reported flushed, byte for byte, and its WAL read through its own term
   * history must be what the owning terms wrote (log matching across safekeepers).
   */
  finalDiskChecks(): void {
    for (const { node, address } of this.options.safekeepers) {
      if (this.wiped.has(address)) continue
      const state = this.readControlFile(node)
      if (state === undefined || state === "unreadable") {
        if (this.maxCommitLsn > this.timelineStartLsn && this.flushInLatestTerm(node) > this.timelineStartLsn) {
          this.violation("commit-durability", node, undefined, undefined, "no control file after the final crash, though it flushed committed WAL")
        }
        continue
      }
      const reached = Math.min(this.flushInLatestTerm(node), this.maxCommitLsn)
      const start = Math.max(this.timelineStartLsn, state.localStartLsn)
      if (reached > start) {
        const committedHistory = this.historyByTerm.get(this.latestTerm)
        if (committedHistory !== undefined && this.compareDisk(node, start, reached, committedHistory, this.latestTerm, "commit-durability", "committed")) continue
      }
      const history = state.acceptorState.termHistory
      const lastLogTerm = history.length === 0 ? 0 : history[history.length - 1]!.term
      const flushed = this.flushByTerm.get(lastLogTerm)?.get(address) ?? 0
      if (history.length > 0 && flushed > start) this.compareDisk(node, start, flushed, history, lastLogTerm, "log-matching", `flushed in term ${lastLogTerm}`)
    }
  }

  /** What each consumer received beyond the final commit (never committed by the end). */
  unsettledConsumed(): number {
    return this.consumed.length
  }

  caughtUp(nodes: ReadonlyArray<string>, sinceCommit: number): boolean {
    if (this.maxCommitLsn <= sinceCommit) return false
    return nodes.every((node) => this.flushInLatestTerm(node) >= this.maxCommitLsn)
  }
}

/** The term that wrote `lsn` according to `history`, and where its stretch ends. */
export function ownerOf(history: TermHistory, lsn: number): { readonly term: number; readonly endLsn: number } {
  let index = 0
  for (let i = 0; i < history.length; i++) if (history[i]!.lsn <= lsn) index = i
  return { term: history[index]!.term, endLsn: history[index + 1]?.lsn ?? Number.MAX_SAFE_INTEGER }
}
