import { Effect } from "effect"
import { assert } from "../core/assert.js"
import { type Connection, type Listener, type Net, NetError, type NetErrorReason, parseAddress } from "../core/io/net.js"
import type { Incarnation, Kernel, Timer } from "./kernel.js"

/**
 * The simulated network (DESIGN.md §5): ordered byte streams between "host:port" addresses
 * with bounded send buffers, per-chunk delays (uniform, with an optional long tail), per-chunk
 * breaks, partitions, clogs and isolations (one-way or both ways) that hold bytes and break
 * connections they outlast, connects that retransmit their SYN, and kill -9 crashes of hosts.
 * Every connection has its own two directions, and a break clears them: bytes in flight on an
 * old connection never reach a new one (a crashed host's bytes already on the wire may still
 * reach the old peer, then its RST). Every byte written is folded into the trace's data digest
 * (DESIGN.md §3). It is Effect-free except at the edge, where each blocked operation is an
 * `Effect.callback` that is re-attempted when woken.
 *
 * Inline resumption (effect-determinism.md, pitfall 12): Effect 4 runs a fiber inside the
 * callback that resumes it, so the network never resumes a blocked fiber from its own code
 * path. A wake-up is a kernel task owned by the waiter's life (dropped when that life dies,
 * and checked again when it runs); the woken fiber then re-attempts its operation against the
 * state as it is then, so no result is computed for a fiber that may never run and no
 * network state is touched after a resume. Only `connect` resumes from a timer, as the last
 * step of that timer.
 */

export interface NetFaults {
  /** Per chunk one-way latency, uniform in [low, high]. */
  readonly chunkDelayUs: readonly [number, number]
  /**
   * A long tail: with this probability (0 when absent) a chunk's latency is drawn from
   * `chunkDelayTailUs` instead (a retransmission, a stalled queue). Order within a connection
   * is kept, so a late chunk holds back the ones behind it, as on TCP.
   */
  readonly chunkDelayTailProbability?: number
  readonly chunkDelayTailUs?: readonly [number, number]
  /** A delivered chunk may instead reset the connection (both ends). */
  readonly breakProbabilityPerChunk: number
  /**
   * A connect whose SYN (or SYN-ACK) is lost, as across a partition, is retried as TCP retries
   * its SYN, at this interval and then doubling, and fails TimedOut once this has passed.
   */
  readonly connectTimeoutUs: number
  /**
   * The first SYN retransmission interval. Linux waits 1 s of a ~127 s connect (6 retries);
   * the default scales that down to connectTimeoutUs / 16 (capped at 1 s) so that a few retries
   * fit within the simulator's short connect timeouts.
   */
  readonly synRetransmitInitialUs?: number
  /** A partition outlasting this breaks the connections crossing it. */
  readonly partitionBreakAfterUs: number
}

export const DEFAULT_NET_FAULTS: NetFaults = {
  chunkDelayUs: [50, 500],
  breakProbabilityPerChunk: 0,
  connectTimeoutUs: 1_000_000,
  partitionBreakAfterUs: 5_000_000
}

/** Unread bytes (in flight plus unread at the receiver) a writer may have per direction. */
export const SEND_BUFFER_BYTES_MAX = 256 * 1024
/** Linux's initial SYN retransmission timeout (TCP_TIMEOUT_INIT). */
export const SYN_RETRANSMIT_INITIAL_US_MAX = 1_000_000
/** The default first retransmission is connectTimeoutUs divided by this. */
export const SYN_RETRANSMIT_PER_CONNECT_TIMEOUT = 16
/** Writes are split into chunks of at most this size; each chunk has its own delay. */
export const CHUNK_BYTES_MAX = 64 * 1024
/** A read returns at most this many bytes (coalescing small chunks up to it). */
export const READ_BYTES_MAX = 64 * 1024
/** Established connections waiting for `accept`; beyond it a connect is refused. */
export const ACCEPT_BACKLOG_MAX = 128
export const EPHEMERAL_PORT_MIN = 49152
export const EPHEMERAL_PORT_MAX = 65535
/** Queues keep a head index; they are compacted once this many slots are dead. */
const QUEUE_COMPACT_SLOTS_MIN = 1024

assert(CHUNK_BYTES_MAX <= SEND_BUFFER_BYTES_MAX, "a chunk fits in the send buffer")
assert(READ_BYTES_MAX >= CHUNK_BYTES_MAX, "a read can return a whole chunk")
assert(EPHEMERAL_PORT_MIN > 0 && EPHEMERAL_PORT_MIN <= EPHEMERAL_PORT_MAX, "ephemeral port range")

export interface NetHooks {
  /**
   * Called before each operation (connect, listen, accept, read, write, shutdownWrite, close)
   * with the address it concerns (the target for connect/listen, the listener's address for
   * accept, the remote address for connection operations). Returning false means the world
   * crashed the node right there: the operation does not happen and never resumes.
   */
  beforeOperation?(operation: string, address: string): boolean
}

export interface NetStats {
  /** Connections established. */
  connections: number
  /** Data chunks delivered, and their bytes. */
  chunks: number
  bytes: number
  /** Endpoints that saw a reset (break, partition, crash of the peer, RST after close). */
  resets: number
  /** Chunks whose delivery a partition postponed. */
  heldChunks: number
}

export class SimNet {
  readonly stats: NetStats = { connections: 0, chunks: 0, bytes: 0, resets: 0, heldChunks: 0 }
  private readonly hosts = new Map<string, HostState>()
  /** Live connections in establishment order (heal re-arms them in this order). */
  private readonly links = new Set<Link>()
  /** Held directions "from\0to" (partitions and clogs) and isolated hosts, each with its break-after timer. */
  private readonly partitions = new Map<string, Blockade>()
  private readonly clogs = new Map<string, Clog>()
  private readonly isolated = new Map<string, Isolation>()
  private readonly tailProbability: number
  private readonly tailDelayUs: readonly [number, number]
  private readonly synRetransmitInitialUs: number

  /** False once a scenario's liveness phase begins: no more per-chunk breaks or tail delays. */
  private chunkFaultsOn = true

  constructor(readonly kernel: Kernel, readonly faults: NetFaults) {
    const [low, high] = faults.chunkDelayUs
    assert(Number.isSafeInteger(low) && Number.isSafeInteger(high) && 0 <= low && low <= high, "chunkDelayUs is an integer range")
    assert(faults.breakProbabilityPerChunk >= 0 && faults.breakProbabilityPerChunk <= 1, "breakProbabilityPerChunk is a probability")
    assert(Number.isSafeInteger(faults.connectTimeoutUs) && faults.connectTimeoutUs > 0, "connectTimeoutUs is positive")
    assert(Number.isSafeInteger(faults.partitionBreakAfterUs) && faults.partitionBreakAfterUs > 0, "partitionBreakAfterUs is positive")
    this.tailProbability = faults.chunkDelayTailProbability ?? 0
    this.tailDelayUs = faults.chunkDelayTailUs ?? faults.chunkDelayUs
    const [tailLow, tailHigh] = this.tailDelayUs
    assert(this.tailProbability >= 0 && this.tailProbability <= 1, "chunkDelayTailProbability is a probability")
    assert(Number.isSafeInteger(tailLow) && Number.isSafeInteger(tailHigh) && 0 <= tailLow && tailLow <= tailHigh, "chunkDelayTailUs is an integer range")
    this.synRetransmitInitialUs = faults.synRetransmitInitialUs ??
      Math.max(1, Math.min(SYN_RETRANSMIT_INITIAL_US_MAX, Math.floor(faults.connectTimeoutUs / SYN_RETRANSMIT_PER_CONNECT_TIMEOUT)))
    assert(Number.isSafeInteger(this.synRetransmitInitialUs) && this.synRetransmitInitialUs > 0, "synRetransmitInitialUs is positive")
  }

  /** The Net service for one life of a host ("sk1"); listen("sk1:5454") binds that host's port. */
  service(life: Incarnation, host: string, hooks?: NetHooks): Net["Service"] {
    assert(parseAddress(`${host}:1`)?.host === host, `host name ${host} forms addresses`)
    return {
      listen: (address) =>
        Effect.suspend(() => (this.permits(life, hooks, "listen", address) ? this.listen(life, host, hooks, address) : Effect.never)),
      connect: (address) =>
        Effect.suspend(() => (this.permits(life, hooks, "connect", address) ? this.connect(life, host, hooks, address) : Effect.never))
    }
  }

  /** The host's process died (kill -9): its listeners vanish; its connections are reset (peers see ConnectionReset after one chunk delay). */
  crashHost(host: string): void {
    const state = this.hosts.get(host)
    if (state === undefined) return
    let listenerCount = 0
    for (const listener of state.listeners.values()) {
      listener.closed = true
      dropWaiters(listener.acceptors) // the dead side never resumes
      listenerCount++
    }
    state.listeners.clear()
    let connectionCount = 0
    for (const endpoint of [...state.endpoints]) {
      connectionCount++
      endpoint.state = "dead"
      dropWaiters(endpoint.readers)
      dropWaiters(endpoint.writers)
      this.dropInbox(endpoint)
      this.clearDirection(endpoint.inbound) // bytes for the dead process are lost
      // What the dead process had sent is on the wire already; its kernel's RST follows it.
      this.sendReset(endpoint)
      this.finish(endpoint)
    }
    for (const attempt of state.connects) {
      attempt.settled = true
      if (attempt.timer !== undefined) this.kernel.cancel(attempt.timer)
    }
    state.connects.clear()
    state.usedPorts.clear()
    this.kernel.log("net", `crash-host ${host} connections=${connectionCount} listeners=${listenerCount}`)
  }

  /** Holds bytes from a to b (and b to a unless oneWay) until healed. */
  partition(a: string, b: string, options?: { readonly oneWay?: boolean }): void {
    assert(a !== b, "a partition separates two hosts")
    const oneWay = options?.oneWay === true
    this.kernel.log("net", `partition ${a}${oneWay ? "->" : "<->"}${b}`)
    this.block(a, b)
    if (!oneWay) this.block(b, a)
  }

  /** Ends the partitions and clogs between a and b in both directions (an isolation stays). */
  heal(a: string, b: string): void {
    this.kernel.log("net", `heal ${a}<->${b}`)
    for (const key of [directionKey(a, b), directionKey(b, a)]) {
      const blockade = this.partitions.get(key)
      if (blockade !== undefined) {
        this.kernel.cancel(blockade.breakTimer)
        this.partitions.delete(key)
      }
      const clog = this.clogs.get(key)
      if (clog !== undefined) this.dropClog(key, clog)
    }
    this.rearmHeld()
  }

  /**
   * Clogs the direction from → to for `durationUs` (a congested or flapping link): its bytes
   * are held, not dropped, then delivered in order once it clears by itself. A clog outlasting
   * partitionBreakAfterUs breaks the connections, as a partition does. Clogging a clogged
   * direction extends it (its break clock keeps running).
   */
  clog(from: string, to: string, durationUs: number): void {
    assert(from !== to, "a clog separates two hosts")
    assert(Number.isSafeInteger(durationUs) && durationUs > 0, "a clog lasts a positive integer time")
    this.kernel.log("net", `clog ${from}->${to} ${durationUs}us`)
    const key = directionKey(from, to)
    const endUs = this.kernel.nowUs + durationUs
    const existing = this.clogs.get(key)
    if (existing !== undefined && existing.endUs >= endUs) return
    if (existing?.clearTimer !== undefined) this.kernel.cancel(existing.clearTimer)
    const breakTimer = existing?.breakTimer ?? this.kernel.after(this.faults.partitionBreakAfterUs, () => {
      if (this.clogs.get(key)?.breakTimer !== breakTimer) return
      this.breakLinks((x, y) => (x === from && y === to) || (x === to && y === from), "clog")
    }, undefined)
    const clog: Clog = { endUs, breakTimer, clearTimer: undefined }
    clog.clearTimer = this.kernel.setTimer(endUs, () => {
      if (this.clogs.get(key) !== clog) return
      this.kernel.log("net", `unclog ${from}->${to}`)
      this.dropClog(key, clog)
      this.rearmHeld()
    }, undefined)
    this.clogs.set(key, clog)
  }

  /**
   * Partitions host from every other host (loopback keeps working); with `only`, just the
   * host's outbound or inbound bytes are held (it hears but is not heard, or the reverse).
   * Isolating an isolated host changes nothing (the older isolation's clock keeps running).
   */
  isolate(host: string, options?: { readonly only?: "outbound" | "inbound" }): void {
    const only = options?.only
    this.kernel.log("net", `isolate ${host}${only === undefined ? "" : ` ${only}`}`)
    if (this.isolated.has(host)) return
    const breakTimer = this.kernel.after(this.faults.partitionBreakAfterUs, () => {
      if (this.isolated.get(host)?.breakTimer !== breakTimer) return
      this.breakLinks((x, y) => (x === host) !== (y === host), "partition")
    }, undefined)
    this.isolated.set(host, { breakTimer, only })
  }

  /** Ends the isolation of one host (partitions and clogs stay). */
  rejoin(host: string): void {
    this.kernel.log("net", `rejoin ${host}`)
    const isolation = this.isolated.get(host)
    if (isolation === undefined) return
    this.kernel.cancel(isolation.breakTimer)
    this.isolated.delete(host)
    this.rearmHeld()
  }

  /** Stops the per-chunk faults (breaks, long-tail delays) for good: the liveness phase. */
  stopChunkFaults(): void {
    this.kernel.log("net", "chunk faults off")
    this.chunkFaultsOn = false
  }

  /** Ends every partition, clog and isolation. */
  healAll(): void {
    this.kernel.log("net", "heal-all")
    for (const blockade of this.partitions.values()) this.kernel.cancel(blockade.breakTimer)
    for (const blockade of this.isolated.values()) this.kernel.cancel(blockade.breakTimer)
    for (const [key, clog] of [...this.clogs]) this.dropClog(key, clog)
    this.partitions.clear()
    this.isolated.clear()
    this.rearmHeld()
  }

  /** Break every connection between a and b now (a reset). */
  breakConnections(a: string, b: string): void {
    this.kernel.log("net", `break ${a}<->${b}`)
    this.breakLinks((x, y) => (x === a && y === b) || (x === b && y === a), "break")
  }

  // ---------------------------------------------------------------- listen / accept

  private listen(life: Incarnation, host: string, hooks: NetHooks | undefined, address: string): Effect.Effect<Listener, NetError> {
    const parsed = parseAddress(address)
    if (parsed === undefined || parsed.host !== host) {
      return Effect.fail(netError("InvalidAddress", address, `cannot listen on ${address} from host ${host}`))
    }
    const state = this.hostState(host)
    const stale = state.listeners.get(parsed.port)
    if (stale !== undefined && !stale.life.alive) this.closeListener(stale) // a dead life's port is free
    let port = parsed.port
    if (port === 0) {
      const free = this.allocatePort(state)
      if (free === undefined) return Effect.fail(netError("AddressInUse", address, "no free port"))
      port = free
    } else if (state.usedPorts.has(port)) {
      return Effect.fail(netError("AddressInUse", address, `${address} is in use`))
    }
    const listener = new SimListener(state, port, `${host}:${port}`, life, hooks)
    state.listeners.set(port, listener)
    state.usedPorts.add(port)
    this.kernel.log(life.label, `net listen ${listener.address}`)
    return Effect.succeed(this.listenerApi(listener))
  }

  private listenerApi(listener: SimListener): Listener {
    const { life, hooks, address } = listener
    return {
      address,
      accept: Effect.suspend(() => {
        if (!this.permits(life, hooks, "accept", address)) return Effect.never
        return this.perform(listener.acceptors, newWaiter(life), (isHead) => this.tryAccept(listener, isHead))
      }),
      close: Effect.suspend(() => {
        if (!this.permits(life, hooks, "close", address)) return Effect.never
        this.closeListener(listener)
        return Effect.void
      })
    }
  }

  private tryAccept(listener: SimListener, isHead: boolean): Effect.Effect<Connection, NetError> | Blocked {
    if (listener.closed) return Effect.fail(netError("Closed", listener.address, "listener closed"))
    if (!isHead || listener.backlogHead === listener.backlog.length) return BLOCKED
    const endpoint = listener.backlog[listener.backlogHead]!
    listener.backlog[listener.backlogHead] = undefined
    listener.backlogHead++
    if (listener.backlogHead === listener.backlog.length) {
      listener.backlog = []
      listener.backlogHead = 0
    }
    this.kernel.log(listener.life.label, `net accept ${endpoint.localAddress}<-${endpoint.remoteAddress}`)
    return Effect.succeed(this.connectionApi(endpoint))
  }

  private closeListener(listener: SimListener): void {
    if (listener.closed) return
    listener.closed = true
    const state = listener.host
    if (state.listeners.get(listener.port) === listener) {
      state.listeners.delete(listener.port)
      state.usedPorts.delete(listener.port)
    }
    this.kernel.log(listener.life.label, `net unlisten ${listener.address}`)
    // Connections nobody accepted are reset, as a kernel does when a listening socket closes.
    for (let i = listener.backlogHead; i < listener.backlog.length; i++) {
      const endpoint = listener.backlog[i]!
      if (endpoint.state === "open") this.closeEndpoint(endpoint, { reset: true })
    }
    listener.backlog = []
    listener.backlogHead = 0
    this.wakeAll(listener.acceptors)
  }

  // ---------------------------------------------------------------- connect

  private connect(life: Incarnation, host: string, hooks: NetHooks | undefined, address: string): Effect.Effect<Connection, NetError> {
    const target = parseAddress(address)
    if (target === undefined) return Effect.fail(netError("InvalidAddress", address, `malformed address ${address}`))
    return Effect.callback<Connection, NetError>((resume) => {
      if (!life.alive) return
      const state = this.hostState(host)
      const nowUs = this.kernel.nowUs
      const attempt: ConnectAttempt = {
        life, host: state, hooks, address, target, deadlineUs: nowUs + this.faults.connectTimeoutUs,
        lastSendUs: nowUs, retransmitUs: this.synRetransmitInitialUs, timer: undefined, resume, settled: false
      }
      state.connects.add(attempt)
      this.kernel.log(life.label, `net connect ${address}`)
      this.sendSyn(attempt)
      return Effect.sync(() => {
        if (attempt.settled) return
        attempt.settled = true
        if (attempt.timer !== undefined) this.kernel.cancel(attempt.timer)
        state.connects.delete(attempt)
      })
    })
  }

  /**
   * One SYN: lost while the path is blocked either way (no SYN-ACK could come back), else it
   * arrives one delay later. A SYN that would arrive after the deadline is as good as lost. A
   * SYN in flight is not retransmitted (a simplification: a slow SYN is one long delay).
   */
  private sendSyn(attempt: ConnectAttempt): void {
    const nowUs = this.kernel.nowUs
    attempt.lastSendUs = nowUs
    if (this.isBlockedEitherWay(attempt.host.name, attempt.target.host)) {
      this.retransmitLater(attempt)
      return
    }
    const arriveAtUs = nowUs + this.drawDelayUs()
    attempt.timer = arriveAtUs > attempt.deadlineUs
      ? this.kernel.setTimer(attempt.deadlineUs, () => this.connectTimedOut(attempt), attempt.life)
      : this.kernel.setTimer(arriveAtUs, () => this.connectArrived(attempt), attempt.life)
  }

  /** The SYN was lost: resend it one retransmission interval after the last send (doubling), unless the deadline comes first. */
  private retransmitLater(attempt: ConnectAttempt): void {
    const nextUs = attempt.lastSendUs + attempt.retransmitUs
    attempt.retransmitUs *= 2
    if (nextUs >= attempt.deadlineUs) {
      attempt.timer = this.kernel.setTimer(attempt.deadlineUs, () => this.connectTimedOut(attempt), attempt.life)
      return
    }
    attempt.timer = this.kernel.setTimer(nextUs, () => {
      attempt.timer = undefined
      if (attempt.settled || !attempt.life.alive) return
      this.kernel.log(attempt.life.label, `net connect ${attempt.address} syn-retransmit`)
      this.sendSyn(attempt)
    }, attempt.life)
  }

  /** The SYN reached the target host: establish, refuse, or (partitioned meanwhile: lost) retransmit. */
  private connectArrived(attempt: ConnectAttempt): void {
    attempt.timer = undefined
    if (attempt.settled || !attempt.life.alive) return
    const { host, target, address, life } = attempt
    if (this.isBlockedEitherWay(host.name, target.host)) {
      this.retransmitLater(attempt)
      return
    }
    const listener = this.hosts.get(target.host)?.listeners.get(target.port)
    const backlogLength = listener === undefined ? 0 : listener.backlog.length - listener.backlogHead
    if (listener === undefined || listener.closed || !listener.life.alive || backlogLength >= ACCEPT_BACKLOG_MAX) {
      this.settle(attempt)
      this.kernel.log(life.label, `net connect ${address} refused`)
      attempt.resume(Effect.fail(netError("ConnectionRefused", address, `nothing accepts at ${address}`)))
      return
    }
    const port = this.allocatePort(host)
    if (port === undefined) {
      this.settle(attempt)
      attempt.resume(Effect.fail(netError("Other", address, `no free port on ${host.name}`)))
      return
    }
    const link = this.establish(attempt, port, listener)
    this.settle(attempt)
    this.kernel.log(life.label, `net connected ${link.client.localAddress}->${link.server.localAddress}`)
    const acceptor = listener.acceptors[0]
    if (acceptor !== undefined) this.wake(acceptor)
    attempt.resume(Effect.succeed(this.connectionApi(link.client))) // last: the fiber runs inline
  }

  private connectTimedOut(attempt: ConnectAttempt): void {
    attempt.timer = undefined
    if (attempt.settled || !attempt.life.alive) return
    this.settle(attempt)
    this.kernel.log(attempt.life.label, `net connect ${attempt.address} timed out`)
    attempt.resume(Effect.fail(netError("TimedOut", attempt.address, `connect to ${attempt.address} timed out`)))
  }

  private settle(attempt: ConnectAttempt): void {
    attempt.settled = true
    attempt.host.connects.delete(attempt)
  }

  private establish(attempt: ConnectAttempt, clientPort: number, listener: SimListener): Link {
    const clientHost = attempt.host
    const clientAddress = `${clientHost.name}:${clientPort}`
    const client = new Endpoint(clientHost, clientPort, true, attempt.life, attempt.hooks, clientAddress, listener.address)
    const server = new Endpoint(listener.host, listener.port, false, listener.life, listener.hooks, listener.address, clientAddress)
    const link: Link = { client, server }
    client.link = link
    server.link = link
    client.peer = server
    server.peer = client
    client.outbound = server.inbound = new Direction(client, server, this)
    server.outbound = client.inbound = new Direction(server, client, this)
    clientHost.usedPorts.add(clientPort)
    clientHost.endpoints.add(client)
    listener.host.endpoints.add(server)
    listener.backlog.push(server)
    this.links.add(link)
    this.stats.connections++
    return link
  }

  // ---------------------------------------------------------------- connection operations

  private connectionApi(endpoint: Endpoint): Connection {
    const { life, hooks, remoteAddress } = endpoint
    return {
      localAddress: endpoint.localAddress,
      remoteAddress,
      read: Effect.suspend(() => {
        if (!this.permits(life, hooks, "read", remoteAddress)) return Effect.never
        if (endpoint.readers.length === 0) {
          const outcome = this.tryRead(endpoint, true)
          if (outcome !== BLOCKED) return outcome
        }
        return this.perform(endpoint.readers, newWaiter(life), (isHead) => this.tryRead(endpoint, isHead))
      }),
      // Both copy once, so the bytes in flight are the network's own whatever the caller does.
      write: (data: Uint8Array) => Effect.suspend(() => this.writeOwned(endpoint, data)),
      // One write of the joined parts: the peer sees exactly what a single write would deliver.
      writev: (parts: ReadonlyArray<Uint8Array>) => Effect.suspend(() => this.writeOwned(endpoint, parts)),
      shutdownWrite: Effect.suspend(() => {
        if (!this.permits(life, hooks, "shutdownWrite", remoteAddress)) return Effect.never
        const refusal = this.refusal(endpoint)
        if (refusal !== undefined) return refusal
        if (endpoint.writeShut) return Effect.void
        endpoint.writeShut = true
        this.kernel.log(life.label, `net ${endpoint.localAddress}->${remoteAddress} shutdown-write`)
        // The end-of-stream mark queues behind writes still waiting for buffer space.
        const request: WriteRequest = { life, wake: undefined, queued: false, bytes: EMPTY_BYTES, offsetBytes: 0, endOfStream: true }
        return this.perform(endpoint.writers, request, (isHead) => this.tryWrite(endpoint, request, isHead))
      }),
      close: Effect.suspend(() => {
        if (!this.permits(life, hooks, "close", remoteAddress)) return Effect.never
        if (endpoint.state === "dead") return Effect.never
        this.closeEndpoint(endpoint, { reset: false })
        return Effect.void
      })
    }
  }

  /** A write (or writev) of `data`; the network keeps its own copy, made once the write is let through. */
  private writeOwned(endpoint: Endpoint, data: Uint8Array | ReadonlyArray<Uint8Array>): Effect.Effect<void, NetError> {
    const { life, hooks, remoteAddress } = endpoint
    if (!this.permits(life, hooks, "write", remoteAddress)) return Effect.never
    const refusal = this.refusal(endpoint)
    if (refusal !== undefined) return refusal
    if (endpoint.writeShut) return Effect.fail(netError("Closed", remoteAddress, "write after shutdownWrite"))
    const single = data instanceof Uint8Array
    const lengthBytes = single ? data.byteLength : totalBytesOf(data)
    if (lengthBytes === 0) return Effect.void
    // The data digest (DESIGN.md §3), at the write, from the caller's bytes (no extra copy).
    const trace = this.kernel.trace
    if (single) trace.foldBytes(endpoint.foldLabel, data)
    else for (const part of data) trace.foldBytes(endpoint.foldLabel, part)
    const owned = single ? data.slice() : joinParts(data)
    if (endpoint.writers.length === 0 && lengthBytes <= Math.min(CHUNK_BYTES_MAX, SEND_BUFFER_BYTES_MAX - endpoint.outbound.bufferedBytes)) {
      this.append(endpoint.outbound, "data", owned) // the common small write: no waiter
      return Effect.void
    }
    const request: WriteRequest = { life, wake: undefined, queued: false, bytes: owned, offsetBytes: 0, endOfStream: false }
    return this.perform(endpoint.writers, request, (isHead) => this.tryWrite(endpoint, request, isHead))
  }

  /** The error (or hang, for a crashed endpoint) an operation on a finished endpoint meets. */
  private refusal(endpoint: Endpoint): Effect.Effect<never, NetError> | undefined {
    switch (endpoint.state) {
      case "open":
        return undefined
      case "dead":
        return Effect.never
      case "closed":
        return Effect.fail(netError("Closed", endpoint.remoteAddress, "connection closed"))
      case "reset":
        return Effect.fail(netError("ConnectionReset", endpoint.remoteAddress, "connection reset"))
    }
  }

  private tryRead(endpoint: Endpoint, isHead: boolean): Effect.Effect<Uint8Array | undefined, NetError> | Blocked {
    if (endpoint.state === "dead") return BLOCKED // never woken: the crash dropped the waiters
    const refusal = this.refusal(endpoint)
    if (refusal !== undefined) return refusal
    if (!isHead) return BLOCKED
    if (endpoint.inboxBytes > 0) return Effect.succeed(this.takeInbox(endpoint))
    if (endpoint.endOfStream) return EOF
    return BLOCKED
  }

  private tryWrite(endpoint: Endpoint, request: WriteRequest, isHead: boolean): Effect.Effect<void, NetError> | Blocked {
    if (endpoint.state === "dead") return BLOCKED
    const refusal = this.refusal(endpoint)
    if (refusal !== undefined) return refusal
    if (!isHead) return BLOCKED
    const direction = endpoint.outbound
    if (request.endOfStream) {
      this.sendEndOfStream(endpoint)
      return Effect.void
    }
    const bytes = request.bytes
    while (request.offsetBytes < bytes.length) {
      const spaceBytes = SEND_BUFFER_BYTES_MAX - direction.bufferedBytes
      if (spaceBytes <= 0) return BLOCKED
      const sizeBytes = Math.min(spaceBytes, bytes.length - request.offsetBytes, CHUNK_BYTES_MAX)
      this.append(direction, "data", bytes.subarray(request.offsetBytes, request.offsetBytes + sizeBytes))
      request.offsetBytes += sizeBytes
    }
    return Effect.void
  }

  /**
   * close(): both directions end locally. Unread bytes make it a reset for the peer (as a TCP
   * kernel sends RST when a socket closes with unread data); otherwise the peer reads EOF after
   * what was already sent. Writes still waiting for buffer space are dropped.
   */
  private closeEndpoint(endpoint: Endpoint, options: { readonly reset: boolean }): void {
    if (endpoint.state === "closed" || endpoint.state === "dead") return
    const wasOpen = endpoint.state === "open"
    endpoint.state = "closed"
    this.kernel.log(endpoint.life.label, `net ${endpoint.localAddress}->${endpoint.remoteAddress} close`)
    if (wasOpen) {
      const hadUnread = endpoint.inboxBytes > 0
      this.dropInbox(endpoint)
      if (options.reset || hadUnread) this.sendReset(endpoint)
      else this.sendEndOfStream(endpoint)
      endpoint.writeShut = true
    }
    this.finish(endpoint)
    this.wakeAll(endpoint.readers)
    this.wakeAll(endpoint.writers)
  }

  /** An open endpoint breaks: its reads and writes fail ConnectionReset from now on. */
  private resetEndpoint(endpoint: Endpoint, why: string): void {
    if (endpoint.state !== "open") return
    endpoint.state = "reset"
    this.stats.resets++
    this.kernel.log(endpoint.life.label, `net ${endpoint.localAddress}->${endpoint.remoteAddress} reset (${why})`)
    this.dropInbox(endpoint)
    this.clearDirection(endpoint.inbound)
    this.clearDirection(endpoint.outbound)
    this.finish(endpoint)
    this.wakeAll(endpoint.readers)
    this.wakeAll(endpoint.writers)
  }

  private sendEndOfStream(endpoint: Endpoint): void {
    if (endpoint.endOfStreamSent) return
    endpoint.endOfStreamSent = true
    this.append(endpoint.outbound, "eof", undefined)
  }

  /** RST travels like a chunk (after what is in flight, held by partitions). */
  private sendReset(endpoint: Endpoint): void {
    if (endpoint.resetSent) return
    endpoint.resetSent = true
    this.append(endpoint.outbound, "reset", undefined)
  }

  private breakLinks(crosses: (hostA: string, hostB: string) => boolean, why: string): void {
    for (const link of [...this.links]) {
      if (!crosses(link.client.host.name, link.server.host.name)) continue
      this.resetEndpoint(link.client, why)
      this.resetEndpoint(link.server, why)
    }
  }

  /** The endpoint no longer takes part: its port is free and the link retires with its peer. */
  private finish(endpoint: Endpoint): void {
    if (endpoint.finished) return
    endpoint.finished = true
    endpoint.host.endpoints.delete(endpoint)
    if (endpoint.ownsPort) endpoint.host.usedPorts.delete(endpoint.port)
    if (endpoint.peer.finished) {
      this.clearDirection(endpoint.outbound)
      this.clearDirection(endpoint.inbound)
      this.links.delete(endpoint.link)
    }
  }

  // ---------------------------------------------------------------- the byte streams

  private append(direction: Direction, kind: ChunkKind, bytes: Uint8Array | undefined): void {
    const atUs = Math.max(this.kernel.nowUs + this.drawDelayUs(), direction.lastDeliveryUs)
    direction.lastDeliveryUs = atUs
    direction.chunks.push({ kind, bytes, deliverAtUs: atUs })
    if (bytes !== undefined) direction.bufferedBytes += bytes.length
    if (direction.timer === undefined && !this.isBlocked(direction.from.host.name, direction.to.host.name)) {
      direction.timer = this.kernel.setTimer(direction.chunks[direction.head]!.deliverAtUs, direction.deliver, undefined)
    }
  }

  /**
   * The direction's timer: delivers every chunk that is due, in order. The timer has no owner
   * because either side may die; the receiver's state is checked chunk by chunk instead (a
   * crashed receiver's inbound direction is cleared and its timer cancelled).
   */
  deliverDue(direction: Direction): void {
    direction.timer = undefined
    const from = direction.from
    const to = direction.to
    if (this.isBlocked(from.host.name, to.host.name)) return // held until heal re-arms it
    const nowUs = this.kernel.nowUs
    let delivered = false
    while (direction.head < direction.chunks.length) {
      const chunk = direction.chunks[direction.head]!
      if (chunk.deliverAtUs > nowUs) break
      direction.chunks[direction.head] = undefined
      direction.head++
      if (to.state !== "open") {
        this.arriveAtFinished(direction, chunk)
        continue
      }
      switch (chunk.kind) {
        case "data": {
          if (this.chunkFaultsOn && this.kernel.chance(this.faults.breakProbabilityPerChunk)) {
            this.resetEndpoint(to, "break")
            this.resetEndpoint(from, "break")
            return
          }
          const bytes = chunk.bytes!
          to.inbox.push(bytes)
          to.inboxBytes += bytes.length
          this.stats.chunks++
          this.stats.bytes += bytes.length
          delivered = true
          break
        }
        case "eof":
          to.endOfStream = true
          delivered = true
          this.kernel.log(to.life.label, `net ${to.localAddress}<-${to.remoteAddress} eof`)
          break
        case "reset":
          this.resetEndpoint(to, "by peer")
          return
      }
    }
    compactChunks(direction)
    if (delivered) {
      const reader = to.readers[0]
      if (reader !== undefined) this.wake(reader)
    }
    this.armNext(direction)
  }

  /** A chunk reached an endpoint that is closed, reset or dead. */
  private arriveAtFinished(direction: Direction, chunk: Chunk): void {
    if (chunk.kind !== "data") return
    direction.bufferedBytes -= chunk.bytes!.length
    // Data for a socket the application closed: its kernel answers with RST.
    if (direction.to.state === "closed") this.sendReset(direction.to)
  }

  private armNext(direction: Direction): void {
    const next = direction.chunks[direction.head]
    if (next === undefined || direction.timer !== undefined) return
    direction.timer = this.kernel.setTimer(next.deliverAtUs, direction.deliver, undefined)
  }

  /** After a heal: held chunks go out one delay from now, in order, before anything newer. */
  private rearmHeld(): void {
    const nowUs = this.kernel.nowUs
    for (const link of this.links) {
      for (const direction of [link.client.outbound, link.server.outbound]) {
        if (direction.timer !== undefined || direction.head === direction.chunks.length) continue
        if (this.isBlocked(direction.from.host.name, direction.to.host.name)) continue
        const head = direction.chunks[direction.head]!
        if (head.deliverAtUs > nowUs) {
          this.armNext(direction)
          continue
        }
        let heldCount = 0
        for (let i = direction.head; i < direction.chunks.length && direction.chunks[i]!.deliverAtUs <= nowUs; i++) heldCount++
        this.stats.heldChunks += heldCount
        const atUs = nowUs + this.drawDelayUs()
        direction.lastDeliveryUs = Math.max(direction.lastDeliveryUs, atUs)
        direction.timer = this.kernel.setTimer(atUs, direction.deliver, undefined)
      }
    }
  }

  private clearDirection(direction: Direction): void {
    if (direction.timer !== undefined) this.kernel.cancel(direction.timer)
    direction.timer = undefined
    direction.chunks = []
    direction.head = 0
    direction.bufferedBytes = 0
  }

  /** The next available bytes: the head chunk's rest, or small chunks coalesced. */
  private takeInbox(endpoint: Endpoint): Uint8Array {
    const first = endpoint.inbox[endpoint.inboxHead]!
    const firstRestBytes = first.length - endpoint.inboxOffsetBytes
    let result: Uint8Array
    if (firstRestBytes >= READ_BYTES_MAX || endpoint.inboxHead + 1 === endpoint.inbox.length) {
      const sizeBytes = Math.min(firstRestBytes, READ_BYTES_MAX)
      result = first.subarray(endpoint.inboxOffsetBytes, endpoint.inboxOffsetBytes + sizeBytes)
      this.consumeInbox(endpoint, sizeBytes)
    } else {
      result = new Uint8Array(Math.min(endpoint.inboxBytes, READ_BYTES_MAX))
      let filledBytes = 0
      while (filledBytes < result.length) {
        const chunk = endpoint.inbox[endpoint.inboxHead]!
        const sizeBytes = Math.min(chunk.length - endpoint.inboxOffsetBytes, result.length - filledBytes)
        result.set(chunk.subarray(endpoint.inboxOffsetBytes, endpoint.inboxOffsetBytes + sizeBytes), filledBytes)
        filledBytes += sizeBytes
        this.consumeInbox(endpoint, sizeBytes)
      }
    }
    // What the receiver read no longer counts against the sender's buffer.
    const direction = endpoint.inbound
    direction.bufferedBytes -= result.length
    assert(direction.bufferedBytes >= 0, "send buffer accounting went negative")
    const writer = endpoint.peer.writers[0]
    if (writer !== undefined && direction.bufferedBytes < SEND_BUFFER_BYTES_MAX) this.wake(writer)
    return result
  }

  private consumeInbox(endpoint: Endpoint, sizeBytes: number): void {
    endpoint.inboxBytes -= sizeBytes
    endpoint.inboxOffsetBytes += sizeBytes
    if (endpoint.inboxOffsetBytes < endpoint.inbox[endpoint.inboxHead]!.length) return
    endpoint.inbox[endpoint.inboxHead] = undefined
    endpoint.inboxHead++
    endpoint.inboxOffsetBytes = 0
    const compacted = compactQueue(endpoint.inbox, endpoint.inboxHead)
    if (compacted !== undefined) {
      endpoint.inbox = compacted
      endpoint.inboxHead = 0
    }
  }

  private dropInbox(endpoint: Endpoint): void {
    endpoint.inbound.bufferedBytes -= endpoint.inboxBytes
    endpoint.inbox = []
    endpoint.inboxHead = 0
    endpoint.inboxOffsetBytes = 0
    endpoint.inboxBytes = 0
  }

  // ---------------------------------------------------------------- waiting

  /**
   * Runs `attempt` now; when it would block, queues the waiter (FIFO: only the head makes
   * progress, so two writers never interleave their bytes) and suspends until woken, then
   * attempts again. Interruption unregisters the waiter and passes the turn on.
   */
  private perform<A, E, W extends Waiter>(queue: W[], waiter: W, attempt: Attempt<A, E>): Effect.Effect<A, E> {
    const outcome = this.attemptFor(queue, waiter, attempt)
    if (outcome !== BLOCKED) return outcome
    const suspended: Effect.Effect<A, E> = Effect.callback<A, E>((resume) => {
      if (!waiter.life.alive) return
      // Attempt again inside the callback: between queueing and here the fiber may have yielded.
      const again = this.attemptFor(queue, waiter, attempt)
      if (again !== BLOCKED) {
        resume(again)
        return
      }
      waiter.wake = () => resume(suspended)
      return Effect.sync(() => {
        waiter.wake = undefined
        if (waiter.queued) this.leave(queue, waiter)
      })
    })
    return suspended
  }

  private attemptFor<A, E, W extends Waiter>(queue: W[], waiter: W, attempt: Attempt<A, E>): Effect.Effect<A, E> | Blocked {
    const outcome = attempt(queue.length === 0 || queue[0] === waiter)
    if (outcome === BLOCKED) {
      if (!waiter.queued) {
        queue.push(waiter)
        waiter.queued = true
      }
      return BLOCKED
    }
    if (waiter.queued) this.leave(queue, waiter)
    return outcome
  }

  private leave<W extends Waiter>(queue: W[], waiter: W): void {
    waiter.queued = false
    const index = queue.indexOf(waiter)
    if (index < 0) return
    queue.splice(index, 1)
    const next = queue[0]
    if (index === 0 && next !== undefined) this.wake(next) // the turn passes on
  }

  /** Schedules the waiter's retry as a task of its own life (never inline, see the top). */
  private wake(waiter: Waiter): void {
    const retry = waiter.wake
    if (retry === undefined) return // already woken, or not suspended yet (it will attempt again)
    waiter.wake = undefined
    this.kernel.enqueue(() => {
      if (waiter.life.alive) retry()
    }, waiter.life)
  }

  private wakeAll(queue: ReadonlyArray<Waiter>): void {
    for (const waiter of [...queue]) this.wake(waiter)
  }

  // ---------------------------------------------------------------- helpers

  private permits(life: Incarnation, hooks: NetHooks | undefined, operation: string, address: string): boolean {
    if (!life.alive) return false
    if (hooks?.beforeOperation !== undefined && !hooks.beforeOperation(operation, address)) return false
    return life.alive
  }

  private hostState(host: string): HostState {
    let state = this.hosts.get(host)
    if (state === undefined) {
      state = {
        name: host, listeners: new Map(), endpoints: new Set(), connects: new Set(), usedPorts: new Set(), nextPort: EPHEMERAL_PORT_MIN
      }
      this.hosts.set(host, state)
    }
    return state
  }

  /** The next free ephemeral port, round robin (deterministic: no randomness involved). */
  private allocatePort(state: HostState): number | undefined {
    const rangeCount = EPHEMERAL_PORT_MAX - EPHEMERAL_PORT_MIN + 1
    for (let i = 0; i < rangeCount; i++) {
      const port = state.nextPort
      state.nextPort = port === EPHEMERAL_PORT_MAX ? EPHEMERAL_PORT_MIN : port + 1
      if (!state.usedPorts.has(port)) return port
    }
    return undefined
  }

  private drawDelayUs(): number {
    // chance() draws nothing at probability 0: without a tail the stream of draws is as before.
    const [low, high] = this.chunkFaultsOn && this.kernel.chance(this.tailProbability) ? this.tailDelayUs : this.faults.chunkDelayUs
    return low === high ? low : this.kernel.intBetween(low, high)
  }

  private isBlocked(from: string, to: string): boolean {
    if (from === to) return false
    if (this.isolated.size > 0) {
      const sender = this.isolated.get(from)
      if (sender !== undefined && sender.only !== "inbound") return true
      const receiver = this.isolated.get(to)
      if (receiver !== undefined && receiver.only !== "outbound") return true
    }
    if (this.partitions.size === 0 && this.clogs.size === 0) return false
    const key = directionKey(from, to)
    return this.partitions.has(key) || this.clogs.has(key)
  }

  private dropClog(key: string, clog: Clog): void {
    this.kernel.cancel(clog.breakTimer)
    if (clog.clearTimer !== undefined) this.kernel.cancel(clog.clearTimer)
    this.clogs.delete(key)
  }

  private isBlockedEitherWay(a: string, b: string): boolean {
    return this.isBlocked(a, b) || this.isBlocked(b, a)
  }

  private block(from: string, to: string): void {
    const key = directionKey(from, to)
    if (this.partitions.has(key)) return // the older partition's clock keeps running
    const breakTimer = this.kernel.after(this.faults.partitionBreakAfterUs, () => {
      if (this.partitions.get(key)?.breakTimer !== breakTimer) return
      this.breakLinks((x, y) => (x === from && y === to) || (x === to && y === from), "partition")
    }, undefined)
    this.partitions.set(key, { breakTimer })
  }
}

// ------------------------------------------------------------------ state

type EndpointState = "open" | "reset" | "closed" | "dead"
type ChunkKind = "data" | "eof" | "reset"

const BLOCKED: unique symbol = Symbol("blocked")
type Blocked = typeof BLOCKED
type Attempt<A, E> = (isHead: boolean) => Effect.Effect<A, E> | Blocked

const EMPTY_BYTES = new Uint8Array(0)
const EOF: Effect.Effect<undefined> = Effect.succeed(undefined)

interface Waiter {
  readonly life: Incarnation
  /** Set while suspended: resumes the fiber so it attempts again. */
  wake: (() => void) | undefined
  queued: boolean
}

interface WriteRequest extends Waiter {
  readonly bytes: Uint8Array
  offsetBytes: number
  readonly endOfStream: boolean
}

function newWaiter(life: Incarnation): Waiter {
  return { life, wake: undefined, queued: false }
}

/** A crashed life's waiters are forgotten: nothing may resume them. */
function dropWaiters(queue: Waiter[]): void {
  for (const waiter of queue) {
    waiter.wake = undefined
    waiter.queued = false
  }
  queue.length = 0
}

interface Chunk {
  readonly kind: ChunkKind
  readonly bytes: Uint8Array | undefined
  readonly deliverAtUs: number
}

interface Blockade {
  readonly breakTimer: Timer
}

interface Isolation extends Blockade {
  readonly only: "outbound" | "inbound" | undefined
}

interface Clog extends Blockade {
  readonly endUs: number
  clearTimer: Timer | undefined
}

interface HostState {
  readonly name: string
  readonly listeners: Map<number, SimListener>
  /** Open endpoints (client and accepted or not-yet-accepted server sides). */
  readonly endpoints: Set<Endpoint>
  readonly connects: Set<ConnectAttempt>
  readonly usedPorts: Set<number>
  nextPort: number
}

interface ConnectAttempt {
  readonly life: Incarnation
  readonly host: HostState
  readonly hooks: NetHooks | undefined
  readonly address: string
  readonly target: { readonly host: string; readonly port: number }
  /** connect's start plus connectTimeoutUs: TimedOut then. */
  readonly deadlineUs: number
  /** When the last SYN went out, and the interval to the next retransmission. */
  lastSendUs: number
  retransmitUs: number
  timer: Timer | undefined
  readonly resume: (effect: Effect.Effect<Connection, NetError>) => void
  settled: boolean
}

interface Link {
  readonly client: Endpoint
  readonly server: Endpoint
}

class SimListener {
  closed = false
  backlog: (Endpoint | undefined)[] = []
  backlogHead = 0
  readonly acceptors: Waiter[] = []
  constructor(
    readonly host: HostState,
    readonly port: number,
    readonly address: string,
    readonly life: Incarnation,
    readonly hooks: NetHooks | undefined
  ) {}
}

/** One direction of a connection: chunks in flight, ordered by delivery time. */
class Direction {
  chunks: (Chunk | undefined)[] = []
  head = 0
  lastDeliveryUs = 0
  timer: Timer | undefined = undefined
  /** Written and not yet read by the receiver (in flight plus unread): the send buffer. */
  bufferedBytes = 0
  readonly deliver: () => void
  constructor(readonly from: Endpoint, readonly to: Endpoint, net: SimNet) {
    this.deliver = () => net.deliverDue(this)
  }
}

class Endpoint {
  state: EndpointState = "open"
  finished = false
  writeShut = false
  resetSent = false
  endOfStreamSent = false
  /** The peer's end-of-stream arrived: reads return undefined once the inbox is empty. */
  endOfStream = false
  inbox: (Uint8Array | undefined)[] = []
  inboxHead = 0
  inboxOffsetBytes = 0
  inboxBytes = 0
  readonly readers: Waiter[] = []
  readonly writers: WriteRequest[] = []
  /** Names this direction in the data digest. */
  readonly foldLabel: string
  // Wired right after construction, both ends at once.
  link!: Link
  peer!: Endpoint
  outbound!: Direction
  inbound!: Direction
  constructor(
    readonly host: HostState,
    readonly port: number,
    readonly ownsPort: boolean,
    readonly life: Incarnation,
    readonly hooks: NetHooks | undefined,
    readonly localAddress: string,
    readonly remoteAddress: string
  ) {
    this.foldLabel = `net ${localAddress}->${remoteAddress}`
  }
}

function compactChunks(direction: Direction): void {
  const compacted = compactQueue(direction.chunks, direction.head)
  if (compacted !== undefined) {
    direction.chunks = compacted
    direction.head = 0
  }
}

/**
 * A queue kept as an array with a head index: drop the consumed slots once the queue is empty,
 * or once they are many and more than half of it (amortised O(1), bounded garbage). Returns the
 * new array (whose head is 0), or undefined when nothing needs compacting (no allocation).
 */
function compactQueue<T>(items: T[], head: number): T[] | undefined {
  if (head === items.length) return []
  if (head >= QUEUE_COMPACT_SLOTS_MIN && head * 2 > items.length) return items.slice(head)
  return undefined
}

function directionKey(from: string, to: string): string {
  return `${from}\u0000${to}`
}

function netError(reason: NetErrorReason, address: string, message: string): NetError {
  return new NetError({ reason, address, message })
}

function totalBytesOf(parts: ReadonlyArray<Uint8Array>): number {
  let totalBytes = 0
  for (const part of parts) totalBytes += part.byteLength
  return totalBytes
}

/** The parts in one new buffer (also when there is just one: the network keeps its own copy). */
function joinParts(parts: ReadonlyArray<Uint8Array>): Uint8Array {
  const joined = new Uint8Array(totalBytesOf(parts))
  let offsetBytes = 0
  for (const part of parts) {
    joined.set(part, offsetBytes)
    offsetBytes += part.byteLength
  }
  return joined
}
