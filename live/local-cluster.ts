import { type ChildProcess, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

/**
 * A local cluster of safekeeper processes on loopback (`sk local`, tests, benchmarks): each
 * safekeeper is a separate `sk safekeeper` process on a free port with its own data directory,
 * started and stopped by process id. Killing one with SIGKILL is a real kill -9.
 */
/** bin/sk.js, found upward from this module: it runs from dist/live/ and, under vitest, from live/. */
export const SK_BIN = findUpward(path.dirname(fileURLToPath(import.meta.url)), path.join("bin", "sk.js"))
export const READY_TIMEOUT_MS = 20_000

export interface SafekeeperProcess {
  readonly id: number
  readonly datadir: string
  readonly pgAddress: string
  readonly httpAddress: string
  child: ChildProcess | undefined
  readonly logPath: string
}

export interface LocalClusterOptions {
  readonly safekeeperCount: number
  /** Where data directories and logs go; a new temp dir when absent. */
  readonly directory?: string
  readonly noSync?: boolean
  /** Starts `sk broker` (the embedded broker) first and points every safekeeper at it. */
  readonly embeddedBroker?: boolean
  /** Further flags for every `sk safekeeper` (e.g. --remote-storage, --enable-offload). */
  readonly safekeeperArgs?: ReadonlyArray<string>
}

export class LocalCluster {
  readonly directory: string
  readonly safekeepers: SafekeeperProcess[] = []
  private readonly noSync: boolean
  private readonly extraArgs: string[]
  /** The embedded broker's process and http:// endpoint, when started. */
  broker: { child: ChildProcess | undefined; readonly endpoint: string; readonly logPath: string } | undefined

  private constructor(directory: string, options: LocalClusterOptions) {
    this.directory = directory
    this.noSync = options.noSync === true
    this.extraArgs = [...(options.safekeeperArgs ?? [])]
  }

  static async start(options: LocalClusterOptions): Promise<LocalCluster> {
    const directory = options.directory ?? fs.mkdtempSync(path.join(os.tmpdir(), "sk-local-"))
    fs.mkdirSync(directory, { recursive: true })
    const cluster = new LocalCluster(directory, options)
    try {
      if (options.embeddedBroker === true) await cluster.startBroker(await freePort())
      for (let id = 1; id <= options.safekeeperCount; id++) {
        const pgPort = await freePort()
        const httpPort = await freePort()
        cluster.safekeepers.push({
          id,
          datadir: path.join(directory, `sk${id}`),
          pgAddress: `127.0.0.1:${pgPort}`,
          httpAddress: `127.0.0.1:${httpPort}`,
          child: undefined,
          logPath: path.join(directory, `sk${id}.log`)
        })
      }
      await Promise.all(cluster.safekeepers.map((sk) => cluster.startSafekeeper(sk.id)))
      return cluster
    } catch (error) {
      await cluster.stop()
      throw error
    }
  }

  get pgAddresses(): string {
    return this.safekeepers.map((sk) => sk.pgAddress).join(",")
  }

  safekeeper(id: number): SafekeeperProcess {
    const sk = this.safekeepers.find((s) => s.id === id)
    if (sk === undefined) throw new Error(`no safekeeper ${id}`)
    return sk
  }

  /** Starts (or restarts) one safekeeper and waits until its HTTP status answers. */
  async startSafekeeper(id: number): Promise<void> {
    const sk = this.safekeeper(id)
    if (sk.child !== undefined && sk.child.exitCode === null && sk.child.signalCode === null) return
    const log = fs.openSync(sk.logPath, "a")
    const args = [SK_BIN, "safekeeper", "--id", String(id), "-D", sk.datadir, "--listen-pg", sk.pgAddress, "--listen-http", sk.httpAddress]
    if (this.noSync) args.push("--no-sync")
    if (this.broker !== undefined) args.push("--broker-endpoint", this.broker.endpoint)
    args.push(...this.extraArgs)
    sk.child = spawn(process.execPath, args, { stdio: ["ignore", log, log] })
    fs.closeSync(log)
    await waitForStatus(sk, READY_TIMEOUT_MS)
  }

  /** `sk broker` on 127.0.0.1:port, waited for until it answers. */
  private async startBroker(port: number): Promise<void> {
    const logPath = path.join(this.directory, "broker.log")
    const log = fs.openSync(logPath, "a")
    const child = spawn(process.execPath, [SK_BIN, "broker", "--listen", `127.0.0.1:${port}`], { stdio: ["ignore", log, log] })
    fs.closeSync(log)
    this.broker = { child, endpoint: `http://127.0.0.1:${port}`, logPath }
    const deadline = Date.now() + READY_TIMEOUT_MS
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`sk broker exited during start; see ${logPath}:\n${tail(logPath)}`)
      try {
        if ((await fetch(`${this.broker.endpoint}/v1/status`)).ok) return
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`sk broker did not answer within ${READY_TIMEOUT_MS} ms; see ${logPath}`)
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }

  /** kill -9 of one safekeeper process. */
  async kill(id: number): Promise<void> {
    await stopChild(this.safekeeper(id), "SIGKILL")
  }

  /** Stops every process by its pid (SIGTERM, then SIGKILL after a grace period). */
  async stop(): Promise<void> {
    await Promise.all(this.safekeepers.map((sk) => stopChild(sk, "SIGTERM")))
    if (this.broker !== undefined) await stopChild(this.broker, "SIGTERM")
  }
}

async function stopChild(sk: { child: ChildProcess | undefined }, signal: NodeJS.Signals): Promise<void> {
  const child = sk.child
  sk.child = undefined
  if (child === undefined || child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
  child.kill(signal)
  const timer = setTimeout(() => child.kill("SIGKILL"), 5_000)
  await exited
  clearTimeout(timer)
}

async function waitForStatus(sk: SafekeeperProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    const child = sk.child
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`safekeeper ${sk.id} exited during start; see ${sk.logPath}:\n${tail(sk.logPath)}`)
    }
    try {
      const response = await fetch(`http://${sk.httpAddress}/v1/status`)
      if (response.ok) return
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  throw new Error(`safekeeper ${sk.id} did not answer /v1/status within ${timeoutMs} ms; see ${sk.logPath}`)
}

/** A port the OS says is free right now (bound on 127.0.0.1 and released). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() => resolve(port))
    })
  })
}

function tail(file: string): string {
  try {
    return fs.readFileSync(file, "utf8").split("\n").slice(-20).join("\n")
  } catch {
    return ""
  }
}

function findUpward(start: string, relative: string): string {
  for (let directory = start; ; directory = path.dirname(directory)) {
    const candidate = path.join(directory, relative)
    if (fs.existsSync(candidate)) return candidate
    if (path.dirname(directory) === directory) throw new Error(`${relative} not found above ${start}`)
  }
}
