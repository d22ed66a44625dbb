// Goal: pin our CRC-32C to the standard check value, and prove that every fast path (slicing-
// by-8 over a DataView, the native call above NATIVE_CRC_BYTES_MIN, ranges of a view at any
// byte offset, chaining over pieces; the range forms return the same bits as an int32)
// equals the byte-at-a-time reference, which is itself checked against a bit-at-a-time CRC
// written here. Method: known vectors, then fast-check on random bytes, random initial
// values and random split points, with lengths on both sides of the native threshold.
import fc from "fast-check"
import { describe, expect, test } from "vitest"
import { crc32c, crc32cRange, crc32cSlicing, crc32cTable, NATIVE_CRC_BYTES_MIN } from "./crc32c.js"

const ascii = (text: string) => new TextEncoder().encode(text)

/** The definition, one bit at a time: shares nothing with the tables under test. */
function crc32cBitwise(data: Uint8Array, initial = 0): number {
  let c = ~initial >>> 0
  for (const byte of data) {
    c ^= byte
    for (let bit = 0; bit < 8; bit++) c = (c & 1) !== 0 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1
  }
  return ~c >>> 0
}

const viewOf = (data: Uint8Array) => new DataView(data.buffer, data.byteOffset, data.length)

/** Lengths around the places where the code changes strategy: 4- and 8-byte steps, the native threshold. */
const arbLength = fc.oneof(
  fc.integer({ min: 0, max: 40 }),
  fc.integer({ min: NATIVE_CRC_BYTES_MIN - 9, max: NATIVE_CRC_BYTES_MIN + 9 }),
  fc.integer({ min: 0, max: 3 * NATIVE_CRC_BYTES_MIN })
)
const arbBytes = arbLength.chain((length) => fc.uint8Array({ minLength: length, maxLength: length }))
const arbInitial = fc.integer({ min: 0, max: 0xffffffff })

describe("crc32c", () => {
  test("known vectors", () => {
    expect(crc32c(ascii("123456789"))).toBe(0xe3069283)
    expect(crc32c(new Uint8Array(0))).toBe(0)
    // RFC 3720 (iSCSI) B.4: 32 bytes of zeros, 32 bytes of 0xFF.
    expect(crc32c(new Uint8Array(32))).toBe(0x8a9136aa)
    expect(crc32c(new Uint8Array(32).fill(0xff))).toBe(0x62a8ab43)
    expect(crc32cBitwise(ascii("123456789"))).toBe(0xe3069283)
  })

  test("the reference table CRC is the bitwise definition", () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), arbInitial, (data, initial) =>
      crc32cTable(data, initial) === crc32cBitwise(data, initial)))
  })

  test("every fast path equals the reference, chained or not", () => {
    fc.assert(fc.property(arbBytes, arbInitial, (data, initial) => {
      const expected = crc32cTable(data, initial)
      return crc32c(data, initial) === expected &&
        crc32cRange(viewOf(data), 0, data.length, initial) >>> 0 === expected &&
        crc32cSlicing(viewOf(data), 0, data.length, initial) >>> 0 === expected &&
        // The range forms are int32 (the same bits), and take a signed initial value too.
        crc32cRange(viewOf(data), 0, data.length, initial) === (expected | 0) &&
        crc32cRange(viewOf(data), 0, data.length, initial | 0) === (expected | 0) &&
        crc32c(data) === crc32cTable(data)
    }))
    // Both sides of the native threshold, exactly.
    const long = new Uint8Array(3 * NATIVE_CRC_BYTES_MIN).map((_, i) => i * 13)
    for (const length of [NATIVE_CRC_BYTES_MIN - 1, NATIVE_CRC_BYTES_MIN, NATIVE_CRC_BYTES_MIN + 1, long.length]) {
      expect(crc32c(long.subarray(0, length))).toBe(crc32cTable(long.subarray(0, length)))
    }
  })

  test("a range of a view at any byte offset equals the CRC of a copy of that range", () => {
    // Odd offsets put the 32-bit reads off alignment, as in a received chunk.
    fc.assert(fc.property(fc.uint8Array({ maxLength: 3 * NATIVE_CRC_BYTES_MIN }), fc.nat(), fc.nat(), fc.nat({ max: 7 }), arbInitial, (data, a, b, shift, initial) => {
      const backing = new Uint8Array(data.length + shift)
      backing.set(data, shift)
      const view = new DataView(backing.buffer, shift, data.length)
      const start = a % (data.length + 1)
      const end = start + (b % (data.length - start + 1))
      return crc32cRange(view, start, end, initial) >>> 0 === crc32cTable(data.slice(start, end), initial)
    }))
  })

  test("result is an unsigned 32-bit integer", () => {
    fc.assert(fc.property(arbBytes, arbInitial, (data, initial) => {
      const crc = crc32c(data, initial)
      return Number.isInteger(crc) && crc >= 0 && crc <= 0xffffffff
    }))
  })

  test("chaining over random split points equals one pass", () => {
    // As the decoder does for a record split over page headers and chunks.
    fc.assert(fc.property(arbBytes, fc.array(fc.nat(), { maxLength: 6 }), (data, cuts) => {
      const points = [...new Set(cuts.map((cut) => cut % (data.length + 1)))].sort((x, y) => x - y)
      const view = viewOf(data)
      let crc = 0
      let from = 0
      for (const point of [...points, data.length]) {
        crc = crc32cRange(view, from, point, crc)
        from = point
      }
      const viaSubarrays = [...points, data.length].reduce<{ crc: number; from: number }>(
        (state, point) => ({ crc: crc32c(data.subarray(state.from, point), state.crc), from: point }), { crc: 0, from: 0 }).crc
      return crc >>> 0 === crc32cTable(data) && viaSubarrays === crc >>> 0
    }))
  })

  test("a range outside its view is a programmer error", () => {
    const view = viewOf(new Uint8Array(16))
    expect(() => crc32cRange(view, 4, 17)).toThrow(/inside its view/)
    expect(() => crc32cRange(view, 5, 4)).toThrow(/inside its view/)
    expect(() => crc32cRange(view, -1, 4)).toThrow(/inside its view/)
  })
})
