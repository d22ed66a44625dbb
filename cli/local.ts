import { spawn } from "node:child_process"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { Command } from "commander"
import { LocalCluster, SK_BIN } from "../live/local-cluster.js"
import { parsePositiveInteger } from "./options.js"
import { parseByteCount, parseSeconds } from "./proposer.js"

/**
 * `sk local`: a whole cluster on this machine: N `sk safekeeper` processes on free loopback
 * ports, each with its own data directory, and one `sk proposer` streaming synthetic WAL to
 * them, showing commits; after the duration (or Ctrl-C) everything is stopped by process id.
 */
export const LOCAL_TENANT_ID = "5c0ca1c0ffee5c0ca1c0ffee5c0ca1c0"
export const LOCAL_TIMELINE_ID = "0000000000000000000000000000000a"

export function registerLocalCommand(program: Command): void {
  program
    .command("local")
    .description("start a local cluster of safekeepers plus a synthetic proposer and show WAL committing")
    .option("--safekeepers <n>", "how many safekeeper processes", parsePositiveInteger, 3)
    .option("--duration <seconds>", "how long to run (e.g. 30 or 30s)", parseSeconds, 30)
    .option("--rate <bytes-per-sec>", "synthetic WAL rate (K/M/G suffixes; 0 = as fast as possible)", parseByteCount, 4 * 1024 * 1024)
    .option("--dir <dir>", "where data directories and logs go (default: a new temp dir)")
    .action(async (options: { safekeepers: number; duration: number; rate: number; dir?: string }) => {
      process.exitCode = await runLocal(options)
    })
}

async function runLocal(options: { safekeepers: number; duration: number; rate: number; dir?: string }): Promise<number> {
  // Embedded defaults: the broker as its own process, object storage in a local directory.
  const directory = options.dir ?? mkdtempSync(join(tmpdir(), "sk-local-"))
  const remote = join(directory, "remote")
  const cluster = await LocalCluster.start({
    safekeeperCount: options.safekeepers,
    directory,
    embeddedBroker: true,
    safekeeperArgs: ["--remote-storage", remote, "--partial-backup-timeout", "10s"]
  })
  process.stdout.write(`sk local: ${options.safekeepers} safekeepers in ${cluster.directory}\n`)
  process.stdout.write(`  broker: ${cluster.broker?.endpoint} (pid ${cluster.broker?.child?.pid}); WAL backup to ${remote}\n`)
  for (const sk of cluster.safekeepers) process.stdout.write(`  sk${sk.id}: pg ${sk.pgAddress}, http ${sk.httpAddress}, pid ${sk.child?.pid}, log ${sk.logPath}\n`)
  const proposer = spawn(process.execPath, [
    SK_BIN, "proposer",
    "--safekeepers", cluster.pgAddresses,
    "--tenant-id", LOCAL_TENANT_ID,
    "--timeline-id", LOCAL_TIMELINE_ID,
    "--synthetic-wal", String(options.rate)
  ], { stdio: ["ignore", "inherit", "ignore"] })
  process.stdout.write(`  proposer: pid ${proposer.pid}, tenant ${LOCAL_TENANT_ID}, timeline ${LOCAL_TIMELINE_ID}\n`)
  const exited = new Promise<number>((resolve) => proposer.once("exit", (code) => resolve(code ?? 0)))
  let stopping = false
  const stop = () => {
    if (stopping) return
    stopping = true
    proposer.kill("SIGTERM")
  }
  const timer = setTimeout(stop, options.duration * 1000)
  process.once("SIGINT", stop)
  process.once("SIGTERM", stop)
  const code = await exited
  clearTimeout(timer)
  await cluster.stop()
  process.stdout.write(`sk local: stopped (proposer exit ${code}); data kept in ${cluster.directory}\n`)
  return stopping ? 0 : code
}
