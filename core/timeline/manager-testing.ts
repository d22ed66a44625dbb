import { Effect, Stream } from "effect"
import { assert } from "../assert.js"
import { concatBytes } from "../bytes.js"
import { makeAcceptor } from "../acceptor/acceptor.js"
import { persistControlFile } from "../acceptor/control-file.js"
import { Generation, newTimelineState, NodeId, type PersistedState, TenantId, Term, TimelineId } from "../acceptor/state.js"
import { monotonicUs, sleepUs } from "../io/clock.js"
import { Disk, joinPath } from "../io/disk.js"
import { Log, type LogFields, type LogLevel } from "../io/log.js"
import { Net, NetError } from "../io/net.js"
import { type RemoteObject, type RemoteStorage, RemoteStorageError } from "../io/remote-storage.js"
import type { AppendRequest } from "../protocol/consensus.js"
import { Lsn, segmentNoOf, segmentOffsetOf } from "../wal/lsn.js"
import { openSegmentStore } from "../wal/segment-store.js"
import { generateWal, TEST_SYSTEM_ID } from "../wal/wal-testing.js"
import type { BackgroundConfig } from "./manager.js"
import { Timeline, type TimelineKey } from "./timeline.js"

/**
 * Test support for the manager and eviction tests: real timelines (control file, segment
 * store, acceptor) built in a data directory laid out as TimelineRegistry expects, so a test
 * can reload them after a crash; a Map-backed object store that outlives node lives (as object
 * storage does) and can be corrupted by hand; a log that keeps lines with their virtual time.
 * No simulator or test-runner imports: core/guard.test.ts scans this file like any core file.
 */

export const SEGMENT_BYTES = 1024 * 1024
export const PG_VERSION_NUM = 150004
export const DATADIR = "/data"
export const TENANT_ID = TenantId("0123456789abcdef0123456789abcdef")
export const KEY: TimelineKey = { tenantId: TENANT_ID, timelineId: TimelineId("fedcba9876543210fedcba9876543210") }
export const START = Lsn(SEGMENT_BYTES + 40)
export const MCONF = { generation: Generation(1), members: [1, 2, 3].map((id) => ({ id: NodeId(id), host: `sk${id}`, pgPort: 5454 })), newMembers: undefined }

export function freshStateOf(key: TimelineKey): PersistedState {
  return newTimelineState({
    ...key,
    mconf: MCONF,
    server: { pgVersion: PG_VERSION_NUM, systemId: TEST_SYSTEM_ID, walSegSizeBytes: SEGMENT_BYTES },
    startLsn: Lsn(0),
    commitLsn: Lsn(0)
  })
}

export function timelineDirectory(datadir: string, key: TimelineKey): string {
  return joinPath(datadir, key.tenantId, key.timelineId)
}

/** WAL from START through ~3.4 segments (records of 40–52 KB, so no append crosses 200 KiB). */
export const WAL = generateWal({
  startLsn: START,
  segmentSizeBytes: SEGMENT_BYTES,
  steps: Array.from({ length: 70 }, (_, i) => ({ kind: "message" as const, messageBytes: 40_000 + (i % 5) * 3_000 }))
})
export const WAL_END = Lsn(START + WAL.bytes.byteLength)

/** A record end in segment `segmentNo`, at least `afterBytes` into it. */
export function recordEndIn(segmentNo: number, afterBytes: number): Lsn {
  const record = WAL.records.find((r) => segmentNoOf(r.nextLsn, SEGMENT_BYTES) === segmentNo && segmentOffsetOf(r.nextLsn, SEGMENT_BYTES) >= afterBytes)
  assert(record !== undefined, `a record ends in segment ${segmentNo} after ${afterBytes}`)
  return Lsn(record.nextLsn)
}

/** The generated WAL bytes [fromLsn, toLsn). */
export function walBytes(fromLsn: number, toLsn: number): Uint8Array {
  return WAL.bytes.subarray(fromLsn - START, toLsn - START)
}

export function appendOf(beginLsn: number, walData: Uint8Array, commitLsn: number, term: number = 1): AppendRequest {
  return {
    _tag: "AppendRequest", generation: Generation(1), term: Term(term), beginLsn: Lsn(beginLsn), endLsn: Lsn(beginLsn + walData.byteLength),
    commitLsn: Lsn(commitLsn), truncateLsn: Lsn(0), walData
  }
}

/** Appends the generated WAL from the timeline's flush_lsn to `upTo` (a record end), committing it up to `commitUpTo`. */
export const appendUpTo = (timeline: Timeline, upTo: number, term: number = 1, commitUpTo: number = upTo) =>
  Effect.gen(function* () {
    let beginLsn: number = timeline.acceptor.flushLsn()
    while (beginLsn < upTo) {
      let endLsn = beginLsn
      for (const record of WAL.records) if (record.nextLsn > beginLsn && record.nextLsn <= upTo && record.nextLsn - beginLsn <= 200_000) endLsn = record.nextLsn
      assert(endLsn > beginLsn, `a record ends between ${beginLsn} and ${upTo}`)
      yield* timeline.handle(appendOf(beginLsn, walBytes(beginLsn, endLsn), Math.min(endLsn, commitUpTo), term))
      beginLsn = endLsn
    }
  })

export interface MakeTimelineOptions {
  readonly datadir?: string
  readonly key?: TimelineKey
  readonly nodeId?: number
  /** A record end: WAL is appended and committed up to it. */
  readonly upTo?: number
  /** A record end at or below upTo: commit_lsn goes no further (default upTo). */
  readonly commitUpTo?: number
  /** Object storage the timeline reads removed segments from. */
  readonly remote?: RemoteStorage["Service"]
}

/** A timeline in `<datadir>/<tenant>/<timeline>`, elected at term 1, holding WAL up to `upTo`, committed up to `commitUpTo`. */
export const makeTimeline = (options: MakeTimelineOptions = {}) =>
  Effect.gen(function* () {
    const disk = yield* Disk
    const datadir = options.datadir ?? DATADIR
    const key = options.key ?? KEY
    const nodeId = NodeId(options.nodeId ?? 1)
    const directory = timelineDirectory(datadir, key)
    const state = freshStateOf(key)
    yield* disk.mkdir(directory)
    // Every directory is durable before anything else: crash tests crash after the setup.
    for (const parent of ["/", datadir, joinPath(datadir, key.tenantId), directory]) yield* disk.syncDirectory(parent)
    yield* persistControlFile(directory, state, { noSync: false })
    const wal = yield* openSegmentStore({ directory, segmentSizeBytes: SEGMENT_BYTES, commitLsn: Lsn(0), pgVersion: PG_VERSION_NUM, systemId: TEST_SYSTEM_ID })
    const acceptor = yield* makeAcceptor({ nodeId, state, walStorage: wal, directory, noSync: false })
    const timeline = new Timeline(key, directory, nodeId, acceptor, wal, { noSync: false, ...(options.remote === undefined ? {} : { remote: options.remote }) })
    yield* timeline.handle({ _tag: "ProposerGreeting", ...key, mconf: MCONF, pgVersion: PG_VERSION_NUM, systemId: TEST_SYSTEM_ID, walSegSizeBytes: SEGMENT_BYTES })
    yield* timeline.handle({ _tag: "VoteRequest", generation: Generation(1), term: Term(1) })
    yield* timeline.handle({ _tag: "ProposerElected", generation: Generation(1), term: Term(1), startStreamingAt: START, termHistory: [{ term: Term(1), lsn: START }] })
    yield* appendUpTo(timeline, options.upTo ?? WAL_END, 1, options.commitUpTo ?? options.upTo ?? WAL_END)
    return timeline
  })

/** A new proposer (term `term`) elected at the timeline's flush_lsn: appends in that term may follow. */
export const electAgain = (timeline: Timeline, term: number) =>
  Effect.gen(function* () {
    const flushLsn = timeline.acceptor.flushLsn()
    yield* timeline.handle({ _tag: "VoteRequest", generation: Generation(1), term: Term(term) })
    const history = [...timeline.acceptor.termHistory(), { term: Term(term), lsn: flushLsn }]
    yield* timeline.handle({ _tag: "ProposerElected", generation: Generation(1), term: Term(term), startStreamingAt: flushLsn, termHistory: history })
  })

// ---- a Map-backed object store ----

export interface StoreHooks {
  /** Before a put's body is read: a failure fails the put (nothing stored). */
  beforePut?(path: string, attempt: number): RemoteStorageError | undefined
  /** A failure fails the delete (the object stays). */
  beforeDelete?(path: string): RemoteStorageError | undefined
  /** Virtual time a put takes (after its body is read, before the object appears). */
  putDelayUs?(path: string): number
}

/** The tests' object store: a Map, with per-path faults and counts of what was asked of it. */
export class MapStore {
  readonly objects = new Map<string, Uint8Array>()
  readonly gets: string[] = []
  readonly putAttempts = new Map<string, number>()
  readonly completedPuts: string[] = []
  inFlightPuts = 0
  maxInFlightPuts = 0

  constructor(readonly hooks: StoreHooks = {}) {}

  has(path: string): boolean {
    return this.objects.has(path)
  }

  readonly service: RemoteStorage["Service"] = {
    put: <E>(path: string, body: Stream.Stream<Uint8Array, E>, lengthBytes: number) => {
      const self = this
      return Effect.gen(function* () {
        const attempt = (self.putAttempts.get(path) ?? 0) + 1
        self.putAttempts.set(path, attempt)
        const fault = self.hooks.beforePut?.(path, attempt)
        if (fault !== undefined) return yield* Effect.fail(fault)
        self.inFlightPuts++
        self.maxInFlightPuts = Math.max(self.maxInFlightPuts, self.inFlightPuts)
        try {
          const chunks = yield* Stream.runCollect(body)
          const bytes = concatBytes([...chunks])
          if (bytes.byteLength !== lengthBytes) {
            return yield* new RemoteStorageError({ reason: "Permanent", operation: "put", path, message: `body of ${bytes.byteLength} bytes, said ${lengthBytes}` })
          }
          yield* sleepUs(self.hooks.putDelayUs?.(path) ?? 100)
          self.objects.set(path, bytes)
          self.completedPuts.push(path)
        } finally {
          self.inFlightPuts--
        }
      })
    },
    get: (path, range) => Effect.suspend(() => {
      this.gets.push(path)
      const bytes = this.objects.get(path)
      if (bytes === undefined) return Effect.fail(new RemoteStorageError({ reason: "NotFound", operation: "get", path, message: "absent" }))
      return Effect.succeed(bytes.slice(range?.startBytes ?? 0, range?.endBytes ?? bytes.byteLength))
    }),
    list: (prefix) => Effect.sync(() => [...this.objects.entries()]
      .filter(([path]) => path.startsWith(prefix))
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([path, bytes]): RemoteObject => ({ path, sizeBytes: bytes.byteLength }))),
    delete: (path) => Effect.suspend(() => {
      const fault = this.hooks.beforeDelete?.(path)
      if (fault !== undefined) return Effect.fail(fault)
      this.objects.delete(path)
      return Effect.void
    }),
    copy: (from, to) => Effect.suspend(() => {
      const bytes = this.objects.get(from)
      if (bytes === undefined) return Effect.fail(new RemoteStorageError({ reason: "NotFound", operation: "copy", path: from, message: "absent" }))
      this.objects.set(to, bytes)
      return Effect.void
    })
  }
}

// ---- a log that keeps its lines ----

export interface LogLine {
  readonly atUs: number
  readonly level: LogLevel
  readonly message: string
  readonly fields: LogFields | undefined
}

export class LogLines {
  readonly lines: LogLine[] = []
  readonly service: Log["Service"] = {
    emit: (level, message, fields) => Effect.map(monotonicUs, (atUs) => {
      this.lines.push({ atUs, level, message, fields })
    })
  }
  count(message: string): number {
    return this.lines.filter((line) => line.message === message).length
  }
  find(message: string): ReadonlyArray<LogLine> {
    return this.lines.filter((line) => line.message === message)
  }
}

/** A network where nothing answers (no test here needs one; peer recovery is off). */
export const REFUSING_NET: Net["Service"] = Net.of({
  listen: (address) => Effect.fail(new NetError({ reason: "Other", address, message: "no network in this test" })),
  connect: (address) => Effect.fail(new NetError({ reason: "ConnectionRefused", address, message: "no network in this test" }))
})

/** A manager configuration for tests: fast ticks, nothing but what a test turns on. */
export function testBackgroundConfig(nodeId: number, overrides: Partial<BackgroundConfig> = {}): BackgroundConfig {
  return {
    nodeId: NodeId(nodeId),
    walBackup: undefined,
    partialBackup: undefined,
    heartbeatTimeoutUs: 1_000_000,
    controlFileSaveIntervalUs: 3_600_000_000,
    walsendersKeepHorizon: false,
    peerRecovery: false,
    eviction: undefined,
    safekeeperConnstr: `sk${nodeId}:5454`,
    httpConnstr: `sk${nodeId}:7676`,
    availabilityZone: "az",
    tickUs: 50_000,
    ...overrides
  }
}
