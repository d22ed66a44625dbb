import { Schema } from "effect"

/**
 * A broken invariant: a programmer error, never a reaction to bad input. Thrown inside an
 * Effect it becomes a defect that no `catchTag` swallows. The component that owns the broken
 * state fences itself (the acceptor stops its timeline: later requests fail Stopped); the
 * simulator fails the run; a live server confines it to that timeline and logs it, and the
 * process goes on.
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
