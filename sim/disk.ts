import { Effect } from "effect"
import { assert } from "../core/assert.js"
import { Disk, DiskError, type DirectoryEntry, type DiskErrorReason, type DiskFile, type OpenOptions } from "../core/io/disk.js"
import { FILE_SIZE_BYTES_MAX, isAllZero, PAGE_SIZE_BYTES, PagedContent, SlabCopier } from "./disk-content.js"
import type { Incarnation, Kernel } from "./kernel.js"

/**
 * The simulated disk of one node: a file system with a page cache that a crash can lose
 * (DESIGN.md §5). Every file keeps a durable content, the writes not yet synced (each with its
 * own copy of the bytes) and the current view (durable content with the unsynced operations
 * applied in issue order). Every directory keeps a durable namespace and a log of pending
 * metadata operations. `sync` makes a file's earlier operations durable; `syncDirectory` makes
 * a directory's earlier metadata operations durable; `crash` decides what the rest became.
 *
 * Choices (the durability claims of the system are tested against them):
 * - Operations take effect at call time (reads see them at once, as from a page cache); latency
 *   only delays the caller's resumption. A sync snapshots at call time and makes that snapshot
 *   durable when its latency has passed, unless the caller died meanwhile.
 * - `sync` and `datasync` are the same here: both make the file's data and size durable (Linux
 *   makes size changes durable on fdatasync). Neither makes the file's name durable: that is the
 *   parent directory's `syncDirectory` (POSIX; ext4 is kinder, we are not).
 * - A failed file sync (EIO or ENOSPC) is a failed writeback of the file's dirty pages, as on
 *   Linux since 4.13 (errseq_t; PostgreSQL's "fsyncgate"): the writes it was flushing are no
 *   longer dirty and will never be written (after a crash they are gone, and so is the size
 *   they added). With `lostPages` "readable-until-crash" (Linux) reads keep returning them from
 *   the page cache until the next crash, also to a restarted process after a clean exit, so a
 *   reader sees what it wrote, which is why a failed fsync must never be retried as if it could
 *   succeed; with "evicted" (the default for now) reads show the durable content again at once.
 *   Truncations are inode metadata, not pages: they stay pending. Writes issued while the
 *   failing sync was in flight stay dirty. The error is reported once to every descriptor open
 *   on the file at the time: the failing one now, each other one at its next sync (which still
 *   writes back what is dirty, then fails); later syncs on a descriptor that saw it succeed as
 *   if nothing was lost, and a descriptor opened after the failure never sees it. Any injected
 *   sync failure counts as a writeback error, even with nothing dirty. A failed
 *   `syncDirectory` leaves its operations pending.
 * - Rename within one directory is one atomic metadata operation of that directory. A rename
 *   across directories is two: linking the new name (durable with the destination directory)
 *   and removing the old name (durable with the source directory). At a crash the removal
 *   survives only if the link survives, and a file or directory reachable by two names keeps
 *   the newer one (what fsck does with a half-done rename), so a crash never duplicates a
 *   directory; it loses a file only if the source directory was synced and the destination
 *   was not.
 * - Crash, per directory, with `metadataCrashModel` "prefix" (the default, ext4-like): a random
 *   prefix of its pending metadata log survives (so a later operation never survives without
 *   the earlier ones of that directory). With "any-subset" each pending operation survives on
 *   its own (at a rate drawn per crash), except that an operation needs the earlier pending
 *   operations of its directory that touched one of its names (per name, a prefix survives: a
 *   create that reuses a name needs the unlink or rename that freed it, and a rename within a
 *   directory needs the create of its source). A rename across directories whose create did
 *   not survive still links the file under its new name (a create only names a node; the
 *   node's data is the file's own business), which is the state "create then rename" would
 *   leave. In both models the removal half of a rename across directories needs its link
 *   half. Whatever is no longer reachable from the root is gone (files in an undone mkdir, and
 *   in a directory whose rmdir survived while removals inside it did not, go with it).
 * - Crash, per file: each unsynced write survives independently, whole or torn at 512-byte
 *   sector boundaries (aligned to the absolute offset): to a prefix, or, in half the crashes,
 *   to any subset of its sectors; and survivors are applied in a random order; truncations are
 *   file metadata: a random prefix of them survives, and a surviving write issued before a
 *   surviving truncation is cut by it. The survival and tearing rates are drawn per crash, so
 *   some crashes keep almost everything and some almost nothing.
 * - ENOSPC from `capacityBytes` counts the current sizes of linked files (an unlinked file
 *   frees its space at once, even while open).
 */
export interface DiskFaults {
  /** Latency of writes, truncations and metadata operations, per operation, uniform. */
  readonly writeLatencyUs: readonly [number, number]
  /** Latency of sync, datasync and syncDirectory, uniform. */
  readonly fsyncLatencyUs: readonly [number, number]
  readonly eioOnWriteProbability: number
  readonly eioOnFsyncProbability: number
  readonly enospcOnWriteProbability: number
  /** A file fsync failing ENOSPC (thin provisioning, NFS): like EIO, its unsynced pages are gone. */
  readonly enospcOnFsyncProbability: number
  /** ENOSPC when the live bytes (current sizes of linked files) would exceed it. */
  readonly capacityBytes: number | undefined
  /** Which unsynced metadata operations a crash keeps (see above); "prefix" when absent. */
  readonly metadataCrashModel?: MetadataCrashModel
  /**
   * What reads return of the writes a failed fsync lost (see above); "evicted" when absent.
   * "readable-until-crash" is Linux; it is not the default yet because it exposes a start-up
   * bug in the acceptor-storage and append-log scenarios (a restarted life trusts, and reports
   * as flushed, bytes it reads back from a file whose fsync failed).
   */
  readonly lostPages?: LostPagesModel
}

export type LostPagesModel = "evicted" | "readable-until-crash"

export type MetadataCrashModel = "prefix" | "any-subset"

export const NO_DISK_FAULTS: DiskFaults = {
  writeLatencyUs: [0, 0],
  fsyncLatencyUs: [0, 0],
  eioOnWriteProbability: 0,
  eioOnFsyncProbability: 0,
  enospcOnWriteProbability: 0,
  enospcOnFsyncProbability: 0,
  capacityBytes: undefined,
  metadataCrashModel: "prefix",
  lostPages: "evicted"
}

export const SECTOR_SIZE_BYTES = 512
export { FILE_SIZE_BYTES_MAX } from "./disk-content.js"
assert(PAGE_SIZE_BYTES % SECTOR_SIZE_BYTES === 0, "pages hold whole sectors")

export interface DiskHooks {
  /** Called before each operation; false means the world crashed the node right here. */
  beforeOperation?(operation: string, path: string): boolean
}

export interface DiskStats {
  operations: number
  bytesWritten: number
  fsyncs: number
  tornWrites: number
  droppedWrites: number
  undoneMetadata: number
  /** Injected EIO/ENOSPC, and ENOSPC from `capacityBytes`. */
  injectedErrors: number
}

export class SimDisk {
  readonly stats: DiskStats = {
    operations: 0,
    bytesWritten: 0,
    fsyncs: 0,
    tornWrites: 0,
    droppedWrites: 0,
    undoneMetadata: 0,
    injectedErrors: 0
  }
  private root = new DirectoryNode()
  /** Orders every mutation of this disk; syncs snapshot it. Never reset. */
  private sequence = 1
  /** Bumped by crash and wipe: services and handles from before go silent. */
  private epoch = 0
  private liveBytes = 0
  /** Files and directories with pending operations, in first-dirtied order (deterministic). */
  private readonly dirtyFiles = new Set<FileNode>()
  private readonly dirtyDirectories = new Set<DirectoryNode>()
  /** Unsynced writes keep their own copy of the caller's bytes (the caller may reuse its buffer). */
  private readonly copies = new SlabCopier()

  constructor(readonly kernel: Kernel, readonly name: string, private faultsNow: DiskFaults) {
    checkFaults(faultsNow)
  }

  get faults(): DiskFaults {
    return this.faultsNow
  }

  /** Changes the fault mix mid-run (a scenario's liveness phase turns errors off). */
  setFaults(faults: DiskFaults): void {
    checkFaults(faults)
    this.faultsNow = faults
  }

  /** The Disk service for one node life. */
  service(life: Incarnation, hooks?: DiskHooks): Disk["Service"] {
    const caller: Caller = { life, epoch: this.epoch, hooks }
    return Disk.of({
      open: (path, options) => this.run(caller, "open", normalizePath(path), (p) => this.open(caller, p, options ?? {})),
      readFile: (path) => this.run(caller, "readFile", normalizePath(path), (p) => this.readWhole(p)),
      rename: (from, to) => this.run(caller, "rename", normalizePath(from), (p) => this.rename(caller, p, normalizePath(to))),
      unlink: (path) => this.run(caller, "unlink", normalizePath(path), (p) => this.unlink(caller, p)),
      mkdir: (path) => this.run(caller, "mkdir", normalizePath(path), (p) => this.mkdir(caller, p)),
      rmdir: (path) => this.run(caller, "rmdir", normalizePath(path), (p) => this.rmdir(caller, p)),
      list: (path) => this.run(caller, "list", normalizePath(path), (p) => this.list(p)),
      stat: (path) => this.run(caller, "stat", normalizePath(path), (p) => this.stat(p)),
      syncDirectory: (path) => this.syncDirectory(caller, normalizePath(path))
    })
  }

  /** kill -9 / power loss: apply the crash model to what was not durable. */
  crash(): void {
    this.epoch++
    const before = { ...this.stats }
    this.crashMetadata()
    const reachableFiles = this.repairNamespace()
    // Rates per crash (swarm style): some crashes keep almost everything, some almost nothing.
    const survivalProbability = this.kernel.nextFloat()
    const tornProbability = this.kernel.nextFloat()
    // Half the crashes tear writes into scattered sectors (a device that reorders sectors of one
    // write), the others into a prefix (the common case); both are allowed by DESIGN.md §5.
    const scatteredTears = this.kernel.chance(0.5)
    for (const file of this.dirtyFiles) {
      if (reachableFiles.has(file)) this.crashFile(file, survivalProbability, tornProbability, scatteredTears)
    }
    this.dirtyFiles.clear()
    this.liveBytes = 0
    for (const file of reachableFiles) this.liveBytes += file.current.sizeBytes
    const dropped = this.stats.droppedWrites - before.droppedWrites
    const torn = this.stats.tornWrites - before.tornWrites
    const undone = this.stats.undoneMetadata - before.undoneMetadata
    this.kernel.log(this.name, `disk crash dropped=${dropped} torn=${torn} undone=${undone}`)
  }

  /** Whole-disk loss: the node comes back empty. */
  wipe(): void {
    this.epoch++
    this.root = new DirectoryNode()
    this.dirtyFiles.clear()
    this.dirtyDirectories.clear()
    this.liveBytes = 0
    this.kernel.log(this.name, "disk wipe")
  }

  /** The current (not necessarily durable) content of a file, or undefined. */
  readFileNow(path: string): Uint8Array | undefined {
    const node = this.lookup("inspect", normalizePath(path))
    return node instanceof FileNode ? node.current.read(0, node.current.sizeBytes) : undefined
  }

  /** Names in a directory of the current view, sorted; empty when it is not a directory. */
  listNow(dir: string): string[] {
    const node = this.lookup("inspect", normalizePath(dir))
    return node instanceof DirectoryNode ? [...node.current.keys()].sort(compareNames) : []
  }

  /** Bytes held by linked files in the current view (what `capacityBytes` limits). */
  get liveBytesNow(): number {
    return this.liveBytes
  }

  // ---------------------------------------------------------------- effect glue

  /**
   * One operation: liveness check, hook, the action at call time, then resumption after the
   * latency the action asked for. A dead caller (or a hook that crashed the node) gets an
   * effect that never resumes and the action never runs.
   */
  private run<A>(caller: Caller, operation: string, path: string, act: (path: string) => Outcome<A>): Effect.Effect<A, DiskError> {
    return Effect.suspend(() => {
      if (!this.admit(caller, operation, path)) return Effect.never
      const outcome = act(path)
      const result: Effect.Effect<A, DiskError> = outcome.error === undefined ? Effect.succeed(outcome.value) : Effect.fail(outcome.error)
      if (outcome.delayUs === 0) return result
      return this.resumeAfter(caller, outcome.delayUs, () => result)
    })
  }

  private admit(caller: Caller, operation: string, path: string): boolean {
    if (!this.isCurrent(caller)) return false
    const hook = caller.hooks?.beforeOperation
    if (hook !== undefined && !hook(operation, path)) return false
    if (!this.isCurrent(caller)) return false
    this.stats.operations++
    return true
  }

  private isCurrent(caller: Caller): boolean {
    return caller.life.alive && caller.epoch === this.epoch
  }

  /**
   * Resumes the caller after `delayUs` with what `finish` returns. The timer belongs to the
   * caller's life and checks liveness again, because Effect 4 runs the fiber inline inside
   * `resume`: `finish` does all state changes first and nothing touches state after resume.
   */
  private resumeAfter<A>(caller: Caller, delayUs: number, finish: () => Effect.Effect<A, DiskError>): Effect.Effect<A, DiskError> {
    return Effect.callback<A, DiskError>((resume) => {
      this.kernel.after(delayUs, () => {
        if (!this.isCurrent(caller)) return
        resume(finish())
      }, caller.life)
    })
  }

  private draw(range: readonly [number, number]): number {
    return range[0] === range[1] ? range[0] : this.kernel.intBetween(range[0], range[1])
  }

  private log(caller: Caller, event: string): void {
    this.kernel.log(caller.life.label, event)
  }

  private fail(caller: Caller | undefined, reason: DiskErrorReason, operation: string, path: string, message: string): Outcome<never> {
    if (caller !== undefined) this.log(caller, `disk ${operation} ${path} ${reason}`)
    return { error: new DiskError({ reason, operation, path, message }), value: undefined, delayUs: 0 }
  }

  private ok<A>(value: A, delayUs = 0): Outcome<A> {
    return { error: undefined, value, delayUs }
  }

  // ---------------------------------------------------------------- files

  private open(caller: Caller, path: string, options: OpenOptions): Outcome<DiskFile> {
    const at = this.resolveParent("open", path)
    if (at instanceof DiskError) return { error: at, value: undefined, delayUs: 0 }
    if (at === "root") return this.fail(undefined, "IsADirectory", "open", path, "the root is a directory")
    const link = at.parent.current.get(at.name)
    if (link !== undefined) {
      if (options.create === true && options.exclusive === true) return this.fail(undefined, "AlreadyExists", "open", path, "exists")
      if (link.node instanceof DirectoryNode) return this.fail(undefined, "IsADirectory", "open", path, "is a directory")
      return this.ok(this.handle(caller, path, link.node))
    }
    if (options.create !== true) return this.fail(undefined, "NotFound", "open", path, "no such file")
    const file = new FileNode()
    this.addMetadata(at.parent, [[at.name, { node: file, sequence: this.sequence }]], undefined)
    this.log(caller, `disk create ${path}`)
    return this.ok(this.handle(caller, path, file), this.draw(this.faultsNow.writeLatencyUs))
  }

  private handle(caller: Caller, path: string, file: FileNode): DiskFile {
    let closed = false
    // errseq_sample at open: a writeback error from before this open is not this descriptor's.
    const descriptor: Descriptor = { seenErrorSequence: file.errorSequence }
    const foldLabel = `disk ${this.name}:${path}`
    const ifOpen = <A>(operation: string, act: () => Outcome<A>) => (): Outcome<A> =>
      closed ? this.fail(undefined, "Closed", operation, path, "the handle is closed") : act()
    return {
      path,
      read: (offsetBytes, length) =>
        this.run(caller, "read", path, ifOpen("read", () => {
          assertByteCount(offsetBytes, "read offset")
          assertByteCount(length, "read length")
          return this.ok(file.current.read(offsetBytes, length))
        })),
      write: (offsetBytes, data) => this.run(caller, "write", path, ifOpen("write", () => this.write(caller, path, foldLabel, file, offsetBytes, data))),
      size: this.run(caller, "size", path, ifOpen("size", () => this.ok(file.current.sizeBytes))),
      truncate: (sizeBytes) => this.run(caller, "truncate", path, ifOpen("truncate", () => this.truncate(caller, path, file, sizeBytes))),
      datasync: this.syncFile(caller, path, file, descriptor, "datasync", () => closed),
      sync: this.syncFile(caller, path, file, descriptor, "sync", () => closed),
      close: Effect.suspend(() => {
        if (!this.admit(caller, "close", path)) return Effect.never
        closed = true
        return Effect.void
      })
    }
  }

  private write(caller: Caller, path: string, foldLabel: string, file: FileNode, offsetBytes: number, data: Uint8Array): Outcome<void> {
    assertByteCount(offsetBytes, "write offset")
    const endBytes = offsetBytes + data.length
    const detail = `@${offsetBytes} +${data.length}`
    const refused = this.refuseGrowth(caller, "write", path, detail, file, data.length === 0 ? 0 : endBytes)
    if (refused !== undefined) return refused
    if (data.length > 0) {
      const growthBytes = Math.max(0, endBytes - file.current.sizeBytes)
      // Zero-filling (new WAL segments) is common: keep no copy of zeros.
      const copy = isAllZero(data) ? undefined : this.copies.copy(data)
      // The data digest (DESIGN.md §3); zeros are folded as a mark only (the trace line gives
      // where and how many), so zero-filling a segment costs no hashing.
      this.kernel.trace.foldBytes(foldLabel, copy ?? EMPTY_BYTES)
      file.current.write(offsetBytes, copy, data.length)
      file.pending.push({ kind: "write", sequence: this.sequence++, offsetBytes, lengthBytes: data.length, data: copy })
      this.dirtyFiles.add(file)
      if (file.linkCount > 0) this.liveBytes += growthBytes
      this.stats.bytesWritten += data.length
    }
    this.log(caller, `disk write ${path} ${detail}`)
    return this.ok(undefined, this.draw(this.faultsNow.writeLatencyUs))
  }

  private truncate(caller: Caller, path: string, file: FileNode, sizeBytes: number): Outcome<void> {
    assertByteCount(sizeBytes, "truncate size")
    const refused = this.refuseGrowth(caller, "truncate", path, `${sizeBytes}`, file, sizeBytes)
    if (refused !== undefined) return refused
    const oldSizeBytes = file.current.sizeBytes
    file.current.resize(sizeBytes)
    file.pending.push({ kind: "truncate", sequence: this.sequence++, sizeBytes })
    this.dirtyFiles.add(file)
    if (file.linkCount > 0) this.liveBytes += sizeBytes - oldSizeBytes
    this.log(caller, `disk truncate ${path} ${sizeBytes}`)
    return this.ok(undefined, this.draw(this.faultsNow.writeLatencyUs))
  }

  /** Injected EIO/ENOSPC, capacity and the file size bound; undefined when the change may go ahead. */
  private refuseGrowth(caller: Caller, operation: string, path: string, detail: string, file: FileNode, endBytes: number): Outcome<never> | undefined {
    const injected: DiskErrorReason | undefined = this.kernel.chance(this.faultsNow.eioOnWriteProbability)
      ? "EIO"
      : this.kernel.chance(this.faultsNow.enospcOnWriteProbability) ? "ENOSPC" : undefined
    const growthBytes = Math.max(0, endBytes - file.current.sizeBytes)
    const capacityBytes = this.faultsNow.capacityBytes
    const full = injected === undefined && growthBytes > 0 && file.linkCount > 0 && capacityBytes !== undefined &&
      this.liveBytes + growthBytes > capacityBytes
    if (injected !== undefined || full) {
      this.stats.injectedErrors++
      const reason = injected ?? "ENOSPC"
      this.log(caller, `disk ${operation} ${path} ${detail} ${reason}`)
      return this.fail(undefined, reason, operation, path, full ? "disk full" : `injected ${reason}`)
    }
    if (endBytes > FILE_SIZE_BYTES_MAX) return this.fail(caller, "Other", operation, path, "file too large (EFBIG)")
    return undefined
  }

  private syncFile(
    caller: Caller, path: string, file: FileNode, descriptor: Descriptor, operation: "sync" | "datasync", isClosed: () => boolean
  ): Effect.Effect<void, DiskError> {
    return Effect.suspend(() => {
      if (!this.admit(caller, operation, path)) return Effect.never
      if (isClosed()) return Effect.fail(new DiskError({ reason: "Closed", operation, path, message: "the handle is closed" }))
      const snapshot = this.sequence
      const failure: DiskErrorReason | undefined = this.kernel.chance(this.faultsNow.eioOnFsyncProbability)
        ? "EIO"
        : this.kernel.chance(this.faultsNow.enospcOnFsyncProbability) ? "ENOSPC" : undefined
      const delayUs = this.draw(this.faultsNow.fsyncLatencyUs)
      this.log(caller, `disk ${operation} ${path}`)
      const finish = (): Effect.Effect<void, DiskError> => {
        if (failure !== undefined) {
          this.loseWriteback(file, snapshot, failure)
          descriptor.seenErrorSequence = file.errorSequence
          this.stats.injectedErrors++
          this.log(caller, `disk ${operation} ${path} ${failure}`)
          return Effect.fail(new DiskError({ reason: failure, operation, path, message: `injected ${failure}; unsynced pages lost` }))
        }
        this.flushFile(file, snapshot)
        this.stats.fsyncs++
        if (descriptor.seenErrorSequence !== file.errorSequence) {
          // errseq_t: an error another descriptor's writeback met is reported here once.
          descriptor.seenErrorSequence = file.errorSequence
          const reason = file.errorReason
          this.log(caller, `disk ${operation} ${path} ${reason} (earlier writeback)`)
          return Effect.fail(new DiskError({ reason, operation, path, message: `an earlier writeback of this file failed (${reason}); its unsynced pages are lost` }))
        }
        if (delayUs > 0) this.log(caller, `disk ${operation} ${path} done`)
        return Effect.void
      }
      return delayUs === 0 ? finish() : this.resumeAfter(caller, delayUs, finish)
    })
  }

  /** Makes the file's operations issued before `snapshot` durable, in issue order. */
  private flushFile(file: FileNode, snapshot: number): void {
    let flushed = 0
    for (const op of file.pending) {
      if (op.sequence >= snapshot) break
      applyFileOp(file.durable, op)
      flushed++
    }
    file.pending.splice(0, flushed)
    if (file.pending.length === 0 && !file.cacheOnly) this.dirtyFiles.delete(file)
  }

  /**
   * A failed writeback: the writes issued before `snapshot` are no longer dirty and never reach
   * the disk, but stay in the page cache (the current view) until a crash; truncations stay
   * pending. The file's error sequence moves on, so every other descriptor reports it once.
   */
  private loseWriteback(file: FileNode, snapshot: number, reason: DiskErrorReason): void {
    file.errorSequence++
    file.errorReason = reason
    let kept = 0
    let lostCount = 0
    for (const op of file.pending) {
      if (op.kind === "write" && op.sequence < snapshot) lostCount++
      else file.pending[kept++] = op
    }
    file.pending.length = kept
    if (lostCount === 0) return
    if (this.faultsNow.lostPages === "readable-until-crash") {
      // The current view now holds bytes the durable content will never have: a crash must
      // reset it even when nothing is pending, so the file stays on the dirty list.
      file.cacheOnly = true
      this.dirtyFiles.add(file)
      return
    }
    const oldSizeBytes = file.current.sizeBytes
    file.current = file.durable.clone()
    for (const op of file.pending) applyFileOp(file.current, op)
    if (file.linkCount > 0) this.liveBytes += file.current.sizeBytes - oldSizeBytes
    // A cache-only view from an earlier failure is gone with this rebuild.
    file.cacheOnly = false
    if (file.pending.length === 0) this.dirtyFiles.delete(file)
  }

  private readWhole(path: string): Outcome<Uint8Array> {
    const node = this.lookup("readFile", path)
    if (node instanceof DiskError) return { error: node, value: undefined, delayUs: 0 }
    if (node instanceof DirectoryNode) return this.fail(undefined, "IsADirectory", "readFile", path, "is a directory")
    return this.ok(node.current.read(0, node.current.sizeBytes))
  }

  // ---------------------------------------------------------------- directories

  private rename(caller: Caller, from: string, to: string): Outcome<void> {
    const source = this.resolveParent("rename", from)
    if (source instanceof DiskError) return { error: source, value: undefined, delayUs: 0 }
    const target = this.resolveParent("rename", to)
    if (target instanceof DiskError) return { error: target, value: undefined, delayUs: 0 }
    if (source === "root" || target === "root") return this.fail(undefined, "Other", "rename", from, "cannot rename the root")
    const moved = source.parent.current.get(source.name)
    if (moved === undefined) return this.fail(undefined, "NotFound", "rename", from, "no such file or directory")
    if (from === to) return this.ok(undefined)
    if (moved.node instanceof DirectoryNode && to.startsWith(`${from}/`)) {
      return this.fail(undefined, "Other", "rename", from, `cannot move a directory into itself (${to})`)
    }
    const replaced = target.parent.current.get(target.name)
    if (replaced !== undefined) {
      if (moved.node instanceof FileNode && replaced.node instanceof DirectoryNode) return this.fail(undefined, "IsADirectory", "rename", to, "is a directory")
      if (moved.node instanceof DirectoryNode && replaced.node instanceof FileNode) return this.fail(undefined, "NotADirectory", "rename", to, "not a directory")
      if (replaced.node instanceof DirectoryNode && replaced.node.current.size > 0) return this.fail(undefined, "DirectoryNotEmpty", "rename", to, "directory not empty")
    }
    const link: Link = { node: moved.node, sequence: this.sequence }
    if (source.parent === target.parent) {
      this.addMetadata(target.parent, [[target.name, link], [source.name, undefined]], undefined)
    } else {
      const destinationHalf = this.addMetadata(target.parent, [[target.name, link]], undefined)
      this.addMetadata(source.parent, [[source.name, undefined]], destinationHalf)
    }
    this.log(caller, `disk rename ${from} ${to}`)
    return this.ok(undefined, this.draw(this.faultsNow.writeLatencyUs))
  }

  private unlink(caller: Caller, path: string): Outcome<void> {
    const at = this.resolveParent("unlink", path)
    if (at instanceof DiskError) return { error: at, value: undefined, delayUs: 0 }
    if (at === "root") return this.fail(undefined, "IsADirectory", "unlink", path, "is a directory")
    const link = at.parent.current.get(at.name)
    if (link === undefined) return this.fail(undefined, "NotFound", "unlink", path, "no such file")
    if (link.node instanceof DirectoryNode) return this.fail(undefined, "IsADirectory", "unlink", path, "is a directory")
    this.addMetadata(at.parent, [[at.name, undefined]], undefined)
    this.log(caller, `disk unlink ${path}`)
    return this.ok(undefined, this.draw(this.faultsNow.writeLatencyUs))
  }

  private mkdir(caller: Caller, path: string): Outcome<void> {
    const parts = splitPath(path)
    let dir = this.root
    let created = false
    for (let i = 0; i < parts.length; i++) {
      const name = parts[i]!
      const link = dir.current.get(name)
      if (link === undefined) {
        const child = new DirectoryNode()
        this.addMetadata(dir, [[name, { node: child, sequence: this.sequence }]], undefined)
        this.log(caller, `disk mkdir ${joinParts(parts, i + 1)}`)
        created = true
        dir = child
      } else if (link.node instanceof DirectoryNode) {
        dir = link.node
      } else {
        return i === parts.length - 1
          ? this.fail(undefined, "AlreadyExists", "mkdir", path, "a file exists there")
          : this.fail(undefined, "NotADirectory", "mkdir", joinParts(parts, i + 1), "not a directory")
      }
    }
    return this.ok(undefined, created ? this.draw(this.faultsNow.writeLatencyUs) : 0)
  }

  private rmdir(caller: Caller, path: string): Outcome<void> {
    const at = this.resolveParent("rmdir", path)
    if (at instanceof DiskError) return { error: at, value: undefined, delayUs: 0 }
    if (at === "root") return this.fail(undefined, "Other", "rmdir", path, "cannot remove the root")
    const link = at.parent.current.get(at.name)
    if (link === undefined) return this.fail(undefined, "NotFound", "rmdir", path, "no such directory")
    if (link.node instanceof FileNode) return this.fail(undefined, "NotADirectory", "rmdir", path, "not a directory")
    if (link.node.current.size > 0) return this.fail(undefined, "DirectoryNotEmpty", "rmdir", path, "directory not empty")
    this.addMetadata(at.parent, [[at.name, undefined]], undefined)
    this.log(caller, `disk rmdir ${path}`)
    return this.ok(undefined, this.draw(this.faultsNow.writeLatencyUs))
  }

  private list(path: string): Outcome<ReadonlyArray<DirectoryEntry>> {
    const node = this.lookup("list", path)
    if (node instanceof DiskError) return { error: node, value: undefined, delayUs: 0 }
    if (node instanceof FileNode) return this.fail(undefined, "NotADirectory", "list", path, "not a directory")
    const entries: DirectoryEntry[] = []
    for (const [name, link] of node.current) entries.push({ name, kind: link.node instanceof FileNode ? "file" : "directory" })
    entries.sort((a, b) => compareNames(a.name, b.name))
    return this.ok(entries)
  }

  private stat(path: string): Outcome<{ readonly kind: "file" | "directory"; readonly sizeBytes: number } | undefined> {
    const node = this.lookup("stat", path)
    if (node instanceof DiskError) return this.ok(undefined)
    return this.ok(node instanceof FileNode ? { kind: "file", sizeBytes: node.current.sizeBytes } : { kind: "directory", sizeBytes: 0 })
  }

  private syncDirectory(caller: Caller, path: string): Effect.Effect<void, DiskError> {
    return Effect.suspend(() => {
      if (!this.admit(caller, "syncDirectory", path)) return Effect.never
      const node = this.lookup("syncDirectory", path)
      if (node instanceof DiskError) return Effect.fail(node)
      if (node instanceof FileNode) return Effect.fail(new DiskError({ reason: "NotADirectory", operation: "syncDirectory", path, message: "not a directory" }))
      const snapshot = this.sequence
      const fails = this.kernel.chance(this.faultsNow.eioOnFsyncProbability)
      const delayUs = this.draw(this.faultsNow.fsyncLatencyUs)
      this.log(caller, `disk syncdir ${path}`)
      const finish = (): Effect.Effect<void, DiskError> => {
        if (fails) {
          this.stats.injectedErrors++
          this.log(caller, `disk syncdir ${path} EIO`)
          return Effect.fail(new DiskError({ reason: "EIO", operation: "syncDirectory", path, message: "injected EIO" }))
        }
        this.flushDirectory(node, snapshot)
        this.stats.fsyncs++
        if (delayUs > 0) this.log(caller, `disk syncdir ${path} done`)
        return Effect.void
      }
      return delayUs === 0 ? finish() : this.resumeAfter(caller, delayUs, finish)
    })
  }

  private flushDirectory(dir: DirectoryNode, snapshot: number): void {
    let flushed = 0
    for (const op of dir.pending) {
      if (op.sequence >= snapshot) break
      applyChanges(dir.durable, op.changes)
      makeDurable(op)
      flushed++
    }
    dir.pending.splice(0, flushed)
    if (dir.pending.length === 0) {
      this.dirtyDirectories.delete(dir)
      dir.lastOpByName.clear()
    }
  }

  /** Records a metadata operation in `dir`'s log and applies it to the current view. */
  private addMetadata(dir: DirectoryNode, changes: ReadonlyArray<EntryChange>, renameDestination: DirectoryOp | undefined): DirectoryOp {
    let predecessors: DirectoryOp[] | undefined
    for (const [name] of changes) {
      const previous = dir.lastOpByName.get(name)
      if (previous !== undefined && !previous.durable) (predecessors ??= []).push(previous)
    }
    const op: DirectoryOp = {
      sequence: this.sequence++, changes, renameDestination, predecessors: predecessors ?? NO_OPS, durable: false, crashSurvives: false
    }
    for (const [name] of changes) dir.lastOpByName.set(name, op)
    dir.pending.push(op)
    this.dirtyDirectories.add(dir)
    for (const [name, link] of changes) {
      const old = dir.current.get(name)
      if (old !== undefined) this.unlinked(old.node)
      if (link === undefined) {
        dir.current.delete(name)
      } else {
        dir.current.set(name, link)
        this.linked(link.node)
      }
    }
    return op
  }

  private linked(node: Node): void {
    if (!(node instanceof FileNode)) return
    if (node.linkCount === 0) this.liveBytes += node.current.sizeBytes
    node.linkCount++
  }

  private unlinked(node: Node): void {
    if (!(node instanceof FileNode)) return
    node.linkCount--
    assert(node.linkCount >= 0, "link count went negative")
    if (node.linkCount === 0) this.liveBytes -= node.current.sizeBytes
  }

  // ---------------------------------------------------------------- paths

  private lookup(operation: string, path: string): Node | DiskError {
    const at = this.resolveParent(operation, path)
    if (at instanceof DiskError) return at
    if (at === "root") return this.root
    const link = at.parent.current.get(at.name)
    if (link === undefined) return new DiskError({ reason: "NotFound", operation, path, message: "no such file or directory" })
    return link.node
  }

  /** The directory that holds `path`'s last component, or "root" for "/". */
  private resolveParent(operation: string, path: string): { readonly parent: DirectoryNode; readonly name: string } | "root" | DiskError {
    const parts = splitPath(path)
    if (parts.length === 0) return "root"
    let dir = this.root
    for (let i = 0; i < parts.length - 1; i++) {
      const link = dir.current.get(parts[i]!)
      if (link === undefined) return new DiskError({ reason: "NotFound", operation, path, message: `no directory ${joinParts(parts, i + 1)}` })
      if (link.node instanceof FileNode) return new DiskError({ reason: "NotADirectory", operation, path, message: `${joinParts(parts, i + 1)} is a file` })
      dir = link.node
    }
    return { parent: dir, name: parts[parts.length - 1]! }
  }

  // ---------------------------------------------------------------- crash model

  /**
   * Decides which pending metadata operations survive (`metadataCrashModel`, see the top), then
   * applies them in issue order. Dependencies (a rename's removal half on its link half; in
   * "any-subset", an operation on the earlier ones that touched its names) are enforced by
   * undoing whatever depends on an undone operation: in "prefix" the rest of its log goes too.
   */
  private crashMetadata(): void {
    const anySubset = this.faultsNow.metadataCrashModel === "any-subset"
    // Drawn only in "any-subset", so "prefix" draws exactly what it always drew.
    const survivalProbability = anySubset ? this.kernel.nextFloat() : 0
    let pendingCount = 0
    for (const dir of this.dirtyDirectories) {
      pendingCount += dir.pending.length
      if (anySubset) {
        for (const op of dir.pending) op.crashSurvives = this.kernel.chance(survivalProbability)
      } else {
        const cut = this.kernel.intBetween(0, dir.pending.length)
        dir.pending.forEach((op, index) => (op.crashSurvives = index < cut))
      }
    }
    // Undoing one operation can undo another in another log (a link half): repeat until
    // stable. Each pass only undoes, so this ends within (total pending ops) passes.
    let changed = true
    let passes = 0
    while (changed) {
      changed = false
      assert(passes++ <= pendingCount + 1, "metadata crash fixpoint did not converge")
      for (const dir of this.dirtyDirectories) {
        for (let i = 0; i < dir.pending.length; i++) {
          const op = dir.pending[i]!
          if (!op.crashSurvives || dependenciesSurvive(op)) continue
          changed = true
          if (anySubset) {
            op.crashSurvives = false
          } else {
            for (let j = i; j < dir.pending.length; j++) dir.pending[j]!.crashSurvives = false
            break
          }
        }
      }
    }
    for (const dir of this.dirtyDirectories) {
      let kept = 0
      for (const op of dir.pending) {
        if (!op.crashSurvives) continue
        applyChanges(dir.durable, op.changes)
        makeDurable(op)
        kept++
      }
      for (const op of dir.pending) op.predecessors = NO_OPS
      this.stats.undoneMetadata += dir.pending.length - kept
      dir.pending = []
      dir.lastOpByName.clear()
    }
    this.dirtyDirectories.clear()
  }

  /**
   * Makes the durable namespace a tree again: a node reachable by two names (a rename whose
   * link half survived without its removal half) keeps the newer name; whatever the root no
   * longer reaches is gone. Returns the files still reachable; the current view becomes the
   * durable one.
   */
  private repairNamespace(): Set<FileNode> {
    const newest = new Map<Node, { readonly dir: DirectoryNode; readonly name: string; readonly sequence: number }>()
    const directories: DirectoryNode[] = [this.root]
    const seen = new Set<DirectoryNode>([this.root])
    for (let i = 0; i < directories.length; i++) {
      const dir = directories[i]!
      for (const [name, link] of dir.durable) {
        const best = newest.get(link.node)
        if (best === undefined || link.sequence > best.sequence) newest.set(link.node, { dir, name, sequence: link.sequence })
        if (link.node instanceof DirectoryNode && !seen.has(link.node)) {
          seen.add(link.node)
          directories.push(link.node)
        }
      }
    }
    for (const dir of directories) {
      for (const [name, link] of [...dir.durable]) {
        const best = newest.get(link.node)
        if (best !== undefined && (best.dir !== dir || best.name !== name)) dir.durable.delete(name)
      }
    }
    // Walk again: a stale link dropped above can make a subtree unreachable (only through a cycle
    // of half-done directory renames).
    const files = new Set<FileNode>()
    const reachable: DirectoryNode[] = [this.root]
    for (let i = 0; i < reachable.length; i++) {
      const dir = reachable[i]!
      dir.current = new Map(dir.durable)
      for (const link of dir.durable.values()) {
        if (link.node instanceof DirectoryNode) {
          reachable.push(link.node)
        } else {
          link.node.linkCount = 1
          files.add(link.node)
        }
      }
    }
    return files
  }

  private crashFile(file: FileNode, survivalProbability: number, tornProbability: number, scatteredTears: boolean): void {
    const ops = file.pending
    let truncationCount = 0
    for (const op of ops) if (op.kind === "truncate") truncationCount++
    const keptTruncations = truncationCount === 0 ? 0 : this.kernel.intBetween(0, truncationCount)
    // The smallest surviving truncation after each write cuts that write.
    const limitAfter: number[] = new Array<number>(ops.length)
    let truncationIndex = truncationCount
    let limitBytes = Number.POSITIVE_INFINITY
    for (let i = ops.length - 1; i >= 0; i--) {
      limitAfter[i] = limitBytes
      const op = ops[i]!
      if (op.kind === "truncate") {
        truncationIndex--
        if (truncationIndex < keptTruncations) limitBytes = Math.min(limitBytes, op.sizeBytes)
      }
    }
    const survivors: { readonly offsetBytes: number; readonly data: Uint8Array | undefined; readonly lengthBytes: number }[] = []
    let seenTruncations = 0
    for (let i = 0; i < ops.length; i++) {
      const op = ops[i]!
      if (op.kind === "truncate") {
        if (seenTruncations++ < keptTruncations) file.durable.resize(op.sizeBytes)
        continue
      }
      if (!this.kernel.chance(survivalProbability)) {
        this.stats.droppedWrites++
        continue
      }
      let endBytes = op.offsetBytes + op.lengthBytes
      const firstSector = Math.floor(op.offsetBytes / SECTOR_SIZE_BYTES) + 1
      const lastSector = Math.ceil(endBytes / SECTOR_SIZE_BYTES) - 1
      const torn = firstSector <= lastSector && this.kernel.chance(tornProbability)
      if (torn) this.stats.tornWrites++
      if (torn && scatteredTears) {
        // Each sector-aligned piece of the write survives on its own.
        const limitBytes = Math.min(endBytes, limitAfter[i]!)
        for (let start = op.offsetBytes; start < limitBytes;) {
          const pieceEnd = Math.min((Math.floor(start / SECTOR_SIZE_BYTES) + 1) * SECTOR_SIZE_BYTES, limitBytes)
          if (this.kernel.chance(0.5)) {
            const skip = start - op.offsetBytes
            survivors.push({ offsetBytes: start, data: op.data?.subarray(skip), lengthBytes: pieceEnd - start })
          }
          start = pieceEnd
        }
        continue
      }
      if (torn) endBytes = this.kernel.intBetween(firstSector, lastSector) * SECTOR_SIZE_BYTES
      endBytes = Math.min(endBytes, limitAfter[i]!)
      if (endBytes > op.offsetBytes) survivors.push({ offsetBytes: op.offsetBytes, data: op.data, lengthBytes: endBytes - op.offsetBytes })
    }
    // Survivors reach the platter in any order: a later write may lose to an earlier one.
    for (let i = survivors.length - 1; i > 0; i--) {
      const j = this.kernel.intBetween(0, i)
      const swap = survivors[i]!
      survivors[i] = survivors[j]!
      survivors[j] = swap
    }
    for (const survivor of survivors) file.durable.write(survivor.offsetBytes, survivor.data, survivor.lengthBytes)
    file.pending = []
    file.current = file.durable.clone()
    file.cacheOnly = false
  }
}

// ------------------------------------------------------------------ data

interface Caller {
  readonly life: Incarnation
  readonly epoch: number
  readonly hooks: DiskHooks | undefined
}

/** What an action decided: a value or an error, and how long the caller waits for it. */
type Outcome<A> =
  | { readonly error: undefined; readonly value: A; readonly delayUs: number }
  | { readonly error: DiskError; readonly value: undefined; readonly delayUs: number }

type FileOp =
  /** `data` undefined: `lengthBytes` zeros. */
  | { readonly kind: "write"; readonly sequence: number; readonly offsetBytes: number; readonly lengthBytes: number; readonly data: Uint8Array | undefined }
  | { readonly kind: "truncate"; readonly sequence: number; readonly sizeBytes: number }

interface Link {
  readonly node: Node
  /** The sequence of the operation that made this name: at a crash the newest name of a node wins. */
  readonly sequence: number
}

type EntryChange = readonly [name: string, link: Link | undefined]

interface DirectoryOp {
  readonly sequence: number
  readonly changes: ReadonlyArray<EntryChange>
  /** For the removal half of a cross-directory rename: its link half, which it cannot outlive. */
  readonly renameDestination: DirectoryOp | undefined
  /** The pending operations of the same directory that touched one of its names last (cleared once durable). */
  predecessors: ReadonlyArray<DirectoryOp>
  durable: boolean
  /** Whether it survives the crash being applied. */
  crashSurvives: boolean
}

type Node = FileNode | DirectoryNode

class FileNode {
  durable = new PagedContent()
  current = new PagedContent()
  pending: FileOp[] = []
  /** Names in the current view (0 or 1: there are no hard links). */
  linkCount = 0
  /** errseq_t: bumped by each failed writeback; descriptors remember the value they saw. */
  errorSequence = 0
  errorReason: DiskErrorReason = "EIO"
  /** The current view holds pages a failed writeback lost (readable until the next crash). */
  cacheOnly = false
}

/** One open descriptor of a file: the writeback errors it has already reported. */
interface Descriptor {
  seenErrorSequence: number
}

const EMPTY_BYTES = new Uint8Array(0)

class DirectoryNode {
  durable = new Map<string, Link>()
  current = new Map<string, Link>()
  pending: DirectoryOp[] = []
  /** Per name, the last pending operation that touched it (an entry may be durable by now). */
  readonly lastOpByName = new Map<string, DirectoryOp>()
}

function applyFileOp(content: PagedContent, op: FileOp): void {
  if (op.kind === "write") content.write(op.offsetBytes, op.data, op.lengthBytes)
  else content.resize(op.sizeBytes)
}

const NO_OPS: ReadonlyArray<DirectoryOp> = []

function dependenciesSurvive(op: DirectoryOp): boolean {
  const destination = op.renameDestination
  if (destination !== undefined && !destination.durable && !destination.crashSurvives) return false
  for (const previous of op.predecessors) if (!previous.durable && !previous.crashSurvives) return false
  return true
}

/** Durable operations need no dependencies any more: dropping them bounds what a log retains. */
function makeDurable(op: DirectoryOp): void {
  op.durable = true
  op.predecessors = NO_OPS
}

function applyChanges(entries: Map<string, Link>, changes: ReadonlyArray<EntryChange>): void {
  for (const [name, link] of changes) {
    if (link === undefined) entries.delete(name)
    else entries.set(name, link)
  }
}

function assertByteCount(value: number, what: string): void {
  assert(Number.isSafeInteger(value) && value >= 0, `${what} must be a non-negative integer, got ${value}`)
}

// ------------------------------------------------------------------ paths

/** "/a//b/" and "a/b" are "/a/b"; "." is dropped and ".." climbs (never above the root). */
function checkFaults(faults: DiskFaults): void {
  assert(faults.writeLatencyUs[0] >= 0 && faults.writeLatencyUs[0] <= faults.writeLatencyUs[1], "write latency range")
  assert(faults.fsyncLatencyUs[0] >= 0 && faults.fsyncLatencyUs[0] <= faults.fsyncLatencyUs[1], "fsync latency range")
  for (const probability of [faults.eioOnWriteProbability, faults.eioOnFsyncProbability, faults.enospcOnWriteProbability, faults.enospcOnFsyncProbability]) {
    assert(probability >= 0 && probability <= 1, "fault probabilities lie in [0, 1]")
  }
  assert(faults.capacityBytes === undefined || faults.capacityBytes >= 0, "capacity is not negative")
}

export function normalizePath(path: string): string {
  return joinParts(splitPath(path), Number.POSITIVE_INFINITY)
}

function splitPath(path: string): string[] {
  const parts: string[] = []
  for (const part of path.split("/")) {
    if (part === "" || part === ".") continue
    if (part === "..") parts.pop()
    else parts.push(part)
  }
  return parts
}

function joinParts(parts: ReadonlyArray<string>, count: number): string {
  return `/${parts.slice(0, count).join("/")}`
}

/**
 * Byte order of the UTF-8 encodings (= code point order). JavaScript's `<` compares UTF-16
 * code units, which puts surrogate pairs before U+E000–U+FFFF; shift them past it.
 */
export function compareNames(a: string, b: string): number {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i)
    const y = b.charCodeAt(i)
    if (x !== y) return codeUnitRank(x) - codeUnitRank(y)
  }
  return a.length - b.length
}

function codeUnitRank(unit: number): number {
  if (unit >= 0xd800 && unit <= 0xdfff) return unit + 0x2000
  if (unit >= 0xe000) return unit - 0x800
  return unit
}
