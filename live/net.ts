import * as net from "node:net"
import { Effect, Layer } from "effect"
import { assert } from "../core/assert.js"
import { Net, NetError, parseAddress, type Connection, type Listener, type NetErrorReason } from "../core/io/net.js"

/**
 * Net over node:net (TCP). Both sides run with allowHalfOpen so `shutdownWrite` closes one
 * direction only. Reading is flow-controlled: at most `readBufferBytesMax` unread bytes are
 * held here, beyond that the socket is paused and the kernel's window pushes back on the peer.
 * Writing too: a write returns at once while the socket holds at most `writeBufferBytesMax`
 * bytes the kernel has not taken yet, beyond that it waits for the socket to drain. Waiting for
 * 'drain' after every write past node's 16 KiB high-water mark instead made each 128 KiB
 * AppendRequest wait a whole round of the event loop before the next could be queued.
 */
export interface LiveNetOptions {
  /** A connect attempt that gets no answer fails with TimedOut after this long. */
  readonly connectTimeoutMs?: number
  /** Accepted connections waiting for `accept`; further arrivals are reset. */
  readonly acceptQueueLengthMax?: number
  /** Unread bytes held per connection before the socket is paused. */
  readonly readBufferBytesMax?: number
  /** Bytes a connection's socket may hold for the kernel before a write waits for it to drain. */
  readonly writeBufferBytesMax?: number
}

export const CONNECT_TIMEOUT_MS_DEFAULT = 10_000
export const ACCEPT_QUEUE_LENGTH_MAX_DEFAULT = 128
export const READ_BUFFER_BYTES_MAX_DEFAULT = 256 * 1024
export const WRITE_BUFFER_BYTES_MAX_DEFAULT = 1024 * 1024

export function makeLiveNet(options: LiveNetOptions = {}): Net["Service"] {
  const connectTimeoutMs = options.connectTimeoutMs ?? CONNECT_TIMEOUT_MS_DEFAULT
  const acceptQueueLengthMax = options.acceptQueueLengthMax ?? ACCEPT_QUEUE_LENGTH_MAX_DEFAULT
  const readBufferBytesMax = options.readBufferBytesMax ?? READ_BUFFER_BYTES_MAX_DEFAULT
  const buffers: Buffers = { readBytesMax: readBufferBytesMax, writeBytesMax: options.writeBufferBytesMax ?? WRITE_BUFFER_BYTES_MAX_DEFAULT }
  assert(Number.isSafeInteger(connectTimeoutMs) && connectTimeoutMs > 0, "connectTimeoutMs must be a positive integer")
  assert(Number.isSafeInteger(acceptQueueLengthMax) && acceptQueueLengthMax > 0, "acceptQueueLengthMax must be positive")
  assert(Number.isSafeInteger(readBufferBytesMax) && readBufferBytesMax > 0, "readBufferBytesMax must be positive")
  // Below the socket's high-water mark (16 KiB in node 20, 64 KiB in 22) a write past the
  // budget could find no 'drain' coming; makeConnection asserts it per socket.
  assert(Number.isSafeInteger(buffers.writeBytesMax) && buffers.writeBytesMax >= 64 * 1024, "writeBufferBytesMax is at least 64 KiB")

  return Net.of({
    listen: (address) =>
      Effect.callback<Listener, NetError>((resume) => {
        const target = hostAndPort(address)
        if (target === undefined) return resume(Effect.fail(invalidAddress(address)))
        const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true })
        let interrupted = false
        const onError = (error: Error): void => {
          server.close()
          resume(Effect.fail(netError(error, address)))
        }
        server.once("error", onError)
        server.listen({ host: target.host, port: target.port }, () => {
          server.off("error", onError)
          // The bind can complete after an interrupt (listen resolves the host first).
          if (interrupted) return void server.close()
          resume(Effect.succeed(makeListener(server, acceptQueueLengthMax, buffers)))
        })
        return Effect.sync(() => {
          interrupted = true
          server.close()
        })
      }),

    connect: (address) =>
      Effect.callback<Connection, NetError>((resume) => {
        const target = hostAndPort(address)
        if (target === undefined) return resume(Effect.fail(invalidAddress(address)))
        const socket = net.connect({ host: target.host, port: target.port, allowHalfOpen: true })
        const cleanup = (): void => {
          clearTimeout(timer)
          socket.off("error", onError)
          socket.off("connect", onConnect)
        }
        const onError = (error: Error): void => {
          cleanup()
          socket.destroy()
          resume(Effect.fail(netError(error, address)))
        }
        const onConnect = (): void => {
          cleanup()
          resume(Effect.succeed(makeConnection(socket, buffers)))
        }
        const timer = setTimeout(() => {
          cleanup()
          socket.destroy()
          resume(Effect.fail(new NetError({ reason: "TimedOut", address, message: `connect timed out after ${connectTimeoutMs} ms` })))
        }, connectTimeoutMs)
        socket.once("error", onError)
        socket.once("connect", onConnect)
        return Effect.sync(() => {
          cleanup()
          socket.destroy()
        })
      })
  })
}

export const liveNetLayer = (options: LiveNetOptions = {}): Layer.Layer<Net> => Layer.succeed(Net, makeLiveNet(options))

const EMPTY = Buffer.alloc(0)

interface Buffers {
  readonly readBytesMax: number
  readonly writeBytesMax: number
}

type Resume<A> = (effect: Effect.Effect<A, NetError>) => void

function makeListener(server: net.Server, acceptQueueLengthMax: number, buffers: Buffers): Listener {
  const bound = server.address()
  assert(bound !== null && typeof bound === "object", "a listening TCP server has an address")
  const address = `${bound.address}:${bound.port}`
  const accepted: Connection[] = []
  const acceptors: Array<Resume<Connection>> = []
  let failure: NetError | undefined // set by close

  server.on("connection", (socket: net.Socket) => {
    if (failure !== undefined) return void socket.destroy()
    const connection = makeConnection(socket, buffers)
    const acceptor = acceptors.shift()
    if (acceptor !== undefined) return acceptor(Effect.succeed(connection))
    // Node cannot stop accepting without closing the listener, so beyond the bound the newest
    // arrival is reset, as a full OS backlog would refuse it.
    if (accepted.length >= acceptQueueLengthMax) return Effect.runSync(connection.close)
    accepted.push(connection)
  })
  // After the bind, node reports only failed accepts here (EMFILE, ECONNABORTED): each concerns
  // one arriving connection, which the peer sees reset, never the listener, so it keeps going.
  server.on("error", () => {})

  return {
    address,
    accept: Effect.callback<Connection, NetError>((resume) => {
      const connection = accepted.shift()
      if (connection !== undefined) return resume(Effect.succeed(connection))
      if (failure !== undefined) return resume(Effect.fail(failure))
      acceptors.push(resume)
      return Effect.sync(() => removeItem(acceptors, resume))
    }),
    close: Effect.sync(() => {
      if (failure !== undefined) return
      failure = new NetError({ reason: "Closed", address, message: "listener closed" })
      // server.close() stops new connections at once; its callback would wait for every
      // accepted connection to end, which is not the listener's business.
      server.close()
      for (const connection of accepted.splice(0)) Effect.runSync(connection.close)
      for (const acceptor of acceptors.splice(0)) acceptor(Effect.fail(failure))
    })
  }
}

function makeConnection(socket: net.Socket, buffers: Buffers): Connection {
  const readBufferBytesMax = buffers.readBytesMax
  const writeBufferBytesMax = buffers.writeBytesMax
  assert(socket.writableHighWaterMark <= writeBufferBytesMax, "a write past the budget is past the high-water mark, so 'drain' follows")
  // Consensus messages are small and latency-bound: send each write at once.
  socket.setNoDelay(true)
  const localAddress = `${socket.localAddress ?? "?"}:${socket.localPort ?? 0}`
  const remoteAddress = `${socket.remoteAddress ?? "?"}:${socket.remotePort ?? 0}`
  // Unread chunks from `chunkHead` on; an index, not shift(), so many small chunks stay O(1) each.
  let chunks: Buffer[] = []
  let chunkHead = 0
  let bufferedBytes = 0
  const readers: Array<Resume<Uint8Array | undefined>> = []
  const writers: Array<Resume<void>> = []
  let ended = false // the peer shut down its write side and we have its last byte
  let failure: NetError | undefined // broken or closed: every later call fails with it
  let closed = false // by `close`: even buffered bytes and a seen EOF are gone

  const closedError = (message: string): NetError => new NetError({ reason: "Closed", address: remoteAddress, message })
  const fail = (error: NetError): void => {
    failure ??= error
    for (const reader of readers.splice(0)) reader(Effect.fail(failure))
    for (const writer of writers.splice(0)) writer(Effect.fail(failure))
  }

  socket.on("data", (chunk: Buffer) => {
    // State first: a resumed fiber runs inline and may read again before this returns.
    const reader = readers.shift()
    if (reader !== undefined) return reader(Effect.succeed(chunk))
    chunks.push(chunk)
    bufferedBytes += chunk.length
    if (bufferedBytes >= readBufferBytesMax) socket.pause()
  })
  socket.on("end", () => {
    ended = true
    for (const reader of readers.splice(0)) reader(Effect.succeed(undefined))
  })
  socket.on("drain", () => {
    for (const writer of writers.splice(0)) writer(Effect.void)
  })
  // Once shutdownWrite has ended the stream node emits no 'drain' (its afterWrite skips it
  // while ending), so writers still waiting resume when everything queued has been flushed.
  socket.on("finish", () => {
    for (const writer of writers.splice(0)) writer(Effect.void)
  })
  socket.on("error", (error) => fail(netError(error, remoteAddress)))
  // After both directions finish, or a destroy: nothing more can be read or written.
  socket.on("close", () => fail(closedError("connection closed")))
  socket.resume() // accepted sockets start paused (pauseOnConnect) so no byte arrives unobserved

  const takeChunk = (): Buffer | undefined => {
    const chunk = chunks[chunkHead]
    if (chunk === undefined) return undefined
    chunks[chunkHead++] = EMPTY
    if (chunkHead === chunks.length) {
      chunks = []
      chunkHead = 0
    } else if (chunkHead >= 1024 && chunkHead * 2 >= chunks.length) {
      chunks = chunks.slice(chunkHead)
      chunkHead = 0
    }
    bufferedBytes -= chunk.length
    // Hysteresis: resume only once half the buffer is free, to avoid a pause/resume per chunk.
    if (socket.isPaused() && bufferedBytes <= readBufferBytesMax / 2 && failure === undefined) socket.resume()
    return chunk
  }

  /** Queues bytes with `put`, then waits only while the socket holds more than the write budget. */
  const queueWrite = (put: () => void): Effect.Effect<void, NetError> =>
    Effect.callback<void, NetError>((resume) => {
      if (failure !== undefined) return resume(Effect.fail(failure))
      // Destroyed by an error whose event is still queued: the write could never drain.
      if (socket.destroyed) return resume(Effect.fail(closedError("connection destroyed")))
      if (socket.writableEnded) return resume(Effect.fail(closedError("write after shutdownWrite")))
      put()
      // Past the budget is past the high-water mark, so node owes us a 'drain'.
      if (socket.writableLength <= writeBufferBytesMax) return resume(Effect.void)
      writers.push(resume)
      return Effect.sync(() => removeItem(writers, resume))
    })

  return {
    localAddress,
    remoteAddress,
    read: Effect.callback<Uint8Array | undefined, NetError>((resume) => {
      if (closed) return resume(Effect.fail(closedError("read after close")))
      const chunk = takeChunk()
      if (chunk !== undefined) return resume(Effect.succeed(chunk))
      if (ended) return resume(Effect.succeed(undefined))
      if (failure !== undefined) return resume(Effect.fail(failure))
      readers.push(resume)
      return Effect.sync(() => removeItem(readers, resume))
    }),
    // The socket keeps a reference to `data` until it is sent: callers must not reuse it.
    write: (data) => queueWrite(() => {
      if (data.byteLength > 0) socket.write(data)
    }),
    // Corked, the parts leave in one writev(2) when uncorked, each from its own buffer.
    writev: (parts) => queueWrite(() => {
      socket.cork()
      for (const part of parts) if (part.byteLength > 0) socket.write(part)
      socket.uncork()
    }),
    shutdownWrite: Effect.suspend(() => {
      if (failure !== undefined) return Effect.fail(failure)
      // The FIN follows the bytes already queued; a second call is harmless.
      socket.end()
      return Effect.void
    }),
    close: Effect.sync(() => {
      if (closed) return
      closed = true
      chunks = []
      chunkHead = 0
      bufferedBytes = 0
      socket.destroy()
      fail(closedError("connection closed"))
    })
  }
}

function hostAndPort(address: string): { readonly host: string; readonly port: number } | undefined {
  const parsed = parseAddress(address)
  if (parsed === undefined) return undefined
  // "[::1]:5432" is the usual spelling of an IPv6 address with a port.
  const host = parsed.host.startsWith("[") && parsed.host.endsWith("]") ? parsed.host.slice(1, -1) : parsed.host
  return host.length === 0 ? undefined : { host, port: parsed.port }
}

function invalidAddress(address: string): NetError {
  return new NetError({ reason: "InvalidAddress", address, message: `expected "host:port", got ${JSON.stringify(address)}` })
}

const REASON_BY_CODE: Readonly<Record<string, NetErrorReason>> = {
  ECONNRESET: "ConnectionReset",
  EPIPE: "ConnectionReset",
  ECONNABORTED: "ConnectionReset",
  ECONNREFUSED: "ConnectionRefused",
  ETIMEDOUT: "TimedOut",
  EADDRINUSE: "AddressInUse",
  ERR_STREAM_DESTROYED: "Closed",
  ERR_SOCKET_CLOSED: "Closed"
}

function netError(error: Error, address: string): NetError {
  const code = (error as NodeJS.ErrnoException).code
  const reason = (code !== undefined ? REASON_BY_CODE[code] : undefined) ?? "Other"
  return new NetError({ reason, address, message: error.message })
}

function removeItem<A>(items: Array<A>, item: A): void {
  const i = items.indexOf(item)
  if (i >= 0) items.splice(i, 1)
}
