import { Deferred, Effect, Option, Result, Schema } from "effect"
import type { NodeId } from "../acceptor/state.js"
import { Disk, type DiskError, joinPath, parentPath } from "../io/disk.js"
import { type Log, logError, logInfo, logWarn } from "../io/log.js"
import { Net, type NetError } from "../io/net.js"
import { RemoteStorage } from "../io/remote-storage.js"
import { runBackground } from "../timeline/background.js"
import type { BackgroundConfig } from "../timeline/manager.js"
import { isIoFailure, NODE_ID_FILE_NAME, TimelineRegistry } from "../timeline/registry.js"
import type { AuthConfig } from "./auth.js"
import { describeError, handleConnection } from "./connection.js"

/**
 * A safekeeper node: its data directory, its timelines and its Postgres-protocol listener
 * (reference §1, §2). The same program runs on real sockets and disks (`sk safekeeper`) and in
 * the simulator; only the Disk, Net, Log and Clock services differ. Each connection runs in
 * its own fiber; a bad connection ends only itself.
 */
export interface SafekeeperConfig {
  readonly nodeId: NodeId
  readonly datadir: string
  /** host:port to listen on for the Postgres protocol. */
  readonly listenPg: string
  /** `--no-sync`: skip fsyncs (tests and benchmarks only). */
  readonly noSync: boolean
  /** Connections served at once; more wait in the listener's accept queue. */
  readonly connectionCountMax?: number
  /**
   * Timeline managers and the broker agent (backup, removal, partial backup, peer recovery);
   * undefined: none run (WAL stays on local disk, nothing is published).
   */
  readonly background?: BackgroundConfig
  /** host:port of the HTTP management API (served through the HttpServer service); undefined: none. */
  readonly listenHttp?: string
  /** host:port of the tenant-only pg listener (`--listen-pg-tenant-only`): tenant tokens only. */
  readonly listenPgTenantOnly?: string
  /** Token verifiers per port and the token for calls to peers; undefined: every port trusts. */
  readonly auth?: AuthConfig
  /** Restore timelines from peers after a disk loss before serving them; undefined: never. */
  readonly restore?: RestoreConfig
}

export interface RestoreConfig {
  /** The peers' HTTP addresses (host:port) asked which timelines this node is a member of. */
  readonly peers: ReadonlyArray<string>
  /** `--restore-from-peers`: restore even if some timelines are present (else only with none). */
  readonly always: boolean
}

export const CONNECTION_COUNT_MAX_DEFAULT = 1000

export class SafekeeperStartError extends Schema.TaggedError<SafekeeperStartError>()("SafekeeperStartError", {
  message: Schema.String
}) {}

/** A durable step failed: the safekeeper stopped (fail-stop) and must be restarted. */
export class SafekeeperFatalError extends Schema.TaggedError<SafekeeperFatalError>()("SafekeeperFatalError", {
  message: Schema.String
}) {}

export interface RunningSafekeeper {
  readonly registry: TimelineRegistry
  readonly address: string
}

/**
 * Starts the node (node id file, timelines, listener) and serves until interrupted; closing
 * the scope closes the listener and interrupts connections, whose durable steps run to their end.
 */
export const runSafekeeper = <E = never, R = never>(
  config: SafekeeperConfig,
  /** Runs once timelines are loaded and the listener is bound (e.g. starts the HTTP status, so it never says "up" early). */
  onReady?: (running: RunningSafekeeper) => Effect.Effect<void, E, R>
) =>
  Effect.gen(function* () {
    yield* checkNodeId(config)
    const remote = yield* Effect.serviceOption(RemoteStorage)
    const registry = yield* TimelineRegistry.load({
      datadir: config.datadir,
      nodeId: config.nodeId,
      noSync: config.noSync,
      ...(Option.isSome(remote) ? { remote: remote.value } : {})
    }).pipe(
      Effect.catchIf(isIoFailure, (error) => Effect.fail(new SafekeeperFatalError({ message: `loading timelines: ${describeError(error)}` })))
    )
    const net = yield* Net
    const listener = yield* Effect.acquireRelease(net.listen(config.listenPg), (l) => l.close)
    yield* logInfo("safekeeper listening", { id: config.nodeId, listen_pg: listener.address, timelines: registry.list().length })
    if (onReady !== undefined) yield* onReady({ registry, address: listener.address })
    let active = 0
    let nextConnectionId = 1
    const connectionCountMax = config.connectionCountMax ?? CONNECTION_COUNT_MAX_DEFAULT
    // Fail-stop on a durable-step failure: the node exits and is restarted from what its disk kept.
    const fatalError = yield* Deferred.make<never, SafekeeperFatalError>()
    const fatal = (reason: string) =>
      Effect.asVoid(Effect.andThen(logError("fatal disk failure: stopping the safekeeper", { reason }), Deferred.fail(fatalError, new SafekeeperFatalError({ message: reason }))))
    if (config.background !== undefined) yield* Effect.forkScoped(runBackground(registry, config.background, fatal))
    const serve = Effect.forever(Effect.gen(function* () {
      const connection = yield* listener.accept
      const connectionId = nextConnectionId++
      if (active >= connectionCountMax) {
        yield* logWarn("connection refused: too many connections", { connection: connectionId, active })
        yield* connection.close
        return
      }
      active++
      yield* Effect.forkChild(
        handleConnection(connection, { registry, nodeId: config.nodeId, connectionId, fatal }).pipe(
          Effect.ensuring(Effect.andThen(connection.close, Effect.sync(() => active--)))
        )
      )
    }))
    return yield* Effect.raceFirst(serve, Deferred.await(fatalError))
  })

/** `safekeeper.id` is written once from --id and must match it afterwards (Neon refuses a mismatch). */
const checkNodeId = (config: SafekeeperConfig): Effect.Effect<void, DiskError | SafekeeperStartError, Disk> =>
  Effect.gen(function* () {
    const disk = yield* Disk
    yield* disk.mkdir(config.datadir)
    // A data directory we just created must survive a crash with everything in it.
    if (!config.noSync) yield* disk.syncDirectory(parentPath(config.datadir))
    const path = joinPath(config.datadir, NODE_ID_FILE_NAME)
    const existing = yield* Effect.result(disk.readFile(path))
    if (Result.isSuccess(existing)) {
      const text = new TextDecoder().decode(existing.success).trim()
      if (text !== String(config.nodeId)) {
        return yield* new SafekeeperStartError({ message: `${path} says node id ${JSON.stringify(text)}, but --id is ${config.nodeId}` })
      }
      return
    }
    if (existing.failure.reason !== "NotFound") return yield* existing.failure
    const temp = `${path}.partial`
    const file = yield* disk.open(temp, { create: true })
    yield* Effect.ensuring(
      Effect.gen(function* () {
        yield* file.truncate(0)
        yield* file.write(0, new TextEncoder().encode(`${config.nodeId}\n`))
        if (!config.noSync) yield* file.sync
      }),
      file.close
    )
    yield* disk.rename(temp, path)
    if (!config.noSync) yield* disk.syncDirectory(config.datadir)
  })

export type SafekeeperFailure = DiskError | NetError | SafekeeperStartError
export type SafekeeperRequirements = Disk | Net | Log
