import { createHash, type Hash } from "node:crypto"

const PENDING_LINES_CHARS_MAX = 16 * 1024
const STAGE_BYTES = 64 * 1024
/** Folds up to this size are staged; the stage always fits one (label and bytes). */
const STAGE_DIRECT_BYTES = 8 * 1024
const textEncoder = new TextEncoder()

/**
 * The run's trace: lines of "<virtual µs> <node>#<life> <event>", hashed with SHA-256 as they
 * are recorded. The header names the scenario, seed and Effect version, because a seed replays
 * only on the same version (interleavings depend on Effect's scheduler internals). Beside the
 * lines, a second digest folds in every byte a node writes to disk or sends on a connection
 * (DESIGN.md §3), so an escaped source of non-determinism that changes data but not the order
 * of events still changes the hash.
 */
export class Trace {
  readonly lines: string[] = []
  private readonly hasher: Hash = createHash("sha256")
  private readonly dataHasher: Hash = createHash("sha256")
  private dataBytes = 0
  private count = 0
  private digest: string | undefined = undefined
  private pendingLines = ""
  private readonly stage = new Uint8Array(STAGE_BYTES)
  private stagedBytes = 0

  constructor(private readonly keepLines: boolean, header: ReadonlyArray<string>) {
    for (const line of header) this.record(`# ${line}`)
  }

  record(line: string): void {
    if (this.digest !== undefined) throw new Error("trace already hashed")
    this.count++
    // Lines go to the hasher in batches: SHA-256 over the concatenation is the same digest, and
    // one native update per batch costs less than two per line.
    this.pendingLines += line + "\n"
    if (this.pendingLines.length >= PENDING_LINES_CHARS_MAX) this.flushLines()
    if (this.keepLines) this.lines.push(line)
  }

  /** Folds bytes a node wrote or sent into the data digest; `what` says where they went. */
  foldBytes(what: string, bytes: Uint8Array): void {
    if (this.digest !== undefined) throw new Error("trace already hashed")
    this.dataBytes += bytes.byteLength
    // Small folds are staged and hashed in batches (same digest: the hash is of the byte stream).
    // A label is encoded into the stage only when it surely fits (UTF-8 is at most 3 bytes per
    // UTF-16 unit); big writes go to the hasher directly.
    if (bytes.byteLength <= STAGE_DIRECT_BYTES && what.length * 3 <= STAGE_DIRECT_BYTES) {
      if (this.stagedBytes + what.length * 3 + bytes.byteLength > this.stage.byteLength) this.flushStage()
      this.stagedBytes += textEncoder.encodeInto(what, this.stage.subarray(this.stagedBytes)).written
      this.stage.set(bytes, this.stagedBytes)
      this.stagedBytes += bytes.byteLength
      return
    }
    this.flushStage()
    this.dataHasher.update(what)
    this.dataHasher.update(bytes)
  }

  /** How many bytes the data digest has folded in. */
  get foldedBytes(): number {
    return this.dataBytes
  }

  get lineCount(): number {
    return this.count
  }

  /** The SHA-256 of all lines and then of the data digest; the trace is closed afterwards. */
  hash(): string {
    if (this.digest === undefined) {
      this.flushLines()
      this.flushStage()
      this.hasher.update(`# data ${this.dataBytes} ${this.dataHasher.digest("hex")}\n`)
      this.digest = this.hasher.digest("hex")
    }
    return this.digest
  }

  private flushLines(): void {
    if (this.pendingLines.length === 0) return
    this.hasher.update(this.pendingLines)
    this.pendingLines = ""
  }

  private flushStage(): void {
    if (this.stagedBytes === 0) return
    this.dataHasher.update(this.stage.subarray(0, this.stagedBytes))
    this.stagedBytes = 0
  }
}

/** The index of the first line where two traces differ, or undefined when equal. */
export function firstDifference(a: ReadonlyArray<string>, b: ReadonlyArray<string>): number | undefined {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i
  return a.length === b.length ? undefined : n
}
