// Goal: the safekeeper's Postgres-protocol front end serves stock-client sequences and the
// consensus push, and refuses bad input without harming other connections or durable state.
// Method: a real safekeeper program (core/server) on a simulated node and disk, driven by a raw
// client that can send anything; each test checks replies, then that the server still serves a
// good client and that nothing was written where nothing should be.
import { Effect, Exit } from "effect"
import * as fc from "fast-check"
import { describe, expect, test } from "vitest"
import { concatBytes } from "../bytes.js"
import { Generation, TenantId, Term, TimelineId } from "../acceptor/state.js"
import { Disk } from "../io/disk.js"
import {
  type AcceptorMessage,
  decodeAcceptorMessage,
  EMPTY_HOT_STANDBY_FEEDBACK,
  encodeProposerMessage,
  MAX_SEND_SIZE_BYTES,
  type ProposerMessage
} from "../protocol/consensus.js"
import { encodeCopyDone, encodeSslRequest, encodeStartupMessage, encodeTerminate } from "../protocol/pg-wire.js"
import { decodeWalSenderMessage, encodeHotStandbyFeedback, encodeNeonFeedback, encodeStandbyStatusUpdate } from "../protocol/replication.js"
import { EMPTY_PAGESERVER_FEEDBACK } from "../protocol/pageserver-feedback.js"
import { WalGenerator } from "../wal/generator.js"
import { formatLsn, Lsn, XLOG_BLCKSZ_BYTES } from "../wal/lsn.js"
import { messageFor, TEST_SYSTEM_ID } from "../wal/wal-testing.js"
import { runTestWorld } from "../../sim/world-testing.js"
import { chunkEndOf } from "./send-wal.js"
import { errorOf, RawClient, rowsOf, safekeeperNode, TEST_TENANT, TEST_TIMELINE, timelineOptions } from "./server-testing.js"
import { Result } from "effect"

const SK = "sk1:5454"
const SEGMENT_BYTES = 16 * 1024 * 1024
const START = Lsn(SEGMENT_BYTES + 40)
const PG_VERSION_NUM = 150004

function run<A, E>(client: Effect.Effect<A, E, Disk | import("../io/net.js").Net | import("../io/log.js").Log>, seed = 1) {
  const { exit, world } = runTestWorld({ seed, servers: { sk1: safekeeperNode(1) }, client })
  if (exit === undefined) throw new Error("client did not finish")
  if (Exit.isFailure(exit)) throw new Error(`client failed: ${String(exit.cause)}`)
  return { value: exit.value, world }
}

const greeting = (): ProposerMessage => ({
  _tag: "ProposerGreeting",
  tenantId: TenantId(TEST_TENANT),
  timelineId: TimelineId(TEST_TIMELINE),
  mconf: { generation: Generation(0), members: [], newMembers: undefined },
  pgVersion: PG_VERSION_NUM,
  systemId: TEST_SYSTEM_ID,
  walSegSizeBytes: SEGMENT_BYTES
})

/** Reads CopyData frames until one decodes to an acceptor message. */
const nextReply = (client: RawClient) =>
  Effect.gen(function* () {
    const message = yield* client.next
    if (message?._tag !== "CopyData") return yield* Effect.fail(new Error(`expected CopyData, got ${JSON.stringify(message)}`))
    const decoded = decodeAcceptorMessage(message.data)
    if (Result.isFailure(decoded)) return yield* Effect.fail(new Error(decoded.failure.message))
    return decoded.success as AcceptorMessage
  })

/** Greeting, vote, elected and appends of real WAL on one push connection. */
const electAndAppend = (client: RawClient, generator: WalGenerator, records: number) =>
  Effect.gen(function* () {
    yield* client.write(encodeQueryText("START_WAL_PUSH (proto_version '3', allow_timeline_creation 'true')"))
    const copyBoth = yield* client.next
    if (copyBoth?._tag !== "CopyBothResponse") return yield* Effect.fail(new Error(`no CopyBoth: ${JSON.stringify(copyBoth)}`))
    yield* client.copyData(encodeProposerMessage(greeting()))
    const hello = yield* nextReply(client)
    if (hello._tag !== "AcceptorGreeting") return yield* Effect.fail(new Error("no greeting"))
    const term = Term(hello.term + 1)
    yield* client.copyData(encodeProposerMessage({ _tag: "VoteRequest", generation: Generation(0), term }))
    const vote = yield* nextReply(client)
    if (vote._tag !== "VoteResponse" || !vote.voteGiven) return yield* Effect.fail(new Error("no vote"))
    yield* client.copyData(encodeProposerMessage({
      _tag: "ProposerElected",
      generation: Generation(0),
      term,
      startStreamingAt: START,
      termHistory: [{ term, lsn: START }]
    }))
    const pieces: Uint8Array[] = []
    for (let i = 0; i < records; i++) pieces.push(generator.appendLogicalMessage("t", messageFor(i, 3000 + i * 17)).bytes)
    const wal = concatBytes(pieces)
    let flushLsn = 0
    for (let offset = 0; offset < wal.byteLength; offset += 100_000) {
      const chunk = wal.subarray(offset, Math.min(wal.byteLength, offset + 100_000))
      yield* client.copyData(encodeProposerMessage({
        _tag: "AppendRequest",
        generation: Generation(0),
        term,
        beginLsn: Lsn(START + offset),
        endLsn: Lsn(START + offset + chunk.byteLength),
        commitLsn: Lsn(flushLsn),
        truncateLsn: Lsn(0),
        walData: chunk
      }))
    }
    const end = START + wal.byteLength
    while (flushLsn < end) {
      const reply = yield* nextReply(client)
      if (reply._tag === "AppendResponse") flushLsn = reply.flushLsn
    }
    // An empty append carries the commit (the quorum is this one safekeeper).
    yield* client.copyData(encodeProposerMessage({
      _tag: "AppendRequest", generation: Generation(0), term, beginLsn: Lsn(end), endLsn: Lsn(end), commitLsn: Lsn(end), truncateLsn: Lsn(0), walData: new Uint8Array(0)
    }))
    return { wal, end, term }
  })

describe("startup", () => {
  test("SSLRequest is refused with N, then the startup completes with server_version and integer_datetimes", () => {
    const { value } = run(Effect.gen(function* () {
      const client = yield* RawClient.connect(SK)
      yield* client.write(encodeSslRequest())
      const refusal = yield* client.connection.read
      yield* client.write(encodeStartupMessage([["user", "repl"], ["database", "replication"], ["replication", "true"], ["application_name", "pg_receivewal"]]))
      const messages = yield* client.readUntil((m) => m._tag === "ReadyForQuery")
      return { refusal: Array.from(refusal ?? []), messages }
    }))
    expect(value.refusal).toEqual([0x4e])
    expect(value.messages[0]?._tag).toBe("AuthenticationOk")
    const parameters = new Map(value.messages.flatMap((m) => (m._tag === "ParameterStatus" ? [[m.name, m.value] as const] : [])))
    expect(parameters.get("integer_datetimes")).toBe("on")
    expect(parameters.get("server_version")).toMatch(/^15\./)
    expect(value.messages[value.messages.length - 1]).toEqual({ _tag: "ReadyForQuery", status: "I" })
  })

  test("a malformed tenant id is refused with FATAL and the connection closes; the server still serves", () => {
    const { value } = run(Effect.gen(function* () {
      const bad = yield* RawClient.connect(SK)
      yield* bad.write(encodeStartupMessage([["user", "x"], ["options", "-c tenant_id=zz timeline_id=00"]]))
      const refused = yield* bad.readUntil(() => false)
      const good = yield* RawClient.session(SK)
      const show = yield* good.query("SHOW wal_segment_size")
      return { refused, show }
    }))
    expect(errorOf(value.refused)).toMatchObject({ severity: "FATAL", code: "22023" })
    expect(rowsOf(value.show)).toEqual([["16MB"]])
  })

  test("an oversized startup length is refused from its header alone", () => {
    const { value } = run(Effect.gen(function* () {
      const bad = yield* RawClient.connect(SK)
      yield* bad.write(Uint8Array.of(0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0))
      const refused = yield* bad.readUntil(() => false)
      const good = yield* RawClient.session(SK)
      return { refused, show: yield* good.query("SHOW data_directory_mode") }
    }))
    expect(errorOf(value.refused)?.severity).toBe("FATAL")
    expect(rowsOf(value.show)).toEqual([["0700"]])
  })
})

describe("commands", () => {
  test("an unknown command is an ErrorResponse and the connection stays usable", () => {
    const { value } = run(Effect.gen(function* () {
      const client = yield* RawClient.session(SK)
      const bad = yield* client.query("DROP TABLE everything")
      const good = yield* client.query("SHOW wal_segment_size")
      return { bad, good }
    }))
    expect(errorOf(value.bad)?.severity).toBe("ERROR")
    expect(value.bad[value.bad.length - 1]?._tag).toBe("ReadyForQuery")
    expect(rowsOf(value.good)).toEqual([["16MB"]])
  })

  test("IDENTIFY_SYSTEM of an unknown timeline is an error; TIMELINE_STATUS has no row", () => {
    const { value } = run(Effect.gen(function* () {
      const client = yield* RawClient.session(SK, timelineOptions())
      return { identify: yield* client.query("IDENTIFY_SYSTEM"), status: yield* client.query("TIMELINE_STATUS") }
    }))
    expect(errorOf(value.identify)?.code).toBe("58P01")
    expect(rowsOf(value.status)).toEqual([])
  })

  test("a push to an unknown timeline without creation is refused and creates nothing", () => {
    const { value, world } = run(Effect.gen(function* () {
      const client = yield* RawClient.session(SK, timelineOptions())
      yield* client.write(encodeQueryText("START_WAL_PUSH (proto_version '3', allow_timeline_creation 'false')"))
      const copyBoth = yield* client.next
      yield* client.copyData(encodeProposerMessage(greeting()))
      const rest = yield* client.readUntil(() => false)
      return { copyBoth, rest }
    }))
    expect(value.copyBoth?._tag).toBe("CopyBothResponse")
    expect(errorOf(value.rest)?.message).toMatch(/does not exist and creation is not allowed/)
    expect(world.disk("sk1").listNow("/data")).not.toContain(TEST_TENANT)
  })
})

describe("push and stream", () => {
  test("WAL pushed and committed streams back byte for byte from START_REPLICATION; bad starts are refused", () => {
    const { value } = run(Effect.gen(function* () {
      const generator = new WalGenerator({ startLsn: START, segmentSizeBytes: SEGMENT_BYTES, systemId: TEST_SYSTEM_ID, pgVersion: 15, timelineId: 1 })
      const pusher = yield* RawClient.session(SK, timelineOptions())
      const { wal, end } = yield* electAndAppend(pusher, generator, 80)
      const reader = yield* RawClient.session(SK, { ...timelineOptions(), application_name: "pg_receivewal" })
      // Wait until the commit is visible.
      let identify = rowsOf(yield* reader.query("IDENTIFY_SYSTEM"))
      for (let i = 0; i < 100 && identify[0]?.[2] !== formatLsn(end); i++) identify = rowsOf(yield* reader.query("IDENTIFY_SYSTEM"))
      const ahead = yield* reader.query(`START_REPLICATION ${formatLsn(end + 8192)} TIMELINE 1`)
      const before = yield* reader.query("START_REPLICATION 0/0 TIMELINE 1")
      yield* reader.write(encodeQueryText(`START_REPLICATION ${formatLsn(START)} TIMELINE 1`))
      const copyBoth = yield* reader.next
      const received: Uint8Array[] = []
      let position = START as number
      let firstStart: number | undefined
      while (position < end) {
        const message = yield* reader.next
        if (message?._tag !== "CopyData") return yield* Effect.fail(new Error(`stream: ${JSON.stringify(message)}`))
        const decoded = decodeWalSenderMessage(message.data)
        if (Result.isFailure(decoded)) return yield* Effect.fail(new Error(decoded.failure.message))
        if (decoded.success._tag !== "XLogData") continue
        firstStart ??= decoded.success.dataStartLsn
        if (decoded.success.dataStartLsn !== position) return yield* Effect.fail(new Error(`gap at ${position}`))
        received.push(decoded.success.data.slice())
        position += decoded.success.data.byteLength
      }
      yield* reader.copyData(encodeStandbyStatusUpdate({ writeLsn: Lsn(end), flushLsn: Lsn(end), applyLsn: Lsn(0), sendTimeUs: 0, replyRequested: false }))
      yield* reader.write(encodeCopyDone())
      const closing = yield* reader.readUntil((m) => m._tag === "ReadyForQuery")
      const after = yield* reader.query("TIMELINE_STATUS")
      yield* reader.write(encodeTerminate())
      return { wal, end, identify, ahead, before, copyBoth, streamed: concatBytes(received), firstStart, closing, after }
    }))
    expect(value.identify[0]?.[0]).toBe(TEST_SYSTEM_ID.toString())
    expect(value.identify[0]?.[1]).toBe("1")
    expect(errorOf(value.ahead)?.message).toMatch(/ahead of the WAL/)
    expect(errorOf(value.before)?.code).toBe("58P01")
    expect(value.copyBoth?._tag).toBe("CopyBothResponse")
    expect(value.firstStart).toBe(START)
    expect(Buffer.from(value.streamed).equals(Buffer.from(value.wal))).toBe(true)
    expect(value.closing.map((m) => m._tag)).toEqual(["CopyDone", "CommandComplete", "CommandComplete", "ReadyForQuery"])
    expect(rowsOf(value.after)).toEqual([[formatLsn(value.end), formatLsn(value.end)]])
  })

  test("garbage after CopyBoth ends the push with an error; what was flushed stays", () => {
    const { value } = run(Effect.gen(function* () {
      const generator = new WalGenerator({ startLsn: START, segmentSizeBytes: SEGMENT_BYTES, systemId: TEST_SYSTEM_ID, pgVersion: 15, timelineId: 1 })
      const pusher = yield* RawClient.session(SK, timelineOptions())
      const { end } = yield* electAndAppend(pusher, generator, 10)
      yield* pusher.copyData(Uint8Array.of(0x71, 1, 2, 3))
      const rest = yield* pusher.readUntil(() => false)
      const other = yield* RawClient.session(SK, timelineOptions())
      return { end, rest, status: rowsOf(yield* other.query("TIMELINE_STATUS")) }
    }))
    expect(errorOf(value.rest)?.code).toBe("08P01")
    expect(value.status[0]?.[0]).toBe(formatLsn(value.end))
  })

  test("a stale-term append gets a reply carrying our term and changes nothing", () => {
    const { value } = run(Effect.gen(function* () {
      const generator = new WalGenerator({ startLsn: START, segmentSizeBytes: SEGMENT_BYTES, systemId: TEST_SYSTEM_ID, pgVersion: 15, timelineId: 1 })
      const pusher = yield* RawClient.session(SK, timelineOptions())
      const { end, term } = yield* electAndAppend(pusher, generator, 5)
      const stale = yield* RawClient.session(SK, timelineOptions())
      yield* stale.write(encodeQueryText("START_WAL_PUSH (proto_version '3')"))
      yield* stale.next
      yield* stale.copyData(encodeProposerMessage(greeting()))
      yield* nextReply(stale)
      yield* stale.copyData(encodeProposerMessage({
        _tag: "AppendRequest", generation: Generation(0), term: Term(term - 1), beginLsn: Lsn(end), endLsn: Lsn(end + 8), commitLsn: Lsn(0), truncateLsn: Lsn(0), walData: new Uint8Array(8)
      }))
      const reply = yield* nextReply(stale)
      const status = rowsOf(yield* (yield* RawClient.session(SK, timelineOptions())).query("TIMELINE_STATUS"))
      return { reply, term, end, status }
    }))
    expect(value.reply).toEqual({
      _tag: "AppendResponse", generation: 0, term: value.term, flushLsn: 0, commitLsn: 0, hsFeedback: EMPTY_HOT_STANDBY_FEEDBACK, pageserverFeedback: undefined
    })
    expect(value.status[0]?.[0]).toBe(formatLsn(value.end))
  })
})

describe("bad greetings", () => {
  test("a bad pg_version or another system id ends the push with an error and changes nothing", () => {
    const { value } = run(Effect.gen(function* () {
      const generator = new WalGenerator({ startLsn: START, segmentSizeBytes: SEGMENT_BYTES, systemId: TEST_SYSTEM_ID, pgVersion: 15, timelineId: 1 })
      const pusher = yield* RawClient.session(SK, timelineOptions())
      const { end, term } = yield* electAndAppend(pusher, generator, 3)
      const refusals: Array<ReturnType<typeof errorOf>> = []
      // PostgreSQL 9.0 cannot even be encoded: patch its pg_version into a valid greeting (after
      // the tag, two 33-byte ids and an empty 12-byte configuration).
      const ancient = encodeProposerMessage(greeting())
      new DataView(ancient.buffer, ancient.byteOffset).setUint32(1 + 33 + 33 + 12, 90000)
      for (const bad of [ancient, encodeProposerMessage({ ...greeting(), pgVersion: 160002 } as ProposerMessage), encodeProposerMessage({ ...greeting(), systemId: 42n } as ProposerMessage)]) {
        const client = yield* RawClient.session(SK, timelineOptions())
        yield* client.write(encodeQueryText("START_WAL_PUSH (proto_version '3', allow_timeline_creation 'true')"))
        yield* client.next
        yield* client.copyData(bad)
        refusals.push(errorOf(yield* client.readUntil(() => false)))
      }
      const status = rowsOf(yield* (yield* RawClient.session(SK, timelineOptions())).query("TIMELINE_STATUS"))
      const identify = rowsOf(yield* (yield* RawClient.session(SK, timelineOptions())).query("IDENTIFY_SYSTEM"))
      return { refusals, status, identify, end, term }
    }))
    expect(value.refusals.map((r) => r?.message)).toEqual([
      expect.stringMatching(/pg_version|malformed/i),
      expect.stringMatching(/IncompatiblePgVersion/),
      expect.stringMatching(/SystemIdMismatch/)
    ])
    expect(value.status[0]?.[0]).toBe(formatLsn(value.end))
    expect(value.identify[0]?.[0]).toBe(TEST_SYSTEM_ID.toString())
  })

  test("startup options naming only one of tenant_id and timeline_id are refused", () => {
    const { value } = run(Effect.gen(function* () {
      const bad = yield* RawClient.connect(SK)
      yield* bad.write(encodeStartupMessage([["user", "x"], ["options", `-c tenant_id=${TEST_TENANT}`]]))
      return yield* bad.readUntil(() => false)
    }))
    expect(errorOf(value)).toMatchObject({ severity: "FATAL", code: "08P01" })
  })
})

describe("feedback", () => {
  test("standby feedback reaches AppendResponses, pageserver feedback is re-sent with the last one, idle streams get keepalives", () => {
    const { value } = run(Effect.gen(function* () {
      const generator = new WalGenerator({ startLsn: START, segmentSizeBytes: SEGMENT_BYTES, systemId: TEST_SYSTEM_ID, pgVersion: 15, timelineId: 1 })
      const pusher = yield* RawClient.session(SK, timelineOptions())
      const { end, term } = yield* electAndAppend(pusher, generator, 4)
      const standby = yield* RawClient.session(SK, { ...timelineOptions(), application_name: "standby1" })
      yield* standby.write(encodeQueryText(`START_REPLICATION ${formatLsn(START)} TIMELINE 1`))
      yield* standby.next
      // Idle once caught up: a keepalive asking for a reply comes within about a second.
      let keepalive: boolean | undefined
      for (let i = 0; i < 50 && keepalive === undefined; i++) {
        const message = yield* standby.next
        if (message?._tag !== "CopyData") break
        const decoded = decodeWalSenderMessage(message.data)
        if (Result.isSuccess(decoded) && decoded.success._tag === "PrimaryKeepalive") keepalive = decoded.success.replyRequested
      }
      yield* standby.copyData(encodeHotStandbyFeedback({ sendTimeUs: 777, xmin: 756n, catalogXmin: 0n }))
      // One more append: its reply carries the standby's xmin.
      const more = generator.appendLogicalMessage("t", messageFor(99, 500)).bytes
      yield* pusher.copyData(encodeProposerMessage({
        _tag: "AppendRequest", generation: Generation(0), term, beginLsn: Lsn(end), endLsn: Lsn(end + more.byteLength), commitLsn: Lsn(end), truncateLsn: Lsn(0), walData: more
      }))
      let withXmin: AcceptorMessage | undefined
      for (let i = 0; i < 20 && withXmin === undefined; i++) {
        const reply = yield* nextReply(pusher)
        if (reply._tag === "AppendResponse" && reply.flushLsn === end + more.byteLength) withXmin = reply
      }
      const pageserver = yield* RawClient.session(SK, { ...timelineOptions(), application_name: "pageserver" })
      yield* pageserver.write(encodeQueryText(`START_REPLICATION ${formatLsn(START)} TIMELINE 1`))
      yield* pageserver.next
      yield* pageserver.copyData(encodeNeonFeedback({ ...EMPTY_PAGESERVER_FEEDBACK, lastReceivedLsn: Lsn(end), remoteConsistentLsn: Lsn(end) }))
      let withFeedback: AcceptorMessage | undefined
      for (let i = 0; i < 20 && withFeedback === undefined; i++) {
        const reply = yield* nextReply(pusher)
        if (reply._tag === "AppendResponse" && reply.pageserverFeedback !== undefined) withFeedback = reply
      }
      return { keepalive, withXmin, withFeedback, end }
    }))
    expect(value.keepalive).toBe(true)
    expect(value.withXmin?._tag === "AppendResponse" && value.withXmin.hsFeedback).toEqual({ tsUs: 777, xmin: 756n, catalogXmin: 0n })
    expect(value.withFeedback?._tag === "AppendResponse" && value.withFeedback.pageserverFeedback?.remoteConsistentLsn).toBe(value.end)
  })
})

describe("pageserver", () => {
  test("an idle pageserver stream that has everything ends once no compute pushes", () => {
    const { value } = run(Effect.gen(function* () {
      const generator = new WalGenerator({ startLsn: START, segmentSizeBytes: SEGMENT_BYTES, systemId: TEST_SYSTEM_ID, pgVersion: 15, timelineId: 1 })
      const pusher = yield* RawClient.session(SK, timelineOptions())
      const { end } = yield* electAndAppend(pusher, generator, 3)
      const pageserver = yield* RawClient.session(SK, { ...timelineOptions(), application_name: "pageserver" })
      // Wait for the commit to be visible, then stream and report it all consistent remotely.
      for (let i = 0; i < 100 && rowsOf(yield* pageserver.query("TIMELINE_STATUS"))[0]?.[1] !== formatLsn(end); i++) yield* Effect.void
      yield* pageserver.write(encodeQueryText(`START_REPLICATION ${formatLsn(START)} TIMELINE 1`))
      yield* pageserver.next
      yield* pageserver.copyData(encodeNeonFeedback({ ...EMPTY_PAGESERVER_FEEDBACK, lastReceivedLsn: Lsn(end), remoteConsistentLsn: Lsn(end) }))
      yield* pusher.close
      return errorOf(yield* pageserver.readUntil((m) => m._tag === "ErrorResponse"))
    }))
    expect(value?.message).toMatch(/ending streaming/)
  })
})

describe("send chunks", () => {
  /** XLogData frames from `client` until `until`, checked against the chunking rules as they come. */
  const streamUntil = (client: RawClient, from: number, until: number) =>
    Effect.gen(function* () {
      const received: Uint8Array[] = []
      const broken: string[] = []
      let position = from
      // One pass per message: bounded by the WAL to come and the keepalives on the way.
      for (let i = 0; position < until && i < 100_000; i++) {
        const message = yield* client.next
        if (message?._tag !== "CopyData") return yield* Effect.fail(new Error(`stream: ${JSON.stringify(message)}`))
        const decoded = decodeWalSenderMessage(message.data)
        if (Result.isFailure(decoded)) return yield* Effect.fail(new Error(decoded.failure.message))
        if (decoded.success._tag !== "XLogData") continue
        const { dataStartLsn, walEndLsn, data } = decoded.success
        const dataEnd = dataStartLsn + data.byteLength
        if (dataStartLsn !== position) broken.push(`gap at ${formatLsn(position)}`)
        if (data.byteLength === 0 || data.byteLength > MAX_SEND_SIZE_BYTES) broken.push(`${data.byteLength} bytes at ${formatLsn(dataStartLsn)}`)
        if (dataEnd > walEndLsn) broken.push(`past walEnd at ${formatLsn(dataStartLsn)}`)
        if (dataEnd !== walEndLsn && dataEnd % XLOG_BLCKSZ_BYTES !== 0) broken.push(`not whole pages at ${formatLsn(dataStartLsn)}`)
        if (Math.floor(dataStartLsn / SEGMENT_BYTES) !== Math.floor((dataEnd - 1) / SEGMENT_BYTES)) broken.push(`across a segment at ${formatLsn(dataStartLsn)}`)
        received.push(data.slice())
        position = dataEnd
      }
      return { streamed: concatBytes(received), broken }
    })

  test("chunk ends: at most 128 KiB, whole pages unless at the end, never across a segment, as long as possible", () => {
    fc.assert(fc.property(
      fc.constantFrom(1024 * 1024, SEGMENT_BYTES),
      fc.integer({ min: 0, max: 2 ** 40 }),
      fc.integer({ min: 1, max: 3 * MAX_SEND_SIZE_BYTES }),
      (segmentBytes, position, lengthBytes) => {
        const end = position + lengthBytes
        const chunkEnd = chunkEndOf(position, end, segmentBytes)
        const segmentEnd = (Math.floor(position / segmentBytes) + 1) * segmentBytes
        expect(chunkEnd).toBeGreaterThan(position)
        expect(chunkEnd).toBeLessThanOrEqual(Math.min(end, segmentEnd, position + MAX_SEND_SIZE_BYTES))
        // Shorter than the cap only at the end or a segment end; else cut at the last page end.
        if (chunkEnd !== end && chunkEnd !== segmentEnd) {
          expect(chunkEnd % XLOG_BLCKSZ_BYTES).toBe(0)
          expect(chunkEnd + XLOG_BLCKSZ_BYTES).toBeGreaterThan(position + MAX_SEND_SIZE_BYTES)
        }
      }
    ), { numRuns: 500 })
  })

  test("a committed stream across a segment end, read ahead of the writes, keeps the chunking rules and every byte", () => {
    const { value } = run(Effect.gen(function* () {
      const generator = new WalGenerator({ startLsn: START, segmentSizeBytes: SEGMENT_BYTES, systemId: TEST_SYSTEM_ID, pgVersion: 15, timelineId: 1 })
      const pusher = yield* RawClient.session(SK, timelineOptions())
      // About 23 MB of WAL: through the rest of segment 1 into segment 2.
      const { wal, end } = yield* electAndAppend(pusher, generator, 1500)
      const reader = yield* RawClient.session(SK, { ...timelineOptions(), application_name: "pg_receivewal" })
      for (let i = 0; i < 100 && rowsOf(yield* reader.query("IDENTIFY_SYSTEM"))[0]?.[2] !== formatLsn(end); i++) yield* Effect.void
      // Start off a page boundary: the first chunk ends at a page end, the rest are whole pages.
      const from = START + 1000
      yield* reader.write(encodeQueryText(`START_REPLICATION ${formatLsn(from)} TIMELINE 1`))
      const copyBoth = yield* reader.next
      const { streamed, broken } = yield* streamUntil(reader, from, end)
      yield* reader.write(encodeCopyDone())
      const closing = yield* reader.readUntil((m) => m._tag === "ReadyForQuery")
      return { wal, end, copyBoth, streamed, broken, closing }
    }))
    expect(value.end).toBeGreaterThan(2 * SEGMENT_BYTES + MAX_SEND_SIZE_BYTES)
    expect(value.copyBoth?._tag).toBe("CopyBothResponse")
    expect(value.broken).toEqual([])
    expect(Buffer.from(value.streamed).equals(Buffer.from(value.wal.subarray(1000)))).toBe(true)
    expect(value.closing.map((m) => m._tag)).toEqual(["CopyDone", "CommandComplete", "CommandComplete", "ReadyForQuery"])
  })

  test("term mode streams flushed WAL while it arrives, by the same rules, and ends when the term moves", () => {
    const { value } = run(Effect.gen(function* () {
      const generator = new WalGenerator({ startLsn: START, segmentSizeBytes: SEGMENT_BYTES, systemId: TEST_SYSTEM_ID, pgVersion: 15, timelineId: 1 })
      const pusher = yield* RawClient.session(SK, timelineOptions())
      const { wal, end, term } = yield* electAndAppend(pusher, generator, 20)
      const peer = yield* RawClient.session(SK, { ...timelineOptions(), application_name: "peer" })
      yield* peer.write(encodeQueryText(`START_REPLICATION PHYSICAL ${formatLsn(START)} (term='${term}')`))
      const copyBoth = yield* peer.next
      const parts: Uint8Array[] = []
      const broken: string[] = []
      let position = START as number
      let appendedEnd = end
      const first = yield* streamUntil(peer, position, end)
      parts.push(first.streamed)
      broken.push(...first.broken)
      position = end
      // Appends of 40 to 130 KB, each streamed before the next is sent: the end moves under
      // chunks read ahead.
      const more: Uint8Array[] = []
      for (let i = 0; i < 12; i++) {
        const bytes = concatBytes(Array.from({ length: 1 + (i % 4) * 3 }, (_, k) => generator.appendLogicalMessage("t", messageFor(100 + i * 10 + k, 9000 + k * 31)).bytes))
        yield* pusher.copyData(encodeProposerMessage({
          _tag: "AppendRequest", generation: Generation(0), term, beginLsn: Lsn(appendedEnd), endLsn: Lsn(appendedEnd + bytes.byteLength), commitLsn: Lsn(end), truncateLsn: Lsn(0), walData: bytes
        }))
        more.push(bytes)
        appendedEnd += bytes.byteLength
        const next = yield* streamUntil(peer, position, appendedEnd)
        parts.push(next.streamed)
        broken.push(...next.broken)
        position = appendedEnd
      }
      // A higher term's vote: the stream ends with an error, no more WAL.
      yield* pusher.copyData(encodeProposerMessage({ _tag: "VoteRequest", generation: Generation(0), term: Term(term + 1) }))
      const rest = yield* peer.readUntil((m) => m._tag === "ErrorResponse")
      return { expected: concatBytes([wal, ...more]), copyBoth, streamed: concatBytes(parts), broken, rest }
    }))
    expect(value.copyBoth?._tag).toBe("CopyBothResponse")
    expect(value.broken).toEqual([])
    expect(Buffer.from(value.streamed).equals(Buffer.from(value.expected))).toBe(true)
    expect(errorOf(value.rest)?.message).toMatch(/term changed/)
  })
})

describe("garbage", () => {
  test("random byte streams never crash the server, which then serves a good client", () => {
    fc.assert(fc.property(fc.array(fc.uint8Array({ minLength: 0, maxLength: 300 }), { minLength: 1, maxLength: 6 }), fc.boolean(), (chunks, withStartup) => {
      const { value } = run(Effect.gen(function* () {
        const bad = yield* RawClient.connect(SK)
        if (withStartup) yield* bad.write(encodeStartupMessage([["user", "x"], ["replication", "true"]]))
        for (const chunk of chunks) yield* bad.write(chunk)
        yield* bad.connection.shutdownWrite.pipe(Effect.ignore)
        yield* bad.readUntil(() => false).pipe(Effect.ignore)
        const good = yield* RawClient.session(SK)
        return rowsOf(yield* good.query("SHOW wal_segment_size"))
      }))
      expect(value).toEqual([["16MB"]])
    }), { numRuns: 40 })
  })
})

function encodeQueryText(text: string): Uint8Array {
  const body = new TextEncoder().encode(text)
  const frame = new Uint8Array(1 + 4 + body.byteLength + 1)
  frame[0] = 0x51
  new DataView(frame.buffer).setUint32(1, 4 + body.byteLength + 1)
  frame.set(body, 5)
  return frame
}

