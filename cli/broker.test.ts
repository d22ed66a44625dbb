// Goal: `sk broker` serves the embedded broker on --listen until SIGINT, then exits 0 with its
// port closed; a bad --listen is refused by the parser. Method: a Command with only this
// command registered (cli/main.ts registers it in the binary), a free loopback port, a broker
// client that waits for the listener, and SIGINT delivered as runMain hears it (process.emit:
// a real signal would go to the whole test worker).
import { Command, CommanderError } from "commander"
import { Context, Effect, Exit, Layer, Option, Stream } from "effect"
import { afterEach, describe, expect, test } from "vitest"
import { Broker, BrokerError, type SafekeeperTimelineInfo } from "../core/io/broker.js"
import { httpBrokerLayer } from "../live/broker-embedded.js"
import { freeLoopbackPort } from "../live/testing/postgres.js"
import { registerBrokerCommand } from "./broker.js"

const info: SafekeeperTimelineInfo = {
  safekeeperId: 2,
  tenantId: "t",
  timelineId: "l",
  term: 1,
  lastLogTerm: 1,
  flushLsn: 40,
  commitLsn: 40,
  backupLsn: 0,
  remoteConsistentLsn: 0,
  peerHorizonLsn: 0,
  localStartLsn: 40,
  standbyHorizon: 0,
  safekeeperConnstr: "127.0.0.1:5455",
  httpConnstr: "",
  availabilityZone: ""
}

const WAIT_MS_MAX = 10_000

function program(): Command {
  const command = new Command().name("sk").exitOverride().configureOutput({ writeErr: () => undefined, writeOut: () => undefined })
  registerBrokerCommand(command)
  return command
}

afterEach(() => {
  process.exitCode = undefined
})

describe("sk broker", () => {
  test("serves the embedded broker until SIGINT, then exits 0 and stops listening", async () => {
    const port = await freeLoopbackPort()
    const stderr: string[] = []
    const write = process.stderr.write.bind(process.stderr)
    // runMain and the log write to stderr: kept out of the test output and looked at.
    const capture = (chunk: string | Uint8Array): boolean => {
      stderr.push(typeof chunk === "string" ? chunk : Buffer.from(chunk).toString("utf8"))
      return true
    }
    process.stderr.write = capture as typeof process.stderr.write
    try {
      const running = program().parseAsync(["node", "sk", "broker", "--listen", `127.0.0.1:${port}`, "--ttl-ms", "60000"])
      const heard = await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
        const broker = Context.get(yield* Layer.build(httpBrokerLayer(`http://127.0.0.1:${port}`)), Broker)
        for (let waitedMs = 0; Exit.isFailure(yield* Effect.exit(broker.publish(info))); waitedMs += 20) {
          if (waitedMs > WAIT_MS_MAX) return yield* Effect.die(new Error("sk broker never listened"))
          yield* Effect.sleep("20 millis")
        }
        return yield* Stream.runHead(broker.subscribe)
      })))
      expect(heard).toEqual(Option.some(info))
      expect(stderr.join("")).toContain(`"endpoint":"http://127.0.0.1:${port}"`)

      process.emit("SIGINT", "SIGINT")
      await running
      expect(process.exitCode).toBe(0)
      const after = await Effect.runPromiseExit(Effect.scoped(Effect.flatMap(Layer.build(httpBrokerLayer(`http://127.0.0.1:${port}`)), (context) => Context.get(context, Broker).publish(info))))
      const error = Exit.findErrorOption(after)
      expect(Option.isSome(error) && error.value instanceof BrokerError && error.value.reason === "Unavailable").toBe(true)
    } finally {
      process.stderr.write = write
    }
  })

  test.each([["nohost"], ["127.0.0.1:99999"], ["127.0.0.1:"]])("--listen %s is refused", async (listen) => {
    const failure = await program().parseAsync(["node", "sk", "broker", "--listen", listen]).then(() => undefined, (error: unknown) => error)
    expect(failure).toBeInstanceOf(CommanderError)
    expect(failure instanceof CommanderError ? failure.message : "").toContain("expected host:port")
  })
})
