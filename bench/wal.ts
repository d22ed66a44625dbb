import { Result } from "effect"
import { crc32c } from "../core/wal/crc32c.js"
import { WalDecoder } from "../core/wal/decoder.js"
import { WalGenerator } from "../core/wal/generator.js"
import { DEFAULT_WAL_SEGMENT_SIZE_BYTES, Lsn } from "../core/wal/lsn.js"

/**
 * WAL decoding throughput against plain reads of the same bytes, in the same run: the
 * generated WAL is pushed to the decoder in MAX_SEND_SIZE chunks (what a safekeeper receives)
 * and, as baselines, copied chunk by chunk into a buffer (memcpy) and summed as 32-bit words
 * (a JavaScript pass that touches every byte). Two record mixes: small records, as an OLTP
 * primary writes, and large ones. CRC32C is measured alone on the same chunk size.
 */
const WAL_BYTES = 128 * 1024 * 1024
const CHUNK_BYTES = 128 * 1024
const ROUNDS = 3
const SEGMENT = DEFAULT_WAL_SEGMENT_SIZE_BYTES

export async function benchWal(): Promise<void> {
  console.log(`wal: ${WAL_BYTES / 1024 / 1024} MiB of generated WAL per mix, pushed in ${CHUNK_BYTES / 1024} KiB chunks, best of ${ROUNDS}`)
  for (const [name, messageBytes] of [["small records (~160 B)", (i: number) => 80 + (i * 37) % 160], ["large records (~64 KiB)", (i: number) => 32_768 + (i * 7919) % 65_536]] as const) {
    const { chunks, records } = generate(messageBytes)
    const copyMs = best(() => copyAll(chunks))
    let sumSink = 0
    const sumMs = best(() => {
      sumSink ^= sumAll(chunks)
    })
    let decoded = 0
    const decodeMs = best(() => {
      decoded = decodeAll(chunks)
    })
    if (decoded !== records) throw new Error(`decoded ${decoded} records, generated ${records}`)
    const mbps = (ms: number) => (WAL_BYTES / 1e6 / (ms / 1000)).toFixed(0)
    console.log(`  ${name}: ${records} records`)
    console.log(`    decode      ${mbps(decodeMs).padStart(6)} MB/s  (${(records / (decodeMs / 1000) / 1e6).toFixed(2)} M records/s)`)
    console.log(`    memcpy      ${mbps(copyMs).padStart(6)} MB/s  decode/memcpy = ${(copyMs / decodeMs).toFixed(3)}`)
    console.log(`    sum u32     ${mbps(sumMs).padStart(6)} MB/s  decode/sum    = ${(sumMs / decodeMs).toFixed(3)}  (sum ${sumSink >>> 0})`)
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
}

function generate(messageBytes: (index: number) => number): { chunks: Uint8Array[]; records: number } {
  const generator = new WalGenerator({
    startLsn: Lsn(SEGMENT + 40),
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

function decodeAll(chunks: ReadonlyArray<Uint8Array>): number {
  const decoder = Result.getOrThrow(WalDecoder.make({ startLsn: Lsn(SEGMENT + 40), segmentSizeBytes: SEGMENT }))
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
