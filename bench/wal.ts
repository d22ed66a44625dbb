import { spawnSync } from "node:child_process"
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { PerformanceObserver } from "node:perf_hooks"
import { crc32c as nativeCrc32c } from "@node-rs/crc32"
import { Result } from "effect"
import { MAX_SEND_SIZE_BYTES } from "../core/protocol/consensus.js"
import { crc32c, crc32cSlicing, NATIVE_CRC_BYTES_MIN } from "../core/wal/crc32c.js"
import { WalDecoder } from "../core/wal/decoder.js"
import { WalGenerator } from "../core/wal/generator.js"
import { DEFAULT_WAL_SEGMENT_SIZE_BYTES, formatLsn, Lsn, parseSegmentFileName, XLOG_BLCKSZ_BYTES } from "../core/wal/lsn.js"
import { parseWaldumpStats, pgBinary } from "../live/testing/postgres.js"
import { makePgbenchWal, type WalSegmentSet } from "./pgbench-wal.js"

/**
 * WAL decoding throughput (DESIGN.md §9), each figure beside a baseline measured in the same
 * run:
 * - real PostgreSQL 15 WAL: a throwaway cluster runs `pgbench -i` then a short `pgbench -N`
 *   (bench/pgbench-wal.ts); the completed segments of each phase are decoded by `scan` (the
 *   ingest path: record ends only, in MAX_SEND_SIZE chunks as a safekeeper receives them) and
 *   by `push` (the materialising path of `sk wal dump`), against `pg_waldump --stats` over the
 *   same files. Both read the same bytes; ours are in memory, pg_waldump's in the page cache.
 * - generated WAL (two record mixes, small and large), against copying the same chunks
 *   (memcpy) and summing them as 32-bit words (a JavaScript pass that touches every byte);
 * - CRC32C by input size, slicing-by-8 against the native call, to place NATIVE_CRC_BYTES_MIN.
 * Environment: SK_BENCH_PGBENCH_SECONDS (default 20), SK_BENCH_PGBENCH_SCALE (default 1),
 * SK_BENCH_PGBENCH_CLIENTS (default 2).
 */
const WAL_BYTES = 128 * 1024 * 1024
const CHUNK_BYTES = MAX_SEND_SIZE_BYTES
const ROUNDS = 3
const REAL_WARMUP_ROUNDS = 3
const REAL_ROUNDS = 9
const SEGMENT = DEFAULT_WAL_SEGMENT_SIZE_BYTES

export async function benchWal(): Promise<void> {
  await benchRealWal()
  benchGeneratedWal()
  benchCrc()
}

// ------------------------------------------------------------------ real WAL

async function benchRealWal(): Promise<void> {
  const durationSeconds = envNumber("SK_BENCH_PGBENCH_SECONDS", 20)
  const scale = envNumber("SK_BENCH_PGBENCH_SCALE", 1)
  const clients = envNumber("SK_BENCH_PGBENCH_CLIENTS", 2)
  console.log(`wal: real PostgreSQL 15 WAL (pgbench -i -s ${scale}, then pgbench -N -T ${durationSeconds} -c ${clients}), ` +
    `decoded in ${CHUNK_BYTES / 1024} KiB chunks; best of ${REAL_ROUNDS} after ${REAL_WARMUP_ROUNDS} warm-up rounds (median in brackets)`)
  const started = performance.now()
  const wal = await makePgbenchWal({ scale, durationSeconds, clients })
  console.log(`  PostgreSQL started, pgbench run, segments copied and PostgreSQL stopped in ${((performance.now() - started) / 1000).toFixed(1)} s`)
  try {
    if (wal.segmentSizeBytes !== SEGMENT) throw new Error(`wal_segment_size ${wal.segmentSizeBytes}, expected ${SEGMENT}`)
    const startup = timeRounds(() => runWaldump(["--version"]))
    for (const [name, set] of [["pgbench -N (OLTP: small records)", wal.oltp], ["pgbench -i (bulk load: large records)", wal.load]] as const) {
      benchSegments(name, set, startup.best)
    }
  } finally {
    wal.remove()
  }
  console.log()
}

function benchSegments(name: string, set: WalSegmentSet, startupMs: number): void {
  const files = set.names.map((file) => readFileSync(join(set.directory, file)))
  const totalBytes = files.reduce((sum, file) => sum + file.length, 0)
  const first = parseSegmentFileName(set.names[0]!, SEGMENT)
  if (first === undefined) throw new Error(`${set.names[0]} is not a segment name`)
  const startLsn = Lsn(first.segmentNo * SEGMENT)
  const chunks = files.flatMap((file) => {
    const pieces: Uint8Array[] = []
    for (let at = 0; at < file.length; at += CHUNK_BYTES) pieces.push(file.subarray(at, at + CHUNK_BYTES))
    return pieces
  })
  const makeDecoder = () => Result.getOrThrow(WalDecoder.make({ startLsn, segmentSizeBytes: SEGMENT }))

  const waldumpArgs = ["--stats", "-p", set.directory, set.names[0]!, set.names.at(-1)!]
  const stats = parseWaldumpStats(runWaldump(waldumpArgs))
  const waldump = timeRounds(() => runWaldump(waldumpArgs))

  let scanned = 0
  const scan = measured(makeDecoder, chunks, "scan", () => {
    const decoder = makeDecoder()
    let records = 0
    for (const chunk of chunks) records += decoder.scan(chunk)
    if (decoder.error !== undefined) throw new Error(`scan stopped: ${decoder.error.message}`)
    scanned = records
  })
  let pushed = 0
  let recordBytes = 0
  const push = measured(makeDecoder, chunks, "push", () => {
    const decoder = makeDecoder()
    let records = 0
    let bytes = 0
    for (const chunk of chunks) {
      for (const record of decoder.push(chunk)) {
        records++
        bytes += record.totalLengthBytes
      }
    }
    if (decoder.error !== undefined) throw new Error(`push stopped: ${decoder.error.message}`)
    pushed = records
    recordBytes = bytes
  })
  // Different record counts would make the ratios compare different work.
  if (scanned !== stats.total || pushed !== stats.total) {
    throw new Error(`${name}: scan found ${scanned} records, push ${pushed}, pg_waldump ${stats.total}`)
  }

  const mbps = (ms: number) => totalBytes / 1e6 / (ms / 1000)
  const mrps = (ms: number) => stats.total / 1e6 / (ms / 1000)
  const row = (label: string, times: Timing) =>
    `    ${label.padEnd(22)}${mbps(times.best).toFixed(0).padStart(6)} MB/s (${mbps(times.median).toFixed(0)})` +
    `${mrps(times.best).toFixed(2).padStart(8)} M records/s (${mrps(times.median).toFixed(2)})`
  const waldumpNet = { best: Math.max(0.001, waldump.best - startupMs), median: Math.max(0.001, waldump.median - startupMs) }
  console.log(`  ${name}: ${set.names.length} segments ${set.names[0]}..${set.names.at(-1)}, ${(totalBytes / 1e6).toFixed(1)} MB, ` +
    `${stats.total} records averaging ${(recordBytes / stats.total).toFixed(0)} B (${(stats.fpiBytes / 1e6).toFixed(1)} MB of full-page images)`)
  console.log(`${row("scan (ingest path)", scan.timing)}   ${allocationText(scan)}`)
  console.log(`${row("push (materialising)", push.timing)}   ${allocationText(push)}`)
  console.log(`${row("pg_waldump --stats", waldumpNet)}   (its ${startupMs.toFixed(1)} ms process start-up subtracted; ${mbps(waldump.best).toFixed(0)} MB/s with it)`)
  const ratio = (ours: Timing, key: "best" | "median") => (waldumpNet[key] / ours[key]).toFixed(2)
  console.log(`    scan/pg_waldump = ${ratio(scan.timing, "best")} (${ratio(scan.timing, "median")})   push/pg_waldump = ${ratio(push.timing, "best")} (${ratio(push.timing, "median")})`)
}

function allocationText(allocation: Allocation): string {
  const bytes = allocation.allocatedBytes
  const perRecord = bytes === undefined ? "" : `, ${(bytes / allocation.records).toFixed(2)} B/record, ${(bytes / allocation.pages).toFixed(0)} B/page allocated`
  return `second half: ${allocation.gcCount} GCs${perRecord}`
}

function runWaldump(args: ReadonlyArray<string>): string {
  const result = spawnSync(pgBinary("pg_waldump"), [...args], { encoding: "utf8", maxBuffer: 16 * 1024 * 1024 })
  if (result.status !== 0) throw new Error(`pg_waldump ${args.join(" ")} failed (exit ${result.status ?? result.signal}): ${result.stderr}`)
  return result.stdout
}

interface Timing {
  readonly best: number
  readonly median: number
}

function timeRounds(run: () => void): Timing {
  for (let round = 0; round < REAL_WARMUP_ROUNDS; round++) run()
  const times: number[] = []
  for (let round = 0; round < REAL_ROUNDS; round++) {
    const start = performance.now()
    run()
    times.push(performance.now() - start)
  }
  times.sort((a, b) => a - b)
  return { best: times[0]!, median: times[Math.floor(times.length / 2)]! }
}

/**
 * Times `run`, then decodes once more with a fresh decoder, counting garbage collections
 * over the second half of the chunks. With --expose-gc (npm run bench), and no collection
 * there, the heap's growth is what that half allocated: the first half warms the decoder
 * (its record-end arrays grow to the chunk's record count once), as on a long-lived timeline.
 */
function measured(makeDecoder: () => WalDecoder, chunks: ReadonlyArray<Uint8Array>, mode: "scan" | "push", run: () => void): { timing: Timing } & Allocation {
  return { timing: timeRounds(run), ...allocationOf(makeDecoder, chunks, mode) }
}

interface Allocation {
  readonly gcCount: number
  readonly allocatedBytes: number | undefined
  /** Records and pages in the measured half. */
  readonly records: number
  readonly pages: number
}

function allocationOf(makeDecoder: () => WalDecoder, chunks: ReadonlyArray<Uint8Array>, mode: "scan" | "push"): Allocation {
  const gc = (globalThis as { gc?: () => void }).gc
  const decoder = makeDecoder()
  const feed = (chunk: Uint8Array) => (mode === "scan" ? decoder.scan(chunk) : decoder.push(chunk).length)
  const half = Math.floor(chunks.length / 2)
  for (let index = 0; index < half; index++) feed(chunks[index]!)
  gc?.()
  let gcCount = 0
  const observer = new PerformanceObserver((list) => {
    gcCount += list.getEntries().length
  })
  observer.observe({ entryTypes: ["gc"] })
  const heapBefore = process.memoryUsage().heapUsed
  let records = 0
  for (let index = half; index < chunks.length; index++) records += feed(chunks[index]!)
  const heapAfter = process.memoryUsage().heapUsed
  // GC entries are delivered asynchronously; take whatever is already queued.
  gcCount += observer.takeRecords().length
  observer.disconnect()
  const allocatedBytes = gc !== undefined && gcCount === 0 ? Math.max(0, heapAfter - heapBefore) : undefined
  return { gcCount, allocatedBytes, records, pages: (chunks.length - half) * chunks[0]!.length / XLOG_BLCKSZ_BYTES }
}

function envNumber(name: string, fallback: number): number {
  const text = process.env[name]
  if (text === undefined || text === "") return fallback
  const value = Number(text)
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name}=${text} is not a positive number`)
  return value
}

// ------------------------------------------------------------------ generated WAL

/** Above 2^32, as a long-lived primary's WAL is: LSNs there are doubles, not small integers, in V8. */
const GENERATED_START_LSN = Lsn(5 * 2 ** 32 + SEGMENT + 40)

function benchGeneratedWal(): void {
  console.log(`wal: ${WAL_BYTES / 1024 / 1024} MiB of generated WAL per mix from ${formatLsn(GENERATED_START_LSN)}, pushed in ${CHUNK_BYTES / 1024} KiB chunks, best of ${ROUNDS}`)
  for (const [name, messageBytes] of [["small records (~160 B)", (i: number) => 80 + (i * 37) % 160], ["large records (~64 KiB)", (i: number) => 32_768 + (i * 7919) % 65_536]] as const) {
    const { chunks, records } = generate(messageBytes)
    const copyMs = best(() => copyAll(chunks))
    let sumSink = 0
    const sumMs = best(() => {
      sumSink ^= sumAll(chunks)
    })
    let scanned = 0
    const scanMs = best(() => {
      scanned = scanAll(chunks)
    })
    let decoded = 0
    const decodeMs = best(() => {
      decoded = decodeAll(chunks)
    })
    if (decoded !== records || scanned !== records) throw new Error(`decoded ${decoded} records, scanned ${scanned}, generated ${records}`)
    const mbps = (ms: number) => (WAL_BYTES / 1e6 / (ms / 1000)).toFixed(0)
    console.log(`  ${name}: ${records} records`)
    const allocation = allocationOf(() => Result.getOrThrow(WalDecoder.make({ startLsn: GENERATED_START_LSN, segmentSizeBytes: SEGMENT })), chunks, "scan")
    console.log(`    scan        ${mbps(scanMs).padStart(6)} MB/s  (${(records / (scanMs / 1000) / 1e6).toFixed(2)} M records/s)  ${allocationText(allocation)}`)
    console.log(`    decode      ${mbps(decodeMs).padStart(6)} MB/s  (${(records / (decodeMs / 1000) / 1e6).toFixed(2)} M records/s; push, records materialised)`)
    console.log(`    memcpy      ${mbps(copyMs).padStart(6)} MB/s  scan/memcpy = ${(copyMs / scanMs).toFixed(3)}  decode/memcpy = ${(copyMs / decodeMs).toFixed(3)}`)
    console.log(`    sum u32     ${mbps(sumMs).padStart(6)} MB/s  scan/sum    = ${(sumMs / scanMs).toFixed(3)}  decode/sum    = ${(sumMs / decodeMs).toFixed(3)}  (sum ${sumSink >>> 0})`)
  }
  const { chunks } = generate((i) => 32_768 + (i * 7919) % 65_536)
  for (const size of [CHUNK_BYTES, 8192, 256]) {
    const pieces = chunks.slice(0, 256).map((chunk) => chunk.subarray(0, size))
    const total = pieces.length * size
    let sink = 0
    const ms = best(() => {
      for (let repeat = 0; repeat < Math.max(1, Math.floor(WAL_BYTES / 4 / total)); repeat++) {
        for (const piece of pieces) sink ^= crc32c(piece)
      }
    })
    const bytes = Math.max(1, Math.floor(WAL_BYTES / 4 / total)) * total
    console.log(`  crc32c on ${String(size).padStart(6)} B pieces: ${(bytes / 1e6 / (ms / 1000)).toFixed(0)} MB/s (checksum ${sink >>> 0})`)
  }
  console.log()
}

function generate(messageBytes: (index: number) => number): { chunks: Uint8Array[]; records: number } {
  const generator = new WalGenerator({
    startLsn: GENERATED_START_LSN,
    segmentSizeBytes: SEGMENT,
    systemId: 1n,
    pgVersion: 15,
    timelineId: 1
  })
  const wal = new Uint8Array(WAL_BYTES)
  const payload = new Uint8Array(200_000).map((_, i) => (i * 131) & 0xff)
  let records = 0
  let offset = 0
  // Stops at the first record that would run past WAL_BYTES.
  for (let i = 0; ; i++) {
    const record = generator.appendLogicalMessage("bench", payload.subarray(0, messageBytes(i)))
    if (offset + record.bytes.length > WAL_BYTES) break
    wal.set(record.bytes, offset)
    offset += record.bytes.length
    records += 1
  }
  const chunks: Uint8Array[] = []
  for (let at = 0; at < WAL_BYTES; at += CHUNK_BYTES) chunks.push(wal.subarray(at, at + CHUNK_BYTES))
  return { chunks, records }
}

function scanAll(chunks: ReadonlyArray<Uint8Array>): number {
  const decoder = Result.getOrThrow(WalDecoder.make({ startLsn: GENERATED_START_LSN, segmentSizeBytes: SEGMENT }))
  let records = 0
  for (const chunk of chunks) records += decoder.scan(chunk)
  return records
}

function decodeAll(chunks: ReadonlyArray<Uint8Array>): number {
  const decoder = Result.getOrThrow(WalDecoder.make({ startLsn: GENERATED_START_LSN, segmentSizeBytes: SEGMENT }))
  let records = 0
  for (const chunk of chunks) records += decoder.push(chunk).length
  return records
}

function copyAll(chunks: ReadonlyArray<Uint8Array>): void {
  const target = Buffer.allocUnsafe(CHUNK_BYTES)
  for (const chunk of chunks) target.set(chunk)
}

function sumAll(chunks: ReadonlyArray<Uint8Array>): number {
  let sum = 0
  for (const chunk of chunks) {
    const words = new Uint32Array(chunk.buffer, chunk.byteOffset, chunk.length >>> 2)
    for (let i = 0; i < words.length; i++) sum = (sum + words[i]!) | 0
  }
  return sum
}

function best(run: () => void): number {
  let bestMs = Number.POSITIVE_INFINITY
  for (let round = 0; round < ROUNDS; round++) {
    const start = performance.now()
    run()
    bestMs = Math.min(bestMs, performance.now() - start)
  }
  return bestMs
}

// ------------------------------------------------------------------ CRC crossover

/** Bytes checksummed per size and method: enough for ~10 ms at the slower speed. */
const CRC_BYTES_PER_SIZE = 16 * 1024 * 1024

function benchCrc(): void {
  console.log(`crc32c by input size: slicing-by-8 (JavaScript) against @node-rs/crc32 (native, one view per call as crc32cRange makes it); ` +
    `crc32c goes native from ${NATIVE_CRC_BYTES_MIN} B; best of ${ROUNDS}`)
  const data = new Uint8Array(1024 * 1024).map((_, i) => (i * 131 + (i >>> 7)) & 0xff)
  const view = new DataView(data.buffer)
  let sink = 0
  for (const size of [8, 20, 38, 64, 128, 192, 256, 384, 512, 1024, 8192]) {
    const calls = Math.floor(CRC_BYTES_PER_SIZE / size)
    const slots = Math.floor(data.length / size)
    const slicingMs = best(() => {
      for (let call = 0; call < calls; call++) {
        const at = (call % slots) * size
        sink ^= crc32cSlicing(view, at, at + size)
      }
    })
    const nativeMs = best(() => {
      for (let call = 0; call < calls; call++) {
        const at = (call % slots) * size
        sink ^= nativeCrc32c(new Uint8Array(data.buffer, at, size))
      }
    })
    const cell = (ms: number) => `${(calls * size / 1e6 / (ms / 1000)).toFixed(0).padStart(6)} MB/s ${(ms * 1e6 / calls).toFixed(0).padStart(5)} ns/call`
    console.log(`  ${String(size).padStart(5)} B   slicing-by-8 ${cell(slicingMs)}   native ${cell(nativeMs)}   ` +
      `${slicingMs <= nativeMs ? "slicing" : "native "} faster; crc32c uses ${size < NATIVE_CRC_BYTES_MIN ? "slicing" : "native"}`)
  }
  console.log(`  (checksums xor ${sink >>> 0})`)
}
