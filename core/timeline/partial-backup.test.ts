// Goal: partial backup follows reference §10: the open segment's first offset(flush_lsn) bytes
// uploaded under a name carrying last_log_term (never the acceptor's term), recorded in the
// control file InProgress → Uploaded (old one Deleting) → deleted, with one Uploaded entry at
// most, and a control file that tells the truth whenever the task is interrupted or the node
// crashes. Method: the plain transitions under fast-check (random rounds that fail anywhere);
// then a real Timeline (control file, segment store, acceptor) on a simulated disk fed real
// WAL, a Map-backed RemoteStorage written here (it outlives node lives, as object storage
// does), interrupted mid-upload and crashed before sampled Disk operations, then reloaded.
import fc from "fast-check"
import { Effect, Exit, Fiber } from "effect"
import { describe, expect, test } from "vitest"
import { Incarnation } from "../../sim/kernel.js"
import { NO_OBJECT_STORE_FAULTS, SimObjectStore } from "../../sim/object-store.js"
import { DiskLab } from "../../sim/testing.js"
import { equalBytes } from "../bytes.js"
import { makeAcceptor } from "../acceptor/acceptor.js"
import { loadControlFile, persistControlFile } from "../acceptor/control-file.js"
import {
  Generation,
  newTimelineState,
  NodeId,
  type PartialRemoteSegment,
  type PersistedState,
  TenantId,
  Term,
  TimelineId
} from "../acceptor/state.js"
import { sleepUs } from "../io/clock.js"
import { Disk, joinPath } from "../io/disk.js"
import { Log } from "../io/log.js"
import { RemoteStorage, RemoteStorageError } from "../io/remote-storage.js"
import type { AppendRequest } from "../protocol/consensus.js"
import { Lsn, segmentFileName, segmentNoOf, segmentOffsetOf, segmentStartLsn } from "../wal/lsn.js"
import { openSegmentStore, PARTIAL_SUFFIX, WAL_TIMELINE_ID } from "../wal/segment-store.js"
import { generateWal, TEST_SYSTEM_ID } from "../wal/wal-testing.js"
import {
  afterDelete,
  afterUpload,
  deletionCandidates,
  isPartialUploadNeeded,
  PARTIAL_SEGMENTS_PENDING_MAX,
  planPartialUpload,
  runPartialBackup,
  uploadedSegment
} from "./partial-backup.js"
import { parsePartialObjectName, partialObjectPath, timelinePrefix } from "./remote-layout.js"
import { Timeline } from "./timeline.js"
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
const TIMEOUT_US = 1_000_000

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
  // The directories are durable before anything else: crash tests crash after the setup.
  for (const directory of ["/", "/data", "/data/tenant"]) yield* disk.syncDirectory(directory)
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

function runLab<A>(program: Effect.Effect<A, unknown, Disk | RemoteStorage | Log>, store: { readonly service: RemoteStorage["Service"] }, log: LogLines, lab: DiskLab = new DiskLab(1)): A {
  const outcome = lab.run(program.pipe(Effect.provideService(RemoteStorage, store.service), Effect.provideService(Log, log.service)))
  if (outcome._tag !== "done") throw new Error(`lab run ${outcome._tag}`)
  if (!Exit.isSuccess(outcome.exit)) throw new Error(`lab run failed: ${String(outcome.exit)}`)
  return outcome.exit.value
}

/** The same timeline in a new life: control file and segment store loaded from disk. */
const reopenTimeline = Effect.gen(function* () {
  const state = yield* loadControlFile(DIRECTORY)
  const wal = yield* openSegmentStore({
    directory: DIRECTORY, segmentSizeBytes: SEGMENT_BYTES, commitLsn: state.commitLsn, timelineStartLsn: state.timelineStartLsn,
    pgVersion: PG_VERSION_NUM, systemId: TEST_SYSTEM_ID
  })
  const acceptor = yield* makeAcceptor({ nodeId: NodeId(1), state, walStorage: wal, directory: DIRECTORY, noSync: false })
  return new Timeline(KEY, DIRECTORY, NodeId(1), acceptor, wal)
})

/** A record end in segment `segmentNo`, at least `afterBytes` into it. */
function recordEndIn(segmentNo: number, afterBytes: number): number {
  const record = WAL.records.find((r) => segmentNoOf(r.nextLsn, SEGMENT_BYTES) === segmentNo && segmentOffsetOf(r.nextLsn, SEGMENT_BYTES) >= afterBytes)
  if (record === undefined) throw new Error(`no record end in segment ${segmentNo} after ${afterBytes}`)
  return record.nextLsn
}

const partialObjects = (objects: ReadonlyMap<string, Uint8Array>) => [...objects.keys()].filter((path) => path.endsWith(PARTIAL_SUFFIX)).sort()
const uploadedOf = (timeline: Timeline) => uploadedSegment(timeline.persisted.partialBackup.segments)
const waitUploaded = (timeline: Timeline, flushLsn: number) =>
  Effect.gen(function* () {
    while (uploadedOf(timeline)?.flushLsn !== flushLsn) yield* sleepUs(10_000)
  })

/** The local open segment's first `lengthBytes`, from the WAL the timeline was fed. */
function expectedPrefix(flushLsn: number): Uint8Array {
  const segmentStart = segmentStartLsn(segmentNoOf(flushLsn, SEGMENT_BYTES), SEGMENT_BYTES)
  return WAL.bytes.subarray(Math.max(0, segmentStart - START), flushLsn - START)
}

/**
 * What a control file must say whatever happened: one Uploaded entry at most, whose object is
 * in storage holding exactly the WAL it names; every partial object in storage is listed.
 */
function consistencyProblems(state: PersistedState, objects: ReadonlyMap<string, Uint8Array>): string[] {
  const problems: string[] = []
  const segments = state.partialBackup.segments
  const uploaded = segments.filter((segment) => segment.status === "Uploaded")
  if (uploaded.length > 1) problems.push(`${uploaded.length} Uploaded entries`)
  for (const segment of uploaded) {
    const bytes = objects.get(partialObjectPath(KEY, segment.name))
    if (bytes === undefined) problems.push(`Uploaded ${segment.name} is not stored`)
    else {
      const wanted = expectedPrefix(segment.flushLsn)
      // Bytes before START in the first segment were never written by us: compare what we wrote.
      const skip = bytes.byteLength - wanted.byteLength
      if (skip < 0 || !equalBytes(bytes.subarray(skip), wanted)) problems.push(`Uploaded ${segment.name} holds other bytes`)
    }
  }
  const listed = new Set(segments.map((segment) => partialObjectPath(KEY, segment.name)))
  for (const path of partialObjects(objects)) if (!listed.has(path)) problems.push(`stored ${path} is not in the control file`)
  return problems
}

describe("partial backup state transitions", () => {
  const arbPositions = fc.record({
    flushLsn: fc.integer({ min: 1, max: 8 * SEGMENT_BYTES }),
    commitDelta: fc.integer({ min: 0, max: SEGMENT_BYTES }),
    lastLogTerm: fc.integer({ min: 0, max: 5 })
  }).map((p) => ({ flushLsn: Lsn(p.flushLsn), commitLsn: Lsn(Math.max(0, p.flushLsn - p.commitDelta)), lastLogTerm: Term(p.lastLogTerm) }))
  // Each round fails after step 1, 2 (upload), 3, or some deletes of step 4, or not at all.
  const arbRound = fc.record({ positions: arbPositions, failAfterStep: fc.constantFrom(1, 2, 3, 4, 5), deletesBeforeFailure: fc.nat(3) })

  test("random rounds failing anywhere keep one Uploaded entry at most, unique names, and never delete the Uploaded object", () => {
    fc.assert(fc.property(fc.array(arbRound, { maxLength: 25 }), (rounds) => {
      let segments: ReadonlyArray<PartialRemoteSegment> = []
      const stored = new Set<string>()
      for (const round of rounds) {
        if (!isPartialUploadNeeded(segments, round.positions)) continue
        const plan = planPartialUpload({ segments, positions: round.positions, nodeId: NodeId(2), segmentSizeBytes: SEGMENT_BYTES })
        segments = plan.segments
        if (round.failAfterStep === 1) continue
        stored.add(plan.prepared.name)
        if (round.failAfterStep === 2) continue
        segments = afterUpload(segments, plan.prepared)
        if (round.failAfterStep === 3) continue
        const candidates = deletionCandidates(segments)
        const deleted = new Set(candidates.slice(0, round.failAfterStep === 4 ? round.deletesBeforeFailure : candidates.length).map((s) => s.name))
        for (const name of deleted) stored.delete(name)
        segments = afterDelete(segments, deleted)
        const uploaded = uploadedSegment(segments)
        expect(uploaded?.name).toBe(plan.prepared.name)
        expect(stored.has(uploaded!.name)).toBe(true)
        if (round.failAfterStep === 5) expect(segments).toEqual([uploaded])
      }
      expect(new Set(segments.map((s) => s.name)).size).toBe(segments.length)
      expect(segments.filter((s) => s.status === "Uploaded").length).toBeLessThanOrEqual(1)
      // Whatever may be in storage is listed, so a later round deletes it.
      const listed = new Set(segments.map((s) => s.name))
      for (const name of stored) expect(listed.has(name)).toBe(true)
    }))
  })

  test("the name and the entry carry last_log_term, never the acceptor's term", () => {
    const positions = { flushLsn: Lsn(0x2_1a_b0c8), commitLsn: Lsn(0x2_10_0000), lastLogTerm: Term(3) }
    const { prepared } = planPartialUpload({ segments: [], positions, nodeId: NodeId(7), segmentSizeBytes: 16 * SEGMENT_BYTES })
    expect(prepared).toEqual({ status: "InProgress", name: "000000010000000000000002_3_00000000021AB0C8_0000000002100000_sk7.partial", commitLsn: 0x2_10_0000, flushLsn: 0x2_1a_b0c8, term: 3 })
  })

  test("an upload is needed iff nothing is uploaded or (flush, commit, last_log_term) moved", () => {
    const uploaded: PartialRemoteSegment = { status: "Uploaded", name: "x", flushLsn: Lsn(100), commitLsn: Lsn(90), term: Term(2) }
    const same = { flushLsn: Lsn(100), commitLsn: Lsn(90), lastLogTerm: Term(2) }
    expect(isPartialUploadNeeded([], same)).toBe(true)
    expect(isPartialUploadNeeded([uploaded], same)).toBe(false)
    expect(isPartialUploadNeeded([{ ...uploaded, status: "InProgress" }], same)).toBe(true)
    expect(isPartialUploadNeeded([uploaded], { ...same, flushLsn: Lsn(101) })).toBe(true)
    expect(isPartialUploadNeeded([uploaded], { ...same, commitLsn: Lsn(91) })).toBe(true)
    expect(isPartialUploadNeeded([uploaded], { ...same, lastLogTerm: Term(3) })).toBe(true)
    expect(() => uploadedSegment([uploaded, { ...uploaded, name: "y" }])).toThrow(/at most one Uploaded/)
  })
})

describe("runPartialBackup", () => {
  test("uploads the open segment's first offset(flush) bytes, named by last_log_term (term ≠ last_log_term)", () => {
    const flushLsn = recordEndIn(segmentNoOf(START, SEGMENT_BYTES) + 1, 300_000)
    const store = new MapStore()
    const log = new LogLines()
    const result = runLab(Effect.gen(function* () {
      const timeline = yield* makeTimeline(flushLsn)
      // A vote at term 2 raises the term; the WAL (and its last_log_term, 1) stays.
      yield* timeline.handle({ _tag: "VoteRequest", generation: Generation(1), term: Term(2) })
      expect(timeline.positions.get().term).toBe(2)
      expect(timeline.positions.get().lastLogTerm).toBe(1)
      const task = yield* Effect.forkChild(runPartialBackup(timeline, { timeoutUs: TIMEOUT_US, nodeId: NodeId(1) }))
      yield* waitUploaded(timeline, flushLsn)
      yield* sleepUs(10 * TIMEOUT_US) // nothing changes: no more uploads
      yield* Fiber.interrupt(task)
      const disk = yield* Disk
      const local = yield* disk.readFile(joinPath(DIRECTORY, segmentFileName(WAL_TIMELINE_ID, segmentNoOf(flushLsn, SEGMENT_BYTES), SEGMENT_BYTES) + PARTIAL_SUFFIX))
      const persisted = yield* loadControlFile(DIRECTORY)
      return { local, persisted }
    }), store, log)
    const segments = result.persisted.partialBackup.segments
    expect(segments.length).toBe(1)
    const entry = segments[0]!
    expect(entry.status).toBe("Uploaded")
    expect(entry.term).toBe(1)
    expect(parsePartialObjectName(entry.name, SEGMENT_BYTES)).toEqual({
      segmentNo: segmentNoOf(flushLsn, SEGMENT_BYTES), lastLogTerm: 1, flushLsn, commitLsn: flushLsn, nodeId: 1
    })
    expect(entry.name).toContain("_1_")
    expect(partialObjects(store.objects)).toEqual([`${timelinePrefix(KEY)}/${entry.name}`])
    const object = store.objects.get(partialObjectPath(KEY, entry.name))!
    expect(object.byteLength).toBe(segmentOffsetOf(flushLsn, SEGMENT_BYTES))
    expect(equalBytes(object, result.local.subarray(0, object.byteLength))).toBe(true)
    expect(store.putAttempts.size).toBe(1)
    expect(log.lines.filter((line) => line.message === "partial backup uploaded").map((line) => line.fields?.name)).toEqual([entry.name])
    expect(consistencyProblems(result.persisted, store.objects)).toEqual([])
  })

  test("new WAL replaces the partial: the stale object is deleted and one Uploaded entry is left; a new segment restarts the wait", () => {
    const second = segmentNoOf(START, SEGMENT_BYTES) + 1
    const flushes = [recordEndIn(second, 100_000), recordEndIn(second, 500_000), recordEndIn(second + 1, 200_000)]
    const store = new MapStore()
    const log = new LogLines()
    const states: PersistedState[] = []
    const problems: string[][] = []
    const capture = (timeline: Timeline) => Effect.sync(() => {
      states.push(timeline.persisted)
      problems.push(consistencyProblems(timeline.persisted, store.objects))
    })
    runLab(Effect.gen(function* () {
      const timeline = yield* makeTimeline(flushes[0])
      const task = yield* Effect.forkChild(runPartialBackup(timeline, { timeoutUs: TIMEOUT_US, nodeId: NodeId(1) }))
      yield* waitUploaded(timeline, flushes[0]!)
      yield* capture(timeline)
      yield* appendUpTo(timeline, flushes[1]!)
      yield* waitUploaded(timeline, flushes[1]!)
      yield* sleepUs(10_000) // the deletes (steps 4, 5) follow the upload
      yield* capture(timeline)
      // WAL into the next segment: the wait starts again, then that segment's partial replaces.
      yield* appendUpTo(timeline, flushes[2]!)
      yield* sleepUs(TIMEOUT_US / 2)
      expect(uploadedOf(timeline)?.flushLsn).toBe(flushes[1])
      yield* waitUploaded(timeline, flushes[2]!)
      yield* sleepUs(10_000)
      yield* capture(timeline)
      yield* Fiber.interrupt(task)
    }), store, log)
    for (const [i, state] of states.entries()) {
      expect(state.partialBackup.segments.map((s) => [s.status, s.flushLsn])).toEqual([["Uploaded", flushes[i]]])
      expect(problems[i]).toEqual([])
    }
    expect(partialObjects(store.objects)).toEqual([partialObjectPath(KEY, states[2]!.partialBackup.segments[0]!.name)])
    expect(log.count("partial backup uploaded")).toBe(3)
    expect(log.count("partial backup replaced")).toBe(2)
    expect(store.putAttempts.size).toBe(3)
  })

  test("an interruption mid-upload leaves a consistent control file; the next run cleans up", () => {
    const second = segmentNoOf(START, SEGMENT_BYTES) + 1
    const flushes = [recordEndIn(second, 100_000), recordEndIn(second, 500_000)]
    // The second upload takes 5 s: the task is interrupted 1 s into it.
    const store = new MapStore({ putDelayUs: (path) => (path.includes(Lsn(flushes[1]!).toString(16).toUpperCase()) ? 5_000_000 : 100) })
    const log = new LogLines()
    const seen: PersistedState[] = []
    const problems: string[][] = []
    const capture = Effect.gen(function* () {
      const loaded = yield* loadControlFile(DIRECTORY)
      seen.push(loaded)
      problems.push(consistencyProblems(loaded, store.objects))
    })
    runLab(Effect.gen(function* () {
      const timeline = yield* makeTimeline(flushes[0])
      const first = yield* Effect.forkChild(runPartialBackup(timeline, { timeoutUs: TIMEOUT_US, nodeId: NodeId(1) }))
      yield* waitUploaded(timeline, flushes[0]!)
      yield* appendUpTo(timeline, flushes[1]!)
      while (store.putAttempts.size < 2) yield* sleepUs(10_000)
      yield* sleepUs(1_000_000)
      yield* Fiber.interrupt(first)
      yield* capture
      const again = yield* Effect.forkChild(runPartialBackup(timeline, { timeoutUs: TIMEOUT_US, nodeId: NodeId(1) }))
      yield* waitUploaded(timeline, flushes[1]!)
      yield* sleepUs(10_000)
      yield* Fiber.interrupt(again)
      yield* capture
    }), store, log)
    const [interrupted, finished] = seen
    // After the interruption: the old partial is still the Uploaded one, the new one InProgress.
    expect(interrupted!.partialBackup.segments.map((s) => [s.status, s.flushLsn])).toEqual([["Uploaded", flushes[0]], ["InProgress", flushes[1]]])
    expect(problems[0]).toEqual([])
    expect(finished!.partialBackup.segments.map((s) => [s.status, s.flushLsn])).toEqual([["Uploaded", flushes[1]]])
    expect(problems[1]).toEqual([])
    expect(partialObjects(store.objects).length).toBe(1)
  })

  test("a crash before any Disk operation of the rounds leaves a consistent control file, and the next life converges", () => {
    const second = segmentNoOf(START, SEGMENT_BYTES) + 1
    const flushes = [recordEndIn(second, 100_000), recordEndIn(second, 500_000)]
    const firstLife = (store: MapStore) => Effect.gen(function* () {
      const timeline = yield* makeTimeline(flushes[0])
      yield* Effect.forkChild(runPartialBackup(timeline, { timeoutUs: TIMEOUT_US, nodeId: NodeId(1) }))
      yield* waitUploaded(timeline, flushes[0]!)
      yield* appendUpTo(timeline, flushes[1]!)
      yield* waitUploaded(timeline, flushes[1]!)
      yield* sleepUs(10_000)
      expect(timeline.persisted.partialBackup.segments.length).toBe(1)
    })
    // Disk operations of the setup alone: crash points start after them.
    const setup = new DiskLab(7).run(Effect.asVoid(makeTimeline(flushes[0])))
    const withServices = (store: MapStore, log: LogLines) => firstLife(store).pipe(Effect.provideService(RemoteStorage, store.service), Effect.provideService(Log, log.service))
    const clean = new DiskLab(7).run(withServices(new MapStore(), new LogLines()))
    expect(setup._tag === "done" && clean._tag === "done").toBe(true)
    const points = 24
    let crashed = 0
    for (let point = 0; point < points; point++) {
      const crashBeforeOperation = setup.operations + Math.floor(((point + 0.5) / points) * (clean.operations - setup.operations))
      const lab = new DiskLab(100 + point)
      const store = new MapStore()
      const log = new LogLines()
      const outcome = lab.run(withServices(store, log), { crashBeforeOperation })
      if (outcome._tag === "crashed") crashed++
      else lab.crash()
      const after = runLab(Effect.gen(function* () {
        const loaded = yield* loadControlFile(DIRECTORY)
        const problems = consistencyProblems(loaded, store.objects)
        const timeline = yield* reopenTimeline
        yield* Effect.forkChild(runPartialBackup(timeline, { timeoutUs: TIMEOUT_US, nodeId: NodeId(1) }))
        yield* waitUploaded(timeline, timeline.positions.get().flushLsn)
        yield* sleepUs(10_000)
        return { problems, converged: yield* loadControlFile(DIRECTORY), flushLsn: timeline.positions.get().flushLsn }
      }), store, log, lab)
      expect(after.problems, `crash before op ${crashBeforeOperation}`).toEqual([])
      expect(after.converged.partialBackup.segments.map((s) => [s.status, s.flushLsn])).toEqual([["Uploaded", after.flushLsn]])
      expect(consistencyProblems(after.converged, store.objects)).toEqual([])
      expect(partialObjects(store.objects).length).toBe(1)
    }
    expect(crashed).toBeGreaterThan(points / 2)
  })

  test("last_log_term changing during the upload fails the round; the next one uploads under the new term", () => {
    const second = segmentNoOf(START, SEGMENT_BYTES) + 1
    const firstFlush = recordEndIn(second, 300_000)
    const secondFlush = recordEndIn(second, 500_000)
    // The first upload is slow: a new proposer (term 2) writes WAL meanwhile.
    const store = new MapStore({ putDelayUs: (path) => (store.putAttempts.size === 1 && path.includes("_1_") ? 3_000_000 : 100) })
    const log = new LogLines()
    const problems: string[][] = []
    const result = runLab(Effect.gen(function* () {
      const timeline = yield* makeTimeline(firstFlush)
      const task = yield* Effect.forkChild(runPartialBackup(timeline, { timeoutUs: TIMEOUT_US, nodeId: NodeId(1) }))
      while (store.putAttempts.size < 1) yield* sleepUs(10_000)
      yield* timeline.handle({ _tag: "VoteRequest", generation: Generation(1), term: Term(2) })
      const history = [{ term: Term(1), lsn: START }, { term: Term(2), lsn: Lsn(firstFlush) }]
      yield* timeline.handle({ _tag: "ProposerElected", generation: Generation(1), term: Term(2), startStreamingAt: Lsn(firstFlush), termHistory: history })
      yield* timeline.handle({ ...appendOf(firstFlush, WAL.bytes.subarray(firstFlush - START, secondFlush - START), secondFlush), term: Term(2) })
      expect(timeline.positions.get().lastLogTerm).toBe(2)
      yield* waitUploaded(timeline, secondFlush)
      yield* sleepUs(10_000)
      problems.push(consistencyProblems(timeline.persisted, store.objects))
      yield* Fiber.interrupt(task)
      return timeline.persisted
    }), store, log)
    const failures = log.lines.filter((line) => line.message === "partial backup failed")
    expect(failures.map((line) => line.fields?.reason)).toEqual(["TermChanged"])
    expect(result.partialBackup.segments.map((s) => [s.status, s.term, s.flushLsn])).toEqual([["Uploaded", 2, secondFlush]])
    expect(result.partialBackup.segments[0]!.name).toContain("_2_")
    expect(problems).toEqual([[]])
    // The object of the failed round (it may mix two histories) was deleted.
    expect(partialObjects(store.objects)).toEqual([partialObjectPath(KEY, result.partialBackup.segments[0]!.name)])
  })

  test("entries stay bounded when uploads and deletes keep failing", () => {
    const second = segmentNoOf(START, SEGMENT_BYTES) + 1
    const ends = WAL.records.map((r) => r.nextLsn).filter((lsn) => segmentNoOf(lsn, SEGMENT_BYTES) === second)
    expect(ends.length).toBeGreaterThan(PARTIAL_SEGMENTS_PENDING_MAX + 4)
    const unavailable = (path: string) => new RemoteStorageError({ reason: "Transient", operation: "any", path, message: "503" })
    let failing = true
    const store = new MapStore({ beforePut: (path) => (failing ? unavailable(path) : undefined), beforeDelete: (path) => (failing ? unavailable(path) : undefined) })
    const log = new LogLines()
    const counts: number[] = []
    const problems: string[][] = []
    runLab(Effect.gen(function* () {
      const timeline = yield* makeTimeline(ends[0]!)
      yield* Effect.forkChild(runPartialBackup(timeline, { timeoutUs: TIMEOUT_US, nodeId: NodeId(1) }))
      // New WAL before every round: each failed round has a new name to record.
      for (const end of ends.slice(1)) {
        yield* sleepUs(TIMEOUT_US + 10_000)
        counts.push(timeline.persisted.partialBackup.segments.length)
        yield* appendUpTo(timeline, end)
      }
      failing = false
      yield* waitUploaded(timeline, ends[ends.length - 1]!)
      yield* sleepUs(10_000)
      counts.push(timeline.persisted.partialBackup.segments.length)
      problems.push(consistencyProblems(timeline.persisted, store.objects))
    }), store, log)
    // It grows to the bound (one new InProgress entry per failed round; nothing is Uploaded), then stays there.
    expect(Math.max(...counts)).toBe(PARTIAL_SEGMENTS_PENDING_MAX)
    expect(counts.slice(PARTIAL_SEGMENTS_PENDING_MAX, -1).every((count) => count === PARTIAL_SEGMENTS_PENDING_MAX)).toBe(true)
    expect(counts[counts.length - 1]).toBe(1)
    expect(problems).toEqual([[]])
  })
})

describe("runPartialBackup against the simulated object store", () => {
  // Lost acknowledgements are the hard case: a put that landed but "failed" leaves an object
  // behind an InProgress entry; a delete that happened but "failed" leaves a Deleting entry
  // over nothing. Both must be cleaned up, and the control file must tell the truth after
  // every persist.
  test("with transient errors and lost acknowledgements, every persisted state is consistent and one partial is left", () => {
    const second = segmentNoOf(START, SEGMENT_BYTES) + 1
    const flushes = [recordEndIn(second, 100_000), recordEndIn(second, 400_000), recordEndIn(second, 700_000), recordEndIn(second + 1, 100_000)]
    let lostAcks = 0
    let failedRounds = 0
    for (let seed = 0; seed < 6; seed++) {
      const lab = new DiskLab(seed)
      const objectStore = new SimObjectStore(lab.kernel, {
        ...NO_OBJECT_STORE_FAULTS,
        requestLatencyUs: [1_000, 20_000],
        transientErrorProbability: 0.25,
        lostAckProbability: 0.25
      })
      const store = { service: objectStore.service(new Incarnation("sk1", 1)) }
      const log = new LogLines()
      const problems: string[] = []
      const final = runLab(Effect.gen(function* () {
        const timeline = yield* makeTimeline(flushes[0])
        const modify = timeline.modifyPersisted.bind(timeline)
        timeline.modifyPersisted = (change) => Effect.tap(modify(change), () => Effect.sync(() => {
          problems.push(...consistencyProblems(timeline.persisted, objectStore.objects()))
        }))
        const task = yield* Effect.forkChild(runPartialBackup(timeline, { timeoutUs: TIMEOUT_US, nodeId: NodeId(1) }))
        for (const flushLsn of flushes) {
          yield* appendUpTo(timeline, flushLsn)
          yield* waitUploaded(timeline, flushLsn)
        }
        // Left-over entries go once the partial is up to date (after a failed delete: one timeout later).
        while (timeline.persisted.partialBackup.segments.length > 1) yield* sleepUs(100_000)
        yield* Fiber.interrupt(task)
        return timeline.persisted
      }), store, log, lab)
      expect(problems, `seed ${seed}`).toEqual([])
      expect(final.partialBackup.segments.map((s) => [s.status, s.flushLsn])).toEqual([["Uploaded", flushes[3]]])
      expect(consistencyProblems(final, objectStore.objects())).toEqual([])
      expect(partialObjects(objectStore.objects())).toEqual([partialObjectPath(KEY, final.partialBackup.segments[0]!.name)])
      lostAcks += objectStore.stats.lostAcks
      failedRounds += log.count("partial backup failed")
    }
    expect(lostAcks).toBeGreaterThan(0)
    expect(failedRounds).toBeGreaterThan(0)
  })
})

