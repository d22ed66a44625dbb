import { Schema } from "effect"

/**
 * A broken invariant: a programmer error, never a reaction to bad input. Thrown inside an
 * Effect it becomes a defect that no `catchTag` swallows; only a node's root inspects it
 * (the simulator fails the run, the live process logs it and exits non-zero).
 */
export class InvariantViolation extends Schema.TaggedError<InvariantViolation>()("InvariantViolation", {
  message: Schema.String
}) {}

export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new InvariantViolation({ message })
}

export function assertNever(value: never, message = "unexpected value"): never {
  throw new InvariantViolation({ message: `${message}: ${String(value)}` })
}

/** The largest LSN, term or count a JavaScript number holds exactly (DESIGN.md §4). */
export const U53_MAX = Number.MAX_SAFE_INTEGER
