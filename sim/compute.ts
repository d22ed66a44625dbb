import { Effect, Layer, Random, Result } from "effect"
import type { TenantId, TimelineId } from "../core/acceptor/state.js"
import { sleepUs } from "../core/io/clock.js"
import { logInfo } from "../core/io/log.js"
import { pgTransportLayer } from "../core/proposer/pg-transport.js"
import { runProposer } from "../core/proposer/proposer.js"
import { syntheticWalSource } from "../core/proposer/wal-source.js"
import { formatLsn } from "../core/wal/lsn.js"
import type { Incarnation } from "./kernel.js"
import type { ServiceChecker } from "./service-checker.js"

/**
 * A model compute (DESIGN.md §5, "several computes competing for the same timeline"): what a
 * Neon compute does around its walproposer, running the real core/proposer code over the real
 * Postgres wire protocol (core/proposer/pg-transport.ts). Before each start it runs
 * sync-safekeepers, as compute_ctl does before it starts Postgres, then runs the walproposer
 * with a generator of valid WAL records (logical messages with real page headers and CRC32C);
 * when the proposer steps down (a higher term, no quorum) it starts again after a pause, as
 * Postgres restarts its walproposer. Every message goes through the checker's tap.
 *
 * Timelines are created by the control plane before computes run (as Neon's storage
 * controller does), so computes push with allow_timeline_creation false: a safekeeper that lost
 * its disk refuses the timeline instead of creating it empty and voting with nothing.
 */
export interface ComputeOptions {
  readonly tenantId: TenantId
  readonly timelineId: TimelineId
  readonly safekeepers: ReadonlyArray<string>
  readonly systemId: bigint
  readonly segmentSizeBytes: number
  readonly rateBytesPerSecond: number
  readonly messageBytes: number
  readonly reconnectTimeoutUs: number
  readonly connectionTimeoutUs: number
  readonly heartbeatIntervalUs: number
  readonly quorumTimeoutUs: number
  /** Run sync-safekeepers before every start of the walproposer. */
  readonly syncFirst: boolean
  /** Pause between a step-down and the next start, uniform in this range. */
  readonly restartPauseUs: readonly [number, number]
  /** Every N-th record is an XLOG_SWITCH (reported to the checker); absent: none. */
  readonly switchEveryRecords?: number
  /** Send a switch record and its zero padding in separate chunks (Neon #11092). */
  readonly splitSwitchPadding?: boolean
}

export const computeProgram = (node: string, life: Incarnation, checker: ServiceChecker, options: ComputeOptions, nextRun: () => number) =>
  Effect.gen(function* () {
    const base = {
      tenantId: options.tenantId,
      timelineId: options.timelineId,
      safekeepers: options.safekeepers,
      systemId: options.systemId,
      walSegSizeBytes: options.segmentSizeBytes,
      reconnectTimeoutUs: options.reconnectTimeoutUs,
      connectionTimeoutUs: options.connectionTimeoutUs,
      heartbeatIntervalUs: options.heartbeatIntervalUs,
      quorumTimeoutUs: options.quorumTimeoutUs
    }
    while (true) {
      if (options.syncFirst) {
        const run = `${life.label}/sync${nextRun()}`
        const synced = yield* Effect.result(runProposer({ ...base, syncSafekeepers: true }).pipe(
          Effect.provide(Layer.provide(checker.tap(life, node, run, false), pgTransportLayer))
        ))
        if (Result.isSuccess(synced)) {
          yield* logInfo("compute synced safekeepers", { run, lsn: formatLsn(synced.success.lsn), term: synced.success.term })
          if (synced.success.lsn === 0) checker.marks.add("sync-safekeepers-0/0")
          else checker.marks.add("sync-safekeepers-synced")
        } else {
          yield* logInfo("compute sync failed", { run, reason: synced.failure.reason })
          yield* Effect.flatMap(Random.nextIntBetween(options.restartPauseUs[0], options.restartPauseUs[1]), sleepUs)
          continue
        }
      }
      const run = `${life.label}/run${nextRun()}`
      const outcome = yield* Effect.result(runProposer({
        ...base,
        walSource: syntheticWalSource({
          segmentSizeBytes: options.segmentSizeBytes,
          systemId: options.systemId,
          pgVersion: 15,
          rateBytesPerSecond: options.rateBytesPerSecond,
          messageBytes: options.messageBytes,
          chunkBytesMax: 64 * 1024,
          ...(options.switchEveryRecords === undefined ? {} : {
            switchEveryRecords: options.switchEveryRecords,
            splitSwitchPadding: options.splitSwitchPadding === true,
            // Only a live run's switches: a dead life's source may still be torn down.
            onSwitch: (record) => {
              if (life.alive) checker.noteSwitch(record)
            }
          })
        })
      }).pipe(Effect.provide(Layer.provide(checker.tap(life, node, run, false), pgTransportLayer))))
      if (Result.isFailure(outcome)) yield* logInfo("proposer stepped down", { run, reason: outcome.failure.reason, message: outcome.failure.message })
      yield* Effect.flatMap(Random.nextIntBetween(options.restartPauseUs[0], options.restartPauseUs[1]), sleepUs)
    }
  })
