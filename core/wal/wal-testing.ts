import { type GeneratedRecord, WalGenerator } from "./generator.js"
import { Lsn } from "./lsn.js"
import type { PgMajorVersion } from "./page.js"

/**
 * Test support shared by the WAL tests (and usable by the segment store's): a deterministic
 * stream of generated WAL described by a list of steps.
 */

export type WalStep =
  | { readonly kind: "message"; readonly messageBytes: number }
  | { readonly kind: "switch" }

export interface GeneratedWal {
  readonly startLsn: Lsn
  /** The whole stream from startLsn: every append's bytes, concatenated. */
  readonly bytes: Uint8Array
  readonly records: ReadonlyArray<GeneratedRecord>
  /** The message each record carries (undefined for XLOG_SWITCH). */
  readonly messages: ReadonlyArray<Uint8Array | undefined>
}

export const TEST_SYSTEM_ID = 0x0123_4567_89ab_cdefn

/** Message bytes that differ by record and by position, so misplaced bytes show. */
export function messageFor(index: number, length: number): Uint8Array {
  const bytes = new Uint8Array(length)
  for (let i = 0; i < length; i++) bytes[i] = (i * 31 + index * 7 + (i >>> 8)) & 0xff
  return bytes
}

export function generateWal(options: {
  readonly startLsn: Lsn
  readonly segmentSizeBytes: number
  readonly steps: ReadonlyArray<WalStep>
  readonly pgVersion?: PgMajorVersion
  readonly timelineId?: number
  readonly prevLsn?: Lsn
}): GeneratedWal {
  const generator = new WalGenerator({
    startLsn: options.startLsn,
    segmentSizeBytes: options.segmentSizeBytes,
    systemId: TEST_SYSTEM_ID,
    pgVersion: options.pgVersion ?? 15,
    timelineId: options.timelineId ?? 1,
    prevLsn: options.prevLsn
  })
  const records: GeneratedRecord[] = []
  const messages: Array<Uint8Array | undefined> = []
  options.steps.forEach((step, index) => {
    if (step.kind === "switch") {
      records.push(generator.appendSwitch())
      messages.push(undefined)
    } else {
      const message = messageFor(index, step.messageBytes)
      records.push(generator.appendLogicalMessage(`p${index}`, message))
      messages.push(message)
    }
  })
  const total = generator.insertLsn - options.startLsn
  const bytes = new Uint8Array(total)
  for (const record of records) bytes.set(record.bytes, record.fromLsn - options.startLsn)
  return { startLsn: options.startLsn, bytes, records, messages }
}
