// Goal: the shared reader never throws on any input, records the first problem it meets, and
// reads back exactly what the writer wrote; the writer refuses values outside their type.
// Method: fixed byte patterns for each width and endianness, boundary values for the u53 and
// i53 checks, and fast-check properties for round trips and for random read sequences over
// random bytes.
import fc from "fast-check"
import { describe, expect, test } from "vitest"
import { InvariantViolation, U53_MAX } from "../assert.js"
import { ByteReader, ByteWriter, decodeUtf8 } from "./bytes.js"

const bytesOf = (...values: number[]) => new Uint8Array(values)

describe("ByteReader", () => {
  test("reads fixed widths in both byte orders", () => {
    const reader = new ByteReader(bytesOf(0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08))
    expect(reader.u16BE("a")).toBe(0x0102)
    expect(reader.u16LE("b")).toBe(0x0403)
    expect(reader.u32BE("c")).toBe(0x05060708)
    expect(reader.remainingBytes).toBe(0)
    expect(reader.failed).toBe(false)
    const le = new ByteReader(bytesOf(0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08))
    expect(le.u64LE("x")).toBe(0x0807060504030201n)
    const be = new ByteReader(bytesOf(0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe))
    expect(be.u64BE("x")).toBe(0xfffffffffffffffen)
  })

  test("u53 accepts 2^53-1 and refuses 2^53 in both byte orders", () => {
    const max = new ByteWriter().u64BE(BigInt(U53_MAX)).u64LE(BigInt(U53_MAX)).finish()
    const reader = new ByteReader(max)
    expect(reader.u53BE("lsn")).toBe(U53_MAX)
    expect(reader.u53LE("lsn")).toBe(U53_MAX)
    expect(reader.failed).toBe(false)

    const over = new ByteReader(new ByteWriter().u64BE(2n ** 53n).finish())
    expect(over.u53BE("commit_lsn")).toBe(0)
    expect(over.failure).toBe("commit_lsn 9007199254740992 above 2^53-1")

    const overLe = new ByteReader(new ByteWriter().u64LE(2n ** 64n - 1n).finish())
    expect(overLe.u53LE("term")).toBe(0)
    expect(overLe.failure).toMatch(/term 18446744073709551615 above 2\^53-1/)
  })

  test("i53 accepts ±(2^53-1) and refuses what lies beyond", () => {
    const ok = new ByteReader(new ByteWriter().i64BE(-U53_MAX).i64BE(U53_MAX).finish())
    expect(ok.i53BE("ts")).toBe(-U53_MAX)
    expect(ok.i53BE("ts")).toBe(U53_MAX)
    expect(ok.failed).toBe(false)
    const low = new ByteReader(new ByteWriter().i64BE(-(2n ** 53n)).finish())
    low.i53BE("ts")
    expect(low.failure).toMatch(/outside/)
  })

  test("a short buffer is a recorded failure, and the first failure sticks", () => {
    const reader = new ByteReader(bytesOf(0x01, 0x02, 0x03))
    expect(reader.u32BE("generation")).toBe(0)
    expect(reader.failure).toBe("truncated reading generation: need 4 bytes, 3 left")
    expect(reader.u8("next")).toBe(0)
    reader.fail("later problem")
    expect(reader.failure).toBe("truncated reading generation: need 4 bytes, 3 left")
  })

  test("counts above the maximum or beyond the bytes left are refused", () => {
    const absurd = new ByteReader(bytesOf(0xff, 0xff, 0xff, 0xff))
    expect(absurd.countU32BE("entries", 1 << 20, 16)).toBe(0)
    expect(absurd.failure).toMatch(/entries 4294967295 above the maximum 1048576/)

    const short = new ByteReader(bytesOf(0, 0, 0, 2, ...new Array(31).fill(0)))
    expect(short.countU32BE("entries", 10, 16)).toBe(0)
    expect(short.failure).toMatch(/needs at least 32 bytes, 31 left/)

    const huge = new ByteReader(new ByteWriter().u64LE(2n ** 63n).finish())
    expect(huge.countU64LE("vec", 100, 1)).toBe(0)
    expect(huge.failure).toMatch(/above the maximum 100/)
  })

  test("C strings: terminated, unterminated, too long, invalid UTF-8", () => {
    const good = new ByteReader(bytesOf(0x68, 0x69, 0x00, 0x07))
    expect(good.cstring(2, "host")).toBe("hi")
    expect(good.u8("after")).toBe(7)

    const unterminated = new ByteReader(bytesOf(0x68, 0x69))
    unterminated.cstring(10, "host")
    expect(unterminated.failure).toBe("host: string not terminated")

    const long = new ByteReader(bytesOf(0x61, 0x61, 0x61, 0x00))
    long.cstring(2, "host")
    expect(long.failure).toBe("host: string longer than 2 bytes")

    const invalid = new ByteReader(bytesOf(0xc3, 0x28, 0x00))
    invalid.cstring(10, "host")
    expect(invalid.failure).toBe("host: invalid UTF-8")
  })

  test("bincode strings carry a u64 LE length", () => {
    const bytes = new ByteWriter().stringU64LE("héllo").finish()
    expect([...bytes.subarray(0, 8)]).toEqual([6, 0, 0, 0, 0, 0, 0, 0])
    expect(new ByteReader(bytes).stringU64LE(16, "name")).toBe("héllo")
    const tooLong = new ByteReader(bytes)
    tooLong.stringU64LE(5, "name")
    expect(tooLong.failure).toMatch(/name length 6 above the maximum 5/)
  })

  test("bytes() copies: the result survives changes to the input", () => {
    const input = bytesOf(1, 2, 3)
    const out = new ByteReader(input).bytes(3, "data")
    input[0] = 9
    expect([...out]).toEqual([1, 2, 3])
  })

  test("random read sequences over random bytes never throw", () => {
    const operation = fc.constantFrom(
      "u8", "u16BE", "u16LE", "u32BE", "u32LE", "i32BE", "u64BE", "u64LE", "u53BE", "u53LE", "i53BE",
      "count", "cstring", "string", "bytes"
    )
    fc.assert(fc.property(fc.uint8Array({ maxLength: 64 }), fc.array(operation, { maxLength: 20 }), (input, operations) => {
      const reader = new ByteReader(input)
      for (const op of operations) {
        switch (op) {
          case "count":
            reader.countU32BE("n", 100, 4)
            break
          case "cstring":
            reader.cstring(16, "s")
            break
          case "string":
            reader.stringU64LE(16, "s")
            break
          case "bytes":
            reader.bytes(3, "b")
            break
          default:
            reader[op]("x")
        }
      }
      expect(reader.offsetBytes).toBeLessThanOrEqual(input.byteLength)
    }))
  })
})

describe("ByteWriter", () => {
  test("round-trips every width", () => {
    fc.assert(fc.property(
      fc.nat(0xff), fc.nat(0xffff), fc.maxSafeNat().map((n) => n % 0x1_0000_0000), fc.integer(),
      fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), fc.maxSafeNat(), fc.maxSafeInteger(),
      (u8, u16, u32, i32, u64, u53, i53) => {
        const bytes = new ByteWriter(1)
          .u8(u8).u16BE(u16).u16LE(u16).u32BE(u32).u32LE(u32).i32BE(i32)
          .u64BE(u64).u64LE(u64).u64BE(u53).u64LE(u53).i64BE(i53)
          .finish()
        const reader = new ByteReader(bytes)
        expect(reader.u8("a")).toBe(u8)
        expect(reader.u16BE("a")).toBe(u16)
        expect(reader.u16LE("a")).toBe(u16)
        expect(reader.u32BE("a")).toBe(u32)
        expect(reader.u32LE("a")).toBe(u32)
        expect(reader.i32BE("a")).toBe(i32)
        expect(reader.u64BE("a")).toBe(u64)
        expect(reader.u64LE("a")).toBe(u64)
        expect(reader.u53BE("a")).toBe(u53)
        expect(reader.u53LE("a")).toBe(u53)
        expect(reader.i53BE("a")).toBe(i53)
        expect(reader.failed).toBe(false)
        expect(reader.remainingBytes).toBe(0)
      }
    ))
  })

  test("round-trips strings", () => {
    const text = fc.string({ unit: "grapheme", maxLength: 40 }).filter((s) => !s.includes("\u0000"))
    fc.assert(fc.property(text, text, (a, b) => {
      const reader = new ByteReader(new ByteWriter(2).cstring(a).stringU64LE(b).finish())
      expect(reader.cstring(1000, "a")).toBe(a)
      expect(reader.stringU64LE(1000, "b")).toBe(b)
      expect(reader.failed).toBe(false)
    }))
  })

  test("refuses values outside their type", () => {
    expect(() => new ByteWriter().u8(256)).toThrow(InvariantViolation)
    expect(() => new ByteWriter().u16BE(-1)).toThrow(InvariantViolation)
    expect(() => new ByteWriter().u32BE(2 ** 32)).toThrow(InvariantViolation)
    expect(() => new ByteWriter().u32LE(1.5)).toThrow(InvariantViolation)
    expect(() => new ByteWriter().u64BE(U53_MAX + 1)).toThrow(InvariantViolation)
    expect(() => new ByteWriter().u64BE(2n ** 64n)).toThrow(InvariantViolation)
    expect(() => new ByteWriter().u64LE(-1n)).toThrow(InvariantViolation)
    expect(() => new ByteWriter().i64BE(2n ** 63n)).toThrow(InvariantViolation)
    expect(() => new ByteWriter().cstring("a\u0000b")).toThrow(InvariantViolation)
  })
})

test("decodeUtf8 refuses invalid sequences instead of replacing them", () => {
  expect(decodeUtf8(bytesOf(0x61, 0xff))).toBeUndefined()
  expect(decodeUtf8(bytesOf(0xe2, 0x82, 0xac))).toBe("€")
})
