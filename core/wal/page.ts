import { Result, Schema } from "effect"
import { assert } from "../assert.js"
import { formatLsn, Lsn, XLOG_BLCKSZ_BYTES } from "./lsn.js"

/**
 * WAL page headers (Postgres' XLogPageHeaderData and XLogLongPageHeaderData, xlog_internal.h).
 * Every XLOG_BLCKSZ page starts with a short header; the first page of a segment carries the
 * long one, which adds the system id and the sizes that identify the cluster. Little-endian,
 * as Postgres writes them on every platform we care about.
 */

/** The short header: magic u16, info u16, tli u32, pageaddr u64, rem_len u32, 4 bytes padding. */
export const SIZE_OF_XLOG_SHORT_PHD_BYTES = 24
/** The long header: the short one plus sysid u64, seg_size u32, xlog_blcksz u32. */
export const SIZE_OF_XLOG_LONG_PHD_BYTES = 40

/** When a record crosses a page boundary, the new page's header says so. */
export const XLP_FIRST_IS_CONTRECORD = 0x0001
export const XLP_LONG_HEADER = 0x0002
export const XLP_BKP_REMOVABLE = 0x0004
/** The continuation of an aborted record was replaced by an XLOG_OVERWRITE_CONTRECORD record. */
export const XLP_FIRST_IS_OVERWRITE_CONTRECORD = 0x0008
export const XLP_ALL_FLAGS = 0x000f

export type PgMajorVersion = 14 | 15 | 16 | 17
export const PG_MAJOR_VERSIONS: ReadonlyArray<PgMajorVersion> = [14, 15, 16, 17]

/** XLOG_PAGE_MAGIC changes with every WAL format change; one value per major version. */
const XLOG_PAGE_MAGIC_BY_VERSION: Readonly<Record<PgMajorVersion, number>> = {
  14: 0xd10d,
  15: 0xd110,
  16: 0xd113,
  17: 0xd116
}

export function xlogPageMagic(version: PgMajorVersion): number {
  return XLOG_PAGE_MAGIC_BY_VERSION[version]
}

export function pgMajorVersionOfMagic(magic: number): PgMajorVersion | undefined {
  return PG_MAJOR_VERSIONS.find((version) => XLOG_PAGE_MAGIC_BY_VERSION[version] === magic)
}

/** PG_VERSION_NUM (150004) or a bare major (15) to a supported major, or undefined. */
export function pgMajorVersionOf(version: number): PgMajorVersion | undefined {
  const major = version >= 10_000 ? Math.floor(version / 10_000) : version
  return PG_MAJOR_VERSIONS.find((candidate) => candidate === major)
}

export interface XLogLongPageHeaderFields {
  /** xlp_sysid: the cluster's system identifier from pg_control. */
  readonly systemId: bigint
  /** xlp_seg_size. */
  readonly segmentSizeBytes: number
  /** xlp_xlog_blcksz. */
  readonly xlogBlockSizeBytes: number
}

export interface XLogPageHeader {
  /** xlp_magic. */
  readonly magic: number
  /** xlp_info: XLP_* flags. */
  readonly info: number
  /** xlp_tli: timeline of the first record on the page. */
  readonly timelineId: number
  /** xlp_pageaddr: the LSN of the page itself. */
  readonly pageLsn: Lsn
  /** xlp_rem_len: bytes of a record continued from the previous page (0 if none). */
  readonly remainingLengthBytes: number
  /** Present iff XLP_LONG_HEADER is set in `info`. */
  readonly long: XLogLongPageHeaderFields | undefined
}

export const PageHeaderErrorReason = Schema.Literals([
  "Truncated", // fewer bytes than the header needs
  "PageAddressTooLarge" // xlp_pageaddr above 2^53-1
])
export type PageHeaderErrorReason = typeof PageHeaderErrorReason.Type

export class PageHeaderError extends Schema.TaggedError<PageHeaderError>()("PageHeaderError", {
  reason: PageHeaderErrorReason,
  message: Schema.String
}) {}

export function pageHeaderSizeBytes(info: number): number {
  return (info & XLP_LONG_HEADER) !== 0 ? SIZE_OF_XLOG_LONG_PHD_BYTES : SIZE_OF_XLOG_SHORT_PHD_BYTES
}

/** Bytes of header at the start of the page at `pageLsn` when Postgres writes it. */
export function standardPageHeaderSizeBytes(pageLsn: number, segmentSizeBytes: number): number {
  return pageLsn % segmentSizeBytes === 0 ? SIZE_OF_XLOG_LONG_PHD_BYTES : SIZE_OF_XLOG_SHORT_PHD_BYTES
}

/** Writes `header` at `offset` of `target` (24 or 40 bytes, padding zeroed). */
export function encodePageHeaderInto(header: XLogPageHeader, target: Uint8Array, offset: number): void {
  const isLong = (header.info & XLP_LONG_HEADER) !== 0
  assert(isLong === (header.long !== undefined), "XLP_LONG_HEADER set iff long fields present")
  const size = pageHeaderSizeBytes(header.info)
  assert(offset >= 0 && offset + size <= target.length, "page header fits in target")
  const view = new DataView(target.buffer, target.byteOffset + offset, size)
  view.setUint16(0, header.magic, true)
  view.setUint16(2, header.info, true)
  view.setUint32(4, header.timelineId, true)
  setUint64(view, 8, header.pageLsn)
  view.setUint32(16, header.remainingLengthBytes, true)
  view.setUint32(20, 0, true)
  if (header.long !== undefined) {
    view.setBigUint64(24, header.long.systemId, true)
    view.setUint32(32, header.long.segmentSizeBytes, true)
    view.setUint32(36, header.long.xlogBlockSizeBytes, true)
  }
}

export function encodePageHeader(header: XLogPageHeader): Uint8Array {
  const bytes = new Uint8Array(pageHeaderSizeBytes(header.info))
  encodePageHeaderInto(header, bytes, 0)
  return bytes
}

/** Reads a page header at `offset`; the long fields are read iff XLP_LONG_HEADER is set. */
export function decodePageHeader(bytes: Uint8Array, offset = 0): Result.Result<XLogPageHeader, PageHeaderError> {
  if (offset < 0 || offset + SIZE_OF_XLOG_SHORT_PHD_BYTES > bytes.length) {
    return Result.fail(new PageHeaderError({ reason: "Truncated", message: "fewer than 24 bytes for a page header" }))
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset, bytes.length - offset)
  const info = view.getUint16(2, true)
  const size = pageHeaderSizeBytes(info)
  if (offset + size > bytes.length) {
    return Result.fail(new PageHeaderError({ reason: "Truncated", message: `fewer than ${size} bytes for a long page header` }))
  }
  const pageLsn = getUint64(view, 8)
  if (pageLsn === undefined) {
    return Result.fail(new PageHeaderError({ reason: "PageAddressTooLarge", message: "xlp_pageaddr above 2^53-1" }))
  }
  return Result.succeed({
    magic: view.getUint16(0, true),
    info,
    timelineId: view.getUint32(4, true),
    pageLsn: Lsn(pageLsn),
    remainingLengthBytes: view.getUint32(16, true),
    long: size === SIZE_OF_XLOG_LONG_PHD_BYTES
      ? {
        systemId: view.getBigUint64(24, true),
        segmentSizeBytes: view.getUint32(32, true),
        xlogBlockSizeBytes: view.getUint32(36, true)
      }
      : undefined
  })
}

/** What a reader expects of the page at `pageLsn` (XLogReaderValidatePageHeader's checks). */
export interface PageExpectation {
  readonly pageLsn: number
  readonly segmentSizeBytes: number
  /** Required magic; undefined accepts any supported version's magic. */
  readonly magic: number | undefined
  /** Required xlp_sysid in long headers; undefined accepts any. */
  readonly systemId: bigint | undefined
  /** Required xlp_tli; undefined accepts any. */
  readonly timelineId: number | undefined
}

export type PageHeaderProblem =
  | { readonly reason: "BadMagic"; readonly message: string }
  | { readonly reason: "BadPageInfo"; readonly message: string }
  | { readonly reason: "BadSystemId"; readonly message: string }
  | { readonly reason: "BadSegmentSize"; readonly message: string }
  | { readonly reason: "BadPageAddress"; readonly message: string }
  | { readonly reason: "BadTimeline"; readonly message: string }

/** Undefined when `header` is acceptable at `expect.pageLsn`; else the first problem found. */
export function checkPageHeader(header: XLogPageHeader, expect: PageExpectation): PageHeaderProblem | undefined {
  const magicOk = expect.magic === undefined ? pgMajorVersionOfMagic(header.magic) !== undefined : header.magic === expect.magic
  if (!magicOk) {
    return { reason: "BadMagic", message: `invalid magic number ${hex4(header.magic)}` }
  }
  if ((header.info & ~XLP_ALL_FLAGS) !== 0) {
    return { reason: "BadPageInfo", message: `invalid info bits ${hex4(header.info)}` }
  }
  if (header.long !== undefined) {
    if (expect.systemId !== undefined && header.long.systemId !== expect.systemId) {
      return { reason: "BadSystemId", message: `WAL file is from system ${header.long.systemId}, expected ${expect.systemId}` }
    }
    if (header.long.segmentSizeBytes !== expect.segmentSizeBytes) {
      return { reason: "BadSegmentSize", message: `segment size ${header.long.segmentSizeBytes} in page header, expected ${expect.segmentSizeBytes}` }
    }
    if (header.long.xlogBlockSizeBytes !== XLOG_BLCKSZ_BYTES) {
      return { reason: "BadSegmentSize", message: `XLOG_BLCKSZ ${header.long.xlogBlockSizeBytes} in page header, expected ${XLOG_BLCKSZ_BYTES}` }
    }
  } else if (expect.pageLsn % expect.segmentSizeBytes === 0) {
    return { reason: "BadPageInfo", message: `first page of a segment without a long header (info ${hex4(header.info)})` }
  }
  // A recycled segment still holds its old pages: this is how the end of WAL usually looks.
  if (header.pageLsn !== expect.pageLsn) {
    return { reason: "BadPageAddress", message: `unexpected pageaddr ${formatLsn(header.pageLsn)}` }
  }
  if (expect.timelineId !== undefined && header.timelineId !== expect.timelineId) {
    return { reason: "BadTimeline", message: `timeline ${header.timelineId}, expected ${expect.timelineId}` }
  }
  return undefined
}

const hex4 = (value: number) => value.toString(16).toUpperCase().padStart(4, "0")

/** A u64 as a number, or undefined above 2^53-1. */
export function getUint64(view: DataView, offset: number): number | undefined {
  const low = view.getUint32(offset, true)
  const high = view.getUint32(offset + 4, true)
  if (high > 0x1f_ffff) return undefined
  return high * 0x1_0000_0000 + low
}

export function setUint64(view: DataView, offset: number, value: number): void {
  assert(Number.isSafeInteger(value) && value >= 0, "u64 field within 0..2^53-1")
  view.setUint32(offset, value % 0x1_0000_0000, true)
  view.setUint32(offset + 4, Math.floor(value / 0x1_0000_0000), true)
}
