import { Effect, type Exit } from "effect"
import { Disk } from "../core/io/disk.js"
import { type DiskFaults, NO_DISK_FAULTS, SimDisk } from "./disk.js"
import { Incarnation, Kernel } from "./kernel.js"
import { forkInLife } from "./runtime.js"

/**
 * Test support: runs Effect programs that need a Disk on one simulated disk, life after life,
 * with an optional crash right before the k-th Disk operation of a life. Crash tests use it to
 * crash between every pair of Disk operations of a sequence.
 */
export class DiskLab {
  readonly kernel: Kernel
  readonly disk: SimDisk
  private lifeNo = 0

  constructor(seed: number, faults: DiskFaults = { ...NO_DISK_FAULTS, writeLatencyUs: [1, 30], fsyncLatencyUs: [10, 300] }) {
    this.kernel = new Kernel(seed, { recordTrace: false })
    this.disk = new SimDisk(this.kernel, "lab", faults)
  }

  /**
   * Runs `effect` in a new life. With `crashBeforeOperation = k`, the life is killed right
   * before its k-th Disk operation (0-based) and the disk's crash model applies; the result is
   * then `crashed`. Otherwise the program's exit (or `stuck` if it never finished).
   */
  run<A, E>(effect: Effect.Effect<A, E, Disk>, options: { readonly crashBeforeOperation?: number } = {}): LabOutcome<A, E> {
    const life = new Incarnation("lab", ++this.lifeNo)
    let operations = 0
    let crashed = false
    const crashAt = options.crashBeforeOperation
    const service = this.disk.service(life, {
      beforeOperation: () => {
        if (crashAt !== undefined && operations === crashAt) {
          crashed = true
          life.alive = false
          this.disk.crash()
          return false
        }
        operations++
        return true
      }
    })
    const fiber = forkInLife(this.kernel, life, Effect.provideService(effect, Disk, service))
    this.kernel.run()
    if (crashed) return { _tag: "crashed", operations }
    const exit = fiber.pollUnsafe()
    life.alive = false
    if (exit === undefined) return { _tag: "stuck", operations }
    return { _tag: "done", exit, operations }
  }

  /** kill -9 after a program finished: whatever was not durable may go. */
  crash(): void {
    this.disk.crash()
  }
}

export type LabOutcome<A, E> =
  | { readonly _tag: "crashed"; readonly operations: number }
  | { readonly _tag: "stuck"; readonly operations: number }
  | { readonly _tag: "done"; readonly exit: Exit.Exit<A, E>; readonly operations: number }
