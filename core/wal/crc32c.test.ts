// Goal: pin our CRC-32C to the standard check value and prove that chaining over pieces
// equals one pass (the WAL record CRC is computed over the body, then the header).
import fc from "fast-check"
import { describe, expect, test } from "vitest"
import { crc32c, crc32cTable } from "./crc32c.js"

const ascii = (text: string) => new TextEncoder().encode(text)

describe("crc32c", () => {
  test("known vectors", () => {
    expect(crc32c(ascii("123456789"))).toBe(0xe3069283)
    expect(crc32c(new Uint8Array(0))).toBe(0)
    // RFC 3720 (iSCSI) B.4: 32 bytes of zeros, 32 bytes of 0xFF.
    expect(crc32c(new Uint8Array(32))).toBe(0x8a9136aa)
    expect(crc32c(new Uint8Array(32).fill(0xff))).toBe(0x62a8ab43)
  })

  test("the table path and the native path agree, chained or not", () => {
    expect(crc32cTable(ascii("123456789"))).toBe(0xe3069283)
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), fc.integer({ min: 0, max: 0xffffffff }), (data, initial) =>
      crc32cTable(data, initial) === crc32c(data, initial) && crc32cTable(data) === crc32c(data)))
    // Long inputs go native; make sure both paths are exercised at their boundary.
    const long = new Uint8Array(1000).map((_, i) => i * 13)
    expect(crc32c(long)).toBe(crc32cTable(long))
    expect(crc32c(long.subarray(0, 64))).toBe(crc32cTable(long.subarray(0, 64)))
  })

  test("result is an unsigned 32-bit integer", () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 256 }), (data) => {
      const crc = crc32c(data)
      return Number.isInteger(crc) && crc >= 0 && crc <= 0xffffffff
    }))
  })

  test("chaining over any split equals one pass", () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 512 }), fc.nat(), fc.nat(), (data, a, b) => {
      const cut1 = a % (data.length + 1)
      const cut2 = cut1 + (b % (data.length - cut1 + 1))
      const chained = crc32c(data.subarray(cut2), crc32c(data.subarray(cut1, cut2), crc32c(data.subarray(0, cut1))))
      return chained === crc32c(data)
    }))
  })
})
