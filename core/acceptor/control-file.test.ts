// Goal: safekeeper.control is byte-compatible with Neon (reference §6), every corrupt file is a
// typed ControlFileError (never a throw, never a silent reset), and persisting is atomic under
// crashes.
// Method: v10 and v9 fixtures written field by field from the reference's order with test-local
// little-endian helpers (independent of the encoder), plus Neon's own v4 test vector from
// control_file_upgrade.rs; fast-check round trips; truncations at every length, every single bit
// flip, body mutations with a recomputed checksum; and a crash model of the Disk that loses any
// unsynced data or undirsynced rename, checked at every step of a persist.
import { crc32c as referenceCrc32c } from "@node-rs/crc32"
import fc from "fast-check"
import { Cause, Effect, Exit, Result } from "effect"
import { describe, expect, test } from "vitest"
import { InvariantViolation, U53_MAX } from "../assert.js"
import { Disk, DiskError, type DiskFile } from "../io/disk.js"
import { Lsn } from "../wal/lsn.js"
import {
  CONTROL_FILE_NAME,
  CONTROL_FILE_PARTIAL_NAME,
  type ControlFileError,
  controlFileVersionFor,
  decodeControlFile,
  decodeControlFileDetailed,
  encodeControlFile,
  loadControlFile,
  persistControlFile,
  type PersistOptions
} from "./control-file.js"
import {
  EMPTY_MEMBER_CONFIGURATION,
  Generation,
  type MemberConfiguration,
  NodeId,
  type PartialRemoteSegment,
  type PersistedState,
  type SafekeeperId,
  TenantId,
  Term,
  type TermHistory,
  TimelineId,
  UNIX_EPOCH
} from "./state.js"

// ---- test-local little-endian helpers (deliberately not the codec's ByteWriter) ----

const u16 = (n: number) => { const b = Buffer.alloc(2); b.writeUInt16LE(n); return b.toString("hex") }
const u32 = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32LE(n); return b.toString("hex") }
const u64 = (n: number | bigint) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(n)); return b.toString("hex") }
const str = (s: string) => u64(Buffer.byteLength(s)) + Buffer.from(s).toString("hex")
const hex = (...parts: string[]) => Uint8Array.from(Buffer.from(parts.join(""), "hex"))
const toHex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex")
/** Appends the CRC32C (computed by the library directly) of everything before it. */
const withChecksum = (body: Uint8Array) => new Uint8Array([...body, ...Buffer.from(u32(referenceCrc32c(body) >>> 0), "hex")])
/** Replaces the checksum of a framed file with a correct one for its (modified) content. */
const rechecksum = (file: Uint8Array) => withChecksum(file.subarray(0, file.byteLength - 4))

const TENANT = TenantId("cf0480929707ee75372337efaa5ecf96")
const TIMELINE = TimelineId("112ded66422aa5e953e5440fa5427ac4")
const PARTIAL_NAME = "000000010000000000000001_7_00000000016B5A50_00000000016B5A48_sk1.partial"

const V10_STATE: PersistedState = {
  tenantId: TENANT,
  timelineId: TIMELINE,
  mconf: {
    generation: Generation(3),
    members: [{ id: NodeId(1), host: "sk-1", pgPort: 5454 }, { id: NodeId(2), host: "sk-2", pgPort: 5454 }],
    newMembers: [{ id: NodeId(3), host: "sk-3", pgPort: 6000 }]
  },
  acceptorState: { term: Term(7), termHistory: [{ term: Term(1), lsn: Lsn(0x1000000) }, { term: Term(7), lsn: Lsn(0x16b5a50) }] },
  server: { pgVersion: 170004, systemId: 0x6f1d8e2a4b3c5d70n, walSegSizeBytes: 0x1000000 },
  proposerUuid: "00112233445566778899aabbccddeeff",
  timelineStartLsn: Lsn(0x1000000),
  localStartLsn: Lsn(0x1000000),
  commitLsn: Lsn(0x16b5a48),
  backupLsn: Lsn(0x1000000),
  peerHorizonLsn: Lsn(0x16b0000),
  remoteConsistentLsn: Lsn(0x1000000),
  partialBackup: {
    segments: [{ status: "Uploaded", name: PARTIAL_NAME, commitLsn: Lsn(0x16b5a48), flushLsn: Lsn(0x16b5a50), term: Term(7) }]
  },
  evictionState: { _tag: "Present" },
  creationTs: { secsSinceEpoch: 1700000000, nanosSinceEpoch: 123456789 }
}

const V10_BYTES = hex(
  u32(0xcafeceef), u32(10),
  str(TENANT), str(TIMELINE),
  // mconf: generation, members Vec<{id, host, pg_port}>, new_members Option<Vec<...>>
  u32(3), u64(2), u64(1), str("sk-1"), u16(5454), u64(2), str("sk-2"), u16(5454), "01", u64(1), u64(3), str("sk-3"), u16(6000),
  // acceptor_state: term, term_history Vec<{term, lsn}>
  u64(7), u64(2), u64(1), u64(0x1000000), u64(7), u64(0x16b5a50),
  // server: pg_version, system_id, wal_seg_size
  u32(170004), u64(0x6f1d8e2a4b3c5d70n), u32(0x1000000),
  str("00112233445566778899aabbccddeeff"),
  // timeline_start, local_start, commit, backup, peer_horizon, remote_consistent
  u64(0x1000000), u64(0x1000000), u64(0x16b5a48), u64(0x1000000), u64(0x16b0000), u64(0x1000000),
  // partial_backup: Vec<{status u32, name, commit_lsn, flush_lsn, term}>
  u64(1), u32(1), str(PARTIAL_NAME), u64(0x16b5a48), u64(0x16b5a50), u64(7),
  u32(0), // eviction_state Present
  u64(1700000000), u32(123456789), // creation_ts
  "5a33b835" // CRC32C 0x35b8335a
)

const V9_STATE: PersistedState = {
  tenantId: TENANT,
  timelineId: TIMELINE,
  mconf: EMPTY_MEMBER_CONFIGURATION,
  acceptorState: { term: Term(2), termHistory: [{ term: Term(2), lsn: Lsn(0x2000000) }] },
  server: { pgVersion: 150005, systemId: 0n, walSegSizeBytes: 0x1000000 },
  proposerUuid: "00000000000000000000000000000000",
  timelineStartLsn: Lsn(0x2000000),
  localStartLsn: Lsn(0x2000000),
  commitLsn: Lsn(0x2000000),
  backupLsn: Lsn(0x2000000),
  peerHorizonLsn: Lsn(0x2000000),
  remoteConsistentLsn: Lsn(0),
  partialBackup: { segments: [] },
  evictionState: { _tag: "Offloaded", flushLsn: Lsn(0x2000028) },
  creationTs: UNIX_EPOCH
}

const V9_BYTES = hex(
  u32(0xcafeceef), u32(9),
  str(TENANT), str(TIMELINE),
  u64(2), u64(1), u64(2), u64(0x2000000), // acceptor_state
  u32(150005), u64(0), u32(0x1000000), // server
  str("00000000000000000000000000000000"),
  u64(0x2000000), u64(0x2000000), u64(0x2000000), u64(0x2000000), u64(0x2000000), u64(0),
  u64(0), // peers: empty
  u64(0), // partial_backup: empty
  u32(1), u64(0x2000028), // eviction_state Offloaded(flush_lsn)
  "571fb9c5" // CRC32C 0xc5b91f57
)

/** Neon's `roundtrip_v4` expected bytes (safekeeper/src/control_file_upgrade.rs): a v4 body. */
const NEON_V4_BODY = [
  0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x63, 0x66, 0x30, 0x34, 0x38, 0x30,
  0x39, 0x32, 0x39, 0x37, 0x30, 0x37, 0x65, 0x65, 0x37, 0x35, 0x33, 0x37, 0x32, 0x33,
  0x33, 0x37, 0x65, 0x66, 0x61, 0x61, 0x35, 0x65, 0x63, 0x66, 0x39, 0x36, 0x20, 0x00,
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x31, 0x31, 0x32, 0x64, 0x65, 0x64, 0x36, 0x36,
  0x34, 0x32, 0x32, 0x61, 0x61, 0x35, 0x65, 0x39, 0x35, 0x33, 0x65, 0x35, 0x34, 0x34,
  0x30, 0x66, 0x61, 0x35, 0x34, 0x32, 0x37, 0x61, 0x63, 0x34, 0x2a, 0x00, 0x00, 0x00,
  0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x29, 0x00,
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
  0xE0, 0x22, 0x02, 0x00, 0x21, 0x43, 0x65, 0x87, 0x78, 0x56, 0x34, 0x12, 0x78, 0x56,
  0x34, 0x12, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x63, 0x34, 0x37, 0x61,
  0x34, 0x32, 0x61, 0x35, 0x30, 0x66, 0x34, 0x34, 0x65, 0x35, 0x35, 0x33, 0x65, 0x39,
  0x61, 0x35, 0x32, 0x61, 0x34, 0x32, 0x36, 0x36, 0x65, 0x64, 0x32, 0x64, 0x31, 0x31,
  0x78, 0x02, 0x96, 0x49, 0x00, 0x00, 0x00, 0x00, 0x84, 0x00, 0x96, 0x49, 0x00, 0x00,
  0x00, 0x00, 0x7f, 0x96, 0x98, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xe4, 0x95, 0x49,
  0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00,
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x58, 0xff, 0x95, 0x49, 0x00, 0x00, 0x00, 0x00,
  0x2a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x70, 0x02, 0x96, 0x49, 0x00, 0x00,
  0x00, 0x00, 0xb0, 0x01, 0x96, 0x49, 0x00, 0x00, 0x00, 0x00
]

const reasonOf = (result: Result.Result<unknown, { readonly reason: string }>) => Result.isFailure(result) ? result.failure.reason : "decoded"

describe("fixtures", () => {
  test("a v10 file written by hand decodes, and the encoder reproduces it byte for byte", () => {
    expect(referenceCrc32c(V10_BYTES.subarray(0, V10_BYTES.byteLength - 4)) >>> 0).toBe(0x35b8335a)
    const decoded = Result.getOrThrow(decodeControlFileDetailed(V10_BYTES))
    expect(decoded.formatVersion).toBe(10)
    expect(decoded.checksum).toBe(0x35b8335a)
    expect(decoded.state).toEqual(V10_STATE)
    expect(controlFileVersionFor(V10_STATE)).toBe(10)
    expect(toHex(encodeControlFile(V10_STATE))).toBe(toHex(V10_BYTES))
  })

  test("a v9 file written by hand decodes, and an empty configuration is written as v9 (as Neon does)", () => {
    expect(referenceCrc32c(V9_BYTES.subarray(0, V9_BYTES.byteLength - 4)) >>> 0).toBe(0xc5b91f57)
    const decoded = Result.getOrThrow(decodeControlFileDetailed(V9_BYTES))
    expect(decoded.formatVersion).toBe(9)
    expect(decoded.state).toEqual(V9_STATE)
    expect(controlFileVersionFor(V9_STATE)).toBe(9)
    expect(toHex(encodeControlFile(V9_STATE))).toBe(toHex(V9_BYTES))
  })

  test("the same empty-configuration state written as v10 reads back identically", () => {
    const state = { ...V9_STATE, creationTs: { secsSinceEpoch: 5, nanosSinceEpoch: 6 } }
    const v10 = encodeControlFile(state, 10)
    expect(Result.getOrThrow(decodeControlFileDetailed(v10)).formatVersion).toBe(10)
    expect(Result.getOrThrow(decodeControlFile(v10))).toEqual(state)
    // As v9, creation_ts is not stored and reads back as the epoch.
    expect(Result.getOrThrow(decodeControlFile(encodeControlFile(state)))).toEqual({ ...state, creationTs: UNIX_EPOCH })
  })

  test("Neon's own v4 test vector upgrades as Neon upgrades it", () => {
    const file = withChecksum(new Uint8Array([...Buffer.from(u32(0xcafeceef) + u32(4), "hex"), ...NEON_V4_BODY]))
    expect(Result.getOrThrow(decodeControlFile(file))).toEqual({
      tenantId: TENANT,
      timelineId: TIMELINE,
      mconf: EMPTY_MEMBER_CONFIGURATION,
      acceptorState: { term: Term(42), termHistory: [{ term: Term(41), lsn: Lsn(1) }] },
      server: { pgVersion: 140000, systemId: 0x1234567887654321n, walSegSizeBytes: 0x12345678 },
      proposerUuid: "c47a42a50f44e553e9a52a4266ed2d11",
      timelineStartLsn: Lsn(0),
      localStartLsn: Lsn(0),
      commitLsn: Lsn(1234567800),
      backupLsn: Lsn(0),
      peerHorizonLsn: Lsn(9999999),
      remoteConsistentLsn: Lsn(0),
      partialBackup: { segments: [] },
      evictionState: { _tag: "Present" },
      creationTs: UNIX_EPOCH
    })
  })

  test("v7 and v8 bodies (v9 without eviction_state, and without partial_backup) upgrade", () => {
    const v9Body = V9_BYTES.subarray(8, V9_BYTES.byteLength - 4)
    const evictionBytes = 12
    const v8 = withChecksum(hex(u32(0xcafeceef), u32(8), toHex(v9Body.subarray(0, v9Body.byteLength - evictionBytes))))
    const expected = { ...V9_STATE, evictionState: { _tag: "Present" as const } }
    expect(Result.getOrThrow(decodeControlFile(v8))).toEqual(expected)
    const v7 = withChecksum(hex(u32(0xcafeceef), u32(7), toHex(v9Body.subarray(0, v9Body.byteLength - evictionBytes - 8))))
    expect(Result.getOrThrow(decodeControlFile(v7))).toEqual(expected)
  })
})

// ---- arbitraries ----

const arbU53 = fc.oneof(fc.constantFrom(0, U53_MAX), fc.maxSafeNat())
const arbHexId = fc.uint8Array({ minLength: 16, maxLength: 16 }).map((b) => Buffer.from(b).toString("hex"))
const arbMember: fc.Arbitrary<SafekeeperId> = fc.record({
  id: arbU53.map(NodeId),
  host: fc.string({ unit: "grapheme", maxLength: 16 }).filter((s) => !s.includes("\u0000")),
  pgPort: fc.nat(0xffff)
})
const arbMemberSet = (minLength: number) => fc.uniqueArray(arbMember, { selector: (m) => m.id, minLength, maxLength: 4 })
const arbMconf: fc.Arbitrary<MemberConfiguration> = fc.oneof(
  fc.constant(EMPTY_MEMBER_CONFIGURATION),
  fc.record({ generation: fc.constant(Generation(0)), members: arbMemberSet(0), newMembers: fc.option(arbMemberSet(0), { nil: undefined }) }),
  fc.record({ generation: fc.integer({ min: 1, max: 0x7fffffff }).map(Generation), members: arbMemberSet(1), newMembers: fc.option(arbMemberSet(0), { nil: undefined }) })
)
/** A well-formed history: terms rise, LSNs never fall. */
const arbTermHistory: fc.Arbitrary<TermHistory> = fc.array(fc.tuple(fc.integer({ min: 1, max: 1000 }), fc.nat(1 << 24)), { maxLength: 6 })
  .map((steps) => {
    let term = 0
    let lsn = 0
    return steps.map(([termStep, lsnStep]) => {
      term += termStep
      lsn += lsnStep
      return { term: Term(term), lsn: Lsn(lsn) }
    })
  })
const arbSegment = (status: PartialRemoteSegment["status"]): fc.Arbitrary<PartialRemoteSegment> => fc.record({
  status: fc.constant(status),
  name: fc.string({ maxLength: 80 }),
  commitLsn: arbU53.map(Lsn),
  flushLsn: arbU53.map(Lsn),
  term: arbU53.map(Term)
})
const arbState: fc.Arbitrary<PersistedState> = fc.record({
  tenantId: arbHexId.map(TenantId),
  timelineId: arbHexId.map(TimelineId),
  mconf: arbMconf,
  history: arbTermHistory,
  termExtra: fc.nat(10),
  pgVersion: fc.oneof(fc.constant(0), fc.integer({ min: 140000, max: 179999 })),
  systemId: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  walSegSizeBytes: fc.oneof(fc.constant(16 * 1024 * 1024), fc.nat()),
  proposerUuid: arbHexId,
  timelineStartLsn: fc.nat(1 << 30),
  commitExtra: arbU53,
  localStartLsn: arbU53, backupLsn: arbU53, peerHorizonLsn: arbU53, remoteConsistentLsn: arbU53,
  segments: fc.tuple(fc.array(fc.oneof(arbSegment("InProgress"), arbSegment("Deleting")), { maxLength: 3 }), fc.option(arbSegment("Uploaded"), { nil: undefined }))
    .map(([others, uploaded]) => (uploaded === undefined ? others : [...others, uploaded])),
  evictionState: fc.oneof(fc.constant({ _tag: "Present" as const }), arbU53.map((lsn) => ({ _tag: "Offloaded" as const, flushLsn: Lsn(lsn) }))),
  creationTs: fc.record({ secsSinceEpoch: arbU53, nanosSinceEpoch: fc.integer({ min: 0, max: 999_999_999 }) })
}).map((g) => ({
  tenantId: g.tenantId,
  timelineId: g.timelineId,
  mconf: g.mconf,
  acceptorState: { term: Term((g.history[g.history.length - 1]?.term ?? 0) + g.termExtra), termHistory: g.history },
  server: { pgVersion: g.pgVersion, systemId: g.systemId, walSegSizeBytes: g.walSegSizeBytes },
  proposerUuid: g.proposerUuid,
  timelineStartLsn: Lsn(g.timelineStartLsn),
  localStartLsn: Lsn(g.localStartLsn),
  commitLsn: Lsn(Math.min(U53_MAX, g.timelineStartLsn + g.commitExtra)),
  backupLsn: Lsn(g.backupLsn),
  peerHorizonLsn: Lsn(g.peerHorizonLsn),
  remoteConsistentLsn: Lsn(g.remoteConsistentLsn),
  partialBackup: { segments: g.segments },
  evictionState: g.evictionState,
  creationTs: g.creationTs
}))

const expectedAfterRoundTrip = (state: PersistedState) =>
  controlFileVersionFor(state) === 9 ? { ...state, creationTs: UNIX_EPOCH } : state

describe("round trips", () => {
  test("any valid state survives encode/decode (creation_ts only in v10)", () => {
    fc.assert(fc.property(arbState, (state) => {
      expect(Result.getOrThrow(decodeControlFile(encodeControlFile(state)))).toEqual(expectedAfterRoundTrip(state))
      expect(Result.getOrThrow(decodeControlFile(encodeControlFile(state, 10)))).toEqual(state)
    }), { numRuns: 500 })
  })
})

describe("garbage in", () => {
  test("every truncation is a typed error", () => {
    for (const file of [V10_BYTES, V9_BYTES]) {
      for (let length = 0; length < file.byteLength; length++) {
        const result = decodeControlFile(file.subarray(0, length))
        expect(Result.isFailure(result) && result.failure._tag).toBe("ControlFileError")
        expect(reasonOf(result)).toBe(length < 12 ? "Truncated" : "BadChecksum")
      }
    }
  })

  test("every truncation of the body, re-checksummed, is a typed error", () => {
    for (const file of [V10_BYTES, V9_BYTES]) {
      for (let length = 8; length < file.byteLength - 4; length++) {
        const result = decodeControlFile(withChecksum(file.subarray(0, length)))
        expect(reasonOf(result)).toMatch(/^(Truncated|Malformed)$/)
      }
    }
  })

  test("every single bit flip is caught by the checksum", () => {
    for (const file of [V10_BYTES, V9_BYTES]) {
      for (let bit = 0; bit < file.byteLength * 8; bit++) {
        const flipped = file.slice()
        flipped[bit >> 3] = flipped[bit >> 3]! ^ (1 << (bit & 7))
        expect(reasonOf(decodeControlFile(flipped))).toBe("BadChecksum")
      }
    }
  })

  test("random bytes never throw", () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 600 }), (bytes) => {
      const result = decodeControlFile(bytes)
      expect(Result.isFailure(result) && result.failure._tag).toBe("ControlFileError")
    }), { numRuns: 1000 })
  })

  test("mutated bodies with a correct checksum give a typed error or a state that re-encodes", () => {
    fc.assert(fc.property(arbState, fc.array(fc.tuple(fc.nat(), fc.nat(255)), { minLength: 1, maxLength: 4 }), (state, edits) => {
      const file = encodeControlFile(state, 10).slice()
      for (const [at, value] of edits) file[8 + (at % (file.byteLength - 12))] = value
      const result = decodeControlFile(rechecksum(file))
      if (Result.isSuccess(result)) {
        expect(Result.getOrThrow(decodeControlFile(encodeControlFile(result.success, 10)))).toEqual(result.success)
      } else {
        expect(result.failure._tag).toBe("ControlFileError")
      }
    }), { numRuns: 1000 })
  })

  test("trailing garbage: a bad checksum, or TrailingBytes once re-checksummed", () => {
    const body = V10_BYTES.subarray(0, V10_BYTES.byteLength - 4)
    expect(reasonOf(decodeControlFile(new Uint8Array([...V10_BYTES, 0])))).toBe("BadChecksum")
    expect(reasonOf(decodeControlFile(withChecksum(new Uint8Array([...body, 0]))))).toBe("TrailingBytes")
  })

  test("bad magic with a valid checksum", () => {
    const file = V10_BYTES.slice()
    file[0] = 0xee
    const result = decodeControlFile(rechecksum(file))
    expect(reasonOf(result)).toBe("BadMagic")
    expect(Result.isFailure(result) && result.failure.message).toBe("bad control file magic 0xCAFECEEE, expected 0xCAFECEEF")
  })

  test("versions other than 4, 7, 8, 9, 10 are refused by name", () => {
    for (const version of [0, 1, 2, 3, 5, 6, 11, 0xffffffff]) {
      const file = V10_BYTES.slice()
      new DataView(file.buffer).setUint32(4, version, true)
      const result = decodeControlFile(rechecksum(file))
      expect(reasonOf(result)).toBe("UnsupportedVersion")
      expect(Result.isFailure(result) && result.failure.message).toBe(`control file version ${version} is not supported (readable: 4, 7, 8, 9, 10)`)
    }
  })

  test("malformed fields: hex ids, enum variants, option tags, LSNs above 2^53-1", () => {
    const variants: ReadonlyArray<readonly [string, Uint8Array]> = [
      ["tenant_id", withChecksum(hex(u32(0xcafeceef), u32(10), str("zz0480929707ee75372337efaa5ecf96")))],
      ["option tag", withChecksum(hex(u32(0xcafeceef), u32(10), str(TENANT), str(TIMELINE), u32(0), u64(0), "02"))],
      ["term 9007199254740992 above", withChecksum(hex(u32(0xcafeceef), u32(10), str(TENANT), str(TIMELINE), u32(0), u64(0), "00", u64(2n ** 53n)))],
      ["eviction_state variant 2", withChecksum(hex(toHex(V9_BYTES.subarray(0, V9_BYTES.byteLength - 16)), u32(2)))],
      ["partial_backup\\[0\\] status 3", withChecksum(hex(toHex(V9_BYTES.subarray(0, V9_BYTES.byteLength - 24)), u64(1), u32(3), str("x"), u64(0), u64(0), u64(0)))],
      ["term_history count 18446744073709551615 above", withChecksum(hex(u32(0xcafeceef), u32(9), str(TENANT), str(TIMELINE), u64(1), "ffffffffffffffff"))]
    ]
    for (const [what, file] of variants) {
      const result = decodeControlFile(file)
      expect(Result.isFailure(result) && result.failure.message, what).toMatch(new RegExp(what))
      expect(reasonOf(result)).toMatch(/^(Malformed|Truncated)$/)
    }
  })

  test("states that break a persisted-state rule are refused as Invalid", () => {
    const cases: ReadonlyArray<readonly [string, PersistedState]> = [
      ["commit_lsn .* below timeline_start_lsn", { ...V10_STATE, commitLsn: Lsn(0x10) }],
      ["term history terms do not rise", { ...V10_STATE, acceptorState: { term: Term(7), termHistory: [{ term: Term(7), lsn: Lsn(1) }, { term: Term(7), lsn: Lsn(2) }] } }],
      ["term history LSNs fall", { ...V10_STATE, acceptorState: { term: Term(7), termHistory: [{ term: Term(1), lsn: Lsn(5) }, { term: Term(2), lsn: Lsn(4) }] } }],
      ["above the acceptor's term", { ...V10_STATE, acceptorState: { term: Term(6), termHistory: V10_STATE.acceptorState.termHistory } }],
      ["duplicate node id 1", { ...V10_STATE, mconf: { ...V10_STATE.mconf, members: [V10_STATE.mconf.members[0]!, V10_STATE.mconf.members[0]!] } }],
      ["generation 3 with no members", { ...V10_STATE, mconf: { ...V10_STATE.mconf, members: [] } }],
      ["more than one Uploaded", { ...V10_STATE, partialBackup: { segments: [V10_STATE.partialBackup.segments[0]!, V10_STATE.partialBackup.segments[0]!] } }],
      ["pg_version 130000", { ...V10_STATE, server: { ...V10_STATE.server, pgVersion: 130000 } }]
    ]
    for (const [what, state] of cases) {
      expect(() => encodeControlFile(state)).toThrow(InvariantViolation)
      const result = decodeControlFile(encodeUnchecked(state))
      expect(reasonOf(result)).toBe("Invalid")
      expect(Result.isFailure(result) && result.failure.message).toMatch(new RegExp(what))
    }
  })

  test("v9 cannot be asked for when the state has a configuration", () => {
    expect(() => encodeControlFile(V10_STATE, 9)).toThrow(InvariantViolation)
    expect(() => encodeControlFile(V10_STATE, 8)).toThrow(InvariantViolation)
  })
})

// ---- persistence over a Disk that models crashes ----

interface Inode {
  data: Uint8Array
  durableData: Uint8Array
}

/**
 * A single-directory Disk model: file data is durable only after sync/datasync, names (creates,
 * renames) only after syncDirectory. `crashStates` lists every disk a crash could leave: names
 * either as last synced or as now (a rename is atomic), and each file's data either as last
 * synced or as now.
 */
class ModelDisk {
  readonly operations: string[] = []
  private inodes: Inode[] = []
  private names = new Map<string, number>()
  private durableNames = new Map<string, number>()
  /** Stop (fail every operation) after this many operations: the crash point. */
  operationBudget = Number.POSITIVE_INFINITY

  static withFile(name: string, data: Uint8Array): ModelDisk {
    const disk = new ModelDisk()
    disk.inodes.push({ data, durableData: data })
    disk.names.set(name, 0)
    disk.durableNames.set(name, 0)
    return disk
  }

  crashStates(): ModelDisk[] {
    const states: ModelDisk[] = []
    const inodeChoices = 1 << this.inodes.length
    for (const names of [this.durableNames, this.names]) {
      for (let choice = 0; choice < inodeChoices; choice++) {
        const disk = new ModelDisk()
        disk.inodes = this.inodes.map((inode, i) => {
          const data = (choice >> i) & 1 ? inode.data : inode.durableData
          return { data, durableData: data }
        })
        disk.names = new Map(names)
        disk.durableNames = new Map(names)
        states.push(disk)
      }
    }
    return states
  }

  service(): Disk["Service"] {
    const step = <A>(operation: string, path: string, run: () => A): Effect.Effect<A, DiskError> =>
      Effect.suspend(() => {
        if (this.operations.length >= this.operationBudget) {
          return Effect.fail(new DiskError({ reason: "EIO", operation, path, message: "crashed" }))
        }
        this.operations.push(`${operation} ${path.split("/").pop()}`)
        return Effect.try({ try: run, catch: () => new DiskError({ reason: "NotFound", operation, path, message: "no such file" }) })
      })
    const lookup = (path: string): Inode => {
      const index = this.names.get(path)
      if (index === undefined) throw new Error("not found")
      return this.inodes[index]!
    }
    const file = (path: string, inode: Inode): DiskFile => ({
      path,
      read: (offset, length) => step("read", path, () => inode.data.slice(offset, offset + length)),
      write: (offset, data) => step("write", path, () => {
        const grown = new Uint8Array(Math.max(inode.data.byteLength, offset + data.byteLength))
        grown.set(inode.data)
        grown.set(data, offset)
        inode.data = grown
      }),
      size: step("size", path, () => inode.data.byteLength),
      truncate: (sizeBytes) => step("truncate", path, () => {
        const resized = new Uint8Array(sizeBytes)
        resized.set(inode.data.subarray(0, sizeBytes))
        inode.data = resized
      }),
      datasync: step("datasync", path, () => { inode.durableData = inode.data }),
      sync: step("sync", path, () => { inode.durableData = inode.data }),
      close: Effect.sync(() => { this.operations.push(`close ${path.split("/").pop()}`) })
    })
    return Disk.of({
      open: (path, options) => step("open", path, () => {
        if (!this.names.has(path)) {
          if (options?.create !== true) throw new Error("not found")
          this.inodes.push({ data: new Uint8Array(0), durableData: new Uint8Array(0) })
          this.names.set(path, this.inodes.length - 1)
        }
        return file(path, lookup(path))
      }),
      readFile: (path) => step("readFile", path, () => lookup(path).data),
      rename: (from, to) => step("rename", from, () => {
        const index = this.names.get(from)
        if (index === undefined) throw new Error("not found")
        this.names.delete(from)
        this.names.set(to, index)
      }),
      unlink: (path) => step("unlink", path, () => { this.names.delete(path) }),
      mkdir: (path) => step("mkdir", path, () => undefined),
      rmdir: (path) => step("rmdir", path, () => undefined),
      list: (path) => step("list", path, () => [...this.names.keys()].sort().map((name) => ({ name: name.split("/").pop()!, kind: "file" as const }))),
      stat: (path) => step("stat", path, () => {
        const index = this.names.get(path)
        return index === undefined ? undefined : { kind: "file" as const, sizeBytes: this.inodes[index]!.data.byteLength }
      }),
      syncDirectory: (path) => step("syncDirectory", path, () => { this.durableNames = new Map(this.names) })
    })
  }
}

const DIR = "/data/tenant/timeline"
const run = <A, E>(disk: ModelDisk, effect: Effect.Effect<A, E, Disk>) => Effect.runSyncExit(Effect.provideService(effect, Disk, disk.service()))

describe("persist and load", () => {
  test("the Effect signatures are what callers rely on", () => {
    const load: (directory: string) => Effect.Effect<PersistedState, ControlFileError | DiskError, Disk> = loadControlFile
    const persist: (directory: string, state: PersistedState, options: PersistOptions) => Effect.Effect<void, DiskError, Disk> = persistControlFile
    expect([typeof load, typeof persist]).toEqual(["function", "function"])
  })

  test("writes .partial, fsyncs it, renames it, fsyncs the directory, in that order", () => {
    const disk = new ModelDisk()
    const exit = run(disk, persistControlFile(DIR, V10_STATE, { noSync: false }))
    expect(Exit.isSuccess(exit)).toBe(true)
    expect(disk.operations).toEqual([
      `open ${CONTROL_FILE_PARTIAL_NAME}`,
      `truncate ${CONTROL_FILE_PARTIAL_NAME}`,
      `write ${CONTROL_FILE_PARTIAL_NAME}`,
      `sync ${CONTROL_FILE_PARTIAL_NAME}`,
      `close ${CONTROL_FILE_PARTIAL_NAME}`,
      `rename ${CONTROL_FILE_PARTIAL_NAME}`,
      "syncDirectory timeline"
    ])
    const loaded = run(disk, loadControlFile(DIR))
    expect(Exit.isSuccess(loaded) && loaded.value).toEqual(V10_STATE)
  })

  test("--no-sync skips both fsyncs", () => {
    const disk = new ModelDisk()
    expect(Exit.isSuccess(run(disk, persistControlFile(DIR, V10_STATE, { noSync: true })))).toBe(true)
    expect(disk.operations.filter((op) => op.startsWith("sync"))).toEqual([])
  })

  test("a crash at any step leaves the old or the new state, never a broken file", () => {
    const oldState = V9_STATE
    const newState = { ...V9_STATE, acceptorState: { term: Term(3), termHistory: V9_STATE.acceptorState.termHistory } }
    const path = `${DIR}/${CONTROL_FILE_NAME}`
    const completed = new ModelDisk()
    run(completed, persistControlFile(DIR, newState, { noSync: false }))
    const stepCount = completed.operations.length
    for (let budget = 0; budget <= stepCount; budget++) {
      const disk = ModelDisk.withFile(path, encodeControlFile(oldState))
      disk.operationBudget = budget
      const exit = run(disk, persistControlFile(DIR, newState, { noSync: false }))
      expect(Exit.isSuccess(exit)).toBe(budget >= stepCount)
      for (const crashed of disk.crashStates()) {
        const loaded = run(crashed, loadControlFile(DIR))
        expect(Exit.isSuccess(loaded)).toBe(true)
        const state = Exit.isSuccess(loaded) ? loaded.value : undefined
        // Once persist has returned, only the new state may be found.
        expect(budget >= stepCount ? [newState] : [oldState, newState]).toContainEqual(state)
      }
    }
  })

  test("the crash model is strong enough to break a persist without fsyncs", () => {
    const path = `${DIR}/${CONTROL_FILE_NAME}`
    const disk = ModelDisk.withFile(path, encodeControlFile(V9_STATE))
    run(disk, persistControlFile(DIR, V10_STATE, { noSync: true }))
    const failures = disk.crashStates().map((crashed) => run(crashed, loadControlFile(DIR))).filter(Exit.isFailure)
    expect(failures.length).toBeGreaterThan(0)
  })

  test("a state that breaks a rule is a defect, raised before any disk operation", () => {
    const disk = new ModelDisk()
    const exit = run(disk, persistControlFile(DIR, { ...V10_STATE, commitLsn: Lsn(0) }, { noSync: false }))
    expect(Exit.isFailure(exit) && Cause.hasDies(exit.cause)).toBe(true)
    expect(disk.operations).toEqual([])
  })

  test("load: a missing file is DiskError NotFound; a corrupt one a ControlFileError naming the path", () => {
    const missing = run(new ModelDisk(), loadControlFile(DIR))
    expect(Exit.isFailure(missing) && Cause.squash(missing.cause)).toMatchObject({ _tag: "DiskError", reason: "NotFound" })
    const corrupt = V10_BYTES.slice()
    corrupt[20] = corrupt[20]! ^ 1
    const exit = run(ModelDisk.withFile(`${DIR}/${CONTROL_FILE_NAME}`, corrupt), loadControlFile(DIR))
    expect(Exit.isFailure(exit) && Cause.squash(exit.cause)).toMatchObject({
      _tag: "ControlFileError",
      reason: "BadChecksum",
      message: expect.stringMatching(new RegExp(`^${DIR}/${CONTROL_FILE_NAME}: control file checksum mismatch`))
    })
  })

  test("load: a file above the size limit is refused before it is read", () => {
    const exit = run(ModelDisk.withFile(`${DIR}/${CONTROL_FILE_NAME}`, new Uint8Array(32 * 1024 * 1024 + 1)), loadControlFile(DIR))
    expect(Exit.isFailure(exit) && Cause.squash(exit.cause)).toMatchObject({ _tag: "ControlFileError", reason: "TooLarge" })
  })
})

/** Frames a body the way encodeControlFile does but without its assertions (to build bad files). */
function encodeUnchecked(state: PersistedState): Uint8Array {
  const mconf = state.mconf
  const members = (set: ReadonlyArray<SafekeeperId>) => u64(set.length) + set.map((m) => u64(m.id) + str(m.host) + u16(m.pgPort)).join("")
  return withChecksum(hex(
    u32(0xcafeceef), u32(10), str(state.tenantId), str(state.timelineId),
    u32(mconf.generation), members(mconf.members), mconf.newMembers === undefined ? "00" : "01" + members(mconf.newMembers),
    u64(state.acceptorState.term), u64(state.acceptorState.termHistory.length),
    ...state.acceptorState.termHistory.map((e) => u64(e.term) + u64(e.lsn)),
    u32(state.server.pgVersion), u64(state.server.systemId), u32(state.server.walSegSizeBytes), str(state.proposerUuid),
    ...[state.timelineStartLsn, state.localStartLsn, state.commitLsn, state.backupLsn, state.peerHorizonLsn, state.remoteConsistentLsn].map(u64),
    u64(state.partialBackup.segments.length),
    ...state.partialBackup.segments.map((s) => u32(["InProgress", "Uploaded", "Deleting"].indexOf(s.status)) + str(s.name) + u64(s.commitLsn) + u64(s.flushLsn) + u64(s.term)),
    state.evictionState._tag === "Present" ? u32(0) : u32(1) + u64(state.evictionState.flushLsn),
    u64(state.creationTs.secsSinceEpoch), u32(state.creationTs.nanosSinceEpoch)
  ))
}
