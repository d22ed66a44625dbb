import { createHash, type Hash } from "node:crypto"

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

  constructor(private readonly keepLines: boolean, header: ReadonlyArray<string>) {
    for (const line of header) this.record(`# ${line}`)
  }

  record(line: string): void {
    if (this.digest !== undefined) throw new Error("trace already hashed")
    this.count++
    this.hasher.update(line)
    this.hasher.update("\n")
    if (this.keepLines) this.lines.push(line)
  }

  /** Folds bytes a node wrote or sent into the data digest; `what` says where they went. */
  foldBytes(what: string, bytes: Uint8Array): void {
    if (this.digest !== undefined) throw new Error("trace already hashed")
    this.dataHasher.update(what)
    this.dataHasher.update(bytes)
    this.dataBytes += bytes.byteLength
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
      this.hasher.update(`# data ${this.dataBytes} ${this.dataHasher.digest("hex")}\n`)
      this.digest = this.hasher.digest("hex")
    }
    return this.digest
  }
}

/** The index of the first line where two traces differ, or undefined when equal. */
export function firstDifference(a: ReadonlyArray<string>, b: ReadonlyArray<string>): number | undefined {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i
  return a.length === b.length ? undefined : n
}
