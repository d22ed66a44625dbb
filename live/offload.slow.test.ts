// Goal: the timeline's life after the quorum, live: three `sk safekeeper` processes with etcd as
// the broker and an S3 server as object storage back up every committed full segment byte for
// byte and one partial per safekeeper; killing the offloader moves the uploads to another
// safekeeper within the heartbeat timeout; a pageserver's remote_consistent_lsn lets WAL below
// the horizon go from local disk; with --enable-offload --delete-offloaded-wal an idle timeline
// is evicted (no WAL left locally), and stock pg_receivewal from the timeline's first LSN gets
// every byte back from object storage (on-demand download and un-eviction).
// Method: etcd (/usr/bin/etcd) and s3rver (npm, in a child node as in
// live/remote-storage-s3.slow.test.ts) are started by this file on free loopback ports in a temp
// directory; the safekeepers (live/local-cluster.ts) get the S3 credentials through their
// environment. `sk proposer --synthetic-wal` writes WAL; a pageserver stand-in
// (live/testing/pageserver-standin.ts) streams from every safekeeper and reports what it got as
// remote_consistent_lsn. Object storage is read through the S3 API (not through the code under
// test), the safekeepers' state through their control files and TIMELINE_STATUS. The tests run in
// order on one timeline, each from where the previous one left it. Every process is stopped by
// its pid in afterAll; a failure's message carries the tails of the logs and keeps the temp dir.
import { type ChildProcess, execFile, spawn, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as http from "node:http"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { CreateBucketCommand, GetObjectCommand, ListObjectsV2Command, type S3Client } from "@aws-sdk/client-s3"
import { Effect, Result } from "effect"
import { afterAll, beforeAll, describe, expect, test } from "vitest"
import { decodeControlFile } from "../core/acceptor/control-file.js"
import type { PersistedState } from "../core/acceptor/state.js"
import { Net } from "../core/io/net.js"
import { connectPg } from "../core/protocol/pg-client.js"
import { parsePartialObjectName } from "../core/timeline/remote-layout.js"
import { formatLsn, parseLsn, segmentFileName, segmentNoOf, segmentOffsetOf } from "../core/wal/lsn.js"
import { LocalCluster, type SafekeeperProcess, freePort } from "./local-cluster.js"
import { makeLiveNet } from "./net.js"
import { makeS3Client } from "./remote-storage-s3.js"
import { PageserverStandin } from "./testing/pageserver-standin.js"
import { ensurePostgresInstalled, pgBinary } from "./testing/postgres.js"
import { S3RVER_CREDENTIALS, startS3rver as launchS3rver } from "./testing/s3rver.js"

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const SK_BIN = path.join(REPO_ROOT, "bin", "sk.js")
const SK_MAIN = path.join(REPO_ROOT, "dist", "cli", "main.js")
const ETCD = "/usr/bin/etcd"

const SEGMENT_BYTES = 16 * 1024 * 1024
const MIB = 1024 * 1024
/** The start of segment 1: where a new timeline's WAL (and its first segment file) begins. */
const FIRST_SEGMENT_LSN = SEGMENT_BYTES
const TENANT = "0ff10ad0000000000000000000000001"
const TIMELINE = "0ff10ad00000000000000000000000a1"
const BUCKET = "sk-offload"
const PREFIX_IN_BUCKET = "wal"
const S3_CREDENTIALS = S3RVER_CREDENTIALS

const HEARTBEAT_TIMEOUT_MS = 2_000
/**
 * How long after the kill another safekeeper may take to start uploading: the heartbeat timeout
 * counts from when the dead one was last heard (a broker push a second at most before the kill),
 * and the election runs on the next manager pass (a tick of 1 s at most); plus 2 s for a machine
 * shared with other work.
 */
const HANDOVER_MS_MAX = HEARTBEAT_TIMEOUT_MS + 1_000 + 1_000 + 2_000
const BASE_ARGS = [
  "--partial-backup-timeout", "1s",
  "--heartbeat-timeout", `${HEARTBEAT_TIMEOUT_MS / 1000}s`,
  // Persisted positions bound WAL removal (remove-wal.ts): saved often, so removal follows soon.
  "--control-file-save-interval", "1s",
  // The proposer exits once a quorum has committed its total: the third safekeeper (the one
  // killed and restarted) then catches up from its peers, as Neon's does with peer recovery on.
  "--peer-recovery"
]
const EVICTION_ARGS = ["--enable-offload", "--delete-offloaded-wal", "--eviction-min-resident", "1s"]

const PROPOSER_RUN_MS_MAX = 120_000
const PG_TOOL_RUN_MS_MAX = 120_000
const WAIT_MS_DEFAULT = 60_000
const POLL_INTERVAL_MS = 100
const LOG_TAIL_LINES = 30


let workDir = ""
let keepWorkDir = false
let etcd: ChildProcess | undefined
let etcdEndpoint = ""
let s3rver: ChildProcess | undefined
let s3Endpoint = ""
let s3: S3Client | undefined
let cluster: LocalCluster | undefined
let standin: PageserverStandin | undefined
/** Every other child this file starts (proposers, pg tools); killed by pid in afterAll. */
const children = new Set<ChildProcess>()
const extraLogs: string[] = []

/** What one test leaves for the next (they run in order on one timeline). */
const progress = { commitLsn: 0 }
let killedId = 0

beforeAll(async () => {
  ensurePostgresInstalled()
  if (!fs.existsSync(SK_MAIN)) throw new Error(`${SK_MAIN} is missing: run npm run build first`)
  if (!fs.existsSync(ETCD)) {
    const installed = spawnSync("bash", [path.join(REPO_ROOT, "scripts/install-etcd.sh")], { stdio: "inherit" })
    if (installed.status !== 0) throw new Error(`scripts/install-etcd.sh failed (exit ${installed.status ?? installed.signal})`)
  }
  workDir = fs.mkdtempSync(path.join(os.tmpdir(), "sk-offload-test-"))
  await startEtcd()
  await startS3rver()
  // The safekeepers find the credentials through the SDK's chain (never in the flag).
  process.env.AWS_ACCESS_KEY_ID = S3_CREDENTIALS.accessKeyId
  process.env.AWS_SECRET_ACCESS_KEY = S3_CREDENTIALS.secretAccessKey
  cluster = await startCluster([])
})

afterAll(async () => {
  await standin?.stop()
  for (const child of children) killChild(child)
  await cluster?.stop()
  s3?.destroy()
  if (s3rver !== undefined) await stopProcess(s3rver, () => s3rver?.stdin?.end())
  if (etcd !== undefined) await stopProcess(etcd, () => etcd?.kill("SIGTERM"))
  if (workDir === "") return
  if (keepWorkDir) console.error(`offload test: kept ${workDir} for inspection`)
  else fs.rmSync(workDir, { recursive: true, force: true })
})

describe("backup, removal, eviction and on-demand download, live with etcd and S3", () => {
  test("after WAL is committed, object storage holds every full segment below commit byte-equal to the safekeepers' files, and one partial per safekeeper", () =>
    withLogs(async () => {
      const run = await startProposer("1", ["--synthetic-wal", "8M", "--total", "56M"]).done
      expect(run.code, run.describe()).toBe(0)
      const commitLsn = run.commitLsn!
      expect(segmentNoOf(commitLsn, SEGMENT_BYTES), "several full segments").toBeGreaterThanOrEqual(4)
      progress.commitLsn = commitLsn
      const sks = liveCluster().safekeepers
      await waitForFullSegments(commitLsn)
      for (let segmentNo = 1; segmentNo < segmentNoOf(commitLsn, SEGMENT_BYTES); segmentNo++) {
        const object = await getObject(segmentKey(segmentNo))
        for (const sk of sks) expectBytesEqual(object, readLocalSegment(sk, segmentNo), `segment ${segmentNo}: object storage vs sk${sk.id}`)
      }
      // Each safekeeper uploads its own partial of the open segment once it held still for the
      // timeout; the stale ones it uploaded before are deleted.
      // The newest partial is replaced when the safekeeper's flush_lsn or commit_lsn moves
      // (the proposer's last commit_lsn may arrive after its WAL), and the one it replaces is
      // deleted: so the objects are read in the same round as the listing, and a round that
      // loses that race is tried again.
      await waitFor("one partial per safekeeper, at its flush_lsn and commit_lsn, equal to its open segment", WAIT_MS_DEFAULT, async () => {
        const listed = await listPartials()
        for (const sk of sks) {
          const own = listed.filter((p) => p.fields.nodeId === sk.id)
          const status = await timelineStatus(sk)
          if (own.length !== 1 || status === undefined) return undefined
          const fields = own[0]!.fields
          if (fields.flushLsn !== status.flushLsn || fields.commitLsn !== status.commitLsn) return undefined
          expect(fields.segmentNo, `sk${sk.id}'s partial is of the open segment`).toBe(segmentNoOf(commitLsn, SEGMENT_BYTES))
          const object = await getObject(own[0]!.key).catch((error: unknown) => {
            if (error instanceof Error && error.name === "NoSuchKey") return undefined
            throw error
          })
          if (object === undefined) return undefined
          const local = readLocalSegment(sk, fields.segmentNo)
          expectBytesEqual(object, local.subarray(0, segmentOffsetOf(fields.flushLsn, SEGMENT_BYTES)), `sk${sk.id}'s partial object vs its open segment`)
        }
        return true
      })
    }))

  test("killing the offloader while WAL flows: another safekeeper starts uploading within the heartbeat timeout, and the segments keep arriving", () =>
    withLogs(async () => {
      const c = liveCluster()
      const before = progress.commitLsn
      const proposer = startProposer("2", ["--synthetic-wal", "4M", "--total", "56M"])
      const offloader = await waitFor("exactly one safekeeper uploading", WAIT_MS_DEFAULT, async () => {
        const uploading = c.safekeepers.filter((sk) => backupEvents(sk).at(-1) === "wal backup started")
        return uploading.length === 1 ? uploading[0] : undefined
      })
      await waitFor("WAL to flow 8 MiB past the first run", WAIT_MS_DEFAULT, async () => {
        const status = await timelineStatus(offloader)
        return status !== undefined && status.commitLsn >= before + 8 * MIB ? true : undefined
      })
      const uploadedBeforeKill = new Set(await listSegmentObjects())
      const others = c.safekeepers.filter((sk) => sk.id !== offloader.id)
      const startsBefore = new Map(others.map((sk) => [sk.id, backupEvents(sk).filter((e) => e === "wal backup started").length]))
      await c.kill(offloader.id)
      const killedAt = performance.now()
      const successor = await waitFor("another safekeeper to start uploading", 30_000, async () =>
        others.find((sk) => backupEvents(sk).filter((e) => e === "wal backup started").length > startsBefore.get(sk.id)! && backupEvents(sk).at(-1) === "wal backup started"))
      const handoverMs = performance.now() - killedAt
      expect(handoverMs, `sk${successor.id} started uploading ${handoverMs.toFixed(0)} ms after sk${offloader.id} was killed`).toBeLessThan(HANDOVER_MS_MAX)

      const run = await proposer.done
      expect(run.code, run.describe()).toBe(0)
      const commitLsn = run.commitLsn!
      progress.commitLsn = commitLsn
      await waitForFullSegments(commitLsn)
      const uploadedAfterKill = (await listSegmentObjects()).filter((key) => !uploadedBeforeKill.has(key))
      expect(uploadedAfterKill.length, "segments uploaded after the kill").toBeGreaterThanOrEqual(2)
      for (let segmentNo = 1; segmentNo < segmentNoOf(commitLsn, SEGMENT_BYTES); segmentNo++) {
        const object = await getObject(segmentKey(segmentNo))
        for (const sk of others) expectBytesEqual(object, readLocalSegment(sk, segmentNo), `segment ${segmentNo}: object storage vs sk${sk.id}`)
      }
      await c.startSafekeeper(offloader.id)
      killedId = offloader.id
    }))

  test("the safekeeper killed above catches up from its peers once restarted (--peer-recovery): flush_lsn and commit_lsn", () =>
    withLogs(async () => {
      // No compute and no pageserver yet: the peers stay active (remote_consistent_lsn is below
      // commit_lsn), so their broker info keeps coming while recovery raises flush_lsn.
      await waitForAllCaughtUp(progress.commitLsn)
      const restarted = liveCluster().safekeeper(killedId)
      expect(logEvents(restarted).some((e) => e.msg === "peer recovery started"), `sk${killedId} logged "peer recovery started"`).toBe(true)
    }))

  test("with a pageserver's remote_consistent_lsn, every segment below the removal horizon leaves the safekeepers' disks (and is in object storage)", () =>
    withLogs(async () => {
      const c = liveCluster()
      standin = PageserverStandin.start({ tenantId: TENANT, timelineId: TIMELINE, safekeepers: c.safekeepers.map((sk) => sk.pgAddress), startLsn: FIRST_SEGMENT_LSN })
      // Slow, so a safekeeper is rarely still flushing the last WAL when the proposer's last
      // commit_lsn reaches it (the next test says why that matters).
      const run = await startProposer("3", ["--synthetic-wal", "2M", "--total", "4M"]).done
      expect(run.code, run.describe()).toBe(0)
      const commitLsn = run.commitLsn!
      progress.commitLsn = commitLsn
      // flush_lsn only: whether commit_lsn gets there too is the next test's question.
      await waitForAllCaughtUp(commitLsn, "flush")
      const openSegmentNo = segmentNoOf(commitLsn, SEGMENT_BYTES)
      await waitForFullSegments(commitLsn)
      for (const sk of c.safekeepers) {
        await waitFor(`the stand-in to receive sk${sk.id}'s committed WAL`, WAIT_MS_DEFAULT, async () => {
          const status = await timelineStatus(sk)
          return status !== undefined && standin!.state(sk.pgAddress).reportedLsn >= status.commitLsn ? true : undefined
        }).catch((error: unknown) => {
          throw new Error(`${String(error)}; stand-in: ${standin!.describe()}`)
        })
      }
      for (const sk of c.safekeepers) {
        const state = await waitFor(`sk${sk.id} to remove every full segment`, WAIT_MS_DEFAULT, async () =>
          localSegmentNos(sk).every((n) => n >= openSegmentNo) ? readControlFile(sk) : undefined
        ).catch((error: unknown) => {
          const state = readControlFile(sk)
          throw new Error(`${String(error)}; local segments ${localSegmentNos(sk).join(",")}; persisted remote_consistent_lsn ${formatLsn(state.remoteConsistentLsn)} backup_lsn ${formatLsn(state.backupLsn)} commit_lsn ${formatLsn(state.commitLsn)}`)
        })
        // The horizon the removal went by (remove-wal.ts) allowed it.
        const horizon = Math.min(state.remoteConsistentLsn, state.backupLsn, state.commitLsn)
        expect(segmentNoOf(horizon, SEGMENT_BYTES), `sk${sk.id}'s persisted horizon ${formatLsn(horizon)}`).toBe(openSegmentNo)
        expect(logEvents(sk).some((e) => e.msg === "wal removed"), `sk${sk.id} logged "wal removed"`).toBe(true)
      }
      // Nothing is gone that object storage does not hold.
      const stored = new Set(await listSegmentObjects())
      for (let segmentNo = 1; segmentNo < openSegmentNo; segmentNo++) expect(stored.has(segmentKey(segmentNo)), `segment ${segmentNo} in object storage`).toBe(true)
      await standin.stop()
      standin = undefined
    }))

  test("every safekeeper's commit_lsn reaches the proposer's last commit once the compute has left (needed for eviction)", () =>
    withLogs(async () => {
      // Fails while an acceptor caps a commit_lsn it hears (from the proposer's last message or
      // a peer's broker info) at its flush_lsn of that moment and never applies it again: the
      // proposer is gone and the peers, idle now, publish nothing more. See the test's report.
      await waitForAllCaughtUp(progress.commitLsn, "flush and commit", 20_000)
    }))

  test("with --enable-offload --delete-offloaded-wal the idle timeline is evicted; stock pg_receivewal from its first LSN gets every byte back (on-demand download)", () =>
    withLogs(async () => {
      // The same data directories, restarted with eviction on (new ports).
      await liveCluster().stop()
      cluster = undefined
      cluster = await startCluster(EVICTION_ARGS)
      const c = liveCluster()
      standin = PageserverStandin.start({ tenantId: TENANT, timelineId: TIMELINE, safekeepers: c.safekeepers.map((sk) => sk.pgAddress), startLsn: progress.commitLsn })
      // Every safekeeper answers before the compute comes, so each streams from the start of
      // the run (one that joins late gets its WAL by peer recovery and its commit_lsn never).
      for (const sk of c.safekeepers) await waitFor(`sk${sk.id} to answer TIMELINE_STATUS`, WAIT_MS_DEFAULT, () => timelineStatus(sk))
      const run = await startProposer("4", ["--synthetic-wal", "2M", "--total", "4M"]).done
      expect(run.code, run.describe()).toBe(0)
      const commitLsn = run.commitLsn!
      progress.commitLsn = commitLsn
      await waitForAllCaughtUp(commitLsn)
      for (const sk of c.safekeepers) {
        await waitFor(`sk${sk.id}: the stand-in's remote_consistent_lsn reaches commit ${formatLsn(commitLsn)}`, WAIT_MS_DEFAULT, async () =>
          standin!.state(sk.pgAddress).reportedLsn >= commitLsn ? true : undefined).catch((error: unknown) => {
          throw new Error(`${String(error)}; stand-in: ${standin!.describe()}`)
        })
      }
      await standin.stop()
      standin = undefined

      for (const sk of c.safekeepers) {
        // At this run's end: a restarted timeline may be evicted before the proposer comes (and
        // brought back by it).
        const evictedAtCommit = () => {
          const events = logEvents(sk).filter((e) => e.msg === "timeline evicted" || e.msg === "timeline unevicted")
          return events.at(-1)?.msg === "timeline evicted" && events.at(-1)?.flush_lsn === formatLsn(commitLsn)
        }
        await waitFor(`sk${sk.id} to log "timeline evicted" at ${formatLsn(commitLsn)}`, 90_000, async () => evictedAtCommit() ? true : undefined)
          .catch((error: unknown) => {
            const state = readControlFile(sk)
            throw new Error(`${String(error)}; files: ${timelineFiles(sk).join(", ")}; persisted commit_lsn ${formatLsn(state.commitLsn)} backup_lsn ${formatLsn(state.backupLsn)} remote_consistent_lsn ${formatLsn(state.remoteConsistentLsn)} partials ${JSON.stringify(state.partialBackup.segments)}`)
          })
        expect(localSegmentNos(sk), `sk${sk.id} keeps no WAL segment after eviction (files: ${timelineFiles(sk).join(", ")})`).toEqual([])
        expect(timelineFiles(sk)).toContain("safekeeper.control")
        const state = readControlFile(sk)
        expect(state.evictionState, `sk${sk.id}'s control file`).toEqual({ _tag: "Offloaded", flushLsn: commitLsn })
      }

      // pg_receivewal resumes from the highest segment it finds in its directory: a zeroed
      // .partial of segment 1 makes it start at the timeline's first segment.
      const source = c.safekeepers[0]!
      const recvDir = fs.mkdtempSync(path.join(workDir, "recv-"))
      fs.writeFileSync(path.join(recvDir, `${segmentName(1)}.partial`), Buffer.alloc(SEGMENT_BYTES))
      // It stops once it has received past -E, so -E is the last byte before commit_lsn.
      const recv = await runTool("pg_receivewal", [
        "-h", host(source), "-p", port(source), "-U", "x", "-D", recvDir, "-E", formatLsn(commitLsn - 1), "-v", "-d",
        `options='-c tenant_id=${TENANT} timeline_id=${TIMELINE}'`
      ])
      expect(recv.code, `pg_receivewal failed:\n${recv.stderr}`).toBe(0)
      expect(recv.stderr).toContain(`starting log streaming at ${formatLsn(FIRST_SEGMENT_LSN)} (timeline 1)`)
      const openSegmentNo = segmentNoOf(commitLsn, SEGMENT_BYTES)
      const expectedNames = [...Array.from({ length: openSegmentNo - 1 }, (_, i) => segmentName(i + 1)), `${segmentName(openSegmentNo)}.partial`]
      expect(fs.readdirSync(recvDir).sort()).toEqual(expectedNames)
      for (let segmentNo = 1; segmentNo < openSegmentNo; segmentNo++) {
        expectBytesEqual(fs.readFileSync(path.join(recvDir, segmentName(segmentNo))), await getObject(segmentKey(segmentNo)), `segment ${segmentNo}: pg_receivewal vs object storage`)
      }
      const received = fs.readFileSync(path.join(recvDir, `${segmentName(openSegmentNo)}.partial`))
      const offset = segmentOffsetOf(commitLsn, SEGMENT_BYTES)
      const partial = (await listPartials()).find((p) => p.fields.nodeId === source.id && p.fields.flushLsn === commitLsn)
      expect(partial, `sk${source.id}'s partial at ${formatLsn(commitLsn)} in object storage`).toBeDefined()
      expectBytesEqual(received.subarray(0, offset), await getObject(partial!.key), `open segment: pg_receivewal vs sk${source.id}'s partial object`)
      expect(received.subarray(offset).every((byte) => byte === 0), "pg_receivewal's file is zero past commit_lsn").toBe(true)
      expect(logEvents(source).some((e) => e.msg === "timeline unevicted"), `sk${source.id} logged "timeline unevicted"`).toBe(true)
    }))
})

// ---- etcd, s3rver, the cluster ----

async function startEtcd(): Promise<void> {
  const clientPort = await freePort()
  const peerPort = await freePort()
  const clientUrl = `http://127.0.0.1:${clientPort}`
  const peerUrl = `http://127.0.0.1:${peerPort}`
  const logPath = path.join(workDir, "etcd.log")
  const log = fs.openSync(logPath, "a")
  etcd = spawn(ETCD, [
    "--name", "sk-offload", "--data-dir", path.join(workDir, "etcd-data"),
    "--listen-client-urls", clientUrl, "--advertise-client-urls", clientUrl,
    "--listen-peer-urls", peerUrl, "--initial-advertise-peer-urls", peerUrl,
    "--initial-cluster", `sk-offload=${peerUrl}`, "--initial-cluster-state", "new"
  ], { stdio: ["ignore", log, log] })
  fs.closeSync(log)
  etcdEndpoint = `etcd://127.0.0.1:${clientPort}`
  await waitFor("etcd to be healthy", 30_000, async () => {
    if (etcd?.exitCode !== null) throw new Error(`etcd exited; see ${logPath}:\n${tailOf(logPath)}`)
    return (await etcdHealthy(clientUrl)) ? true : undefined
  })
}

function etcdHealthy(clientUrl: string): Promise<boolean> {
  return new Promise((resolve) => {
    const request = http.get(`${clientUrl}/health`, { timeout: 1_000 }, (response) => {
      let body = ""
      response.setEncoding("utf8")
      response.on("data", (text: string) => void (body += text))
      response.on("end", () => resolve(response.statusCode === 200 && body.includes("true")))
    })
    request.on("timeout", () => request.destroy())
    request.on("error", () => resolve(false))
  })
}

/** s3rver (live/testing/s3rver.ts); it stops when its stdin closes. */
async function startS3rver(): Promise<void> {
  const directory = path.join(workDir, "s3rver")
  fs.mkdirSync(directory)
  // Atomic PUTs, as S3's: an aborted upload (a safekeeper killed, or stopped as offloader)
  // truncated an already backed-up object in a first run of this test.
  const handle = await launchS3rver(directory, { atomicPuts: true })
  s3rver = handle.child
  s3Endpoint = handle.endpoint
  s3 = makeS3Client({ bucket: BUCKET, region: "us-east-1", endpoint: s3Endpoint, forcePathStyle: true, credentials: S3_CREDENTIALS })
  await s3.send(new CreateBucketCommand({ Bucket: BUCKET }))
}

async function startCluster(extraArgs: ReadonlyArray<string>): Promise<LocalCluster> {
  const started = await LocalCluster.start({
    safekeeperCount: 3,
    directory: path.join(workDir, "cluster"),
    safekeeperArgs: [
      "--broker-endpoint", etcdEndpoint,
      "--remote-storage", `s3://${BUCKET}/${PREFIX_IN_BUCKET}?endpoint=${s3Endpoint}&region=us-east-1`,
      ...BASE_ARGS,
      ...extraArgs
    ]
  })
  return started
}

function liveCluster(): LocalCluster {
  if (cluster === undefined) throw new Error("the cluster is not running")
  return cluster
}

/** Stops a child by its pid: `ask` first, SIGKILL after 10 s. */
async function stopProcess(child: ChildProcess, ask: () => void): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
  ask()
  const timer = setTimeout(() => killChild(child), 10_000)
  await exited
  clearTimeout(timer)
}

function killChild(child: ChildProcess): void {
  if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) child.kill("SIGKILL")
}

// ---- proposer and pg tools ----

interface ProposerRun {
  readonly code: number | null
  /** From the last line, "committed X in term N (term start Y)". */
  readonly commitLsn: number | undefined
  readonly describe: () => string
}

function startProposer(name: string, args: ReadonlyArray<string>): { readonly done: Promise<ProposerRun> } {
  const outPath = path.join(workDir, `proposer-${name}.out`)
  const logPath = path.join(workDir, `proposer-${name}.log`)
  extraLogs.push(logPath)
  const out = fs.openSync(outPath, "w")
  const log = fs.openSync(logPath, "w")
  const child = spawn(process.execPath, [
    SK_BIN, "proposer", "--safekeepers", liveCluster().pgAddresses, "--tenant-id", TENANT, "--timeline-id", TIMELINE, "--quorum-timeout", "30", ...args
  ], { stdio: ["ignore", out, log] })
  fs.closeSync(out)
  fs.closeSync(log)
  children.add(child)
  const done = new Promise<ProposerRun>((resolve) => {
    const timer = setTimeout(() => killChild(child), PROPOSER_RUN_MS_MAX)
    child.once("exit", (code, signal) => {
      clearTimeout(timer)
      children.delete(child)
      const stdout = fs.readFileSync(outPath, "utf8")
      const committedText = /committed ([0-9A-F]+\/[0-9A-F]+) in term/.exec(stdout)?.[1]
      resolve({
        code,
        commitLsn: committedText === undefined ? undefined : lsn(committedText),
        describe: () => `proposer ${name} exited ${code ?? signal}; stdout:\n${tailOf(outPath)}\nstderr:\n${tailOf(logPath)}`
      })
    })
  })
  return { done }
}

interface ToolRun {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

function runTool(name: string, args: ReadonlyArray<string>): Promise<ToolRun> {
  return new Promise((resolve) => {
    const child = execFile(pgBinary(name), [...args], { encoding: "utf8", maxBuffer: 64 * MIB, timeout: PG_TOOL_RUN_MS_MAX, killSignal: "SIGKILL" }, (error, stdout, stderr) => {
      children.delete(child)
      const code = error === null ? 0 : typeof error.code === "number" ? error.code : null
      resolve({ code, stdout, stderr: error !== null && code === null ? `${stderr}\n(${error.message})` : stderr })
    })
    children.add(child)
  })
}

/** TIMELINE_STATUS over the in-tree client: undefined when the timeline is not there or the server is down. */
async function timelineStatus(sk: SafekeeperProcess): Promise<{ readonly flushLsn: number; readonly commitLsn: number } | undefined> {
  const program = Effect.acquireUseRelease(
    connectPg(sk.pgAddress, { user: "x", database: "replication", replication: "true", options: `-c tenant_id=${TENANT} timeline_id=${TIMELINE}` }),
    (client) => client.simpleQuery("TIMELINE_STATUS"),
    (client) => client.terminate
  )
  const result = await Effect.runPromise(Effect.result(Effect.provideService(program, Net, makeLiveNet({ connectTimeoutMs: 2_000 })).pipe(Effect.timeout("10 seconds"))))
  if (Result.isFailure(result)) return undefined
  const row = result.success.rows[0]
  if (row === undefined || row[0] === null || row[0] === undefined || row[1] === null || row[1] === undefined) return undefined
  return { flushLsn: lsn(row[0]), commitLsn: lsn(row[1]) }
}

/** Every safekeeper's flush_lsn (and commit_lsn) reach `commitLsn` (peer recovery brings a lagging one along). */
async function waitForAllCaughtUp(commitLsn: number, what: "flush" | "flush and commit" = "flush and commit", timeoutMs = WAIT_MS_DEFAULT): Promise<void> {
  for (const sk of liveCluster().safekeepers) {
    await waitFor(`sk${sk.id}'s ${what === "flush" ? "flush_lsn" : "flush_lsn and commit_lsn"} to reach ${formatLsn(commitLsn)}`, timeoutMs, async () => {
      const status = await timelineStatus(sk)
      return status !== undefined && status.flushLsn >= commitLsn && (what === "flush" || status.commitLsn >= commitLsn) ? true : undefined
    }).catch(async (error: unknown) => {
      throw new Error(`${String(error)}; TIMELINE_STATUS says ${JSON.stringify(await timelineStatus(sk))}`)
    })
  }
}

// ---- object storage (through the S3 API) ----

const timelineKeyPrefix = `${PREFIX_IN_BUCKET}/${TENANT}/${TIMELINE}/`
const segmentKey = (segmentNo: number): string => `${timelineKeyPrefix}${segmentName(segmentNo)}`

async function listKeys(): Promise<string[]> {
  const keys: string[] = []
  let token: string | undefined
  // One page per round; bounded by the objects in the bucket.
  for (;;) {
    const page = await s3Client().send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: timelineKeyPrefix, ContinuationToken: token }))
    for (const object of page.Contents ?? []) if (object.Key !== undefined) keys.push(object.Key)
    if (page.IsTruncated !== true) return keys
    token = page.NextContinuationToken
  }
}

async function listSegmentObjects(): Promise<string[]> {
  return (await listKeys()).filter((key) => /^[0-9A-F]{24}$/.test(key.slice(timelineKeyPrefix.length)))
}

async function listPartials() {
  return (await listKeys()).flatMap((key) => {
    const fields = parsePartialObjectName(key.slice(timelineKeyPrefix.length), SEGMENT_BYTES)
    return fields === undefined ? [] : [{ key, fields }]
  })
}

async function getObject(key: string): Promise<Buffer> {
  const response = await s3Client().send(new GetObjectCommand({ Bucket: BUCKET, Key: key }))
  if (response.Body === undefined) throw new Error(`no body for ${key}`)
  return Buffer.from(await response.Body.transformToByteArray())
}

function s3Client(): S3Client {
  if (s3 === undefined) throw new Error("s3rver is not running")
  return s3
}

/** Every full segment below `commitLsn` is in object storage. */
async function waitForFullSegments(commitLsn: number): Promise<void> {
  const lastFull = segmentNoOf(commitLsn, SEGMENT_BYTES) - 1
  await waitFor(`segments 1..${lastFull} in object storage`, WAIT_MS_DEFAULT, async () => {
    const stored = new Set(await listSegmentObjects())
    for (let segmentNo = 1; segmentNo <= lastFull; segmentNo++) if (!stored.has(segmentKey(segmentNo))) return undefined
    return true
  }).catch(async (error: unknown) => {
    throw new Error(`${String(error)}; stored: ${(await listKeys()).map((key) => key.slice(timelineKeyPrefix.length)).join(", ")}`)
  })
}

// ---- the safekeepers' files and logs ----

function segmentName(segmentNo: number): string {
  return segmentFileName(1, segmentNo, SEGMENT_BYTES)
}

const timelineDir = (sk: SafekeeperProcess): string => path.join(sk.datadir, TENANT, TIMELINE)

function timelineFiles(sk: SafekeeperProcess): string[] {
  return fs.readdirSync(timelineDir(sk)).sort()
}

/** Segment numbers with a file (complete or .partial) in the timeline's directory. */
function localSegmentNos(sk: SafekeeperProcess): number[] {
  return timelineFiles(sk).flatMap((name) => {
    const match = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?$/.exec(name)
    return match === null ? [] : [parseInt(match[2]!, 16) * (0x1_0000_0000 / SEGMENT_BYTES) + parseInt(match[3]!, 16)]
  })
}

function readLocalSegment(sk: SafekeeperProcess, segmentNo: number): Buffer {
  const base = path.join(timelineDir(sk), segmentName(segmentNo))
  if (fs.existsSync(base)) return fs.readFileSync(base)
  if (fs.existsSync(`${base}.partial`)) return fs.readFileSync(`${base}.partial`)
  throw new Error(`sk${sk.id} has no segment ${segmentName(segmentNo)} (files: ${timelineFiles(sk).join(", ")})`)
}

function readControlFile(sk: SafekeeperProcess): PersistedState {
  return Result.getOrThrow(decodeControlFile(fs.readFileSync(path.join(timelineDir(sk), "safekeeper.control"))))
}

interface LogEvent {
  readonly msg: string
  readonly timeline?: string
  readonly flush_lsn?: string
}

/** The safekeeper's JSON log lines about this timeline (every run of the process, in order). */
function logEvents(sk: SafekeeperProcess): LogEvent[] {
  if (!fs.existsSync(sk.logPath)) return []
  return fs.readFileSync(sk.logPath, "utf8").split("\n").flatMap((line) => {
    if (!line.startsWith("{")) return []
    try {
      const event = JSON.parse(line) as LogEvent
      // Lines without a timeline field (peer recovery's) are about the only one there is.
      return event.timeline === undefined || event.timeline === `${TENANT}/${TIMELINE}` ? [event] : []
    } catch {
      return []
    }
  })
}

/** "wal backup started" / "wal backup stopped" of this process's current run, in order. */
function backupEvents(sk: SafekeeperProcess): string[] {
  return logEvents(sk).map((e) => e.msg).filter((msg) => msg === "wal backup started" || msg === "wal backup stopped")
}

function expectBytesEqual(actual: Uint8Array, expected: Uint8Array, what: string): void {
  expect(actual.byteLength, `${what}: length`).toBe(expected.byteLength)
  if (Buffer.compare(actual, expected) === 0) return
  let offset = 0
  while (actual[offset] === expected[offset]) offset++
  expect.fail(`${what}: first difference at byte ${offset} (0x${offset.toString(16)}): ${actual[offset]} vs ${expected[offset]}`)
}

// ---- small helpers ----

const host = (sk: SafekeeperProcess): string => sk.pgAddress.slice(0, sk.pgAddress.lastIndexOf(":"))
const port = (sk: SafekeeperProcess): string => sk.pgAddress.slice(sk.pgAddress.lastIndexOf(":") + 1)

function lsn(text: string): number {
  return Result.getOrThrow(parseLsn(text))
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** Polls `probe` until it returns a value; fails after `timeoutMs` naming what it waited for. */
async function waitFor<A>(what: string, timeoutMs: number, probe: () => Promise<A | undefined>): Promise<A> {
  const deadline = Date.now() + timeoutMs
  // Bounded by the deadline.
  for (;;) {
    const value = await probe()
    if (value !== undefined) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(POLL_INTERVAL_MS)
  }
}

function tailOf(file: string, lines = LOG_TAIL_LINES): string {
  try {
    return fs.readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join("\n")
  } catch {
    return "(no log)"
  }
}

/** Runs a test body; a failure's message gains the tails of every safekeeper's and proposer's log. */
async function withLogs(body: () => Promise<void>): Promise<void> {
  try {
    await body()
  } catch (error) {
    keepWorkDir = true
    const logs = [
      ...(cluster?.safekeepers ?? []).map((sk) => `--- sk${sk.id} (${sk.logPath}) ---\n${tailOf(sk.logPath)}`),
      ...extraLogs.slice(-2).map((file) => `--- ${file} ---\n${tailOf(file)}`)
    ].join("\n")
    if (error instanceof Error) {
      error.message = `${error.message}\n\nlogs (kept under ${workDir}):\n${logs}`
      throw error
    }
    throw new Error(`${String(error)}\n\nlogs:\n${logs}`)
  }
}
