// Goal: show that our WAL codec agrees with PostgreSQL 15 both ways. Method: (a) WAL that
// `sk wal synth` writes (records across pages and segments, an XLOG_SWITCH) must pass
// pg_waldump up to the normal zero-length end; (b) a real cluster writes WAL with full-page
// images, a 20 MB logical message (longer than a segment, so continued at a segment start),
// an XLOG_SWITCH and recycled segments past the end; `sk wal dump` must count the same
// records per rmgr as pg_waldump over the same files, stop at the same LSN, and hand back
// the message's bytes exactly.
import { createHash } from "node:crypto"
import { mkdtempSync, readdirSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Result } from "effect"
import { afterAll, beforeAll, describe, expect, test } from "vitest"
import { collectSegmentFiles, dumpWal, synthWal } from "../../cli/wal.js"
import {
  ensurePostgresInstalled,
  parseWaldumpStats,
  type PostgresCluster,
  runPgWaldump,
  startPostgres
} from "../../live/testing/postgres.js"
import type { WalRecord } from "./decoder.js"
import { DEFAULT_WAL_SEGMENT_SIZE_BYTES, formatLsn, Lsn, parseLsn, parseSegmentFileName, segmentNoOf } from "./lsn.js"
import { decodeLogicalMessage, decodeRecordBody, isXlogSwitch, RM_LOGICALMSG_ID } from "./record.js"

const SEGMENT = DEFAULT_WAL_SEGMENT_SIZE_BYTES

function segmentNames(dir: string): string[] {
  return readdirSync(dir).filter((name) => parseSegmentFileName(name, SEGMENT) !== undefined).sort()
}

/** pg_waldump's closing error: "invalid record length at X/Y: wanted 24, got 0" and kin. */
function waldumpEndLsn(stderr: string): string | undefined {
  return /error in WAL record at [0-9A-F]+\/[0-9A-F]+: .* at ([0-9A-F]+\/[0-9A-F]+)/.exec(stderr)?.[1] ??
    /LSN ([0-9A-F]+\/[0-9A-F]+), offset/.exec(stderr)?.[1]
}

beforeAll(() => {
  ensurePostgresInstalled()
})

describe("sk wal synth output passes pg_waldump", () => {
  const outDir = mkdtempSync(join(tmpdir(), "sk-synth-"))
  afterAll(() => rmSync(outDir, { recursive: true, force: true }))

  test("records across pages, segments and an XLOG_SWITCH are all accepted", () => {
    const result = synthWal({
      outDir,
      bytes: 40 * 1024 * 1024,
      seed: 7,
      startLsn: Lsn(SEGMENT + 40),
      pgVersion: 15,
      systemId: 7_000_000_000_000_000_001n,
      segmentSizeBytes: SEGMENT,
      withSwitch: true
    })
    expect(result.pageSpanningRecords).toBeGreaterThan(10)
    expect(result.segmentSpanningRecords).toBeGreaterThan(0)
    expect(result.switches).toBe(1)
    const names = segmentNames(outDir)
    expect(names[0]).toBe("000000010000000000000001")
    const waldump = runPgWaldump(["--stats", "-p", outDir, names[0]!, names.at(-1)!])
    const stats = parseWaldumpStats(waldump.stdout)
    expect(stats.total).toBe(result.records)
    expect(stats.rmgrs).toEqual({ LogicalMessage: result.records - 1, XLOG: 1 })
    // The only complaint is the zero-filled end of WAL, exactly where synth stopped.
    expect(waldump.stderr).toMatch(/invalid record length at [0-9A-F/]+: wanted 24, got 0/)
    expect(waldumpEndLsn(waldump.stderr)).toBe(result.endLsn)
  })
})

describe("a real PostgreSQL 15 cluster's WAL", () => {
  let cluster: PostgresCluster | undefined
  afterAll(async () => {
    await cluster?.destroy()
  })

  test("decodes record for record as pg_waldump does, message bytes included", async () => {
    cluster = await startPostgres({
      settings: {
        // Small WAL budget and no keep beyond what the test reads, so that checkpoints
        // recycle old segments into future names: the end of WAL then sits in front of
        // recycled segments, as on a long-running primary.
        min_wal_size: "32MB",
        max_wal_size: "64MB",
        wal_keep_size: "128MB",
        checkpoint_timeout: "1h",
        full_page_writes: "on"
      }
    })
    const sql = cluster.sql
    await sql("create table filler (id int, pad text)")
    // Rounds of WAL and checkpoints: older segments are recycled ahead.
    for (let round = 0; round < 12; round += 1) {
      await sql("insert into filler select g, repeat('x', 900) from generate_series(1, 12000) g")
      await sql("delete from filler")
      await sql("checkpoint")
    }
    await sql("create table t (id int primary key, v text)")
    await sql("insert into t select g, md5(g::text) from generate_series(1, 5000) g")
    await sql("checkpoint")
    // The first change to each page after a checkpoint carries a full-page image.
    await sql("update t set v = v || 'x'")
    const messageSql = "select string_agg(md5(g::text), '' order by g) from generate_series(1, 655360) g"
    const bigEnd = await sql(`select pg_logical_emit_message(false, 'big', (${messageSql}))`)
    await sql("select pg_switch_wal()")
    await sql("insert into t values (-1, 'after switch')")
    // Recycle once more, then move on to a new segment: the end of WAL lands in a segment
    // that held old WAL, with more recycled segments named after it.
    await sql("checkpoint")
    await sql("select pg_switch_wal()")
    await sql("insert into t values (-2, 'in a recycled segment')")
    await cluster.stop()

    const names = segmentNames(cluster.walDir)
    const inputs = collectSegmentFiles([cluster.walDir], SEGMENT)
    if (Result.isFailure(inputs)) throw new Error(inputs.failure)
    const records: WalRecord[] = []
    const bigMessages: Uint8Array[] = []
    let imageBytes = 0
    const summary = dumpWal(inputs.success, {
      segmentSizeBytes: SEGMENT,
      onRecord: (record) => {
        records.push({ ...record, bytes: new Uint8Array(0) })
        const body = Result.getOrThrow(decodeRecordBody(record.bytes, 15))
        for (const block of body.blocks) imageBytes += block.image?.lengthBytes ?? 0
        if (record.rmid !== RM_LOGICALMSG_ID) return
        const message = Result.getOrThrow(decodeLogicalMessage(record.bytes.subarray(body.mainDataOffset, body.mainDataOffset + body.mainDataLengthBytes)))
        if (message.prefix === "big") bigMessages.push(message.message.slice())
      }
    })

    const waldump = runPgWaldump(["--stats", "-p", cluster.walDir, names[0]!, names.at(-1)!])
    const stats = parseWaldumpStats(waldump.stdout)
    expect(summary.records).toBe(stats.total)
    expect(summary.rmgrs).toEqual(stats.rmgrs)
    expect(summary.stopLsn).toBe(waldumpEndLsn(waldump.stderr))

    // What the WAL had to contain for this to mean something.
    expect(records.some((record) => isXlogSwitch(record.rmid, record.info))).toBe(true)
    const continuedAtSegmentStart = records.filter((record) =>
      segmentNoOf(record.startLsn, SEGMENT) !== segmentNoOf(record.endLsn - 1, SEGMENT))
    expect(continuedAtSegmentStart.length).toBeGreaterThan(0)
    // Every body splits into block references and main data; the images add up as pg_waldump's.
    expect(stats.fpiBytes).toBeGreaterThan(0)
    expect(imageBytes).toBe(stats.fpiBytes)
    const endSegment = segmentNoOf(parseLsnOrThrow(summary.stopLsn ?? "0/0"), SEGMENT)
    const recycledAhead = names.filter((name) => parseSegmentFileName(name, SEGMENT)!.segmentNo > endSegment)
    expect(recycledAhead.length).toBeGreaterThan(0)
    expect(["ZeroLength", "BadPageAddress"]).toContain(summary.stopReason)
    // A recycled segment read where it now sits fails on its first page's address.
    const recycled = collectSegmentFiles([join(cluster.walDir, recycledAhead[0]!)], SEGMENT)
    if (Result.isFailure(recycled)) throw new Error(recycled.failure)
    const recycledSummary = dumpWal(recycled.success, { segmentSizeBytes: SEGMENT })
    expect(recycledSummary.stopReason).toBe("BadPageAddress")
    expect(recycledSummary.records).toBe(0)

    // The 20 MB message reads back byte for byte, and ends where Postgres said it would.
    expect(bigMessages).toHaveLength(1)
    const expected = Buffer.from(md5Concat(655360))
    expect(bigMessages[0]!.length).toBe(expected.length)
    expect(Buffer.from(bigMessages[0]!).equals(expected)).toBe(true)
    const bigRecord = records.find((record) => record.totalLengthBytes > 20 * 1024 * 1024)
    expect(bigRecord === undefined ? undefined : formatLsn(bigRecord.nextLsn)).toBe(bigEnd)
  })
})

function parseLsnOrThrow(text: string): Lsn {
  return Result.getOrThrow(parseLsn(text))
}

/** The message the cluster emitted: md5 of 1..count as text, concatenated. */
function md5Concat(count: number): string {
  const parts: string[] = []
  for (let g = 1; g <= count; g += 1) parts.push(createHash("md5").update(String(g)).digest("hex"))
  return parts.join("")
}
