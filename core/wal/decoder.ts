import { Result, Schema } from "effect"
import { assert } from "../assert.js"
import { formatLsn, isValidSegmentSize, Lsn, XLOG_BLCKSZ_BYTES } from "./lsn.js"
import {
  checkPageHeader,
  decodePageHeader,
  type PgMajorVersion,
  pgMajorVersionOfMagic,
  SIZE_OF_XLOG_LONG_PHD_BYTES,
  SIZE_OF_XLOG_SHORT_PHD_BYTES,
  standardPageHeaderSizeBytes,
  XLP_FIRST_IS_CONTRECORD,
  XLP_FIRST_IS_OVERWRITE_CONTRECORD,
  XLP_LONG_HEADER,
  xlogPageMagic
} from "./page.js"
import {
  computeRecordCrc,
  isValidRmgrId,
  isXlogSwitch,
  maxAlign,
  SIZE_OF_XLOG_RECORD_BYTES,
  XLOG_RECORD_MAX_SIZE_BYTES
} from "./record.js"

/**
 * A streaming WAL decoder: fed bytes in LSN order in chunks of any size, it returns each
 * record as soon as its last byte arrives, checking page headers (xlogreader.c
 * XLogReaderValidatePageHeader), record lengths, prev-links and CRCs as Postgres' reader
 * does, and stops for good at the first thing that is not valid WAL.
 *
 * Memory: a record that lies inside one page of one pushed chunk is returned as a view of
 * that chunk (no copy; do not mutate pushed chunks while records are in use); any other
 * record is copied once into a buffer of its own. Besides that buffer the decoder keeps
 * only a page header's worth of bytes.
 */

export interface WalRecord {
  /** Where the record's header starts. */
  readonly startLsn: Lsn
  /** Just past the record's last byte (before alignment padding). */
  readonly endLsn: Lsn
  /** Where the next record starts: the MAXALIGNed end, or the next segment after XLOG_SWITCH. */
  readonly nextLsn: Lsn
  /** xl_tot_len. */
  readonly totalLengthBytes: number
  readonly rmid: number
  readonly info: number
  readonly xid: number
  readonly prevLsn: Lsn
  readonly crc: number
  /** The whole record, header then body: `totalLengthBytes` bytes, page headers removed. */
  readonly bytes: Uint8Array
}

export const WalDecodeErrorReason = Schema.Literals([
  "BadMagic", // xlp_magic is not this version's (or any supported version's)
  "BadPageInfo", // unknown xlp_info bits, or a segment's first page without a long header
  "BadSystemId", // xlp_sysid differs from the expected or first-seen system id
  "BadSegmentSize", // xlp_seg_size or xlp_xlog_blcksz differ from ours
  "BadPageAddress", // xlp_pageaddr is not the page's LSN: typically a recycled segment
  "BadTimeline", // xlp_tli differs from the expected one, or went backwards
  "UnexpectedContrecord", // the page continues a record, but a new record should start here
  "MissingContrecord", // a record continues onto a page without XLP_FIRST_IS_CONTRECORD
  "BadContrecordLength", // xlp_rem_len disagrees with what the record still needs
  "ZeroLength", // xl_tot_len 0: the zero-filled tail of a segment, the usual end of WAL
  "BadRecordLength", // xl_tot_len below 24 or above the maximum record size
  "BadRmgr", // xl_rmid names no resource manager
  "BadPrevLink", // xl_prev does not point at the previous record
  "BadChecksum" // xl_crc does not match
])
export type WalDecodeErrorReason = typeof WalDecodeErrorReason.Type

export class WalDecodeError extends Schema.TaggedError<WalDecodeError>()("WalDecodeError", {
  reason: WalDecodeErrorReason,
  /** Where the problem was seen: the page for page-header reasons, else the record's start. */
  lsn: Schema.Number,
  message: Schema.String
}) {}

export class InvalidDecoderStart extends Schema.TaggedError<InvalidDecoderStart>()("InvalidDecoderStart", {
  message: Schema.String
}) {}

export interface WalDecoderOptions {
  /** A record start, or the start of a page (a continued record there is skipped). */
  readonly startLsn: Lsn
  readonly segmentSizeBytes: number
  /** Required xlp_sysid; when absent the first long header's is required of the rest. */
  readonly systemId?: bigint | undefined
  /** Required WAL format; when absent the first page header's magic is required of the rest. */
  readonly pgVersion?: PgMajorVersion | undefined
  /** Required xlp_tli; when absent the timeline may only stay or grow. */
  readonly timelineId?: number | undefined
  /** xl_prev of the first record; when absent it need only be below the record's start. */
  readonly prevLsn?: Lsn | undefined
  /** Defaults to XLogRecordMaxSize. */
  readonly recordSizeMaxBytes?: number | undefined
}

/** Whether a decoder may start at `lsn`: 8-aligned, and a page start or past its header. */
export function isValidDecoderStart(lsn: number, segmentSizeBytes: number): boolean {
  if (!Number.isSafeInteger(lsn) || lsn < 0 || lsn % 8 !== 0) return false
  const pageOffset = lsn % XLOG_BLCKSZ_BYTES
  if (pageOffset === 0) return true
  return pageOffset >= standardPageHeaderSizeBytes(lsn - pageOffset, segmentSizeBytes)
}

type Phase =
  /** At `startLsn`, a page start: a continuation there is skipped. */
  | "StartOfPage"
  /** Skipping the tail of a record that began before `startLsn`. */
  | "SkipContinuation"
  /** Skipping alignment padding up to `nextRecordLsn`. */
  | "Align"
  /** Skipping the rest of the segment after XLOG_SWITCH (pages there are not read). */
  | "SwitchPadding"
  /** Reading a record (or waiting for the first byte of the next one). */
  | "Record"

/** Bytes allocated for a page-spanning record before its second page confirms its length. */
const UNCONFIRMED_RECORD_BYTES_MAX = 2 * XLOG_BLCKSZ_BYTES

export class WalDecoder {
  readonly segmentSizeBytes: number
  private readonly recordSizeMaxBytes: number
  private expectedMagic: number | undefined
  private expectedSystemId: bigint | undefined
  private readonly requiredTimelineId: number | undefined
  private latestTimelineId = 0

  private pos: number
  private phase: Phase
  private stopError: WalDecodeError | undefined
  /** PG's NextRecPtr: where the next record starts (a page start counts as before its header). */
  private nextRecord: number
  private lastRecordEnd: number
  /** Start of the last record returned; undefined until one is (then xl_prev is only bounded). */
  private prevRecord: number | undefined
  private readonly firstPrevLsn: number | undefined

  // Page header assembly: `pageHeaderNeed` > 0 while inside a page header.
  private readonly pageScratch = new Uint8Array(SIZE_OF_XLOG_LONG_PHD_BYTES)
  private pageHeaderHave = 0
  private pageHeaderNeed = 0
  private skipRemaining = 0
  private switchPaddingEnd = 0

  // Record assembly. `recordTotal` is 0 until xl_tot_len has been read.
  private recordStart = 0
  private recordTotal = 0
  private recordHave = 0
  private readonly recordScratch = new Uint8Array(SIZE_OF_XLOG_RECORD_BYTES)
  private recordBuffer: Uint8Array | undefined

  private constructor(options: WalDecoderOptions) {
    this.segmentSizeBytes = options.segmentSizeBytes
    this.recordSizeMaxBytes = options.recordSizeMaxBytes ?? XLOG_RECORD_MAX_SIZE_BYTES
    this.expectedMagic = options.pgVersion === undefined ? undefined : xlogPageMagic(options.pgVersion)
    this.expectedSystemId = options.systemId
    this.requiredTimelineId = options.timelineId
    this.pos = options.startLsn
    this.nextRecord = options.startLsn
    this.lastRecordEnd = options.startLsn
    this.firstPrevLsn = options.prevLsn
    this.prevRecord = undefined
    if (options.startLsn % XLOG_BLCKSZ_BYTES === 0) {
      this.phase = "StartOfPage"
      this.pageHeaderNeed = SIZE_OF_XLOG_SHORT_PHD_BYTES
    } else {
      this.phase = "Record"
      this.recordStart = options.startLsn
    }
  }

  static make(options: WalDecoderOptions): Result.Result<WalDecoder, InvalidDecoderStart> {
    if (!isValidSegmentSize(options.segmentSizeBytes)) {
      return Result.fail(new InvalidDecoderStart({ message: `invalid segment size ${options.segmentSizeBytes}` }))
    }
    if (!isValidDecoderStart(options.startLsn, options.segmentSizeBytes)) {
      return Result.fail(new InvalidDecoderStart({ message: `${formatLsn(options.startLsn)} is neither a page start nor a plausible record start` }))
    }
    const max = options.recordSizeMaxBytes
    if (max !== undefined && !(Number.isSafeInteger(max) && max >= SIZE_OF_XLOG_RECORD_BYTES && max <= XLOG_RECORD_MAX_SIZE_BYTES)) {
      return Result.fail(new InvalidDecoderStart({ message: `invalid record size maximum ${max}` }))
    }
    return Result.succeed(new WalDecoder(options))
  }

  /** The LSN of the next byte `push` expects. */
  get position(): Lsn {
    return Lsn(this.pos)
  }

  /** Where the next record starts (the last record's nextLsn, or the start LSN). */
  get nextRecordLsn(): Lsn {
    return Lsn(this.nextRecord)
  }

  /** End of the last complete record (unaligned), or the start LSN before any. */
  get lastRecordEndLsn(): Lsn {
    return Lsn(this.lastRecordEnd)
  }

  /** Why decoding stopped, once it has; every later push is ignored. */
  get error(): WalDecodeError | undefined {
    return this.stopError
  }

  /** The WAL format seen (or required), once known. */
  get pgVersion(): PgMajorVersion | undefined {
    return this.expectedMagic === undefined ? undefined : pgMajorVersionOfMagic(this.expectedMagic)
  }

  /** The system id seen in a long header (or required), once known. */
  get systemId(): bigint | undefined {
    return this.expectedSystemId
  }

  /** Whether a record is partly read (its start is `nextRecordLsn`). */
  get inRecord(): boolean {
    return this.phase === "Record" && this.recordHave > 0
  }

  /**
   * Consumes the next bytes of WAL (the first push starts at `startLsn`) and returns the
   * records they complete, in order. After a problem, `error` is set and the records
   * completed before it are still returned.
   */
  push(chunk: Uint8Array): ReadonlyArray<WalRecord> {
    const records: WalRecord[] = []
    let index = 0
    const length = chunk.length
    // Each pass consumes bytes, stops the decoder or moves to a phase that consumes bytes.
    while (index < length && this.stopError === undefined) {
      if (this.phase === "SwitchPadding") {
        const skip = Math.min(length - index, this.switchPaddingEnd - this.pos)
        index += skip
        this.pos += skip
        if (this.pos === this.switchPaddingEnd) {
          this.phase = "Record"
          this.recordStart = this.pos
          this.pageHeaderNeed = SIZE_OF_XLOG_SHORT_PHD_BYTES
        }
        continue
      }
      if (this.pageHeaderNeed > 0) {
        index = this.readPageHeader(chunk, index)
        continue
      }
      const pageEnd = this.pos - (this.pos % XLOG_BLCKSZ_BYTES) + XLOG_BLCKSZ_BYTES
      const available = Math.min(length - index, pageEnd - this.pos)
      let consumed: number
      switch (this.phase) {
        case "SkipContinuation": {
          consumed = Math.min(available, this.skipRemaining)
          this.skipRemaining -= consumed
          if (this.skipRemaining === 0) this.enterAlign(maxAlign(this.pos + consumed))
          break
        }
        case "Align": {
          consumed = Math.min(available, this.nextRecord - this.pos)
          if (this.pos + consumed === this.nextRecord) {
            this.phase = "Record"
            this.recordStart = this.nextRecord
          }
          break
        }
        case "Record": {
          consumed = this.readRecordBytes(chunk, index, available, records)
          break
        }
        case "StartOfPage":
          assert(false, "StartOfPage is left when the first page header is read")
      }
      index += consumed
      this.pos += consumed
      if (this.phase === "Align" && this.pos === this.nextRecord) {
        this.phase = "Record"
        this.recordStart = this.pos
      }
      // (A record that ends the page may have moved the phase to SwitchPadding.)
      if (this.pos % XLOG_BLCKSZ_BYTES === 0 && !this.isSwitchPadding()) {
        this.pageHeaderNeed = SIZE_OF_XLOG_SHORT_PHD_BYTES
      }
    }
    return records
  }

  private isSwitchPadding(): boolean {
    return this.phase === "SwitchPadding"
  }

  private enterAlign(target: number): void {
    this.nextRecord = target
    this.phase = "Align"
  }

  private stop(reason: WalDecodeErrorReason, lsn: number, message: string): void {
    this.stopError = new WalDecodeError({ reason, lsn, message: `${message} at ${formatLsn(lsn)}` })
    this.recordBuffer = undefined
  }

  /** Copies page header bytes; once whole, checks it and settles what follows it. */
  private readPageHeader(chunk: Uint8Array, index: number): number {
    const take = Math.min(chunk.length - index, this.pageHeaderNeed - this.pageHeaderHave)
    this.pageScratch.set(chunk.subarray(index, index + take), this.pageHeaderHave)
    this.pageHeaderHave += take
    this.pos += take
    if (this.pageHeaderHave < this.pageHeaderNeed) return index + take
    if (this.pageHeaderNeed === SIZE_OF_XLOG_SHORT_PHD_BYTES && (this.pageScratch[2]! & XLP_LONG_HEADER) !== 0) {
      this.pageHeaderNeed = SIZE_OF_XLOG_LONG_PHD_BYTES
      return index + take
    }
    const pageLsn = this.pos - this.pageHeaderNeed
    this.pageHeaderHave = 0
    this.pageHeaderNeed = 0
    this.onPageHeader(pageLsn)
    return index + take
  }

  private onPageHeader(pageLsn: number): void {
    const decoded = decodePageHeader(this.pageScratch, 0)
    if (Result.isFailure(decoded)) {
      this.stop("BadPageAddress", pageLsn, decoded.failure.message)
      return
    }
    const header = decoded.success
    const problem = checkPageHeader(header, {
      pageLsn,
      segmentSizeBytes: this.segmentSizeBytes,
      magic: this.expectedMagic,
      systemId: this.expectedSystemId,
      timelineId: this.requiredTimelineId
    })
    if (problem !== undefined) {
      this.stop(problem.reason, pageLsn, problem.message)
      return
    }
    if (header.timelineId < this.latestTimelineId) {
      this.stop("BadTimeline", pageLsn, `out-of-sequence timeline ${header.timelineId} (after ${this.latestTimelineId})`)
      return
    }
    this.latestTimelineId = header.timelineId
    this.expectedMagic = header.magic
    if (header.long !== undefined) this.expectedSystemId ??= header.long.systemId

    const continues = (header.info & XLP_FIRST_IS_CONTRECORD) !== 0
    switch (this.phase) {
      case "StartOfPage": {
        if (continues && header.remainingLengthBytes > 0) {
          this.phase = "SkipContinuation"
          this.skipRemaining = header.remainingLengthBytes
        } else {
          this.phase = "Record"
          this.recordStart = this.pos
        }
        return
      }
      case "SkipContinuation": {
        if (!continues) {
          this.stop("MissingContrecord", pageLsn, "there is no contrecord flag")
        } else if (header.remainingLengthBytes !== this.skipRemaining) {
          this.stop("BadContrecordLength", pageLsn, `invalid contrecord length ${header.remainingLengthBytes} (expected ${this.skipRemaining})`)
        }
        return
      }
      case "Align":
      case "SwitchPadding": {
        assert(false, "alignment ends at or before a page end; switch padding reads no page headers")
        return
      }
      case "Record": {
        if (this.recordHave === 0) {
          // A record starts right after this header.
          if (continues) {
            this.stop("UnexpectedContrecord", pageLsn, `contrecord is requested by ${formatLsn(this.pos)}`)
            return
          }
          this.recordStart = this.pos
          return
        }
        if ((header.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD) !== 0) {
          // The record being read was aborted by a crash and its tail overwritten (PG14+,
          // XLOG_OVERWRITE_CONTRECORD follows this header): drop it and read on from here.
          this.resetRecord(this.pos)
          return
        }
        if (!continues) {
          this.stop("MissingContrecord", pageLsn, `there is no contrecord flag (record at ${formatLsn(this.recordStart)})`)
          return
        }
        const stillNeeded = this.recordTotal - this.recordHave
        if (header.remainingLengthBytes === 0 || header.remainingLengthBytes !== stillNeeded) {
          this.stop("BadContrecordLength", pageLsn, `invalid contrecord length ${header.remainingLengthBytes} (expected ${stillNeeded})`)
          return
        }
        // Two pages now agree on xl_tot_len: it is safe to allocate all of it.
        this.ensureRecordCapacity(this.recordTotal)
        return
      }
    }
  }

  private resetRecord(start: number): void {
    this.phase = "Record"
    this.recordStart = start
    this.recordTotal = 0
    this.recordHave = 0
    this.recordBuffer = undefined
  }

  /**
   * Consumes up to `available` bytes (all within the current page) of the record at
   * `recordStart`; returns how many it consumed (it may stop the decoder instead).
   */
  private readRecordBytes(chunk: Uint8Array, index: number, available: number, records: WalRecord[]): number {
    if (this.recordHave === 0) {
      this.recordStart = this.pos
      if (available >= 4) {
        const total = readUint32(chunk, index)
        if (!this.acceptTotalLength(total)) return 0
        // Fast path: the whole record is inside this page of this chunk.
        if (total <= available) {
          const bytes = chunk.subarray(index, index + total)
          if (!this.checkRecordHeader(bytes)) return 0
          this.finishRecord(bytes, this.pos + total, records)
          return total
        }
      }
    }
    let consumed = 0
    // Header bytes go to the scratch until all 24 are here.
    if (this.recordHave < SIZE_OF_XLOG_RECORD_BYTES) {
      const take = Math.min(available, SIZE_OF_XLOG_RECORD_BYTES - this.recordHave)
      this.recordScratch.set(chunk.subarray(index, index + take), this.recordHave)
      this.recordHave += take
      consumed = take
      if (this.recordTotal === 0 && this.recordHave >= 4) {
        if (!this.acceptTotalLength(readUint32(this.recordScratch, 0))) return consumed
      }
      if (this.recordHave < SIZE_OF_XLOG_RECORD_BYTES) return consumed
      if (!this.checkRecordHeader(this.recordScratch)) return consumed
      // The record is confined to this page if it ends before the page does.
      const pageOffset = (this.pos + consumed) % XLOG_BLCKSZ_BYTES
      const pageRemaining = pageOffset === 0 ? 0 : XLOG_BLCKSZ_BYTES - pageOffset
      const bodyRemaining = this.recordTotal - SIZE_OF_XLOG_RECORD_BYTES
      this.ensureRecordCapacity(bodyRemaining <= pageRemaining
        ? this.recordTotal
        : Math.min(this.recordTotal, SIZE_OF_XLOG_RECORD_BYTES + pageRemaining + UNCONFIRMED_RECORD_BYTES_MAX))
      this.recordBuffer!.set(this.recordScratch, 0)
      if (this.recordHave === this.recordTotal) {
        this.finishRecord(this.recordBuffer!.subarray(0, this.recordTotal), this.pos + consumed, records)
        return consumed
      }
    }
    const take = Math.min(available - consumed, this.recordTotal - this.recordHave)
    if (take > 0) {
      this.ensureRecordCapacity(this.recordHave + take)
      this.recordBuffer!.set(chunk.subarray(index + consumed, index + consumed + take), this.recordHave)
      this.recordHave += take
      consumed += take
    }
    if (this.recordHave === this.recordTotal) {
      this.finishRecord(this.recordBuffer!.subarray(0, this.recordTotal), this.pos + consumed, records)
    }
    return consumed
  }

  /** Checks xl_tot_len as soon as it is known; false (and stopped) when it is not acceptable. */
  private acceptTotalLength(total: number): boolean {
    if (total === 0) {
      this.stop("ZeroLength", this.recordStart, "invalid record length: expected at least 24, got 0")
      return false
    }
    if (total < SIZE_OF_XLOG_RECORD_BYTES) {
      this.stop("BadRecordLength", this.recordStart, `invalid record length: expected at least 24, got ${total}`)
      return false
    }
    if (total > this.recordSizeMaxBytes) {
      this.stop("BadRecordLength", this.recordStart, `record length ${total} too long`)
      return false
    }
    this.recordTotal = total
    return true
  }

  /** ValidXLogRecordHeader: a known rmgr and a prev-link to the previous record. */
  private checkRecordHeader(header: Uint8Array): boolean {
    const rmid = header[17]!
    if (!isValidRmgrId(rmid)) {
      this.stop("BadRmgr", this.recordStart, `invalid resource manager ID ${rmid}`)
      return false
    }
    const prev = readUint64(header, 8)
    const expected = this.prevRecord ?? this.firstPrevLsn
    if (prev === undefined || (expected === undefined ? !(prev < this.recordStart) : prev !== expected)) {
      this.stop("BadPrevLink", this.recordStart, `record with incorrect prev-link ${prev === undefined ? "above 2^53" : formatLsn(prev)}`)
      return false
    }
    return true
  }

  private ensureRecordCapacity(size: number): void {
    const current = this.recordBuffer
    if (current !== undefined && current.length >= size) return
    // Grow to the exact total once known; before that, to what the caller asked.
    const next = new Uint8Array(Math.max(size, Math.min(this.recordTotal, (current?.length ?? 0) * 2)))
    if (current !== undefined) next.set(current.subarray(0, this.recordHave))
    this.recordBuffer = next
  }

  private finishRecord(bytes: Uint8Array, end: number, records: WalRecord[]): void {
    assert(bytes.length === this.recordTotal, "a finished record has xl_tot_len bytes")
    const view = new DataView(bytes.buffer, bytes.byteOffset, SIZE_OF_XLOG_RECORD_BYTES)
    const crc = view.getUint32(20, true)
    if (computeRecordCrc(bytes) !== crc) {
      this.stop("BadChecksum", this.recordStart, "incorrect resource manager data checksum in record")
      return
    }
    const rmid = view.getUint8(17)
    const info = view.getUint8(16)
    const aligned = maxAlign(end)
    const next = isXlogSwitch(rmid, info) ? Math.ceil(aligned / this.segmentSizeBytes) * this.segmentSizeBytes : aligned
    records.push({
      startLsn: Lsn(this.recordStart),
      endLsn: Lsn(end),
      nextLsn: Lsn(next),
      totalLengthBytes: this.recordTotal,
      rmid,
      info,
      xid: view.getUint32(4, true),
      prevLsn: Lsn(readUint64(bytes, 8)!),
      crc,
      bytes
    })
    this.prevRecord = this.recordStart
    this.lastRecordEnd = end
    this.recordTotal = 0
    this.recordHave = 0
    this.recordBuffer = undefined
    if (next !== aligned) {
      this.nextRecord = next
      this.phase = "SwitchPadding"
      this.switchPaddingEnd = next
    } else {
      this.enterAlign(next)
    }
  }
}

function readUint32(bytes: Uint8Array, offset: number): number {
  return (bytes[offset]! | (bytes[offset + 1]! << 8) | (bytes[offset + 2]! << 16) | (bytes[offset + 3]! << 24)) >>> 0
}

/** A little-endian u64, or undefined above 2^53-1. */
function readUint64(bytes: Uint8Array, offset: number): number | undefined {
  const high = readUint32(bytes, offset + 4)
  if (high > 0x1f_ffff) return undefined
  return high * 0x1_0000_0000 + readUint32(bytes, offset)
}
