import { constants as fsConstants, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import * as fsp from "node:fs/promises"
import { loadavg, tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { CreateBucketCommand, GetObjectCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3"
import { Duration, Effect, Fiber } from "effect"
import { CONTROL_FILE_NAME, loadControlFile, persistControlFile } from "../core/acceptor/control-file.js"
import { makeAcceptor } from "../core/acceptor/acceptor.js"
import { Generation, newTimelineState, NodeId, type PersistedState, TenantId, Term, TimelineId } from "../core/acceptor/state.js"
import { Disk } from "../core/io/disk.js"
import { Log } from "../core/io/log.js"
import { RemoteStorage } from "../core/io/remote-storage.js"
import type { AppendRequest } from "../core/protocol/consensus.js"
import { openTimelineStorage } from "../core/timeline/open.js"
import { segmentObjectPath } from "../core/timeline/remote-layout.js"
import { Timeline, type TimelineKey } from "../core/timeline/timeline.js"
import { DEFAULT_WAL_BACKUP_PARALLEL_JOBS, runWalBackup, UPLOAD_CHUNK_BYTES, uploadSegment } from "../core/timeline/wal-backup.js"
import { DEFAULT_WAL_SEGMENT_SIZE_BYTES, Lsn, segmentFileName, segmentNoOf, segmentStartLsn } from "../core/wal/lsn.js"
import { openSegmentStore, WAL_TIMELINE_ID } from "../core/wal/segment-store.js"
import { generateWal, TEST_SYSTEM_ID } from "../core/wal/wal-testing.js"
import { makeLiveDisk } from "../live/disk.js"
import { makeLiveLog } from "../live/log.js"
import { makeLocalRemoteStorage } from "../live/remote-storage-local.js"
import { makeS3Client, makeS3RemoteStorage, type S3Config } from "../live/remote-storage-s3.js"
import { S3RVER_CREDENTIALS, type S3rverHandle, startS3rver } from "../live/testing/s3rver.js"

/**
 * WAL backup upload throughput (issue 8): the real code path over a real timeline, against a
 * plain copy of the same files to the same target, interleaved round by round in the same run
 * so machine noise hits all alike.
 *
 * The timeline: a data directory in a temp dir on the live Disk, fed generated WAL through
 * greeting, vote, elected and appends until it holds SK_BENCH_BACKUP_SEGMENTS full 16 MiB
 * segments (and an open one); its control file, commit_lsn persisted and nothing backed up, is
 * kept and written back before each round, so every round uploads every segment.
 *
 * Project rows (fsync on, the live Disk, logs at warn and above):
 * - `uploadSegment` of each segment in turn (one put at a time);
 * - `runWalBackup` with the default parallel jobs, from the first segment until backup_lsn
 *   reaches the open segment (so control-file saves of backup_lsn are included).
 * Baselines, with the same concurrency as the row they stand beside:
 * - local directory store: `copyFile` to `<root>/.tmp`, fsync, rename to the object's file,
 *   fsync of its directory (the store's own durability steps, nothing else); and the same with
 *   the copy done by 1 MiB preads and pwrites through JavaScript buffers, as the real path
 *   reads and writes, which tells the cost of copying through user space from the project's;
 * - S3 (s3rver on 127.0.0.1, started here in a child node and stopped after): `readFile` of the
 *   segment then one `PutObject` of those bytes with @aws-sdk/client-s3, no project code.
 * Each row prints MB/s (best, median) and this process's CPU per MB; ratios are the project
 * row's MB/s over the baseline's, and CPU per MB over the baseline's.
 * Every project row's objects are compared with the local files after the warm-up round.
 * Environment: SK_BENCH_BACKUP_SEGMENTS (default 8), SK_BENCH_BACKUP_ROUNDS (default 5),
 * SK_BENCH_BACKUP_ONLY ("local" or "s3": one store only), SK_BENCH_BACKUP_ROWS ("project",
 * "baseline", or text in the rows' names: those rows only, e.g. under `node --cpu-prof`, so a
 * profile shows one of them).
 */
const SEGMENT_BYTES = DEFAULT_WAL_SEGMENT_SIZE_BYTES
const SEGMENTS_DEFAULT = 8
const ROUNDS_DEFAULT = 5
const PG_VERSION_NUM = 150004
const NODE_ID = NodeId(1)
const KEY: TimelineKey = { tenantId: TenantId("0123456789abcdef0123456789abcdef"), timelineId: TimelineId("fedcba9876543210fedcba9876543210") }
/** WAL begins after segment 1's long page header, as the WAL-backup tests do. */
const START = Lsn(SEGMENT_BYTES + 40)
/** Logical messages this size fill the segments (~270 records each). */
const MESSAGE_BYTES = 60_000
/** Appends as a walproposer sends them: a few records, under MAX_SEND_SIZE-ish sizes. */
const APPEND_BYTES_MAX = 200_000
/** A round that has not finished by then is a broken bench (retries forever), not a slow one. */
const ROUND_TIMEOUT = Duration.minutes(5)
const BUCKET = "sk-bench"


interface Fixture {
  readonly directory: string
  /** The control file with commit_lsn persisted and nothing backed up. */
  readonly controlFile: Uint8Array
  readonly segmentNos: ReadonlyArray<number>
  readonly totalBytes: number
}

interface Contender {
  readonly name: string
  /** The baseline rows this one is compared with (a baseline has none), each with a short label. */
  readonly against?: ReadonlyArray<{ readonly name: string; readonly label: string }>
  /** One pass over every segment; resolves to its wall and CPU time (set-up excluded). */
  readonly run: () => Promise<Elapsed>
  /** After the warm-up pass: throws when the objects differ from the local files. */
  readonly verify?: () => Promise<void>
}

/**
 * Wall time, and this process's CPU time (all threads: the fs thread pool's copying counts too;
 * s3rver's child does not). On a shared machine with few cores, CPU per MB moves far less with
 * other work than MB/s does.
 */
interface Elapsed {
  readonly wallMs: number
  readonly cpuMs: number
}

function startClock(): () => Elapsed {
  const wallStart = performance.now()
  const cpuStart = process.cpuUsage()
  return () => {
    const cpu = process.cpuUsage(cpuStart)
    return { wallMs: performance.now() - wallStart, cpuMs: (cpu.user + cpu.system) / 1000 }
  }
}

const liveDisk = makeLiveDisk()
const liveLog = makeLiveLog({ levelMin: "warn" })

export async function benchBackup(): Promise<void> {
  const segments = envInteger("SK_BENCH_BACKUP_SEGMENTS", SEGMENTS_DEFAULT)
  const rounds = envInteger("SK_BENCH_BACKUP_ROUNDS", ROUNDS_DEFAULT)
  const only = process.env["SK_BENCH_BACKUP_ONLY"]
  if (only !== undefined && only !== "local" && only !== "s3") throw new Error(`SK_BENCH_BACKUP_ONLY must be "local" or "s3", got ${only}`)
  const rows = process.env["SK_BENCH_BACKUP_ROWS"]
  // The SDK's notice that its 2027 releases need Node 22 says nothing about this machine's figures.
  process.env["AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED"] ??= "true"
  const root = mkdtempSync(join(tmpdir(), "sk-bench-backup-"))
  let s3rver: S3rverHandle | undefined
  try {
    const started = performance.now()
    const fixture = await buildFixture(join(root, "timeline"), segments)
    console.log(`backup: ${segments} full 16 MiB segments (${(fixture.totalBytes / 1e6).toFixed(0)} MB) of a live timeline in ${root}, ` +
      `built in ${((performance.now() - started) / 1000).toFixed(1)} s; best of ${rounds} interleaved rounds after a warm-up (median in brackets), CPU of this process per MB (median); ` +
      `load average ${loadavg().map((load) => load.toFixed(2)).join(" ")}`)
    if (only !== "s3") {
      await runContenders("local directory store (live/remote-storage-local.ts), fsync on", localContenders(fixture, join(root, "store")), rows, rounds, fixture.totalBytes)
    }
    if (only !== "local") {
      s3rver = await startS3rver(join(root, "s3rver"))
      const endpoint = `http://127.0.0.1:${s3rver.port}`
      await runContenders(`S3 (s3rver on ${endpoint}; live/remote-storage-s3.ts)`, s3Contenders(fixture, endpoint), rows, rounds, fixture.totalBytes)
    }
  } finally {
    if (s3rver !== undefined) await s3rver.stop()
    rmSync(root, { recursive: true, force: true })
  }
}

// ------------------------------------------------------------------ the timeline

async function buildFixture(directory: string, segments: number): Promise<Fixture> {
  const mconf = { generation: Generation(1), members: [1, 2, 3].map((id) => ({ id: NodeId(id), host: `sk${id}`, pgPort: 5454 })), newMembers: undefined }
  const state: PersistedState = newTimelineState({
    ...KEY,
    mconf,
    server: { pgVersion: PG_VERSION_NUM, systemId: TEST_SYSTEM_ID, walSegSizeBytes: SEGMENT_BYTES },
    startLsn: Lsn(0),
    commitLsn: Lsn(0)
  })
  // Up to a little way into the segment after the last full one, so that one is below commit's.
  const endWanted = segmentStartLsn(segmentNoOf(START, SEGMENT_BYTES) + segments, SEGMENT_BYTES) + MESSAGE_BYTES
  const messageCount = Math.ceil((endWanted - START) / MESSAGE_BYTES) + 1
  const wal = generateWal({ startLsn: START, segmentSizeBytes: SEGMENT_BYTES, steps: Array.from({ length: messageCount }, () => ({ kind: "message" as const, messageBytes: MESSAGE_BYTES })) })
  mkdirSync(directory, { recursive: true })
  // Building needs no durability: noSync here; the timed rounds use a syncing Disk.
  const buildDisk = makeLiveDisk({ noSync: true })
  const built = Effect.gen(function* () {
    yield* persistControlFile(directory, state, { noSync: true })
    const segmentStore = yield* openSegmentStore({ directory, segmentSizeBytes: SEGMENT_BYTES, commitLsn: Lsn(0), pgVersion: PG_VERSION_NUM, systemId: TEST_SYSTEM_ID, noSync: true })
    const acceptor = yield* makeAcceptor({ nodeId: NODE_ID, state, walStorage: segmentStore, directory, noSync: true })
    const timeline = new Timeline(KEY, directory, NODE_ID, acceptor, segmentStore, { noSync: true })
    yield* timeline.handle({ _tag: "ProposerGreeting", ...KEY, mconf, pgVersion: PG_VERSION_NUM, systemId: TEST_SYSTEM_ID, walSegSizeBytes: SEGMENT_BYTES })
    yield* timeline.handle({ _tag: "VoteRequest", generation: Generation(1), term: Term(1) })
    yield* timeline.handle({ _tag: "ProposerElected", generation: Generation(1), term: Term(1), startStreamingAt: START, termHistory: [{ term: Term(1), lsn: START }] })
    let beginLsn: number = START
    let recordIndex = 0
    while (recordIndex < wal.records.length) {
      let endLsn = beginLsn
      while (recordIndex < wal.records.length) {
        const record = wal.records[recordIndex]!
        if (record.nextLsn - beginLsn > APPEND_BYTES_MAX && endLsn > beginLsn) break
        endLsn = record.nextLsn
        recordIndex++
      }
      yield* timeline.handle(appendOf(beginLsn, wal.bytes.subarray(beginLsn - START, endLsn - START), endLsn))
      beginLsn = endLsn
    }
    // commit_lsn into the control file, so a timeline opened from it has the segments to upload.
    yield* timeline.persistInMemoryIf("Always")
    const positions = timeline.positions.get()
    yield* timeline.wal.close
    return positions
  })
  const positions = await Effect.runPromise(built.pipe(Effect.provideService(Disk, buildDisk)))
  const first = segmentNoOf(START, SEGMENT_BYTES)
  const open = segmentNoOf(positions.commitLsn, SEGMENT_BYTES)
  // backup_lsn starts at the timeline's start: inside the first segment, so nothing is uploaded yet.
  if (open - first !== segments || segmentNoOf(positions.backupLsn, SEGMENT_BYTES) !== first) {
    throw new Error(`built ${open - first} full segments (backup_lsn ${positions.backupLsn}), wanted ${segments} from segment ${first}`)
  }
  const segmentNos = Array.from({ length: segments }, (_, i) => first + i)
  return { directory, controlFile: readFileSync(join(directory, CONTROL_FILE_NAME)), segmentNos, totalBytes: segments * SEGMENT_BYTES }
}

function appendOf(beginLsn: number, walData: Uint8Array, commitLsn: number): AppendRequest {
  return {
    _tag: "AppendRequest", generation: Generation(1), term: Term(1), beginLsn: Lsn(beginLsn), endLsn: Lsn(beginLsn + walData.byteLength),
    commitLsn: Lsn(commitLsn), truncateLsn: Lsn(0), walData
  }
}

/** The timeline as a restarted safekeeper opens it, with nothing backed up yet. */
async function openTimeline(fixture: Fixture): Promise<Timeline> {
  writeFileSync(join(fixture.directory, CONTROL_FILE_NAME), fixture.controlFile)
  return Effect.runPromise(Effect.gen(function* () {
    const state = yield* loadControlFile(fixture.directory)
    const { wal, acceptor } = yield* openTimelineStorage({ directory: fixture.directory, state, nodeId: NODE_ID, noSync: false })
    return new Timeline(KEY, fixture.directory, NODE_ID, acceptor, wal, { noSync: false })
  }).pipe(Effect.provideService(Disk, liveDisk)))
}

const localSegmentFile = (fixture: Fixture, segmentNo: number): string =>
  join(fixture.directory, segmentFileName(WAL_TIMELINE_ID, segmentNo, SEGMENT_BYTES))

const objectPathOf = (segmentNo: number): string => segmentObjectPath(KEY, segmentNo, SEGMENT_BYTES)

// ------------------------------------------------------------------ the project's rows

/** `uploadSegment` of every segment in turn; the timeline is opened before the clock starts. */
function sequentialUploads(fixture: Fixture, storage: RemoteStorage["Service"]): () => Promise<Elapsed> {
  return async () => {
    const timeline = await openTimeline(fixture)
    try {
      const elapsed = startClock()
      await runTimed(Effect.forEach(fixture.segmentNos, (segmentNo) => uploadSegment(timeline, segmentNo), { discard: true }), storage)
      return elapsed()
    } finally {
      await Effect.runPromise(timeline.wal.close)
    }
  }
}

/** `runWalBackup` from the first segment until backup_lsn reaches the open segment. */
function walBackupRun(fixture: Fixture, storage: RemoteStorage["Service"]): () => Promise<Elapsed> {
  const target = segmentStartLsn(fixture.segmentNos.at(-1)! + 1, SEGMENT_BYTES)
  return async () => {
    const timeline = await openTimeline(fixture)
    try {
      const elapsed = startClock()
      await runTimed(Effect.gen(function* () {
        const backup = yield* Effect.forkChild(runWalBackup(timeline))
        yield* timeline.positions.waitUntil((positions) => positions.backupLsn >= target)
        yield* Fiber.interrupt(backup)
      }), storage)
      return elapsed()
    } finally {
      await Effect.runPromise(timeline.wal.close)
    }
  }
}

async function runTimed<E>(program: Effect.Effect<void, E, Disk | RemoteStorage | Log>, storage: RemoteStorage["Service"]): Promise<void> {
  await Effect.runPromise(program.pipe(
    Effect.timeoutOrElse({ duration: ROUND_TIMEOUT, orElse: () => Effect.die(new Error(`a backup round took over ${Duration.format(ROUND_TIMEOUT)}`)) }),
    Effect.provideService(Disk, liveDisk),
    Effect.provideService(RemoteStorage, storage),
    Effect.provideService(Log, liveLog)
  ))
}

// ------------------------------------------------------------------ (a) local directory

function localContenders(fixture: Fixture, storeRoot: string): ReadonlyArray<Contender> {
  const storage = makeLocalRemoteStorage(storeRoot)
  const verify = async () => {
    for (const segmentNo of fixture.segmentNos) {
      const stored = await fsp.readFile(join(storeRoot, ...objectPathOf(segmentNo).split("/")))
      if (!stored.equals(readFileSync(localSegmentFile(fixture, segmentNo)))) throw new Error(`local store: segment ${segmentNo} differs from the local file`)
    }
  }
  let tempCount = 0
  /**
   * The store's durability steps with nothing around them: copy to .tmp, fsync, rename, fsync
   * the directory. The copy is `copyFile` (in the kernel), or 1 MiB preads and pwrites through
   * JavaScript buffers as the real path does (UPLOAD_CHUNK_BYTES), to tell the two costs apart.
   */
  const plainCopy = (chunked: boolean) => async (segmentNo: number): Promise<void> => {
    const target = join(storeRoot, ...objectPathOf(segmentNo).split("/"))
    const temp = join(storeRoot, ".tmp", `bench-${process.pid}-${++tempCount}`)
    await fsp.mkdir(dirname(target), { recursive: true })
    await fsp.mkdir(dirname(temp), { recursive: true })
    if (chunked) {
      const source = await fsp.open(localSegmentFile(fixture, segmentNo), "r")
      const file = await fsp.open(temp, "wx")
      try {
        for (let offset = 0; offset < SEGMENT_BYTES; offset += UPLOAD_CHUNK_BYTES) {
          // A fresh buffer per chunk, as the real path's reads allocate one.
          const chunk = new Uint8Array(UPLOAD_CHUNK_BYTES)
          const { bytesRead } = await source.read(chunk, 0, UPLOAD_CHUNK_BYTES, offset)
          if (bytesRead !== UPLOAD_CHUNK_BYTES) throw new Error(`short read of segment ${segmentNo} at ${offset}`)
          await file.write(chunk, 0, UPLOAD_CHUNK_BYTES, offset)
        }
        await file.sync()
      } finally {
        await source.close()
        await file.close()
      }
    } else {
      await fsp.copyFile(localSegmentFile(fixture, segmentNo), temp)
      const file = await fsp.open(temp, "r+")
      try {
        await file.sync()
      } finally {
        await file.close()
      }
    }
    await fsp.rename(temp, target)
    const parent = await fsp.open(dirname(target), fsConstants.O_RDONLY | fsConstants.O_DIRECTORY)
    try {
      await parent.sync()
    } finally {
      await parent.close()
    }
  }
  const jobs = DEFAULT_WAL_BACKUP_PARALLEL_JOBS
  const copy1 = "copyFile+fsync+rename+fsync dir, 1 at a time"
  const chunked1 = "  the same, copied by 1 MiB read+write, 1 at a time"
  const copyN = `copyFile+fsync+rename+fsync dir, ${jobs} at a time`
  const chunkedN = `  the same, copied by 1 MiB read+write, ${jobs} at a time`
  const against = (copy: string, chunked: string) => [{ name: copy, label: "copyFile" }, { name: chunked, label: "read+write" }]
  return [
    { name: copy1, run: timedPass(fixture, 1, plainCopy(false)) },
    { name: chunked1, run: timedPass(fixture, 1, plainCopy(true)) },
    { name: "uploadSegment, 1 at a time", against: against(copy1, chunked1), run: sequentialUploads(fixture, storage), verify },
    { name: copyN, run: timedPass(fixture, jobs, plainCopy(false)) },
    { name: chunkedN, run: timedPass(fixture, jobs, plainCopy(true)) },
    { name: `runWalBackup (${jobs} jobs)`, against: against(copyN, chunkedN), run: walBackupRun(fixture, storage), verify }
  ]
}

// ------------------------------------------------------------------ (b) S3

function s3Contenders(fixture: Fixture, endpoint: string): ReadonlyArray<Contender> {
  const config: S3Config = { bucket: BUCKET, region: "us-east-1", endpoint, forcePathStyle: true, credentials: S3RVER_CREDENTIALS }
  // One client each for the whole run, as a running safekeeper keeps its connections.
  const storage = makeS3RemoteStorage(makeS3Client(config), config)
  // The plain client: the SDK's own settings, except the checksum (the SDK would add a CRC32 the
  // project's client does not compute; s3rver ignores it, so it would only cost the baseline).
  const plain = new S3Client({
    region: "us-east-1", endpoint, forcePathStyle: true, credentials: S3RVER_CREDENTIALS,
    requestChecksumCalculation: "WHEN_REQUIRED", responseChecksumValidation: "WHEN_REQUIRED"
  })
  const verify = async () => {
    for (const segmentNo of fixture.segmentNos) {
      const response = await plain.send(new GetObjectCommand({ Bucket: BUCKET, Key: objectPathOf(segmentNo) }))
      const stored = response.Body === undefined ? new Uint8Array(0) : await response.Body.transformToByteArray()
      if (!Buffer.from(stored).equals(readFileSync(localSegmentFile(fixture, segmentNo)))) throw new Error(`s3: segment ${segmentNo} differs from the local file`)
    }
  }
  const plainPut = async (segmentNo: number): Promise<void> => {
    const bytes = await fsp.readFile(localSegmentFile(fixture, segmentNo))
    await plain.send(new PutObjectCommand({ Bucket: BUCKET, Key: objectPathOf(segmentNo), Body: bytes, ContentLength: bytes.length }))
  }
  const baseline1 = "readFile+PutObject, 1 at a time"
  const baselineN = `readFile+PutObject, ${DEFAULT_WAL_BACKUP_PARALLEL_JOBS} at a time`
  return [
    { name: "(create bucket)", run: async () => {
      await plain.send(new CreateBucketCommand({ Bucket: BUCKET })).catch((error: unknown) => {
        if (!(error instanceof Error && error.name === "BucketAlreadyExists") && !(error instanceof Error && error.name === "BucketAlreadyOwnedByYou")) throw error
      })
      return { wallMs: 0, cpuMs: 0 }
    } },
    { name: baseline1, run: timedPass(fixture, 1, plainPut) },
    { name: "uploadSegment, 1 at a time", against: [{ name: baseline1, label: "PutObject" }], run: sequentialUploads(fixture, storage), verify },
    { name: baselineN, run: timedPass(fixture, DEFAULT_WAL_BACKUP_PARALLEL_JOBS, plainPut) },
    { name: `runWalBackup (${DEFAULT_WAL_BACKUP_PARALLEL_JOBS} jobs)`, against: [{ name: baselineN, label: "PutObject" }], run: walBackupRun(fixture, storage), verify }
  ]
}

// ------------------------------------------------------------------ running and printing

/** Every segment through `copy`, at most `parallel` at once, in segment order. */
function timedPass(fixture: Fixture, parallel: number, copy: (segmentNo: number) => Promise<void>): () => Promise<Elapsed> {
  return async () => {
    const elapsed = startClock()
    let next = 0
    const worker = async () => {
      while (next < fixture.segmentNos.length) await copy(fixture.segmentNos[next++]!)
    }
    await Promise.all(Array.from({ length: Math.min(parallel, fixture.segmentNos.length) }, worker))
    return elapsed()
  }
}

async function runContenders(title: string, all: ReadonlyArray<Contender>, rows: string | undefined, rounds: number, totalBytes: number): Promise<void> {
  const isBaseline = (contender: Contender) => contender.against === undefined && !contender.name.startsWith("(")
  const contenders = all.filter((contender) => contender.name.startsWith("(") || rows === undefined ||
    (rows === "project" || rows === "baseline" ? (rows === "baseline") === isBaseline(contender) : contender.name.includes(rows)))
  // Warm-up: page cache, connections, JIT; and a broken row fails the bench before any timing.
  for (const contender of contenders) {
    await contender.run()
    await contender.verify?.()
  }
  const timed = contenders.filter((contender) => !contender.name.startsWith("("))
  const samples = new Map<string, Elapsed[]>(timed.map((contender) => [contender.name, []]))
  for (let round = 0; round < rounds; round++) {
    for (const contender of timed) samples.get(contender.name)?.push(await contender.run())
  }
  const megabytes = totalBytes / 1e6
  const mbps = (ms: number) => megabytes / (ms / 1000)
  const walls = (name: string) => (samples.get(name) ?? []).map((sample) => sample.wallMs)
  const best = (name: string) => Math.min(...walls(name))
  const middle = (name: string) => median(walls(name))
  const cpuPerMb = (name: string) => median((samples.get(name) ?? []).map((sample) => sample.cpuMs)) / megabytes
  console.log(`  ${title}`)
  for (const contender of timed) {
    // Ratio of MB/s: best against best, median against median (in brackets); CPU per MB as is.
    const ratio = (contender.against ?? []).filter((baseline) => samples.has(baseline.name)).map((baseline) =>
      `  ${(best(baseline.name) / best(contender.name)).toFixed(2).padStart(5)}x ${baseline.label} (${(middle(baseline.name) / middle(contender.name)).toFixed(2)})` +
      ` cpu ${(cpuPerMb(contender.name) / cpuPerMb(baseline.name)).toFixed(1)}x`).join("")
    console.log(`    ${contender.name.padEnd(52)}${mbps(best(contender.name)).toFixed(0).padStart(6)} MB/s (${mbps(middle(contender.name)).toFixed(0)})` +
      `${cpuPerMb(contender.name).toFixed(2).padStart(6)} ms cpu/MB${ratio}`)
  }
}


function median(values: ReadonlyArray<number>): number {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle] ?? NaN : ((sorted[middle - 1] ?? NaN) + (sorted[middle] ?? NaN)) / 2
}

function envInteger(name: string, fallback: number): number {
  const value = Number(process.env[name] ?? fallback)
  if (!Number.isSafeInteger(value) || value < 1) throw new Error(`${name} must be a positive integer, got ${process.env[name]}`)
  return value
}
