import { Effect, Schema, Semaphore } from "effect"
import type { Acceptor, AcceptorFailure } from "../acceptor/acceptor.js"
import { type NodeId, type PersistedState, type TenantId, Term, type TimelineId } from "../acceptor/state.js"
import { type WalStorage, WalStorageError } from "../acceptor/wal-storage.js"
import type { Disk, DiskError } from "../io/disk.js"
import { type Log, logDebug, logInfo } from "../io/log.js"
import {
  type AcceptorMessage,
  type AppendRequest,
  type AppendResponse,
  EMPTY_HOT_STANDBY_FEEDBACK,
  type HotStandbyFeedback,
  type ProposerMessage
} from "../protocol/consensus.js"
import type { PageserverFeedback } from "../protocol/pageserver-feedback.js"
import { type RemoteStorage, RemoteStorageError } from "../io/remote-storage.js"
import { formatLsn, Lsn, segmentNoOf, segmentOffsetOf } from "../wal/lsn.js"
import { SegmentStore } from "../wal/segment-store.js"
import { PeerTable } from "./peers.js"
import { segmentObjectPath } from "./remote-layout.js"
import { Watch } from "./watch.js"

/**
 * One timeline on this safekeeper (Neon's `Timeline`, `timeline.rs`): its acceptor, its WAL
 * storage for readers, and the shared state that connections watch. Push connections feed
 * the acceptor (which serializes them: one request at a time); any number of senders read
 * WAL and wait on `positions` for commit_lsn or flush_lsn to move, never polling.
 */
export interface TimelineKey {
  readonly tenantId: TenantId
  readonly timelineId: TimelineId
}

export const timelineKeyText = (key: TimelineKey): string => `${key.tenantId}/${key.timelineId}`

/** What readers wait on; republished after every acceptor request. */
export interface TimelinePositions {
  readonly term: Term
  readonly lastLogTerm: Term
  readonly flushLsn: Lsn
  /** In-memory commit_lsn (what senders stream up to). */
  readonly commitLsn: Lsn
  readonly remoteConsistentLsn: Lsn
  /** In-memory backup_lsn: everything below it is in object storage. */
  readonly backupLsn: Lsn
  /** Set once the acceptor fail-stopped: waiters must give up. */
  readonly stopped: boolean
}

export type WalSenderKind = "pageserver" | "standby" | "peer"

/** What one START_REPLICATION consumer reported (Neon's `WalSenderState`). */
export interface WalSenderState {
  readonly id: number
  readonly applicationName: string
  readonly kind: WalSenderKind
  readonly startLsn: Lsn
  sentLsn: Lsn
  /** Standby status 'r': write/flush/apply, kept as a monotonic max (0 = not reported). */
  writeLsn: Lsn
  flushLsn: Lsn
  applyLsn: Lsn
  hotStandby: HotStandbyFeedback
  pageserverFeedback: PageserverFeedback | undefined
}

export interface WalReceiverState {
  readonly id: number
  status: "Voting" | "Streaming"
}

/** The last pageserver feedback heard, with a sequence number so writers notice each new one. */
export interface FeedbackBroadcast {
  readonly sequence: number
  readonly feedback: PageserverFeedback | undefined
}

export class UnevictError extends Schema.TaggedError<UnevictError>()("UnevictError", {
  message: Schema.String
}) {}

/** What bringing an evicted timeline back can fail with. */
export type UnevictFailure = UnevictError | RemoteStorageError | AcceptorFailure

/** What reading WAL can fail with: local storage, or object storage for a removed segment. */
export type WalReadFailure = WalStorageError | DiskError | RemoteStorageError

export class Timeline {
  readonly positions: Watch<TimelinePositions>
  readonly pageserverFeedback = Watch.make<FeedbackBroadcast>({ sequence: 0, feedback: undefined })
  private readonly senders = new Map<number, WalSenderState>()
  private readonly receivers = new Map<number, WalReceiverState>()
  private nextConsumerId = 1
  /** What the broker said about this timeline's safekeepers (this one included). */
  readonly peers = new PeerTable()
  /** Set by the manager: backup needed, computes connected, or the pageserver behind (published to the broker). */
  active = false
  /** Snapshots in progress hold WAL removal (pull_timeline). */
  walRemovalHolds = 0
  /** The highest segment removed from local disk in this life (Neon's last_removed_segno). */
  lastRemovedSegmentNo = 0

  /** Object storage, when configured: readers get removed segments from it (on-demand download). */
  readonly remote: RemoteStorage["Service"] | undefined
  readonly noSync: boolean
  private currentAcceptor: Acceptor
  private currentWal: WalStorage
  /** Serializes eviction, un-eviction and the taking of residence guards. */
  readonly residenceLock = Semaphore.makeUnsafe(1)
  /** Residence guards held (pushes, replication, peer recovery): eviction waits for none. */
  residenceGuards = 0
  /** Brings an evicted timeline back (installed by the manager, which owns eviction). */
  unevictor: ((timeline: Timeline) => Effect.Effect<void, UnevictFailure, Disk | Log>) | undefined

  constructor(
    readonly key: TimelineKey,
    readonly directory: string,
    readonly nodeId: NodeId,
    acceptor: Acceptor,
    wal: WalStorage,
    options: { readonly noSync: boolean; readonly remote?: RemoteStorage["Service"] } = { noSync: false }
  ) {
    this.currentAcceptor = acceptor
    this.currentWal = wal
    this.noSync = options.noSync
    this.remote = options.remote
    this.positions = Watch.make(this.currentPositions())
  }

  get acceptor(): Acceptor {
    return this.currentAcceptor
  }

  get wal(): WalStorage {
    return this.currentWal
  }

  /** Offloaded: evicted, with WAL in object storage only. */
  get isOffloaded(): boolean {
    return this.currentAcceptor.persistedState().evictionState._tag === "Offloaded"
  }

  /**
   * Replaces the acceptor and its storage (eviction and un-eviction, under residenceLock, with
   * the control file already saying which it is). The old storage is closed.
   */
  replaceStorage(acceptor: Acceptor, wal: WalStorage): Effect.Effect<void> {
    const previous = this.currentWal
    this.currentAcceptor = acceptor
    this.currentWal = wal
    this.publish()
    return previous === wal ? Effect.void : previous.close
  }

  /**
   * Runs `effect` with the timeline resident (Neon's residence guard): an evicted timeline is
   * brought back first (download, verify, durable rename), and it cannot be evicted until
   * `effect` ends. Every WAL user takes one: pushes, replication, peer recovery.
   */
  withResidence<A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | UnevictFailure, R | Disk | Log> {
    const acquire = this.residenceLock.withPermit(Effect.gen({ self: this }, function* () {
      if (this.isOffloaded) {
        if (this.unevictor === undefined) {
          return yield* new UnevictError({ message: `timeline ${timelineKeyText(this.key)} is evicted and no object storage is configured to bring it back` })
        }
        yield* this.unevictor(this)
      }
      this.residenceGuards++
    }))
    return Effect.acquireUseRelease(acquire, () => effect, () => Effect.sync(() => this.residenceGuards--))
  }

  get segmentSizeBytes(): number {
    return this.acceptor.persistedState().server.walSegSizeBytes
  }

  get persisted(): PersistedState {
    return this.acceptor.persistedState()
  }

  /** One proposer message, flushed before its reply (greeting, vote, elected, append). */
  handle(message: ProposerMessage): Effect.Effect<AcceptorMessage | undefined, AcceptorFailure, Disk> {
    return this.published(this.acceptor.handle(message)).pipe(Effect.map((reply) => this.withFeedback(reply)))
  }

  /** An append written without fsync (the receive pipeline batches fsyncs, reference §8). */
  appendNoFlush(request: AppendRequest): Effect.Effect<AppendResponse | undefined, AcceptorFailure, Disk> {
    return this.published(this.acceptor.appendNoFlush(request)).pipe(Effect.map((reply) => this.withFeedback(reply)))
  }

  /** fsync what was written and report (Neon's FlushWAL). */
  readonly flush: Effect.Effect<AppendResponse, AcceptorFailure, Disk> = Effect.suspend(() =>
    this.published(this.acceptor.flush).pipe(Effect.map((reply) => this.withFeedback(reply)))
  )

  /**
   * The control file's commit_lsn trails the in-memory one (it moves without fsync). Neon's
   * manager persists it once it runs a segment ahead (reference §6); so do we, and whenever a
   * push ends, so a restart does not fall far behind what readers were already shown.
   */
  persistInMemoryIf(when: "SegmentAhead" | "Always"): Effect.Effect<void, AcceptorFailure, Disk> {
    return Effect.suspend(() => {
      const { inMemory, persisted } = this.acceptor.snapshot()
      const ahead = inMemory.commitLsn - persisted.commitLsn
      // The periodic save (reference §6) runs when any in-memory value moved, not only commit.
      const dirty = ahead > 0 || inMemory.backupLsn > persisted.backupLsn ||
        inMemory.remoteConsistentLsn > persisted.remoteConsistentLsn || inMemory.peerHorizonLsn > persisted.peerHorizonLsn
      if (when === "Always" ? !dirty : ahead < this.segmentSizeBytes) return Effect.void
      return Effect.uninterruptible(this.published(this.acceptor.persistInMemory))
    })
  }

  /**
   * Raises the in-memory backup_lsn once the objects below it are durable in object storage
   * (never lowered; persisted with the next control-file save, or at once when it runs a
   * segment ahead of the control file, as peer info is).
   */
  recordBackupLsn(backupLsn: Lsn): Effect.Effect<void, AcceptorFailure, Disk> {
    return Effect.suspend(() => {
      if (backupLsn <= this.acceptor.snapshot().inMemory.backupLsn) return Effect.void
      return this.applyPeerInfo({ commitLsn: 0, lastLogTerm: this.acceptor.lastLogTerm(), backupLsn, remoteConsistentLsn: 0, peerHorizonLsn: 0 })
    })
  }

  /**
   * Neon's `record_safekeeper_info`: a peer's info from the broker may raise commit_lsn (same
   * last_log_term), backup_lsn, remote_consistent_lsn and peer_horizon_lsn.
   */
  applyPeerInfo(info: { readonly commitLsn: number; readonly lastLogTerm: number; readonly backupLsn: number; readonly remoteConsistentLsn: number; readonly peerHorizonLsn: number }): Effect.Effect<void, AcceptorFailure, Disk> {
    return this.published(this.acceptor.applyPeerInfo({
      commitLsn: Lsn(info.commitLsn),
      lastLogTerm: Term(info.lastLogTerm),
      backupLsn: Lsn(info.backupLsn),
      remoteConsistentLsn: Lsn(info.remoteConsistentLsn),
      peerHorizonLsn: Lsn(info.peerHorizonLsn)
    }))
  }

  /** A durable change of the control file by a background task (partial backup, eviction). */
  modifyPersisted(modify: (draft: PersistedState) => PersistedState): Effect.Effect<void, AcceptorFailure, Disk> {
    return Effect.uninterruptible(this.published(this.acceptor.modifyPersisted(modify)))
  }

  /**
   * WAL bytes [startLsn, startLsn + length) from local disk; shorter at a segment end. A segment
   * removed from local disk but below backup_lsn (so in object storage, whole) is read from
   * there instead: a lagging peer or pageserver, or a START_REPLICATION from far back, gets it
   * transparently (on-demand download).
   */
  read(startLsn: Lsn, lengthBytes: number): Effect.Effect<Uint8Array, WalReadFailure, Log> {
    // Suspended: the storage is the one current when the read runs (eviction replaces it).
    return Effect.suspend(() => this.wal.read(startLsn, lengthBytes)).pipe(
      Effect.catchIf((error) => this.isRemoved(error, startLsn), () => this.readRemoved(startLsn, lengthBytes))
    )
  }

  /**
   * `read` into a new buffer with `headroomBytes` free in front (a frame's headers): the
   * segment store reads in place; other storage, and object storage, is copied.
   */
  readWithHeadroom(startLsn: Lsn, lengthBytes: number, headroomBytes: number): Effect.Effect<Uint8Array, WalReadFailure, Log> {
    return Effect.suspend(() => this.readWithHeadroomNow(startLsn, lengthBytes, headroomBytes))
  }

  private readWithHeadroomNow(startLsn: Lsn, lengthBytes: number, headroomBytes: number): Effect.Effect<Uint8Array, WalReadFailure, Log> {
    const wal = this.wal
    const copied = Effect.map(this.read(startLsn, lengthBytes), (data) => {
      const frame = new Uint8Array(headroomBytes + data.byteLength)
      frame.set(data, headroomBytes)
      return frame
    })
    if (!(wal instanceof SegmentStore)) return copied
    return wal.readWithHeadroom(startLsn, lengthBytes, headroomBytes).pipe(
      Effect.catchIf((error) => this.isRemoved(error, startLsn), () => copied)
    )
  }

  /**
   * A segment missing below the persisted commit_lsn's was removed (WAL removal never goes
   * that far up; above it a missing segment is a broken disk, and stays a DiskError).
   */
  private isRemoved(error: WalReadFailure, startLsn: Lsn): boolean {
    return error._tag === "DiskError" && error.reason === "NotFound" &&
      segmentNoOf(startLsn, this.segmentSizeBytes) < segmentNoOf(this.persisted.commitLsn, this.segmentSizeBytes)
  }

  /** A removed segment: from object storage when it is there whole (below backup_lsn), else refused. */
  private readRemoved(startLsn: Lsn, lengthBytes: number): Effect.Effect<Uint8Array, WalReadFailure, Log> {
    const segmentNo = segmentNoOf(startLsn, this.segmentSizeBytes)
    const fields = { timeline: timelineKeyText(this.key), segment: segmentNo, lsn: formatLsn(startLsn) }
    if (this.remote !== undefined && segmentNo < segmentNoOf(this.acceptor.snapshot().inMemory.backupLsn, this.segmentSizeBytes)) {
      return Effect.andThen(logDebug("wal read from object storage", fields), this.readRemote(startLsn, lengthBytes))
    }
    return Effect.andThen(
      logInfo("wal read refused: segment removed", fields),
      Effect.fail(new WalStorageError({ reason: "Removed", message: `requested WAL segment ${segmentNo} (at ${formatLsn(startLsn)}) has already been removed` }))
    )
  }

  private readRemote(startLsn: Lsn, lengthBytes: number): Effect.Effect<Uint8Array, RemoteStorageError> {
    const remote = this.remote
    if (remote === undefined) return Effect.fail(new RemoteStorageError({ reason: "NotFound", operation: "get", path: "", message: "no remote storage" }))
    const segmentSizeBytes = this.segmentSizeBytes
    const segmentNo = segmentNoOf(startLsn, segmentSizeBytes)
    const offset = segmentOffsetOf(startLsn, segmentSizeBytes)
    const length = Math.min(lengthBytes, segmentSizeBytes - offset)
    const path = segmentObjectPath(this.key, segmentNo, segmentSizeBytes)
    return remote.get(path, { startBytes: offset, endBytes: offset + length }).pipe(
      Effect.flatMap((bytes) =>
        bytes.length === length
          ? Effect.succeed(bytes)
          : Effect.fail(new RemoteStorageError({ reason: "Permanent", operation: "get", path, message: `object holds ${bytes.length} bytes at ${offset}, expected ${length}: not a whole segment` }))
      )
    )
  }

  /** Removes local segments ≤ `segmentNo` (the manager, below the removal horizon). */
  removeWalUpTo(segmentNo: number): Effect.Effect<void, WalStorageError | DiskError> {
    return Effect.map(this.wal.removeUpTo(segmentNo), () => {
      if (segmentNo > this.lastRemovedSegmentNo) this.lastRemovedSegmentNo = segmentNo
    })
  }

  // ---- consumers ----

  registerSender(init: { readonly applicationName: string; readonly kind: WalSenderKind; readonly startLsn: Lsn }): WalSenderState {
    const state: WalSenderState = {
      id: this.nextConsumerId++,
      ...init,
      sentLsn: init.startLsn,
      writeLsn: Lsn(0),
      flushLsn: Lsn(0),
      applyLsn: Lsn(0),
      hotStandby: EMPTY_HOT_STANDBY_FEEDBACK,
      pageserverFeedback: undefined
    }
    this.senders.set(state.id, state)
    return state
  }

  unregisterSender(id: number): void {
    this.senders.delete(id)
  }

  registerReceiver(): WalReceiverState {
    const state: WalReceiverState = { id: this.nextConsumerId++, status: "Voting" }
    this.receivers.set(state.id, state)
    return state
  }

  unregisterReceiver(id: number): void {
    this.receivers.delete(id)
  }

  walSenders(): ReadonlyArray<WalSenderState> {
    return [...this.senders.values()]
  }

  walReceivers(): ReadonlyArray<WalReceiverState> {
    return [...this.receivers.values()]
  }

  /**
   * Pageserver feedback ('z'): recorded on its sender, remote_consistent_lsn raised (never
   * lowered: the acceptor keeps the max), and broadcast so push connections re-send their last
   * AppendResponse with it attached.
   */
  recordPageserverFeedback(sender: WalSenderState, feedback: PageserverFeedback): Effect.Effect<void, AcceptorFailure, Disk> {
    sender.pageserverFeedback = feedback
    const remoteConsistentLsn = Lsn(feedback.remoteConsistentLsn)
    const raise = remoteConsistentLsn > this.acceptor.snapshot().inMemory.remoteConsistentLsn
      ? this.acceptor.applyPeerInfo({
        commitLsn: Lsn(0),
        lastLogTerm: this.acceptor.lastLogTerm(),
        backupLsn: Lsn(0),
        remoteConsistentLsn,
        peerHorizonLsn: Lsn(0)
      })
      : Effect.void
    return this.published(raise).pipe(
      Effect.tap(() =>
        Effect.sync(() => {
          const previous = this.pageserverFeedback.get()
          this.pageserverFeedback.set({ sequence: previous.sequence + 1, feedback })
        })
      )
    )
  }

  /**
   * Hot standby feedback aggregated over standby senders, as Neon's `timeline.rs` does: the
   * minimum non-zero xmin and catalog_xmin, the latest timestamp.
   */
  hotStandbyFeedback(): HotStandbyFeedback {
    let tsUs = 0
    let xmin = 0n
    let catalogXmin = 0n
    for (const sender of this.senders.values()) {
      if (sender.kind !== "standby") continue
      const feedback = sender.hotStandby
      if (feedback.tsUs > tsUs) tsUs = feedback.tsUs
      if (feedback.xmin !== 0n && (xmin === 0n || feedback.xmin < xmin)) xmin = feedback.xmin
      if (feedback.catalogXmin !== 0n && (catalogXmin === 0n || feedback.catalogXmin < catalogXmin)) catalogXmin = feedback.catalogXmin
    }
    return { tsUs, xmin, catalogXmin }
  }

  /** Republishes positions after an acceptor call, whatever its outcome. */
  private published<A, E>(effect: Effect.Effect<A, E, Disk>): Effect.Effect<A, E, Disk> {
    return Effect.ensuring(effect, Effect.sync(() => this.publish()))
  }

  publish(): void {
    const next = this.currentPositions()
    const previous = this.positions.get()
    if (next.term !== previous.term || next.lastLogTerm !== previous.lastLogTerm || next.flushLsn !== previous.flushLsn ||
      next.commitLsn !== previous.commitLsn || next.remoteConsistentLsn !== previous.remoteConsistentLsn ||
      next.backupLsn !== previous.backupLsn || next.stopped !== previous.stopped) {
      this.positions.set(next)
    }
  }

  private currentPositions(): TimelinePositions {
    const acceptor = this.acceptor
    return {
      term: acceptor.term(),
      lastLogTerm: acceptor.lastLogTerm(),
      flushLsn: acceptor.flushLsn(),
      commitLsn: acceptor.commitLsn(),
      remoteConsistentLsn: acceptor.snapshot().inMemory.remoteConsistentLsn,
      backupLsn: acceptor.snapshot().inMemory.backupLsn,
      stopped: acceptor.stoppedReason() !== undefined
    }
  }

  private withFeedback<M extends AcceptorMessage | undefined>(reply: M): M {
    if (reply === undefined || reply._tag !== "AppendResponse") return reply
    const hsFeedback = this.hotStandbyFeedback()
    return (hsFeedback.tsUs === 0 && hsFeedback.xmin === 0n && hsFeedback.catalogXmin === 0n ? reply : { ...reply, hsFeedback }) as M
  }
}
