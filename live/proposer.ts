import { Effect, Layer } from "effect"
import type { TenantId, TimelineId } from "../core/acceptor/state.js"
import { pgTransportLayer } from "../core/proposer/pg-transport.js"
import { type ProposerError, type ProposerProgress, runProposer } from "../core/proposer/proposer.js"
import { syntheticWalSource } from "../core/proposer/wal-source.js"
import { formatLsn } from "../core/wal/lsn.js"
import { liveLayer } from "./layer.js"
import { runMain } from "./process.js"

/**
 * `sk proposer` wired to the live world: the walproposer from core/ over real sockets, fed by
 * the synthetic WAL source, printing commit progress (a live line on a terminal, a plain line a
 * second otherwise). Exit codes: 0 done, 3 lost its term to another proposer, 4 no quorum within
 * the timeout, 1 anything else.
 */
export const EXIT_LOST_TERM = 3
export const EXIT_NO_QUORUM = 4
const PROGRESS_INTERVAL_MS = 1000
export const SYNTHETIC_SYSTEM_ID = 0x736b_0000_0000_0001n

export interface LiveProposerOptions {
  readonly safekeepers: ReadonlyArray<string>
  readonly tenantId: TenantId
  readonly timelineId: TimelineId
  readonly rateBytesPerSecond: number
  readonly totalBytes: number | undefined
  readonly syncSafekeepers: boolean
  readonly quorumTimeoutUs: number
}

export function runLiveProposer(options: LiveProposerOptions): Promise<number> {
  const terminal = process.stdout.isTTY === true
  const startedMs = Date.now()
  let lastPrintMs = 0
  let last: ProposerProgress | undefined
  const print = (progress: ProposerProgress, force: boolean) => {
    last = progress
    const now = Date.now()
    if (!force && now - lastPrintMs < (terminal ? 100 : PROGRESS_INTERVAL_MS)) return
    lastPrintMs = now
    const line = progressLine(progress, (now - startedMs) / 1000)
    process.stdout.write(terminal ? `\r\x1b[K${line}` : `${line}\n`)
  }
  const program = Effect.gen(function* () {
    const result = yield* runProposer({
      tenantId: options.tenantId,
      timelineId: options.timelineId,
      safekeepers: options.safekeepers,
      systemId: options.syncSafekeepers ? 0n : SYNTHETIC_SYSTEM_ID,
      syncSafekeepers: options.syncSafekeepers,
      quorumTimeoutUs: options.quorumTimeoutUs,
      totalBytes: options.totalBytes,
      walSource: syntheticWalSource({
        segmentSizeBytes: 16 * 1024 * 1024,
        systemId: SYNTHETIC_SYSTEM_ID,
        pgVersion: 15,
        rateBytesPerSecond: options.rateBytesPerSecond
      }),
      onProgress: (progress) => print(progress, false)
    })
    if (last !== undefined) print(last, true)
    if (terminal) process.stdout.write("\n")
    if (options.syncSafekeepers) process.stdout.write(`${formatLsn(result.lsn)}\n`)
    else process.stdout.write(`committed ${formatLsn(result.commitLsn)} in term ${result.term} (term start ${formatLsn(result.termStartLsn)})\n`)
  })
  return runMain(program, Layer.provideMerge(pgTransportLayer, liveLayer()), {
    name: "sk proposer",
    exitCodeOf: (error: ProposerError) => {
      if (terminal) process.stdout.write("\n")
      return error.reason === "NoQuorum" ? EXIT_NO_QUORUM : error.reason === "WalUnavailable" || error.reason === "InvalidConfiguration" ? 1 : EXIT_LOST_TERM
    }
  })
}

function progressLine(progress: ProposerProgress, seconds: number): string {
  const start = progress.termStartLsn ?? 0
  const committedBytes = Math.max(0, progress.commitLsn - start)
  const rate = seconds > 0 ? committedBytes / seconds / (1024 * 1024) : 0
  const flushes = progress.safekeepers.map((sk) => `${sk.address}=${sk.status === "Active" ? formatLsn(sk.flushLsn) : sk.status}`).join(" ")
  return `[${seconds.toFixed(1)}s] ${progress.phase} term ${progress.term} commit ${formatLsn(progress.commitLsn)} (${(committedBytes / (1024 * 1024)).toFixed(1)} MiB, ${rate.toFixed(1)} MiB/s) ${flushes}`
}
