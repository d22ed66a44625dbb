import { spawn, spawnSync } from "node:child_process"
import { closeSync, fdatasyncSync, fsyncSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from "node:fs"
import { connect } from "node:net"
import { cpus, loadavg, tmpdir } from "node:os"
import { join } from "node:path"
import { Cause, Duration, Effect, Exit, Layer, Option } from "effect"
import { TenantId, TimelineId } from "../core/acceptor/state.js"
import { assert } from "../core/assert.js"
import { concatBytes } from "../core/bytes.js"
import { defaultInitialLsn } from "../core/proposer/machine.js"
import { pgTransportLayer } from "../core/proposer/pg-transport.js"
import { type ProposerProgress, runProposer } from "../core/proposer/proposer.js"
import type { WalStreamChunk } from "../core/proposer/transport.js"
import { syntheticWalSource, type WalSource, type WalSourceFactory } from "../core/proposer/wal-source.js"
import { DEFAULT_WAL_SEGMENT_SIZE_BYTES, formatLsn, Lsn, segmentFileName, segmentNoOf, segmentStartLsn } from "../core/wal/lsn.js"
import { liveLayer } from "../live/layer.js"
import { LocalCluster } from "../live/local-cluster.js"
import { SYNTHETIC_SYSTEM_ID } from "../live/proposer.js"
import { pgBinary, type PostgresCluster, startPostgres } from "../live/testing/postgres.js"

/**
 * The live service against this machine's own limits, measured in the same run (DESIGN.md §9):
 *
 * Ingest: three `sk safekeeper` processes (fsync on) in a temp dir, the walproposer in this
 * process over the real pg transport. The WAL is syntheticWalSource's (~200-byte logical
 * messages), generated before the clock starts and replayed in chunks: generating it costs
 * more CPU than the whole proposer does (a compute's Postgres writes its WAL, not the
 * walproposer), so generating it live would measure the generator. Two rows: a fixed offered
 * load, and as fast as the quorum takes it. A chunk's commit latency runs from when the source
 * produced it to the first onProgress whose commit_lsn covers its end; at the offered load a
 * chunk counts as produced when it was due (so a stalled pipeline is charged for the wait, not
 * excused by it), as fast as possible when the proposer took it. Baseline: a loop of 8 KiB
 * write + fdatasync into a preallocated file in the same temp dir, measured before and after
 * the ingest rows: the floor under any durable commit on this disk.
 *
 * Send: `pg_receivewal` streams SEND_BYTES of committed WAL from one safekeeper, and the same
 * amount from a throwaway PostgreSQL 15 primary's own walsender, alternating, best of
 * SEND_ROUNDS. Both start at a segment start (an empty `<segment>.partial` in the target
 * directory makes pg_receivewal begin there instead of at the server's current position) and
 * stop at `-E`. Both run with --no-sync, so the receiver's disk does not hide the senders.
 *
 * The load average is printed first: on a shared machine with few cores, other work moves
 * latencies far more than it moves CPU per MB, which is printed too. Everything started here
 * is stopped by pid and the temp dirs are removed, also on failure.
 */
const SEGMENT_BYTES = DEFAULT_WAL_SEGMENT_SIZE_BYTES
const MIB = 1024 * 1024
const FSYNC_PROBE_BLOCK_BYTES = 8192
const FSYNC_PROBE_DURATION_MS = 2_000
/** Caps the samples kept on a disk whose cache acknowledges fdatasync at once. */
const FSYNC_PROBE_OPS_MAX = 1_000_000
const INGEST_DURATION_MS = 10_000
/** Election, the last commits and the push end, beyond the ingest duration. */
const INGEST_TIMEOUT_MS = INGEST_DURATION_MS + 60_000
const PACED_RATE_BYTES_PER_SECOND = 8 * MIB
/** Postgres hands the walproposer WAL a few pages at a time; so does the paced source. */
const PACED_CHUNK_BYTES_MAX = 16 * 1024
/** As fast as possible: this many generated chunks per source chunk (128 KiB, MAX_SEND_SIZE). */
const FAST_CHUNK_GROUP_COUNT = 8
/** WAL generated up front: the fast row's most, and enough that it can feed the send rows. */
const PREGENERATED_BYTES = 288 * MIB
const SYNTHETIC_MESSAGE_BYTES = 200
const SEND_BYTES = 256 * MIB
assert(PREGENERATED_BYTES > SEND_BYTES + SEGMENT_BYTES, "the fast row can feed the send rows")
assert(PREGENERATED_BYTES >= (PACED_RATE_BYTES_PER_SECOND * INGEST_DURATION_MS) / 1000 * 1.1, "the paced row never runs out of WAL")
const SEND_ROUNDS = 3
const SEND_TIMEOUT_MS = 120_000
const TOP_UP_TIMEOUT_MS = 300_000
const PG_LISTEN_TIMEOUT_MS = 20_000
const PG_LISTEN_POLL_MS = 50
/** Rows per pg_logical_emit_message statement; ~280 bytes of WAL each. */
const PG_MESSAGES_PER_STATEMENT = 200_000
const PG_GENERATE_STATEMENTS_MAX = 64
const COMMIT_P50_OVER_FSYNC_AIM = 3
const SEND_RATIO_AIM = 1
const TENANT_ID = TenantId("b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0")
const STDERR_KEPT_BYTES_MAX = 64 * 1024

export async function benchService(): Promise<void> {
  const directory = mkdtempSync(join(tmpdir(), "sk-bench-service-"))
  let cluster: LocalCluster | undefined
  let postgres: PostgresCluster | undefined
  try {
    console.log(`service: 3 sk safekeeper processes (fsync on), the proposer in-process over the pg transport, in ${directory}`)
    console.log(`  machine: ${cpus().length} cpus, load average ${loadavg().map((l) => l.toFixed(2)).join(" ")} (1/5/15 min)`)
    const fsync = probeFdatasync(join(directory, "fsync-probe"))
    printFsync("disk, before ingest", fsync)
    const generateStartedMs = performance.now()
    const wal = pregenerate(PREGENERATED_BYTES, PACED_CHUNK_BYTES_MAX)
    console.log(`  generated ${PREGENERATED_BYTES / MIB} MiB of synthetic WAL in ${PACED_CHUNK_BYTES_MAX / 1024} KiB chunks up front (the generator alone: ${fmtRate(PREGENERATED_BYTES / 1e6 / ((performance.now() - generateStartedMs) / 1000)).trim()})`)

    cluster = await LocalCluster.start({ safekeeperCount: 3, directory: join(directory, "cluster") })
    const addresses = cluster.safekeepers.map((sk) => sk.pgAddress)
    // LocalCluster waits for the HTTP status, which listens before the pg port does.
    for (const address of addresses) await waitForListener(address, PG_LISTEN_TIMEOUT_MS)
    const pids = cluster.safekeepers.map((sk) => sk.child?.pid ?? 0)

    console.log(`  ingest, up to ${INGEST_DURATION_MS / 1000} s per row, ~${SYNTHETIC_MESSAGE_BYTES}-byte logical messages:`)
    const paced = await ingest({
      addresses, pids, timelineId: timelineIdOf(1),
      source: { wal, rateBytesPerSecond: PACED_RATE_BYTES_PER_SECOND, chunkGroupCount: 1 },
      durationMs: INGEST_DURATION_MS, timeoutMs: INGEST_TIMEOUT_MS
    })
    printIngest(`offered ${PACED_RATE_BYTES_PER_SECOND / MIB} MiB/s, ${PACED_CHUNK_BYTES_MAX / 1024} KiB chunks`, paced)
    const fast = await ingest({
      addresses, pids, timelineId: timelineIdOf(2),
      source: { wal, rateBytesPerSecond: 0, chunkGroupCount: FAST_CHUNK_GROUP_COUNT },
      durationMs: INGEST_DURATION_MS, timeoutMs: INGEST_TIMEOUT_MS
    })
    printIngest(`as fast as possible, ${(PACED_CHUNK_BYTES_MAX * FAST_CHUNK_GROUP_COUNT) / 1024} KiB chunks`, fast)
    const fsyncAfter = probeFdatasync(join(directory, "fsync-probe"))
    printFsync("disk, after ingest", fsyncAfter)
    const fsyncUs = Math.min(fsync.p50Us, fsyncAfter.p50Us)
    console.log(`    commit p50 / one fdatasync (the better p50, ${fmtUs(fsyncUs).trim()}): offered load ${(paced.latency.p50Us / fsyncUs).toFixed(1)}x, as fast as possible ${(fast.latency.p50Us / fsyncUs).toFixed(1)}x (aim <= ${COMMIT_P50_OVER_FSYNC_AIM}x at the offered load)`)

    // ---- send ----
    let send = fast
    if (fast.commitLsn - segmentStartLsn(segmentNoOf(fast.termStartLsn, SEGMENT_BYTES), SEGMENT_BYTES) <= SEND_BYTES) {
      console.log(`  (the fast row committed under ${SEND_BYTES / MIB} MiB: pushing all ${PREGENERATED_BYTES / MIB} MiB to a fresh timeline for the send rows)`)
      send = await ingest({
        addresses, pids, timelineId: timelineIdOf(3),
        source: { wal, rateBytesPerSecond: 0, chunkGroupCount: FAST_CHUNK_GROUP_COUNT },
        durationMs: Number.POSITIVE_INFINITY, timeoutMs: TOP_UP_TIMEOUT_MS
      })
    }
    const source = cluster.safekeeper(1)
    const skStartLsn = segmentStartLsn(segmentNoOf(send.termStartLsn, SEGMENT_BYTES), SEGMENT_BYTES)
    const skEndLsn = skStartLsn + SEND_BYTES
    if (skEndLsn >= send.commitLsn) throw new Error(`send: need WAL past ${formatLsn(skEndLsn)}, committed ${formatLsn(send.commitLsn)}`)

    postgres = await startPostgres({
      settings: {
        wal_level: "replica",
        max_wal_senders: "4",
        // Nothing may recycle the segments before pg_receivewal has read them.
        max_wal_size: "'4GB'",
        wal_keep_size: "'2GB'",
        checkpoint_timeout: "'1h'"
      }
    })
    const pg = await generatePgWal(postgres, SEND_BYTES)

    console.log(`  send, ${SEND_BYTES / MIB} MiB from a segment start to pg_receivewal --no-sync, ${SEND_ROUNDS} rounds alternating:`)
    const skRates: number[] = []
    const pgRates: number[] = []
    for (let round = 1; round <= SEND_ROUNDS; round++) {
      const skRun = await receiveWal(join(directory, `recv-sk-${round}`), skStartLsn, skEndLsn, [
        "-h", hostOf(source.pgAddress), "-p", portOf(source.pgAddress), "-U", "x",
        "-d", `options='-c tenant_id=${TENANT_ID} timeline_id=${send.timelineId}'`
      ], source.child?.pid)
      const pgRun = await receiveWal(join(directory, `recv-pg-${round}`), pg.startLsn, pg.endLsn, [
        "-h", "127.0.0.1", "-p", String(postgres.port), "-U", "postgres"
      ], undefined)
      skRates.push(skRun.mbPerSecond)
      pgRates.push(pgRun.mbPerSecond)
      console.log(`    round ${round}: safekeeper ${fmtRate(skRun.mbPerSecond)} (${skRun.ms.toFixed(0)} ms, sk cpu ${skRun.serverCpuMs.toFixed(0)} ms)   postgres ${fmtRate(pgRun.mbPerSecond)} (${pgRun.ms.toFixed(0)} ms)   ratio ${(skRun.mbPerSecond / pgRun.mbPerSecond).toFixed(2)}x`)
    }
    const skBest = Math.max(...skRates)
    const pgBest = Math.max(...pgRates)
    console.log(`    best: safekeeper ${fmtRate(skBest)}, postgres walsender ${fmtRate(pgBest)}; safekeeper/postgres ${(skBest / pgBest).toFixed(2)}x best-vs-best, ${median(skRates.map((r, i) => r / pgRates[i]!)).toFixed(2)}x median of rounds (aim >= ${SEND_RATIO_AIM}x)`)
  } finally {
    // Both stop their processes by pid (SIGTERM/SIGINT, then SIGKILL after a grace period).
    if (postgres !== undefined) await postgres.destroy()
    if (cluster !== undefined) await cluster.stop()
    rmSync(directory, { recursive: true, force: true })
  }
}

// ---- the disk's own floor ----

interface FsyncProbe {
  readonly ops: number
  readonly opsPerSecond: number
  readonly meanUs: number
  readonly p50Us: number
  readonly p99Us: number
}

/**
 * 8 KiB write + fdatasync in a loop over a segment-sized file written full of zeros and fsynced
 * first, so each fdatasync flushes data only, with no size change to journal: the way the
 * safekeeper (and Postgres) fill preallocated segments.
 */
function probeFdatasync(file: string): FsyncProbe {
  const block = Buffer.alloc(FSYNC_PROBE_BLOCK_BYTES, 0x5a)
  const fd = openSync(file, "w")
  const samplesUs: number[] = []
  try {
    const zeros = Buffer.alloc(MIB)
    for (let offset = 0; offset < SEGMENT_BYTES; offset += zeros.length) writeSync(fd, zeros, 0, zeros.length, offset)
    fsyncSync(fd)
    const startedMs = performance.now()
    let nowMs = startedMs
    let offset = 0
    // Bounded by the duration and by FSYNC_PROBE_OPS_MAX.
    while (nowMs - startedMs < FSYNC_PROBE_DURATION_MS && samplesUs.length < FSYNC_PROBE_OPS_MAX) {
      const opStartMs = nowMs
      writeSync(fd, block, 0, block.length, offset)
      fdatasyncSync(fd)
      offset = (offset + block.length) % SEGMENT_BYTES
      nowMs = performance.now()
      samplesUs.push((nowMs - opStartMs) * 1000)
    }
    const totalMs = nowMs - startedMs
    const sorted = samplesUs.sort((a, b) => a - b)
    return {
      ops: sorted.length,
      opsPerSecond: sorted.length / (totalMs / 1000),
      meanUs: (totalMs * 1000) / sorted.length,
      p50Us: quantile(sorted, 0.5),
      p99Us: quantile(sorted, 0.99)
    }
  } finally {
    closeSync(fd)
    rmSync(file, { force: true })
  }
}

function printFsync(label: string, probe: FsyncProbe): void {
  console.log(`  ${label.padEnd(22)} 8 KiB write+fdatasync: ${Math.round(probe.opsPerSecond).toString().padStart(6)} ops/s, ${fmtUs(probe.meanUs)} mean, ${fmtUs(probe.p50Us)} p50, ${fmtUs(probe.p99Us)} p99 (${probe.ops} ops)`)
}

// ---- ingest ----

interface PregeneratedWal {
  /** Where a fresh timeline's first term starts (the proposer's default initial LSN). */
  readonly startLsn: number
  readonly chunks: ReadonlyArray<Uint8Array>
}

/** syntheticWalSource's WAL for a fresh timeline, drained to memory before anything is timed. */
function pregenerate(totalBytes: number, chunkBytesMax: number): PregeneratedWal {
  const startLsn = defaultInitialLsn(SEGMENT_BYTES)
  const factory = syntheticWalSource({
    segmentSizeBytes: SEGMENT_BYTES,
    systemId: SYNTHETIC_SYSTEM_ID,
    pgVersion: 15,
    rateBytesPerSecond: 0,
    totalBytes,
    messageBytes: SYNTHETIC_MESSAGE_BYTES,
    chunkBytesMax
  })
  const chunks = Effect.runSync(Effect.gen(function* () {
    const source = yield* factory({ startLsn, prevLsn: undefined })
    const out: Uint8Array[] = []
    let endLsn: number = startLsn
    // One pass per chunk; the source ends at totalBytes.
    for (;;) {
      const chunk = yield* source.next
      if (chunk === undefined) return out
      assert(chunk.startLsn === endLsn, "synthetic chunks are contiguous")
      out.push(chunk.bytes)
      endLsn += chunk.bytes.byteLength
    }
  }))
  return { startLsn, chunks }
}

/** Pregenerated chunks replayed `chunkGroupCount` at a time; paced when the rate is above 0. */
interface IngestSource {
  readonly wal: PregeneratedWal
  readonly rateBytesPerSecond: number
  readonly chunkGroupCount: number
}

interface IngestOptions {
  readonly addresses: ReadonlyArray<string>
  readonly pids: ReadonlyArray<number>
  readonly timelineId: TimelineId
  readonly source: IngestSource
  /** The source ends this long after it starts (the term start), or when its WAL runs out. */
  readonly durationMs: number
  readonly timeoutMs: number
}

interface IngestResult {
  readonly timelineId: TimelineId
  readonly termStartLsn: number
  readonly commitLsn: number
  readonly committedBytes: number
  readonly seconds: number
  readonly chunks: number
  readonly latency: { readonly p50Us: number; readonly p99Us: number; readonly maxUs: number }
  /** CPU ms per committed MB: this process (the proposer) and each safekeeper. */
  readonly proposerCpuMsPerMb: number
  readonly safekeeperCpuMsPerMb: ReadonlyArray<number>
  /** CPU seconds per wall second, the same processes. */
  readonly proposerCpu: number
  readonly safekeeperCpu: ReadonlyArray<number>
}

/** Chunk ends and when they were produced, in LSN order; `head` is the oldest not yet committed. */
interface ChunkStamps {
  readonly endLsns: number[]
  readonly producedMs: number[]
  head: number
  startedMs: number | undefined
}

async function ingest(options: IngestOptions): Promise<IngestResult> {
  const stamps: ChunkStamps = { endLsns: [], producedMs: [], head: 0, startedMs: undefined }
  const latenciesUs: number[] = []
  let lastCommitMs: number | undefined
  const noteCommit = (commitLsn: number) => {
    const { endLsns, producedMs } = stamps
    if (stamps.head >= endLsns.length || endLsns[stamps.head]! > commitLsn) return
    const nowMs = performance.now()
    // One pass per chunk the new commit_lsn covers.
    while (stamps.head < endLsns.length && endLsns[stamps.head]! <= commitLsn) {
      latenciesUs.push((nowMs - producedMs[stamps.head]!) * 1000)
      stamps.head++
    }
    lastCommitMs = nowMs
  }

  const cpuBefore = process.cpuUsage()
  const skCpuBefore = options.pids.map(processCpuMs)
  const wallStartedMs = performance.now()
  const program = runProposer({
    tenantId: TENANT_ID,
    timelineId: options.timelineId,
    safekeepers: options.addresses,
    systemId: SYNTHETIC_SYSTEM_ID,
    quorumTimeoutUs: 30_000_000,
    walSource: replaySource(options.source, options.durationMs, stamps),
    onProgress: (progress: ProposerProgress) => noteCommit(progress.commitLsn)
  }).pipe(Effect.timeoutOption(Duration.millis(options.timeoutMs)))
  const exit = await Effect.runPromiseExit(Effect.provide(program, Layer.provideMerge(pgTransportLayer, liveLayer({ log: { levelMin: "warn" } }))))
  const wallMs = performance.now() - wallStartedMs
  const cpu = process.cpuUsage(cpuBefore)
  const skCpuMs = options.pids.map((pid, i) => processCpuMs(pid) - skCpuBefore[i]!)
  const what = `ingest on timeline ${options.timelineId}`
  if (Exit.isFailure(exit)) throw new Error(`${what} failed:\n${Cause.pretty(exit.cause)}`)
  if (Option.isNone(exit.value)) throw new Error(`${what} did not finish within ${options.timeoutMs} ms`)
  const result = exit.value.value
  // The proposer may finish in the same step that moved commit_lsn last, before a Progress.
  noteCommit(result.commitLsn)
  if (stamps.startedMs === undefined || lastCommitMs === undefined) throw new Error(`${what}: nothing was committed`)
  if (stamps.head !== stamps.endLsns.length) throw new Error(`${what}: ${stamps.endLsns.length - stamps.head} chunks never seen committed (commit ${formatLsn(result.commitLsn)})`)
  const committedBytes = result.commitLsn - result.termStartLsn
  const committedMb = committedBytes / 1e6
  const sorted = latenciesUs.sort((a, b) => a - b)
  const proposerCpuMs = (cpu.user + cpu.system) / 1000
  return {
    timelineId: options.timelineId,
    termStartLsn: result.termStartLsn,
    commitLsn: result.commitLsn,
    committedBytes,
    seconds: (lastCommitMs - stamps.startedMs) / 1000,
    chunks: sorted.length,
    latency: { p50Us: quantile(sorted, 0.5), p99Us: quantile(sorted, 0.99), maxUs: sorted[sorted.length - 1] ?? 0 },
    proposerCpuMsPerMb: proposerCpuMs / committedMb,
    safekeeperCpuMsPerMb: skCpuMs.map((ms) => ms / committedMb),
    proposerCpu: proposerCpuMs / wallMs,
    safekeeperCpu: skCpuMs.map((ms) => ms / wallMs)
  }
}

/**
 * The WalSource the proposer pumps: pregenerated chunks, stamped with their end LSN and the
 * time they were produced. Paced: chunk n is due when the bytes up to its end are due at the
 * rate; asked for early, it is handed over when due (and stamped then); asked for late, because
 * the pump was held back by uncommitted WAL, it is stamped with its due time.
 */
function replaySource(source: IngestSource, durationMs: number, stamps: ChunkStamps): WalSourceFactory {
  const { wal, rateBytesPerSecond, chunkGroupCount } = source
  return (start) =>
    Effect.sync((): WalSource => {
      // Each ingest row is a fresh timeline, so its first term starts where the WAL was generated.
      assert(start.startLsn === wal.startLsn && start.prevLsn === undefined, `a fresh timeline starts at ${formatLsn(wal.startLsn)}, got ${formatLsn(start.startLsn)}`)
      const startedMs = performance.now()
      stamps.startedMs = startedMs
      let index = 0
      let endLsn: number = wal.startLsn
      const stamp = (chunk: WalStreamChunk, producedMs: number): WalStreamChunk => {
        stamps.endLsns.push(chunk.startLsn + chunk.bytes.byteLength)
        stamps.producedMs.push(producedMs)
        return chunk
      }
      return {
        next: Effect.suspend(() => {
          const nowMs = performance.now()
          if (index >= wal.chunks.length || nowMs - startedMs >= durationMs) return Effect.succeed(undefined)
          const bytes = concatBytes(wal.chunks.slice(index, index + chunkGroupCount))
          index += chunkGroupCount
          const chunk: WalStreamChunk = { startLsn: Lsn(endLsn), bytes }
          endLsn += bytes.byteLength
          if (rateBytesPerSecond <= 0) return Effect.succeed(stamp(chunk, nowMs))
          const dueMs = startedMs + ((endLsn - wal.startLsn) * 1000) / rateBytesPerSecond
          if (dueMs <= nowMs) return Effect.succeed(stamp(chunk, dueMs))
          return Effect.andThen(Effect.sleep(Duration.millis(dueMs - nowMs)), Effect.sync(() => stamp(chunk, performance.now())))
        })
      }
    })
}

function printIngest(label: string, result: IngestResult): void {
  const mbPerSecond = result.committedBytes / 1e6 / result.seconds
  console.log(`    ${label.padEnd(36)} ${fmtRate(mbPerSecond)} committed (${(result.committedBytes / MIB).toFixed(0)} MiB in ${result.seconds.toFixed(1)} s, ${result.chunks} chunks)  commit latency p50 ${fmtUs(result.latency.p50Us)} p99 ${fmtUs(result.latency.p99Us)} max ${fmtUs(result.latency.maxUs)}`)
  console.log(`    ${"".padEnd(36)} cpu ms per MB: proposer ${result.proposerCpuMsPerMb.toFixed(1)}, safekeepers ${result.safekeeperCpuMsPerMb.map((c) => c.toFixed(1)).join(" ")}; cpus busy: proposer ${result.proposerCpu.toFixed(2)}, safekeepers ${result.safekeeperCpu.map((c) => c.toFixed(2)).join(" ")}`)
}

function timelineIdOf(n: number): TimelineId {
  return TimelineId(n.toString(16).padStart(32, "0"))
}

// ---- send ----

interface ReceiveRun {
  readonly ms: number
  readonly mbPerSecond: number
  /** CPU the server process spent meanwhile (the safekeeper's; 0 when not known). */
  readonly serverCpuMs: number
}

/** Times one `pg_receivewal -D DIR -E endLsn` from the segment holding startLsn; DIR is removed after. */
async function receiveWal(dir: string, startLsn: number, endLsn: number, connection: ReadonlyArray<string>, serverPid: number | undefined): Promise<ReceiveRun> {
  mkdirSync(dir, { recursive: true })
  // pg_receivewal starts at the beginning of the newest .partial it finds; an empty one is
  // accepted and filled (receivelog.c open_walfile).
  writeFileSync(join(dir, `${segmentFileName(1, segmentNoOf(startLsn, SEGMENT_BYTES), SEGMENT_BYTES)}.partial`), "")
  // pg_receivewal stops once it has received WAL past -E (endpos < xlogpos).
  const args = ["-D", dir, "-E", formatLsn(endLsn - 1), "--no-sync", "--no-password", ...connection]
  const cpuBefore = serverPid === undefined ? 0 : processCpuMs(serverPid)
  const startedMs = performance.now()
  try {
    await runBounded(pgBinary("pg_receivewal"), args, SEND_TIMEOUT_MS)
    const ms = performance.now() - startedMs
    return { ms, mbPerSecond: (endLsn - startLsn) / 1e6 / (ms / 1000), serverCpuMs: serverPid === undefined ? 0 : processCpuMs(serverPid) - cpuBefore }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/** Fills a fresh primary with at least `bytes` of logical-message WAL from a segment start on, flushed. */
async function generatePgWal(postgres: PostgresCluster, bytes: number): Promise<{ startLsn: number; endLsn: number }> {
  const first = lsnNumber(await postgres.sql("select pg_current_wal_insert_lsn()"))
  const startLsn = segmentStartLsn(segmentNoOf(first, SEGMENT_BYTES), SEGMENT_BYTES)
  const endLsn = startLsn + bytes
  // One statement per PG_MESSAGES_PER_STATEMENT records, until the WAL reaches past endLsn.
  for (let statement = 0; ; statement++) {
    if (statement >= PG_GENERATE_STATEMENTS_MAX) throw new Error(`postgres: ${PG_GENERATE_STATEMENTS_MAX} statements did not write ${bytes} bytes of WAL`)
    const insertLsn = lsnNumber(await postgres.sql("select pg_current_wal_insert_lsn()"))
    if (insertLsn > endLsn + MIB) break
    await postgres.sql(`select count(pg_logical_emit_message(false, 'b', repeat('x', ${SYNTHETIC_MESSAGE_BYTES}))) from generate_series(1, ${PG_MESSAGES_PER_STATEMENT})`)
  }
  // A transactional message takes an xid, so its commit flushes everything before it.
  await postgres.sql("select pg_logical_emit_message(true, 'b', 'end')")
  const flushLsn = lsnNumber(await postgres.sql("select pg_current_wal_flush_lsn()"))
  if (flushLsn <= endLsn) throw new Error(`postgres flushed only to ${formatLsn(flushLsn)}, need past ${formatLsn(endLsn)}`)
  return { startLsn, endLsn }
}

// ---- helpers ----

/** Runs a command to completion; kills it by pid after `timeoutMs`; a non-zero exit is an error with its stderr. */
function runBounded(command: string, args: ReadonlyArray<string>, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, [...args], { stdio: ["ignore", "ignore", "pipe"] })
    let stderr = ""
    child.stderr.setEncoding("utf8")
    child.stderr.on("data", (text: string) => {
      if (stderr.length < STDERR_KEPT_BYTES_MAX) stderr += text
    })
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      child.kill("SIGKILL")
    }, timeoutMs)
    child.once("error", (error) => {
      clearTimeout(timer)
      reject(error)
    })
    child.once("exit", (code, signal) => {
      clearTimeout(timer)
      if (timedOut) reject(new Error(`${command} ${args.join(" ")} did not finish within ${timeoutMs} ms: ${stderr}`))
      else if (code !== 0) reject(new Error(`${command} ${args.join(" ")} failed (exit ${code ?? signal}): ${stderr}`))
      else resolve()
    })
  })
}

/** Resolves once `address` accepts a TCP connection; polls every PG_LISTEN_POLL_MS up to `timeoutMs`. */
async function waitForListener(address: string, timeoutMs: number): Promise<void> {
  const deadlineMs = performance.now() + timeoutMs
  // One pass per attempt, bounded by the deadline.
  while (performance.now() < deadlineMs) {
    const accepted = await new Promise<boolean>((resolve) => {
      const socket = connect({ host: hostOf(address), port: Number(portOf(address)) })
      socket.once("connect", () => {
        socket.destroy()
        resolve(true)
      })
      socket.once("error", () => {
        socket.destroy()
        resolve(false)
      })
    })
    if (accepted) return
    await new Promise((resolve) => setTimeout(resolve, PG_LISTEN_POLL_MS))
  }
  throw new Error(`nothing listens on ${address} after ${timeoutMs} ms`)
}

let clockTicksPerSecond: number | undefined

/** utime + stime of a process from /proc/PID/stat, in ms; 0 when it cannot be read. */
function processCpuMs(pid: number): number {
  if (pid === 0) return 0
  try {
    if (clockTicksPerSecond === undefined) {
      const ticks = Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout.trim())
      clockTicksPerSecond = Number.isFinite(ticks) && ticks > 0 ? ticks : 100
    }
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
    // Fields after the command name (which may hold spaces) in parentheses: utime is 14th, stime 15th.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / clockTicksPerSecond
  } catch {
    return 0
  }
}

function lsnNumber(text: string): number {
  const match = /^([0-9A-F]{1,8})\/([0-9A-F]{1,8})$/i.exec(text.trim())
  if (match === null) throw new Error(`not an LSN: "${text}"`)
  return parseInt(match[1]!, 16) * 0x1_0000_0000 + parseInt(match[2]!, 16)
}

const hostOf = (address: string): string => address.slice(0, address.lastIndexOf(":"))
const portOf = (address: string): string => address.slice(address.lastIndexOf(":") + 1)

function quantile(sorted: ReadonlyArray<number>, q: number): number {
  if (sorted.length === 0) return 0
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!
}

function median(values: ReadonlyArray<number>): number {
  return quantile([...values].sort((a, b) => a - b), 0.5)
}

const fmtRate = (mbPerSecond: number): string => `${mbPerSecond.toFixed(1).padStart(7)} MB/s`

function fmtUs(us: number): string {
  return us >= 10_000 ? `${(us / 1000).toFixed(1).padStart(7)} ms` : `${us.toFixed(0).padStart(7)} µs`
}
