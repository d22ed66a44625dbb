import * as fs from "node:fs"
import * as path from "node:path"
import type { Command } from "commander"
import { Result } from "effect"
import {
  CONTROL_FILE_NAME,
  CONTROL_FILE_SIZE_MAX_BYTES,
  type DecodedControlFile,
  decodeControlFileDetailed
} from "../core/acceptor/control-file.js"
import type { MemberConfiguration, PersistedState, SafekeeperId, SystemTime } from "../core/acceptor/state.js"
import { formatLsn } from "../core/wal/lsn.js"

/**
 * `sk control dump FILE [--json]`: prints a safekeeper.control file (Neon's
 * `safekeeper --dump-control-file`). FILE may also be a timeline directory. The file is verified
 * exactly as a safekeeper verifies it at load; a bad one is reported, never half-printed.
 */
export function registerControlCommands(program: Command): void {
  const control = program.command("control").description("inspect safekeeper control files")
  control
    .command("dump")
    .description("print a safekeeper.control file (or the one in a timeline directory)")
    .argument("<file>", "path to safekeeper.control, or to the timeline directory holding it")
    .option("--json", "print JSON: LSNs as X/Y strings, 64-bit ids as decimal strings")
    .action((file: string, options: { readonly json?: boolean }) => {
      process.exitCode = runControlDump(file, { json: options.json === true }, {
        stdout: (text) => process.stdout.write(text),
        stderr: (text) => process.stderr.write(text)
      })
    })
}

export interface DumpOutput {
  stdout(text: string): void
  stderr(text: string): void
}

/** Prints the file; returns the process exit code (0, or 1 with a message on stderr). */
export function runControlDump(file: string, options: { readonly json: boolean }, output: DumpOutput): number {
  const loaded = readControlFile(file)
  if (Result.isFailure(loaded)) {
    output.stderr(`sk control dump: ${loaded.failure}\n`)
    return 1
  }
  const { filePath, decoded } = loaded.success
  output.stdout(options.json ? `${JSON.stringify(controlFileToJson(decoded), null, 2)}\n` : formatControlFile(filePath, decoded))
  return 0
}

function readControlFile(file: string): Result.Result<{ readonly filePath: string; readonly decoded: DecodedControlFile }, string> {
  let filePath = file
  try {
    if (fs.statSync(filePath).isDirectory()) filePath = path.join(filePath, CONTROL_FILE_NAME)
    const sizeBytes = fs.statSync(filePath).size
    if (sizeBytes > CONTROL_FILE_SIZE_MAX_BYTES) {
      return Result.fail(`${filePath}: TooLarge: ${sizeBytes} bytes, more than ${CONTROL_FILE_SIZE_MAX_BYTES}`)
    }
    const decoded = decodeControlFileDetailed(fs.readFileSync(filePath))
    if (Result.isFailure(decoded)) return Result.fail(`${filePath}: ${decoded.failure.reason}: ${decoded.failure.message}`)
    return Result.succeed({ filePath, decoded: decoded.success })
  } catch (error) {
    // fs errors (ENOENT, EACCES, EISDIR ...) carry the path and the reason in their message.
    return Result.fail(error instanceof Error ? error.message : String(error))
  }
}

/**
 * The state as JSON in Neon's field names (`TimelinePersistentState` as serde writes it), with
 * LSNs as X/Y strings and u64 ids as decimal strings so that no reader loses precision.
 */
export function controlFileToJson(decoded: DecodedControlFile): unknown {
  const state = decoded.state
  return {
    format_version: decoded.formatVersion,
    checksum: hex8(decoded.checksum),
    state: {
      tenant_id: state.tenantId,
      timeline_id: state.timelineId,
      mconf: mconfToJson(state.mconf),
      acceptor_state: {
        term: state.acceptorState.term,
        term_history: state.acceptorState.termHistory.map((entry) => ({ term: entry.term, lsn: formatLsn(entry.lsn) }))
      },
      server: {
        pg_version: state.server.pgVersion,
        system_id: state.server.systemId.toString(),
        wal_seg_size: state.server.walSegSizeBytes
      },
      proposer_uuid: state.proposerUuid,
      timeline_start_lsn: formatLsn(state.timelineStartLsn),
      local_start_lsn: formatLsn(state.localStartLsn),
      commit_lsn: formatLsn(state.commitLsn),
      backup_lsn: formatLsn(state.backupLsn),
      peer_horizon_lsn: formatLsn(state.peerHorizonLsn),
      remote_consistent_lsn: formatLsn(state.remoteConsistentLsn),
      partial_backup: {
        segments: state.partialBackup.segments.map((segment) => ({
          status: segment.status,
          name: segment.name,
          commit_lsn: formatLsn(segment.commitLsn),
          flush_lsn: formatLsn(segment.flushLsn),
          term: segment.term
        }))
      },
      eviction_state: state.evictionState._tag === "Present" ? "Present" : { Offloaded: formatLsn(state.evictionState.flushLsn) },
      creation_ts: { secs_since_epoch: state.creationTs.secsSinceEpoch, nanos_since_epoch: state.creationTs.nanosSinceEpoch }
    }
  }
}

function mconfToJson(mconf: MemberConfiguration): unknown {
  const member = (m: SafekeeperId) => ({ id: m.id, host: m.host, pg_port: m.pgPort })
  return {
    generation: mconf.generation,
    members: mconf.members.map(member),
    new_members: mconf.newMembers === undefined ? null : mconf.newMembers.map(member)
  }
}

/** Aligned `name  value` lines, in the file's field order. */
export function formatControlFile(filePath: string, decoded: DecodedControlFile): string {
  const state: PersistedState = decoded.state
  const lines: Array<readonly [string, string]> = [
    ["file", filePath],
    ["format_version", `${decoded.formatVersion} (crc32c ${hex8(decoded.checksum)})`],
    ["tenant_id", state.tenantId],
    ["timeline_id", state.timelineId],
    ["mconf", formatMconf(state.mconf)],
    ["term", String(state.acceptorState.term)],
    ["term_history", count(state.acceptorState.termHistory.length, "entry", "entries")],
    ...state.acceptorState.termHistory.map((entry) => ["", `term ${entry.term} from ${formatLsn(entry.lsn)}`] as const),
    ["pg_version", String(state.server.pgVersion)],
    ["system_id", state.server.systemId.toString()],
    ["wal_seg_size", String(state.server.walSegSizeBytes)],
    ["proposer_uuid", state.proposerUuid],
    ["timeline_start_lsn", formatLsn(state.timelineStartLsn)],
    ["local_start_lsn", formatLsn(state.localStartLsn)],
    ["commit_lsn", formatLsn(state.commitLsn)],
    ["backup_lsn", formatLsn(state.backupLsn)],
    ["peer_horizon_lsn", formatLsn(state.peerHorizonLsn)],
    ["remote_consistent_lsn", formatLsn(state.remoteConsistentLsn)],
    ["partial_backup", count(state.partialBackup.segments.length, "segment", "segments")],
    ...state.partialBackup.segments.map((segment) => [
      "",
      `${segment.status} ${segment.name} commit ${formatLsn(segment.commitLsn)} flush ${formatLsn(segment.flushLsn)} term ${segment.term}`
    ] as const),
    ["eviction_state", state.evictionState._tag === "Present" ? "Present" : `Offloaded at ${formatLsn(state.evictionState.flushLsn)}`],
    ["creation_ts", decoded.formatVersion < 10 ? `not stored in format v${decoded.formatVersion}` : formatSystemTime(state.creationTs)]
  ]
  const width = Math.max(...lines.map(([name]) => name.length)) + 2
  return lines.map(([name, value]) => `${name.padEnd(width)}${value}`.trimEnd()).join("\n") + "\n"
}

function formatMconf(mconf: MemberConfiguration): string {
  const set = (members: ReadonlyArray<SafekeeperId>) =>
    members.length === 0 ? "(none)" : members.map((m) => `${m.id}@${m.host}:${m.pgPort}`).join(", ")
  const joint = mconf.newMembers === undefined ? "" : `; new_members ${set(mconf.newMembers)}`
  return `generation ${mconf.generation}; members ${set(mconf.members)}${joint}`
}

function count(n: number, one: string, many: string): string {
  return n === 0 ? "(none)" : `${n} ${n === 1 ? one : many}`
}

/** ISO time when a Date can hold it; the epoch marks a state upgraded from a format without it. */
function formatSystemTime(time: SystemTime): string {
  const raw = `${time.secsSinceEpoch} s + ${time.nanosSinceEpoch} ns`
  if (time.secsSinceEpoch === 0 && time.nanosSinceEpoch === 0) return "Unix epoch (unknown: upgraded from a format without it)"
  const dateMsMax = 8.64e15 // the largest time a JavaScript Date holds
  if (time.secsSinceEpoch * 1000 > dateMsMax) return raw
  const iso = new Date(time.secsSinceEpoch * 1000).toISOString().replace(/\.000Z$/, "")
  return `${iso}.${String(time.nanosSinceEpoch).padStart(9, "0")}Z (${raw})`
}

function hex8(value: number): string {
  return `0x${value.toString(16).toUpperCase().padStart(8, "0")}`
}
