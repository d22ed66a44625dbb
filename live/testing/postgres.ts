import { execFile, spawn, spawnSync } from "node:child_process"
import { chownSync, closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"

/**
 * Throwaway PostgreSQL 15 clusters for tests (DESIGN.md §8): initdb into a temporary
 * directory, listen on 127.0.0.1 on a free port with the socket in that directory, run as the
 * `postgres` OS user when the tests run as root (Postgres refuses root), and stop by process
 * id. Nothing here is used outside tests.
 */

export const PG15_BIN_DIR = "/usr/lib/postgresql/15/bin"
export const pgBinary = (name: string): string => join(PG15_BIN_DIR, name)

const STARTUP_TIMEOUT_MS = 60_000
const SHUTDOWN_TIMEOUT_MS = 60_000
const POLL_INTERVAL_MS = 100
/** psql output we keep in memory; tests ask small questions. */
const PSQL_OUTPUT_BYTES_MAX = 64 * 1024 * 1024

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "../..")

/** Runs scripts/install-postgres.sh when PostgreSQL 15's binaries are missing. */
export function ensurePostgresInstalled(): void {
  if (existsSync(pgBinary("pg_waldump")) && existsSync(pgBinary("postgres")) && existsSync(pgBinary("initdb"))) return
  const result = spawnSync("bash", [join(repoRoot, "scripts/install-postgres.sh")], { stdio: "inherit" })
  if (result.status !== 0) throw new Error(`scripts/install-postgres.sh failed (exit ${result.status ?? result.signal})`)
}

const isRoot = (): boolean => typeof process.getuid === "function" && process.getuid() === 0

/** The command line that runs `binary` as the cluster's owner. */
function asOwner(binary: string, args: ReadonlyArray<string>): [string, string[]] {
  return isRoot() ? ["runuser", ["-u", "postgres", "--", binary, ...args]] : [binary, [...args]]
}

export async function freeLoopbackPort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      if (address === null || typeof address === "string") {
        server.close()
        reject(new Error("no port assigned"))
        return
      }
      server.close(() => resolvePort(address.port))
    })
  })
}

export interface PostgresOptions {
  /** postgresql.conf settings added after ours (values are written verbatim). */
  readonly settings?: Readonly<Record<string, string>>
  /** Extra initdb arguments, e.g. ["--wal-segsize=1"]. */
  readonly initdbArgs?: ReadonlyArray<string>
}

export interface PostgresCluster {
  readonly baseDir: string
  readonly dataDir: string
  readonly walDir: string
  readonly socketDir: string
  readonly port: number
  readonly logFile: string
  /** The postmaster's process id (from postmaster.pid). */
  readonly pid: number
  /** Runs one SQL statement through psql; returns unaligned, tuples-only output. */
  sql(query: string): Promise<string>
  /** Fast shutdown (SIGINT to the postmaster), waiting until it has exited. */
  stop(): Promise<void>
  /** Stops the cluster if running and deletes its directory. */
  destroy(): Promise<void>
}

export async function startPostgres(options: PostgresOptions = {}): Promise<PostgresCluster> {
  ensurePostgresInstalled()
  const baseDir = mkdtempSync(join(tmpdir(), "sk-pg-"))
  const dataDir = join(baseDir, "data")
  const logFile = join(baseDir, "postgres.log")
  if (isRoot()) {
    const owner = spawnSync("id", ["-u", "postgres"], { encoding: "utf8" })
    const group = spawnSync("id", ["-g", "postgres"], { encoding: "utf8" })
    if (owner.status !== 0 || group.status !== 0) throw new Error("running as root, but there is no postgres OS user")
    chownSync(baseDir, Number(owner.stdout.trim()), Number(group.stdout.trim()))
  }
  const [initdb, initdbArgs] = asOwner(pgBinary("initdb"), [
    "-D", dataDir, "-A", "trust", "-U", "postgres", "--no-sync", "--no-instructions", ...(options.initdbArgs ?? [])
  ])
  const init = spawnSync(initdb, initdbArgs, { encoding: "utf8" })
  if (init.status !== 0) throw new Error(`initdb failed: ${init.stderr}`)

  const port = await freeLoopbackPort()
  const settings: Record<string, string> = {
    listen_addresses: "'127.0.0.1'",
    port: String(port),
    unix_socket_directories: `'${baseDir}'`,
    fsync: "off",
    ...options.settings
  }
  const [postgres, postgresArgs] = asOwner(pgBinary("postgres"), [
    "-D", dataDir, ...Object.entries(settings).flatMap(([name, value]) => ["-c", `${name}=${value.replace(/^'(.*)'$/, "$1")}`])
  ])
  const logFd = openSync(logFile, "a")
  const child = spawn(postgres, postgresArgs, { stdio: ["ignore", logFd, logFd], detached: false })
  closeSync(logFd)
  let exited = false
  child.once("exit", () => {
    exited = true
  })

  const sql = (query: string): Promise<string> =>
    new Promise((resolveQuery, reject) => {
      execFile(pgBinary("psql"), ["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", baseDir, "-p", String(port), "-U", "postgres", "-d", "postgres", "-c", query], {
        encoding: "utf8",
        maxBuffer: PSQL_OUTPUT_BYTES_MAX
      }, (error, stdout, stderr) => {
        if (error !== null) reject(new Error(`psql failed: ${stderr || error.message}`))
        else resolveQuery(stdout.trim())
      })
    })

  const deadline = Date.now() + STARTUP_TIMEOUT_MS
  let pid: number | undefined
  // Polls until the server answers a query (bounded by STARTUP_TIMEOUT_MS).
  for (;;) {
    if (exited) throw new Error(`postgres exited during startup; log:\n${readFileSync(logFile, "utf8")}`)
    const pidFile = join(dataDir, "postmaster.pid")
    if (pid === undefined && existsSync(pidFile)) {
      const first = readFileSync(pidFile, "utf8").split("\n")[0]
      if (first !== undefined && /^\d+$/.test(first)) pid = Number(first)
    }
    if (pid !== undefined) {
      try {
        await sql("select 1")
        break
      } catch {
        // not ready yet
      }
    }
    if (Date.now() > deadline) {
      if (pid !== undefined) process.kill(pid, "SIGKILL")
      throw new Error(`postgres did not start within ${STARTUP_TIMEOUT_MS} ms; log:\n${readFileSync(logFile, "utf8")}`)
    }
    await sleep(POLL_INTERVAL_MS)
  }
  const postmasterPid = pid

  let stopped = false
  const stop = async (): Promise<void> => {
    if (stopped) return
    stopped = true
    if (!isAlive(postmasterPid)) return
    process.kill(postmasterPid, "SIGINT")
    const stopDeadline = Date.now() + SHUTDOWN_TIMEOUT_MS
    // Polls until the postmaster has gone (bounded by SHUTDOWN_TIMEOUT_MS).
    while (isAlive(postmasterPid)) {
      if (Date.now() > stopDeadline) {
        process.kill(postmasterPid, "SIGKILL")
        break
      }
      await sleep(POLL_INTERVAL_MS)
    }
    // The runuser wrapper (when root) exits with the postmaster.
    const childDeadline = Date.now() + SHUTDOWN_TIMEOUT_MS
    while (!exited && Date.now() < childDeadline) await sleep(POLL_INTERVAL_MS)
  }

  return {
    baseDir,
    dataDir,
    walDir: join(dataDir, "pg_wal"),
    socketDir: baseDir,
    port,
    logFile,
    pid: postmasterPid,
    sql,
    stop,
    destroy: async () => {
      await stop()
      rmSync(baseDir, { recursive: true, force: true })
    }
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

const sleep = (ms: number) => new Promise<void>((resolveSleep) => setTimeout(resolveSleep, ms))

export interface PgWaldumpResult {
  readonly status: number | null
  readonly stdout: string
  readonly stderr: string
}

/** Runs PostgreSQL 15's pg_waldump; output is bounded, so pass --stats or --quiet for big ranges. */
export function runPgWaldump(args: ReadonlyArray<string>): PgWaldumpResult {
  ensurePostgresInstalled()
  const result = spawnSync(pgBinary("pg_waldump"), [...args], { encoding: "utf8", maxBuffer: PSQL_OUTPUT_BYTES_MAX })
  if (result.error !== undefined) throw result.error
  return { status: result.status, stdout: result.stdout, stderr: result.stderr }
}

/**
 * Per-rmgr record counts, the total, and full-page-image bytes from `pg_waldump --stats`
 * output (rows: name, N (%), record size (%), FPI size (%), combined size (%)).
 */
export function parseWaldumpStats(stdout: string): {
  readonly total: number
  readonly rmgrs: Readonly<Record<string, number>>
  readonly fpiBytes: number
} {
  const rmgrs: Record<string, number> = {}
  let total: number | undefined
  let fpiBytes: number | undefined
  for (const line of stdout.split("\n")) {
    const columns = line.replace(/\([^)]*\)|\[[^\]]*\]/g, " ").trim().split(/\s+/)
    if (columns.length !== 5 || !columns.slice(1).every((column) => /^\d+$/.test(column))) continue
    const [name, count, , fpi] = columns as [string, string, string, string, string]
    if (name === "Total") {
      total = Number(count)
      fpiBytes = Number(fpi)
    } else if (Number(count) > 0) {
      rmgrs[name] = Number(count)
    }
  }
  if (total === undefined || fpiBytes === undefined) throw new Error(`no Total line in pg_waldump --stats output:\n${stdout}`)
  return { total, rmgrs, fpiBytes }
}
