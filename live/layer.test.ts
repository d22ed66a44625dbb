// Goal: one layer gives a program everything the live world provides. Method: a program that
// uses Disk, Net and Log together (write a file, send its bytes over loopback, log the size)
// runs with only `liveLayer` provided, and its effects are checked on the real machine.
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Effect } from "effect"
import { expect, test } from "vitest"
import { Disk } from "../core/io/disk.js"
import { logInfo } from "../core/io/log.js"
import { Net } from "../core/io/net.js"
import { liveLayer } from "./layer.js"

test("liveLayer provides Disk, Net and Log", async () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "sk-live-layer-"))
  const lines: string[] = []
  try {
    const program = Effect.gen(function* () {
      const disk = yield* Disk
      const network = yield* Net
      const file = yield* disk.open(`${root}/f`, { create: true, exclusive: true })
      yield* file.write(0, Buffer.from("through the layer"))
      yield* file.datasync
      yield* file.close
      yield* disk.syncDirectory(root)
      const listener = yield* network.listen("127.0.0.1:0")
      const client = yield* network.connect(listener.address)
      const server = yield* listener.accept
      yield* client.write(yield* disk.readFile(`${root}/f`))
      yield* client.shutdownWrite
      let received = ""
      for (let chunk = yield* server.read; chunk !== undefined; chunk = yield* server.read) received += Buffer.from(chunk).toString()
      yield* logInfo("received", { bytes: received.length })
      for (const closeable of [client, server, listener]) yield* closeable.close
      return received
    })
    const received = await Effect.runPromise(Effect.provide(program, liveLayer({
      disk: { noSync: false },
      net: { connectTimeoutMs: 5_000 },
      log: { output: { write: (line: string) => lines.push(line) }, levelMin: "debug" }
    })))
    expect(received).toBe("through the layer")
    expect(lines.map((line) => JSON.parse(line))).toMatchObject([{ level: "info", msg: "received", bytes: 17 }])
  } finally {
    fs.rmSync(root, { recursive: true, force: true })
  }
})
