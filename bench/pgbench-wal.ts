import { spawnSync } from "node:child_process"
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { pgBinary, type PostgresCluster, startPostgres } from "../live/testing/postgres.js"

/**
 * Real WAL for the decoding bench (DESIGN.md §9): a throwaway PostgreSQL 15 on loopback
 * (live/testing/postgres.ts) runs `pgbench -i` (bulk load: multi-insert and index-build
 * records, many of them page-sized) and then a short `pgbench -N` (OLTP: small heap, btree and
 * commit records); each phase is closed with pg_switch_wal() so its WAL lies in completed
 * segments, which are copied out. PostgreSQL is stopped by its pid before this returns.
 */

export interface PgbenchWalOptions {
  /** pgbench -i -s. */
  readonly scale: number
  /** pgbench -N -T. */
  readonly durationSeconds: number
  readonly clients: number
}

export interface WalSegmentSet {
  /** Directory holding only these segments (pg_waldump -p). */
  readonly directory: string
  /** Segment file names, in order. */
  readonly names: ReadonlyArray<string>
}

export interface PgbenchWal {
  readonly segmentSizeBytes: number
  /** Segments written by `pgbench -i`. */
  readonly load: WalSegmentSet
  /** Segments written by `pgbench -N`. */
  readonly oltp: WalSegmentSet
  /** Deletes the copies. */
  readonly remove: () => void
}

/** pgbench output kept; it prints a few lines of progress and a summary. */
const PGBENCH_OUTPUT_BYTES_MAX = 16 * 1024 * 1024

export async function makePgbenchWal(options: PgbenchWalOptions): Promise<PgbenchWal> {
  const cluster = await startPostgres({
    settings: {
      // A checkpoint in the middle of a phase would add a burst of full-page images that the
      // next run may or may not see; the phases checkpoint explicitly instead.
      max_wal_size: "'4GB'",
      checkpoint_timeout: "'1h'",
      synchronous_commit: "off"
    }
  })
  const copies = mkdtempSync(join(tmpdir(), "sk-bench-wal-"))
  try {
    const segmentSizeBytes = Number(await cluster.sql("select setting::bigint * 1 from pg_settings where name = 'wal_segment_size'"))
    const loadFirst = await currentSegment(cluster)
    pgbench(cluster, ["-i", "-s", String(options.scale), "-q"])
    const load = await closePhase(cluster, loadFirst, join(copies, "load"))
    // No checkpoint in between: pages the load wrote are newer than the last redo point, so
    // the OLTP phase writes few full-page images and its WAL is small records, the case where
    // per-record costs show (the load phase stands for page-sized records).
    const oltpFirst = await currentSegment(cluster)
    pgbench(cluster, ["-N", "-T", String(options.durationSeconds), "-c", String(options.clients), "-j", String(options.clients), "-n"])
    const oltp = await closePhase(cluster, oltpFirst, join(copies, "oltp"))
    return { segmentSizeBytes, load, oltp, remove: () => rmSync(copies, { recursive: true, force: true }) }
  } catch (error) {
    rmSync(copies, { recursive: true, force: true })
    throw error
  } finally {
    // destroy() stops the postmaster by its pid (SIGINT, then SIGKILL after a timeout).
    await cluster.destroy()
  }
}

async function currentSegment(cluster: PostgresCluster): Promise<string> {
  return cluster.sql("select pg_walfile_name(pg_current_wal_insert_lsn())")
}

/** Switches to a new segment and copies [first, the one switched away from] out. */
async function closePhase(cluster: PostgresCluster, first: string, directory: string): Promise<WalSegmentSet> {
  const last = await cluster.sql("select pg_walfile_name(pg_switch_wal())")
  // The switch record is flushed with the segment; a segment is complete once the next one is
  // current, and the names sort in LSN order within one timeline.
  const names = readdirSync(cluster.walDir).filter((name) => /^[0-9A-F]{24}$/.test(name) && name >= first && name <= last).sort()
  if (names[0] !== first || names[names.length - 1] !== last) throw new Error(`segments ${first}..${last} not all in ${cluster.walDir}`)
  mkdirSync(directory)
  for (const name of names) copyFileSync(join(cluster.walDir, name), join(directory, name))
  return { directory, names }
}

function pgbench(cluster: PostgresCluster, args: ReadonlyArray<string>): void {
  const result = spawnSync(pgBinary("pgbench"), ["-h", cluster.socketDir, "-p", String(cluster.port), "-U", "postgres", ...args, "postgres"], {
    encoding: "utf8",
    maxBuffer: PGBENCH_OUTPUT_BYTES_MAX
  })
  if (result.status !== 0) throw new Error(`pgbench ${args.join(" ")} failed (exit ${result.status ?? result.signal}): ${result.stderr}`)
}
