// Goal: object names follow Neon's layout exactly, a partial's name carries last_log_term, and
// names parse back to what made them (the restore tool relies on it). Method: fast-check round
// trips over the whole 2^53 range of every field and over segment sizes, known names written by
// hand from Neon's format strings, and garbage that must not parse.
import fc from "fast-check"
import { describe, expect, test } from "vitest"
import { U53_MAX } from "../assert.js"
import { NodeId, TenantId, Term, TimelineId } from "../acceptor/state.js"
import { Lsn, segmentNoOf } from "../wal/lsn.js"
import {
  parsePartialObjectName,
  partialObjectName,
  partialObjectPath,
  segmentObjectPath,
  timelinePrefix
} from "./remote-layout.js"

const KEY = { tenantId: TenantId("0123456789abcdef0123456789abcdef"), timelineId: TimelineId("fedcba9876543210fedcba9876543210") }
const MIB = 1024 * 1024
const SEGMENT_SIZES = [1, 2, 16, 64, 1024].map((mib) => mib * MIB)

describe("remote layout", () => {
  test("full segments live under <tenant>/<timeline>/ with their Postgres file name", () => {
    expect(timelinePrefix(KEY)).toBe("0123456789abcdef0123456789abcdef/fedcba9876543210fedcba9876543210")
    expect(segmentObjectPath(KEY, 1, 16 * MIB)).toBe(`${timelinePrefix(KEY)}/000000010000000000000001`)
    // 256 segments of 16 MiB per xlog id: segment 0x1ff is id 1, low 0xff.
    expect(segmentObjectPath(KEY, 0x1ff, 16 * MIB)).toBe(`${timelinePrefix(KEY)}/0000000100000001000000FF`)
  })

  test("a partial is <seg>_<last_log_term decimal>_<flush %016X>_<commit %016X>_sk<id>.partial", () => {
    const name = partialObjectName({ segmentNo: 2, lastLogTerm: Term(12), flushLsn: Lsn(0x2_1a_b0c8), commitLsn: Lsn(0x2_10_0000), nodeId: NodeId(3) }, 16 * MIB)
    expect(name).toBe("000000010000000000000002_12_00000000021AB0C8_0000000002100000_sk3.partial")
    expect(partialObjectPath(KEY, name)).toBe(`${timelinePrefix(KEY)}/${name}`)
  })

  test("partial names round-trip for every field up to 2^53-1", () => {
    const arbFields = fc.record({
      segmentSizeBytes: fc.constantFrom(...SEGMENT_SIZES),
      lastLogTerm: fc.oneof(fc.constantFrom(0, U53_MAX), fc.maxSafeNat()),
      flushLsn: fc.oneof(fc.constantFrom(0, U53_MAX), fc.maxSafeNat()),
      commitLsn: fc.oneof(fc.constantFrom(0, U53_MAX), fc.maxSafeNat()),
      nodeId: fc.oneof(fc.constantFrom(0, 1, U53_MAX), fc.maxSafeNat())
    })
    fc.assert(fc.property(arbFields, (f) => {
      const fields = {
        segmentNo: segmentNoOf(f.flushLsn, f.segmentSizeBytes),
        lastLogTerm: Term(f.lastLogTerm),
        flushLsn: Lsn(f.flushLsn),
        commitLsn: Lsn(f.commitLsn),
        nodeId: NodeId(f.nodeId)
      }
      const name = partialObjectName(fields, f.segmentSizeBytes)
      expect(parsePartialObjectName(name, f.segmentSizeBytes)).toEqual(fields)
    }))
  })

  test("what is not a partial name does not parse, and never throws", () => {
    const good = "000000010000000000000002_12_00000000021AB0C8_0000000002100000_sk3.partial"
    for (const bad of [
      "000000010000000000000002", // a full segment
      "000000010000000000000002.partial", // a local open segment
      good.replace("_12_", "_012_"), // a leading zero: not what we print
      good.replace("021AB0C8", "021ab0c8"), // lower-case hex
      good.replace("_sk3", "_sk"),
      good.replace("00000001000000000000", "00000002000000000000"), // Postgres timeline 2: never ours
      "000000010000000000000100_12_00000000021AB0C8_0000000002100000_sk3.partial", // low part ≥ 256 for 16 MiB
      good.replace("_12_", "_9007199254740992_") // term 2^53
    ]) {
      expect(parsePartialObjectName(bad, 16 * MIB), bad).toBeUndefined()
    }
    fc.assert(fc.property(fc.string({ maxLength: 90 }), (text) => {
      const parsed = parsePartialObjectName(text, 16 * MIB)
      return parsed === undefined || partialObjectName(parsed, 16 * MIB) === text
    }))
  })
})
