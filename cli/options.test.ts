import { InvalidArgumentError } from "commander"
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { parseBytes, parseDurationUs } from "./options.js"

describe("flag parsers", () => {
  it("reads durations as Neon's flags write them", () => {
    expect(parseDurationUs("5000ms")).toBe(5_000_000)
    expect(parseDurationUs("15m")).toBe(900_000_000)
    expect(parseDurationUs("300s")).toBe(300_000_000)
    expect(parseDurationUs("1m30s")).toBe(90_000_000)
    expect(parseDurationUs("2")).toBe(2_000_000)
    expect(parseDurationUs("0.5s")).toBe(500_000)
    for (const bad of ["", "s", "5x", "-1s", "1s garbage", "ms5"]) expect(() => parseDurationUs(bad)).toThrow(InvalidArgumentError)
  })

  it("reads byte counts with binary suffixes", () => {
    expect(parseBytes("134217728")).toBe(134_217_728)
    expect(parseBytes("128M")).toBe(134_217_728)
    expect(parseBytes("1KiB")).toBe(1024)
    for (const bad of ["", "1.5M", "-3", "12T"]) expect(() => parseBytes(bad)).toThrow(InvalidArgumentError)
  })

  it("never throws anything but InvalidArgumentError, and never returns a negative or unsafe value", () => {
    fc.assert(fc.property(fc.string(), (text) => {
      for (const parse of [parseDurationUs, parseBytes]) {
        try {
          const value = parse(text)
          expect(Number.isSafeInteger(value) && value >= 0).toBe(true)
        } catch (error) {
          expect(error).toBeInstanceOf(InvalidArgumentError)
        }
      }
    }))
  })
})
