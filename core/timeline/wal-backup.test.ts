// Goal: WAL backup uploads every full segment below commit_lsn's, byte-equal to the local file,
// and backup_lsn never passes a segment whose object is not durably stored: not when a put
// fails, not when a later upload finishes first, not when the local file is missing.
// Method: a real Timeline (control file, segment store, acceptor) on a simulated disk, fed real
// WAL through greeting, vote, elected and appends; a Map-backed RemoteStorage written here,
// whose puts can be delayed or failed per segment; a watcher fiber checks on every change of
// the timeline's positions that every segment below backup_lsn is stored.
import { Effect, Exit, Fiber } from "effect"
import { describe, expect, test } from "vitest"
import { Incarnation } from "../../sim/kernel.js"
import { NO_OBJECT_STORE_FAULTS, SimObjectStore } from "../../sim/object-store.js"
import { DiskLab } from "../../sim/testing.js"
import { equalBytes } from "../bytes.js"
import { makeAcceptor } from "../acceptor/acceptor.js"
import { persistControlFile } from "../acceptor/control-file.js"
import { Generation, newTimelineState, NodeId, type PersistedState, TenantId, Term, TimelineId } from "../acceptor/state.js"
import { sleepUs } from "../io/clock.js"
import { Disk, joinPath } from "../io/disk.js"
import { Log } from "../io/log.js"
import { RemoteStorage, RemoteStorageError } from "../io/remote-storage.js"
import type { AppendRequest } from "../protocol/consensus.js"
import { Lsn, segmentFileName, segmentNoOf, segmentStartLsn } from "../wal/lsn.js"
import { openSegmentStore, WAL_TIMELINE_ID } from "../wal/segment-store.js"
import { generateWal, TEST_SYSTEM_ID } from "../wal/wal-testing.js"
import { segmentObjectPath } from "./remote-layout.js"
import { Timeline } from "./timeline.js"
import { runWalBackup, uploadSegment } from "./wal-backup.js"
import { LogLines, MapStore } from "./manager-testing.js"

const SEGMENT_BYTES = 1024 * 1024
const PG_VERSION_NUM = 150004
const DIRECTORY = "/data/tenant/timeline"
const KEY = { tenantId: TenantId("0123456789abcdef0123456789abcdef"), timelineId: TimelineId("fedcba9876543210fedcba9876543210") }
const START = Lsn(SEGMENT_BYTES + 40)
const mconf = { generation: Generation(1), members: [1, 2, 3].map((id) => ({ id: NodeId(id), host: `sk${id}`, pgPort: 5454 })), newMembers: undefined }
const freshState: PersistedState = newTimelineState({
  ...KEY,
  mconf,
  server: { pgVersion: PG_VERSION_NUM, systemId: TEST_SYSTEM_ID, walSegSizeBytes: SEGMENT_BYTES },
  startLsn: Lsn(0),
  commitLsn: Lsn(0)
})

// ---- a timeline holding WAL through segments 1..3 and into 4 ----

/** WAL from START through ~3.4 segments, as appends of at most ~200 KiB. */
const WAL = generateWal({ startLsn: START, segmentSizeBytes: SEGMENT_BYTES, steps: Array.from({ length: 70 }, (_, i) => ({ kind: "message" as const, messageBytes: 40_000 + (i % 5) * 3_000 })) })
const WAL_END = START + WAL.bytes.byteLength

function appendOf(beginLsn: number, walData: Uint8Array, commitLsn: number): AppendRequest {
  return {
    _tag: "AppendRequest", generation: Generation(1), term: Term(1), beginLsn: Lsn(beginLsn), endLsn: Lsn(beginLsn + walData.byteLength),
    commitLsn: Lsn(commitLsn), truncateLsn: Lsn(0), walData
  }
}

/** A timeline on the lab's disk, elected at term 1, holding WAL up to `upTo` (a record end), committed. */
const makeTimeline = (upTo: number = WAL_END) => Effect.gen(function* () {
  const disk = yield* Disk
  yield* disk.mkdir(DIRECTORY)
  yield* persistControlFile(DIRECTORY, freshState, { noSync: false })
  const wal = yield* openSegmentStore({ directory: DIRECTORY, segmentSizeBytes: SEGMENT_BYTES, commitLsn: Lsn(0), pgVersion: PG_VERSION_NUM, systemId: TEST_SYSTEM_ID })
  const acceptor = yield* makeAcceptor({ nodeId: NodeId(1), state: freshState, walStorage: wal, directory: DIRECTORY, noSync: false })
  const timeline = new Timeline(KEY, DIRECTORY, NodeId(1), acceptor, wal)
  yield* timeline.handle({ _tag: "ProposerGreeting", ...KEY, mconf, pgVersion: PG_VERSION_NUM, systemId: TEST_SYSTEM_ID, walSegSizeBytes: SEGMENT_BYTES })
  yield* timeline.handle({ _tag: "VoteRequest", generation: Generation(1), term: Term(1) })
  yield* timeline.handle({ _tag: "ProposerElected", generation: Generation(1), term: Term(1), startStreamingAt: START, termHistory: [{ term: Term(1), lsn: START }] })
  yield* appendUpTo(timeline, upTo)
  return timeline
})

/** Appends the generated WAL from the timeline's flush_lsn to `upTo` (a record end), committing it. */
const appendUpTo = (timeline: Timeline, upTo: number) => Effect.gen(function* () {
  let beginLsn: number = timeline.acceptor.flushLsn()
  while (beginLsn < upTo) {
    let endLsn = beginLsn
    for (const record of WAL.records) if (record.nextLsn > beginLsn && record.nextLsn <= upTo && record.nextLsn - beginLsn <= 200_000) endLsn = record.nextLsn
    expect(endLsn).toBeGreaterThan(beginLsn)
    yield* timeline.handle(appendOf(beginLsn, WAL.bytes.subarray(beginLsn - START, endLsn - START), endLsn))
    beginLsn = endLsn
  }
})

/**
 * Checks, at every raise of backup_lsn, that every segment object below the new value is
 * already stored, and records the values raised to (in order).
 */
function watchBackupLsn(timeline: Timeline, store: { has(path: string): boolean }, violations: string[], recorded: number[] = []): Effect.Effect<void> {
  return Effect.sync(() => {
    const record = timeline.recordBackupLsn.bind(timeline)
    timeline.recordBackupLsn = (backupLsn) => {
      recorded.push(backupLsn)
      for (let segmentNo = segmentNoOf(START, SEGMENT_BYTES); segmentStartLsn(segmentNo + 1, SEGMENT_BYTES) <= backupLsn; segmentNo++) {
        if (!store.has(segmentObjectPath(KEY, segmentNo, SEGMENT_BYTES))) violations.push(`backup_lsn ${backupLsn} passes segment ${segmentNo}, not stored`)
      }
      return record(backupLsn)
    }
  })
}

const backupTo = (timeline: Timeline, lsn: number) => timeline.positions.waitUntil((p) => p.backupLsn >= lsn)

function runLab<A>(program: Effect.Effect<A, unknown, Disk | RemoteStorage | Log>, store: { readonly service: RemoteStorage["Service"] }, log: LogLines, lab = new DiskLab(1)): A {
  const outcome = lab.run(program.pipe(Effect.provideService(RemoteStorage, store.service), Effect.provideService(Log, log.service)))
  if (outcome._tag !== "done") throw new Error(`lab run ${outcome._tag}`)
  if (!Exit.isSuccess(outcome.exit)) throw new Error(`lab run failed: ${String(outcome.exit)}`)
  return outcome.exit.value
}

const localSegment = (segmentNo: number) => joinPath(DIRECTORY, segmentFileName(WAL_TIMELINE_ID, segmentNo, SEGMENT_BYTES))
const FIRST = segmentNoOf(START, SEGMENT_BYTES)
const OPEN = segmentNoOf(WAL_END, SEGMENT_BYTES)

describe("runWalBackup", () => {
  test("every full segment below commit_lsn's is uploaded byte-equal to the local file; backup_lsn reaches commit's segment", () => {
    expect(OPEN - FIRST).toBeGreaterThanOrEqual(3) // the WAL spans three full segments and an open one
    const store = new MapStore()
    const log = new LogLines()
    const violations: string[] = []
    const result = runLab(Effect.gen(function* () {
      const timeline = yield* makeTimeline()
      yield* watchBackupLsn(timeline, store, violations)
      const backup = yield* Effect.forkChild(runWalBackup(timeline))
      yield* backupTo(timeline, segmentStartLsn(OPEN, SEGMENT_BYTES))
      // Nothing more to upload: the open segment stays local (partial backup's job).
      yield* sleepUs(1_000_000)
      yield* Fiber.interrupt(backup)
      const disk = yield* Disk
      const local = []
      for (let segmentNo = FIRST; segmentNo < OPEN; segmentNo++) local.push(yield* disk.readFile(localSegment(segmentNo)))
      return { local, backupLsn: timeline.positions.get().backupLsn }
    }), store, log)
    expect(result.backupLsn).toBe(segmentStartLsn(OPEN, SEGMENT_BYTES))
    expect([...store.objects.keys()].sort()).toEqual(result.local.map((_, i) => segmentObjectPath(KEY, FIRST + i, SEGMENT_BYTES)).sort())
    result.local.forEach((bytes, i) => {
      expect(bytes.byteLength).toBe(SEGMENT_BYTES)
      expect(equalBytes(store.objects.get(segmentObjectPath(KEY, FIRST + i, SEGMENT_BYTES))!, bytes), `segment ${FIRST + i}`).toBe(true)
    })
    expect(log.count("wal backup segment uploaded")).toBe(OPEN - FIRST)
    expect(violations).toEqual([])
  })

  test("a failing put stops backup_lsn before its segment; it is retried with backoff, then backup_lsn advances", () => {
    const failing = segmentObjectPath(KEY, FIRST + 1, SEGMENT_BYTES)
    const store = new MapStore({
      beforePut: (path, attempt) => path === failing && attempt <= 4
        ? new RemoteStorageError({ reason: "Transient", operation: "put", path, message: "503 SlowDown" })
        : undefined
    })
    const log = new LogLines()
    const violations: string[] = []
    const stalledAt: number[] = []
    runLab(Effect.gen(function* () {
      const timeline = yield* makeTimeline()
      yield* watchBackupLsn(timeline, store, violations)
      const backup = yield* Effect.forkChild(runWalBackup(timeline, { parallelJobs: 3 }))
      // While the put keeps failing, backup_lsn is at the end of the segment before it.
      while ((store.putAttempts.get(failing) ?? 0) < 4) yield* sleepUs(1_000)
      stalledAt.push(timeline.positions.get().backupLsn)
      yield* backupTo(timeline, segmentStartLsn(OPEN, SEGMENT_BYTES))
      yield* Fiber.interrupt(backup)
    }), store, log)
    expect(stalledAt).toEqual([segmentStartLsn(FIRST + 1, SEGMENT_BYTES)])
    expect(store.putAttempts.get(failing)).toBe(5)
    const warnings = log.lines.filter((line) => line.message === "wal backup upload failed")
    expect(warnings.length).toBe(4)
    expect(warnings.every((line) => line.level === "warn" && line.fields?.reason === "Transient")).toBe(true)
    // min(10 ms · 2^n, 5 s): 10, 20, 40, 80 ms.
    expect(warnings.map((line) => line.fields?.retry_in_us)).toEqual([10_000, 20_000, 40_000, 80_000])
    expect(violations).toEqual([])
    expect(store.objects.size).toBe(OPEN - FIRST)
  })

  test("uploads run in parallel up to the limit and complete in order, even when later ones finish first", () => {
    for (const parallelJobs of [1, 3]) {
      // The earlier the segment, the slower its put: later ones land first.
      const store = new MapStore({ putDelayUs: (path) => 50_000 - 10_000 * Number(path.slice(-1)) })
      const log = new LogLines()
      const violations: string[] = []
      const recorded: number[] = []
      runLab(Effect.gen(function* () {
        const timeline = yield* makeTimeline()
        yield* watchBackupLsn(timeline, store, violations, recorded)
        const backup = yield* Effect.forkChild(runWalBackup(timeline, { parallelJobs }))
        yield* backupTo(timeline, segmentStartLsn(OPEN, SEGMENT_BYTES))
        yield* Fiber.interrupt(backup)
      }), store, log)
      expect(store.maxInFlightPuts).toBe(Math.min(parallelJobs, OPEN - FIRST))
      if (parallelJobs > 1) expect(store.completedPuts[0]).not.toBe(segmentObjectPath(KEY, FIRST, SEGMENT_BYTES))
      // backup_lsn took every segment end in turn, never jumping over one.
      expect(recorded).toEqual(Array.from({ length: OPEN - FIRST }, (_, i) => segmentStartLsn(FIRST + 1 + i, SEGMENT_BYTES)))
      expect(violations).toEqual([])
    }
  })

  test("a missing local segment is a logged error and a retry, never a skip", () => {
    const store = new MapStore()
    const log = new LogLines()
    const violations: string[] = []
    const stalledAt: number[] = []
    runLab(Effect.gen(function* () {
      const disk = yield* Disk
      const timeline = yield* makeTimeline()
      yield* watchBackupLsn(timeline, store, violations)
      const missing = localSegment(FIRST + 1)
      const saved = yield* disk.readFile(missing)
      yield* disk.unlink(missing)
      const backup = yield* Effect.forkChild(runWalBackup(timeline))
      yield* sleepUs(300_000)
      stalledAt.push(timeline.positions.get().backupLsn)
      // The file comes back (in life: a rename that had not happened yet): the backup goes on.
      const file = yield* disk.open(missing, { create: true })
      yield* file.write(0, saved)
      yield* file.close
      yield* backupTo(timeline, segmentStartLsn(OPEN, SEGMENT_BYTES))
      yield* Fiber.interrupt(backup)
    }), store, log)
    expect(stalledAt).toEqual([segmentStartLsn(FIRST + 1, SEGMENT_BYTES)])
    const errors = log.lines.filter((line) => line.message === "wal backup segment missing")
    expect(errors.length).toBeGreaterThanOrEqual(3)
    expect(errors.every((line) => line.level === "error")).toBe(true)
    expect(violations).toEqual([])
    expect(store.objects.size).toBe(OPEN - FIRST)
  })

  test("backup follows commit_lsn: a segment completed later is uploaded without polling", () => {
    const store = new MapStore()
    const log = new LogLines()
    const violations: string[] = []
    const firstEnd = WAL.records.find((record) => record.nextLsn > segmentStartLsn(FIRST + 1, SEGMENT_BYTES) + 1000)!.nextLsn
    runLab(Effect.gen(function* () {
      const timeline = yield* makeTimeline(firstEnd)
      yield* watchBackupLsn(timeline, store, violations)
      const backup = yield* Effect.forkChild(runWalBackup(timeline))
      yield* backupTo(timeline, segmentStartLsn(FIRST + 1, SEGMENT_BYTES))
      const attemptsBefore = store.putAttempts.size
      yield* sleepUs(2_000_000)
      expect(store.putAttempts.size).toBe(attemptsBefore) // idle while commit_lsn stays in the segment
      yield* appendUpTo(timeline, WAL_END)
      yield* backupTo(timeline, segmentStartLsn(OPEN, SEGMENT_BYTES))
      yield* Fiber.interrupt(backup)
    }), store, log)
    expect(store.objects.size).toBe(OPEN - FIRST)
    expect(violations).toEqual([])
  })
})

describe("uploadSegment", () => {
  test("one segment, once: the object equals the local file; a missing file is a typed error", () => {
    const store = new MapStore()
    const log = new LogLines()
    const outcome = runLab(Effect.gen(function* () {
      const disk = yield* Disk
      const timeline = yield* makeTimeline()
      yield* uploadSegment(timeline, FIRST)
      const local = yield* disk.readFile(localSegment(FIRST))
      const missing = yield* Effect.flip(uploadSegment(timeline, OPEN + 1))
      return { local, missing }
    }), store, log)
    expect(equalBytes(store.objects.get(segmentObjectPath(KEY, FIRST, SEGMENT_BYTES))!, outcome.local)).toBe(true)
    expect(outcome.missing._tag === "SegmentUploadError" && outcome.missing.reason).toBe("Missing")
  })
})

describe("runWalBackup against the simulated object store", () => {
  // The world's store (sim/object-store.ts): latency, slow uploads, transient errors and lost
  // acknowledgements (the object landed, the caller saw a failure). A lost acknowledgement must
  // only cost a retry; backup_lsn may lag what is stored, never lead it.
  test("with transient errors and lost acknowledgements, backup_lsn never passes an unstored object and every segment lands byte-equal", () => {
    let lostAcks = 0
    let transientErrors = 0
    for (let seed = 0; seed < 6; seed++) {
      const lab = new DiskLab(seed)
      const objectStore = new SimObjectStore(lab.kernel, {
        ...NO_OBJECT_STORE_FAULTS,
        requestLatencyUs: [1_000, 20_000],
        uploadBytesPerSecond: 50 * SEGMENT_BYTES,
        transientErrorProbability: 0.25,
        lostAckProbability: 0.25
      })
      const store = { service: objectStore.service(new Incarnation("sk1", 1)), has: (path: string) => objectStore.object(path) !== undefined }
      const log = new LogLines()
      const violations: string[] = []
      const local = runLab(Effect.gen(function* () {
        const timeline = yield* makeTimeline()
        yield* watchBackupLsn(timeline, store, violations)
        const backup = yield* Effect.forkChild(runWalBackup(timeline, { parallelJobs: 2 }))
        yield* backupTo(timeline, segmentStartLsn(OPEN, SEGMENT_BYTES))
        yield* Fiber.interrupt(backup)
        const disk = yield* Disk
        const files = []
        for (let segmentNo = FIRST; segmentNo < OPEN; segmentNo++) files.push(yield* disk.readFile(localSegment(segmentNo)))
        return files
      }), store, log, lab)
      expect(violations, `seed ${seed}`).toEqual([])
      local.forEach((bytes, i) => {
        expect(equalBytes(objectStore.object(segmentObjectPath(KEY, FIRST + i, SEGMENT_BYTES)) ?? new Uint8Array(0), bytes), `seed ${seed} segment ${FIRST + i}`).toBe(true)
      })
      lostAcks += objectStore.stats.lostAcks
      transientErrors += objectStore.stats.transientErrors
    }
    // The faults did bite.
    expect(lostAcks).toBeGreaterThan(0)
    expect(transientErrors).toBeGreaterThan(0)
  })
})

