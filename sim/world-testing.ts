import { Effect, Exit } from "effect"
import type { Disk } from "../core/io/disk.js"
import type { Log } from "../core/io/log.js"
import type { Net } from "../core/io/net.js"
import { NO_DISK_FAULTS, type DiskFaults } from "./disk.js"
import { DEFAULT_NET_FAULTS, type NetFaults } from "./net.js"
import { World } from "./world.js"

/**
 * Test support: a small simulated world of named nodes, each running one program, with no
 * injected faults unless asked. The `client` node's program is the test: the run stops when it
 * finishes and its exit is returned. Servers keep running until then.
 */
export interface TestWorldOptions<A, E> {
  readonly seed?: number
  readonly servers: Readonly<Record<string, Effect.Effect<unknown, unknown, Disk | Net | Log>>>
  readonly client: Effect.Effect<A, E, Disk | Net | Log>
  readonly untilUs?: number
  readonly diskFaults?: DiskFaults
  readonly netFaults?: NetFaults
  readonly recordTrace?: boolean
  /** Per-node clock drift bound (WorldOptions.clockDriftPpmMax); none by default. */
  readonly clockDriftPpmMax?: number
  /** A lower per-instant step budget makes a livelocking test fail sooner. */
  readonly stepsPerInstantMax?: number
}

export interface TestWorldResult<A, E> {
  readonly exit: Exit.Exit<A, E> | undefined
  readonly world: World
}

export const CLIENT_NODE = "client"

export function runTestWorld<A, E>(options: TestWorldOptions<A, E>): TestWorldResult<A, E> {
  let exit: Exit.Exit<A, E> | undefined
  const servers = options.servers
  const world = new World({
    seed: options.seed ?? 1,
    nodes: [...Object.keys(servers), CLIENT_NODE],
    program: (node) => {
      if (node === CLIENT_NODE) {
        return Effect.exit(options.client).pipe(Effect.map((e) => {
          exit = e
        }))
      }
      return Effect.asVoid(servers[node]!)
    },
    diskFaults: options.diskFaults ?? NO_DISK_FAULTS,
    netFaults: options.netFaults ?? DEFAULT_NET_FAULTS,
    crashOnOperationProbability: 0,
    clockSkewUsMax: 0,
    restartDelayUs: [1_000_000_000, 1_000_000_000],
    recordTrace: options.recordTrace ?? false,
    traceHeader: [],
    ...(options.clockDriftPpmMax === undefined ? {} : { clockDriftPpmMax: options.clockDriftPpmMax }),
    ...(options.stepsPerInstantMax === undefined ? {} : { stepsPerInstantMax: options.stepsPerInstantMax })
  })
  world.faultsEnabled = false
  for (const node of Object.keys(servers)) world.start(node)
  world.start(CLIENT_NODE)
  const hits = world.run(options.untilUs ?? 600_000_000, { stop: () => exit !== undefined })
  world.dispose()
  if (hits.length > 0) throw new Error(`non-determinism in a test world: ${hits.map((h) => h.what).join(", ")}`)
  if (world.violations.length > 0) throw new Error(`violations: ${world.violations.map((v) => `${v.who}: ${v.message}`).join("; ")}`)
  return { exit, world }
}
