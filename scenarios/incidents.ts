import seedrandom from "seedrandom"
import type { Scenario, ScenarioResult, ScenarioRunOptions } from "./scenario.js"
import { type FaultAction, type OffloadPlan, runService, type ServicePlan } from "./service.js"

/**
 * One scenario per real incident of Neon's safekeeper (reference §16) that applies to what this
 * service has today (backup, removal and eviction, but no pull_timeline and no membership
 * changes yet; each offload incident says what part of it cannot be shown). Each writes the
 * fault plan that provoked the incident by hand; the seed only jitters times and targets, so a
 * sweep of a named scenario explores the neighbourhood of the incident. All checks of the swarm
 * scenario apply (sim/service-checker.ts), plus the liveness phase.
 */
interface IncidentSpec {
  readonly name: string
  readonly description: string
  readonly expectedMarks: ReadonlyArray<string>
  readonly plan: (jitter: Jitter) => Omit<ServicePlan, "config"> & { readonly config?: string }
  /**
   * Marks read off the run's trace (per-node sequences that no global mark can show: "the node
   * whose disk filled removed WAL afterwards"). The run then records its trace in memory; the
   * hash is the same either way (sim/trace.ts hashes every line whether kept or not).
   */
  readonly traceMarks?: (events: ReadonlyArray<TraceEvent>) => Iterable<string>
}

class Jitter {
  private readonly random: seedrandom.PRNG
  constructor(seed: number, name: string) {
    this.random = seedrandom.alea(`${seed}/${name}`)
  }
  float(): number {
    return this.random()
  }
  between(low: number, high: number): number {
    return low + Math.floor(this.random() * (high - low + 1))
  }
}

const BASE = {
  safekeeperCount: 3,
  computeCount: 1,
  faultPhaseUs: 3_000_000,
  livenessPhaseUs: 6_000_000,
  crashOnOperationProbability: 0,
  clockSkewUsMax: 1_000,
  chunkDelayUs: [50, 1_000] as const,
  fsyncLatencyUs: [100, 1_000] as const,
  rateBytesPerSecond: 512 * 1024,
  messageBytes: 200,
  syncFirst: true,
  segmentSizeBytes: 1024 * 1024
}

/** `count` actions made by `make`, at jittered times within [fromUs, toUs]. */
function spread(j: Jitter, count: number, fromUs: number, toUs: number, make: (atUs: number) => FaultAction): FaultAction[] {
  return Array.from({ length: count }, () => make(j.between(fromUs, toUs)))
}

/** One trace line ("<µs> <node>#<life> <event>", or "<µs> nemesis <fault>"), split for trace marks. */
export interface TraceEvent {
  readonly atUs: number
  /** "sk1", "compute1", "pageserver", or "nemesis". */
  readonly node: string
  /** The node's incarnation; undefined for the nemesis. */
  readonly life: number | undefined
  /** The rest of the line: "info wal removed timeline=...", "world crash (nemesis)", "wipe sk1". */
  readonly text: string
}

export function parseTrace(lines: ReadonlyArray<string>): TraceEvent[] {
  const events: TraceEvent[] = []
  for (const line of lines) {
    if (line.startsWith("#")) continue
    const first = line.indexOf(" ")
    const second = line.indexOf(" ", first + 1)
    if (first <= 0 || second <= first) continue
    const who = line.slice(first + 1, second)
    const hash = who.indexOf("#")
    events.push({
      atUs: Number(line.slice(0, first)),
      node: hash < 0 ? who : who.slice(0, hash),
      life: hash < 0 ? undefined : Number(who.slice(hash + 1)),
      text: line.slice(second + 1)
    })
  }
  return events
}

/** A log event of the code under test with this message (any level). */
function logged(event: TraceEvent, message: string): boolean {
  const space = event.text.indexOf(" ")
  const rest = event.text.slice(space + 1)
  return space > 0 && event.node !== "nemesis" && (rest === message || rest.startsWith(`${message} `))
}

/** A fault the nemesis applied: "<kind> <nodes> [detail]"; the nodes it named. */
function nemesis(event: TraceEvent, kind: string): ReadonlyArray<string> | undefined {
  if (event.node !== "nemesis" || !event.text.startsWith(`${kind} `)) return undefined
  return event.text.slice(kind.length + 1).split(" ")[0]!.split(",").filter((node) => node !== "")
}

/** When the liveness phase began (faults stopped); Infinity if the trace never got there. */
function livenessStartUs(events: ReadonlyArray<TraceEvent>): number {
  return events.find((event) => event.node === "nemesis" && event.text.startsWith("liveness-phase"))?.atUs ?? Number.POSITIVE_INFINITY
}

/**
 * Object storage and the broker for the offload incidents: a store with latency and a
 * bounded upload rate but no errors of its own, so what each scenario shows comes from the
 * faults its plan names; a prompt broker (the offloader election settles within a tick).
 */
function offloadPlan(j: Jitter, overrides: Partial<OffloadPlan> = {}): OffloadPlan {
  return {
    storeFaults: { requestLatencyUs: [1_000, 20_000], uploadBytesPerSecond: 8 * 1024 * 1024, transientErrorProbability: 0, lostAckProbability: 0, requestTimeoutUs: 500_000 },
    brokerFaults: { publishLatencyUs: [200, 2_000], deliveryLagUs: [200, 5_000], dropProbability: 0, duplicateProbability: 0, timeoutUs: 1_000_000 },
    partialBackupTimeoutUs: j.between(200_000, 600_000),
    eviction: false,
    peerRecovery: false,
    ...overrides
  }
}

/**
 * The offloader is picked as caughtup[timeline_id as u128 % n] sorted by id (core/timeline/
 * offloader.ts); for this timeline id that is index 0 with 2 or 3 candidates: the lowest id up.
 * A pick in [0, 1/3) names it while all three are up (service.ts picks among nodes that are up).
 */
const OFFLOADER_PICK = 0.1

const INCIDENTS: ReadonlyArray<IncidentSpec> = [
  {
    // #9259 (fix #9436): appends not yet flushed when the walproposer disconnects made
    // TIMELINE_STATUS's flush_lsn lower than the VoteResponse's, and the compute panicked. Here:
    // the compute's connections break in the middle of streaming, again and again, while
    // sync-safekeepers and new elections read flush positions right after.
    name: "incident-9259-unflushed-at-disconnect",
    description: "Neon #9259: connections break mid-stream while appends are unflushed; sync-safekeepers and elections right after must see consistent flush positions",
    expectedMarks: ["re-election", "sync-safekeepers-synced", "commit-after-faults"],
    plan: (j) => ({
      ...BASE,
      rateBytesPerSecond: 1024 * 1024,
      actions: [
        ...spread(j, 10, 200_000, 2_800_000, (atUs) => ({ kind: "break", atUs, pickA: 0, pickB: j.float() })),
        ...spread(j, 3, 300_000, 2_800_000, (atUs) => ({ kind: "crash", atUs, role: "compute", pick: 0, restartAfterUs: j.between(5_000, 50_000) }))
      ]
    })
  },
  {
    // #9434 (fix #9442): "attempt to truncate committed data: start_streaming_at=0/0" after a
    // sync-safekeepers election at 0/0. Here: a brand-new timeline, computes that run
    // sync-safekeepers first and crash right after it, competing with each other.
    name: "incident-9434-sync-at-0-0",
    description: "Neon #9434: sync-safekeepers elected at 0/0 on a new timeline, then competing computes; no election may truncate committed data",
    expectedMarks: ["sync-safekeepers-0/0", "re-election", "commit-after-faults"],
    plan: (j) => ({
      ...BASE,
      computeCount: 2,
      actions: [
        { kind: "start-compute", atUs: j.between(0, 50_000), compute: 1 },
        ...spread(j, 4, 20_000, 1_500_000, (atUs) => ({ kind: "crash", atUs, role: "compute", pick: j.float(), restartAfterUs: j.between(5_000, 100_000) }))
      ]
    })
  },
  {
    // #3207 (#3069): commit_lsn went backwards with two live connections of one walproposer in
    // one term. Here: breaks and one-way partitions between the compute and one safekeeper, so
    // an old connection is still alive (its bytes held) while the proposer opens a new one.
    name: "incident-3207-two-connections-one-term",
    description: "Neon #3207: an old and a new connection of one walproposer live at once (one-way partitions, breaks); commit_lsn must never go back",
    expectedMarks: ["partition-healed", "commit-after-faults"],
    plan: (j) => ({
      ...BASE,
      actions: [
        ...spread(j, 6, 100_000, 2_800_000, (atUs) => ({ kind: "partition", atUs, pickA: 0, pickB: j.float(), withCompute: true, oneWay: true, durationUs: j.between(50_000, 1_200_000) })),
        ...spread(j, 6, 100_000, 2_800_000, (atUs) => ({ kind: "break", atUs, pickA: 0, pickB: j.float() }))
      ]
    })
  },
  {
    // #8212: "write_wal rewrites WAL written before", from interleaved packets of an old and a
    // new connection. Here: clogged connections (bytes held, delivered later in order) while
    // breaks force new connections and competing computes take over terms.
    name: "incident-8212-interleaved-connections",
    description: "Neon #8212: late bytes of an old connection beside a new one (clogs, breaks, competing computes); WAL written before is never rewritten differently",
    expectedMarks: ["clogged", "re-election", "commit-after-faults"],
    plan: (j) => ({
      ...BASE,
      computeCount: 2,
      actions: [
        { kind: "start-compute", atUs: j.between(200_000, 800_000), compute: 1 },
        ...spread(j, 8, 50_000, 2_800_000, (atUs) => ({ kind: "clog", atUs, pickA: j.float(), pickB: j.float(), withCompute: true, durationUs: j.between(5_000, 600_000) })),
        ...spread(j, 6, 50_000, 2_800_000, (atUs) => ({ kind: "break", atUs, pickA: j.float(), pickB: j.float() }))
      ]
    })
  },
  {
    // #9685: a non-atomic truncation could leave garbage above flush_lsn after a failure. Here:
    // competing computes force truncations of uncommitted tails while safekeepers crash between
    // any two disk operations (often in the middle of a truncation).
    name: "incident-9685-truncate-then-crash",
    description: "Neon #9685: truncations of uncommitted tails interrupted by crashes between disk operations; no garbage above flush may ever be served or kept",
    expectedMarks: ["truncated-tail", "crash-between-operations", "commit-after-faults"],
    plan: (j) => ({
      ...BASE,
      computeCount: 3,
      crashOnOperationProbability: 0.002,
      messageBytes: 20_000,
      actions: [
        { kind: "start-compute", atUs: j.between(100_000, 600_000), compute: 1 },
        { kind: "start-compute", atUs: j.between(600_000, 1_200_000), compute: 2 },
        ...spread(j, 4, 100_000, 2_800_000, (atUs) => ({ kind: "partition", atUs, pickA: j.float(), pickB: j.float(), withCompute: true, oneWay: false, durationUs: j.between(20_000, 400_000) }))
      ]
    })
  },
  {
    // #11605: after ENOSPC the safekeeper stayed stuck ("unexpected unflushed data with no open
    // file"). Here: ENOSPC and EIO on writes and fsyncs on two safekeepers in turn; the node must
    // stop (fail-stop), restart from its disk and take part again once the errors end.
    name: "incident-11605-enospc-stuck",
    description: "Neon #11605: ENOSPC and EIO on writes and fsyncs; a safekeeper must fail-stop, recover from its disk and rejoin, never stay stuck",
    expectedMarks: ["disk-error-injected", "fail-stop-after-disk-error", "commit-after-faults"],
    plan: (j) => ({
      ...BASE,
      actions: spread(j, 4, 100_000, 2_500_000, (atUs) => ({
        kind: "disk-errors", atUs, pick: j.float(), durationUs: j.between(100_000, 400_000),
        eioOnFsyncProbability: 0.1, enospcOnWriteProbability: 0.1, eioOnWriteProbability: 0.02
      }))
    })
  },
  {
    // #2569: one hung safekeeper stalled sync-safekeepers (there was no connection timeout).
    // Here: a safekeeper whose traffic is clogged (it accepts but never answers in time) while
    // computes restart and run sync-safekeepers; the quorum of the other two must carry on.
    name: "incident-2569-hung-safekeeper",
    description: "Neon #2569: one safekeeper hangs (clogged both ways) while computes restart and run sync-safekeepers; the other two must carry on",
    expectedMarks: ["clogged", "sync-safekeepers-synced", "commit-after-faults"],
    plan: (j) => {
      const pick = j.float()
      return {
        ...BASE,
        actions: [
          ...spread(j, 3, 100_000, 2_000_000, (atUs) => ({ kind: "clog", atUs, pickA: 0, pickB: pick, withCompute: true, durationUs: 900_000 })),
          ...spread(j, 3, 150_000, 2_500_000, (atUs) => ({ kind: "crash", atUs, role: "compute", pick: 0, restartAfterUs: j.between(5_000, 50_000) }))
        ]
      }
    }
  },
  {
    // #294 / #295 (found with TLA+): the vote must carry the acceptor's epoch and flush_lsn
    // atomically, and a new proposer must stream from the first mismatching record. Here:
    // three competing computes and safekeeper crashes right around elections, with small and
    // large records, so votes race appends and recovery starts mid-record.
    name: "incident-294-vote-races-append",
    description: "Neon #294/#295: votes race appends (competing computes, crashes around elections, records spanning pages); recovery must stream from the first mismatch",
    expectedMarks: ["competing-computes", "vote-refused", "donor-recovery", "commit-after-faults"],
    plan: (j) => ({
      ...BASE,
      computeCount: 3,
      messageBytes: 20_000,
      actions: [
        { kind: "start-compute", atUs: j.between(50_000, 400_000), compute: 1 },
        { kind: "start-compute", atUs: j.between(400_000, 900_000), compute: 2 },
        ...spread(j, 5, 100_000, 2_800_000, (atUs) => ({ kind: "crash", atUs, role: "safekeeper", pick: j.float(), restartAfterUs: j.between(10_000, 200_000) }))
      ]
    })
  },
  {
    // #11092: an XLOG_SWITCH moved write_record_lsn to the next segment while the switched
    // segment's file stayed .partial; the backup could not find the full segment, backup_lsn
    // stalled and disks filled. Here the compute ends a segment with XLOG_SWITCH every few
    // hundred records and sends the switch record and its zero padding in separate chunks (the
    // safekeeper knows the record ends the segment while its file stops short), while the
    // offloader crashes and is cut off from storage; every switched segment must be uploaded
    // whole, byte-equal to the committed log, backup_lsn must cross it, and removal and
    // eviction (an idle period after the faults) must still take it off local disk.
    name: "incident-11092-segment-end-backup",
    description: "Neon #11092: segments ended by XLOG_SWITCH, the switch record and its padding sent apart, while the offloader crashes and is cut off from storage; each switched segment uploaded whole, backup_lsn crosses it, removal and eviction follow",
    expectedMarks: [
      "wal-backup-uploaded", "offloader-handover", "backup-segment-checked", "backup-lsn-checked", "wal-removed", "commit-after-faults",
      "offloader-crashed-after-upload", "backup-resumed-after-offloader-crash",
      "xlog-switch-backed-up", "backup-lsn-crossed-switch", "removed-switched-segment-checked", "timeline-evicted"
    ],
    plan: (j) => ({
      ...BASE,
      faultPhaseUs: 6_500_000,
      rateBytesPerSecond: 1536 * 1024,
      messageBytes: 2_000,
      pageserver: true,
      // About 500 records of 2 kB fill a 1 MiB segment: a switch ends most segments early.
      xlogSwitchEveryRecords: j.between(120, 400),
      xlogSwitchSplitPadding: true,
      offload: offloadPlan(j, { eviction: true }),
      actions: [
        ...spread(j, 3, 800_000, 3_600_000, (atUs) => ({ kind: "crash", atUs, role: "safekeeper", pick: OFFLOADER_PICK, restartAfterUs: j.between(100_000, 600_000) })),
        ...spread(j, 2, 500_000, 3_600_000, (atUs) => ({ kind: "partition-store", atUs, pick: OFFLOADER_PICK, durationUs: j.between(200_000, 900_000) })),
        // Idle long enough for the manager to evict once everything is backed up.
        { kind: "idle", atUs: j.between(4_000_000, 4_200_000), durationUs: j.between(2_000_000, 2_200_000) }
      ]
    }),
    traceMarks: (events) => {
      const marks: string[] = []
      const uploaded = new Set<string>()
      let crashedUploader: { readonly node: string; readonly atUs: number } | undefined
      for (const event of events) {
        if (logged(event, "wal backup segment uploaded")) {
          uploaded.add(event.node)
          if (crashedUploader !== undefined && event.atUs > crashedUploader.atUs) marks.push("backup-resumed-after-offloader-crash")
        }
        const crashed = nemesis(event, "crash")
        if (crashed !== undefined && crashed.some((node) => uploaded.has(node))) {
          marks.push("offloader-crashed-after-upload")
          crashedUploader ??= { node: crashed[0]!, atUs: event.atUs }
        }
      }
      return marks
    }
  },
  {
    // #2432: all safekeepers were replaced one after another; each new one started mid-segment,
    // backup stopped and WAL could be lost. What can be shown today: one disk loss per run
    // (service.ts), of the offloader after it uploaded, then the other two crash in turn; the
    // quorum of survivors must keep committing, the backup must move to a survivor and go on,
    // and the pageserver must get every committed byte. Not shown: a replacement node (no
    // pull_timeline, so a wiped node never holds the timeline again), a second and third loss,
    // and a pageserver served from object storage because no safekeeper has the WAL any more.
    name: "incident-2432-safekeepers-replaced",
    description: "Neon #2432 (the part possible without pull_timeline): the offloader loses its disk after uploading, the others crash in turn; backup moves on, the pageserver gets every committed byte",
    expectedMarks: ["wal-backup-uploaded", "offloader-handover", "disk-loss-survived", "consumer-received-wal", "backup-segment-checked", "commit-after-faults", "offloader-disk-lost", "backup-continued-after-disk-loss"],
    plan: (j) => {
      const wipeAtUs = j.between(1_300_000, 1_800_000)
      return {
        ...BASE,
        faultPhaseUs: 4_000_000,
        rateBytesPerSecond: 1024 * 1024,
        messageBytes: 2_000,
        pageserver: true,
        offload: offloadPlan(j),
        actions: [
          { kind: "wipe", atUs: wipeAtUs, pick: OFFLOADER_PICK, restartAfterUs: j.between(50_000, 300_000) },
          // The survivors crash in turn, never together (a quorum of two must stay).
          { kind: "crash", atUs: wipeAtUs + j.between(600_000, 900_000), role: "safekeeper", pick: 0.5, restartAfterUs: j.between(100_000, 300_000) },
          { kind: "crash", atUs: wipeAtUs + j.between(1_400_000, 1_800_000), role: "safekeeper", pick: 0.9, restartAfterUs: j.between(100_000, 300_000) },
          { kind: "crash-pageserver", atUs: j.between(1_000_000, 3_000_000), restartAfterUs: j.between(200_000, 800_000) }
        ]
      }
    },
    traceMarks: (events) => {
      const marks: string[] = []
      const uploaded = new Set<string>()
      let wiped: string | undefined
      for (const event of events) {
        if (logged(event, "wal backup segment uploaded")) {
          uploaded.add(event.node)
          if (wiped !== undefined && event.node !== wiped) marks.push("backup-continued-after-disk-loss")
        }
        const nodes = nemesis(event, "wipe")
        if (nodes !== undefined && nodes.some((node) => uploaded.has(node))) {
          wiped = nodes[0]
          marks.push("offloader-disk-lost")
        }
      }
      return marks
    }
  },
  {
    // #4101: out of space, WAL removal needed a control-file write first (to persist the
    // horizon) and could not make one: a deadlock, the disk stayed full. Here: one safekeeper's
    // disk holds a few segments only (ENOSPC past it, until the liveness phase grows it) while
    // backup and the pageserver move the horizon on; the full node must free space by removal
    // from what its control file already says, or fail-stop and reboot, never lose data.
    // The full node is the offloader or not, by seed (a non-offloader learns backup_lsn only
    // through the broker, and must persist it before removing).
    name: "incident-4101-full-disk-removal",
    description: "Neon #4101: a safekeeper's disk fills while WAL removal is due; it must free space by removing backed-up segments or fail-stop cleanly, never lose WAL (removal-stuck-on-full-disk marks the deadlock: removal needs a control-file write that does not fit)",
    expectedMarks: ["disk-full-survived", "fail-stop-after-disk-error", "wal-backup-uploaded", "wal-removed", "commit-after-faults", "full-disk-hit", "removed-after-disk-full"],
    plan: (j) => ({
      ...BASE,
      faultPhaseUs: 6_000_000,
      rateBytesPerSecond: 1024 * 1024,
      messageBytes: 2_000,
      pageserver: true,
      offload: offloadPlan(j),
      // Two or three segments (a node must hold the open segment and the next one to go on)
      // and a slack of 400 to 1,200 bytes: room for the control file (about 360 bytes, more
      // with partial-backup entries), and by seed for a second copy or not, so that once full
      // a control-file write (a temporary file beside the old one) may not fit, as in #4101.
      capacityLimit: { pick: j.float() < 0.5 ? OFFLOADER_PICK : 0.5 + j.float() / 2, capacityBytes: j.between(2, 3) * 1024 * 1024 + j.between(400, 1_200) },
      actions: [
        // The pageserver away for a while holds remote_consistent_lsn, so removal falls behind
        // and the disk fills; when it is back the horizon moves, and removal is due.
        { kind: "crash-pageserver", atUs: j.between(800_000, 1_500_000), restartAfterUs: j.between(1_000_000, 2_500_000) },
        ...spread(j, 2, 500_000, 5_500_000, (atUs) => ({ kind: "crash", atUs, role: "safekeeper", pick: j.float(), restartAfterUs: j.between(50_000, 300_000) }))
      ]
    }),
    traceMarks: (events) => {
      const marks: string[] = []
      const liveUs = livenessStartUs(events)
      const full = events.map((event) => nemesis(event, "capacity-limit")).find((nodes) => nodes !== undefined)?.[0]
      let fullAtUs: number | undefined
      let removedByFull = false
      let removedByPeer = false
      for (const event of events) {
        if (event.atUs >= liveUs) break
        if (event.node !== full) {
          if (fullAtUs !== undefined && logged(event, "wal removed")) removedByPeer = true
          continue
        }
        // "disk full" is how a failed write reads in the fatal reason (ENOSPC on a WAL write, or
        // on the manager's control-file save).
        if (fullAtUs === undefined && logged(event, "fatal disk failure: stopping the safekeeper") && /ENOSPC|disk full/.test(event.text)) {
          fullAtUs = event.atUs
          marks.push("full-disk-hit")
        }
        if (fullAtUs !== undefined && logged(event, "wal removed")) {
          removedByFull = true
          marks.push("removed-after-disk-full")
        }
      }
      // #4101 itself: once full, the node never removed anything until the operator grew its
      // disk, though its peers went on removing (their horizon moved; its own persisted one
      // could not, since persisting it needs a control-file write that no longer fits).
      if (fullAtUs !== undefined && !removedByFull && removedByPeer) marks.push("removal-stuck-on-full-disk")
      return marks
    }
  },
  {
    // #9428 / #8335: un-eviction (from the snapshot handler) raced the manager; evict and
    // unevict thrashed. Here: idle periods long enough to evict, ended by computes that push at
    // once, a pageserver that restarts (a replication start) around the same moment, partial
    // uploads on short timeouts, and safekeeper crashes around the end of the idle periods
    // (un-eviction racing a crash). Every evicted or unevicted state must keep the committed WAL.
    name: "incident-9428-eviction-races",
    description: "Neon #9428/#8335: eviction racing a new push, a replication start and a partial upload; un-eviction racing a crash; no committed WAL lost, no thrash left stuck",
    expectedMarks: ["timeline-evicted", "timeline-unevicted", "partial-backup-uploaded", "consumer-received-wal", "commit-after-faults", "checked-evicted-wal", "evicted-then-crashed", "unevicted-after-restart", "unevicted-by-push", "unevicted-by-replication"],
    plan: (j) => {
      const idles = [j.between(600_000, 900_000), j.between(3_400_000, 3_800_000)]
      const idleUs = () => j.between(1_800_000, 2_400_000)
      const actions: FaultAction[] = []
      for (const atUs of idles) {
        const durationUs = idleUs()
        const endUs = atUs + durationUs
        actions.push({ kind: "idle", atUs, durationUs })
        actions.push({ kind: "crash-pageserver", atUs: endUs + j.between(-100_000, 50_000), restartAfterUs: j.between(5_000, 100_000) })
        actions.push({ kind: "crash", atUs: endUs + j.between(-300_000, 100_000), role: "safekeeper", pick: j.float(), restartAfterUs: j.between(20_000, 200_000) })
        actions.push({ kind: "crash", atUs: endUs + j.between(0, 150_000), role: "safekeeper", pick: j.float(), restartAfterUs: j.between(20_000, 200_000) })
      }
      return {
        ...BASE,
        faultPhaseUs: 6_500_000,
        rateBytesPerSecond: 512 * 1024,
        pageserver: true,
        offload: offloadPlan(j, { eviction: true, partialBackupTimeoutUs: j.between(150_000, 300_000) }),
        actions
      }
    },
    traceMarks: (events) => {
      const marks: string[] = []
      /** Per node: the life in which its timeline was last evicted and not unevicted since. */
      const evictedIn = new Map<string, number>()
      /** Per node: who opened its latest connection (the likely cause of an un-eviction). */
      const lastConnection = new Map<string, { readonly life: number; readonly application: string }>()
      for (const event of events) {
        if (event.life === undefined) continue
        if (logged(event, "connection started")) {
          const application = /application_name=(\S+)/.exec(event.text)?.[1]
          if (application !== undefined) lastConnection.set(event.node, { life: event.life, application })
        } else if (logged(event, "timeline evicted")) evictedIn.set(event.node, event.life)
        else if (logged(event, "timeline unevicted")) {
          const life = evictedIn.get(event.node)
          if (life !== undefined && event.life > life) marks.push("unevicted-after-restart")
          evictedIn.delete(event.node)
          const cause = lastConnection.get(event.node)
          if (cause?.life === event.life && cause.application === "walproposer") marks.push("unevicted-by-push")
          if (cause?.life === event.life && cause.application === "pageserver") marks.push("unevicted-by-replication")
        } else if (event.text.startsWith("world crash") && evictedIn.get(event.node) === event.life) marks.push("evicted-then-crashed")
      }
      return marks
    }
  }
]

export function makeIncidentScenarios(): Scenario[] {
  return INCIDENTS.map((incident) => {
    const planOf = (seed: number): ServicePlan => {
      const plan = incident.plan(new Jitter(seed, incident.name))
      const actions = [...plan.actions].sort((a, b) => a.atUs - b.atUs)
      return { ...plan, actions, config: plan.config ?? `incident ${incident.name}` }
    }
    const traceMarks = incident.traceMarks
    const runPlan = (seed: number, plan: ServicePlan, options: ScenarioRunOptions): ScenarioResult => {
      if (traceMarks === undefined) return runService(incident.name, seed, plan, options)
      const result = runService(incident.name, seed, plan, { ...options, recordTrace: true })
      const marks = [...new Set([...result.marks, ...traceMarks(parseTrace(result.traceLines))])].sort()
      if (options.recordTrace) return { ...result, marks }
      // The caller did not ask for the trace: drop what recording it added.
      const { timeline: _timeline, ...rest } = result
      return { ...rest, marks, traceLines: [] }
    }
    return {
      name: incident.name,
      description: incident.description,
      expectedMarks: incident.expectedMarks,
      run: (seed, options) => runPlan(seed, planOf(seed), options),
      planned: { planOf, runPlan }
    }
  })
}
