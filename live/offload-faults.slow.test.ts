// Goal: object storage and the broker are outside the quorum's critical path. With an S3
// endpoint that refuses connections and an etcd that is not there, three live safekeepers keep
// accepting and committing WAL; the failures are logged with backoff, nothing claims a backup
// that did not happen, and nothing is removed.
// Method: `sk safekeeper` processes (live/local-cluster.ts, loaded from dist) with
// --remote-storage pointing at a closed loopback port and --broker-endpoint etcd:// at another;
// `sk proposer` commits 48 MiB; then each safekeeper's log and control file are read.
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"
import { Result } from "effect"
import { afterAll, beforeAll, describe, expect, test } from "vitest"
import { decodeControlFile } from "../core/acceptor/control-file.js"
import type { LocalCluster } from "./local-cluster.js"

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const SK_BIN = path.join(REPO_ROOT, "bin", "sk.js")
const LOCAL_CLUSTER_JS = path.join(REPO_ROOT, "dist", "live", "local-cluster.js")
const TENANT = "0ff10ad0000000000000000000000001"
const TIMELINE = "0ff10ad00000000000000000000000a1"
const SEGMENT_BYTES = 16 * 1024 * 1024
const PROPOSER_RUN_MS_MAX = 120_000

let workDir = ""
let cluster: LocalCluster | undefined

beforeAll(async () => {
  workDir = fs.mkdtempSync(path.join(os.tmpdir(), "sk-offload-faults-"))
  const { LocalCluster, freePort } = (await import(pathToFileURL(LOCAL_CLUSTER_JS).href)) as typeof import("./local-cluster.js")
  // Ports taken from the OS and released: nothing listens there.
  const s3Port = await freePort()
  const etcdPort = await freePort()
  process.env.AWS_ACCESS_KEY_ID = "sk-test"
  process.env.AWS_SECRET_ACCESS_KEY = "sk-test"
  cluster = await LocalCluster.start({
    safekeeperCount: 3,
    directory: workDir,
    safekeeperArgs: [
      "--remote-storage", `s3://bucket/prefix?endpoint=http://127.0.0.1:${s3Port}&region=us-east-1`,
      "--broker-endpoint", `etcd://127.0.0.1:${etcdPort}`,
      "--partial-backup-timeout", "1s"
    ]
  })
}, 60_000)

afterAll(async () => {
  await cluster?.stop()
  if (workDir !== "") fs.rmSync(workDir, { recursive: true, force: true })
})

function runProposer(args: ReadonlyArray<string>): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [SK_BIN, "proposer", ...args], { stdio: ["ignore", "pipe", "pipe"] })
    let output = ""
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()))
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()))
    const timer = setTimeout(() => child.kill("SIGKILL"), PROPOSER_RUN_MS_MAX)
    child.once("exit", (code) => {
      clearTimeout(timer)
      resolve({ code, output })
    })
  })
}

describe("unreachable object storage and broker", () => {
  test("the quorum keeps committing; backup failures are logged and retried; no backup is claimed, nothing removed", async () => {
    const sk = cluster!
    const run = await runProposer([
      "--safekeepers", sk.pgAddresses, "--tenant-id", TENANT, "--timeline-id", TIMELINE,
      "--synthetic-wal", "0", "--total", "48M"
    ])
    expect(run.code, run.output.slice(-2000)).toBe(0)
    // Give the managers a few passes (and a partial backup attempt) after the last commit.
    await new Promise((resolve) => setTimeout(resolve, 3_000))
    let uploadFailures = 0
    let brokerFailures = 0
    for (const node of sk.safekeepers) {
      const lines = fs.readFileSync(node.logPath, "utf8").split("\n").filter((line) => line.startsWith("{"))
      const messages = lines.map((line) => JSON.parse(line) as { msg: string; attempt?: number })
      uploadFailures += messages.filter((m) => m.msg === "wal backup upload failed" || m.msg === "partial backup failed").length
      brokerFailures += messages.filter((m) => m.msg === "broker subscription ended" || m.msg === "broker publish failed").length
      expect(messages.some((m) => m.msg === "wal backup segment uploaded"), `${node.logPath} claims an upload`).toBe(false)
      expect(messages.some((m) => m.msg === "wal removed"), `${node.logPath} removed WAL`).toBe(false)
      // Still running (a storage outage is no reason to stop).
      expect(node.child?.exitCode ?? null).toBeNull()
      const timelineDir = path.join(node.datadir, TENANT, TIMELINE)
      const decoded = decodeControlFile(new Uint8Array(fs.readFileSync(path.join(timelineDir, "safekeeper.control"))))
      expect(Result.isSuccess(decoded)).toBe(true)
      if (Result.isSuccess(decoded)) {
        // backup_lsn stays at the timeline's start: nothing was backed up.
        expect(decoded.success.backupLsn).toBeLessThan(2 * SEGMENT_BYTES)
        expect(decoded.success.partialBackup.segments.filter((s) => s.status === "Uploaded")).toEqual([])
        expect(decoded.success.commitLsn).toBeGreaterThan(3 * SEGMENT_BYTES)
      }
      // Every segment written is still on local disk.
      const segments = fs.readdirSync(timelineDir).filter((name) => /^[0-9A-F]{24}(\.partial)?$/.test(name))
      expect(segments.length).toBeGreaterThanOrEqual(3)
    }
    expect(uploadFailures).toBeGreaterThan(0)
    expect(brokerFailures).toBeGreaterThan(0)
  }, 180_000)
})
