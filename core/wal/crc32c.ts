import { crc32c as nativeCrc32c } from "@node-rs/crc32"

/**
 * CRC-32C (Castagnoli), as Postgres' `pg_crc32c` with INIT/COMP/FIN folded together: the
 * returned value is already finished (final xor applied). Passing a previous result as
 * `initial` continues the checksum, so `crc32c(b, crc32c(a))` equals `crc32c(a ++ b)`; the
 * native function undoes and redoes the final xor internally (checked in crc32c.test.ts).
 */
export function crc32c(data: Uint8Array, initial = 0): number {
  return nativeCrc32c(data, initial) >>> 0
}
