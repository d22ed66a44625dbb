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
  XLP_ALL_FLAGS,
  XLP_FIRST_IS_CONTRECORD,
  XLP_FIRST_IS_OVERWRITE_CONTRECORD,
  XLP_LONG_HEADER,
  xlogPageMagic
} from "./page.js"
import { crc32cRange } from "./crc32c.js"
import {
  isValidRmgrId,
  isXlogSwitch,
  MAXIMUM_ALIGNOF_BYTES,
  maxAlign,
  SIZE_OF_XLOG_RECORD_BYTES,
  XLOG_RECORD_CRC_OFFSET_BYTES,
  XLOG_RECORD_MAX_SIZE_BYTES
} from "./record.js"

/**
 * A streaming WAL decoder: fed bytes in LSN order in chunks of any size, it returns each
 * record as soon as its last byte arrives, checking page headers (xlogreader.c
 * XLogReaderValidatePageHeader), record lengths, prev-links and CRCs as Postgres' reader
 * does, and stops for good at the first thing that is not valid WAL.
 *
 * Two ways to feed it, with the same checks and the same record boundaries:
 * - `scan` (the ingest path: the segment store only needs where records end) reports each
 *   record's start, end and next start in arrays the decoder reuses, and allocates nothing
 *   per record: the CRC is taken where the bytes lie, piece by piece across page headers and
 *   chunks, and no record is copied.
 * - `push` (dumps, tests) returns each record with its bytes. A record that lies inside one
 *   page of one pushed chunk is returned as a view of that chunk (no copy; do not mutate
 *   pushed chunks while records are in use); any other record is copied once into a buffer
 *   of its own. Besides that buffer the decoder keeps only a page header's worth of bytes.
 * The two may alternate at record boundaries; a record begun by `scan` cannot be finished
 * by `push`, which would need the bytes `scan` did not keep.
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
/** The most `consume` takes at once: the largest segment; offsets below it are int32. */
const CONSUME_BYTES_MAX = 1024 * 1024 * 1024
/** `prevRecord` before the first record: no LSN is negative. */
const NO_RECORD = -1
/** readUint64's answer above 2^53-1. */
const LSN_TOO_LARGE = -2
/** Record-end slots `scan` starts with; they double when a chunk completes more records. */
const RECORD_ENDS_INITIAL_COUNT = 1024

/**
 * Where the records completed by the last `scan` lie, in order: valid until the next `scan`.
 * Each record is at least 24 bytes, so a scan of n bytes completes at most n / 24 + 1
 * records, and the slots (24 bytes each, reserved a page ahead and doubled) stay within
 * about twice the largest chunk scanned.
 */
export interface RecordEnds {
  readonly count: number
  /** Where record `index`'s header starts. */
  startLsn(index: number): Lsn
  /** Just past record `index`'s last byte (before alignment padding). */
  endLsn(index: number): Lsn
  /** Where the record after record `index` starts (the next segment after XLOG_SWITCH). */
  nextLsn(index: number): Lsn
}

class RecordEndList implements RecordEnds {
  count = 0
  // LSNs are below 2^53, so a float64 holds each exactly. The decoder writes them directly.
  starts = new Float64Array(RECORD_ENDS_INITIAL_COUNT)
  ends = new Float64Array(RECORD_ENDS_INITIAL_COUNT)
  nexts = new Float64Array(RECORD_ENDS_INITIAL_COUNT)

  startLsn(index: number): Lsn {
    assert(index >= 0 && index < this.count, "record index within the last scan")
    return Lsn(this.starts[index]!)
  }

  endLsn(index: number): Lsn {
    assert(index >= 0 && index < this.count, "record index within the last scan")
    return Lsn(this.ends[index]!)
  }

  nextLsn(index: number): Lsn {
    assert(index >= 0 && index < this.count, "record index within the last scan")
    return Lsn(this.nexts[index]!)
  }

  clear(): void {
    this.count = 0
  }

  add(start: number, end: number, next: number): void {
    this.reserve(1)
    const index = this.count
    this.starts[index] = start
    this.ends[index] = end
    this.nexts[index] = next
    this.count = index + 1
  }

  /** Makes room for `more` entries after `count`, doubling. */
  reserve(more: number): void {
    const needed = this.count + more
    if (needed <= this.starts.length) return
    let size = this.starts.length * 2
    // Doubling from 1024 reaches any chunk's count in a few steps.
    while (size < needed) size *= 2
    const grown = (from: Float64Array) => {
      const to = new Float64Array(size)
      to.set(from.subarray(0, this.count))
      return to
    }
    this.starts = grown(this.starts)
    this.ends = grown(this.ends)
    this.nexts = grown(this.nexts)
  }
}

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
  /**
   * Start of the last record returned; NO_RECORD until one is (then xl_prev is only bounded).
   * A number, never undefined: where a number and undefined meet, V8 boxes the number, and an
   * LSN above 2^31 is a double, so the hot loop would allocate for each record it compares.
   */
  private prevRecord = NO_RECORD
  /** xl_prev required of the first record, or NO_RECORD (a number, for the reason above). */
  private readonly firstPrevLsn: number

  // Page header assembly: `pageHeaderNeed` > 0 while inside a page header.
  private readonly pageScratch = new Uint8Array(SIZE_OF_XLOG_LONG_PHD_BYTES)
  private readonly pageScratchView = new DataView(this.pageScratch.buffer)
  private pageHeaderHave = 0
  private pageHeaderNeed = 0
  private skipRemaining = 0
  private switchPaddingEnd = 0

  // Assembly of a record that spans pages or chunks. `recordTotal` is 0 until xl_tot_len has
  // been read; the header collects in `recordScratch`, the body's CRC in `recordBodyCrc`.
  private recordStart = 0
  private recordTotal = 0
  private recordHave = 0
  private recordBodyCrc = 0
  private readonly recordScratch = new Uint8Array(SIZE_OF_XLOG_RECORD_BYTES)
  private readonly recordScratchView = new DataView(this.recordScratch.buffer)
  /** Whether the record being assembled keeps its bytes (it was begun by `push`). */
  private recordKept = false
  private recordBuffer: Uint8Array | undefined

  private readonly ends = new RecordEndList()

  private constructor(options: WalDecoderOptions) {
    this.segmentSizeBytes = options.segmentSizeBytes
    this.recordSizeMaxBytes = options.recordSizeMaxBytes ?? XLOG_RECORD_MAX_SIZE_BYTES
    this.expectedMagic = options.pgVersion === undefined ? undefined : xlogPageMagic(options.pgVersion)
    this.expectedSystemId = options.systemId
    this.requiredTimelineId = options.timelineId
    this.pos = options.startLsn
    this.nextRecord = options.startLsn
    this.lastRecordEnd = options.startLsn
    this.firstPrevLsn = options.prevLsn ?? NO_RECORD
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

  /** The LSN of the next byte `push` or `scan` expects. */
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

  /** Why decoding stopped, once it has; every later push or scan is ignored. */
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

  /** The records the last `scan` completed; the same object every time. */
  get recordEnds(): RecordEnds {
    return this.ends
  }

  /**
   * Consumes the next bytes of WAL (the first push starts at `startLsn`) and returns the
   * records they complete, in order. After a problem, `error` is set and the records
   * completed before it are still returned.
   */
  push(chunk: Uint8Array): ReadonlyArray<WalRecord> {
    assert(this.stopError !== undefined || this.recordHave === 0 || this.recordKept, "push cannot finish a record that scan began (scan keeps no record bytes)")
    const records: WalRecord[] = []
    this.consumeAll(chunk, records)
    return records
  }

  /**
   * Consumes the next bytes of WAL as `push` does, but returns only how many records they
   * complete; `recordEnds` says where those lie, until the next scan. Allocates nothing per
   * record, only a little per chunk and page (a DataView; a few boxed LSNs above 2^31 on the
   * paths a page boundary takes; a view per piece of NATIVE_CRC_BYTES_MIN or more for the
   * native CRC). After a problem, `error` is set and the records completed before it are counted.
   */
  scan(chunk: Uint8Array): number {
    this.ends.clear()
    this.consumeAll(chunk, undefined)
    // All but the first record completed here lie whole in the chunk, and each is 24 bytes or more.
    assert(this.ends.count <= Math.ceil(chunk.length / SIZE_OF_XLOG_RECORD_BYTES), "a scan completes at most one record per 24 bytes")
    return this.ends.count
  }

  /** Feeds `chunk` to consume in slices of at most CONSUME_BYTES_MAX. */
  private consumeAll(chunk: Uint8Array, records: WalRecord[] | undefined): void {
    if (chunk.length <= CONSUME_BYTES_MAX) {
      this.consume(chunk, records)
      return
    }
    // One pass per slice of a chunk above 1 GiB (a caller's mistake or a garbage file).
    for (let start = 0; start < chunk.length && this.stopError === undefined; start += CONSUME_BYTES_MAX) {
      this.consume(chunk.subarray(start, start + CONSUME_BYTES_MAX), records)
    }
  }

  /**
   * The decoding loop behind `push` (records given) and `scan` (records undefined). Offsets
   * into the chunk are kept int32 (`| 0`, exact below CONSUME_BYTES_MAX): V8 then passes them
   * as small integers, where an offset it types as a double is boxed at every call.
   */
  private consume(chunk: Uint8Array, records: WalRecord[] | undefined): void {
    assert(chunk.length <= CONSUME_BYTES_MAX, "consumeAll slices chunks")
    let index = 0
    const length = chunk.length
    // One view per chunk: header fields and CRCs are read through it where the bytes lie.
    const view = new DataView(chunk.buffer, chunk.byteOffset, length)
    // Each pass consumes bytes, stops the decoder or moves to a phase that consumes bytes.
    while (index < length && this.stopError === undefined) {
      if (this.phase === "SwitchPadding") {
        const skip = Math.min(length - index, this.switchPaddingEnd - this.pos) | 0
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
      const available = Math.min(length - index, pageEnd - this.pos) | 0
      let consumed: number
      switch (this.phase) {
        case "SkipContinuation": {
          consumed = Math.min(available, this.skipRemaining)
          this.skipRemaining -= consumed
          if (this.skipRemaining === 0) this.enterAlign(maxAlign(this.pos + consumed))
          break
        }
        case "Align": {
          consumed = Math.min(available, this.nextRecord - this.pos) | 0
          break
        }
        case "Record": {
          consumed = this.recordHave !== 0
            ? this.readRecordPiece(chunk, view, index, this.pos, available, records)
            : records === undefined
            ? this.scanRecords(chunk, view, index, available)
            : this.readRecords(chunk, view, index, available, records, false)
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
    const scratch = this.pageScratch
    // At most 40 bytes: a loop, not a subarray to copy from.
    for (let i = 0; i < take; i++) scratch[this.pageHeaderHave + i] = chunk[index + i]!
    this.pageHeaderHave += take
    this.pos += take
    if (this.pageHeaderHave < this.pageHeaderNeed) return index + take
    if (this.pageHeaderNeed === SIZE_OF_XLOG_SHORT_PHD_BYTES && (scratch[2]! & XLP_LONG_HEADER) !== 0) {
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
    const scratch = this.pageScratchView
    const info = scratch.getUint16(2, true)
    const timelineId = scratch.getUint32(4, true)
    // The usual page (a short header, as expected) is accepted without decoding it into an
    // object; whatever this does not accept gets the full check, which names the problem.
    const usual = (info & (XLP_LONG_HEADER | ~XLP_ALL_FLAGS)) === 0 &&
      pageLsn % this.segmentSizeBytes !== 0 &&
      scratch.getUint16(0, true) === this.expectedMagic &&
      readUint64(scratch, 8) === pageLsn &&
      (this.requiredTimelineId === undefined || timelineId === this.requiredTimelineId) &&
      timelineId >= this.latestTimelineId
    if (!usual && !this.checkPageHeaderFully(pageLsn)) return
    this.latestTimelineId = timelineId
    this.afterPageHeader(pageLsn, info, scratch.getUint32(16, true))
  }

  /** xlogreader.c XLogReaderValidatePageHeader on the page scratch; false (and stopped) if invalid. */
  private checkPageHeaderFully(pageLsn: number): boolean {
    const decoded = decodePageHeader(this.pageScratch, 0)
    if (Result.isFailure(decoded)) {
      this.stop("BadPageAddress", pageLsn, decoded.failure.message)
      return false
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
      return false
    }
    if (header.timelineId < this.latestTimelineId) {
      this.stop("BadTimeline", pageLsn, `out-of-sequence timeline ${header.timelineId} (after ${this.latestTimelineId})`)
      return false
    }
    this.expectedMagic = header.magic
    if (header.long !== undefined) this.expectedSystemId ??= header.long.systemId
    return true
  }

  /** What a valid page header with xlp_info `info` and xlp_rem_len `remainingLengthBytes` means here. */
  private afterPageHeader(pageLsn: number, info: number, remainingLengthBytes: number): void {
    const continues = (info & XLP_FIRST_IS_CONTRECORD) !== 0
    switch (this.phase) {
      case "StartOfPage": {
        if (continues && remainingLengthBytes > 0) {
          this.phase = "SkipContinuation"
          this.skipRemaining = remainingLengthBytes
        } else {
          this.phase = "Record"
          this.recordStart = this.pos
        }
        return
      }
      case "SkipContinuation": {
        if (!continues) {
          this.stop("MissingContrecord", pageLsn, "there is no contrecord flag")
        } else if (remainingLengthBytes !== this.skipRemaining) {
          this.stop("BadContrecordLength", pageLsn, `invalid contrecord length ${remainingLengthBytes} (expected ${this.skipRemaining})`)
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
        if ((info & XLP_FIRST_IS_OVERWRITE_CONTRECORD) !== 0) {
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
        if (remainingLengthBytes === 0 || remainingLengthBytes !== stillNeeded) {
          this.stop("BadContrecordLength", pageLsn, `invalid contrecord length ${remainingLengthBytes} (expected ${stillNeeded})`)
          return
        }
        // Two pages now agree on xl_tot_len: it is safe to allocate all of it.
        if (this.recordKept) this.ensureRecordCapacity(this.recordTotal)
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
   * scan's hot path, as readRecords but for the usual record only: whole in this page of this
   * chunk, a valid length and rmgr, the expected prev-link and CRC, not XLOG_SWITCH. The
   * state it moves per record lives in locals and is written back once, and the offsets are
   * small integers: V8 then allocates nothing per record (a field that takes every record's
   * LSN, or a call it does not inline, can box LSNs above 2^31). Anything else, including
   * every stop, is left to readRecords for one record, which decides it.
   */
  private scanRecords(chunk: Uint8Array, view: DataView, index: number, available: number): number {
    // The first record after a start is only bounded (xl_prev below it): readRecords checks it.
    const entryPrev: number = this.prevRecord !== NO_RECORD ? this.prevRecord : this.firstPrevLsn
    if (entryPrev === NO_RECORD) return this.readRecords(chunk, view, index, available, undefined, true)
    const ends = this.ends
    ends.reserve(Math.ceil(available / SIZE_OF_XLOG_RECORD_BYTES))
    const { starts, ends: endLsns, nexts } = ends
    let count = ends.count
    const base = this.pos
    const sizeMax = this.recordSizeMaxBytes
    // Offsets from chunk[index]; the loop carries only these small integers from pass to pass.
    let offset = 0
    let lastStart = -1
    let lastEnd = 0
    // Each pass takes a record of at least 24 bytes, so there are at most available / 24.
    while (available - offset >= SIZE_OF_XLOG_RECORD_BYTES) {
      const at = index + offset
      const total = view.getUint32(at, true)
      if (total < SIZE_OF_XLOG_RECORD_BYTES || total > available - offset || total > sizeMax) break
      const rmid = view.getUint8(at + 17)
      if (!isValidRmgrId(rmid) || isXlogSwitch(rmid, view.getUint8(at + 16))) break
      // Two comparisons, not one against a choice of the two: V8 would box that choice.
      const prevLsn = readUint64(view, at + 8)
      if (lastStart < 0 ? prevLsn !== entryPrev : prevLsn !== base + lastStart) break
      const bodyCrc = crc32cRange(view, at + SIZE_OF_XLOG_RECORD_BYTES, at + total)
      if (crc32cRange(view, at, at + XLOG_RECORD_CRC_OFFSET_BYTES, bodyCrc) !== view.getInt32(at + 20, true)) break
      // Records start 8-aligned, so the padding depends on the length alone.
      const padded = maxAlignLength(total)
      const start = base + offset
      starts[count] = start
      endLsns[count] = start + total
      nexts[count] = start + padded
      count++
      lastStart = offset
      lastEnd = offset + total
      offset += padded
    }
    ends.count = count
    if (lastStart < 0) return this.readRecords(chunk, view, index, available, undefined, true)
    this.prevRecord = base + lastStart
    this.lastRecordEnd = base + lastEnd
    this.nextRecord = base + offset
    if (offset > available) {
      // Padding past the chunk's end (never past a page's: pages are 8-aligned).
      this.phase = "Align"
      return available
    }
    this.phase = "Record"
    this.recordStart = base + offset
    return offset
  }

  /**
   * With no record partly read, finishes every record (or, when `single`, the first) that
   * lies whole in chunk[index, index + available) (all within the current page, which starts
   * no later than `this.pos`), skipping the padding between them; hands a record that runs
   * past `available` to readRecordPiece. Returns the bytes consumed; `this.pos` is the LSN of
   * chunk[index].
   */
  private readRecords(chunk: Uint8Array, view: DataView, index: number, available: number, records: WalRecord[] | undefined, single: boolean): number {
    let offset = 0
    // Each pass finishes a record of at least 24 bytes, so there are at most available / 24.
    for (;;) {
      const at = index + offset
      const start = this.pos + offset
      const left = available - offset
      this.recordStart = start
      if (left < 4) return left === 0 ? offset : offset + this.readRecordPiece(chunk, view, at, start, left, records)
      const total = view.getUint32(at, true)
      if (!this.acceptTotalLength(total)) return offset
      if (total > left) return offset + this.readRecordPiece(chunk, view, at, start, left, records)
      if (!this.checkRecordHeader(view, at)) return offset
      const bodyCrc = crc32cRange(view, at + SIZE_OF_XLOG_RECORD_BYTES, at + total)
      const crc = crc32cRange(view, at, at + XLOG_RECORD_CRC_OFFSET_BYTES, bodyCrc)
      const bytes = records === undefined ? undefined : chunk.subarray(at, at + total)
      if (!this.endRecord(view, at, crc, start + total, records, bytes)) return offset
      if (this.phase === "SwitchPadding") return offset + total
      // Padding to the next record never crosses a page end (pages are 8-aligned), but may
      // cross the chunk's: then the Align phase skips the rest of it.
      const padded = this.nextRecord - start
      if (padded > left) return available
      offset += padded
      this.phase = "Record"
      if (offset === available || single) {
        this.recordStart = this.pos + offset
        return offset
      }
    }
  }

  /**
   * Consumes up to `available` bytes (all within the current page) of the record at
   * `recordStart`, which spans pages or chunks; `lsn` is the LSN of chunk[index]. Returns how
   * many it consumed (it may stop the decoder instead).
   */
  private readRecordPiece(chunk: Uint8Array, view: DataView, index: number, lsn: number, available: number, records: WalRecord[] | undefined): number {
    if (this.recordHave === 0) {
      this.recordStart = lsn
      this.recordKept = records !== undefined
      this.recordBodyCrc = 0
    }
    let consumed = 0
    // Header bytes go to the scratch until all 24 are here.
    if (this.recordHave < SIZE_OF_XLOG_RECORD_BYTES) {
      const take = Math.min(available, SIZE_OF_XLOG_RECORD_BYTES - this.recordHave)
      const scratch = this.recordScratch
      for (let i = 0; i < take; i++) scratch[this.recordHave + i] = chunk[index + i]!
      this.recordHave += take
      consumed = take
      if (this.recordTotal === 0 && this.recordHave >= 4) {
        if (!this.acceptTotalLength(this.recordScratchView.getUint32(0, true))) return consumed
      }
      if (this.recordHave < SIZE_OF_XLOG_RECORD_BYTES) return consumed
      if (!this.checkRecordHeader(this.recordScratchView, 0)) return consumed
      if (this.recordKept) {
        // The record is confined to this page if it ends before the page does.
        const pageOffset = (lsn + consumed) % XLOG_BLCKSZ_BYTES
        const pageRemaining = pageOffset === 0 ? 0 : XLOG_BLCKSZ_BYTES - pageOffset
        const bodyRemaining = this.recordTotal - SIZE_OF_XLOG_RECORD_BYTES
        this.ensureRecordCapacity(bodyRemaining <= pageRemaining
          ? this.recordTotal
          : Math.min(this.recordTotal, SIZE_OF_XLOG_RECORD_BYTES + pageRemaining + UNCONFIRMED_RECORD_BYTES_MAX))
        this.recordBuffer!.set(scratch, 0)
      }
      if (this.recordHave === this.recordTotal) {
        this.finishPieces(lsn + consumed, records)
        return consumed
      }
    }
    const take = Math.min(available - consumed, this.recordTotal - this.recordHave)
    if (take > 0) {
      const from = index + consumed
      this.recordBodyCrc = crc32cRange(view, from, from + take, this.recordBodyCrc)
      if (this.recordKept) {
        this.ensureRecordCapacity(this.recordHave + take)
        this.recordBuffer!.set(chunk.subarray(from, from + take), this.recordHave)
      }
      this.recordHave += take
      consumed += take
    }
    if (this.recordHave === this.recordTotal) this.finishPieces(lsn + consumed, records)
    return consumed
  }

  /** Ends a record assembled by readRecordPiece: the CRC's last piece is the header. */
  private finishPieces(end: number, records: WalRecord[] | undefined): void {
    const crc = crc32cRange(this.recordScratchView, 0, XLOG_RECORD_CRC_OFFSET_BYTES, this.recordBodyCrc)
    const bytes = records === undefined ? undefined : this.recordBuffer!.subarray(0, this.recordTotal)
    this.endRecord(this.recordScratchView, 0, crc, end, records, bytes)
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

  /** ValidXLogRecordHeader on the header at `offset`: a known rmgr and a prev-link to the previous record. */
  private checkRecordHeader(view: DataView, offset: number): boolean {
    const rmid = view.getUint8(offset + 17)
    if (!isValidRmgrId(rmid)) {
      this.stop("BadRmgr", this.recordStart, `invalid resource manager ID ${rmid}`)
      return false
    }
    const prev = readUint64(view, offset + 8)
    // Only numbers meet here (no `undefined`), so no LSN above 2^31 is boxed on the way.
    const expected = this.prevRecord !== NO_RECORD ? this.prevRecord : this.firstPrevLsn
    if (prev === LSN_TOO_LARGE || (expected === NO_RECORD ? !(prev < this.recordStart) : prev !== expected)) {
      this.stop("BadPrevLink", this.recordStart, `record with incorrect prev-link ${prev === LSN_TOO_LARGE ? "above 2^53" : formatLsn(prev)}`)
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

  /**
   * Ends the record at `recordStart` whose header is at `offset` in `header` and whose CRC came
   * to `crc`: checks it against xl_crc, then returns the record (push: `bytes` given) or
   * notes its end (scan), and moves on to alignment or switch padding. False when stopped.
   */
  private endRecord(header: DataView, offset: number, crc: number, end: number, records: WalRecord[] | undefined, bytes: Uint8Array | undefined): boolean {
    const total = this.recordTotal
    // (Page headers inside a spanning record put `end` more than xl_tot_len past its start.)
    assert(end - this.recordStart >= total, "a finished record has xl_tot_len bytes")
    // Both int32 (crc32cRange's form): compared as small integers, no heap numbers.
    if (crc !== header.getInt32(offset + 20, true)) {
      this.stop("BadChecksum", this.recordStart, "incorrect resource manager data checksum in record")
      return false
    }
    const rmid = header.getUint8(offset + 17)
    const info = header.getUint8(offset + 16)
    const aligned = maxAlign(end)
    const next = isXlogSwitch(rmid, info) ? Math.ceil(aligned / this.segmentSizeBytes) * this.segmentSizeBytes : aligned
    if (records === undefined) {
      this.ends.add(this.recordStart, end, next)
    } else {
      assert(bytes !== undefined && bytes.length === total, "push returns a record's bytes")
      records.push({
        startLsn: Lsn(this.recordStart),
        endLsn: Lsn(end),
        nextLsn: Lsn(next),
        totalLengthBytes: total,
        rmid,
        info,
        xid: header.getUint32(offset + 4, true),
        prevLsn: Lsn(readUint64(header, offset + 8)),
        crc: crc >>> 0,
        bytes
      })
    }
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
    return true
  }
}

/** MAXALIGN of a record length (below 2^31, so bitwise arithmetic is exact). */
function maxAlignLength(length: number): number {
  return (length + MAXIMUM_ALIGNOF_BYTES - 1) & ~(MAXIMUM_ALIGNOF_BYTES - 1)
}

/**
 * A little-endian u64, or LSN_TOO_LARGE above 2^53-1: always a number, since a result that
 * may be undefined is boxed by V8 whenever it is a double (every LSN above 2^31).
 */
function readUint64(view: DataView, offset: number): number {
  const high = view.getUint32(offset + 4, true)
  if (high > 0x1f_ffff) return LSN_TOO_LARGE
  return high * 0x1_0000_0000 + view.getUint32(offset, true)
}
