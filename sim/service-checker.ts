import { Effect, Layer, Result } from "effect"
import { decodeControlFile } from "../core/acceptor/control-file.js"
import type { PersistedState, TermHistory } from "../core/acceptor/state.js"
import { parsePartialObjectName } from "../core/timeline/remote-layout.js"
import { firstByteDifference } from "../core/bytes.js"
import { SafekeeperTransport, type SafekeeperLink } from "../core/proposer/transport.js"
import type { AcceptorMessage, ProposerMessage } from "../core/protocol/consensus.js"
import type { SwitchRecord } from "../core/proposer/wal-source.js"
import { formatLsn, parseSegmentFileName, segmentFileName, segmentNoOf, segmentOffsetOf, segmentStartLsn } from "../core/wal/lsn.js"
import { PagedContent } from "./disk-content.js"
import type { Incarnation } from "./kernel.js"
import type { SimObjectStore } from "./object-store.js"
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
 * - `consumer-wal-stable`: every WAL byte a consumer received is committed WAL, unchanged;
 * - `backup-matches-log` (item 8): every full segment in object storage is committed WAL, byte
 *   for byte; a partial object is exactly its flush_lsn long and holds what the terms of its
 *   last_log_term's history wrote, never more than they sent;
 * - `backup-lsn-durable`: after a crash, every segment below the persisted backup_lsn is in
 *   object storage;
 * - `removed-before-backup`: a segment gone from a safekeeper's disk below its persisted
 *   commit_lsn (WAL removal, eviction) is in object storage whole;
 * - XLOG_SWITCH (Neon #11092), marks only: a switched segment in object storage whole with
 *   zeros after the switch record, a persisted backup_lsn past its end, and its removal;
 * - `restore-sees-committed-log`: the partial a restore picks for the last segment (the newest
 *   by its name's term, flush and commit, as `sk wal fetch` does) agrees with the committed log.
 */
export interface ServiceCheckerOptions {
  /** Safekeeper node names, and the address computes reach each at. */
  readonly safekeepers: ReadonlyArray<{ readonly node: string; readonly address: string }>
  readonly timelineDir: string
  readonly segmentSizeBytes: number
  /** The world's object store and the timeline's prefix in it, when the run offloads WAL. */
  readonly objectStore?: SimObjectStore
  readonly objectPrefix?: string
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
  /** XLOG_SWITCH records the computes generated; only those that end up committed count. */
  private readonly switches: SwitchRecord[] = []
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

  /** A compute generated an XLOG_SWITCH (it may never be sent, or be truncated away by a new term). */
  noteSwitch(record: SwitchRecord): void {
    this.switches.push(record)
  }

  /** The noted switches that are in the committed log, byte for byte, with their padding committed too. */
  private committedSwitches(): SwitchRecord[] {
    return this.switches.filter((record) => {
      if (record.startLsn < this.timelineStartLsn || record.nextLsn > this.maxCommitLsn) return false
      const found = this.committed.read(record.startLsn, record.bytes.byteLength)
      return found.byteLength === record.bytes.byteLength && firstByteDifference(found, record.bytes) === undefined
    })
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
    this.checkBackupLsn(node, state)
    const acked = this.acked.get(address)
    const history = acked === undefined ? undefined : this.historyByTerm.get(acked.term)
    if (acked !== undefined && history !== undefined) {
      const start = Math.max(this.timelineStartLsn, state.localStartLsn)
      const problem = this.compareDisk(node, start, acked.flushLsn, history, acked.term, "ack-after-fsync", "acknowledged as flushed", state)
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
  private compareDisk(node: string, fromLsn: number, toLsn: number, history: TermHistory, term: number, invariant: string, what: string, state: PersistedState): boolean {
    const disk = this.world.disk(node)
    const segmentBytes = this.options.segmentSizeBytes
    for (let lsn = fromLsn; lsn < toLsn;) {
      const segmentNo = segmentNoOf(lsn, segmentBytes)
      const name = segmentFileName(1, segmentNo, segmentBytes)
      const file = disk.readFileNow(`${this.options.timelineDir}/${name}`) ?? disk.readFileNow(`${this.options.timelineDir}/${name}.partial`) ??
        this.offloadedSegment(node, segmentNo, state, term)
      if (file === undefined) {
        this.violation(invariant, node, term, lsn, `segment ${name} with WAL ${what} up to ${formatLsn(toLsn)} is missing from disk`)
        return true
      }
      if (file === "violated") return true
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
   * A segment that is not on the node's disk but may rightly be elsewhere: below the persisted
   * commit_lsn's segment WAL removal may have taken it, and then object storage must hold it
   * whole; an evicted timeline's last segment is its uploaded partial. "violated" when the
   * segment was removed without being backed up (reported here).
   */
  private offloadedSegment(node: string, segmentNo: number, state: PersistedState, term: number): Uint8Array | "violated" | undefined {
    const store = this.options.objectStore
    if (store === undefined) return undefined
    const segmentBytes = this.options.segmentSizeBytes
    const name = segmentFileName(1, segmentNo, segmentBytes)
    const offloadedAt = state.evictionState._tag === "Offloaded" ? state.evictionState.flushLsn : undefined
    if (offloadedAt !== undefined && segmentNo === segmentNoOf(offloadedAt, segmentBytes)) {
      const uploaded = state.partialBackup.segments.find((segment) => segment.status === "Uploaded")
      const object = uploaded === undefined ? undefined : store.object(`${this.options.objectPrefix}/${uploaded.name}`)
      if (object === undefined) {
        this.violation("removed-before-backup", node, term, offloadedAt, `evicted at ${formatLsn(offloadedAt)}, but its uploaded partial ${uploaded?.name ?? "(none recorded)"} is not in object storage`)
        return "violated"
      }
      this.marks.add("checked-evicted-wal")
      const padded = new Uint8Array(segmentBytes)
      padded.set(object.subarray(0, segmentBytes))
      return padded
    }
    if (segmentNo >= segmentNoOf(offloadedAt ?? state.commitLsn, segmentBytes)) return undefined
    const object = store.object(`${this.options.objectPrefix}/${name}`)
    if (object === undefined) {
      this.violation("removed-before-backup", node, term, segmentStartLsn(segmentNo, segmentBytes), `segment ${name} is gone from disk but not in object storage`)
      return "violated"
    }
    this.marks.add("checked-removed-wal")
    // Removal (or eviction) still works past a segment an XLOG_SWITCH ended (Neon #11092).
    const segmentEnd = segmentStartLsn(segmentNo + 1, segmentBytes)
    if (this.committedSwitches().some((record) => record.nextLsn === segmentEnd)) {
      this.marks.add(offloadedAt === undefined ? "removed-switched-segment-checked" : "evicted-switched-segment-checked")
    }
    return object
  }

  /**
   * backup_lsn claims every segment below it is in object storage whole: the control file may
   * only say so once the uploads are durable (a lost upload, or a crash before it, must not
   * let WAL removal or eviction drop the only local copy).
   */
  private checkBackupLsn(node: string, state: PersistedState): void {
    const store = this.options.objectStore
    // A safekeeper may hear a peer's backup_lsn (broker) before its own first ProposerElected.
    const startLsn = Math.max(state.timelineStartLsn, this.timelineStartLsn)
    if (store === undefined || state.backupLsn <= startLsn) return
    const segmentBytes = this.options.segmentSizeBytes
    for (let segmentNo = segmentNoOf(startLsn, segmentBytes); segmentNo < segmentNoOf(state.backupLsn, segmentBytes); segmentNo++) {
      const name = segmentFileName(1, segmentNo, segmentBytes)
      if (store.object(`${this.options.objectPrefix}/${name}`) === undefined) {
        this.violation("backup-lsn-durable", node, state.acceptorState.term, state.backupLsn, `persisted backup_lsn ${formatLsn(state.backupLsn)} is past segment ${name}, which is not in object storage`)
        return
      }
    }
    this.marks.add("backup-lsn-checked")
    // Neon #11092: backup_lsn stalled at a segment ended by XLOG_SWITCH.
    if (this.committedSwitches().some((record) => record.nextLsn > startLsn && record.nextLsn <= state.backupLsn)) this.marks.add("backup-lsn-crossed-switch")
  }

  /**
   * Object storage against the committed log (DESIGN.md §6 item 8), at the end of the run:
   * full segments are committed WAL byte for byte; partials are exactly as long as their
   * flush_lsn says and hold what their last_log_term's history wrote; the partial a restore
   * picks for the newest segment agrees with the committed log up to its commit_lsn.
   */
  finalObjectStoreChecks(): void {
    const store = this.options.objectStore
    if (store === undefined) return
    const segmentBytes = this.options.segmentSizeBytes
    const prefix = `${this.options.objectPrefix}/`
    const partials: Array<{ readonly fields: NonNullable<ReturnType<typeof parsePartialObjectName>>; readonly bytes: Uint8Array; readonly name: string }> = []
    const switchEnds = new Map(this.committedSwitches().map((record) => [record.nextLsn as number, record]))
    for (const path of store.paths(prefix)) {
      const name = path.slice(prefix.length)
      const bytes = store.object(path)!
      const fields = parsePartialObjectName(name, segmentBytes)
      if (fields !== undefined) {
        partials.push({ fields, bytes, name })
        continue
      }
      const parsed = parseSegmentFileName(name, segmentBytes)
      const segmentNo = parsed === undefined || parsed.partial || parsed.timelineId !== 1 ? undefined : parsed.segmentNo
      if (segmentNo === undefined) {
        this.violation("backup-matches-log", "object-store", undefined, undefined, `unexpected object ${path}`)
        continue
      }
      const start = segmentStartLsn(segmentNo, segmentBytes)
      const end = start + segmentBytes
      if (bytes.byteLength !== segmentBytes) {
        this.violation("backup-matches-log", "object-store", undefined, start, `segment object ${name} is ${bytes.byteLength} bytes, not ${segmentBytes}`)
        continue
      }
      if (end > this.maxCommitLsn) {
        this.violation("backup-matches-log", "object-store", undefined, end, `segment ${name} uploaded whole, but commit_lsn never passed ${formatLsn(this.maxCommitLsn)}`)
        continue
      }
      const from = Math.max(start, this.timelineStartLsn)
      const expected = this.committed.read(from, end - from)
      const found = bytes.subarray(from - start)
      const differs = firstByteDifference(found, expected)
      if (differs !== undefined || expected.byteLength < end - from) {
        this.violation("backup-matches-log", "object-store", undefined, from + (differs ?? expected.byteLength), `segment object ${name} differs from the committed log`)
        continue
      }
      this.marks.add("backup-segment-checked")
      // A segment an XLOG_SWITCH ended: uploaded whole, the padding after the record all zeros.
      const switched = switchEnds.get(end)
      if (switched !== undefined) {
        const paddingFrom = Math.max(start, switched.endLsn)
        const nonZero = bytes.subarray(paddingFrom - start).findIndex((b) => b !== 0)
        if (nonZero >= 0) {
          this.violation("backup-matches-log", "object-store", undefined, paddingFrom + nonZero, `segment object ${name} holds non-zero bytes in the padding after the XLOG_SWITCH at ${formatLsn(switched.startLsn)}`)
          continue
        }
        this.marks.add("xlog-switch-backed-up")
      }
    }
    // Partials a safekeeper's control file records as Uploaded: an upload that failed (a lost
    // acknowledgement, a term change while it streamed) leaves an InProgress object until its
    // owner deletes it, and only its committed part is promised.
    const recorded = new Set<string>()
    for (const { node, address } of this.options.safekeepers) {
      if (this.wiped.has(address)) continue
      const state = this.readControlFile(node)
      if (state === undefined || state === "unreadable") continue
      for (const segment of state.partialBackup.segments) if (segment.status === "Uploaded") recorded.add(segment.name)
    }
    for (const { fields, bytes, name } of partials) {
      const start = segmentStartLsn(fields.segmentNo, segmentBytes)
      const length = segmentOffsetOf(fields.flushLsn, segmentBytes)
      if (segmentNoOf(fields.flushLsn, segmentBytes) !== fields.segmentNo || bytes.byteLength !== length || fields.commitLsn > fields.flushLsn) {
        this.violation("backup-matches-log", "object-store", fields.lastLogTerm, fields.flushLsn, `partial ${name} is ${bytes.byteLength} bytes; its name says flush ${formatLsn(fields.flushLsn)}, commit ${formatLsn(fields.commitLsn)}`)
        continue
      }
      const committedFrom = Math.max(start, this.timelineStartLsn)
      const committedTo = Math.min(fields.commitLsn, this.maxCommitLsn)
      if (committedTo > committedFrom) {
        const expected = this.committed.read(committedFrom, committedTo - committedFrom)
        const differs = firstByteDifference(bytes.subarray(committedFrom - start, committedTo - start), expected)
        if (differs !== undefined) {
          this.violation("backup-matches-log", "object-store", fields.lastLogTerm, committedFrom + differs, `partial ${name} differs from the committed log below its commit_lsn`)
          continue
        }
      }
      if (!recorded.has(name)) {
        this.marks.add("partial-leftover-checked")
        continue
      }
      const history = this.historyByTerm.get(fields.lastLogTerm)
      // last_log_term is a term some proposer was elected in (every term history comes from a ProposerElected).
      if (history === undefined) {
        this.violation("backup-matches-log", "object-store", fields.lastLogTerm, fields.flushLsn, `partial ${name} is named by term ${fields.lastLogTerm}, in which no proposer was elected`)
        continue
      }
      const from = Math.max(start, this.timelineStartLsn)
      if (!this.checkOwned(history, from, bytes.subarray(from - start), `sk${fields.nodeId}`, fields.lastLogTerm, `partial ${name}`, "backup-matches-log")) continue
      // Never more than the owning terms sent: a partial claiming unflushed WAL would hold zeros there.
      const owner = ownerOf(history, fields.flushLsn - 1)
      const sentEnd = this.sentEndOf(owner.term)
      if (sentEnd !== undefined && fields.flushLsn > sentEnd) {
        this.violation("backup-matches-log", "object-store", fields.lastLogTerm, fields.flushLsn, `partial ${name} claims WAL up to ${formatLsn(fields.flushLsn)}; term ${owner.term} sent only up to ${formatLsn(sentEnd)}`)
        continue
      }
      this.marks.add("partial-object-checked")
    }
    // What a restore (sk wal fetch) would take for the newest segment with partials.
    const newestSegment = Math.max(-1, ...partials.map((p) => p.fields.segmentNo))
    const candidates = partials.filter((p) => p.fields.segmentNo === newestSegment)
    candidates.sort((a, b) => b.fields.lastLogTerm - a.fields.lastLogTerm || b.fields.flushLsn - a.fields.flushLsn || b.fields.commitLsn - a.fields.commitLsn)
    const picked = candidates[0]
    if (picked !== undefined) {
      const start = Math.max(segmentStartLsn(newestSegment, segmentBytes), this.timelineStartLsn)
      const end = Math.min(picked.fields.commitLsn, this.maxCommitLsn)
      if (end > start) {
        const expected = this.committed.read(start, end - start)
        const found = picked.bytes.subarray(start - segmentStartLsn(newestSegment, segmentBytes), end - segmentStartLsn(newestSegment, segmentBytes))
        const differs = firstByteDifference(found, expected)
        if (differs !== undefined) {
          this.violation("restore-sees-committed-log", "object-store", picked.fields.lastLogTerm, start + differs, `the partial a restore picks (${picked.name}) differs from the committed log`)
        } else {
          this.marks.add("restore-partial-checked")
        }
      }
    }
  }

  /** The end of what a term's proposer sent (undefined: nothing seen). */
  private sentEndOf(term: number): number | undefined {
    return this.sentByTerm.get(term)?.sizeBytes
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
        if (committedHistory !== undefined && this.compareDisk(node, start, reached, committedHistory, this.latestTerm, "commit-durability", "committed", state)) continue
      }
      const history = state.acceptorState.termHistory
      const lastLogTerm = history.length === 0 ? 0 : history[history.length - 1]!.term
      const flushed = this.flushByTerm.get(lastLogTerm)?.get(address) ?? 0
      if (history.length > 0 && flushed > start) this.compareDisk(node, start, flushed, history, lastLogTerm, "log-matching", `flushed in term ${lastLogTerm}`, state)
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
