import { NodeId, Term } from "../acceptor/state.js"
import { remotePath } from "../io/remote-storage.js"
import { Lsn, segmentFileName } from "../wal/lsn.js"
import { WAL_TIMELINE_ID } from "../wal/segment-store.js"
import type { TimelineKey } from "./timeline.js"

/**
 * Where a timeline's WAL lives in object storage, named as Neon names it (`wal_backup.rs`,
 * `wal_backup_partial.rs`) so a restore tool written for Neon's layout finds it:
 *   `<tenant>/<timeline>/<segment file name>` for a full segment, and
 *   `<tenant>/<timeline>/<segment>_<last_log_term>_<flush %016X>_<commit %016X>_sk<id>.partial`
 * for the open one. The term in a partial's name is the last_log_term of the WAL it holds,
 * never the acceptor's current term: a vote raises the term without changing a byte of WAL,
 * and Neon named partials by `term` until seed 002's fix, so two safekeepers holding identical
 * WAL could upload it under different names and a reader could pick the wrong one.
 */

export const PARTIAL_OBJECT_SUFFIX = ".partial"

/** `<tenant>/<timeline>`: every object of the timeline starts with it. */
export const timelinePrefix = (key: TimelineKey): string => remotePath(key.tenantId, key.timelineId)

/** A full segment's object: `<tenant>/<timeline>/<segment file name>`. */
export function segmentObjectPath(key: TimelineKey, segmentNo: number, segmentSizeBytes: number): string {
  return remotePath(timelinePrefix(key), segmentFileName(WAL_TIMELINE_ID, segmentNo, segmentSizeBytes))
}

/** What a partial segment's name says about the WAL in it. */
export interface PartialObjectFields {
  readonly segmentNo: number
  /** last_log_term of the uploaded WAL (not the acceptor's term). */
  readonly lastLogTerm: Term
  readonly flushLsn: Lsn
  readonly commitLsn: Lsn
  readonly nodeId: NodeId
}

/** The partial's object name (no prefix): what the control file records. */
export function partialObjectName(fields: PartialObjectFields, segmentSizeBytes: number): string {
  const segment = segmentFileName(WAL_TIMELINE_ID, fields.segmentNo, segmentSizeBytes)
  return `${segment}_${fields.lastLogTerm}_${hex16(fields.flushLsn)}_${hex16(fields.commitLsn)}_sk${fields.nodeId}${PARTIAL_OBJECT_SUFFIX}`
}

/** `<tenant>/<timeline>/<name>` of a partial object name recorded in the control file. */
export const partialObjectPath = (key: TimelineKey, name: string): string => remotePath(timelinePrefix(key), name)

const PARTIAL_NAME = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})_(0|[1-9][0-9]{0,15})_([0-9A-F]{16})_([0-9A-F]{16})_sk(0|[1-9][0-9]{0,15})\.partial$/

/**
 * Reads a partial object name back (the restore tool picks the newest partial by it);
 * undefined when it is not one, or a number in it is above 2^53−1.
 */
export function parsePartialObjectName(name: string, segmentSizeBytes: number): PartialObjectFields | undefined {
  const match = PARTIAL_NAME.exec(name)
  if (match === null) return undefined
  const timelineId = parseInt(match[1]!, 16)
  if (timelineId !== WAL_TIMELINE_ID) return undefined
  const segmentsPerXlogId = 0x1_0000_0000 / segmentSizeBytes
  const low = parseInt(match[3]!, 16)
  if (low >= segmentsPerXlogId) return undefined
  const segmentNo = parseInt(match[2]!, 16) * segmentsPerXlogId + low
  const numbers = [Number(match[4]!), parseInt(match[5]!, 16), parseInt(match[6]!, 16), Number(match[7]!), segmentNo]
  if (numbers.some((n) => !Number.isSafeInteger(n))) return undefined
  return {
    segmentNo,
    lastLogTerm: Term(numbers[0]!),
    flushLsn: Lsn(numbers[1]!),
    commitLsn: Lsn(numbers[2]!),
    nodeId: NodeId(numbers[3]!)
  }
}

/** `%016X`: Neon prints LSNs in partial names as 16 upper-case hex digits. */
function hex16(value: number): string {
  return value.toString(16).toUpperCase().padStart(16, "0")
}
