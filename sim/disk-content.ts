import { assert } from "../core/assert.js"

/**
 * The bytes of one simulated file, kept in fixed-size pages allocated on first non-zero write.
 * A never-written or zero-filled range holds no memory, so a zero-filled 16 MiB WAL segment
 * costs nothing until WAL lands in it, and a world's memory follows the data actually written
 * (the simulator keeps a durable and a current copy of every file, on every node, per seed).
 * Invariant: bytes past `sizeBytes` are zero in every allocated page, so growing needs no fill.
 */
export const PAGE_SIZE_BYTES = 64 * 1024
/** No simulated file grows past this. */
export const FILE_SIZE_BYTES_MAX = 1024 * 1024 * 1024
assert(FILE_SIZE_BYTES_MAX % PAGE_SIZE_BYTES === 0, "files hold whole pages")

export class PagedContent {
  sizeBytes = 0
  private pages: Array<Uint8Array | undefined> = []

  clone(): PagedContent {
    const copy = new PagedContent()
    copy.sizeBytes = this.sizeBytes
    for (let i = 0; i < this.pages.length; i++) copy.pages.push(this.pages[i]?.slice())
    return copy
  }

  /** Up to `length` bytes at `offsetBytes`; shorter only at the end of the file. */
  read(offsetBytes: number, length: number): Uint8Array {
    const endBytes = Math.min(this.sizeBytes, offsetBytes + length)
    if (endBytes <= offsetBytes) return new Uint8Array(0)
    // Within one page (most reads): one copying slice, not a zeroed allocation and then a set.
    const firstPage = Math.floor(offsetBytes / PAGE_SIZE_BYTES)
    if (Math.floor((endBytes - 1) / PAGE_SIZE_BYTES) === firstPage) {
      const page = this.pages[firstPage]
      const inPage = offsetBytes - firstPage * PAGE_SIZE_BYTES
      return page === undefined ? new Uint8Array(endBytes - offsetBytes) : page.slice(inPage, inPage + endBytes - offsetBytes)
    }
    const result = new Uint8Array(endBytes - offsetBytes)
    for (let position = offsetBytes; position < endBytes;) {
      const pageNo = Math.floor(position / PAGE_SIZE_BYTES)
      const inPage = position - pageNo * PAGE_SIZE_BYTES
      const count = Math.min(PAGE_SIZE_BYTES - inPage, endBytes - position)
      const page = this.pages[pageNo]
      if (page !== undefined) result.set(page.subarray(inPage, inPage + count), position - offsetBytes)
      position += count
    }
    return result
  }

  /** Writes the first `lengthBytes` of `data` (zeros when undefined) at `offsetBytes`, extending with zeros. */
  write(offsetBytes: number, data: Uint8Array | undefined, lengthBytes: number): void {
    const endBytes = offsetBytes + lengthBytes
    assert(endBytes <= FILE_SIZE_BYTES_MAX, "simulated file over FILE_SIZE_BYTES_MAX")
    assert(data === undefined || lengthBytes <= data.length, "write longer than its data")
    if (data === undefined) {
      // Past the end every byte is zero already.
      this.zero(offsetBytes, Math.min(endBytes, this.sizeBytes))
    } else {
      for (let position = offsetBytes; position < endBytes;) {
        const pageNo = Math.floor(position / PAGE_SIZE_BYTES)
        const inPage = position - pageNo * PAGE_SIZE_BYTES
        const count = Math.min(PAGE_SIZE_BYTES - inPage, endBytes - position)
        this.page(pageNo).set(data.subarray(position - offsetBytes, position - offsetBytes + count), inPage)
        position += count
      }
    }
    if (endBytes > this.sizeBytes) this.sizeBytes = endBytes
  }

  /** Shrinks (zeroing what is cut off, to keep the invariant) or extends with zeros. */
  resize(sizeBytes: number): void {
    assert(sizeBytes <= FILE_SIZE_BYTES_MAX, "simulated file over FILE_SIZE_BYTES_MAX")
    if (sizeBytes < this.sizeBytes) {
      this.zero(sizeBytes, this.sizeBytes)
      this.pages.length = Math.min(this.pages.length, Math.ceil(sizeBytes / PAGE_SIZE_BYTES))
    }
    this.sizeBytes = sizeBytes
  }

  /** Memory held by pages (for tests and memory figures). */
  get allocatedBytes(): number {
    let count = 0
    for (const page of this.pages) if (page !== undefined) count++
    return count * PAGE_SIZE_BYTES
  }

  private zero(fromBytes: number, toBytes: number): void {
    for (let position = fromBytes; position < toBytes;) {
      const pageNo = Math.floor(position / PAGE_SIZE_BYTES)
      const inPage = position - pageNo * PAGE_SIZE_BYTES
      const count = Math.min(PAGE_SIZE_BYTES - inPage, toBytes - position)
      const page = this.pages[pageNo]
      if (page !== undefined) {
        if (count === PAGE_SIZE_BYTES) this.pages[pageNo] = undefined
        else page.fill(0, inPage, inPage + count)
      }
      position += count
    }
  }

  private page(pageNo: number): Uint8Array {
    while (this.pages.length <= pageNo) this.pages.push(undefined)
    let page = this.pages[pageNo]
    if (page === undefined) {
      page = new Uint8Array(PAGE_SIZE_BYTES)
      this.pages[pageNo] = page
    }
    return page
  }
}

/** True when every byte is zero (checked 8 bytes a step, at any alignment). */
export function isAllZero(data: Uint8Array): boolean {
  let i = 0
  if (data.length >= 64) {
    // A DataView reads any alignment: writes from nodes are subarrays at arbitrary offsets,
    // which a Uint32Array view refused (the byte loop then ran over the whole write).
    const view = new DataView(data.buffer, data.byteOffset, data.length)
    for (; i + 8 <= data.length; i += 8) if ((view.getInt32(i, true) | view.getInt32(i + 4, true)) !== 0) return false
  }
  for (; i < data.length; i++) if (data[i] !== 0) return false
  return true
}

/**
 * Copies small byte arrays into shared slabs: one ArrayBuffer allocation per slab instead of
 * one per copy (allocation, not copying, dominated small simulated writes). A slab is freed
 * once no copy in it is referenced; copies of unsynced writes live until the next sync, so
 * slabs are small to bound what one long-lived copy pins.
 */
export const SLAB_SIZE_BYTES = 256 * 1024

export class SlabCopier {
  private slab = new Uint8Array(0)
  private usedBytes = 0

  copy(data: Uint8Array): Uint8Array {
    if (data.length > SLAB_SIZE_BYTES / 4) return data.slice()
    if (this.usedBytes + data.length > this.slab.length) {
      this.slab = new Uint8Array(SLAB_SIZE_BYTES)
      this.usedBytes = 0
    }
    const copy = this.slab.subarray(this.usedBytes, this.usedBytes + data.length)
    copy.set(data)
    // Keep copies 8-byte aligned so word-wise scans of them stay aligned.
    this.usedBytes += (data.length + 7) & ~7
    return copy
  }
}
