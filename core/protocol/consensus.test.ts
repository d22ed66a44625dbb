// Goal: the consensus messages are byte-exact with Neon's protocol version 3 (reference §3.1)
// in both directions, and decoding is total: bad bytes give a MalformedMessage, never a throw.
// Method: one hand-written byte fixture per message kind (the layout is pinned independently of
// the encoder); fast-check round trips; every truncation of valid encodings; random bytes and
// single bit flips (whatever still decodes must re-encode and decode to the same message);
// targeted cases for each refusal rule.
import fc from "fast-check"
import { Result } from "effect"
import { describe, expect, test } from "vitest"
import { InvariantViolation, U53_MAX } from "../assert.js"
import {
  Generation,
  type MemberConfiguration,
  NodeId,
  type SafekeeperId,
  TenantId,
  Term,
  type TermHistory,
  TimelineId
} from "../acceptor/state.js"
import { Lsn } from "../wal/lsn.js"
import { ByteWriter } from "./bytes.js"
import {
  type AcceptorMessage,
  APPEND_REQUEST_HEADER_BYTES,
  APPEND_RESPONSE_FIXED_BYTES,
  type AppendRequest,
  decodeAcceptorMessage,
  decodeProposerMessage,
  encodeAcceptorMessage,
  encodeAppendRequestHeader,
  encodeProposerMessage,
  MalformedMessage,
  MAX_SEND_SIZE_BYTES,
  type ProposerMessage
} from "./consensus.js"
import { EMPTY_PAGESERVER_FEEDBACK, type PageserverFeedback } from "./pageserver-feedback.js"

const hex = (...parts: string[]) => Uint8Array.from(Buffer.from(parts.join("").replace(/\s+/g, ""), "hex"))
const toHex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex")
const cstr = (text: string) => Buffer.from(text + "\0", "utf8").toString("hex")

const TENANT = TenantId("cf0480929707ee75372337efaa5ecf96")
const TIMELINE = TimelineId("112ded66422aa5e953e5440fa5427ac4")

// ---- fixtures, written field by field from the reference's tables ----

const FIXTURES: ReadonlyArray<{ readonly name: string; readonly direction: "proposer" | "acceptor"; readonly bytes: Uint8Array; readonly message: ProposerMessage | AcceptorMessage }> = [
  {
    name: "ProposerGreeting",
    direction: "proposer",
    bytes: hex(
      "67",
      cstr(TENANT), cstr(TIMELINE),
      "00000001", // generation
      "00000002", // members
      "0000000000000001", cstr("sk1"), "154e",
      "0000000000000002", cstr("sk2"), "154f",
      "00000000", // not joint
      "00029814", // pg_version 170004
      "1234567887654321", // system_id
      "01000000" // wal_seg_size 16 MiB
    ),
    message: {
      _tag: "ProposerGreeting",
      tenantId: TENANT,
      timelineId: TIMELINE,
      mconf: {
        generation: Generation(1),
        members: [{ id: NodeId(1), host: "sk1", pgPort: 5454 }, { id: NodeId(2), host: "sk2", pgPort: 5455 }],
        newMembers: undefined
      },
      pgVersion: 170004,
      systemId: 0x1234567887654321n,
      walSegSizeBytes: 16 * 1024 * 1024
    }
  },
  {
    name: "VoteRequest",
    direction: "proposer",
    bytes: hex("76", "00000005", "000000000000002a"),
    message: { _tag: "VoteRequest", generation: Generation(5), term: Term(42) }
  },
  {
    name: "ProposerElected",
    direction: "proposer",
    bytes: hex(
      "65", "00000005", "000000000000002a",
      "00000000016b5a50", // start_streaming_at
      "00000002",
      "0000000000000001", "0000000001000000",
      "000000000000002a", "00000000016b5a50"
    ),
    message: {
      _tag: "ProposerElected",
      generation: Generation(5),
      term: Term(42),
      startStreamingAt: Lsn(0x16b5a50),
      termHistory: [{ term: Term(1), lsn: Lsn(0x1000000) }, { term: Term(42), lsn: Lsn(0x16b5a50) }]
    }
  },
  {
    name: "AppendRequest",
    direction: "proposer",
    bytes: hex(
      "61", "00000005", "000000000000002a",
      "00000000016b5a50", // begin
      "00000000016b5a54", // end
      "00000000016b5a48", // commit
      "0000000001000000", // truncate
      "deadbeef"
    ),
    message: {
      _tag: "AppendRequest",
      generation: Generation(5),
      term: Term(42),
      beginLsn: Lsn(0x16b5a50),
      endLsn: Lsn(0x16b5a54),
      commitLsn: Lsn(0x16b5a48),
      truncateLsn: Lsn(0x1000000),
      walData: hex("deadbeef")
    }
  },
  {
    name: "AcceptorGreeting",
    direction: "acceptor",
    bytes: hex(
      "67", "0000000000000003",
      "00000002", // generation
      "00000001", "0000000000000003", cstr("h"), "1f90",
      "00000002", "0000000000000004", cstr("a"), "0001", "0000000000000005", cstr("b"), "0002",
      "000000000000002a"
    ),
    message: {
      _tag: "AcceptorGreeting",
      nodeId: NodeId(3),
      mconf: {
        generation: Generation(2),
        members: [{ id: NodeId(3), host: "h", pgPort: 8080 }],
        newMembers: [{ id: NodeId(4), host: "a", pgPort: 1 }, { id: NodeId(5), host: "b", pgPort: 2 }]
      },
      term: Term(42)
    }
  },
  {
    name: "VoteResponse",
    direction: "acceptor",
    bytes: hex(
      "76", "00000005", "000000000000002a",
      "01", // vote_given
      "00000000016b5a50", // flush_lsn
      "0000000001000000", // truncate_lsn
      "00000001", "0000000000000001", "0000000001000000"
    ),
    message: {
      _tag: "VoteResponse",
      generation: Generation(5),
      term: Term(42),
      voteGiven: true,
      flushLsn: Lsn(0x16b5a50),
      truncateLsn: Lsn(0x1000000),
      termHistory: [{ term: Term(1), lsn: Lsn(0x1000000) }]
    }
  },
  {
    name: "AppendResponse",
    direction: "acceptor",
    bytes: hex(
      "61", "00000005", "000000000000002a",
      "00000000016b5a54", // flush_lsn
      "00000000016b5a50", // commit_lsn
      "ffffffffffffffff", // hs ts = -1
      "0000000100000002", // hs xmin
      "0000000000000000" // hs catalog_xmin
    ),
    message: {
      _tag: "AppendResponse",
      generation: Generation(5),
      term: Term(42),
      flushLsn: Lsn(0x16b5a54),
      commitLsn: Lsn(0x16b5a50),
      hsFeedback: { tsUs: -1, xmin: 0x100000002n, catalogXmin: 0n },
      pageserverFeedback: undefined
    }
  }
]

const decodeIn = (direction: "proposer" | "acceptor", bytes: Uint8Array): Result.Result<ProposerMessage | AcceptorMessage, MalformedMessage> =>
  direction === "proposer" ? decodeProposerMessage(bytes) : decodeAcceptorMessage(bytes)

describe("fixtures", () => {
  for (const fixture of FIXTURES) {
    test(`${fixture.name} encodes to and decodes from the hand-written bytes`, () => {
      const encoded = fixture.direction === "proposer"
        ? encodeProposerMessage(fixture.message as ProposerMessage)
        : encodeAcceptorMessage(fixture.message as AcceptorMessage)
      expect(toHex(encoded)).toBe(toHex(fixture.bytes))
      expect(Result.getOrThrow(decodeIn(fixture.direction, fixture.bytes))).toEqual(fixture.message)
    })
  }

  test("the AppendRequest header is 45 bytes and the AppendResponse fixed part 53", () => {
    const request = FIXTURES[3]!.message as AppendRequest
    expect(encodeAppendRequestHeader(request).byteLength).toBe(45)
    expect(APPEND_REQUEST_HEADER_BYTES).toBe(45)
    expect(toHex(encodeAppendRequestHeader(request))).toBe(toHex(FIXTURES[3]!.bytes.subarray(0, 45)))
    expect(FIXTURES[6]!.bytes.byteLength).toBe(APPEND_RESPONSE_FIXED_BYTES)
  })

  test("AppendResponse with pageserver feedback appends it after the fixed part", () => {
    const base = FIXTURES[6]!
    const feedback: PageserverFeedback = { ...EMPTY_PAGESERVER_FEEDBACK, lastReceivedLsn: Lsn(0x16b5a54), replyTimeUs: 5 }
    const message = { ...(base.message as AcceptorMessage), pageserverFeedback: feedback } as AcceptorMessage
    const encoded = encodeAcceptorMessage(message)
    expect(toHex(encoded.subarray(0, 53))).toBe(toHex(base.bytes))
    expect(encoded[53]).toBe(5) // five keys
    expect(Result.getOrThrow(decodeAcceptorMessage(encoded))).toEqual(message)
  })
})

// ---- arbitraries ----

const arbU53 = fc.oneof(fc.constantFrom(0, 1, U53_MAX), fc.maxSafeNat())
const arbU32 = fc.oneof(fc.constantFrom(0, 1, 0xffff_ffff), fc.maxSafeNat().map((n) => n % 0x1_0000_0000))
const arbHexId = fc.uint8Array({ minLength: 16, maxLength: 16 }).map((b) => Buffer.from(b).toString("hex"))
const arbHost = fc.string({ unit: "grapheme", maxLength: 24 }).filter((s) => !s.includes("\u0000"))
const arbMember: fc.Arbitrary<SafekeeperId> = fc.record({ id: arbU53.map(NodeId), host: arbHost, pgPort: fc.nat(0xffff) })
const arbMemberSet = (minLength: number) => fc.uniqueArray(arbMember, { selector: (m) => m.id, minLength, maxLength: 5 })
const arbMconf: fc.Arbitrary<MemberConfiguration> = fc.oneof(
  fc.record({ generation: fc.constant(Generation(0)), members: arbMemberSet(0), newMembers: fc.option(arbMemberSet(1), { nil: undefined }) }),
  fc.record({ generation: arbU32.filter((g) => g !== 0).map(Generation), members: arbMemberSet(1), newMembers: fc.option(arbMemberSet(1), { nil: undefined }) })
)
const arbTermHistory: fc.Arbitrary<TermHistory> = fc.array(fc.record({ term: arbU53.map(Term), lsn: arbU53.map(Lsn) }), { maxLength: 8 })
const arbFeedback: fc.Arbitrary<PageserverFeedback> = fc.record({
  currentTimelineSizeBytes: arbU53,
  lastReceivedLsn: arbU53.map(Lsn),
  diskConsistentLsn: arbU53.map(Lsn),
  remoteConsistentLsn: arbU53.map(Lsn),
  replyTimeUs: fc.maxSafeInteger(),
  shardNumber: arbU32,
  corruptionDetected: fc.boolean()
})

const arbAppendRequest: fc.Arbitrary<AppendRequest> = fc.record({
  generation: arbU32.map(Generation),
  term: arbU53.map(Term),
  begin: arbU53,
  walData: fc.uint8Array({ maxLength: 300 }),
  commitLsn: arbU53.map(Lsn),
  truncateLsn: arbU53.map(Lsn)
}).map(({ begin, walData, ...rest }) => {
  const beginLsn = Lsn(Math.min(begin, U53_MAX - walData.byteLength))
  return { _tag: "AppendRequest" as const, ...rest, beginLsn, endLsn: Lsn(beginLsn + walData.byteLength), walData }
})

const arbProposerMessage: fc.Arbitrary<ProposerMessage> = fc.oneof(
  fc.record({
    _tag: fc.constant("ProposerGreeting" as const),
    tenantId: arbHexId.map(TenantId),
    timelineId: arbHexId.map(TimelineId),
    mconf: arbMconf,
    pgVersion: fc.integer({ min: 140000, max: 179999 }),
    systemId: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
    walSegSizeBytes: fc.integer({ min: 20, max: 30 }).map((k) => 2 ** k)
  }),
  fc.record({ _tag: fc.constant("VoteRequest" as const), generation: arbU32.map(Generation), term: arbU53.map(Term) }),
  fc.record({
    _tag: fc.constant("ProposerElected" as const),
    generation: arbU32.map(Generation),
    term: arbU53.map(Term),
    startStreamingAt: arbU53.map(Lsn),
    termHistory: arbTermHistory
  }),
  arbAppendRequest
)

const arbAcceptorMessage: fc.Arbitrary<AcceptorMessage> = fc.oneof(
  fc.record({ _tag: fc.constant("AcceptorGreeting" as const), nodeId: arbU53.map(NodeId), mconf: arbMconf, term: arbU53.map(Term) }),
  fc.record({
    _tag: fc.constant("VoteResponse" as const),
    generation: arbU32.map(Generation),
    term: arbU53.map(Term),
    voteGiven: fc.boolean(),
    flushLsn: arbU53.map(Lsn),
    truncateLsn: arbU53.map(Lsn),
    termHistory: arbTermHistory
  }),
  fc.record({
    _tag: fc.constant("AppendResponse" as const),
    generation: arbU32.map(Generation),
    term: arbU53.map(Term),
    flushLsn: arbU53.map(Lsn),
    commitLsn: arbU53.map(Lsn),
    hsFeedback: fc.record({
      tsUs: fc.maxSafeInteger(),
      xmin: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
      catalogXmin: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })
    }),
    pageserverFeedback: fc.option(arbFeedback, { nil: undefined })
  })
)

function flipBit(bytes: Uint8Array, bit: number): Uint8Array {
  const copy = bytes.slice()
  const at = bit % (copy.byteLength * 8)
  copy[at >> 3] = copy[at >> 3]! ^ (1 << (at & 7))
  return copy
}

// ---- properties ----

describe("round trips", () => {
  test("proposer messages", () => {
    fc.assert(fc.property(arbProposerMessage, (message) => {
      expect(Result.getOrThrow(decodeProposerMessage(encodeProposerMessage(message)))).toEqual(message)
    }), { numRuns: 500 })
  })

  test("acceptor messages", () => {
    fc.assert(fc.property(arbAcceptorMessage, (message) => {
      expect(Result.getOrThrow(decodeAcceptorMessage(encodeAcceptorMessage(message)))).toEqual(message)
    }), { numRuns: 500 })
  })

  test("an AppendRequest of exactly MAX_SEND_SIZE_BYTES", () => {
    const walData = new Uint8Array(MAX_SEND_SIZE_BYTES).fill(7)
    const message: AppendRequest = {
      _tag: "AppendRequest", generation: Generation(1), term: Term(2),
      beginLsn: Lsn(0x1000000), endLsn: Lsn(0x1000000 + MAX_SEND_SIZE_BYTES), commitLsn: Lsn(0), truncateLsn: Lsn(0), walData
    }
    expect(Result.getOrThrow(decodeProposerMessage(encodeProposerMessage(message)))).toEqual(message)
  })
})

describe("garbage in", () => {
  test("every truncation of a proposer message is a typed error", () => {
    fc.assert(fc.property(arbProposerMessage, (message) => {
      const bytes = encodeProposerMessage(message)
      for (let length = 0; length < bytes.byteLength; length++) {
        const result = decodeProposerMessage(bytes.subarray(0, length))
        expect(Result.isFailure(result) && result.failure._tag).toBe("MalformedMessage")
      }
    }), { numRuns: 100 })
  })

  test("every truncation of an acceptor message is a typed error, except an AppendResponse cut to its fixed part", () => {
    fc.assert(fc.property(arbAcceptorMessage, (message) => {
      const bytes = encodeAcceptorMessage(message)
      for (let length = 0; length < bytes.byteLength; length++) {
        const result = decodeAcceptorMessage(bytes.subarray(0, length))
        if (message._tag === "AppendResponse" && length === APPEND_RESPONSE_FIXED_BYTES) {
          expect(Result.getOrThrow(result)).toEqual({ ...message, pageserverFeedback: undefined })
        } else {
          expect(Result.isFailure(result) && result.failure._tag).toBe("MalformedMessage")
        }
      }
    }), { numRuns: 100 })
  })

  test("random bytes never throw, in either direction", () => {
    const tagged = fc.tuple(fc.constantFrom(0x67, 0x76, 0x65, 0x61, 0x00, 0x7a), fc.uint8Array({ maxLength: 120 }))
      .map(([tag, rest]) => new Uint8Array([tag, ...rest]))
    fc.assert(fc.property(fc.oneof(fc.uint8Array({ maxLength: 120 }), tagged), (bytes) => {
      const results: ReadonlyArray<Result.Result<unknown, MalformedMessage>> = [decodeProposerMessage(bytes), decodeAcceptorMessage(bytes)]
      for (const result of results) {
        if (Result.isFailure(result)) expect(result.failure._tag).toBe("MalformedMessage")
      }
    }), { numRuns: 2000 })
  })

  test("a bit flip gives a typed error or a message that re-encodes to itself", () => {
    fc.assert(fc.property(arbProposerMessage, fc.nat(), (message, bit) => {
      const result = decodeProposerMessage(flipBit(encodeProposerMessage(message), bit))
      if (Result.isSuccess(result)) {
        expect(Result.getOrThrow(decodeProposerMessage(encodeProposerMessage(result.success)))).toEqual(result.success)
      } else {
        expect(result.failure._tag).toBe("MalformedMessage")
      }
    }), { numRuns: 1000 })
    fc.assert(fc.property(arbAcceptorMessage, fc.nat(), (message, bit) => {
      const result = decodeAcceptorMessage(flipBit(encodeAcceptorMessage(message), bit))
      if (Result.isSuccess(result)) {
        expect(Result.getOrThrow(decodeAcceptorMessage(encodeAcceptorMessage(result.success)))).toEqual(result.success)
      } else {
        expect(result.failure._tag).toBe("MalformedMessage")
      }
    }), { numRuns: 1000 })
  })
})

describe("refusals", () => {
  const reasonOf = (result: Result.Result<unknown, { readonly reason: string; readonly tag: string }>) =>
    Result.isFailure(result) ? `${result.failure.tag}: ${result.failure.reason}` : "decoded"

  /** The greeting fixture with its pg_version (at a fixed offset from the end) replaced. */
  const greetingWithPgVersion = (pgVersion: number) => {
    const bytes = FIXTURES[0]!.bytes.slice()
    new DataView(bytes.buffer).setUint32(bytes.byteLength - 16, pgVersion, false)
    return bytes
  }

  test("pg_version outside 140000..179999", () => {
    for (const pgVersion of [0, 139999, 180000, 0xffffffff]) {
      expect(reasonOf(decodeProposerMessage(greetingWithPgVersion(pgVersion)))).toBe(`g: pg_version ${pgVersion} outside 140000..179999`)
    }
    expect(reasonOf(decodeProposerMessage(greetingWithPgVersion(140000)))).toBe("decoded")
    expect(reasonOf(decodeProposerMessage(greetingWithPgVersion(179999)))).toBe("decoded")
  })

  test("wal_seg_size that is not a segment size", () => {
    const bytes = FIXTURES[0]!.bytes.slice()
    new DataView(bytes.buffer).setUint32(bytes.byteLength - 4, 12345, false)
    expect(reasonOf(decodeProposerMessage(bytes))).toMatch(/wal_seg_size 12345/)
  })

  test("tenant id that is not 32 hex digits; upper case is accepted and made lower case", () => {
    const bad = hex("67", cstr("zz0480929707ee75372337efaa5ecf96"))
    expect(reasonOf(decodeProposerMessage(bad))).toMatch(/tenant_id "zz04.*" is not 32 hex digits/)
    const long = hex("67", cstr(TENANT + "00"))
    expect(reasonOf(decodeProposerMessage(long))).toMatch(/tenant_id: string longer than 32 bytes/)
    const upper = Buffer.from(FIXTURES[0]!.bytes)
    upper.write(TENANT.toUpperCase(), 1, "latin1")
    const decoded = Result.getOrThrow(decodeProposerMessage(upper))
    expect(decoded._tag === "ProposerGreeting" && decoded.tenantId).toBe(TENANT)
  })

  test("terms and LSNs above 2^53-1", () => {
    expect(reasonOf(decodeProposerMessage(hex("76", "00000001", "0020000000000000")))).toBe("v: term 9007199254740992 above 2^53-1")
    const elected = hex("65", "00000001", "0000000000000001", "ffffffffffffffff", "00000000")
    expect(reasonOf(decodeProposerMessage(elected))).toMatch(/^e: start_streaming_at 18446744073709551615 above 2\^53-1$/)
    const response = new ByteWriter().u8(0x61).u32BE(1).u64BE(1).u64BE(2n ** 60n).finish()
    expect(reasonOf(decodeAcceptorMessage(response))).toMatch(/^a: flush_lsn .* above 2\^53-1$/)
  })

  test("node ids above 2^53-1", () => {
    const greeting = hex("67", "0020000000000000")
    expect(reasonOf(decodeAcceptorMessage(greeting))).toMatch(/^g: node_id .* above 2\^53-1$/)
  })

  test("AppendRequest with end < begin, over MAX_SEND_SIZE, or short of its WAL", () => {
    const header = (begin: number, end: number) => encodeHeaderUnchecked(begin, end)
    expect(reasonOf(decodeProposerMessage(header(100, 99)))).toBe("a: end_lsn 99 below begin_lsn 100")
    expect(reasonOf(decodeProposerMessage(header(0, MAX_SEND_SIZE_BYTES + 1)))).toMatch(/more than MAX_SEND_SIZE_BYTES/)
    expect(reasonOf(decodeProposerMessage(new Uint8Array([...header(0, 4), 1, 2, 3])))).toMatch(/^a: truncated reading WAL data/)
  })

  test("trailing bytes: ignored after a proposer message, refused after an acceptor message", () => {
    const append = new Uint8Array([...FIXTURES[3]!.bytes, 0xaa, 0xbb])
    expect(Result.getOrThrow(decodeProposerMessage(append))).toEqual(FIXTURES[3]!.message)
    const vote = new Uint8Array([...FIXTURES[5]!.bytes, 0xaa])
    expect(reasonOf(decodeAcceptorMessage(vote))).toBe("v: 1 trailing bytes")
  })

  test("unknown tags and empty messages", () => {
    expect(reasonOf(decodeProposerMessage(hex("7a")))).toBe("z: unknown proposer message tag 0x7a")
    expect(reasonOf(decodeAcceptorMessage(hex("65")))).toBe("e: unknown acceptor message tag 0x65")
    expect(reasonOf(decodeProposerMessage(new Uint8Array(0)))).toBe(": empty message: missing tag")
    expect(reasonOf(decodeAcceptorMessage(hex("00")))).toBe("0x00: unknown acceptor message tag 0x00")
  })

  test("member configuration rules", () => {
    const greeting = (...mconf: string[]) => hex("67", "0000000000000001", ...mconf, "0000000000000001")
    expect(reasonOf(decodeAcceptorMessage(greeting("00000001", "00000000", "00000000")))).toBe("g: generation 1 with no members")
    expect(reasonOf(decodeAcceptorMessage(greeting("00000000", "00000000", "00000000")))).toBe("decoded")
    const duplicate = greeting("00000001", "00000002", "0000000000000007", cstr("a"), "0001", "0000000000000007", cstr("b"), "0002", "00000000")
    expect(reasonOf(decodeAcceptorMessage(duplicate))).toBe("g: members: duplicate node id 7")
    const duplicateNew = greeting("00000001", "00000001", "0000000000000007", cstr("a"), "0001",
      "00000002", "0000000000000008", cstr("a"), "0001", "0000000000000008", cstr("b"), "0002")
    expect(reasonOf(decodeAcceptorMessage(duplicateNew))).toBe("g: new_members: duplicate node id 8")
    // The same id in members and new_members is how a joint configuration keeps a node.
    const overlap = greeting("00000001", "00000001", "0000000000000007", cstr("a"), "0001", "00000001", "0000000000000007", cstr("a"), "0001")
    expect(reasonOf(decodeAcceptorMessage(overlap))).toBe("decoded")
    const unterminated = hex("67", "0000000000000001", "00000001", "00000001", "0000000000000007", "616161")
    expect(reasonOf(decodeAcceptorMessage(unterminated))).toMatch(/^g: members\[0\] host: string not terminated$/)
  })

  test("absurd counts are refused before any allocation", () => {
    expect(reasonOf(decodeAcceptorMessage(hex("67", "0000000000000001", "00000001", "ffffffff")))).toBe("g: members count 4294967295 above the maximum 32")
    expect(reasonOf(decodeProposerMessage(hex("65", "00000001", "0000000000000001", "0000000000000000", "ffffffff"))))
      .toBe("e: term history length 4294967295 above the maximum 1048576")
    expect(reasonOf(decodeProposerMessage(hex("65", "00000001", "0000000000000001", "0000000000000000", "00001000"))))
      .toMatch(/^e: term history length 4096 needs at least 65536 bytes, 0 left$/)
  })

  test("vote_given other than 0 or 1", () => {
    const bytes = FIXTURES[5]!.bytes.slice()
    bytes[13] = 2
    expect(reasonOf(decodeAcceptorMessage(bytes))).toBe("v: vote_given is 2, not 0 or 1")
  })
})

describe("encoder preconditions", () => {
  test("refuses messages it could not decode back", () => {
    const greeting = FIXTURES[0]!.message as ProposerMessage & { _tag: "ProposerGreeting" }
    expect(() => encodeProposerMessage({ ...greeting, pgVersion: 130000 })).toThrow(InvariantViolation)
    expect(() => encodeProposerMessage({ ...greeting, tenantId: TenantId("CF0480929707EE75372337EFAA5ECF96") })).toThrow(InvariantViolation)
    expect(() => encodeProposerMessage({ ...greeting, mconf: { ...greeting.mconf, members: [] } })).toThrow(InvariantViolation)
    expect(() => encodeProposerMessage({ _tag: "VoteRequest", generation: Generation(1), term: Term(U53_MAX + 1) })).toThrow(InvariantViolation)
    const append = FIXTURES[3]!.message as AppendRequest
    expect(() => encodeProposerMessage({ ...append, endLsn: Lsn(append.endLsn + 1) })).toThrow(InvariantViolation)
  })
})

/** An AppendRequest header with any begin/end, bypassing the encoder's checks. */
function encodeHeaderUnchecked(begin: number, end: number): Uint8Array {
  return new ByteWriter().u8(0x61).u32BE(1).u64BE(1).u64BE(begin).u64BE(end).u64BE(0).u64BE(0).finish()
}
