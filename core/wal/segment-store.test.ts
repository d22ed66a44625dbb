// Goal: the segment store keeps the WalStorage contract (reference §7, DESIGN.md §7) on both a
// real file system and the simulated disk: positions (flush_lsn only at record ends), segment
// rollover with the full name, end-of-WAL discovery on reopen, truncation, removal, the reader,
// the typed errors, and fail-stop after a failed fsync. Method: each test is one Effect program
// run against the live Disk in a fresh temporary directory and against SimDisk in a Kernel;
// WAL comes from WalGenerator, so every byte is valid WAL with known record boundaries. Crash
// safety is in segment-store.crash.test.ts.
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Cause, Effect, Exit, Fiber } from "effect"
import { afterEach, describe, expect, test } from "vitest"
import { WalStorageError } from "../acceptor/wal-storage.js"
import { Disk, DiskError, joinPath } from "../io/disk.js"
import { liveDiskLayer } from "../../live/disk.js"
import { NO_DISK_FAULTS, SimDisk, type DiskFaults } from "../../sim/disk.js"
import { Incarnation, Kernel } from "../../sim/kernel.js"
import { forkInLife } from "../../sim/runtime.js"
import { WalDecoder } from "./decoder.js"
import { type GeneratedRecord, WalGenerator } from "./generator.js"
import { Lsn, segmentFileName, XLOG_BLCKSZ_BYTES } from "./lsn.js"
import { decodePageHeader, SIZE_OF_XLOG_LONG_PHD_BYTES } from "./page.js"
import { maxAlign } from "./record.js"
import { openSegmentStore, PARTIAL_SUFFIX, planTruncation, indexSegmentFiles, type SegmentStore, type SegmentStoreOptions } from "./segment-store.js"
import { concatBytes } from "../bytes.js"

const SEGMENT_BYTES = 1024 * 1024
const SYSTEM_ID = 7_394_000_111n
const PG_VERSION_NUM = 150004
/** Segment 2, just past its long page header: where a fresh timeline's WAL starts. */
const START = Lsn(2 * SEGMENT_BYTES + 40)

type MutableFaults = { -readonly [K in keyof DiskFaults]: DiskFaults[K] }

interface Bench {
  readonly world: "live" | "sim"
  readonly directory: string
  run<A, E>(program: Effect.Effect<A, E, Disk>): Promise<A>
  /** Sim only. */
  readonly sim?: { readonly disk: SimDisk; readonly faults: MutableFaults }
}

const cleanups: Array<() => void> = []
afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup()
})

function liveBench(): Bench {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "sk-segment-store-"))
  cleanups.push(() => fs.rmSync(root, { recursive: true, force: true }))
  const layer = liveDiskLayer()
  return {
    world: "live",
    directory: root,
    run: (program) => Effect.runPromise(Effect.provide(program, layer))
  }
}

function simBench(): Bench {
  const kernel = new Kernel(11)
  const faults: MutableFaults = { ...NO_DISK_FAULTS, writeLatencyUs: [1, 20], fsyncLatencyUs: [5, 200] }
  const disk = new SimDisk(kernel, "sk", faults)
  const life = new Incarnation("sk", 1)
  const service = disk.service(life)
  const run = <A, E>(program: Effect.Effect<A, E, Disk>): Promise<A> => {
    const fiber = forkInLife(kernel, life, Effect.provideService(program, Disk, service))
    kernel.run()
    const exit = fiber.pollUnsafe()
    if (exit === undefined) return Promise.reject(new Error("the program did not finish"))
    if (Exit.isFailure(exit)) return Promise.reject(new Error(Cause.pretty(exit.cause)))
    return Promise.resolve(exit.value)
  }
  return { world: "sim", directory: "/timeline", run, sim: { disk, faults } }
}

async function makeBench(world: "live" | "sim"): Promise<Bench> {
  const bench = world === "live" ? liveBench() : simBench()
  await bench.run(Effect.gen(function* () {
    yield* (yield* Disk).mkdir(bench.directory)
  }))
  return bench
}

// ---------------------------------------------------------------- WAL helpers

const generatorAt = (startLsn: Lsn, prevLsn?: Lsn) =>
  new WalGenerator({ startLsn, segmentSizeBytes: SEGMENT_BYTES, systemId: SYSTEM_ID, pgVersion: 15, timelineId: 1, prevLsn })

/** A logical message whose record is about `sizeBytes` long, with recognizable content. */
function message(generator: WalGenerator, sizeBytes: number, tag: string): GeneratedRecord {
  const payload = new Uint8Array(sizeBytes)
  for (let i = 0; i < sizeBytes; i += 97) payload[i] = (i / 97 + tag.length) & 0xff
  return generator.appendLogicalMessage(tag, payload)
}

const options = (bench: Bench, commitLsn: number, extra: Partial<SegmentStoreOptions> = {}): SegmentStoreOptions => ({
  directory: bench.directory,
  segmentSizeBytes: SEGMENT_BYTES,
  commitLsn: Lsn(commitLsn),
  pgVersion: PG_VERSION_NUM,
  systemId: SYSTEM_ID,
  ...extra
})

/** A fresh store as ProposerElected leaves it: first segment initialized, truncated to START. */
const freshStore = (bench: Bench, extra: Partial<SegmentStoreOptions> = {}) =>
  Effect.gen(function* () {
    const store = yield* openSegmentStore(options(bench, 0, extra))
    yield* store.initializeFirstSegment(START)
    yield* store.truncate(START)
    return store
  })

/** What an effect failed with: the WalStorageError reason or the DiskError reason. */
const failureOf = <A, R>(effect: Effect.Effect<A, WalStorageError | DiskError, R>) =>
  Effect.map(Effect.flip(effect), (error) => error._tag === "WalStorageError" ? error.reason : `Disk:${error.reason}`)

const segmentName = (segmentNo: number, partial: boolean) => segmentFileName(1, segmentNo, SEGMENT_BYTES) + (partial ? PARTIAL_SUFFIX : "")

const listNames = (bench: Bench) =>
  Effect.gen(function* () {
    const entries = yield* (yield* Disk).list(bench.directory)
    return entries.map((entry) => entry.name)
  })

/** Reads [from, to) through the store, one segment-bounded read at a time. */
const readRange = (store: SegmentStore, from: number, to: number) =>
  Effect.gen(function* () {
    const parts: Uint8Array[] = []
    let at = from
    while (at < to) {
      const chunk = yield* store.read(Lsn(at), Math.min(128 * 1024, to - at))
      expect(chunk.length).toBeGreaterThan(0)
      parts.push(chunk)
      at += chunk.length
    }
    return concatBytes(parts)
  })

/** Writes records through `writeSize`-byte writes that ignore record boundaries. */
const writeChunked = (store: SegmentStore, from: number, bytes: Uint8Array, writeSize: number) =>
  Effect.gen(function* () {
    for (let at = 0; at < bytes.length; at += writeSize) {
      yield* store.write(Lsn(from + at), bytes.subarray(at, Math.min(bytes.length, at + writeSize)))
    }
  })

const positionsOf = (store: SegmentStore) => {
  const p = store.positions()
  return [p.writeLsn, p.flushLsn, p.writeRecordLsn, p.flushRecordLsn]
}

/** Records of about 50 KiB starting at START, `totalBytes` of WAL in all. */
function bulk(totalBytes: number, tag = "bulk", generator = generatorAt(START)) {
  const records: GeneratedRecord[] = []
  while (generator.insertLsn - START < totalBytes) records.push(message(generator, 50_000 + records.length * 13, tag))
  return { records, bytes: concatBytes(records.map((r) => r.bytes)), generator }
}

/** Runs `body` with the Disk in context wrapped to record every open, and the ones that failed. */
const withOpenCounts = <A, E>(body: (opens: { readonly opened: string[]; readonly failed: string[] }) => Effect.Effect<A, E, Disk>) =>
  Effect.gen(function* () {
    const disk = yield* Disk
    const opens = { opened: [] as string[], failed: [] as string[] }
    const counting = Disk.of({
      ...disk,
      open: (path, openOptions) => disk.open(path, openOptions).pipe(
        Effect.tap(() => Effect.sync(() => opens.opened.push(path))),
        Effect.tapError(() => Effect.sync(() => opens.failed.push(path)))
      )
    })
    return yield* Effect.provideService(body(opens), Disk, counting)
  })

/** Byte equality without vitest's element-by-element diff (slow on megabytes). */
function expectSameBytes(actual: Uint8Array, expected: Uint8Array): void {
  expect(actual.length).toBe(expected.length)
  const differs = Buffer.compare(Buffer.from(actual.buffer, actual.byteOffset, actual.length), Buffer.from(expected.buffer, expected.byteOffset, expected.length)) !== 0
  if (differs) expect(actual.findIndex((byte, i) => byte !== expected[i])).toBe(-1)
}

// ---------------------------------------------------------------- tests

describe.each(["live", "sim"] as const)("segment store on the %s disk", (world) => {
  test("a fresh store needs a truncate; flush_lsn moves only at record ends; bad writes are refused", async () => {
    const bench = await makeBench(world)
    await bench.run(Effect.gen(function* () {
      const store = yield* openSegmentStore(options(bench, 0))
      expect(positionsOf(store)).toEqual([0, 0, 0, 0])
      expect(store.isTruncationPending).toBe(true)
      expect(yield* failureOf(store.write(START, new Uint8Array(8)))).toBe("TruncationPending")
      yield* store.initializeFirstSegment(START)
      yield* store.truncate(START)
      expect(positionsOf(store)).toEqual([START, START, START, START])
      expect(yield* listNames(bench)).toEqual([segmentName(2, true)])

      const generator = generatorAt(START)
      const small = message(generator, 300, "a")
      const large = message(generator, 20_000, "b") // spans three pages
      yield* store.write(START, small.bytes)
      expect(positionsOf(store)).toEqual([small.nextLsn, START, small.nextLsn, START])
      const half = 9_000
      yield* store.write(large.fromLsn, large.bytes.subarray(0, half))
      expect(positionsOf(store)).toEqual([large.fromLsn + half, START, small.nextLsn, START])
      yield* store.flush
      // Flushed bytes end mid-record: only the boundary before it is reported.
      expect(positionsOf(store)).toEqual([large.fromLsn + half, large.fromLsn + half, small.nextLsn, small.nextLsn])
      yield* store.write(Lsn(large.fromLsn + half), large.bytes.subarray(half))
      expect(positionsOf(store)).toEqual([large.nextLsn, large.fromLsn + half, large.nextLsn, small.nextLsn])
      yield* store.flush
      expect(positionsOf(store)).toEqual([large.nextLsn, large.nextLsn, large.nextLsn, large.nextLsn])
      yield* store.flush // nothing to do

      expect(yield* failureOf(store.write(small.fromLsn, small.bytes))).toBe("Rewrite")
      expect(yield* failureOf(store.write(Lsn(large.nextLsn + 8), small.bytes))).toBe("Gap")
      expect(yield* failureOf(store.truncate(Lsn(large.nextLsn + 8)))).toBe("TruncateAboveWrite")
      expect(yield* failureOf(store.truncate(Lsn(small.nextLsn + 3)))).toBe("InvalidWal")
      // Not WAL: refused before anything is written, and the store wants a truncate.
      const next = message(generator, 100, "c")
      const garbage = next.bytes.slice()
      garbage[30]! ^= 0xff
      expect(yield* failureOf(store.write(next.fromLsn, garbage))).toBe("InvalidWal")
      expect(positionsOf(store)).toEqual([large.nextLsn, large.nextLsn, large.nextLsn, large.nextLsn])
      expect(yield* failureOf(store.write(next.fromLsn, next.bytes))).toBe("InvalidWal")
      yield* store.truncate(large.nextLsn)
      yield* store.write(next.fromLsn, next.bytes)
      yield* store.flush
      expect(store.positions().flushRecordLsn).toBe(next.nextLsn)
      const all = concatBytes([small.bytes, large.bytes, next.bytes])
      expectSameBytes(yield* readRange(store, START, next.nextLsn), all)
      yield* store.close
      expect(yield* failureOf(store.flush)).toBe("Stopped")
    }))
  })

  test("segments roll over durably; the reader serves what is on disk; reopening finds the end", async () => {
    const bench = await makeBench(world)
    const { records, bytes } = bulk(2.5 * SEGMENT_BYTES)
    await bench.run(Effect.gen(function* () {
      const store = yield* freshStore(bench)
      const segmentEnd = 3 * SEGMENT_BYTES
      // Write up to just past the first segment end, in writes that ignore record boundaries.
      const firstCut = segmentEnd - START + 1000
      yield* writeChunked(store, START, bytes.subarray(0, firstCut), 200_000)
      const lastBoundaryBelow = (lsn: number) => Math.max(START, ...records.filter((r) => r.nextLsn <= lsn).map((r) => r.nextLsn))
      // Filling segment 2 fdatasynced it: flush_lsn is its end without a flush call.
      expect(positionsOf(store)).toEqual([START + firstCut, segmentEnd, lastBoundaryBelow(START + firstCut), lastBoundaryBelow(segmentEnd)])
      expect(yield* listNames(bench)).toEqual([segmentName(2, false), segmentName(3, true)])
      yield* writeChunked(store, START + firstCut, bytes.subarray(firstCut), 333_333)
      const end = START + bytes.length
      expect(positionsOf(store)).toEqual([end, 4 * SEGMENT_BYTES, records.at(-1)!.nextLsn, lastBoundaryBelow(4 * SEGMENT_BYTES)])
      expect(yield* listNames(bench)).toEqual([segmentName(2, false), segmentName(3, false), segmentName(4, true)])

      // The reader: everything back; never across a segment; never past write_lsn.
      expectSameBytes(yield* readRange(store, START, end), bytes)
      expect((yield* store.read(Lsn(segmentEnd - 10), 100)).length).toBe(10)
      expect((yield* store.read(Lsn(end - 5), 100)).length).toBe(5)
      expect((yield* store.read(Lsn(end), 100)).length).toBe(0)
      expect((yield* store.read(Lsn(end + SEGMENT_BYTES), 100)).length).toBe(0)

      yield* store.flush
      yield* store.close
      // Reopen from a commit_lsn in the middle: discovery decodes to the last record.
      const reopened = yield* openSegmentStore(options(bench, records[10]!.nextLsn))
      const last = records.at(-1)!.nextLsn
      expect(positionsOf(reopened)).toEqual([last, last, last, last])
      expect(reopened.isTruncationPending).toBe(true)
      expect(yield* failureOf(reopened.write(Lsn(last), new Uint8Array(8)))).toBe("TruncationPending")
      expectSameBytes(yield* readRange(reopened, START, last), bytes.subarray(0, last - START))
      yield* reopened.close
    }))
  })

  test("truncate drops the tail, durably: zeros, .partial again, later files gone, new WAL found on reopen", async () => {
    const bench = await makeBench(world)
    const { records, bytes } = bulk(2.5 * SEGMENT_BYTES, "old")
    await bench.run(Effect.gen(function* () {
      const store = yield* freshStore(bench)
      yield* writeChunked(store, START, bytes, 250_000)
      yield* store.flush
      // A boundary inside segment 2, which is complete and has its full name.
      const cut = records.findLast((r) => r.nextLsn < 3 * SEGMENT_BYTES - 100_000)!
      yield* store.truncate(cut.nextLsn)
      expect(positionsOf(store)).toEqual([cut.nextLsn, cut.nextLsn, cut.nextLsn, cut.nextLsn])
      expect(yield* listNames(bench)).toEqual([segmentName(2, true)])
      expect((yield* store.read(cut.nextLsn, 100)).length).toBe(0)
      const disk = yield* Disk
      const file = yield* disk.open(joinPath(bench.directory, segmentName(2, true)))
      const tail = yield* file.read(cut.nextLsn - 2 * SEGMENT_BYTES, SEGMENT_BYTES)
      yield* file.close
      expect(tail.length).toBe(3 * SEGMENT_BYTES - cut.nextLsn)
      expect(tail.every((byte) => byte === 0)).toBe(true)

      // New WAL from the cut on, chained to the record before it.
      const generator = generatorAt(cut.nextLsn, cut.startLsn)
      const fresh = [message(generator, 400_000, "new"), message(generator, 700_000, "new")]
      const freshBytes = concatBytes(fresh.map((r) => r.bytes))
      yield* writeChunked(store, cut.nextLsn, freshBytes, 300_000)
      yield* store.flush
      yield* store.close
      const reopened = yield* openSegmentStore(options(bench, records[3]!.nextLsn))
      const end = fresh.at(-1)!.nextLsn
      expect(positionsOf(reopened)).toEqual([end, end, end, end])
      expectSameBytes(yield* readRange(reopened, START, end), concatBytes([bytes.subarray(0, cut.nextLsn - START), freshBytes]))

      // A truncate after a reload keeps what is there and allows writes again.
      yield* reopened.truncate(end)
      expect(positionsOf(reopened)).toEqual([end, end, end, end])
      const more = message(generator, 1000, "more")
      yield* reopened.write(more.fromLsn, more.bytes)
      yield* reopened.flush
      expect(reopened.positions().flushRecordLsn).toBe(more.nextLsn)
      yield* reopened.close
    }))
  })

  test("XLOG_SWITCH: flush_record_lsn reaches the next segment only with the padding (neon#11092)", async () => {
    const bench = await makeBench(world)
    await bench.run(Effect.gen(function* () {
      const store = yield* freshStore(bench)
      const generator = generatorAt(START)
      const before = message(generator, 5000, "x")
      const switchRecord = generator.appendSwitch()
      const after = message(generator, 3000, "y")
      expect(switchRecord.nextLsn).toBe(3 * SEGMENT_BYTES)
      yield* store.write(START, before.bytes)
      const recordPart = maxAlign(switchRecord.endLsn) - switchRecord.fromLsn
      yield* store.write(switchRecord.fromLsn, switchRecord.bytes.subarray(0, recordPart))
      yield* store.flush
      // write_record_lsn runs ahead of write_lsn; the reported flush stays at a flushed boundary.
      const written = switchRecord.fromLsn + recordPart
      expect(positionsOf(store)).toEqual([written, written, 3 * SEGMENT_BYTES, before.nextLsn])
      expect(yield* listNames(bench)).toEqual([segmentName(2, true)])
      // The padding fills the segment: fdatasync, full name, and the switch's boundary is flushed.
      yield* store.write(Lsn(written), switchRecord.bytes.subarray(recordPart))
      const segmentEnd = 3 * SEGMENT_BYTES
      expect(positionsOf(store)).toEqual([segmentEnd, segmentEnd, segmentEnd, segmentEnd])
      expect(yield* listNames(bench)).toEqual([segmentName(2, false)])
      yield* store.write(after.fromLsn, after.bytes)
      yield* store.flush
      expect(yield* listNames(bench)).toEqual([segmentName(2, false), segmentName(3, true)])
      yield* store.close

      const reopened = yield* openSegmentStore(options(bench, before.nextLsn))
      expect(positionsOf(reopened)).toEqual([after.nextLsn, after.nextLsn, after.nextLsn, after.nextLsn])
      // Truncating to the segment boundary: segment 3 is zeroed; segment 2 stays complete.
      yield* reopened.truncate(Lsn(segmentEnd))
      expect(positionsOf(reopened)).toEqual([segmentEnd, segmentEnd, segmentEnd, segmentEnd])
      expect(yield* listNames(bench)).toEqual([segmentName(2, false), segmentName(3, true)])
      yield* reopened.close
      const again = yield* openSegmentStore(options(bench, before.nextLsn))
      expect(positionsOf(again)).toEqual([segmentEnd, segmentEnd, segmentEnd, segmentEnd])
      yield* again.close
    }))
  })

  test("initializeFirstSegment writes the headers a reader starting at the segment needs", async () => {
    const bench = await makeBench(world)
    // Mid-page, past the first page: the prefix holds the long header and a short one.
    const start = Lsn(5 * SEGMENT_BYTES + 3 * XLOG_BLCKSZ_BYTES + 200)
    await bench.run(Effect.gen(function* () {
      const store = yield* openSegmentStore(options(bench, 0))
      yield* store.initializeFirstSegment(start)
      yield* store.truncate(start)
      const generator = generatorAt(start)
      const records = [message(generator, 100, "p"), message(generator, 9000, "q")]
      yield* store.write(start, concatBytes(records.map((r) => r.bytes)))
      yield* store.flush
      // The long header is there, and a reader starting at the page of `start` lands on it.
      const segmentStart = 5 * SEGMENT_BYTES
      const longHeader = decodePageHeader(yield* store.read(Lsn(segmentStart), SIZE_OF_XLOG_LONG_PHD_BYTES))
      expect(longHeader._tag === "Success" && longHeader.success.long?.systemId).toBe(SYSTEM_ID)
      const pageStart = start - (start % XLOG_BLCKSZ_BYTES)
      const image = yield* readRange(store, pageStart, records.at(-1)!.nextLsn)
      const decoder = WalDecoder.make({ startLsn: Lsn(pageStart), segmentSizeBytes: SEGMENT_BYTES, systemId: SYSTEM_ID, pgVersion: 15 })
      if (decoder._tag !== "Success") throw new Error("decoder")
      const decoded = decoder.success.push(image)
      expect(decoder.success.error).toBeUndefined()
      expect(decoded.map((r) => r.startLsn)).toEqual(records.map((r) => r.startLsn))
      yield* store.close
      // Discovery from the first record's start finds the end.
      const reopened = yield* openSegmentStore(options(bench, start, { timelineStartLsn: start }))
      expect(reopened.positions().flushRecordLsn).toBe(records.at(-1)!.nextLsn)
      yield* reopened.close
    }))
  })

  test("removeUpTo deletes old segments; reads there fail NotFound", async () => {
    const bench = await makeBench(world)
    const { bytes } = bulk(2.2 * SEGMENT_BYTES)
    await bench.run(Effect.gen(function* () {
      const store = yield* freshStore(bench)
      yield* writeChunked(store, START, bytes, 500_000)
      yield* store.removeUpTo(2)
      expect(yield* listNames(bench)).toEqual([segmentName(3, false), segmentName(4, true)])
      expect(yield* failureOf(store.read(START, 10))).toBe("Disk:NotFound")
      expect((yield* store.read(Lsn(3 * SEGMENT_BYTES), 10)).length).toBe(10)
      yield* store.removeUpTo(1) // nothing left that low
      yield* store.close
    }))
  })

  test("discovery: .partial preferred, stops at a missing segment, refuses a commit_lsn past the WAL", async () => {
    const bench = await makeBench(world)
    const { records, bytes } = bulk(2.5 * SEGMENT_BYTES)
    await bench.run(Effect.gen(function* () {
      const disk = yield* Disk
      const store = yield* freshStore(bench)
      yield* writeChunked(store, START, bytes, 400_000)
      yield* store.flush
      yield* store.close
      const last = records.at(-1)!.nextLsn
      const commit = records[2]!.nextLsn
      // A full-named segment 4 full of zeros next to the real `.partial`: the `.partial` wins.
      const shadow = yield* disk.open(joinPath(bench.directory, segmentName(4, false)), { create: true })
      yield* shadow.truncate(SEGMENT_BYTES)
      yield* shadow.close
      const reopened = yield* openSegmentStore(options(bench, commit))
      expect(reopened.positions().writeLsn).toBe(last)
      // Its truncate removes the shadow.
      yield* reopened.truncate(Lsn(last))
      expect(yield* listNames(bench)).toEqual([segmentName(2, false), segmentName(3, false), segmentName(4, true)])
      yield* reopened.close

      // Without segment 3, WAL ends at the last record that fits before it; segment 4 is ignored.
      yield* disk.rename(joinPath(bench.directory, segmentName(3, false)), joinPath(bench.directory, "aside"))
      const gapped = yield* openSegmentStore(options(bench, commit))
      const beforeGap = records.filter((r) => r.nextLsn <= 3 * SEGMENT_BYTES).at(-1)!.nextLsn
      expect(positionsOf(gapped)).toEqual([beforeGap, beforeGap, beforeGap, beforeGap])
      expect((yield* gapped.read(Lsn(4 * SEGMENT_BYTES), 10)).length).toBe(0)
      yield* gapped.close
      yield* disk.rename(joinPath(bench.directory, "aside"), joinPath(bench.directory, segmentName(3, false)))

      // The WAL on disk ends below commit_lsn: refuse to load.
      const file = yield* disk.open(joinPath(bench.directory, segmentName(4, true)))
      yield* file.truncate(1000)
      yield* file.close
      expect(yield* failureOf(openSegmentStore(options(bench, records.at(-2)!.nextLsn)))).toBe("EndBelowCommit")
      // commit_lsn that no record can end at, or below the timeline start: a corrupt control file.
      expect(yield* failureOf(openSegmentStore(options(bench, commit + 4)))).toBe("Corrupt")
      expect(yield* failureOf(openSegmentStore(options(bench, commit, { timelineStartLsn: Lsn(commit + 8) })))).toBe("Corrupt")
      expect(yield* failureOf(openSegmentStore(options(bench, commit, { pgVersion: 120000 })))).toBe("Corrupt")
      // A wal_seg_size from a control file that Neon's format admits but no segment store can use.
      expect(yield* failureOf(openSegmentStore(options(bench, commit, { segmentSizeBytes: 0x12345678 })))).toBe("Corrupt")
    }))
  })
  test("reads keep segments open between calls, under the names the store knows: no failing open", async () => {
    const bench = await makeBench(world)
    const { bytes } = bulk(2.5 * SEGMENT_BYTES)
    await bench.run(withOpenCounts((opens) => Effect.gen(function* () {
      const store = yield* freshStore(bench)
      const end = START + bytes.length
      // Reads chase the writes, 128 KiB at a time, as a sender does: never past write_lsn.
      const parts: Uint8Array[] = []
      let readLsn: number = START
      for (let at = 0; at < bytes.length; at += 300_000) {
        yield* store.write(Lsn(START + at), bytes.subarray(at, Math.min(bytes.length, at + 300_000)))
        const writeLsn = store.positions().writeLsn
        // One pass per chunk below write_lsn.
        while (readLsn < writeLsn) {
          const failedBefore = opens.failed.length
          const chunk = yield* store.read(Lsn(readLsn), 128 * 1024)
          expect(opens.failed.length).toBe(failedBefore)
          expect(chunk.length).toBeGreaterThan(0)
          expect(readLsn + chunk.length).toBeLessThanOrEqual(writeLsn)
          parts.push(chunk)
          readLsn += chunk.length
        }
        expect((yield* store.read(Lsn(writeLsn), 128 * 1024)).length).toBe(0)
      }
      expectSameBytes(concatBytes(parts), bytes)
      // Once more from the start: segments 2 and 3, complete, were opened under their full names
      // once each (what was left of them after they filled); segment 4 is read through the write handle.
      const failedBefore = opens.failed.length
      expectSameBytes(yield* readRange(store, START, end), bytes)
      expect(opens.failed.length).toBe(failedBefore)
      const fullNameOpens = opens.opened.map((path) => path.split("/").at(-1)).filter((name) => name !== undefined && name.startsWith("0") && !name.endsWith(PARTIAL_SUFFIX))
      expect(fullNameOpens).toEqual([segmentName(2, false), segmentName(3, false)])
      yield* store.close
    })))
  })

  test("readWithHeadroom: the WAL after the headroom, in one buffer; near a segment start; at write_lsn", async () => {
    const bench = await makeBench(world)
    const { bytes } = bulk(1.5 * SEGMENT_BYTES)
    await bench.run(Effect.gen(function* () {
      const store = yield* freshStore(bench)
      yield* writeChunked(store, START, bytes, 400_000)
      const end = START + bytes.length
      const headroom = 30
      const cases = [START, Lsn(START + 5000), Lsn(3 * SEGMENT_BYTES), Lsn(3 * SEGMENT_BYTES + 7), Lsn(3 * SEGMENT_BYTES - 100), Lsn(end - 9)]
      for (const at of cases) {
        const framed = yield* store.readWithHeadroom(at, 128 * 1024, headroom)
        const plain = yield* store.read(at, 128 * 1024)
        expect(framed.length).toBe(headroom + plain.length)
        expectSameBytes(framed.subarray(headroom), plain)
      }
      expect((yield* store.readWithHeadroom(Lsn(end), 100, headroom)).length).toBe(headroom)
      expect((yield* store.readWithHeadroom(Lsn(end + 5), 100, headroom)).length).toBe(headroom)
      yield* store.close
    }))
  })

  test("an open read handle never serves a truncated tail, a removed segment, or a renamed one", async () => {
    const bench = await makeBench(world)
    const { records, bytes } = bulk(2.5 * SEGMENT_BYTES, "old")
    await bench.run(withOpenCounts((opens) => Effect.gen(function* () {
      const store = yield* freshStore(bench)
      yield* writeChunked(store, START, bytes, 250_000)
      // Segments 2 and 3 are complete: these reads leave their handles open.
      const cut = records.findLast((r) => r.nextLsn < 3 * SEGMENT_BYTES - 100_000)!
      expectSameBytes(yield* store.read(Lsn(cut.nextLsn), 1000), bytes.subarray(cut.nextLsn - START, cut.nextLsn - START + 1000))
      expectSameBytes(yield* store.read(Lsn(3 * SEGMENT_BYTES), 1000), bytes.subarray(3 * SEGMENT_BYTES - START, 3 * SEGMENT_BYTES - START + 1000))
      // Truncate into segment 2 (renamed to .partial, zeroed past the cut; segment 3 unlinked),
      // then different WAL: segment 3 is a new file under the old name, which an old handle
      // would not see.
      yield* store.truncate(cut.nextLsn)
      expect((yield* store.read(Lsn(cut.nextLsn), 1000)).length).toBe(0)
      const generator = generatorAt(cut.nextLsn, cut.startLsn)
      const fresh = concatBytes([message(generator, 300_000, "new"), message(generator, 2 * SEGMENT_BYTES, "new")].map((r) => r.bytes))
      yield* writeChunked(store, cut.nextLsn, fresh, 300_000)
      const end = cut.nextLsn + fresh.length
      expectSameBytes(yield* readRange(store, START, end), concatBytes([bytes.subarray(0, cut.nextLsn - START), fresh]))
      // Segments 2 and 3 were completed again (full names); 2 is cached. Remove it: reads fail.
      yield* store.removeUpTo(2)
      const failedBefore = opens.failed.length
      expect(yield* failureOf(store.read(START, 10))).toBe("Disk:NotFound")
      expectSameBytes(yield* store.read(Lsn(3 * SEGMENT_BYTES), 100), fresh.subarray(3 * SEGMENT_BYTES - cut.nextLsn, 3 * SEGMENT_BYTES - cut.nextLsn + 100))
      // The only failing open of the reads: segment 2, after it was removed.
      expect(opens.failed.slice(failedBefore).map((path) => path.split("/").at(-1))).toEqual([segmentName(2, false)])
      yield* store.close
      expect(yield* failureOf(store.read(Lsn(3 * SEGMENT_BYTES), 10))).toBe("Stopped")
    })))
  })

  test("after a load, names come from the listing: a segment left .partial below the end is read at once", async () => {
    const bench = await makeBench(world)
    const { records, bytes } = bulk(2.5 * SEGMENT_BYTES)
    await bench.run(withOpenCounts((opens) => Effect.gen(function* () {
      const disk = yield* Disk
      const store = yield* freshStore(bench)
      yield* writeChunked(store, START, bytes, 400_000)
      yield* store.flush
      yield* store.close
      // A crash between a segment's fdatasync and its rename leaves it `.partial`.
      yield* disk.rename(joinPath(bench.directory, segmentName(3, false)), joinPath(bench.directory, segmentName(3, true)))
      const reopened = yield* openSegmentStore(options(bench, records[2]!.nextLsn))
      const before = opens.failed.length
      const end = START + bytes.length
      expectSameBytes(yield* readRange(reopened, START, end), bytes)
      expect(opens.failed.slice(before)).toEqual([])
      // The truncate every load needs completes it; reads follow the new name.
      yield* reopened.truncate(Lsn(records.at(-1)!.nextLsn))
      expect(yield* listNames(bench)).toEqual([segmentName(2, false), segmentName(3, false), segmentName(4, true)])
      expectSameBytes(yield* readRange(reopened, START, end), bytes)
      expect(opens.failed.slice(before)).toEqual([])
      yield* reopened.close
    })))
  })

})

describe("segment store faults (simulated disk)", () => {
  test("a failed fsync stops the store for good; nothing is retried or reported flushed", async () => {
    const bench = await makeBench("sim")
    const { faults, disk } = bench.sim!
    const generator = generatorAt(START)
    const first = message(generator, 2000, "a")
    const second = message(generator, 2000, "b")
    await bench.run(Effect.gen(function* () {
      const store = yield* freshStore(bench)
      yield* store.write(START, first.bytes)
      yield* store.flush
      yield* store.write(second.fromLsn, second.bytes)
      faults.eioOnFsyncProbability = 1
      const failure = yield* Effect.flip(store.flush)
      expect(failure._tag === "WalStorageError" && failure.reason).toBe("Stopped")
      expect(store.stopError).toBeDefined()
      expect(positionsOf(store)).toEqual([second.nextLsn, first.nextLsn, second.nextLsn, first.nextLsn])
      faults.eioOnFsyncProbability = 0
      const fsyncsBefore = disk.stats.fsyncs
      expect(yield* failureOf(store.flush)).toBe("Stopped")
      expect(yield* failureOf(store.write(second.nextLsn, new Uint8Array(8)))).toBe("Stopped")
      expect(yield* failureOf(store.truncate(first.nextLsn))).toBe("Stopped")
      expect(yield* failureOf(store.read(START, 10))).toBe("Stopped")
      expect(yield* failureOf(store.removeUpTo(0))).toBe("Stopped")
      expect(yield* failureOf(store.initializeFirstSegment(START))).toBe("Stopped")
      expect(disk.stats.fsyncs).toBe(fsyncsBefore)
    }))
  })

  test("a failed fsync when a segment fills stops the store inside the write", async () => {
    const bench = await makeBench("sim")
    const { faults } = bench.sim!
    const { bytes } = bulk(1.2 * SEGMENT_BYTES)
    await bench.run(Effect.gen(function* () {
      const store = yield* freshStore(bench)
      faults.eioOnFsyncProbability = 1
      expect(yield* failureOf(store.write(START, bytes))).toBe("Stopped")
      expect(store.positions().flushLsn).toBe(START)
      faults.eioOnFsyncProbability = 0
      expect(yield* failureOf(store.flush)).toBe("Stopped")
    }))
  })

  test("a failed write leaves the positions at what was written and a truncate pending", async () => {
    const bench = await makeBench("sim")
    const { faults } = bench.sim!
    const generator = generatorAt(START)
    const first = message(generator, 2000, "a")
    const second = message(generator, 2000, "b")
    await bench.run(Effect.gen(function* () {
      const store = yield* freshStore(bench)
      yield* store.write(START, first.bytes)
      faults.eioOnWriteProbability = 1
      expect(yield* failureOf(store.write(second.fromLsn, second.bytes))).toBe("Disk:EIO")
      faults.eioOnWriteProbability = 0
      expect(positionsOf(store)).toEqual([first.nextLsn, START, first.nextLsn, START])
      expect(store.isTruncationPending).toBe(true)
      expect(yield* failureOf(store.write(second.fromLsn, second.bytes))).toBe("TruncationPending")
      yield* store.flush // a VoteRequest still flushes
      expect(store.positions().flushRecordLsn).toBe(first.nextLsn)
      yield* store.truncate(first.nextLsn) // ProposerElected on the new connection
      yield* store.write(second.fromLsn, second.bytes)
      yield* store.flush
      expect(store.positions().flushRecordLsn).toBe(second.nextLsn)
    }))
  })

  test("ENOSPC shows when a segment is created (it is written full of zeros), not in the middle of one", async () => {
    const bench = await makeBench("sim")
    const { faults, disk } = bench.sim!
    const { bytes } = bulk(1.5 * SEGMENT_BYTES)
    await bench.run(Effect.gen(function* () {
      const store = yield* freshStore(bench)
      faults.capacityBytes = disk.liveBytesNow + SEGMENT_BYTES / 2
      expect(yield* failureOf(store.write(START, bytes))).toBe("Disk:ENOSPC")
      // Segment 2 was filled and completed; segment 3 could not be created, and no temp file is left.
      expect(store.positions().flushLsn).toBe(3 * SEGMENT_BYTES)
      expect(disk.listNow(bench.directory)).toEqual([segmentName(2, false)])
    }))
  })

  test("a truncate that fails after its first fsync leaves nothing for a flush to do, and can be retried", async () => {
    const bench = await makeBench("sim")
    const { faults } = bench.sim!
    const generator = generatorAt(START)
    const first = message(generator, 2000, "a")
    const second = message(generator, 2000, "b")
    await bench.run(Effect.gen(function* () {
      const store = yield* freshStore(bench)
      yield* store.write(START, concatBytes([first.bytes, second.bytes]))
      faults.eioOnWriteProbability = 1 // the ftruncate of the tail fails
      expect(yield* failureOf(store.truncate(first.nextLsn))).toBe("Disk:EIO")
      faults.eioOnWriteProbability = 0
      expect(store.isTruncationPending).toBe(true)
      expect(positionsOf(store)).toEqual([first.nextLsn, first.nextLsn, first.nextLsn, first.nextLsn])
      yield* store.flush // not NoOpenSegment (neon#11605)
      expect(yield* failureOf(store.write(second.fromLsn, second.bytes))).toBe("TruncationPending")
      yield* store.truncate(first.nextLsn)
      yield* store.write(second.fromLsn, second.bytes)
      yield* store.flush
      expect(store.positions().flushRecordLsn).toBe(second.nextLsn)
    }))
  })

  test("calls are serialized, and a started write finishes even if its caller is interrupted", async () => {
    const bench = await makeBench("sim")
    const { bytes, records } = bulk(1.5 * SEGMENT_BYTES)
    await bench.run(Effect.gen(function* () {
      const store = yield* freshStore(bench)
      // Interrupted while its writes wait on disk latency: the write still completes as a whole.
      const writer = yield* Effect.forkChild(store.write(START, bytes))
      yield* Effect.sleep("30 micros")
      yield* Fiber.interrupt(writer)
      const end = START + bytes.length
      expect(store.positions().writeLsn).toBe(end)
      expect(store.positions().flushLsn).toBe(3 * SEGMENT_BYTES)
      // Readers, a flush and a removal issued at once see one call at a time.
      const reads = Array.from({ length: 6 }, (_, i) => store.read(Lsn(START + i * 100_000), 50_000))
      const [flushed, ...chunks] = yield* Effect.all([store.flush.pipe(Effect.as("flushed")), ...reads], { concurrency: "unbounded" })
      expect(flushed).toBe("flushed")
      chunks.forEach((chunk, i) => expectSameBytes(chunk as Uint8Array, bytes.subarray(i * 100_000, i * 100_000 + 50_000)))
      expect(store.positions().flushRecordLsn).toBe(records.at(-1)!.nextLsn)
    }))
  })

  test("noSync: no fsync at all", async () => {
    const bench = await makeBench("sim")
    const { disk } = bench.sim!
    const { bytes } = bulk(1.5 * SEGMENT_BYTES)
    await bench.run(Effect.gen(function* () {
      const fsyncsBefore = disk.stats.fsyncs
      const store = yield* freshStore(bench, { noSync: true })
      yield* writeChunked(store, START, bytes, 300_000)
      yield* store.flush
      yield* store.truncate(Lsn(START))
      yield* store.close
      expect(disk.stats.fsyncs).toBe(fsyncsBefore)
    }))
  })
})

describe("truncation plan", () => {
  const entry = (name: string) => ({ name, kind: "file" as const })
  test("zeroes the end's segment, completes those below, unlinks those above and a shadowed full name", () => {
    const files = indexSegmentFiles([
      entry(segmentName(1, false)),
      entry(segmentName(2, true)),
      entry(segmentName(3, false)),
      entry(segmentName(3, true)),
      entry(segmentName(4, false)),
      entry(segmentName(5, true)),
      entry("waltmp"),
      entry("000000020000000000000009"), // another timeline: not ours
      { name: segmentName(6, false), kind: "directory" as const }
    ], SEGMENT_BYTES)
    expect([...files.keys()]).toEqual([1, 2, 3, 4, 5])
    const plan = planTruncation(files, 3 * SEGMENT_BYTES + 4096, SEGMENT_BYTES)
    expect(plan).toEqual({
      segmentNo: 3,
      offsetBytes: 4096,
      existing: "partial",
      completeSegmentNos: [2],
      unlinkNames: [segmentName(4, false), segmentName(5, true), segmentName(3, false)]
    })
    const atBoundary = planTruncation(files, 6 * SEGMENT_BYTES, SEGMENT_BYTES)
    expect(atBoundary).toEqual({ segmentNo: 6, offsetBytes: 0, existing: undefined, completeSegmentNos: [2, 3, 5], unlinkNames: [] })
  })
})
