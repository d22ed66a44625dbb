import { Result, Schema } from "effect"
import { assert } from "../assert.js"
import { crc32c } from "./crc32c.js"
import { Lsn } from "./lsn.js"
import { getUint64, type PgMajorVersion, setUint64 } from "./page.js"

/**
 * WAL record framing (Postgres' XLogRecord, xlogrecord.h) and the parts of a record body that
 * this project reads: block references, the main-data fragment and logical messages.
 *
 * Header layout (24 bytes, little-endian): xl_tot_len u32, xl_xid u32, xl_prev u64,
 * xl_info u8, xl_rmid u8, 2 bytes padding, xl_crc u32. Records start MAXALIGNed (8).
 */

export const SIZE_OF_XLOG_RECORD_BYTES = 24
/** offsetof(XLogRecord, xl_crc): the header bytes the CRC covers. */
export const XLOG_RECORD_CRC_OFFSET_BYTES = 20
/** XLogRecordMaxSize (PG15+): what the reader can allocate in one piece. */
export const XLOG_RECORD_MAX_SIZE_BYTES = 1020 * 1024 * 1024
export const MAXIMUM_ALIGNOF_BYTES = 8
/** BLCKSZ: the size of a data page, which full-page images are measured against. */
export const BLCKSZ_BYTES = 8192

export const maxAlign = (length: number): number => Math.ceil(length / MAXIMUM_ALIGNOF_BYTES) * MAXIMUM_ALIGNOF_BYTES

/** The low four bits of xl_info belong to the WAL machinery; the rest to the rmgr. */
export const XLR_INFO_MASK = 0x0f
export const XLR_RMGR_INFO_MASK = 0xf0

// Resource manager ids (rmgrlist.h); their order is part of the WAL format.
export const RM_XLOG_ID = 0
export const RM_XACT_ID = 1
export const RM_SMGR_ID = 2
export const RM_CLOG_ID = 3
export const RM_DBASE_ID = 4
export const RM_TBLSPC_ID = 5
export const RM_MULTIXACT_ID = 6
export const RM_RELMAP_ID = 7
export const RM_STANDBY_ID = 8
export const RM_HEAP2_ID = 9
export const RM_HEAP_ID = 10
export const RM_BTREE_ID = 11
export const RM_HASH_ID = 12
export const RM_GIN_ID = 13
export const RM_GIST_ID = 14
export const RM_SEQ_ID = 15
export const RM_SPGIST_ID = 16
export const RM_BRIN_ID = 17
export const RM_COMMIT_TS_ID = 18
export const RM_REPLORIGIN_ID = 19
export const RM_GENERIC_ID = 20
export const RM_LOGICALMSG_ID = 21
export const RM_MAX_BUILTIN_ID = RM_LOGICALMSG_ID
/** Custom resource managers (PG15+) use ids 128..255. */
export const RM_MIN_CUSTOM_ID = 128

/** Names as pg_waldump prints them, indexed by rmid. */
export const RMGR_NAMES: ReadonlyArray<string> = [
  "XLOG", "Transaction", "Storage", "CLOG", "Database", "Tablespace", "MultiXact", "RelMap", "Standby",
  "Heap2", "Heap", "Btree", "Hash", "Gin", "Gist", "Sequence", "SPGist", "BRIN", "CommitTs",
  "ReplicationOrigin", "Generic", "LogicalMessage"
]
assert(RMGR_NAMES.length === RM_MAX_BUILTIN_ID + 1, "one name per built-in rmgr")

export const isValidRmgrId = (rmid: number): boolean => rmid <= RM_MAX_BUILTIN_ID || rmid >= RM_MIN_CUSTOM_ID

export function rmgrName(rmid: number): string {
  return RMGR_NAMES[rmid] ?? (rmid >= RM_MIN_CUSTOM_ID ? `custom${rmid}` : `unknown${rmid}`)
}

// xl_info values this project acts on.
export const XLOG_SWITCH = 0x40
export const XLOG_LOGICAL_MESSAGE = 0x00

export const isXlogSwitch = (rmid: number, info: number): boolean =>
  rmid === RM_XLOG_ID && (info & XLR_RMGR_INFO_MASK) === XLOG_SWITCH

const XLOG_KINDS: Readonly<Record<number, string>> = {
  0x00: "CHECKPOINT_SHUTDOWN", 0x10: "CHECKPOINT_ONLINE", 0x20: "NOOP", 0x30: "NEXTOID", 0x40: "SWITCH",
  0x50: "BACKUP_END", 0x60: "PARAMETER_CHANGE", 0x70: "RESTORE_POINT", 0x80: "FPW_CHANGE",
  0x90: "END_OF_RECOVERY", 0xa0: "FPI_FOR_HINT", 0xb0: "FPI", 0xd0: "OVERWRITE_CONTRECORD", 0xe0: "CHECKPOINT_REDO"
}
const XACT_KINDS: Readonly<Record<number, string>> = {
  0x00: "COMMIT", 0x10: "PREPARE", 0x20: "ABORT", 0x30: "COMMIT_PREPARED", 0x40: "ABORT_PREPARED",
  0x50: "ASSIGNMENT", 0x60: "INVALIDATIONS"
}
const HEAP_KINDS: Readonly<Record<number, string>> = {
  0x00: "INSERT", 0x10: "DELETE", 0x20: "UPDATE", 0x30: "TRUNCATE", 0x40: "HOT_UPDATE", 0x50: "CONFIRM",
  0x60: "LOCK", 0x70: "INPLACE"
}
const STANDBY_KINDS: Readonly<Record<number, string>> = { 0x00: "LOCK", 0x10: "RUNNING_XACTS", 0x20: "INVALIDATIONS" }

/**
 * A short name for the record's operation where it is stable across PG14-17 (pg_waldump's
 * identify), else the rmgr bits of xl_info in hex.
 */
export function recordKind(rmid: number, info: number): string {
  const rmgrInfo = info & XLR_RMGR_INFO_MASK
  const fallback = `info=0x${rmgrInfo.toString(16).toUpperCase().padStart(2, "0")}`
  switch (rmid) {
    case RM_XLOG_ID:
      return XLOG_KINDS[rmgrInfo] ?? fallback
    case RM_XACT_ID:
      return XACT_KINDS[info & 0x70] ?? fallback
    case RM_HEAP_ID:
      return (HEAP_KINDS[info & 0x70] ?? fallback) + ((info & 0x80) !== 0 ? "+INIT" : "")
    case RM_STANDBY_ID:
      return STANDBY_KINDS[rmgrInfo] ?? fallback
    case RM_LOGICALMSG_ID:
      return rmgrInfo === XLOG_LOGICAL_MESSAGE ? "MESSAGE" : fallback
    default:
      return fallback
  }
}

export interface XLogRecordHeader {
  /** xl_tot_len: header and body, not the alignment padding after it. */
  readonly totalLengthBytes: number
  /** xl_xid. */
  readonly xid: number
  /** xl_prev: start of the previous record. */
  readonly prevLsn: Lsn
  /** xl_info. */
  readonly info: number
  /** xl_rmid. */
  readonly rmid: number
  /** xl_crc. */
  readonly crc: number
}

export class RecordHeaderError extends Schema.TaggedError<RecordHeaderError>()("RecordHeaderError", {
  reason: Schema.Literals(["Truncated", "PrevLsnTooLarge"]),
  message: Schema.String
}) {}

export function decodeRecordHeader(bytes: Uint8Array, offset = 0): Result.Result<XLogRecordHeader, RecordHeaderError> {
  if (offset < 0 || offset + SIZE_OF_XLOG_RECORD_BYTES > bytes.length) {
    return Result.fail(new RecordHeaderError({ reason: "Truncated", message: "fewer than 24 bytes for a record header" }))
  }
  const header = readRecordHeader(bytes, offset)
  if (header === undefined) {
    return Result.fail(new RecordHeaderError({ reason: "PrevLsnTooLarge", message: "xl_prev above 2^53-1" }))
  }
  return Result.succeed(header)
}

/** The header at `offset` (24 bytes must be there), or undefined when xl_prev is above 2^53-1. */
export function readRecordHeader(bytes: Uint8Array, offset: number): XLogRecordHeader | undefined {
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset, SIZE_OF_XLOG_RECORD_BYTES)
  const prevLsn = getUint64(view, 8)
  if (prevLsn === undefined) return undefined
  return {
    totalLengthBytes: view.getUint32(0, true),
    xid: view.getUint32(4, true),
    prevLsn: Lsn(prevLsn),
    info: view.getUint8(16),
    rmid: view.getUint8(17),
    crc: view.getUint32(20, true)
  }
}

export function encodeRecordHeaderInto(header: XLogRecordHeader, target: Uint8Array, offset: number): void {
  assert(offset >= 0 && offset + SIZE_OF_XLOG_RECORD_BYTES <= target.length, "record header fits in target")
  const view = new DataView(target.buffer, target.byteOffset + offset, SIZE_OF_XLOG_RECORD_BYTES)
  view.setUint32(0, header.totalLengthBytes, true)
  view.setUint32(4, header.xid, true)
  setUint64(view, 8, header.prevLsn)
  view.setUint8(16, header.info)
  view.setUint8(17, header.rmid)
  view.setUint16(18, 0, true)
  view.setUint32(20, header.crc, true)
}

/**
 * The CRC Postgres stores in xl_crc: over the body first, then the header up to xl_crc
 * (xlogreader.c ValidXLogRecord). `record` is the whole record, xl_tot_len bytes.
 */
export function computeRecordCrc(record: Uint8Array): number {
  assert(record.length >= SIZE_OF_XLOG_RECORD_BYTES, "a record holds at least its header")
  const bodyCrc = crc32c(record.subarray(SIZE_OF_XLOG_RECORD_BYTES))
  return crc32c(record.subarray(0, XLOG_RECORD_CRC_OFFSET_BYTES), bodyCrc)
}

// ---- Record body: block references and the main data (xlogreader.c DecodeXLogRecord) ----

export const XLR_MAX_BLOCK_ID = 32
export const XLR_BLOCK_ID_DATA_SHORT = 255
export const XLR_BLOCK_ID_DATA_LONG = 254
export const XLR_BLOCK_ID_ORIGIN = 253
export const XLR_BLOCK_ID_TOPLEVEL_XID = 252

export const BKPBLOCK_FORK_MASK = 0x0f
export const BKPBLOCK_HAS_IMAGE = 0x10
export const BKPBLOCK_HAS_DATA = 0x20
export const BKPBLOCK_WILL_INIT = 0x40
export const BKPBLOCK_SAME_REL = 0x80

export const BKPIMAGE_HAS_HOLE = 0x01
/** PG15+ bimg_info: apply flag and one bit per compression method. */
const BKPIMAGE_APPLY_PG15 = 0x02
const BKPIMAGE_COMPRESSED_MASK_PG15 = 0x04 | 0x08 | 0x10
/** PG14 bimg_info: one "compressed" bit, then the apply flag. */
const BKPIMAGE_IS_COMPRESSED_PG14 = 0x02
const BKPIMAGE_APPLY_PG14 = 0x04

export interface RelFileLocator {
  readonly spcOid: number
  readonly dbOid: number
  readonly relNumber: number
}

export interface BlockImage {
  /** Offset of the image bytes within the record. */
  readonly offset: number
  readonly lengthBytes: number
  readonly holeOffsetBytes: number
  readonly holeLengthBytes: number
  readonly info: number
  readonly apply: boolean
  readonly compressed: boolean
}

export interface BlockReference {
  readonly blockId: number
  readonly forkNumber: number
  readonly forkFlags: number
  readonly relation: RelFileLocator
  readonly blockNumber: number
  readonly image: BlockImage | undefined
  /** Offset of the block's data within the record (meaningful when dataLengthBytes > 0). */
  readonly dataOffset: number
  readonly dataLengthBytes: number
}

export interface RecordBody {
  readonly blocks: ReadonlyArray<BlockReference>
  /** Offset of the main data within the record. */
  readonly mainDataOffset: number
  readonly mainDataLengthBytes: number
  readonly origin: number | undefined
  readonly toplevelXid: number | undefined
}

export class RecordBodyError extends Schema.TaggedError<RecordBodyError>()("RecordBodyError", {
  message: Schema.String
}) {}

/**
 * Splits a record's body into block references and main data, with the cross-checks
 * DecodeXLogRecord makes. `record` is the whole record (header included); the header's
 * xl_tot_len must equal `record.length`. Offsets returned are within `record`.
 */
export function decodeRecordBody(record: Uint8Array, version: PgMajorVersion): Result.Result<RecordBody, RecordBodyError> {
  const fail = (message: string) => Result.fail(new RecordBodyError({ message }))
  if (record.length < SIZE_OF_XLOG_RECORD_BYTES) return fail("record shorter than its header")
  const view = new DataView(record.buffer, record.byteOffset, record.length)
  if (view.getUint32(0, true) !== record.length) return fail("xl_tot_len differs from the record's length")

  let position = SIZE_OF_XLOG_RECORD_BYTES
  let remaining = record.length - SIZE_OF_XLOG_RECORD_BYTES
  let dataTotal = 0
  let mainDataLength = 0
  let origin: number | undefined
  let toplevelXid: number | undefined
  let previousRelation: RelFileLocator | undefined
  let maxBlockId = -1
  interface PendingBlock {
    blockId: number
    forkFlags: number
    dataLengthBytes: number
    image: Omit<BlockImage, "offset"> | undefined
    relation: RelFileLocator
    blockNumber: number
  }
  const pending: PendingBlock[] = []
  const take = (size: number): number | undefined => {
    if (remaining < size) return undefined
    const at = position
    position += size
    remaining -= size
    return at
  }

  // The fragment headers come first; the loop ends at the main-data header or when only
  // data remains. Each pass consumes at least one byte, so it runs at most xl_tot_len times.
  while (remaining > dataTotal) {
    const idAt = take(1)
    if (idAt === undefined) return fail("record with invalid length")
    const blockId = view.getUint8(idAt)
    if (blockId === XLR_BLOCK_ID_DATA_SHORT) {
      const at = take(1)
      if (at === undefined) return fail("record with invalid length")
      mainDataLength = view.getUint8(at)
      dataTotal += mainDataLength
      break
    } else if (blockId === XLR_BLOCK_ID_DATA_LONG) {
      const at = take(4)
      if (at === undefined) return fail("record with invalid length")
      mainDataLength = view.getUint32(at, true)
      dataTotal += mainDataLength
      break
    } else if (blockId === XLR_BLOCK_ID_ORIGIN) {
      const at = take(2)
      if (at === undefined) return fail("record with invalid length")
      origin = view.getUint16(at, true)
    } else if (blockId === XLR_BLOCK_ID_TOPLEVEL_XID) {
      const at = take(4)
      if (at === undefined) return fail("record with invalid length")
      toplevelXid = view.getUint32(at, true)
    } else if (blockId <= XLR_MAX_BLOCK_ID) {
      if (blockId <= maxBlockId) return fail(`out-of-order block_id ${blockId}`)
      maxBlockId = blockId
      const headerAt = take(3)
      if (headerAt === undefined) return fail("record with invalid length")
      const forkFlags = view.getUint8(headerAt)
      const dataLengthBytes = view.getUint16(headerAt + 1, true)
      const hasData = (forkFlags & BKPBLOCK_HAS_DATA) !== 0
      if (hasData && dataLengthBytes === 0) return fail("BKPBLOCK_HAS_DATA set, but no data included")
      if (!hasData && dataLengthBytes !== 0) return fail(`BKPBLOCK_HAS_DATA not set, but data length is ${dataLengthBytes}`)
      dataTotal += dataLengthBytes
      let image: Omit<BlockImage, "offset"> | undefined
      if ((forkFlags & BKPBLOCK_HAS_IMAGE) !== 0) {
        const imageAt = take(5)
        if (imageAt === undefined) return fail("record with invalid length")
        const lengthBytes = view.getUint16(imageAt, true)
        const holeOffsetBytes = view.getUint16(imageAt + 2, true)
        const info = view.getUint8(imageAt + 4)
        const compressed = version === 14
          ? (info & BKPIMAGE_IS_COMPRESSED_PG14) !== 0
          : (info & BKPIMAGE_COMPRESSED_MASK_PG15) !== 0
        const apply = (info & (version === 14 ? BKPIMAGE_APPLY_PG14 : BKPIMAGE_APPLY_PG15)) !== 0
        const hasHole = (info & BKPIMAGE_HAS_HOLE) !== 0
        let holeLengthBytes = 0
        if (compressed) {
          if (hasHole) {
            const holeAt = take(2)
            if (holeAt === undefined) return fail("record with invalid length")
            holeLengthBytes = view.getUint16(holeAt, true)
          }
        } else {
          holeLengthBytes = BLCKSZ_BYTES - lengthBytes
        }
        dataTotal += lengthBytes
        if (hasHole && (holeOffsetBytes === 0 || holeLengthBytes === 0 || lengthBytes === BLCKSZ_BYTES)) {
          return fail(`BKPIMAGE_HAS_HOLE set, but hole offset ${holeOffsetBytes} length ${holeLengthBytes} block image length ${lengthBytes}`)
        }
        if (!hasHole && (holeOffsetBytes !== 0 || holeLengthBytes !== 0)) {
          return fail(`BKPIMAGE_HAS_HOLE not set, but hole offset ${holeOffsetBytes} length ${holeLengthBytes}`)
        }
        if (compressed && lengthBytes === BLCKSZ_BYTES) return fail(`compressed block image length ${lengthBytes}`)
        if (!hasHole && !compressed && lengthBytes !== BLCKSZ_BYTES) {
          return fail(`neither hole nor compression, but block image length is ${lengthBytes}`)
        }
        image = { lengthBytes, holeOffsetBytes, holeLengthBytes, info, apply, compressed }
      }
      let relation: RelFileLocator
      if ((forkFlags & BKPBLOCK_SAME_REL) === 0) {
        const relationAt = take(12)
        if (relationAt === undefined) return fail("record with invalid length")
        relation = {
          spcOid: view.getUint32(relationAt, true),
          dbOid: view.getUint32(relationAt + 4, true),
          relNumber: view.getUint32(relationAt + 8, true)
        }
        previousRelation = relation
      } else {
        if (previousRelation === undefined) return fail("BKPBLOCK_SAME_REL set but no previous rel")
        relation = previousRelation
      }
      const blockNumberAt = take(4)
      if (blockNumberAt === undefined) return fail("record with invalid length")
      pending.push({ blockId, forkFlags, dataLengthBytes, image, relation, blockNumber: view.getUint32(blockNumberAt, true) })
    } else {
      return fail(`invalid block_id ${blockId}`)
    }
  }
  if (remaining !== dataTotal) return fail("record with invalid length")

  // Payloads follow the headers in block order: each block's image, then its data; main data last.
  const blocks: BlockReference[] = []
  for (const block of pending) {
    let image: BlockImage | undefined
    if (block.image !== undefined) {
      image = { ...block.image, offset: position }
      position += block.image.lengthBytes
    }
    blocks.push({
      blockId: block.blockId,
      forkNumber: block.forkFlags & BKPBLOCK_FORK_MASK,
      forkFlags: block.forkFlags,
      relation: block.relation,
      blockNumber: block.blockNumber,
      image,
      dataOffset: position,
      dataLengthBytes: block.dataLengthBytes
    })
    position += block.dataLengthBytes
  }
  assert(position + mainDataLength === record.length, "fragments add up to xl_tot_len")
  return Result.succeed({ blocks, mainDataOffset: position, mainDataLengthBytes: mainDataLength, origin, toplevelXid })
}

// ---- Logical messages (replication/message.h) ----

/**
 * offsetof(xl_logical_message, message) on 64-bit builds: dbId u32, transactional bool,
 * 3 bytes padding, prefix_size u64 (Size), message_size u64; the prefix (NUL-terminated,
 * counted in prefix_size) and the message follow.
 */
export const SIZE_OF_LOGICAL_MESSAGE_BYTES = 24

export interface LogicalMessage {
  readonly dbId: number
  readonly transactional: boolean
  readonly prefix: string
  /** A view into the record's bytes. */
  readonly message: Uint8Array
}

export class LogicalMessageError extends Schema.TaggedError<LogicalMessageError>()("LogicalMessageError", {
  message: Schema.String
}) {}

/** Bytes of main data a logical message with these sizes takes. */
export function logicalMessageMainDataLengthBytes(prefixLengthBytes: number, messageLengthBytes: number): number {
  return SIZE_OF_LOGICAL_MESSAGE_BYTES + prefixLengthBytes + 1 + messageLengthBytes
}

/** Writes xl_logical_message and the NUL-terminated prefix (not the message) at `offset`. */
export function encodeLogicalMessageHeaderInto(
  fields: { readonly dbId: number; readonly transactional: boolean; readonly prefix: Uint8Array; readonly messageLengthBytes: number },
  target: Uint8Array,
  offset: number
): number {
  assert(!fields.prefix.includes(0), "a logical message prefix has no NUL byte")
  const size = SIZE_OF_LOGICAL_MESSAGE_BYTES + fields.prefix.length + 1
  assert(offset >= 0 && offset + size <= target.length, "logical message header fits in target")
  const view = new DataView(target.buffer, target.byteOffset + offset, size)
  view.setUint32(0, fields.dbId, true)
  view.setUint8(4, fields.transactional ? 1 : 0)
  view.setUint8(5, 0)
  view.setUint16(6, 0, true)
  setUint64(view, 8, fields.prefix.length + 1)
  setUint64(view, 16, fields.messageLengthBytes)
  target.set(fields.prefix, offset + SIZE_OF_LOGICAL_MESSAGE_BYTES)
  target[offset + size - 1] = 0
  return size
}

const utf8 = new TextDecoder("utf-8", { fatal: false })

/** Reads a logical message from a record's main data (a view; nothing is copied). */
export function decodeLogicalMessage(mainData: Uint8Array): Result.Result<LogicalMessage, LogicalMessageError> {
  const fail = (message: string) => Result.fail(new LogicalMessageError({ message }))
  if (mainData.length < SIZE_OF_LOGICAL_MESSAGE_BYTES) return fail("main data shorter than xl_logical_message")
  const view = new DataView(mainData.buffer, mainData.byteOffset, mainData.length)
  const prefixSize = getUint64(view, 8)
  const messageSize = getUint64(view, 16)
  if (prefixSize === undefined || messageSize === undefined) return fail("size field above 2^53-1")
  if (prefixSize < 1) return fail("prefix_size 0: the prefix lacks its NUL terminator")
  if (SIZE_OF_LOGICAL_MESSAGE_BYTES + prefixSize + messageSize !== mainData.length) {
    return fail(`prefix_size ${prefixSize} + message_size ${messageSize} do not fill ${mainData.length - SIZE_OF_LOGICAL_MESSAGE_BYTES} bytes`)
  }
  const prefixEnd = SIZE_OF_LOGICAL_MESSAGE_BYTES + prefixSize
  if (mainData[prefixEnd - 1] !== 0) return fail("prefix is not NUL-terminated")
  return Result.succeed({
    dbId: view.getUint32(0, true),
    transactional: view.getUint8(4) !== 0,
    prefix: utf8.decode(mainData.subarray(SIZE_OF_LOGICAL_MESSAGE_BYTES, prefixEnd - 1)),
    message: mainData.subarray(prefixEnd)
  })
}
