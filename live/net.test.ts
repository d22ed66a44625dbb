// Goal: the live Net keeps the promises of core/io/net.ts on real loopback TCP: ordered bytes,
// EOF on half-close, backpressure to a peer that does not read, typed errors, and clean
// interruption. Method: every test listens on 127.0.0.1:0 and talks to itself through the
// service; the only waits on time are generous "not finished yet" checks.
import { spawn, type ChildProcess } from "node:child_process"
import { Effect, Exit, Fiber } from "effect"
import { afterEach, describe, expect, test } from "vitest"
import type { Connection } from "../core/io/net.js"
import { NetError } from "../core/io/net.js"
import { makeLiveNet } from "./net.js"

const network = makeLiveNet()
const run = <A, E>(effect: Effect.Effect<A, E>): Promise<A> => Effect.runPromise(effect)

/** A connected pair over loopback: `client` dialled, `server` accepted. */
const pair = Effect.gen(function* () {
  const listener = yield* network.listen("127.0.0.1:0")
  const client = yield* network.connect(listener.address)
  const server = yield* listener.accept
  yield* listener.close
  return { client, server }
})

/** Reads until EOF; fails past `bytesMax` so a broken stream cannot run the test out of memory. */
const readAll = (connection: Connection, bytesMax: number) =>
  Effect.gen(function* () {
    const chunks: Uint8Array[] = []
    let total = 0
    for (;;) {
      const chunk = yield* connection.read
      if (chunk === undefined) return Buffer.concat(chunks)
      total += chunk.length
      if (total > bytesMax) return yield* Effect.die(new Error(`read ${total} bytes, more than ${bytesMax}`))
      chunks.push(chunk)
    }
  })

/** Reads exactly `length` bytes (failing on an early EOF). */
const readExactly = (connection: Connection, length: number) =>
  Effect.gen(function* () {
    const chunks: Uint8Array[] = []
    let total = 0
    while (total < length) {
      const chunk = yield* connection.read
      if (chunk === undefined) return yield* Effect.die(new Error(`EOF after ${total} of ${length} bytes`))
      chunks.push(chunk)
      total += chunk.length
    }
    return Buffer.concat(chunks)
  })

const writeInChunks = (connection: Connection, data: Uint8Array, chunkBytes: number) =>
  Effect.gen(function* () {
    for (let offset = 0; offset < data.length; offset += chunkBytes) {
      yield* connection.write(data.subarray(offset, offset + chunkBytes))
    }
  })

function patterned(length: number, seed: number): Uint8Array {
  const data = new Uint8Array(length)
  let x = seed >>> 0
  for (let i = 0; i < length; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0
    data[i] = x >>> 24
  }
  return data
}

async function failure<A>(effect: Effect.Effect<A, NetError>): Promise<NetError> {
  const exit = await Effect.runPromiseExit(effect)
  if (Exit.isSuccess(exit)) throw new Error(`expected a NetError, got ${String(exit.value)}`)
  const reason = exit.cause.reasons.find((r) => r._tag === "Fail")
  if (reason === undefined || reason._tag !== "Fail") throw new Error("expected a failure, got a defect or interrupt")
  return reason.error
}

const text = (value: string): Uint8Array => Buffer.from(value)

describe("streams", () => {
  test("echo round trip, and the reported addresses match", async () => {
    await run(Effect.gen(function* () {
      const listener = yield* network.listen("127.0.0.1:0")
      expect(listener.address).toMatch(/^127\.0\.0\.1:[1-9][0-9]*$/)
      const echo = yield* Effect.forkChild(Effect.gen(function* () {
        const connection = yield* listener.accept
        for (;;) {
          const chunk = yield* connection.read
          if (chunk === undefined) break
          yield* connection.write(chunk)
        }
        yield* connection.shutdownWrite
        return connection
      }))
      const client = yield* network.connect(listener.address)
      expect(client.remoteAddress).toBe(listener.address)
      yield* client.write(text("hello, "))
      yield* client.write(text("safekeeper"))
      yield* client.shutdownWrite
      expect(Buffer.from(yield* readAll(client, 1024)).toString()).toBe("hello, safekeeper")
      const serverSide = yield* Fiber.join(echo)
      expect(serverSide.remoteAddress).toBe(client.localAddress)
      yield* client.close
      yield* serverSide.close
      yield* listener.close
    }))
  })

  test("5 MB each way at once arrives intact", async () => {
    await run(Effect.gen(function* () {
      const { client, server } = yield* pair
      const sizeBytes = 5 * 1024 * 1024
      const up = patterned(sizeBytes, 1)
      const down = patterned(sizeBytes, 2)
      const [receivedByServer, receivedByClient] = yield* Effect.all([
        readExactly(server, sizeBytes),
        readExactly(client, sizeBytes),
        writeInChunks(client, up, 100_000),
        writeInChunks(server, down, 64 * 1024)
      ], { concurrency: "unbounded" })
      expect(Buffer.compare(receivedByServer, up)).toBe(0)
      expect(Buffer.compare(receivedByClient, down)).toBe(0)
      yield* client.close
      yield* server.close
    }))
  })

  test("many small writes arrive whole and in order, read late or at once", async () => {
    await run(Effect.gen(function* () {
      const { client, server } = yield* pair
      const writeCount = 20_000
      const expected = Buffer.concat(Array.from({ length: writeCount }, (_, i) => Buffer.from(`${i},`)))
      const writer = yield* Effect.forkChild(Effect.gen(function* () {
        for (let i = 0; i < writeCount; i++) yield* client.write(Buffer.from(`${i},`))
        yield* client.shutdownWrite
      }))
      yield* Effect.sleep("50 millis") // let chunks pile up unread first
      const received = yield* readAll(server, expected.length)
      yield* Fiber.join(writer)
      expect(Buffer.compare(received, expected)).toBe(0)
      yield* client.close
      yield* server.close
    }))
  })

  test("a write blocks while the peer does not read, and completes once it does", async () => {
    await run(Effect.gen(function* () {
      const { client, server } = yield* pair
      const sizeBytes = 64 * 1024 * 1024
      const data = patterned(sizeBytes, 3)
      let written = false
      const writer = yield* Effect.forkChild(Effect.tap(client.write(data), () => Effect.sync(() => { written = true })))
      // Kernel buffers plus our bounded read buffer hold a few MB, far below 64 MB.
      yield* Effect.sleep("500 millis")
      expect(written).toBe(false)
      const received = yield* readExactly(server, sizeBytes)
      yield* Fiber.join(writer)
      expect(written).toBe(true)
      expect(Buffer.compare(received, data)).toBe(0)
      yield* client.close
      yield* server.close
    }))
  })

  test("writev sends its parts in order as one write; empty parts are skipped", async () => {
    await run(Effect.gen(function* () {
      const { client, server } = yield* pair
      yield* client.writev([text("head:"), new Uint8Array(0), text("body"), text(";")])
      yield* client.writev([])
      // A writev far past the write budget waits like a write, and arrives whole.
      const header = text("H")
      const body = patterned(16 * 1024 * 1024, 5)
      let written = false
      const writer = yield* Effect.forkChild(Effect.tap(client.writev([header, body]), () => Effect.sync(() => { written = true })))
      yield* client.shutdownWrite.pipe(Effect.delay("1 millis"), Effect.forkChild)
      const received = yield* readAll(server, 11 + 1 + body.length)
      yield* Fiber.join(writer)
      expect(written).toBe(true)
      expect(Buffer.from(received.subarray(0, 11)).toString()).toBe("head:body;H")
      expect(Buffer.compare(received.subarray(11), body)).toBe(0)
      yield* client.close
      yield* server.close
    }))
  })

  test("writes return within the write budget, and a peer that does not read still stops the writer", async () => {
    await run(Effect.gen(function* () {
      const budgetNetwork = makeLiveNet({ writeBufferBytesMax: 1024 * 1024 })
      const listener = yield* budgetNetwork.listen("127.0.0.1:0")
      const client = yield* budgetNetwork.connect(listener.address)
      const server = yield* listener.accept
      yield* listener.close
      const chunkBytes = 128 * 1024
      const chunkCount = 512 // 64 MiB: far beyond kernel buffers, read buffer and budget together
      const data = patterned(chunkBytes * chunkCount, 6)
      let writtenCount = 0
      const writer = yield* Effect.forkChild(Effect.gen(function* () {
        for (let i = 0; i < chunkCount; i++) {
          yield* client.write(data.subarray(i * chunkBytes, (i + 1) * chunkBytes))
          writtenCount++
        }
      }))
      yield* Effect.sleep("500 millis")
      // The budget alone lets 8 writes through without the peer reading; the kernel takes more.
      expect(writtenCount).toBeGreaterThanOrEqual(8)
      expect(writtenCount).toBeLessThan(chunkCount)
      const received = yield* readExactly(server, data.length)
      yield* Fiber.join(writer)
      expect(Buffer.compare(received, data)).toBe(0)
      yield* client.close
      yield* server.close
    }))
  })

  test("half-close: the peer reads EOF and can still write back, either way round", async () => {
    await run(Effect.gen(function* () {
      for (const clientShutsFirst of [true, false]) {
        const { client, server } = yield* pair
        const [first, second] = clientShutsFirst ? [client, server] : [server, client]
        yield* first.write(text("ping"))
        yield* first.shutdownWrite
        yield* first.shutdownWrite // harmless twice
        expect(Buffer.from(yield* readAll(second, 1024)).toString()).toBe("ping")
        expect(yield* second.read).toBeUndefined() // EOF stays EOF
        // Answer later, not inline with the EOF: a side without allowHalfOpen would have ended by now.
        yield* Effect.sleep("20 millis")
        yield* second.write(text("pong"))
        yield* second.shutdownWrite
        expect(Buffer.from(yield* readAll(first, 1024)).toString()).toBe("pong")
        expect((yield* Effect.flip(first.write(text("late")))).reason).toBe("Closed")
        yield* client.close
        yield* server.close
      }
    }))
  })
})

describe("errors", () => {
  test("connect to a port nobody listens on is ConnectionRefused", async () => {
    const address = await run(Effect.gen(function* () {
      const listener = yield* network.listen("127.0.0.1:0")
      yield* listener.close
      return listener.address
    }))
    expect(await failure(network.connect(address))).toMatchObject({ reason: "ConnectionRefused", address })
  })

  test("malformed addresses are InvalidAddress", async () => {
    for (const address of ["localhost", "127.0.0.1:", ":80", "127.0.0.1:70000", "127.0.0.1:x", "[]:5"]) {
      expect((await failure(network.connect(address))).reason).toBe("InvalidAddress")
      expect((await failure(network.listen(address))).reason).toBe("InvalidAddress")
    }
  })

  test("listening on a bound port is AddressInUse", async () => {
    await run(Effect.gen(function* () {
      const listener = yield* network.listen("127.0.0.1:0")
      const error = yield* Effect.flip(network.listen(listener.address))
      expect(error.reason).toBe("AddressInUse")
      yield* listener.close
    }))
  })

  test("close is idempotent; later reads and writes are Closed", async () => {
    await run(Effect.gen(function* () {
      const { client, server } = yield* pair
      yield* server.write(text("unread"))
      yield* client.close
      yield* client.close
      expect((yield* Effect.flip(client.read)).reason).toBe("Closed")
      expect((yield* Effect.flip(client.write(text("x")))).reason).toBe("Closed")
      expect((yield* Effect.flip(client.shutdownWrite)).reason).toBe("Closed")
      yield* server.close
    }))
  })

  test("read after the peer is destroyed: ConnectionReset or EOF", async () => {
    await run(Effect.gen(function* () {
      // Peer had nothing unread: it sends FIN, we see EOF (or a reset, depending on timing).
      const quiet = yield* pair
      yield* quiet.server.close
      const quietResult = yield* Effect.result(quiet.client.read)
      if (quietResult._tag === "Success") expect(quietResult.success).toBeUndefined()
      else expect(quietResult.failure.reason).toBe("ConnectionReset")
      yield* quiet.client.close

      // Peer dies with bytes unread in its kernel buffer: the kernel answers with RST. A write
      // blocked on the full stream and the next read both see the break.
      const noisy = yield* pair
      const writer = yield* Effect.forkChild(Effect.flip(noisy.client.write(patterned(32 * 1024 * 1024, 5))))
      yield* Effect.sleep("100 millis")
      yield* noisy.server.close
      expect((yield* Fiber.join(writer)).reason).toBe("ConnectionReset")
      const noisyRead = yield* Effect.result(noisy.client.read)
      if (noisyRead._tag === "Success") expect(noisyRead.success).toBeUndefined()
      else expect(noisyRead.failure.reason).toBe("ConnectionReset")
      yield* noisy.client.close
    }))
  })

  test("a connect that gets no answer is TimedOut", async () => {
    // A child process listens with a backlog of 1 and then blocks its event loop, so it never
    // accepts: once its accept queue is full, the kernel drops further SYNs.
    const child = spawn(process.execPath, ["-e", `
      const net = require("node:net")
      const server = net.createServer()
      server.listen({ host: "127.0.0.1", port: 0, backlog: 1 }, () => {
        process.stdout.write(server.address().port + "\\n")
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 30000)
      })`], { stdio: ["ignore", "pipe", "inherit"] })
    children.push(child)
    const port = await new Promise<number>((resolve) => child.stdout!.once("data", (data: Buffer) => resolve(Number(data.toString()))))
    const impatient = makeLiveNet({ connectTimeoutMs: 300 })
    const connections: Connection[] = []
    let error: NetError | undefined
    // Each attempt either fills a queue slot or times out; a bounded number suffices.
    for (let attempt = 0; attempt < 8 && error === undefined; attempt++) {
      const result = await run(Effect.result(impatient.connect(`127.0.0.1:${port}`)))
      if (result._tag === "Success") connections.push(result.success)
      else error = result.failure
    }
    expect(error).toMatchObject({ reason: "TimedOut", address: `127.0.0.1:${port}` })
    for (const connection of connections) await run(connection.close)
  })
})

describe("listener", () => {
  test("accept yields connections in arrival order; overflow beyond the queue is reset", async () => {
    await run(Effect.gen(function* () {
      const listener = yield* makeLiveNet({ acceptQueueLengthMax: 2 }).listen("127.0.0.1:0")
      const first = yield* network.connect(listener.address)
      const second = yield* network.connect(listener.address)
      const third = yield* network.connect(listener.address)
      // Nobody accepts yet: two wait in the queue, the third finds it full and is dropped.
      const overflow = yield* Effect.result(third.read)
      if (overflow._tag === "Success") expect(overflow.success).toBeUndefined()
      else expect(overflow.failure.reason).toBe("ConnectionReset")
      const acceptedFirst = yield* listener.accept
      const acceptedSecond = yield* listener.accept
      expect(acceptedFirst.remoteAddress).toBe(first.localAddress)
      expect(acceptedSecond.remoteAddress).toBe(second.localAddress)
      // With room in the queue again, a new arrival is kept.
      const fourth = yield* network.connect(listener.address)
      const acceptedFourth = yield* listener.accept
      expect(acceptedFourth.remoteAddress).toBe(fourth.localAddress)
      for (const connection of [first, second, third, fourth, acceptedFirst, acceptedSecond, acceptedFourth]) yield* connection.close
      yield* listener.close
    }))
  })

  test("closing the listener fails a pending accept with Closed", async () => {
    await run(Effect.gen(function* () {
      const listener = yield* network.listen("127.0.0.1:0")
      const acceptor = yield* Effect.forkChild(Effect.flip(listener.accept))
      yield* Effect.yieldNow
      yield* listener.close
      yield* listener.close
      expect((yield* Fiber.join(acceptor)).reason).toBe("Closed")
      expect((yield* Effect.flip(network.connect(listener.address))).reason).toBe("ConnectionRefused")
    }))
  })
})

describe("interruption", () => {
  test("an interrupted read, accept or write leaves no callback behind", async () => {
    await run(Effect.gen(function* () {
      const listener = yield* network.listen("127.0.0.1:0")
      // accept: the interrupted acceptor must not swallow the next connection.
      const lostAccept = yield* Effect.forkChild(listener.accept)
      yield* Effect.yieldNow
      yield* Fiber.interrupt(lostAccept)
      const client = yield* network.connect(listener.address)
      const server = yield* listener.accept

      // read: the interrupted reader must not swallow the next chunk.
      const lostRead = yield* Effect.forkChild(server.read)
      yield* Effect.yieldNow
      yield* Fiber.interrupt(lostRead)
      yield* client.write(text("kept"))
      expect(Buffer.from(yield* readExactly(server, 4)).toString()).toBe("kept")

      // write: interrupted while waiting for drain; the stream still works afterwards.
      const big = patterned(32 * 1024 * 1024, 4)
      const lostWrite = yield* Effect.forkChild(client.write(big))
      yield* Effect.sleep("100 millis")
      yield* Fiber.interrupt(lostWrite)
      // The bytes were handed to the socket before the wait, so they still arrive.
      const received = yield* readExactly(server, big.length)
      expect(Buffer.compare(received, big)).toBe(0)
      yield* client.write(text("after"))
      expect(Buffer.from(yield* readExactly(server, 5)).toString()).toBe("after")

      for (const connection of [client, server]) yield* connection.close
      yield* listener.close
    }))
  })
})

const children: ChildProcess[] = []
afterEach(() => {
  for (const child of children.splice(0)) child.kill("SIGKILL")
})
