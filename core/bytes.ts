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

/** Below this many bytes the word setup costs more than it saves. */
const WORD_COMPARE_MIN_BYTES = 32

/** The index of the first differing byte (the shorter length when one is a prefix), or undefined when equal. */
export function firstByteDifference(a: Uint8Array, b: Uint8Array): number | undefined {
  const n = Math.min(a.byteLength, b.byteLength)
  let i = 0
  if (n >= WORD_COMPARE_MIN_BYTES) {
    // 8 bytes a step as two 32-bit reads (the checker compares whole WAL ranges; a byte loop was
    // 3% of a swarm run). DataView reads any alignment; integers, not floats: NaN and -0 compare
    // by value, not by bits. A differing word stops the scan and the byte loop names the byte.
    const da = new DataView(a.buffer, a.byteOffset, n)
    const db = new DataView(b.buffer, b.byteOffset, n)
    for (; i + 8 <= n; i += 8) {
      if (da.getInt32(i, true) !== db.getInt32(i, true) || da.getInt32(i + 4, true) !== db.getInt32(i + 4, true)) break
    }
  }
  for (; i < n; i++) if (a[i] !== b[i]) return i
  return a.byteLength === b.byteLength ? undefined : n
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return firstByteDifference(a, b) === undefined
}
