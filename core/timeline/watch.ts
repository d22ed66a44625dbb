import { Deferred, Effect } from "effect"

/**
 * A value that fibers can wait on (the idea of Neon's `SeqWait`, seed 004: wait for an LSN to
 * be reached instead of polling). Setting a value wakes every waiter once; each re-checks its
 * own condition against the new value. Waiting is interruptible and leaves nothing behind: a
 * waiter holds only the current generation's Deferred, which the next `set` completes and drops.
 */
export class Watch<A> {
  private current: A
  private changed: Deferred.Deferred<void>

  private constructor(initial: A) {
    this.current = initial
    this.changed = Deferred.makeUnsafe<void>()
  }

  static make<A>(initial: A): Watch<A> {
    return new Watch(initial)
  }

  get(): A {
    return this.current
  }

  /** Replaces the value and wakes the waiters (they run when the caller next yields). */
  set(value: A): void {
    this.current = value
    const changed = this.changed
    this.changed = Deferred.makeUnsafe<void>()
    Deferred.doneUnsafe(changed, Effect.void)
  }

  /** The first value (the current one included) for which `done` holds. */
  waitUntil(done: (value: A) => boolean): Effect.Effect<A> {
    return Effect.suspend(() => {
      const self = this
      return Effect.gen(function* () {
        // Bounded only by how often the value changes: every pass consumes one change.
        while (!done(self.current)) yield* Deferred.await(self.changed)
        return self.current
      })
    })
  }

  /** Resolves at the next `set` (whatever the value), for loops that re-check many things. */
  readonly nextChange: Effect.Effect<void> = Effect.suspend(() => Deferred.await(this.changed))
}
