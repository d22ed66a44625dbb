import { type Command, InvalidArgumentError } from "commander"
import { Effect } from "effect"
import { logInfo } from "../core/io/log.js"
import { parseAddress } from "../core/io/net.js"
import { BROKER_LISTEN_DEFAULT } from "../live/broker-config.js"
import { serveEmbeddedBroker } from "../live/broker-embedded.js"
import { liveLogLayer } from "../live/log.js"
import { runMain } from "../live/process.js"
import { parsePositiveInteger } from "./options.js"

/**
 * `sk broker`: the embedded broker (live/broker-embedded.ts) as a process of its own, for
 * safekeepers started by hand with `--broker-endpoint http://<listen>`. It holds nothing
 * durable: restarted, it fills again within one publish interval. Runs until SIGINT/SIGTERM.
 */
export function registerBrokerCommand(program: Command): void {
  program
    .command("broker")
    .description("serve the embedded broker: safekeepers publish their timeline info and subscribe to each other's")
    .option("--listen <host:port>", "HTTP listener (POST /v1/publish, GET /v1/subscribe); port 0 picks a free one", parseListen, BROKER_LISTEN_DEFAULT)
    .option("--ttl-ms <ms>", "forget an info not republished within this long (etcd's lease TTL)", parsePositiveInteger)
    .action(async (options: { listen: string; ttlMs?: number }) => {
      const program = Effect.scoped(Effect.gen(function*() {
        const address = yield* serveEmbeddedBroker(options.listen, options.ttlMs === undefined ? {} : { ttlMs: options.ttlMs })
        yield* logInfo("broker listening", { address, endpoint: `http://${address}` })
        return yield* Effect.never
      }))
      process.exitCode = await runMain(program, liveLogLayer(), { name: "sk broker" })
    })
}

function parseListen(text: string): string {
  if (parseAddress(text) === undefined) throw new InvalidArgumentError(`expected host:port, got "${text}"`)
  return text
}
