import { Cause, Effect, Exit, Fiber, type Layer } from "effect"
import { InvariantViolation } from "../core/assert.js"

/**
 * Runs a long-lived program as the process's main job: SIGINT and SIGTERM interrupt it (its
 * finalizers run: listeners close, in-flight durable steps finish since they are
 * uninterruptible), and the exit code says how it ended. A defect (a broken invariant) is
 * printed and exits 70 (EX_SOFTWARE); a failure prints its message and exits with the code
 * `exitCodeOf` gives (1 by default).
 */
export interface MainOptions<E> {
  readonly name: string
  readonly exitCodeOf?: (error: E) => number
}

export function runMain<A, E, R>(program: Effect.Effect<A, E, R>, layer: Layer.Layer<R>, options: MainOptions<E>): Promise<number> {
  const fiber = Effect.runFork(Effect.provide(program, layer))
  let signalled = false
  const onSignal = (signal: NodeJS.Signals) => {
    if (signalled) return
    signalled = true
    process.stderr.write(`${options.name}: ${signal}, stopping\n`)
    Effect.runFork(Fiber.interrupt(fiber))
  }
  process.on("SIGINT", onSignal)
  process.on("SIGTERM", onSignal)
  return new Promise((resolve) => {
    fiber.addObserver((exit) => {
      process.off("SIGINT", onSignal)
      process.off("SIGTERM", onSignal)
      resolve(exitCode(exit, options))
    })
  })
}

function exitCode<A, E>(exit: Exit.Exit<A, E>, options: MainOptions<E>): number {
  if (Exit.isSuccess(exit)) return 0
  const cause = exit.cause
  if (Cause.hasInterruptsOnly(cause)) return 0
  const failure = Cause.findErrorOption(cause)
  if (failure._tag === "Some") {
    const error = failure.value
    process.stderr.write(`${options.name}: ${messageOf(error)}\n`)
    return options.exitCodeOf?.(error) ?? 1
  }
  const defect = Cause.pretty(cause)
  process.stderr.write(`${options.name}: ${defect.includes(InvariantViolation.name) ? "invariant violated" : "defect"}:\n${defect}\n`)
  return 70
}

function messageOf(error: unknown): string {
  if (typeof error === "object" && error !== null) {
    const tag = "_tag" in error ? `${String((error as { _tag: unknown })._tag)}: ` : ""
    if ("message" in error) return `${tag}${String((error as { message: unknown }).message)}`
  }
  return String(error)
}
