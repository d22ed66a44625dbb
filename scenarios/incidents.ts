import seedrandom from "seedrandom"
import type { Scenario, ScenarioRunOptions } from "./scenario.js"
import { type FaultAction, runService, type ServicePlan } from "./service.js"

/**
 * One scenario per real incident of Neon's safekeeper (reference §16) that applies to what this
 * service has today (no backup, no pull_timeline, no membership changes yet). Each writes the
 * fault plan that provoked the incident by hand; the seed only jitters times and targets, so a
 * sweep of a named scenario explores the neighbourhood of the incident. All checks of the swarm
 * scenario apply (sim/service-checker.ts), plus the liveness phase.
 */
interface IncidentSpec {
  readonly name: string
  readonly description: string
  readonly expectedMarks: ReadonlyArray<string>
  readonly plan: (jitter: Jitter) => Omit<ServicePlan, "config"> & { readonly config?: string }
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
  }
]

export function makeIncidentScenarios(): Scenario[] {
  return INCIDENTS.map((incident) => {
    const planOf = (seed: number): ServicePlan => {
      const plan = incident.plan(new Jitter(seed, incident.name))
      const actions = [...plan.actions].sort((a, b) => a.atUs - b.atUs)
      return { ...plan, actions, config: plan.config ?? `incident ${incident.name}` }
    }
    const runPlan = (seed: number, plan: ServicePlan, options: ScenarioRunOptions) => runService(incident.name, seed, plan, options)
    return {
      name: incident.name,
      description: incident.description,
      expectedMarks: incident.expectedMarks,
      run: (seed, options) => runPlan(seed, planOf(seed), options),
      planned: { planOf, runPlan }
    }
  })
}
