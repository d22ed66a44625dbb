import { Effect } from "effect"
import type { Incarnation, Kernel } from "./kernel.js"

/**
 * Waiting on a remote service (the object store, the broker) in virtual time, fenced to the
 * caller's life. Effect 4 resumes a fiber inline inside whatever callback completes it
 * (effect-determinism.md, pitfall 12), so every resume here happens in a kernel task or timer
 * owned by the caller's life: the kernel drops it when the life dies and holds it while the
 * life is paused, and the task checks liveness again before it resumes anyone.
 */

/** Resumes after `delayUs` of the caller's own time (sending bytes, a client-side timeout): a pause stalls it. */
export function waitInLife(kernel: Kernel, life: Incarnation, delayUs: number): Effect.Effect<void> {
  if (delayUs === 0) return Effect.void
  return Effect.callback<void>((resume) => {
    if (!life.alive) return // never resumes
    const timer = kernel.after(delayUs, () => {
      if (life.alive) resume(Effect.void)
    }, life)
    return Effect.sync(() => kernel.cancel(timer))
  })
}

/**
 * A request the remote side answers after `delayUs`: at that instant `decide` runs on the
 * service's own timer (the service neither pauses nor crashes with the caller), applies any
 * state change and returns the answer, or undefined when the caller gets none (it never
 * resumes). The answer travels back as a task of the caller's life, so a paused caller sees
 * it when it resumes and a dead one never does. A caller that died before the instant, or was
 * interrupted, gets no decision at all: the request never takes effect.
 */
export function remoteRequest<A, E>(
  kernel: Kernel,
  life: Incarnation,
  delayUs: number,
  decide: () => Effect.Effect<A, E> | undefined
): Effect.Effect<A, E> {
  return Effect.callback<A, E>((resume) => {
    if (!life.alive) return
    let interrupted = false
    const timer = kernel.after(delayUs, () => {
      if (interrupted || !life.alive) return
      const answer = decide()
      if (answer === undefined) return
      kernel.enqueue(() => {
        if (!interrupted && life.alive) resume(answer)
      }, life)
    }, undefined)
    return Effect.sync(() => {
      interrupted = true
      kernel.cancel(timer)
    })
  })
}

/** A draw from an integer range; a one-value range draws nothing (so seeds replay when it is fixed). */
export function drawUs(kernel: Kernel, range: readonly [number, number]): number {
  return range[0] === range[1] ? range[0] : kernel.intBetween(range[0], range[1])
}

/** Byte order of UTF-8 strings is code point order (JavaScript's `<` compares UTF-16 units). */
export function compareCodePoints(a: string, b: string): number {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i)
    const y = b.charCodeAt(i)
    if (x === y) continue
    // Surrogates (0xD800–0xDFFF) encode code points above 0xFFFF, so they sort after 0xE000–0xFFFF.
    const xHigh = x >= 0xd800 && x <= 0xdfff
    const yHigh = y >= 0xd800 && y <= 0xdfff
    if (xHigh !== yHigh) return xHigh ? 1 : -1
    return x - y
  }
  return a.length - b.length
}
