import { type Command, InvalidArgumentError } from "commander"
import { Effect } from "effect"
import { NodeId } from "../core/acceptor/state.js"
import { parseAddress } from "../core/io/net.js"
import { runSafekeeper } from "../core/server/safekeeper.js"
import { serveHttpStatus } from "../live/http-status.js"
import { liveLayer } from "../live/layer.js"
import { runMain } from "../live/process.js"
import { parsePositiveInteger } from "./options.js"

/**
 * `sk safekeeper`: one safekeeper on real sockets and disk. Flags follow Neon's
 * (reference §13); a flag given twice takes the last value, as there.
 */
export function registerSafekeeperCommand(program: Command): void {
  program
    .command("safekeeper")
    .description("run a safekeeper: WAL in from walproposers, out to Postgres replication clients")
    .requiredOption("--id <n>", "this safekeeper's node id (written to DATADIR/safekeeper.id once)", parsePositiveInteger)
    .requiredOption("-D, --datadir <dir>", "data directory: <tenant>/<timeline>/ with control file and WAL segments")
    .option("-l, --listen-pg <host:port>", "Postgres protocol listener", parseHostPort, "127.0.0.1:5454")
    .option("--listen-http <host:port>", "HTTP listener (GET /v1/status)", parseHostPort)
    .option("-n, --no-sync", "skip fsyncs (tests and benchmarks only: acknowledged WAL can be lost)")
    .action(async (options: { id: number; datadir: string; listenPg: string; listenHttp?: string; sync: boolean }) => {
      const nodeId = NodeId(options.id)
      const listenHttp = options.listenHttp
      const program = Effect.scoped(runSafekeeper(
        { nodeId, datadir: options.datadir, listenPg: options.listenPg, noSync: !options.sync },
        // /v1/status answers only once timelines are loaded and the pg port listens.
        () => (listenHttp === undefined ? Effect.void : Effect.asVoid(serveHttpStatus(listenHttp, nodeId)))
      ))
      process.exitCode = await runMain(program, liveLayer(), { name: "sk safekeeper" })
    })
}

export function parseHostPort(text: string): string {
  if (parseAddress(text) === undefined) throw new InvalidArgumentError(`expected host:port, got "${text}"`)
  return text
}
