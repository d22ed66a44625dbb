// Goal: the synthetic WAL source emits XLOG_SWITCH when told (every N-th record), ends the chunk
// at the switch, reports it, and (split) sends the switch record and its zero padding in two
// chunks; the stream stays contiguous, valid WAL whose switch moves the next record to the next
// segment. Method: pull chunks from an unpaced source (no clock waits) and decode them.
import { Effect, Result } from "effect"
import { describe, expect, test } from "vitest"
import { concatBytes, firstByteDifference } from "../bytes.js"
import { WalDecoder } from "../wal/decoder.js"
import { Lsn } from "../wal/lsn.js"
import { isXlogSwitch } from "../wal/record.js"
import { TEST_SYSTEM_ID } from "../wal/wal-testing.js"
import type { WalStreamChunk } from "./transport.js"
import { type SwitchRecord, syntheticWalSource, type SyntheticWalOptions } from "./wal-source.js"

const SEGMENT_BYTES = 1024 * 1024
const START = Lsn(SEGMENT_BYTES + 40)

function pull(options: Partial<SyntheticWalOptions>, chunkCount: number): { chunks: WalStreamChunk[]; switches: SwitchRecord[] } {
  const switches: SwitchRecord[] = []
  const factory = syntheticWalSource({
    segmentSizeBytes: SEGMENT_BYTES,
    systemId: TEST_SYSTEM_ID,
    pgVersion: 15,
    rateBytesPerSecond: 0,
    messageBytes: 200,
    chunkBytesMax: 4096,
    onSwitch: (record) => switches.push(record),
    ...options
  })
  const chunks = Effect.runSync(Effect.gen(function* () {
    const source = yield* factory({ startLsn: START, prevLsn: undefined })
    const out: WalStreamChunk[] = []
    for (let i = 0; i < chunkCount; i++) {
      const chunk = yield* source.next
      if (chunk === undefined) break
      out.push(chunk)
    }
    return out
  }))
  return { chunks, switches }
}

function decode(chunks: ReadonlyArray<WalStreamChunk>) {
  const decoder = WalDecoder.make({ startLsn: START, segmentSizeBytes: SEGMENT_BYTES, systemId: TEST_SYSTEM_ID, pgVersion: 15 })
  if (Result.isFailure(decoder)) throw new Error("decoder start")
  const records = chunks.flatMap((chunk) => decoder.success.push(chunk.bytes))
  expect(decoder.success.error).toBeUndefined()
  return records
}

function expectContiguous(chunks: ReadonlyArray<WalStreamChunk>): void {
  let lsn: number = START
  for (const chunk of chunks) {
    expect(chunk.startLsn).toBe(lsn)
    lsn += chunk.bytes.byteLength
  }
}

describe("syntheticWalSource with XLOG_SWITCH", () => {
  test("without the option there is no switch", () => {
    const { chunks, switches } = pull({}, 300)
    expect(switches).toHaveLength(0)
    expect(decode(chunks).some((r) => isXlogSwitch(r.rmid, r.info))).toBe(false)
  })

  test("every N-th record is a switch that ends its chunk at the segment end", () => {
    const { chunks, switches } = pull({ switchEveryRecords: 50 }, 60)
    expectContiguous(chunks)
    const records = decode(chunks)
    const switched = records.filter((r) => isXlogSwitch(r.rmid, r.info))
    expect(switched.length).toBeGreaterThanOrEqual(2)
    expect(switches.map((s) => s.startLsn)).toEqual(switched.map((r) => r.startLsn))
    for (const [i, record] of records.entries()) {
      if (isXlogSwitch(record.rmid, record.info)) {
        expect((i + 1) % 50).toBe(0)
        expect(record.nextLsn % SEGMENT_BYTES).toBe(0)
        // The next record starts the next segment, and the chunk ended right there.
        if (i + 1 < records.length) expect(records[i + 1]!.startLsn).toBe(record.nextLsn + 40)
        expect(chunks.some((c) => c.startLsn + c.bytes.byteLength === record.nextLsn)).toBe(true)
      }
    }
    // What onSwitch reports is the record's bytes as streamed.
    const all = concatBytes(chunks.map((c) => c.bytes))
    for (const s of switches) expect(all.subarray(s.startLsn - START, s.endLsn - START)).toEqual(s.bytes)
  })

  test("split: the switch record ends one chunk, its zero padding to the segment end is the next", () => {
    const whole = pull({ switchEveryRecords: 50 }, 60)
    const split = pull({ switchEveryRecords: 50, splitSwitchPadding: true }, 62)
    expectContiguous(split.chunks)
    const [first] = split.switches
    expect(first).toBeDefined()
    const recordChunk = split.chunks.findIndex((c) => c.startLsn + c.bytes.byteLength === first!.endLsn)
    expect(recordChunk).toBeGreaterThanOrEqual(0)
    const padding = split.chunks[recordChunk + 1]!
    expect(padding.startLsn).toBe(first!.endLsn)
    expect(padding.startLsn + padding.bytes.byteLength).toBe(first!.nextLsn)
    expect(padding.bytes.findIndex((b) => b !== 0)).toBe(-1)
    // The same WAL as unsplit, only cut differently.
    const bytes = (chunks: ReadonlyArray<WalStreamChunk>) => concatBytes(chunks.map((c) => c.bytes))
    const a = bytes(whole.chunks)
    const b = bytes(split.chunks)
    const common = Math.min(a.byteLength, b.byteLength)
    expect(common).toBeGreaterThan(first!.nextLsn - START)
    expect(firstByteDifference(b.subarray(0, common), a.subarray(0, common))).toBeUndefined()
  })

  test("a switch every record still makes progress, one segment per chunk", () => {
    const { chunks, switches } = pull({ switchEveryRecords: 1 }, 3)
    expect(switches).toHaveLength(3)
    expect(chunks.map((c) => c.startLsn + c.bytes.byteLength)).toEqual([2, 3, 4].map((n) => n * SEGMENT_BYTES))
  })
})
