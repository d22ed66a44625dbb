// Goal: the proposer's WAL buffer returns exactly the bytes appended at each LSN, stays within
// its maximum (but for the newest chunk), and only ever drops from the front. Method: fast-check
// sequences of appends and releases checked against a plain array model of the whole stream.
import fc from "fast-check"
import { describe, expect, test } from "vitest"
import { Lsn } from "../wal/lsn.js"
import { WalBuffer } from "./wal-buffer.js"

const START = 0x1000028

describe("WAL buffer", () => {
  test("reads what was appended; bounded; drops only from the front", () => {
    const arbStep = fc.oneof(
      fc.record({ kind: fc.constant("append" as const), length: fc.integer({ min: 0, max: 3000 }) }),
      fc.record({ kind: fc.constant("release" as const), fraction: fc.double({ min: 0, max: 1, noNaN: true }) })
    )
    fc.assert(fc.property(fc.integer({ min: 1, max: 8000 }), fc.array(arbStep, { maxLength: 40 }), fc.integer({ min: 0, max: 1000 }), (bytesMax, steps, seed) => {
      const buffer = new WalBuffer(Lsn(START), bytesMax)
      const model: number[] = []
      let previousStart = START
      for (const step of steps) {
        if (step.kind === "append") {
          const bytes = Uint8Array.from({ length: step.length }, (_, i) => (model.length + i + seed) & 0xff)
          buffer.append(buffer.endLsn, bytes)
          model.push(...bytes)
        } else {
          buffer.releaseBelow(Lsn(Math.floor(START + step.fraction * model.length)))
        }
        expect(buffer.endLsn).toBe(START + model.length)
        expect(buffer.startLsn).toBeGreaterThanOrEqual(previousStart)
        previousStart = buffer.startLsn
        expect(buffer.sizeBytes).toBe(buffer.endLsn - buffer.startLsn)
        // Over the maximum only while the newest chunk alone is bigger.
        if (buffer.sizeBytes > bytesMax) expect(buffer.sizeBytes).toBeLessThanOrEqual(Math.max(...steps.filter((s) => s.kind === "append").map((s) => s.length)))
        const from = buffer.startLsn + Math.floor((buffer.sizeBytes * seed) / 2000)
        const read = buffer.read(Lsn(from), buffer.endLsn)
        expect(Array.from(read)).toEqual(model.slice(from - START))
      }
    }))
  })

  test("a range within one chunk is a view of it (no copy); a range across chunks is joined", () => {
    const buffer = new WalBuffer(Lsn(START))
    const first = Uint8Array.from({ length: 100 }, (_, i) => i)
    const second = Uint8Array.from({ length: 50 }, (_, i) => 100 + i)
    buffer.append(Lsn(START), first)
    buffer.append(Lsn(START + 100), second)
    const inside = buffer.read(Lsn(START + 10), Lsn(START + 100))
    expect(inside.buffer).toBe(first.buffer)
    expect(inside.byteOffset).toBe(10)
    expect(inside.byteLength).toBe(90)
    expect(buffer.read(Lsn(START + 100), Lsn(START + 150)).buffer).toBe(second.buffer)
    const across = buffer.read(Lsn(START + 90), Lsn(START + 120))
    expect(across.buffer).not.toBe(first.buffer)
    expect(Array.from(across)).toEqual(Array.from({ length: 30 }, (_, i) => 90 + i))
    expect(buffer.read(Lsn(START + 150), Lsn(START + 150)).byteLength).toBe(0)
  })

  test("an append must continue the WAL", () => {
    const buffer = new WalBuffer(Lsn(START))
    buffer.append(Lsn(START), new Uint8Array(10))
    expect(() => buffer.append(Lsn(START + 11), new Uint8Array(1))).toThrow(/buffer ends at/)
  })
})
