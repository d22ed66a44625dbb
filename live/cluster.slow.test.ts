// Goal: a live three-safekeeper cluster, fed by `sk proposer` over real sockets, serves stock
// PostgreSQL 15 tools, keeps every committed byte through kill -9 of one and then two
// safekeepers, and refuses bad input without harm.
// Method: `sk safekeeper` processes (live/local-cluster.ts) on free loopback ports in a temp
// directory; `sk proposer` runs as a child process with synthetic WAL (valid records, so
// pg_waldump can check them). Each test uses its own timeline. Stock tools are the real
// binaries: pg_receivewal streams into an empty directory and must stop cleanly at -E with
// files byte-equal to the safekeepers'; pg_waldump must read the WAL; psql asks the
// replication commands. The fault test kills processes with SIGKILL mid-run, restarts them,
// and at the end compares every safekeeper's segment files byte for byte over the range they
// all hold, checks that each run's committed prefix never changed (by hash), and runs
// pg_waldump over the whole WAL. Every process is stopped by its pid in afterAll; a failing
// test carries the tails of the safekeeper and proposer logs in its message.
import { type ChildProcess, execFile, spawn } from "node:child_process"
import { createHash } from "node:crypto"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"
import { Effect, Result } from "effect"
import { afterAll, beforeAll, describe, expect, test } from "vitest"
import { Generation, TenantId, TimelineId } from "../core/acceptor/state.js"
import { Net } from "../core/io/net.js"
import { encodeProposerMessage } from "../core/protocol/consensus.js"
import { connectPg, type PgClient } from "../core/protocol/pg-client.js"
import { formatLsn, parseLsn, segmentFileName } from "../core/wal/lsn.js"
import type { LocalCluster, SafekeeperProcess } from "./local-cluster.js"
import { makeLiveNet } from "./net.js"
import { SYNTHETIC_SYSTEM_ID } from "./proposer.js"
import { ensurePostgresInstalled, pgBinary } from "./testing/postgres.js"

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const SK_BIN = path.join(REPO_ROOT, "bin", "sk.js")
const SK_MAIN = path.join(REPO_ROOT, "dist", "cli", "main.js")
/**
 * live/local-cluster.ts finds bin/sk.js two directories above itself, which is right for
 * dist/live/ only; imported from source (as vitest does) it points outside the repository.
 * So the cluster helper is loaded from dist, with the source module's types.
 */
const LOCAL_CLUSTER_JS = path.join(REPO_ROOT, "dist", "live", "local-cluster.js")

const SEGMENT_BYTES = 16 * 1024 * 1024
const MIB = 1024 * 1024
/** Where a new timeline's WAL starts: segment 1, after the long page header the safekeeper writes. */
const WAL_START_LSN = SEGMENT_BYTES + 40
const PG_VERSION_NUM = 150000
const TENANT = "5e1f0000000000000000000000000001"
const TIMELINE_STOCK = "5e1f00000000000000000000000000a1"
const TIMELINE_BAD = "5e1f00000000000000000000000000b1"
const TIMELINE_FAULTS = "5e1f00000000000000000000000000c1"

/** Bounds on waiting for a child process; a run past it is killed and the test fails. */
const PROPOSER_RUN_MS_MAX = 90_000
const PG_TOOL_RUN_MS_MAX = 60_000
const POLL_INTERVAL_MS = 50
/** Log lines of each process a failure message carries. */
const LOG_TAIL_LINES = 25

let workDir = ""
let cluster: LocalCluster | undefined
let keepWorkDir = false
/** Every child this file starts (proposers, pg tools); killed by pid in afterAll. */
const children = new Set<ChildProcess>()
/** Log files a failure message quotes, besides the safekeepers'. */
const extraLogs: string[] = []

beforeAll(async () => {
  ensurePostgresInstalled()
  for (const built of [SK_MAIN, LOCAL_CLUSTER_JS]) {
    if (!fs.existsSync(built)) throw new Error(`${built} is missing: run npm run build first`)
  }
  const { LocalCluster } = (await import(pathToFileURL(LOCAL_CLUSTER_JS).href)) as typeof import("./local-cluster.js")
  workDir = fs.mkdtempSync(path.join(os.tmpdir(), "sk-cluster-test-"))
  cluster = await LocalCluster.start({ safekeeperCount: 3, directory: path.join(workDir, "cluster") })
})

afterAll(async () => {
  for (const child of children) stopChild(child)
  await cluster?.stop()
  if (workDir === "") return
  if (keepWorkDir) console.error(`cluster test: kept ${workDir} for inspection`)
  else fs.rmSync(workDir, { recursive: true, force: true })
})

describe("stock PostgreSQL 15 tools against a live safekeeper", () => {
  test("pg_receivewal streams from the first segment and stops at -E; its files equal the safekeepers'; pg_waldump reads both; psql asks IDENTIFY_SYSTEM and SHOW", () =>
    withLogs(async () => {
      const sks = liveCluster().safekeepers
      const source = sks[0]!
      // A paced run, so that pg_receivewal can start while the commit is still in segment 1
      // (with an empty directory it starts at IDENTIFY_SYSTEM's xlogpos rounded down to its
      // segment, pg-replication.md §5a) and then follows the stream live across segments.
      const proposer = startProposer("stock", TIMELINE_STOCK, ["--synthetic-wal", "6M", "--total", "48M"])
      const first = await waitFor("the timeline's first commit on sk1", 20_000, async () => {
        const status = await timelineStatus(source, TIMELINE_STOCK)
        return status !== undefined && status.commitLsn >= WAL_START_LSN ? status : undefined
      })
      expect(first.commitLsn, "commit_lsn left segment 1 before pg_receivewal could start").toBeLessThan(2 * SEGMENT_BYTES)

      // pg_receivewal stops once it has received past -E (it checks endpos < received end),
      // so -E lies well below what this run commits on every safekeeper.
      const stopRequestLsn = 0x3400000
      const recvDir = freshDir("recv")
      const recv = await runTool("pg_receivewal", [
        "-h", host(source), "-p", port(source), "-U", "x", "-D", recvDir, "-E", formatLsn(stopRequestLsn), "-v", "-d", timelineOptionsConninfo(TIMELINE_STOCK)
      ])
      expect(recv.code, `pg_receivewal failed:\n${recv.stderr}`).toBe(0)
      expect(recv.stderr).toContain("starting log streaming at 0/1000000 (timeline 1)")
      const stoppedText = /stopped log streaming at ([0-9A-F]+\/[0-9A-F]+)/.exec(recv.stderr)?.[1]
      expect(stoppedText, recv.stderr).toBeDefined()
      const stopLsn = lsn(stoppedText!)
      expect(stopLsn).toBeGreaterThan(stopRequestLsn)

      const run = await proposer.done
      expect(run.code, run.describe()).toBe(0)
      expect(run.commitLsn).toBeGreaterThanOrEqual(WAL_START_LSN + 48 * MIB)

      // Segments 1 and 2 complete, 3 partial: each byte-equal to every safekeeper's file up to
      // the stop point, and zero after it (pg_receivewal pre-zeroes its files, §6).
      expect(fs.readdirSync(recvDir).sort()).toEqual([segmentName(1), segmentName(2), `${segmentName(3)}.partial`])
      for (const sk of sks) {
        for (const segmentNo of [1, 2]) {
          const received = fs.readFileSync(path.join(recvDir, segmentName(segmentNo)))
          expectBytesEqual(received, readSegment(sk, TIMELINE_STOCK, segmentNo), `segment ${segmentNo}: pg_receivewal vs sk${sk.id}`)
        }
        const partial = fs.readFileSync(path.join(recvDir, `${segmentName(3)}.partial`))
        expect(partial.byteLength).toBe(SEGMENT_BYTES)
        const stopOffset = stopLsn - 3 * SEGMENT_BYTES
        expectBytesEqual(partial.subarray(0, stopOffset), readSegment(sk, TIMELINE_STOCK, 3).subarray(0, stopOffset), `segment 3 up to ${formatLsn(stopLsn)}: pg_receivewal vs sk${sk.id}`)
        expect(firstNonZero(partial.subarray(stopOffset)), "bytes after the stop point are zero").toBe(-1)
      }
      // The long page header carries the system id IDENTIFY_SYSTEM reports.
      const header = fs.readFileSync(path.join(recvDir, segmentName(1))).subarray(0, 40)
      expect(header.readBigUInt64LE(24)).toBe(SYNTHETIC_SYSTEM_ID)
      expect(header.readUInt32LE(32)).toBe(SEGMENT_BYTES)

      // pg_waldump: complete segments by name; the partial renamed and bounded with -e (§9).
      const whole = await runTool("pg_waldump", ["-q", "-p", recvDir, segmentName(1), segmentName(2)])
      expect(whole.code, `pg_waldump of pg_receivewal's complete segments:\n${whole.stderr}`).toBe(0)
      expectWaldumpClean(await waldumpRange(recvDir, WAL_START_LSN, stopLsn), "pg_receivewal's files")
      const stats = await waldumpRange(path.join(source.datadir, TENANT, TIMELINE_STOCK), WAL_START_LSN, run.commitLsn!, ["--stats"])
      expectWaldumpClean(stats, "sk1's files up to the commit")
      // Synthetic records are ~260 bytes: 48 MiB is well over 100k of them.
      expect(Number(/Total\s+(\d+)/.exec(stats.stdout)?.[1] ?? 0)).toBeGreaterThan(100_000)

      // psql in replication mode, as in pg-replication.md §5d.
      const status = await timelineStatus(source, TIMELINE_STOCK)
      const identify = await psql(source, TIMELINE_STOCK, ["-c", "IDENTIFY_SYSTEM"])
      expect(identify.code, identify.stderr).toBe(0)
      const [systemId, timeline, xlogpos, dbname] = identify.stdout.trim().split("|")
      expect(systemId).toBe(SYNTHETIC_SYSTEM_ID.toString())
      expect(timeline).toBe("1")
      expect(lsn(xlogpos!)).toBe(status!.commitLsn)
      expect(dbname).toBe("")
      const show = await psql(source, TIMELINE_STOCK, ["-c", "SHOW wal_segment_size", "-c", "SHOW data_directory_mode"])
      expect(show.code, show.stderr).toBe(0)
      expect(show.stdout.trim().split("\n")).toEqual(["16MB", "0700"])
    }))

  test("pg_receivewal -S slot (READ_REPLICATION_SLOT path) starts at the commit's segment and stops at the commit", () =>
    withLogs(async () => {
      const sk = liveCluster().safekeepers[1]!
      const status = await timelineStatus(sk, TIMELINE_STOCK)
      expect(status, "the previous test left a committed timeline").toBeDefined()
      const commitLsn = status!.commitLsn
      const segmentNo = Math.floor(commitLsn / SEGMENT_BYTES)
      // A safekeeper keeps no slots: READ_REPLICATION_SLOT says physical with no restart_lsn,
      // so pg_receivewal falls back to xlogpos (the commit) rounded down to its segment (§5b).
      const recvDir = freshDir("recv-slot")
      const recv = await runTool("pg_receivewal", [
        "-h", host(sk), "-p", port(sk), "-U", "x", "-D", recvDir, "-S", "recvslot", "-E", formatLsn(commitLsn - 1), "-v", "-d", timelineOptionsConninfo(TIMELINE_STOCK)
      ])
      expect(recv.code, `pg_receivewal -S failed:\n${recv.stderr}`).toBe(0)
      expect(recv.stderr).toContain(`starting log streaming at ${formatLsn(segmentNo * SEGMENT_BYTES)} (timeline 1)`)
      expect(recv.stderr).toContain(`stopped log streaming at ${formatLsn(commitLsn)}`)
      expect(fs.readdirSync(recvDir)).toEqual([`${segmentName(segmentNo)}.partial`])
      const offset = commitLsn - segmentNo * SEGMENT_BYTES
      const received = fs.readFileSync(path.join(recvDir, `${segmentName(segmentNo)}.partial`))
      expectBytesEqual(received.subarray(0, offset), readSegment(sk, TIMELINE_STOCK, segmentNo).subarray(0, offset), `segment ${segmentNo} via a slot vs sk${sk.id}`)
      expect(firstNonZero(received.subarray(offset))).toBe(-1)
    }))
})

describe("bad input against the live server", () => {
  test("an unknown command is an error and the session still answers; IDENTIFY_SYSTEM of an unknown timeline is refused", () =>
    withLogs(async () => {
      const sk = liveCluster().safekeepers[0]!
      // psql runs both -c in one session; without ON_ERROR_STOP it goes on after the error.
      const mixed = await psql(sk, TIMELINE_STOCK, ["-c", "DROP TABLE everything", "-c", "SHOW wal_segment_size"])
      expect(mixed.stderr).toMatch(/ERROR:.*DROP TABLE everything/)
      expect(mixed.stdout.trim()).toBe("16MB")

      const outcome = await runPg(sk, TIMELINE_BAD, (client) =>
        Effect.gen(function* () {
          const unknown = yield* Effect.flip(client.simpleQuery("SELECT pg_sleep(1)"))
          const show = yield* client.simpleQuery("SHOW wal_segment_size")
          const identify = yield* Effect.flip(client.simpleQuery("IDENTIFY_SYSTEM"))
          const status = yield* client.simpleQuery("TIMELINE_STATUS")
          return { unknown, show, identify, status }
        }))
      expect(outcome.unknown).toMatchObject({ _tag: "PgServerError", severity: "ERROR", code: "42601" })
      expect(outcome.show.rows).toEqual([["16MB"]])
      expect(outcome.identify).toMatchObject({ _tag: "PgServerError", code: "58P01" })
      expect(outcome.status.rows).toEqual([])
    }))

  test("a push to an unknown timeline without creation fails and creates nothing", () =>
    withLogs(async () => {
      const sks = liveCluster().safekeepers
      const sk = sks[0]!
      const failure = await runPg(sk, TIMELINE_BAD, (client) =>
        Effect.gen(function* () {
          const copy = yield* client.startCopyBoth("START_WAL_PUSH (proto_version '3', allow_timeline_creation 'false')")
          yield* copy.writeCopyData(encodeProposerMessage({
            _tag: "ProposerGreeting",
            tenantId: TenantId(TENANT),
            timelineId: TimelineId(TIMELINE_BAD),
            mconf: { generation: Generation(0), members: [], newMembers: undefined },
            pgVersion: PG_VERSION_NUM,
            systemId: SYNTHETIC_SYSTEM_ID,
            walSegSizeBytes: SEGMENT_BYTES
          }))
          return yield* Effect.flip(copy.readCopyData)
        }))
      expect(failure).toMatchObject({ _tag: "PgServerError" })
      expect(failure.message).toMatch(/does not exist and creation is not allowed/)
      for (const each of sks) expect(fs.existsSync(path.join(each.datadir, TENANT, TIMELINE_BAD)), `sk${each.id} created the timeline`).toBe(false)
      const show = await runPg(sk, TIMELINE_BAD, (client) => client.simpleQuery("SHOW wal_segment_size"))
      expect(show.rows).toEqual([["16MB"]])
    }))

  test("an oversized startup length gets a FATAL and a close; the server keeps serving", () =>
    withLogs(async () => {
      const sk = liveCluster().safekeepers[0]!
      const reply = await rawExchange(sk, Buffer.from([0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]))
      expect(reply.closed, "the server closed the connection").toBe(true)
      expect(reply.bytes[0], "an ErrorResponse").toBe(0x45)
      expect(reply.bytes.toString("latin1")).toContain("SFATAL")
      expect(sk.child?.exitCode ?? null).toBe(null)
      const show = await psql(sk, TIMELINE_STOCK, ["-c", "SHOW wal_segment_size"])
      expect(show.stdout.trim()).toBe("16MB")
    }))
})

describe("faults: kill -9 during a run, restart, lose the quorum", () => {
  test("commits continue without one safekeeper, stop without two, resume with two; no committed byte is lost or changed", () =>
    withLogs(async () => {
      const c = liveCluster()
      const [sk1, sk2, sk3] = c.safekeepers as [SafekeeperProcess, SafekeeperProcess, SafekeeperProcess]
      /** Each run's committed end and a hash of the WAL up to it, taken right after the run. */
      const committed: Array<{ readonly name: string; readonly commitLsn: number; readonly sha256: string }> = []
      const recordCommit = (name: string, commitLsn: number, holders: ReadonlyArray<SafekeeperProcess>) => {
        const hashes = holders.map((sk) => hashWal(sk, TIMELINE_FAULTS, commitLsn))
        for (const [i, hash] of hashes.entries()) expect(hash, `${name}: sk${holders[i]!.id} differs from sk${holders[0]!.id} below ${formatLsn(commitLsn)}`).toBe(hashes[0])
        committed.push({ name, commitLsn, sha256: hashes[0]! })
      }

      // 1. kill -9 one safekeeper in the middle of a paced run: the quorum of two carries on.
      const run1 = startProposer("faults-1", TIMELINE_FAULTS, ["--synthetic-wal", "4M", "--total", "24M", "--quorum-timeout", "20"])
      const atKill = await waitFor("8 MiB committed before the kill", 30_000, async () => {
        const status = await timelineStatus(sk1, TIMELINE_FAULTS)
        return status !== undefined && status.commitLsn >= WAL_START_LSN + 8 * MIB ? status : undefined
      })
      await c.kill(sk3.id)
      const result1 = await run1.done
      expect(result1.code, result1.describe()).toBe(0)
      expect(result1.commitLsn!, "most of run 1 was committed after the kill").toBeGreaterThan(atKill.commitLsn + 8 * MIB)
      const sk3Before = await statusAfterRestart(c, sk3)
      expect(sk3Before.flushLsn, "sk3 missed part of run 1").toBeLessThan(result1.commitLsn!)
      recordCommit("run 1", result1.commitLsn!, [sk1, sk2])

      // 2. The restarted safekeeper catches up from the next proposer: it gets everything it
      // missed (run 1's commit) and follows the new term. The run is long enough (paced) for
      // the catch-up, which goes at full speed.
      const run2 = startProposer("faults-2", TIMELINE_FAULTS, ["--synthetic-wal", "2M", "--total", "12M", "--quorum-timeout", "20"])
      const caughtUp = await waitFor("sk3's flush to reach run 1's commit", 40_000, async () => {
        const status = await timelineStatus(sk3, TIMELINE_FAULTS)
        return status !== undefined && status.flushLsn >= result1.commitLsn! ? status : undefined
      })
      expect(caughtUp.flushLsn).toBeGreaterThanOrEqual(result1.commitLsn!)
      const result2 = await run2.done
      expect(result2.code, result2.describe()).toBe(0)
      const flushes2 = await Promise.all([sk1, sk2, sk3].map((sk) => timelineStatus(sk, TIMELINE_FAULTS)))
      // All three took part in run 2's quorum or followed it to within the proposer's window.
      for (const [i, status] of flushes2.entries()) expect(status!.flushLsn, `sk${i + 1} after run 2`).toBeGreaterThan(result1.commitLsn!)
      recordCommit("run 2", result2.commitLsn!, [sk1, sk2, sk3].filter((_, i) => flushes2[i]!.flushLsn >= result2.commitLsn!))

      // 3. Kill two in the middle of a run: commits stop and the proposer gives up (exit 4).
      const run3 = startProposer("faults-3", TIMELINE_FAULTS, ["--synthetic-wal", "4M", "--total", "64M", "--quorum-timeout", "3"])
      await waitFor("run 3 to commit 2 MiB", 30_000, async () => {
        const status = await timelineStatus(sk1, TIMELINE_FAULTS)
        return status !== undefined && status.commitLsn >= result2.commitLsn! + 2 * MIB ? true : undefined
      })
      await Promise.all([c.kill(sk2.id), c.kill(sk3.id)])
      // Anything in flight is settled within a second; after that the commit must not move.
      await sleep(1000)
      const stalled = await timelineStatus(sk1, TIMELINE_FAULTS)
      const result3 = await run3.done
      expect(result3.code, `a proposer without a quorum exits 4; ${result3.describe()}`).toBe(4)
      const afterStall = await timelineStatus(sk1, TIMELINE_FAULTS)
      expect(afterStall!.commitLsn, "commit_lsn moved without a quorum").toBe(stalled!.commitLsn)
      expect(afterStall!.commitLsn).toBeLessThan(result2.commitLsn! + 64 * MIB)

      // 4. One back (two of three): a new proposer commits again.
      await restartSafekeeper(c, sk2)
      const run4 = startProposer("faults-4", TIMELINE_FAULTS, ["--synthetic-wal", "0", "--total", "8M", "--quorum-timeout", "20"])
      const result4 = await run4.done
      expect(result4.code, result4.describe()).toBe(0)
      expect(result4.commitLsn!).toBeGreaterThan(afterStall!.commitLsn)
      recordCommit("run 4", result4.commitLsn!, [sk1, sk2])

      // 5. All three back; a short run brings sk3 along, then every process is stopped so the
      // files hold still.
      await restartSafekeeper(c, sk3)
      const run5 = startProposer("faults-5", TIMELINE_FAULTS, ["--synthetic-wal", "2M", "--total", "4M", "--quorum-timeout", "20"])
      await waitFor("sk3's flush to reach run 4's commit", 40_000, async () => {
        const status = await timelineStatus(sk3, TIMELINE_FAULTS)
        return status !== undefined && status.flushLsn >= result4.commitLsn! ? true : undefined
      })
      const result5 = await run5.done
      expect(result5.code, result5.describe()).toBe(0)
      const final = await Promise.all([sk1, sk2, sk3].map(async (sk) => ({ sk, status: (await timelineStatus(sk, TIMELINE_FAULTS))! })))
      recordCommit("run 5", result5.commitLsn!, final.filter((f) => f.status.flushLsn >= result5.commitLsn!).map((f) => f.sk))

      // No committed byte lost or changed: every run's committed prefix hashes the same on
      // every safekeeper now, and all files agree up to the lowest flush among them.
      const lowestFlushLsn = Math.min(...final.map((f) => f.status.flushLsn))
      expect(lowestFlushLsn).toBeGreaterThanOrEqual(result5.commitLsn! - 4 * MIB)
      for (const entry of committed) {
        for (const { sk, status } of final) {
          if (status.flushLsn < entry.commitLsn) continue
          expect(hashWal(sk, TIMELINE_FAULTS, entry.commitLsn), `${entry.name}'s committed WAL (to ${formatLsn(entry.commitLsn)}) changed on sk${sk.id}`).toBe(entry.sha256)
        }
      }
      for (let segmentNo = 1; segmentNo * SEGMENT_BYTES < lowestFlushLsn; segmentNo++) {
        const length = Math.min(SEGMENT_BYTES, lowestFlushLsn - segmentNo * SEGMENT_BYTES)
        const reference = readSegment(sk1, TIMELINE_FAULTS, segmentNo).subarray(0, length)
        for (const sk of [sk2, sk3]) {
          expectBytesEqual(readSegment(sk, TIMELINE_FAULTS, segmentNo).subarray(0, length), reference, `segment ${segmentNo} up to ${formatLsn(lowestFlushLsn)}: sk${sk.id} vs sk1`)
        }
      }
      // One valid chain of records across the five terms, through the whole committed WAL.
      for (const { sk, status } of final) {
        const dump = await waldumpRange(path.join(sk.datadir, TENANT, TIMELINE_FAULTS), WAL_START_LSN, Math.min(status.flushLsn, result5.commitLsn!))
        expectWaldumpClean(dump, `sk${sk.id}'s WAL across five proposer terms (${proposerWarnings()})`)
      }
    }))
})

// ---- processes ----

interface ProposerRun {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  /** From the last line, "committed X in term N (term start Y)". */
  readonly commitLsn: number | undefined
  readonly describe: () => string
}

/** `sk proposer` against the whole cluster as a child process; stdout and stderr go to files. */
function startProposer(name: string, timelineId: string, args: ReadonlyArray<string>): { readonly child: ChildProcess; readonly done: Promise<ProposerRun> } {
  const outPath = path.join(workDir, `proposer-${name}.out`)
  const logPath = path.join(workDir, `proposer-${name}.log`)
  extraLogs.push(logPath)
  const out = fs.openSync(outPath, "w")
  const log = fs.openSync(logPath, "w")
  const child = spawn(process.execPath, [
    SK_BIN, "proposer", "--safekeepers", liveCluster().pgAddresses, "--tenant-id", TENANT, "--timeline-id", timelineId, ...args
  ], { stdio: ["ignore", out, log] })
  fs.closeSync(out)
  fs.closeSync(log)
  children.add(child)
  const done = new Promise<ProposerRun>((resolve) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), PROPOSER_RUN_MS_MAX)
    child.once("exit", (code, signal) => {
      clearTimeout(timer)
      children.delete(child)
      const stdout = fs.readFileSync(outPath, "utf8")
      const committedText = /committed ([0-9A-F]+\/[0-9A-F]+) in term/.exec(stdout)?.[1]
      resolve({
        code,
        signal,
        stdout,
        commitLsn: committedText === undefined ? undefined : lsn(committedText),
        describe: () => `proposer ${name} exited ${code ?? signal}; stdout:\n${tailOf(outPath)}\nstderr:\n${tailOf(logPath)}`
      })
    })
  })
  return { child, done }
}

interface ToolRun {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/** A PostgreSQL 15 client tool; killed by pid past PG_TOOL_RUN_MS_MAX. */
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

function psql(sk: SafekeeperProcess, timelineId: string, args: ReadonlyArray<string>): Promise<ToolRun> {
  const conninfo = `host=${host(sk)} port=${port(sk)} user=x replication=true connect_timeout=5 options='-c tenant_id=${TENANT} timeline_id=${timelineId}'`
  return runTool("psql", ["-X", "-A", "-t", "-F", "|", conninfo, ...args])
}

/** TIMELINE_STATUS through psql: undefined when the timeline does not exist there (or the server is down). */
async function timelineStatus(sk: SafekeeperProcess, timelineId: string): Promise<{ readonly flushLsn: number; readonly commitLsn: number } | undefined> {
  const result = await psql(sk, timelineId, ["-c", "TIMELINE_STATUS"])
  const row = result.stdout.trim()
  if (result.code !== 0 || row === "") return undefined
  const [flush, commit] = row.split("|")
  return { flushLsn: lsn(flush!), commitLsn: lsn(commit!) }
}

/**
 * Restarts a safekeeper and waits until its Postgres port answers: startSafekeeper returns once
 * GET /v1/status answers, and `sk safekeeper` serves HTTP before it has loaded its timelines
 * and opened the Postgres listener.
 */
async function restartSafekeeper(c: LocalCluster, sk: SafekeeperProcess): Promise<void> {
  await c.startSafekeeper(sk.id)
  await waitFor(`sk${sk.id}'s Postgres port after the restart`, 20_000, async () => {
    const show = await psql(sk, TIMELINE_FAULTS, ["-c", "SHOW wal_segment_size"])
    return show.code === 0 ? true : undefined
  })
}

async function statusAfterRestart(c: LocalCluster, sk: SafekeeperProcess): Promise<{ readonly flushLsn: number; readonly commitLsn: number }> {
  await restartSafekeeper(c, sk)
  const status = await timelineStatus(sk, TIMELINE_FAULTS)
  expect(status, `sk${sk.id} lost the timeline across kill -9`).toBeDefined()
  return status!
}

/** One program on a fresh pg-client session to `sk` (the in-tree client over live sockets). */
function runPg<A, E>(sk: SafekeeperProcess, timelineId: string, body: (client: PgClient) => Effect.Effect<A, E>): Promise<A> {
  const program = Effect.acquireUseRelease(
    connectPg(sk.pgAddress, { user: "x", database: "replication", replication: "true", options: `-c tenant_id=${TENANT} timeline_id=${timelineId}` }),
    body,
    (client) => client.terminate
  )
  return Effect.runPromise(Effect.provideService(program, Net, makeLiveNet()).pipe(Effect.timeout("20 seconds")) as Effect.Effect<A, unknown>)
}

/** Writes `bytes` on a plain socket; returns what came back until the server closed (or 5 s). */
function rawExchange(sk: SafekeeperProcess, bytes: Buffer): Promise<{ readonly bytes: Buffer; readonly closed: boolean }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: host(sk), port: Number(port(sk)) })
    const received: Buffer[] = []
    const timer = setTimeout(() => {
      socket.destroy()
      resolve({ bytes: Buffer.concat(received), closed: false })
    }, 5_000)
    socket.on("connect", () => socket.write(bytes))
    socket.on("data", (chunk) => received.push(chunk))
    socket.on("error", (error) => {
      clearTimeout(timer)
      reject(error)
    })
    socket.on("close", () => {
      clearTimeout(timer)
      resolve({ bytes: Buffer.concat(received), closed: true })
    })
  })
}

function stopChild(child: ChildProcess): void {
  if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) child.kill("SIGKILL")
}

// ---- WAL files ----

function segmentName(segmentNo: number): string {
  return segmentFileName(1, segmentNo, SEGMENT_BYTES)
}

/** A safekeeper's segment file, complete or .partial. */
function readSegment(sk: SafekeeperProcess, timelineId: string, segmentNo: number): Buffer {
  const base = path.join(sk.datadir, TENANT, timelineId, segmentName(segmentNo))
  if (fs.existsSync(base)) return fs.readFileSync(base)
  if (fs.existsSync(`${base}.partial`)) return fs.readFileSync(`${base}.partial`)
  throw new Error(`sk${sk.id} has no segment ${segmentName(segmentNo)} (files: ${fs.readdirSync(path.dirname(base)).join(", ")})`)
}

/** SHA-256 of a safekeeper's WAL from the segment 1 start up to `endLsn`. */
function hashWal(sk: SafekeeperProcess, timelineId: string, endLsn: number): string {
  const hash = createHash("sha256")
  for (let segmentNo = 1; segmentNo * SEGMENT_BYTES < endLsn; segmentNo++) {
    const length = Math.min(SEGMENT_BYTES, endLsn - segmentNo * SEGMENT_BYTES)
    hash.update(readSegment(sk, timelineId, segmentNo).subarray(0, length))
  }
  return hash.digest("hex")
}

/**
 * pg_waldump over [startLsn, endLsn) of a directory whose last segment may be .partial:
 * pg_waldump takes no .partial names (§9), so every segment is linked under its plain name.
 */
async function waldumpRange(dir: string, startLsn: number, endLsn: number, extra: ReadonlyArray<string> = []): Promise<ToolRun> {
  const linkDir = freshDir("waldump")
  for (const name of fs.readdirSync(dir)) {
    const plain = name.endsWith(".partial") ? name.slice(0, -".partial".length) : name
    if (/^[0-9A-F]{24}$/.test(plain)) fs.symlinkSync(path.join(dir, name), path.join(linkDir, plain))
  }
  return runTool("pg_waldump", [...(extra.length === 0 ? ["-q"] : extra), "-p", linkDir, "-s", formatLsn(startLsn), "-e", formatLsn(endLsn)])
}

function expectWaldumpClean(result: ToolRun, what: string): void {
  expect(result.code, `pg_waldump of ${what}:\n${result.stderr}`).toBe(0)
  expect(result.stderr, `pg_waldump of ${what}`).toBe("")
}

function expectBytesEqual(actual: Uint8Array, expected: Uint8Array, what: string): void {
  expect(actual.byteLength, `${what}: length`).toBe(expected.byteLength)
  if (Buffer.compare(actual, expected) === 0) return
  let offset = 0
  while (actual[offset] === expected[offset]) offset++
  expect.fail(`${what}: first difference at byte ${offset} (0x${offset.toString(16)}): ${actual[offset]} vs ${expected[offset]}`)
}

function firstNonZero(bytes: Uint8Array): number {
  return bytes.findIndex((byte) => byte !== 0)
}

// ---- small helpers ----

function liveCluster(): LocalCluster {
  if (cluster === undefined) throw new Error("the cluster did not start")
  return cluster
}

const host = (sk: SafekeeperProcess): string => sk.pgAddress.slice(0, sk.pgAddress.lastIndexOf(":"))
const port = (sk: SafekeeperProcess): string => sk.pgAddress.slice(sk.pgAddress.lastIndexOf(":") + 1)
const timelineOptionsConninfo = (timelineId: string): string => `options='-c tenant_id=${TENANT} timeline_id=${timelineId}'`

function lsn(text: string): number {
  return Result.getOrThrow(parseLsn(text))
}

function freshDir(name: string): string {
  return fs.mkdtempSync(path.join(workDir, `${name}-`))
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

/** The proposers' warnings, e.g. a term started with xl_prev 0 (they explain a bad chain). */
function proposerWarnings(): string {
  const warnings = extraLogs.flatMap((file) => {
    const lines = fs.existsSync(file) ? fs.readFileSync(file, "utf8").split("\n") : []
    return lines.filter((line) => line.includes("could not find the last record")).map((line) => `${path.basename(file)}: ${line}`)
  })
  return warnings.length === 0 ? "no proposer warned about xl_prev" : warnings.join("\n")
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
      ...extraLogs.slice(-3).map((file) => `--- ${file} ---\n${tailOf(file)}`)
    ].join("\n")
    if (error instanceof Error) {
      error.message = `${error.message}\n\nlogs (kept under ${workDir}):\n${logs}`
      throw error
    }
    throw new Error(`${String(error)}\n\nlogs:\n${logs}`)
  }
}
