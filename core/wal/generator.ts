import { assert } from "../assert.js"
import { crc32c } from "./crc32c.js"
import { isValidSegmentSize, Lsn, XLOG_BLCKSZ_BYTES } from "./lsn.js"
import {
  encodePageHeaderInto,
  type PgMajorVersion,
  SIZE_OF_XLOG_LONG_PHD_BYTES,
  SIZE_OF_XLOG_SHORT_PHD_BYTES,
  standardPageHeaderSizeBytes,
  XLP_FIRST_IS_CONTRECORD,
  XLP_LONG_HEADER,
  xlogPageMagic
} from "./page.js"
import {
  encodeLogicalMessageHeaderInto,
  encodeRecordHeaderInto,
  logicalMessageMainDataLengthBytes,
  maxAlign,
  RM_LOGICALMSG_ID,
  RM_XLOG_ID,
  SIZE_OF_XLOG_RECORD_BYTES,
  XLOG_LOGICAL_MESSAGE,
  XLOG_RECORD_CRC_OFFSET_BYTES,
  XLOG_RECORD_MAX_SIZE_BYTES,
  XLOG_SWITCH,
  XLR_BLOCK_ID_DATA_LONG,
  XLR_BLOCK_ID_DATA_SHORT
} from "./record.js"
import { isValidDecoderStart } from "./decoder.js"

/**
 * Writes valid WAL, record by record, as a Postgres primary would lay it out: page headers
 * (long at segment starts), records MAXALIGNed, continuations across pages and segments with
 * XLP_FIRST_IS_CONTRECORD and xlp_rem_len, an xl_prev chain and CRCs. Each append returns the
 * bytes that extend the stream from the previous append's end, so a caller can stream them
 * (the simulated compute) or lay them into segment files (`sk wal synth`).
 */

export interface WalGeneratorOptions {
  /** Where the first record goes: 8-aligned, a page start or past its page header. */
  readonly startLsn: Lsn
  readonly segmentSizeBytes: number
  readonly systemId: bigint
  readonly pgVersion: PgMajorVersion
  readonly timelineId: number
  /** xl_prev of the first record; 0 (invalid) when absent. */
  readonly prevLsn?: Lsn | undefined
}

export interface GeneratedRecord {
  /** Where the record's header starts. */
  readonly startLsn: Lsn
  /** Just past its last byte. */
  readonly endLsn: Lsn
  /** Where the next record goes (the aligned end, or the next segment after XLOG_SWITCH). */
  readonly nextLsn: Lsn
  readonly totalLengthBytes: number
  /** LSN of `bytes[0]`: the previous append's nextLsn. */
  readonly fromLsn: Lsn
  /** WAL bytes [fromLsn, nextLsn): page headers, the record, padding. */
  readonly bytes: Uint8Array
}

export interface RecordSpec {
  readonly rmid: number
  readonly info: number
  readonly xid?: number | undefined
  /** The body after the 24-byte header (block headers, data headers, data), in order. */
  readonly body: ReadonlyArray<Uint8Array>
}

export interface LogicalMessageOptions {
  readonly transactional?: boolean | undefined
  readonly dbId?: number | undefined
  readonly xid?: number | undefined
}

const utf8 = new TextEncoder()

/** xl_tot_len of a logical message record (no origin, no block references). */
export function logicalMessageRecordLengthBytes(prefixLengthBytes: number, messageLengthBytes: number): number {
  const mainData = logicalMessageMainDataLengthBytes(prefixLengthBytes, messageLengthBytes)
  return SIZE_OF_XLOG_RECORD_BYTES + dataHeaderLengthBytes(mainData) + mainData
}

/**
 * The message length that makes a logical message record exactly `totalLengthBytes` long,
 * or undefined when no length does (the data header grows by 3 bytes at 256 bytes of data).
 */
export function logicalMessageLengthForRecord(prefixLengthBytes: number, totalLengthBytes: number): number | undefined {
  for (const headerBytes of [2, 5]) {
    const messageBytes = totalLengthBytes - SIZE_OF_XLOG_RECORD_BYTES - headerBytes -
      logicalMessageMainDataLengthBytes(prefixLengthBytes, 0)
    if (messageBytes >= 0 && logicalMessageRecordLengthBytes(prefixLengthBytes, messageBytes) === totalLengthBytes) {
      return messageBytes
    }
  }
  return undefined
}

/** XLogRecordDataHeaderShort (id 255, u8 length) below 256 bytes, else Long (id 254, u32). */
function dataHeaderLengthBytes(mainDataLengthBytes: number): number {
  return mainDataLengthBytes < 256 ? 2 : 5
}

export class WalGenerator {
  readonly segmentSizeBytes: number
  readonly systemId: bigint
  readonly pgVersion: PgMajorVersion
  readonly timelineId: number
  private readonly magic: number
  private insert: number
  private lastRecord: number

  constructor(options: WalGeneratorOptions) {
    assert(isValidSegmentSize(options.segmentSizeBytes), "segment size is a power of two in 1 MiB..1 GiB")
    assert(isValidDecoderStart(options.startLsn, options.segmentSizeBytes), "generator starts at a record start or page start")
    assert(Number.isInteger(options.timelineId) && options.timelineId >= 1 && options.timelineId <= 0xffff_ffff, "timeline id is a positive u32")
    assert(options.systemId >= 0n && options.systemId < 1n << 64n, "system id is a u64")
    this.segmentSizeBytes = options.segmentSizeBytes
    this.systemId = options.systemId
    this.pgVersion = options.pgVersion
    this.timelineId = options.timelineId
    this.magic = xlogPageMagic(options.pgVersion)
    this.insert = options.startLsn
    this.lastRecord = options.prevLsn ?? 0
    assert(this.lastRecord < this.insert || this.insert === 0, "xl_prev lies before the first record")
  }

  /** Where the next append's bytes begin: the last record's nextLsn (or the start LSN). */
  get insertLsn(): Lsn {
    return Lsn(this.insert)
  }

  /** Start of the last record appended: the next record's xl_prev. */
  get lastRecordLsn(): Lsn {
    return Lsn(this.lastRecord)
  }

  /** A logical message (pg_logical_emit_message): RM_LOGICALMSG_ID, XLOG_LOGICAL_MESSAGE. */
  appendLogicalMessage(prefix: string, message: Uint8Array, options: LogicalMessageOptions = {}): GeneratedRecord {
    const prefixBytes = utf8.encode(prefix)
    const mainData = logicalMessageMainDataLengthBytes(prefixBytes.length, message.length)
    const headerBytes = dataHeaderLengthBytes(mainData)
    const head = new Uint8Array(headerBytes + mainData - message.length)
    if (headerBytes === 2) {
      head[0] = XLR_BLOCK_ID_DATA_SHORT
      head[1] = mainData
    } else {
      head[0] = XLR_BLOCK_ID_DATA_LONG
      new DataView(head.buffer).setUint32(1, mainData, true)
    }
    encodeLogicalMessageHeaderInto(
      { dbId: options.dbId ?? 0, transactional: options.transactional ?? false, prefix: prefixBytes, messageLengthBytes: message.length },
      head,
      headerBytes
    )
    return this.appendRecord({ rmid: RM_LOGICALMSG_ID, info: XLOG_LOGICAL_MESSAGE, xid: options.xid, body: [head, message] })
  }

  /** XLOG_SWITCH: the rest of the segment is zeros and the next record starts the next segment. */
  appendSwitch(): GeneratedRecord {
    return this.appendRecord({ rmid: RM_XLOG_ID, info: XLOG_SWITCH, body: [] })
  }

  /** Any record, given its body; computes xl_tot_len, xl_prev and xl_crc. */
  appendRecord(spec: RecordSpec): GeneratedRecord {
    const bodyLength = spec.body.reduce((sum, piece) => sum + piece.length, 0)
    const total = SIZE_OF_XLOG_RECORD_BYTES + bodyLength
    assert(total <= XLOG_RECORD_MAX_SIZE_BYTES, "record within XLogRecordMaxSize")
    assert(Number.isInteger(spec.rmid) && spec.rmid >= 0 && spec.rmid <= 0xff, "rmid is a u8")
    assert(Number.isInteger(spec.info) && spec.info >= 0 && spec.info <= 0xff, "info is a u8")

    const header = new Uint8Array(SIZE_OF_XLOG_RECORD_BYTES)
    encodeRecordHeaderInto({ totalLengthBytes: total, xid: spec.xid ?? 0, prevLsn: Lsn(this.lastRecord), info: spec.info, rmid: spec.rmid, crc: 0 }, header, 0)
    let crc = 0
    for (const piece of spec.body) crc = crc32c(piece, crc)
    crc = crc32c(header.subarray(0, XLOG_RECORD_CRC_OFFSET_BYTES), crc)
    new DataView(header.buffer).setUint32(XLOG_RECORD_CRC_OFFSET_BYTES, crc, true)

    const from = this.insert
    const start = from % XLOG_BLCKSZ_BYTES === 0 ? from + standardPageHeaderSizeBytes(from, this.segmentSizeBytes) : from
    const end = this.lsnAfter(start, total)
    const aligned = maxAlign(end)
    const isSwitch = spec.rmid === RM_XLOG_ID && (spec.info & 0xf0) === XLOG_SWITCH
    const next = isSwitch ? Math.ceil(aligned / this.segmentSizeBytes) * this.segmentSizeBytes : aligned
    assert(Number.isSafeInteger(next), "WAL stays below 2^53 bytes")

    const out = new Uint8Array(next - from)
    const writer = { lsn: from, written: 0 }
    this.writePiece(out, from, writer, header, total)
    for (const piece of spec.body) this.writePiece(out, from, writer, piece, total)
    assert(writer.lsn === end && writer.written === total, "the record fills exactly [start, end)")

    this.lastRecord = start
    this.insert = next
    return { startLsn: Lsn(start), endLsn: Lsn(end), nextLsn: Lsn(next), totalLengthBytes: total, fromLsn: Lsn(from), bytes: out }
  }

  /**
   * The bytes of a fresh segment from its start up to `lsn` (Neon's initialize_first_segment):
   * the long header and, if `lsn` is past the first page, the header of its page. Where `lsn`
   * is mid-page the header pretends a record continues up to `lsn` (XLP_FIRST_IS_CONTRECORD
   * with that xlp_rem_len), so a reader starting at the page or segment start lands on `lsn`.
   */
  segmentPrefix(lsn: Lsn): Uint8Array {
    assert(isValidDecoderStart(lsn, this.segmentSizeBytes), "prefix ends at a record start or page start")
    const segmentOffset = lsn % this.segmentSizeBytes
    const segmentStart = lsn - segmentOffset
    const out = new Uint8Array(segmentOffset)
    if (segmentOffset === 0) return out
    const pageOffset = lsn % XLOG_BLCKSZ_BYTES
    const firstPageOnly = segmentOffset < XLOG_BLCKSZ_BYTES
    const firstRemaining = firstPageOnly ? segmentOffset - SIZE_OF_XLOG_LONG_PHD_BYTES : 0
    this.writePageHeader(out, 0, segmentStart, firstRemaining > 0 ? XLP_FIRST_IS_CONTRECORD : 0, firstRemaining)
    if (!firstPageOnly && pageOffset > 0) {
      const pageLsn = lsn - pageOffset
      const remaining = pageOffset - SIZE_OF_XLOG_SHORT_PHD_BYTES
      this.writePageHeader(out, pageLsn - segmentStart, pageLsn, remaining > 0 ? XLP_FIRST_IS_CONTRECORD : 0, remaining)
    }
    return out
  }

  /** The LSN just past `length` record bytes laid from `start`, skipping page headers. */
  private lsnAfter(start: number, length: number): number {
    let lsn = start
    let remaining = length
    // One pass per page the record touches.
    while (remaining > 0) {
      if (lsn % XLOG_BLCKSZ_BYTES === 0) lsn += standardPageHeaderSizeBytes(lsn, this.segmentSizeBytes)
      const room = XLOG_BLCKSZ_BYTES - (lsn % XLOG_BLCKSZ_BYTES)
      const take = Math.min(room, remaining)
      lsn += take
      remaining -= take
    }
    return lsn
  }

  /** Copies `piece` into `out` at the writer's LSN, writing page headers at page starts. */
  private writePiece(out: Uint8Array, from: number, writer: { lsn: number; written: number }, piece: Uint8Array, total: number): void {
    let offset = 0
    // One pass per page the piece touches.
    while (offset < piece.length) {
      if (writer.lsn % XLOG_BLCKSZ_BYTES === 0) {
        const continued = writer.written > 0
        writer.lsn += this.writePageHeader(out, writer.lsn - from, writer.lsn, continued ? XLP_FIRST_IS_CONTRECORD : 0, continued ? total - writer.written : 0)
      }
      const room = XLOG_BLCKSZ_BYTES - (writer.lsn % XLOG_BLCKSZ_BYTES)
      const take = Math.min(room, piece.length - offset)
      out.set(piece.subarray(offset, offset + take), writer.lsn - from)
      offset += take
      writer.lsn += take
      writer.written += take
    }
  }

  private writePageHeader(out: Uint8Array, offset: number, pageLsn: number, flags: number, remainingLengthBytes: number): number {
    const isLong = pageLsn % this.segmentSizeBytes === 0
    encodePageHeaderInto({
      magic: this.magic,
      info: flags | (isLong ? XLP_LONG_HEADER : 0),
      timelineId: this.timelineId,
      pageLsn: Lsn(pageLsn),
      remainingLengthBytes,
      long: isLong ? { systemId: this.systemId, segmentSizeBytes: this.segmentSizeBytes, xlogBlockSizeBytes: XLOG_BLCKSZ_BYTES } : undefined
    }, out, offset)
    return isLong ? SIZE_OF_XLOG_LONG_PHD_BYTES : SIZE_OF_XLOG_SHORT_PHD_BYTES
  }
}
