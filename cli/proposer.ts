import { type Command, InvalidArgumentError } from "commander"
import { Result } from "effect"
import { parseTenantId, parseTimelineId } from "../core/acceptor/state.js"
import { runLiveProposer } from "../live/proposer.js"
import { parseHostPort } from "./safekeeper.js"

/** `sk proposer`: a walproposer with synthetic WAL against live safekeepers. */
export function registerProposerCommand(program: Command): void {
  program
    .command("proposer")
    .description("run a walproposer that streams synthetic WAL to a quorum of safekeepers")
    .requiredOption("--safekeepers <list>", "comma-separated host:port of every safekeeper", parseSafekeeperList)
    .requiredOption("--tenant-id <hex>", "tenant id (32 hex digits)", parseId("tenant"))
    .requiredOption("--timeline-id <hex>", "timeline id (32 hex digits)", parseId("timeline"))
    .option("--synthetic-wal <bytes-per-sec>", "synthetic WAL rate (K/M/G suffixes; 0 = as fast as the quorum takes it)", parseByteCount, 1024 * 1024)
    .option("--total <bytes>", "exit 0 once this much WAL is committed on a quorum (K/M/G suffixes)", parseByteCount)
    .option("--sync-safekeepers", "elect, bring a quorum to the most advanced WAL, print its LSN, exit")
    .option("--quorum-timeout <seconds>", "exit 4 when no quorum elects or commits for this long", parseSeconds, 30)
    .action(async (options: {
      safekeepers: string[]
      tenantId: string
      timelineId: string
      syntheticWal: number
      total?: number
      syncSafekeepers?: boolean
      quorumTimeout: number
    }) => {
      process.exitCode = await runLiveProposer({
        safekeepers: options.safekeepers,
        tenantId: Result.getOrThrow(parseTenantId(options.tenantId)),
        timelineId: Result.getOrThrow(parseTimelineId(options.timelineId)),
        rateBytesPerSecond: options.syntheticWal,
        totalBytes: options.total,
        syncSafekeepers: options.syncSafekeepers === true,
        quorumTimeoutUs: options.quorumTimeout * 1_000_000
      })
    })
}

function parseSafekeeperList(text: string): string[] {
  const list = text.split(",").map((part) => part.trim()).filter((part) => part.length > 0)
  if (list.length === 0) throw new InvalidArgumentError("expected host:port[,host:port...]")
  for (const address of list) parseHostPort(address)
  if (new Set(list).size !== list.length) throw new InvalidArgumentError("safekeeper addresses must be distinct")
  return list
}

function parseId(what: string): (text: string) => string {
  return (text) => {
    if (Result.isFailure(parseTenantId(text))) throw new InvalidArgumentError(`${what} id must be 32 hex digits, got "${text}"`)
    return text.toLowerCase()
  }
}

const UNITS: Readonly<Record<string, number>> = { "": 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }

/** "1048576", "512K", "10M", "1G" (binary units; a trailing B or iB is allowed). */
export function parseByteCount(text: string): number {
  const match = /^([0-9]+)\s*([KMG]?)(i?B)?$/i.exec(text.trim())
  if (match === null) throw new InvalidArgumentError(`expected a byte count such as 1048576, 512K or 10M, got "${text}"`)
  const value = Number(match[1]) * UNITS[(match[2] ?? "").toUpperCase()]!
  if (!Number.isSafeInteger(value)) throw new InvalidArgumentError(`byte count too large: "${text}"`)
  return value
}

/** Seconds, optionally with an "s" suffix ("30", "30s"). */
export function parseSeconds(text: string): number {
  const match = /^([0-9]+(?:\.[0-9]+)?)s?$/.exec(text.trim())
  if (match === null || Number(match[1]) <= 0) throw new InvalidArgumentError(`expected a positive number of seconds, got "${text}"`)
  return Number(match[1])
}
