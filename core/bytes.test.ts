import fc from "fast-check"
import { describe, expect, test } from "vitest"
import { concatBytes, equalBytes, firstByteDifference } from "./bytes.js"

describe("bytes", () => {
  test("concatBytes joins parts in order and equals a plain join", () => {
    fc.assert(fc.property(fc.array(fc.uint8Array({ maxLength: 50 }), { maxLength: 6 }), (parts) => {
      const joined = concatBytes(parts)
      expect([...joined]).toEqual(parts.flatMap((p) => [...p]))
    }))
  })

  test("firstByteDifference finds the first differing index, or the shorter length", () => {
    expect(firstByteDifference(new Uint8Array([1, 2, 3]), new Uint8Array([1, 2, 3]))).toBeUndefined()
    expect(firstByteDifference(new Uint8Array([1, 2, 3]), new Uint8Array([1, 9, 3]))).toBe(1)
    expect(firstByteDifference(new Uint8Array([1, 2]), new Uint8Array([1, 2, 3]))).toBe(2)
    expect(equalBytes(new Uint8Array([]), new Uint8Array([]))).toBe(true)
    expect(equalBytes(new Uint8Array([0]), new Uint8Array([]))).toBe(false)
  })
})
