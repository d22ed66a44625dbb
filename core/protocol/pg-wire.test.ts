// Goal: the Postgres v3 wire codec is byte-exact with what PostgreSQL 15 and its tools send
// (pg-replication.md §1-§3) in both directions, and reading is total and bounded: any byte
// stream, cut anywhere, yields messages or one typed PgWireError, never a throw, and never makes
// the reader hold more than one capped message. Method: byte fixtures written from the
// reference; fast-check round trips through the incremental readers with random chunk
// boundaries; random and bit-flipped streams; targeted refusals (oversized lengths from the
// header alone, bad startup packets, unknown types, bad UTF-8); parseStartupOptions against
// Neon's and Postgres' forms.
import fc from "fast-check"
import { Result } from "effect"
import { describe, expect, test } from "vitest"
import { InvariantViolation } from "../assert.js"
import {
  type BackendMessage,
  COPY_DATA_HEADER_BYTES,
  decodeCleartextPassword,
  encodeAuthenticationCleartextPassword,
  encodeAuthenticationOk,
  encodeAuthenticationRequest,
  encodeBackendKeyData,
  encodeCancelRequest,
  encodeCommandComplete,
  encodeCopyBothResponse,
  encodeCopyData,
  encodeCopyDone,
  encodeCopyFail,
  encodeDataRow,
  encodeEmptyQueryResponse,
  encodeErrorResponse,
  encodeFlush,
  encodeGssEncRequest,
  encodeNoticeResponse,
  encodeParameterStatus,
  encodePasswordMessage,
  encodeQuery,
  encodeReadyForQuery,
  encodeRowDescription,
  encodeSslRefusal,
  encodeSslRequest,
  encodeStartupMessage,
  encodeSync,
  encodeTerminate,
  type FrontendMessage,
  INT4_OID,
  INT8_OID,
  NOTICE_FIELD_LENGTH_MAX_CHARS,
  parseStartupOptions,
  PG_MESSAGE_LENGTH_MAX_BYTES,
  PgBackendReader,
  PgFrontendReader,
  PgWireError,
  type PgWireErrorReason,
  type StartupPacket,
  STARTUP_PACKET_LENGTH_MAX_BYTES,
  TEXT_OID,
  writeCopyDataHeader
} from "./pg-wire.js"

const hex = (...parts: string[]) => Uint8Array.from(Buffer.from(parts.join("").replace(/\s+/g, ""), "hex"))
const toHex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex")
const cstr = (text: string) => Buffer.from(text + "\0", "utf8").toString("hex")
const concat = (parts: ReadonlyArray<Uint8Array>) => Uint8Array.from(Buffer.concat(parts))
/** A startup packet around a hand-written body (code included): the length is computed. */
const startup = (...body: string[]) => {
  const bytes = hex(...body)
  return concat([hex((4 + bytes.byteLength).toString(16).padStart(8, "0")), bytes])
}
/** A typed message around a hand-written body. */
const message = (type: string, ...body: string[]) => {
  const bytes = hex(...body)
  return concat([Uint8Array.from(Buffer.from(type, "latin1")), hex((4 + bytes.byteLength).toString(16).padStart(8, "0")), bytes])
}

type Reader = PgFrontendReader | PgBackendReader
type Item = StartupPacket | FrontendMessage | BackendMessage
const nextOf = (reader: Reader): Result.Result<Item | undefined, PgWireError> => reader.next()

/** Feeds `bytes` in the given chunks, draining after each push; stops at the first error. */
function feed(reader: Reader, bytes: Uint8Array, cuts: ReadonlyArray<number> = []): { items: Item[]; error: PgWireError | undefined; bufferedMaxBytes: number } {
  const items: Item[] = []
  let bufferedMaxBytes = 0
  const points = [...new Set(cuts.map((cut) => cut % (bytes.byteLength + 1)))].sort((a, b) => a - b)
  let start = 0
  for (const end of [...points, bytes.byteLength]) {
    reader.push(bytes.subarray(start, end))
    start = end
    for (;;) {
      const next = nextOf(reader)
      if (Result.isFailure(next)) return { items, error: next.failure, bufferedMaxBytes }
      if (next.success === undefined) break
      items.push(next.success)
    }
    bufferedMaxBytes = Math.max(bufferedMaxBytes, reader.bufferedBytes)
  }
  return { items, error: undefined, bufferedMaxBytes }
}

function only(reader: Reader, bytes: Uint8Array): Item {
  const { items, error } = feed(reader, bytes)
  expect(error).toBeUndefined()
  expect(items).toHaveLength(1)
  return items[0]!
}

function failure(reader: Reader, bytes: Uint8Array): PgWireError {
  const { error } = feed(reader, bytes)
  expect(error).toBeInstanceOf(PgWireError)
  return error!
}

/** A server reader already past its StartupMessage. */
function serverReader(): PgFrontendReader {
  const reader = new PgFrontendReader()
  const { error } = feed(reader, encodeStartupMessage([["user", "u"]]))
  expect(error).toBeUndefined()
  return reader
}

const PG_RECEIVEWAL_STARTUP = hex(
  "00000058", "00030000",
  cstr("user"), cstr("repl"), cstr("database"), cstr("replication"), cstr("replication"), cstr("true"),
  cstr("application_name"), cstr("pg_receivewal"),
  "00"
)

describe("fixtures from pg-replication.md", () => {
  test("SSLRequest is 00 00 00 08 04 d2 16 2f and is refused with 'N'", () => {
    expect(toHex(encodeSslRequest())).toBe("0000000804d2162f")
    expect(only(new PgFrontendReader(), hex("0000000804d2162f"))).toEqual({ _tag: "SslRequest" })
    expect(toHex(encodeSslRefusal())).toBe("4e")
  })

  test("pg_receivewal's 88-byte StartupMessage, in both directions", () => {
    expect(PG_RECEIVEWAL_STARTUP.byteLength).toBe(88)
    const parameters = [["user", "repl"], ["database", "replication"], ["replication", "true"], ["application_name", "pg_receivewal"]] as const
    expect(toHex(encodeStartupMessage(parameters))).toBe(toHex(PG_RECEIVEWAL_STARTUP))
    const packet = only(new PgFrontendReader(), PG_RECEIVEWAL_STARTUP)
    expect(packet).toEqual({ _tag: "StartupMessage", parameters: new Map(parameters) })
    if (packet._tag === "StartupMessage") expect([...packet.parameters.keys()]).toEqual(parameters.map(([key]) => key))
  })

  test("SSLRequest, then the StartupMessage on the same stream, then messages", () => {
    const stream = concat([encodeSslRequest(), PG_RECEIVEWAL_STARTUP, encodeQuery("IDENTIFY_SYSTEM")])
    const { items, error } = feed(new PgFrontendReader(), stream, [3, 9, 50])
    expect(error).toBeUndefined()
    expect(items.map((item) => item._tag)).toEqual(["SslRequest", "StartupMessage", "Query"])
    expect(items[2]).toEqual({ _tag: "Query", text: "IDENTIFY_SYSTEM" })
  })

  test("CopyBothResponse is exactly W 00 00 00 07 00 00 00", () => {
    expect(toHex(encodeCopyBothResponse())).toBe("57000000070000 00".replace(" ", ""))
    expect(only(new PgBackendReader(), encodeCopyBothResponse())).toEqual({ _tag: "CopyBothResponse", format: 0, columnFormats: [] })
  })

  test("a keepalive inside CopyData", () => {
    const keepalive = hex("6b 00000000 0a0050e8 000303dc 6f4e214b 01")
    const frame = encodeCopyData(keepalive)
    expect(toHex(frame)).toBe("6400000016" + toHex(keepalive))
    expect(only(new PgBackendReader(), frame)).toEqual({ _tag: "CopyData", data: keepalive })
  })

  test("AuthenticationOk, ReadyForQuery, ParameterStatus, BackendKeyData, CommandComplete", () => {
    expect(toHex(encodeAuthenticationOk())).toBe("520000000800000000")
    expect(toHex(encodeAuthenticationCleartextPassword())).toBe("520000000800000003")
    expect(toHex(encodeReadyForQuery("I"))).toBe("5a0000000549")
    expect(toHex(encodeParameterStatus("integer_datetimes", "on"))).toBe("53" + "00000019" + cstr("integer_datetimes") + cstr("on"))
    expect(toHex(encodeBackendKeyData(1234, 0xdeadbeef))).toBe("4b0000000c000004d2deadbeef")
    expect(toHex(encodeCommandComplete("IDENTIFY_SYSTEM"))).toBe("4300000014" + cstr("IDENTIFY_SYSTEM"))
    expect(toHex(encodeEmptyQueryResponse())).toBe("4900000004")
    expect(toHex(encodeCopyDone())).toBe("6300000004")
    expect(toHex(encodeTerminate())).toBe("5800000004")
  })

  test("IDENTIFY_SYSTEM's RowDescription and DataRow", () => {
    const columns = [
      { name: "systemid", typeOid: TEXT_OID },
      { name: "timeline", typeOid: INT4_OID },
      { name: "xlogpos", typeOid: TEXT_OID },
      { name: "dbname", typeOid: TEXT_OID }
    ]
    const field = (name: string, oid: string, typlen: string) => cstr(name) + "00000000" + "0000" + oid + typlen + "ffffffff" + "0000"
    const body = "0004" + field("systemid", "00000019", "ffff") + field("timeline", "00000017", "0004") +
      field("xlogpos", "00000019", "ffff") + field("dbname", "00000019", "ffff")
    const expected = "54" + (4 + body.length / 2).toString(16).padStart(8, "0") + body
    expect(toHex(encodeRowDescription(columns))).toBe(expected)
    const row = encodeDataRow(["7710987617075029990", "1", "0/503A600", null])
    expect(toHex(row)).toBe("44" + "00000033" + "0004" + "00000013" + Buffer.from("7710987617075029990").toString("hex") +
      "00000001" + "31" + "00000009" + Buffer.from("0/503A600").toString("hex") + "ffffffff")
    const decoded = feed(new PgBackendReader(), concat([encodeRowDescription(columns), row])).items
    expect(decoded[0]).toEqual({
      _tag: "RowDescription",
      fields: columns.map((column) => ({
        name: column.name, tableOid: 0, columnAttributeNumber: 0, typeOid: column.typeOid,
        typeLengthBytes: column.typeOid === INT4_OID ? 4 : -1, typeModifier: -1, format: 0
      }))
    })
    expect(decoded[1]).toEqual({ _tag: "DataRow", values: [Buffer.from("7710987617075029990"), Buffer.from("1"), Buffer.from("0/503A600"), null].map((v) => (v === null ? null : Uint8Array.from(v))) })
    expect(encodeRowDescription([{ name: "n", typeOid: INT8_OID }])[1 + 4 + 2 + 2 + 4 + 2 + 4 + 1]).toBe(8)
  })

  test("ErrorResponse writes S, V, C, M, D, H and reads them back", () => {
    const bytes = encodeErrorResponse({ severity: "ERROR", code: "0A000", message: "cannot execute SQL commands in WAL sender for physical replication", hint: "h" })
    const body = "53" + cstr("ERROR") + "56" + cstr("ERROR") + "43" + cstr("0A000") + "4d" +
      cstr("cannot execute SQL commands in WAL sender for physical replication") + "48" + cstr("h") + "00"
    expect(toHex(bytes)).toBe("45" + (4 + body.length / 2).toString(16).padStart(8, "0") + body)
    const message = only(new PgBackendReader(), bytes)
    expect(message._tag).toBe("ErrorResponse")
    if (message._tag !== "ErrorResponse") return
    expect(message.notice).toMatchObject({
      severity: "ERROR", severityNonLocalized: "ERROR", code: "0A000",
      message: "cannot execute SQL commands in WAL sender for physical replication", detail: undefined, hint: "h"
    })
    expect([...message.notice.fields.keys()]).toEqual(["S", "V", "C", "M", "H"])
  })

  test("CopyOutResponse and CopyInResponse (pg_basebackup) with column formats", () => {
    expect(only(new PgBackendReader(), message("H", "00 0002 0000 0001"))).toEqual({ _tag: "CopyOutResponse", format: 0, columnFormats: [0, 1] })
    expect(only(new PgBackendReader(), message("G", "01 0000"))).toEqual({ _tag: "CopyInResponse", format: 1, columnFormats: [] })
    expect(failure(new PgBackendReader(), message("G", "02 0000")).reason).toBe("Malformed")
  })
})

// ---- round trips ----

const arbText = fc.string({ unit: "binary", maxLength: 40 }).filter((text) => !text.includes("\0"))
const arbBytes = fc.uint8Array({ maxLength: 300 })
const arbU32 = fc.nat({ max: 0xffff_ffff })

const arbFrontend: fc.Arbitrary<{ readonly bytes: Uint8Array; readonly message: FrontendMessage }> = fc.oneof(
  arbText.map((text) => ({ bytes: encodeQuery(text), message: { _tag: "Query", text } as const })),
  arbBytes.map((data) => ({ bytes: encodeCopyData(data), message: { _tag: "CopyData", data } as const })),
  fc.constant({ bytes: encodeCopyDone(), message: { _tag: "CopyDone" } as const }),
  arbText.map((text) => ({ bytes: encodeCopyFail(text), message: { _tag: "CopyFail", message: text } as const })),
  fc.constant({ bytes: encodeTerminate(), message: { _tag: "Terminate" } as const }),
  arbText.map((text) => ({ bytes: encodePasswordMessage(text), message: { _tag: "PasswordMessage", data: Uint8Array.from(Buffer.from(text + "\0")) } as const })),
  fc.constant({ bytes: encodeSync(), message: { _tag: "Sync" } as const }),
  fc.constant({ bytes: encodeFlush(), message: { _tag: "Flush" } as const })
)

const arbBackend: fc.Arbitrary<{ readonly bytes: Uint8Array; readonly message: BackendMessage }> = fc.oneof(
  fc.constant({ bytes: encodeAuthenticationOk(), message: { _tag: "AuthenticationOk" } as const }),
  fc.constant({ bytes: encodeAuthenticationCleartextPassword(), message: { _tag: "AuthenticationCleartextPassword" } as const }),
  fc.tuple(fc.constantFrom(5, 10, 11, 12), arbBytes).map(([code, data]) => ({
    bytes: encodeAuthenticationRequest(code, data), message: { _tag: "AuthenticationRequest", code, data } as const
  })),
  fc.tuple(arbText, arbText).map(([name, value]) => ({ bytes: encodeParameterStatus(name, value), message: { _tag: "ParameterStatus", name, value } as const })),
  fc.tuple(arbU32, arbU32).map(([processId, secretKey]) => ({
    bytes: encodeBackendKeyData(processId, secretKey), message: { _tag: "BackendKeyData", processId, secretKey } as const
  })),
  fc.constantFrom("I", "T", "E").map((status) => ({ bytes: encodeReadyForQuery(status), message: { _tag: "ReadyForQuery", status } as const })),
  fc.array(fc.tuple(arbText, fc.constantFrom(TEXT_OID, INT4_OID, INT8_OID)), { maxLength: 6 }).map((columns) => ({
    bytes: encodeRowDescription(columns.map(([name, typeOid]) => ({ name, typeOid }))),
    message: {
      _tag: "RowDescription",
      fields: columns.map(([name, typeOid]) => ({
        name, tableOid: 0, columnAttributeNumber: 0, typeOid,
        typeLengthBytes: typeOid === TEXT_OID ? -1 : typeOid === INT4_OID ? 4 : 8, typeModifier: -1, format: 0
      }))
    } as const
  })),
  fc.array(fc.option(arbBytes, { nil: null }), { maxLength: 6 }).map((values) => ({
    bytes: encodeDataRow(values), message: { _tag: "DataRow", values } as const
  })),
  arbText.map((commandTag) => ({ bytes: encodeCommandComplete(commandTag), message: { _tag: "CommandComplete", commandTag } as const })),
  fc.constant({ bytes: encodeEmptyQueryResponse(), message: { _tag: "EmptyQueryResponse" } as const }),
  fc.record({ message: arbText, detail: fc.option(arbText, { nil: undefined }), hint: fc.option(arbText, { nil: undefined }) }).map((fields) => {
    const map = new Map([["S", "WARNING"], ["V", "WARNING"], ["C", "01000"], ["M", fields.message]])
    if (fields.detail !== undefined) map.set("D", fields.detail)
    if (fields.hint !== undefined) map.set("H", fields.hint)
    return {
      bytes: encodeNoticeResponse({ severity: "WARNING", code: "01000", ...fields }),
      message: {
        _tag: "NoticeResponse",
        notice: { severity: "WARNING", severityNonLocalized: "WARNING", code: "01000", ...fields, fields: map }
      } as const
    }
  }),
  fc.constant({ bytes: encodeCopyBothResponse(), message: { _tag: "CopyBothResponse", format: 0, columnFormats: [] } as const }),
  arbBytes.map((data) => ({ bytes: encodeCopyData(data), message: { _tag: "CopyData", data } as const })),
  fc.constant({ bytes: encodeCopyDone(), message: { _tag: "CopyDone" } as const })
)

const arbCuts = fc.array(fc.nat(), { maxLength: 20 })

describe("round trips through the incremental readers", () => {
  test("frontend messages, cut at random boundaries", () => {
    fc.assert(fc.property(fc.array(arbFrontend, { maxLength: 8 }), arbCuts, (messages, cuts) => {
      const startup = encodeStartupMessage([["user", "u"], ["database", "d"]])
      const { items, error } = feed(new PgFrontendReader(), concat([startup, ...messages.map((m) => m.bytes)]), cuts)
      expect(error).toBeUndefined()
      expect(items).toEqual([{ _tag: "StartupMessage", parameters: new Map([["user", "u"], ["database", "d"]]) }, ...messages.map((m) => m.message)])
    }))
  })

  test("backend messages, cut at random boundaries", () => {
    fc.assert(fc.property(fc.array(arbBackend, { maxLength: 8 }), arbCuts, (messages, cuts) => {
      const { items, error } = feed(new PgBackendReader(), concat(messages.map((m) => m.bytes)), cuts)
      expect(error).toBeUndefined()
      expect(items).toEqual(messages.map((m) => m.message))
    }))
  })

  test("startup parameters round trip in order", () => {
    fc.assert(fc.property(fc.uniqueArray(fc.tuple(arbText.filter((k) => k !== ""), arbText), { selector: ([key]) => key, maxLength: 10 }), arbCuts, (parameters, cuts) => {
      const { items } = feed(new PgFrontendReader(), encodeStartupMessage(parameters), cuts)
      expect(items).toEqual([{ _tag: "StartupMessage", parameters: new Map(parameters) }])
    }))
  })

  test("CancelRequest and GSSENCRequest", () => {
    expect(only(new PgFrontendReader(), encodeCancelRequest(42, 0xfffffffe))).toEqual({ _tag: "CancelRequest", processId: 42, secretKey: 0xfffffffe })
    expect(only(new PgFrontendReader(), encodeGssEncRequest())).toEqual({ _tag: "GssEncRequest" })
  })

  test("a cleartext password is the body up to its NUL", () => {
    const message = only(serverReader(), encodePasswordMessage("eyJhbGciOiJFZERTQSJ9.e30.sig"))
    expect(message._tag).toBe("PasswordMessage")
    if (message._tag !== "PasswordMessage") return
    expect(Result.getOrThrow(decodeCleartextPassword(message.data))).toBe("eyJhbGciOiJFZERTQSJ9.e30.sig")
    expect(Result.isFailure(decodeCleartextPassword(hex("6162")))).toBe(true) // no NUL
    expect(Result.isFailure(decodeCleartextPassword(hex("610062 00")))).toBe(true) // bytes after the NUL
  })
})

describe("bounded, copy-once buffering", () => {
  test("a frame inside one chunk is a view of it; across chunks it is assembled", () => {
    const payload = Uint8Array.from({ length: 1000 }, (_, i) => i % 251)
    const frame = encodeCopyData(payload)
    const reader = new PgBackendReader()
    reader.push(frame)
    const whole = Result.getOrThrow(reader.next())
    expect(whole?._tag === "CopyData" && whole.data.buffer === frame.buffer).toBe(true)
    const { items } = feed(new PgBackendReader(), frame, [1, 2, 3, 700])
    expect(items).toEqual([{ _tag: "CopyData", data: payload }])
  })

  test("a 256 KiB CopyData fed one byte at a time (linear, not quadratic)", () => {
    const payload = Uint8Array.from({ length: 256 * 1024 }, (_, i) => (i * 7) % 256)
    const frame = encodeCopyData(payload)
    const reader = new PgBackendReader()
    let early = 0
    for (let i = 0; i < frame.byteLength - 1; i++) {
      reader.push(frame.subarray(i, i + 1))
      if (Result.getOrThrow(reader.next()) !== undefined) early++
    }
    expect(early).toBe(0)
    reader.push(frame.subarray(frame.byteLength - 1))
    expect(Result.getOrThrow(reader.next())).toEqual({ _tag: "CopyData", data: payload })
    expect(reader.bufferedBytes).toBe(0)
  })

  test("a message of exactly the cap is accepted; the header alone refuses one byte more", () => {
    const payload = new Uint8Array(PG_MESSAGE_LENGTH_MAX_BYTES - 4)
    expect(feed(new PgBackendReader(), encodeCopyData(payload), [100, 70000]).items).toHaveLength(1)
    expect(() => encodeCopyData(new Uint8Array(PG_MESSAGE_LENGTH_MAX_BYTES - 3))).toThrow(InvariantViolation)
  })

  test("an oversized length is refused from its 5-byte header alone, on both sides", () => {
    fc.assert(fc.property(fc.integer({ min: PG_MESSAGE_LENGTH_MAX_BYTES + 1, max: 0xffff_ffff }), fc.integer({ min: 0, max: 255 }), (lengthBytes, type) => {
      const header = new Uint8Array(5)
      new DataView(header.buffer).setUint8(0, type)
      new DataView(header.buffer).setUint32(1, lengthBytes)
      for (const reader of [serverReader(), new PgBackendReader()]) {
        reader.push(header)
        const next = nextOf(reader)
        expect(Result.isFailure(next) && next.failure.reason).toBe("MessageTooLong")
        expect(reader.bufferedBytes).toBe(0)
        reader.push(new Uint8Array(100)) // nothing more is held after the refusal
        expect(reader.bufferedBytes).toBe(0)
      }
    }))
  })

  test("a startup length above 10000 is refused from its 4 bytes, one below 8 too", () => {
    fc.assert(fc.property(fc.integer({ min: STARTUP_PACKET_LENGTH_MAX_BYTES + 1, max: 0xffff_ffff }), (lengthBytes) => {
      const header = new Uint8Array(4)
      new DataView(header.buffer).setUint32(0, lengthBytes)
      expect(failure(new PgFrontendReader(), header).reason).toBe("StartupTooLong")
    }))
    for (const lengthBytes of [0, 4, 7]) {
      const header = new Uint8Array(4)
      new DataView(header.buffer).setUint32(0, lengthBytes)
      expect(failure(new PgFrontendReader(), header).reason).toBe("StartupTooShort")
    }
  })

  test("a message length below 4 is refused", () => {
    for (const lengthBytes of [0, 1, 3]) {
      expect(failure(new PgBackendReader(), hex("64", lengthBytes.toString(16).padStart(8, "0"))).reason).toBe("BadLength")
    }
  })
})

describe("garbage never throws", () => {
  const arbGarbage = fc.oneof(
    fc.uint8Array({ maxLength: 2000 }),
    // Plausible frames with random types, lengths and bodies, so that decoders see real work.
    fc.array(fc.tuple(fc.integer({ min: 0, max: 255 }), fc.oneof(fc.nat({ max: 64 }), fc.nat()), fc.uint8Array({ maxLength: 64 })), { maxLength: 20 })
      .map((frames) => concat(frames.map(([type, length, body]) => {
        const header = new Uint8Array(5)
        new DataView(header.buffer).setUint8(0, type)
        new DataView(header.buffer).setUint32(1, length % 0x1_0000_0000)
        return concat([header, body])
      })))
  )

  function checkTotal(makeReader: () => Reader, prefix: Uint8Array) {
    fc.assert(fc.property(arbGarbage, arbCuts, (garbage, cuts) => {
      const reader = makeReader()
      const { error, bufferedMaxBytes } = feed(reader, concat([prefix, garbage]), cuts)
      expect(bufferedMaxBytes).toBeLessThanOrEqual(PG_MESSAGE_LENGTH_MAX_BYTES)
      if (error !== undefined) {
        expect(error).toBeInstanceOf(PgWireError)
        // Sticky: the same error again, and nothing buffered.
        reader.push(new Uint8Array([1, 2, 3]))
        const again = nextOf(reader)
        expect(Result.isFailure(again) && again.failure).toBe(error)
        expect(reader.bufferedBytes).toBe(0)
      }
    }), { numRuns: 300 })
  }

  test("a server reader fed random bytes from the start", () => checkTotal(() => new PgFrontendReader(), new Uint8Array(0)))
  test("a server reader fed random bytes after a StartupMessage", () => checkTotal(() => new PgFrontendReader(), encodeStartupMessage([["user", "u"]])))
  test("a client reader fed random bytes", () => checkTotal(() => new PgBackendReader(), new Uint8Array(0)))

  test("bit flips in valid streams give messages or a typed error", () => {
    fc.assert(fc.property(fc.array(arbBackend, { minLength: 1, maxLength: 5 }), fc.array(fc.nat(), { minLength: 1, maxLength: 4 }), arbCuts, (messages, flips, cuts) => {
      const bytes = concat(messages.map((m) => m.bytes))
      for (const flip of flips) bytes[flip % bytes.byteLength]! ^= 1 << (flip % 8)
      const { error } = feed(new PgBackendReader(), bytes, cuts)
      if (error !== undefined) expect(error).toBeInstanceOf(PgWireError)
    }))
  })
})

describe("refusals", () => {
  const expectReason = (reader: Reader, bytes: Uint8Array, reason: PgWireErrorReason) => expect(failure(reader, bytes).reason).toBe(reason)

  test("startup packets", () => {
    expectReason(new PgFrontendReader(), startup("00020000"), "UnsupportedProtocolVersion") // protocol 2.0
    expectReason(new PgFrontendReader(), startup("00030001", "00"), "UnsupportedProtocolVersion") // 3.1
    expectReason(new PgFrontendReader(), startup("00030000", cstr("user"), "61"), "Malformed") // value not terminated
    expectReason(new PgFrontendReader(), startup("00030000", cstr("user"), cstr("a")), "Malformed") // no final NUL
    expectReason(new PgFrontendReader(), startup("00030000", cstr("user"), cstr("a"), "00 00"), "Malformed") // bytes after it
    expectReason(new PgFrontendReader(), startup("00030000", cstr("user"), "ff00", "00"), "BadUtf8")
    expectReason(new PgFrontendReader(), startup("04d2162f 00000000"), "Malformed") // SSLRequest with a body
    expectReason(new PgFrontendReader(), startup("04d2162e 00000001"), "Malformed") // CancelRequest without its key
    expectReason(new PgFrontendReader(), concat([encodeCancelRequest(1, 2), hex("00")]), "Malformed") // bytes after a cancel
  })

  test("frontend messages", () => {
    const unsupported = (type: string) => only(serverReader(), hex(Buffer.from(type).toString("hex"), "00000004"))
    expect(unsupported("P")).toEqual({ _tag: "UnsupportedFrontendMessage", type: "P", name: "Parse" })
    expect(unsupported("B")).toMatchObject({ name: "Bind" })
    expect(unsupported("E")).toMatchObject({ name: "Execute" })
    expect(unsupported("D")).toMatchObject({ name: "Describe" })
    expect(unsupported("C")).toMatchObject({ name: "Close" })
    expectReason(serverReader(), message("F"), "UnknownMessageType") // FunctionCall
    expectReason(serverReader(), message("R", "00000000"), "UnknownMessageType") // a backend message
    expectReason(serverReader(), message("Q", "61"), "Malformed") // query not terminated in its body
    expectReason(serverReader(), message("Q", "610062"), "Malformed") // bytes after the NUL
    expectReason(serverReader(), message("Q", "ff00"), "BadUtf8")
    expectReason(serverReader(), message("X", "00"), "Malformed") // Terminate with a body
  })

  test("backend messages", () => {
    expectReason(new PgBackendReader(), message("Z", "58"), "Malformed") // status 'X'
    expectReason(new PgBackendReader(), message("R", "00000000 00"), "Malformed") // Ok with a body
    expectReason(new PgBackendReader(), message("D", "0001"), "Malformed") // a column that is not there
    expectReason(new PgBackendReader(), message("D", "0001 fffffffe"), "Malformed") // length -2
    expectReason(new PgBackendReader(), message("D", "ffff"), "Malformed") // count -1
    expectReason(new PgBackendReader(), message("T", "0001"), "Malformed") // a field that is not there
    expectReason(new PgBackendReader(), message("K", "00000001"), "Malformed") // key data without its key
    expectReason(new PgBackendReader(), message("S", "ff00 00"), "BadUtf8")
    expectReason(new PgBackendReader(), message("Q"), "UnknownMessageType")
  })

  test("an ErrorResponse with non-UTF-8 text is still read", () => {
    const response = only(new PgBackendReader(), message("E", "53", cstr("ERROR"), "4d", "ff00", "00"))
    expect(response._tag === "ErrorResponse" && response.notice.message).toBe("\uFFFD")
  })
})

describe("encoders", () => {
  test("error text that echoes a client is made safe: NULs replaced, long text cut", () => {
    const message = only(new PgBackendReader(), encodeErrorResponse({ severity: "ERROR", code: "42601", message: "bad \0 command " + "x".repeat(10_000), detail: "d" }))
    expect(message._tag).toBe("ErrorResponse")
    if (message._tag !== "ErrorResponse") return
    expect(message.notice.message.startsWith("bad \uFFFD command x")).toBe(true)
    expect(message.notice.message.length).toBe(NOTICE_FIELD_LENGTH_MAX_CHARS)
    expect(message.notice.detail).toBe("d")
  })

  test("programmer errors assert", () => {
    expect(() => encodeQuery("a\0b")).toThrow(InvariantViolation)
    expect(() => encodeErrorResponse({ severity: "ERROR", code: "bad", message: "m" })).toThrow(InvariantViolation)
    expect(() => encodeRowDescription([{ name: "x", typeOid: 16 }])).toThrow(InvariantViolation)
    expect(() => encodeStartupMessage([["options", "x".repeat(STARTUP_PACKET_LENGTH_MAX_BYTES)]])).toThrow(InvariantViolation)
  })

  test("writeCopyDataHeader frames a payload written in place", () => {
    const frame = new Uint8Array(COPY_DATA_HEADER_BYTES + 3)
    frame.set([1, 2, 3], COPY_DATA_HEADER_BYTES)
    writeCopyDataHeader(frame, 3)
    expect(toHex(frame)).toBe(toHex(encodeCopyData(Uint8Array.of(1, 2, 3))))
  })
})

describe("parseStartupOptions", () => {
  const parse = (options: string) => Result.getOrThrow(parseStartupOptions(options))
  const reason = (options: string) => {
    const result = parseStartupOptions(options)
    return Result.isFailure(result) ? result.failure.reason : undefined
  }

  test("the walproposer's and the pageserver's forms", () => {
    expect(parse("-c timeline_id=112ded66422aa5e953e5440fa5427ac4 tenant_id=cf0480929707ee75372337efaa5ecf96")).toEqual([
      ["timeline_id", "112ded66422aa5e953e5440fa5427ac4"],
      ["tenant_id", "cf0480929707ee75372337efaa5ecf96"]
    ])
    expect(parse("  -c ztimelineid=ab  ztenantid=cd   protocol={\"type\":\"vanilla\"} ")).toEqual([
      ["ztimelineid", "ab"], ["ztenantid", "cd"], ["protocol", "{\"type\":\"vanilla\"}"]
    ])
  })

  test("Postgres' forms: -ckey=value and --key=value (dashes in the key become underscores)", () => {
    expect(parse("-ctimeline_id=ab --tenant-id=cd -c statement-timeout=0")).toEqual([["timeline_id", "ab"], ["tenant_id", "cd"], ["statement_timeout", "0"]])
  })

  test("backslash escapes whitespace and itself; values may hold '='", () => {
    expect(parse("a=x\\ y b=c\\\\d e=f=g\tz=\\q")).toEqual([["a", "x y"], ["b", "c\\d"], ["e", "f=g"], ["z", "q"]])
  })

  test("other switches are ignored, as Neon ignores them; empty options are empty", () => {
    expect(parse("-B 100 -c a=b -F")).toEqual([["a", "b"]])
    expect(parse("")).toEqual([])
    expect(parse(" \t\n ")).toEqual([])
  })

  test("malformed options are a typed error", () => {
    expect(reason("-c")).toBe("BadOptions")
    expect(reason("-c novalue")).toBe("BadOptions")
    expect(reason("-cnovalue")).toBe("BadOptions")
    expect(reason("--novalue")).toBe("BadOptions")
    expect(reason("=value")).toBe("BadOptions")
    expect(reason("a=b trailing\\")).toBe("BadOptions")
  })

  test("escaped keys and values round trip; random strings never throw", () => {
    const escape = (text: string) => text.replace(/[\\\s]/g, (c) => `\\${c}`)
    const arbKey = fc.string({ minLength: 1, maxLength: 12 }).filter((k) => !k.includes("=") && !k.startsWith("-"))
    fc.assert(fc.property(fc.array(fc.tuple(arbKey, fc.string({ maxLength: 12 })), { maxLength: 6 }), (settings) => {
      const options = settings.map(([key, value]) => `${escape(key)}=${escape(value)}`).join(" ")
      expect(parse(options)).toEqual(settings)
    }))
    fc.assert(fc.property(fc.string({ maxLength: 200 }), (options) => {
      const result = parseStartupOptions(options)
      if (Result.isFailure(result)) expect(result.failure).toBeInstanceOf(PgWireError)
    }))
  })
})
