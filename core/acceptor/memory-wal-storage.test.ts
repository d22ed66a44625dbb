// Goal: MemoryWalStorage keeps the position rules of reference §7 that the acceptor relies on, so
// acceptor tests over it mean something: record LSNs come from decoding, flush is a no-op while
// the record LSNs agree, a filled segment is flushed as it closes, writes continue exactly at
// write_lsn after the truncation every load requires, and a reopen keeps only flushed WAL.
// Method: real WAL from WalGenerator written in whole and split pieces, positions checked after
// each step.
import { Effect, Exit, Result } from "effect"
import { describe, expect, test } from "vitest"
import { WalGenerator } from "../wal/generator.js"
import { Lsn } from "../wal/lsn.js"
import { messageFor, TEST_SYSTEM_ID } from "../wal/wal-testing.js"
import { MemoryWalStorage } from "./memory-wal-storage.js"
import type { WalStorageError } from "./wal-storage.js"

const SEGMENT_BYTES = 1024 * 1024
const START = Lsn(SEGMENT_BYTES + 40)
const options = { segmentSizeBytes: SEGMENT_BYTES, systemId: TEST_SYSTEM_ID, pgVersion: 15 } as const

const run = <A>(effect: Effect.Effect<A, WalStorageError>): A => Effect.runSync(effect)
const reasonOf = (effect: Effect.Effect<unknown, WalStorageError>): string => {
  const exit = Effect.runSyncExit(Effect.flip(effect))
  if (Exit.isFailure(exit)) throw new Error("expected a WalStorageError")
  return exit.value.reason
}
const generator = () => new WalGenerator({ startLsn: START, segmentSizeBytes: SEGMENT_BYTES, systemId: TEST_SYSTEM_ID, pgVersion: 15, timelineId: 1 })

/** A storage truncated to START, as ProposerElected leaves it. */
function ready(): MemoryWalStorage {
  const storage = MemoryWalStorage.empty(options)
  run(storage.initializeFirstSegment(START))
  run(storage.truncate(START))
  return storage
}

describe("MemoryWalStorage", () => {
  test("a write needs the load's truncation first; then it continues exactly at write_lsn", () => {
    const storage = MemoryWalStorage.empty(options)
    expect(storage.positions()).toEqual({ writeLsn: 0, flushLsn: 0, writeRecordLsn: 0, flushRecordLsn: 0 })
    const record = generator().appendLogicalMessage("a", messageFor(0, 50))
    expect(reasonOf(storage.write(START, record.bytes))).toBe("TruncationPending")
    run(storage.initializeFirstSegment(START))
    expect(storage.positions().writeLsn).toBe(0) // headers only, positions unchanged
    expect(storage.contentAt(Lsn(SEGMENT_BYTES), 40).some((byte) => byte !== 0)).toBe(true)
    run(storage.truncate(START))
    run(storage.write(START, record.bytes))
    expect(reasonOf(storage.write(START, record.bytes))).toBe("Rewrite")
    expect(reasonOf(storage.write(Lsn(record.nextLsn + 8), record.bytes))).toBe("Gap")
    expect(reasonOf(storage.truncate(Lsn(record.nextLsn + 8)))).toBe("TruncateAboveWrite")
  })

  test("record LSNs come from decoding; flush makes them durable and is a no-op when they agree", () => {
    const storage = ready()
    const wal = generator()
    const first = wal.appendLogicalMessage("a", messageFor(0, 300))
    const second = wal.appendLogicalMessage("b", messageFor(1, 300))
    const split = 100
    run(storage.write(START, first.bytes))
    run(storage.write(first.nextLsn, second.bytes.subarray(0, split)))
    expect(storage.positions()).toEqual({ writeLsn: first.nextLsn + split, flushLsn: START, writeRecordLsn: first.nextLsn, flushRecordLsn: START })
    run(storage.flush)
    expect(storage.positions()).toEqual({ writeLsn: first.nextLsn + split, flushLsn: first.nextLsn + split, writeRecordLsn: first.nextLsn, flushRecordLsn: first.nextLsn })
    run(storage.flush)
    expect(storage.stats.flushes).toBe(1)
    run(storage.write(Lsn(first.nextLsn + split), second.bytes.subarray(split)))
    expect(storage.positions().writeRecordLsn).toBe(second.nextLsn)
  })

  test("a write that fills a segment flushes it; record ends up to there become durable", () => {
    const storage = ready()
    const wal = generator()
    let lastBefore = START
    // Enough 4 KiB records to cross into segment 2.
    while (wal.insertLsn < 2 * SEGMENT_BYTES + 4096) {
      const record = wal.appendLogicalMessage("m", messageFor(0, 4000))
      run(storage.write(record.fromLsn, record.bytes))
      if (record.nextLsn <= 2 * SEGMENT_BYTES) lastBefore = record.nextLsn
    }
    const positions = storage.positions()
    expect(positions.flushLsn).toBe(2 * SEGMENT_BYTES)
    expect(positions.flushRecordLsn).toBe(lastBefore)
    expect(positions.writeRecordLsn).toBe(wal.insertLsn)
  })

  test("XLOG_SWITCH moves write_record_lsn to the next segment before the padding arrives", () => {
    const storage = ready()
    const wal = generator()
    const switchRecord = wal.appendSwitch()
    const recordOnly = switchRecord.endLsn - switchRecord.fromLsn
    run(storage.write(START, switchRecord.bytes.subarray(0, recordOnly)))
    expect(storage.positions().writeRecordLsn).toBe(2 * SEGMENT_BYTES)
    expect(storage.positions().writeLsn).toBe(switchRecord.endLsn)
  })

  test("reopen keeps only flushed WAL and finds its end from commit_lsn", () => {
    const storage = ready()
    const wal = generator()
    const records = [0, 1, 2, 3].map((i) => wal.appendLogicalMessage("r", messageFor(i, 200)))
    for (const record of records.slice(0, 2)) run(storage.write(record.fromLsn, record.bytes))
    run(storage.flush)
    for (const record of records.slice(2)) run(storage.write(record.fromLsn, record.bytes))
    const reopened = storage.reopen(START)
    if (Result.isFailure(reopened)) throw new Error(reopened.failure.message)
    const end = records[1]!.nextLsn
    expect(reopened.success.positions()).toEqual({ writeLsn: end, flushLsn: end, writeRecordLsn: end, flushRecordLsn: end })
    expect(reopened.success.contentAt(end, 64).every((byte) => byte === 0)).toBe(true)
    // A reopened storage wants a truncation again.
    expect(reasonOf(reopened.success.write(end, records[2]!.bytes))).toBe("TruncationPending")
    const fresh = storage.reopen(Lsn(0))
    expect(Result.isSuccess(fresh) && fresh.success.positions().flushRecordLsn).toBe(0)
  })

  test("truncation zeroes the tail and drops later segments", () => {
    const storage = ready()
    const wal = generator()
    while (wal.insertLsn < 2 * SEGMENT_BYTES + 100) {
      const record = wal.appendLogicalMessage("m", messageFor(1, 8000))
      run(storage.write(record.fromLsn, record.bytes))
    }
    const cut = START // back to the start of the timeline
    run(storage.truncate(cut))
    expect(storage.positions()).toEqual({ writeLsn: cut, flushLsn: cut, writeRecordLsn: cut, flushRecordLsn: cut })
    expect(storage.contentAt(cut, 8192).every((byte) => byte === 0)).toBe(true)
    expect(reasonOf(storage.read(Lsn(2 * SEGMENT_BYTES), 16))).toBe("Corrupt")
    expect(run(storage.read(Lsn(SEGMENT_BYTES), 40))).toEqual(storage.contentAt(Lsn(SEGMENT_BYTES), 40))
  })
})
