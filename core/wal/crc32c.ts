import { crc32c as nativeCrc32c } from "@node-rs/crc32"
import { assert } from "../assert.js"

/**
 * CRC-32C (Castagnoli), as Postgres' `pg_crc32c` with INIT/COMP/FIN folded together: the
 * returned value is already finished (final xor applied). Passing a previous result as
 * `initial` continues the checksum, so `crc32c(b, crc32c(a))` equals `crc32c(a ++ b)`; the
 * native function undoes and redoes the final xor internally (checked in crc32c.test.ts).
 */
export function crc32c(data: Uint8Array, initial = 0): number {
  if (data.length >= NATIVE_CRC_BYTES_MIN) return nativeCrc32c(data, initial) >>> 0
  return crc32cSlicing(new DataView(data.buffer, data.byteOffset, data.length), 0, data.length, initial) >>> 0
}

/**
 * `crc32c` over the bytes [start, end) of `view`, without making a view per call: a decoder
 * makes one DataView per chunk and checksums each record where it lies, piece by piece
 * across page headers and chunks. A Uint8Array over the range is made only for the native
 * call, at sizes where it costs a few percent of the call.
 *
 * The result is the same 32 bits as `crc32c`'s, as a signed int32 (`>>> 0` gives crc32c's
 * value; compare with DataView.getInt32): V8 keeps an int32 a small integer, where a uint32
 * above 2^31 returned from a call that is not inlined is a heap number, an allocation per
 * record on the decoder's hot path. `initial` may be either form.
 */
export function crc32cRange(view: DataView, start: number, end: number, initial = 0): number {
  assert(0 <= start && start <= end && end <= view.byteLength, "a CRC range lies inside its view")
  if (end - start < NATIVE_CRC_BYTES_MIN) return crc32cSlicing(view, start, end, initial)
  return nativeCrc32c(new Uint8Array(view.buffer, view.byteOffset + start, end - start), initial) | 0
}

/**
 * Below this many bytes slicing-by-8 beats the native call. Measured on this machine (`npm
 * run bench wal` prints both by size): slicing-by-8 runs at about 1.5 GB/s from 64 bytes on;
 * the native call costs ~0.15 µs and then runs at ~5 GB/s, so they meet between 256 and 384
 * bytes. A small WAL record (30-100 bytes) stays in JavaScript; a full-page image goes native.
 */
export const NATIVE_CRC_BYTES_MIN = 320

/** Reflected CRC-32C polynomial. */
const CRC32C_POLYNOMIAL = 0x82f63b78

/**
 * Slicing-by-8 tables (Intel's "slicing-by-8", as pg_crc32c_sb8.c): row k maps a byte to
 * its CRC contribution k bytes further on, so eight bytes fold in one step. One flat array
 * keeps the lookups to one bounds check each.
 */
const SLICES = 8
const TABLES = (() => {
  const tables = new Int32Array(SLICES * 256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let bit = 0; bit < 8; bit++) c = (c & 1) !== 0 ? (c >>> 1) ^ CRC32C_POLYNOMIAL : c >>> 1
    tables[n] = c
  }
  for (let n = 0; n < 256; n++) {
    for (let slice = 1; slice < SLICES; slice++) {
      const previous = tables[(slice - 1) * 256 + n]!
      tables[slice * 256 + n] = tables[previous & 0xff]! ^ (previous >>> 8)
    }
  }
  return tables
})()

/**
 * Slicing-by-8 CRC-32C over view[start, end); same contract as `crc32cRange` (an int32),
 * without its range check.
 * DataView reads of 32-bit words measured 25 % faster than assembling them from bytes.
 */
export function crc32cSlicing(view: DataView, start: number, end: number, initial = 0): number {
  const t = TABLES
  let c = ~initial
  let i = start
  // Eight bytes a step; row 7 - k takes the step's byte k.
  for (const stop = end - 7; i < stop; i += 8) {
    c ^= view.getInt32(i, true)
    const high = view.getInt32(i + 4, true)
    c = t[1792 + (c & 0xff)]! ^ t[1536 + ((c >>> 8) & 0xff)]! ^ t[1280 + ((c >>> 16) & 0xff)]! ^ t[1024 + (c >>> 24)]! ^
      t[768 + (high & 0xff)]! ^ t[512 + ((high >>> 8) & 0xff)]! ^ t[256 + ((high >>> 16) & 0xff)]! ^ t[high >>> 24]!
  }
  // A record header's 20 CRC'd bytes end with one four-byte step.
  if (end - i >= 4) {
    c ^= view.getInt32(i, true)
    c = t[768 + (c & 0xff)]! ^ t[512 + ((c >>> 8) & 0xff)]! ^ t[256 + ((c >>> 16) & 0xff)]! ^ t[c >>> 24]!
    i += 4
  }
  for (; i < end; i++) c = t[(c ^ view.getUint8(i)) & 0xff]! ^ (c >>> 8)
  return ~c
}

/** Byte-at-a-time CRC-32C, the reference the fast paths are tested against; same contract as `crc32c`. */
export function crc32cTable(data: Uint8Array, initial = 0): number {
  const t = TABLES
  let c = ~initial
  for (let i = 0; i < data.length; i++) c = t[(c ^ data[i]!) & 0xff]! ^ (c >>> 8)
  return ~c >>> 0
}
