// Goal: the etcd Broker keeps the contract of core/io/broker.ts against a real etcd: what one
// client publishes another's subscription hears (snapshot and watch), a malformed value is
// skipped with a log line, a publisher's keys expire by lease TTL after it goes away, and an
// etcd outage fails publishes and subscriptions with Unavailable until etcd is back. Method:
// the test starts /usr/bin/etcd itself on free loopback ports in a temporary data directory
// (scripts/install-etcd.sh installs it), stops it by pid, and restarts it on the same
// directory and ports; each test uses its own key prefix.
import { spawn, spawnSync, type ChildProcess } from "node:child_process"
import { existsSync, mkdtempSync, openSync, closeSync, rmSync } from "node:fs"
import * as http from "node:http"
import { tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { Etcd3 } from "etcd3"
import { Context, Effect, Exit, Fiber, Layer, Option, Scope, Stream } from "effect"
import { afterAll, beforeAll, describe, expect, test } from "vitest"
import { Broker, BrokerError, brokerKey, type SafekeeperTimelineInfo } from "../core/io/broker.js"
import { makeLiveLog } from "./log.js"
import { Log } from "../core/io/log.js"
import { etcdBrokerLayer, type EtcdBrokerOptions } from "./broker-etcd.js"
import { freeLoopbackPort } from "./testing/postgres.js"

const ETCD = "/usr/bin/etcd"
const STARTUP_TIMEOUT_MS = 30_000
const SHUTDOWN_TIMEOUT_MS = 10_000
const WAIT_MS_MAX = 20_000
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..")

interface RunningEtcd {
  readonly child: ChildProcess
  readonly exited: Promise<void>
}

let baseDir = ""
let clientPort = 0
let peerPort = 0
let etcd: RunningEtcd | undefined
const endpoint = (): string => `127.0.0.1:${clientPort}`

async function startEtcd(): Promise<RunningEtcd> {
  const clientUrl = `http://127.0.0.1:${clientPort}`
  const peerUrl = `http://127.0.0.1:${peerPort}`
  const logFd = openSync(join(baseDir, "etcd.log"), "a")
  const child = spawn(ETCD, [
    "--name", "sk-test",
    "--data-dir", join(baseDir, "data"),
    "--listen-client-urls", clientUrl,
    "--advertise-client-urls", clientUrl,
    "--listen-peer-urls", peerUrl,
    "--initial-advertise-peer-urls", peerUrl,
    "--initial-cluster", `sk-test=${peerUrl}`,
    "--initial-cluster-state", "new"
  ], { stdio: ["ignore", logFd, logFd] })
  closeSync(logFd)
  const exited = new Promise<void>((resolveExit) => child.once("exit", () => resolveExit()))
  const deadline = performance.now() + STARTUP_TIMEOUT_MS
  while (!(await healthy(clientUrl))) {
    if (child.exitCode !== null) throw new Error(`etcd exited with ${child.exitCode}; see ${join(baseDir, "etcd.log")}`)
    if (performance.now() > deadline) throw new Error(`etcd not healthy within ${STARTUP_TIMEOUT_MS} ms`)
    await sleep(100)
  }
  return { child, exited }
}

async function stopEtcd(running: RunningEtcd): Promise<void> {
  const pid = running.child.pid
  if (pid === undefined || running.child.exitCode !== null) return
  process.kill(pid, "SIGTERM")
  const killer = setTimeout(() => process.kill(pid, "SIGKILL"), SHUTDOWN_TIMEOUT_MS)
  await running.exited
  clearTimeout(killer)
}

const healthy = (clientUrl: string) =>
  new Promise<boolean>((resolveHealth) => {
    const request = http.get(`${clientUrl}/health`, { timeout: 1_000 }, (response) => {
      let body = ""
      response.setEncoding("utf8")
      response.on("data", (text: string) => void (body += text))
      response.on("end", () => resolveHealth(response.statusCode === 200 && body.includes("true")))
    })
    request.on("timeout", () => request.destroy())
    request.on("error", () => resolveHealth(false))
  })

const sleep = (ms: number) => new Promise<void>((resolveSleep) => setTimeout(resolveSleep, ms))

beforeAll(async () => {
  if (!existsSync(ETCD)) {
    const result = spawnSync("bash", [join(repoRoot, "scripts/install-etcd.sh")], { stdio: "inherit" })
    if (result.status !== 0) throw new Error(`scripts/install-etcd.sh failed (exit ${result.status ?? result.signal})`)
  }
  baseDir = mkdtempSync(join(tmpdir(), "sk-etcd-"))
  clientPort = await freeLoopbackPort()
  peerPort = await freeLoopbackPort()
  etcd = await startEtcd()
})

afterAll(async () => {
  if (etcd !== undefined) await stopEtcd(etcd)
  if (baseDir !== "") rmSync(baseDir, { recursive: true, force: true })
})

const logLines: string[] = []
const logLayer = Layer.succeed(Log, makeLiveLog({ output: { write: (line: string) => logLines.push(line) } }))

const run = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>): Promise<A> => Effect.runPromise(Effect.scoped(effect))

const client = (options: EtcdBrokerOptions) =>
  Effect.map(Layer.build(etcdBrokerLayer([endpoint()], { callTimeoutMs: 1_000, ...options }).pipe(Layer.provide(logLayer))), (context) => Context.get(context, Broker))

const info = (safekeeperId: number, commitLsn = 0x1_6b37_8d40): SafekeeperTimelineInfo => ({
  safekeeperId,
  tenantId: "de200bd42b49cc1814412c7e592dd6e9",
  timelineId: "b1d5c8f5b5a4d1d3c3f8e6a2e0d6f4a1",
  term: 3,
  lastLogTerm: 3,
  flushLsn: commitLsn,
  commitLsn,
  backupLsn: 0,
  remoteConsistentLsn: 0,
  peerHorizonLsn: 0,
  localStartLsn: 0x1_0000_0028,
  standbyHorizon: 0,
  safekeeperConnstr: `127.0.0.1:${5454 + safekeeperId}`,
  httpConnstr: "",
  availabilityZone: "az-1"
})

const collect = (broker: Broker["Service"]) =>
  Effect.gen(function*() {
    const seen: SafekeeperTimelineInfo[] = []
    const fiber = yield* Effect.forkScoped(Stream.runForEach(broker.subscribe, (item) => Effect.sync(() => void seen.push(item))))
    return { seen, fiber }
  })

const waitFor = (what: string, condition: () => boolean | Promise<boolean>) =>
  Effect.gen(function*() {
    for (let waitedMs = 0; !(yield* Effect.promise(async () => condition())); waitedMs += 50) {
      if (waitedMs > WAIT_MS_MAX) return yield* Effect.die(new Error(`timed out waiting for ${what}`))
      yield* Effect.sleep("50 millis")
    }
  })

/** A plain etcd3 client for looking behind the Broker's back. */
const raw = Effect.acquireRelease(
  Effect.sync(() => new Etcd3({ hosts: `http://${endpoint()}` })),
  (etcd3) => Effect.sync(() => etcd3.close())
)

function unavailable<A, E>(exit: Exit.Exit<A, E>): boolean {
  if (!Exit.isFailure(exit)) return false
  const error = Exit.findErrorOption(exit)
  return Option.isSome(error) && error.value instanceof BrokerError && error.value.reason === "Unavailable"
}

describe("etcd broker", () => {
  test("one client's publishes reach another's subscription; malformed values are skipped with a log line", () =>
    run(Effect.gen(function*() {
      const prefix = "t1"
      const a = yield* client({ prefix })
      const b = yield* client({ prefix })
      yield* a.publish(info(1))
      const { seen, fiber } = yield* collect(b)
      yield* waitFor("b hears the snapshot", () => seen.length >= 1)
      expect(seen[0]).toEqual(info(1))
      // Garbage under the prefix (another program, an old version) is skipped, not fatal.
      const etcd3 = yield* raw
      yield* Effect.promise(() => etcd3.put(`${prefix}/garbage`).value("{not json").exec())
      yield* Effect.promise(() => etcd3.put(`${prefix}/elsewhere`).value(JSON.stringify(info(7))).exec())
      yield* a.publish(info(2))
      yield* a.publish(info(1, 0x1_6b37_9000))
      yield* waitFor("b hears the watch", () => seen.length >= 3)
      expect(seen.slice(1)).toEqual([info(2), info(1, 0x1_6b37_9000)])
      expect(logLines.filter((line) => line.includes("malformed")).length).toBeGreaterThanOrEqual(2)
      expect(fiber.pollUnsafe()).toBeUndefined()
      // A subscriber that comes later learns the newest value of each key.
      const c = yield* client({ prefix })
      const first = yield* Stream.runCollect(Stream.take(c.subscribe, 2))
      expect([...first].sort((x, y) => x.safekeeperId - y.safekeeperId)).toEqual([info(1, 0x1_6b37_9000), info(2)])
    })))

  test("a publisher's keys expire by lease TTL once its client is closed", () =>
    run(Effect.gen(function*() {
      const prefix = "t2"
      const key = `${prefix}/${brokerKey(info(3))}`
      const etcd3 = yield* raw
      const publisherScope = yield* Scope.make()
      const a = yield* Scope.provide(publisherScope)(client({ prefix, leaseTtlSeconds: 2 }))
      yield* a.publish(info(3))
      // The lease is kept alive: the key outlives its TTL while the client lives.
      yield* Effect.sleep("3 seconds")
      expect(yield* Effect.promise(() => etcd3.get(key).string())).not.toBeNull()
      yield* Scope.close(publisherScope, Exit.void)
      const closedAt = performance.now()
      // Not revoked on close: still there at once, gone within the TTL (plus etcd's slack).
      expect(yield* Effect.promise(() => etcd3.get(key).string())).not.toBeNull()
      yield* waitFor("the key expires", async () => (await etcd3.get(key).string()) === null)
      expect(performance.now() - closedAt).toBeLessThan(8_000)
      const b = yield* client({ prefix })
      const seen = yield* collect(b)
      yield* Effect.sleep("500 millis")
      expect(seen.seen).toEqual([])
    })))

  test("a lease etcd no longer has is granted again on the next publish", () =>
    run(Effect.gen(function*() {
      // etcd renews leases when it restarts, so an outage alone may not lose one; revoking it
      // behind the client's back does what a lease expiring during a long partition does.
      const prefix = "t4"
      const key = `${prefix}/${brokerKey(info(6))}`
      const etcd3 = yield* raw
      const a = yield* client({ prefix, leaseTtlSeconds: 2 })
      yield* a.publish(info(6))
      const leaseOf = () => Effect.promise(async () => (await etcd3.get(key).exec()).kvs[0]?.lease ?? "none")
      const first = yield* leaseOf()
      expect(first).not.toBe("none")
      yield* Effect.promise(() => etcd3.leaseClient.leaseRevoke({ ID: first }))
      expect(yield* Effect.promise(() => etcd3.get(key).string())).toBeNull()
      // The first publish after the revocation may still try the dead lease; later ones must not.
      yield* waitFor("a publish succeeds under a new lease", async () =>
        Exit.isSuccess(await Effect.runPromiseExit(a.publish(info(6, 1)))) && (await etcd3.get(key).string()) !== null
      )
      const second = yield* leaseOf()
      expect(second).not.toBe(first)
      // And the new lease is kept alive past its TTL.
      yield* Effect.sleep("3 seconds")
      expect(yield* leaseOf()).toBe(second)
    })))

  test("etcd stopped: publish and subscribe fail with Unavailable; restarted: both work again", () =>
    run(Effect.gen(function*() {
      const prefix = "t3"
      const a = yield* client({ prefix, leaseTtlSeconds: 2 })
      const b = yield* client({ prefix })
      yield* a.publish(info(4))
      const live = yield* collect(b)
      yield* waitFor("b hears the info", () => live.seen.length >= 1)

      const running = etcd
      if (running === undefined) return yield* Effect.die(new Error("etcd is not running"))
      yield* Effect.promise(() => stopEtcd(running))
      etcd = undefined
      const ended = yield* Fiber.await(live.fiber).pipe(Effect.timeout("10 seconds"))
      expect(unavailable(ended)).toBe(true)
      expect(unavailable(yield* Effect.exit(a.publish(info(4, 1))))).toBe(true)
      expect(unavailable(yield* Effect.exit(Stream.runDrain(b.subscribe)).pipe(Effect.timeout("10 seconds")))).toBe(true)
      // Down longer than the lease's TTL: the lease is lost and must be granted again.
      yield* Effect.sleep("5 seconds")

      etcd = yield* Effect.promise(() => startEtcd())
      // The client's circuit breaker may hold calls back a few seconds after the failures.
      yield* waitFor("a publish succeeds again", async () => Exit.isSuccess(await Effect.runPromiseExit(a.publish(info(4, 2)))))
      const again = yield* collect(b)
      yield* waitFor("a new subscription hears the info", () => again.seen.some((item) => item.commitLsn === 2))
      yield* a.publish(info(5, 3))
      yield* waitFor("and the watch works", () => again.seen.some((item) => item.safekeeperId === 5))
      // The republished key lives under a fresh lease that is kept alive.
      yield* Effect.sleep("3 seconds")
      const etcd3 = yield* raw
      expect(yield* Effect.promise(() => etcd3.get(`${prefix}/${brokerKey(info(5))}`).string())).not.toBeNull()
    })))
})
