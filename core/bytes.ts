/** Byte-array helpers shared by codecs, tests and scenarios. */

/** The parts, back to back: a new array, or the only non-empty part itself (no copy). */
export function concatBytes(parts: ReadonlyArray<Uint8Array>): Uint8Array {
  let total = 0
  let nonEmpty: Uint8Array | undefined
  let nonEmptyCount = 0
  for (const part of parts) {
    total += part.byteLength
    if (part.byteLength > 0) {
      nonEmpty = part
      nonEmptyCount++
    }
  }
  if (nonEmptyCount === 1) return nonEmpty!
  const out = new Uint8Array(total)
  let offset = 0
  for (const part of parts) {
    out.set(part, offset)
    offset += part.byteLength
  }
  return out
}

/** The index of the first differing byte (the shorter length when one is a prefix), or undefined when equal. */
export function firstByteDifference(a: Uint8Array, b: Uint8Array): number | undefined {
  const n = Math.min(a.byteLength, b.byteLength)
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i
  return a.byteLength === b.byteLength ? undefined : n
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return firstByteDifference(a, b) === undefined
}
