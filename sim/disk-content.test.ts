// Goal: paged file content reads back exactly what a flat byte array would hold, under any mix
// of writes, zero-fills and resizes, and a clone is independent of its original. Method: a
// fast-check model test against a plain Uint8Array, with offsets around page boundaries.
import fc from "fast-check"
import { describe, expect, test } from "vitest"
import { isAllZero, PAGE_SIZE_BYTES, PagedContent } from "./disk-content.js"

type Op =
  | { readonly kind: "write"; readonly offsetBytes: number; readonly data: Uint8Array }
  | { readonly kind: "zero"; readonly offsetBytes: number; readonly lengthBytes: number }
  | { readonly kind: "resize"; readonly sizeBytes: number }

const nearPageBoundaries = fc.oneof(
  fc.integer({ min: 0, max: 4 * PAGE_SIZE_BYTES }),
  fc.tuple(fc.integer({ min: 0, max: 4 }), fc.integer({ min: -3, max: 3 })).map(([page, delta]) => Math.max(0, page * PAGE_SIZE_BYTES + delta))
)
const arbOp: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ offsetBytes: nearPageBoundaries, length: fc.integer({ min: 0, max: PAGE_SIZE_BYTES + 10 }), fill: fc.integer({ min: 1, max: 255 }) })
    .map(({ offsetBytes, length, fill }) => ({ kind: "write" as const, offsetBytes, data: new Uint8Array(length).map((_, i) => (fill + i) % 256) })),
  fc.record({ offsetBytes: nearPageBoundaries, lengthBytes: fc.integer({ min: 0, max: 2 * PAGE_SIZE_BYTES + 10 }) }).map((r) => ({ kind: "zero" as const, ...r })),
  fc.record({ sizeBytes: nearPageBoundaries }).map((r) => ({ kind: "resize" as const, ...r }))
)

function applyToModel(model: Uint8Array, op: Op): Uint8Array {
  const end = op.kind === "resize" ? op.sizeBytes : op.kind === "write" ? op.offsetBytes + op.data.length : op.offsetBytes + op.lengthBytes
  let next: Uint8Array = model
  if (op.kind === "resize") {
    next = new Uint8Array(op.sizeBytes)
    next.set(model.subarray(0, Math.min(model.length, op.sizeBytes)))
    return next
  }
  if (op.kind === "write" && op.data.length === 0) return model
  if (end > model.length) {
    next = new Uint8Array(end)
    next.set(model)
  }
  if (op.kind === "write") next.set(op.data, op.offsetBytes)
  else next.fill(0, op.offsetBytes, end)
  return next
}

function applyToContent(content: PagedContent, op: Op): void {
  if (op.kind === "resize") content.resize(op.sizeBytes)
  else if (op.kind === "write") {
    if (op.data.length > 0) content.write(op.offsetBytes, op.data, op.data.length)
  } else content.write(op.offsetBytes, undefined, op.lengthBytes)
}

describe("PagedContent", () => {
  test("reads back what a flat array holds; clones are independent", () => {
    fc.assert(fc.property(fc.array(arbOp, { maxLength: 12 }), fc.array(arbOp, { maxLength: 4 }), fc.nat(), fc.nat(), (ops, afterClone, readOffset, readLength) => {
      let model: Uint8Array = new Uint8Array(0)
      const content = new PagedContent()
      for (const op of ops) {
        model = applyToModel(model, op)
        applyToContent(content, op)
      }
      const snapshot = model.slice()
      const copy = content.clone()
      for (const op of afterClone) applyToContent(content, op)
      expect(copy.sizeBytes).toBe(snapshot.length)
      expect(Buffer.from(copy.read(0, copy.sizeBytes)).equals(Buffer.from(snapshot))).toBe(true)
      const offset = readOffset % (snapshot.length + 10)
      const length = readLength % (2 * PAGE_SIZE_BYTES)
      expect(Buffer.from(copy.read(offset, length)).equals(Buffer.from(snapshot.subarray(offset, offset + length)))).toBe(true)
    }), { numRuns: 300 })
  })

  test("zero-filled ranges hold no pages", () => {
    const content = new PagedContent()
    content.write(0, undefined, 16 * 1024 * 1024)
    expect(content.sizeBytes).toBe(16 * 1024 * 1024)
    expect(content.allocatedBytes).toBe(0)
    content.write(PAGE_SIZE_BYTES + 5, new Uint8Array([1, 2, 3]), 3)
    expect(content.allocatedBytes).toBe(PAGE_SIZE_BYTES)
    content.write(PAGE_SIZE_BYTES, undefined, PAGE_SIZE_BYTES) // zeroing a whole page frees it
    expect(content.allocatedBytes).toBe(0)
    expect(content.read(PAGE_SIZE_BYTES, 10).every((v) => v === 0)).toBe(true)
  })

  test("isAllZero agrees with a byte loop at any alignment", () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 300 }), fc.integer({ min: 0, max: 7 }), fc.option(fc.nat()), (length, shift, nonZeroAt) => {
      const backing = new Uint8Array(length + 8)
      const view = backing.subarray(shift, shift + length)
      if (nonZeroAt !== null && length > 0) view[nonZeroAt % length] = 1
      return isAllZero(view) === view.every((v) => v === 0)
    }))
  })
})
