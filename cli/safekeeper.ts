import { type Command, InvalidArgumentError, Option as CommanderOption } from "commander"
import { Effect, Layer, Result } from "effect"
import { NodeId } from "../core/acceptor/state.js"
import type { Broker, BrokerError } from "../core/io/broker.js"
import type { Log } from "../core/io/log.js"
import { parseAddress } from "../core/io/net.js"
import type { RemoteStorage } from "../core/io/remote-storage.js"
import { runSafekeeper } from "../core/server/safekeeper.js"
import { BACKGROUND_DEFAULTS, type BackgroundConfig } from "../core/timeline/manager.js"
import { BROKER_ENDPOINT_DEFAULT, brokerLayerOf, parseBrokerEndpoint } from "../live/broker-config.js"
import { serveHttpStatus } from "../live/http-status.js"
import { liveLayer } from "../live/layer.js"
import { runMain } from "../live/process.js"
import { remoteStorageLayerFromFlag } from "../live/remote-storage-config.js"
import { parseBytes, parseDurationUs, parsePositiveInteger } from "./options.js"

/**
 * `sk safekeeper`: one safekeeper on real sockets and disk. Flags follow Neon's
 * (reference §13); a flag given twice takes the last value, as there.
 */
interface SafekeeperOptions {
  id: number
  datadir: string
  listenPg: string
  listenHttp?: string
  advertisePg?: string
  availabilityZone: string
  sync: boolean
  remoteStorage?: string
  brokerEndpoint: string
  disableWalBackup: boolean
  maxOffloaderLag: number
  walBackupParallelJobs: number
  partialBackupTimeout: number
  enableOffload: boolean
  deleteOffloadedWal: boolean
  evictionMinResident: number
  controlFileSaveInterval: number
  peerRecovery: boolean
  heartbeatTimeout: number
  walsendersKeepHorizon: boolean
  disablePeriodicBrokerPush: boolean
}

export function registerSafekeeperCommand(program: Command): void {
  program
    .command("safekeeper")
    .description("run a safekeeper: WAL in from walproposers, out to Postgres replication clients, offloaded to object storage")
    .requiredOption("--id <n>", "this safekeeper's node id (written to DATADIR/safekeeper.id once)", parsePositiveInteger)
    .requiredOption("-D, --datadir <dir>", "data directory: <tenant>/<timeline>/ with control file and WAL segments")
    .option("-l, --listen-pg <host:port>", "Postgres protocol listener", parseHostPort, "127.0.0.1:5454")
    .option("--listen-http <host:port>", "HTTP listener (GET /v1/status)", parseHostPort)
    .option("--advertise-pg <host:port>", "the pg address peers are told (default: --listen-pg)", parseHostPort)
    .option("--availability-zone <az>", "published to the broker", "")
    .option("-n, --no-sync", "skip fsyncs (tests and benchmarks only: acknowledged WAL can be lost)")
    .option("--remote-storage <spec>", "object storage for WAL backup: a directory, s3://bucket/prefix?region=R&endpoint=URL, or Neon's TOML table")
    .option("--broker-endpoint <url>", "the broker: http://host:port (sk broker, sk local) or etcd://host:port[,host:port]", BROKER_ENDPOINT_DEFAULT)
    .option("--disable-wal-backup", "never upload WAL (even with --remote-storage)", false)
    .option("--max-offloader-lag <bytes>", "a safekeeper this far behind the highest commit_lsn is not elected offloader", parseBytes, BACKGROUND_DEFAULTS.maxOffloaderLagBytes)
    .option("--wal-backup-parallel-jobs <n>", "segment uploads in flight per timeline", parsePositiveInteger, BACKGROUND_DEFAULTS.walBackupParallelJobs)
    .option("--partial-backup-timeout <duration>", "how long the open segment waits before its partial upload", parseDurationUs, BACKGROUND_DEFAULTS.partialBackupTimeoutUs)
    .option("--enable-offload", "evict idle timelines whose WAL is all in object storage", false)
    .option("--delete-offloaded-wal", "with --enable-offload, delete the local partial segment too", false)
    .option("--eviction-min-resident <duration>", "a timeline stays resident at least a random part of this", parseDurationUs, BACKGROUND_DEFAULTS.evictionMinResidentUs)
    .option("--control-file-save-interval <duration>", "save moved in-memory positions at least this often", parseDurationUs, BACKGROUND_DEFAULTS.controlFileSaveIntervalUs)
    .addOption(new CommanderOption("--peer-recovery [bool]", "a lagging safekeeper with no compute pulls WAL from its most advanced peer").argParser(parseBoolean).default(false))
    .option("--heartbeat-timeout <duration>", "a peer not heard from this long is not an offloader candidate", parseDurationUs, BACKGROUND_DEFAULTS.heartbeatTimeoutUs)
    .option("--walsenders-keep-horizon", "lagging standbys and peers keep WAL from removal", false)
    .option("--disable-periodic-broker-push", "do not publish to the broker (peers then do not hear of this safekeeper)", false)
    .action(async (options: SafekeeperOptions) => {
      process.exitCode = await runSafekeeperCommand(options)
    })
}

async function runSafekeeperCommand(options: SafekeeperOptions): Promise<number> {
  const nodeId = NodeId(options.id)
  let remote: Layer.Layer<RemoteStorage> | undefined
  if (options.remoteStorage !== undefined) {
    const parsed = remoteStorageLayerFromFlag(options.remoteStorage)
    if (Result.isFailure(parsed)) return usage(`--remote-storage: ${parsed.failure.message}`)
    remote = parsed.success
  }
  let broker: Layer.Layer<Broker, BrokerError, Log> | undefined
  if (!options.disablePeriodicBrokerPush) {
    const parsed = parseBrokerEndpoint(options.brokerEndpoint)
    if (Result.isFailure(parsed)) return usage(`--broker-endpoint: ${parsed.failure.message}`)
    broker = brokerLayerOf(parsed.success)
  }
  if (options.deleteOffloadedWal && !options.enableOffload) return usage("--delete-offloaded-wal needs --enable-offload")
  const backupOn = remote !== undefined && !options.disableWalBackup
  const background: BackgroundConfig = {
    nodeId,
    walBackup: backupOn ? { parallelJobs: options.walBackupParallelJobs, maxOffloaderLagBytes: options.maxOffloaderLag } : undefined,
    partialBackup: backupOn ? { timeoutUs: options.partialBackupTimeout } : undefined,
    heartbeatTimeoutUs: options.heartbeatTimeout,
    controlFileSaveIntervalUs: options.controlFileSaveInterval,
    walsendersKeepHorizon: options.walsendersKeepHorizon,
    peerRecovery: options.peerRecovery,
    eviction: options.enableOffload && backupOn ? { deleteOffloadedWal: options.deleteOffloadedWal, minResidentUs: options.evictionMinResident } : undefined,
    safekeeperConnstr: options.advertisePg ?? options.listenPg,
    httpConnstr: options.listenHttp ?? "",
    availabilityZone: options.availabilityZone
  }
  const listenHttp = options.listenHttp
  const program = Effect.scoped(runSafekeeper(
    { nodeId, datadir: options.datadir, listenPg: options.listenPg, noSync: !options.sync, background },
    // /v1/status answers only once timelines are loaded and the pg port listens.
    () => (listenHttp === undefined ? Effect.void : Effect.asVoid(serveHttpStatus(listenHttp, nodeId)))
  ))
  // Remote storage and the broker are optional services: the background work looks them up.
  // The broker layer fails only for a malformed endpoint, which was parsed above.
  const live = liveLayer()
  const optional = Layer.mergeAll(remote ?? Layer.empty, broker === undefined ? Layer.empty : Layer.orDie(Layer.provide(broker, live)))
  return await runMain(program, Layer.merge(live, optional), { name: "sk safekeeper" })
}

function usage(message: string): number {
  process.stderr.write(`sk safekeeper: ${message}\n`)
  return 2
}

function parseBoolean(text: string | undefined): boolean {
  if (text === undefined || text === "true") return true
  if (text === "false") return false
  throw new InvalidArgumentError(`expected true or false, got "${text}"`)
}

export function parseHostPort(text: string): string {
  if (parseAddress(text) === undefined) throw new InvalidArgumentError(`expected host:port, got "${text}"`)
  return text
}
