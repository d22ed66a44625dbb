// Goal: the safekeeper understands every query text that pg_receivewal, a standby's walreceiver,
// psycopg, Neon's walproposer and pageserver send (pg-replication.md §3 and §5, reference §2
// and §9), and anything else is a typed UnknownCommand or MalformedCommand carrying the text,
// never a throw. Method: the exact texts from the captures; case, whitespace, quoting and
// semicolon variants; refusals; fast-check: rendered commands parse back, random strings and
// random token soups never throw.
import fc from "fast-check"
import { Result } from "effect"
import { describe, expect, test } from "vitest"
import { Term } from "../acceptor/state.js"
import { formatLsn, Lsn } from "../wal/lsn.js"
import { MalformedCommand, parseReplicationCommand, type ReplicationCommand, UnknownCommand } from "./commands.js"

const parse = (text: string) => Result.getOrThrow(parseReplicationCommand(text))
const errorOf = (text: string) => {
  const result = parseReplicationCommand(text)
  expect(Result.isFailure(result)).toBe(true)
  return Result.isFailure(result) ? result.failure : undefined
}

describe("texts real clients send", () => {
  const cases: ReadonlyArray<readonly [string, ReplicationCommand]> = [
    ["IDENTIFY_SYSTEM", { _tag: "IdentifySystem" }],
    ["TIMELINE_STATUS", { _tag: "TimelineStatus" }],
    ["SHOW data_directory_mode", { _tag: "Show", name: "data_directory_mode" }],
    ["SHOW wal_segment_size", { _tag: "Show", name: "wal_segment_size" }],
    ["READ_REPLICATION_SLOT \"recvslot\"", { _tag: "ReadReplicationSlot", slotName: "recvslot" }],
    ["TIMELINE_HISTORY 2", { _tag: "TimelineHistory", timelineId: 2 }],
    ["SET DATESTYLE TO 'ISO'", { _tag: "SetDatestyle", value: "'ISO'" }],
    ["START_WAL_PUSH", { _tag: "StartWalPush", protoVersion: 2, allowTimelineCreation: true }],
    ["START_WAL_PUSH (proto_version '3', allow_timeline_creation 'false')", { _tag: "StartWalPush", protoVersion: 3, allowTimelineCreation: false }],
    ["START_REPLICATION 0/5000000 TIMELINE 1", { _tag: "StartReplication", slotName: undefined, startLsn: Lsn(0x5000000), timelineId: 1, term: undefined }],
    ["START_REPLICATION SLOT \"recvslot\" 0/7000000 TIMELINE 1", { _tag: "StartReplication", slotName: "recvslot", startLsn: Lsn(0x7000000), timelineId: 1, term: undefined }],
    ["START_REPLICATION SLOT \"standbyslot\" 0/A000000 TIMELINE 1", { _tag: "StartReplication", slotName: "standbyslot", startLsn: Lsn(0xa000000), timelineId: 1, term: undefined }],
    ["START_REPLICATION PHYSICAL 0/16B5A50", { _tag: "StartReplication", slotName: undefined, startLsn: Lsn(0x16b5a50), timelineId: undefined, term: undefined }],
    ["START_REPLICATION PHYSICAL 1/0 (term='5')", { _tag: "StartReplication", slotName: undefined, startLsn: Lsn(0x1_0000_0000), timelineId: undefined, term: Term(5) }]
  ]
  test.each(cases)("%s", (text, command) => {
    expect(parse(text)).toEqual(command)
  })
})

describe("variants", () => {
  test("case-insensitive keywords, whitespace, one trailing semicolon", () => {
    expect(parse("  identify_system ;  ")).toEqual({ _tag: "IdentifySystem" })
    expect(parse("Timeline_Status;")).toEqual({ _tag: "TimelineStatus" })
    expect(parse("show WAL_SEGMENT_SIZE")).toEqual({ _tag: "Show", name: "wal_segment_size" })
    expect(parse("show \"Data_Directory_Mode\"")).toEqual({ _tag: "Show", name: "data_directory_mode" })
    expect(parse("start_replication slot s1 physical 0/0 timeline 3 ( TERM = '7' )")).toMatchObject({ slotName: "s1", timelineId: 3, term: 7 })
    expect(parse("set datestyle = ISO, MDY")).toEqual({ _tag: "SetDatestyle", value: "ISO, MDY" })
    expect(parse("START_WAL_PUSH(proto_version 3,,allow_timeline_creation TRUE, future 'x')")).toEqual({ _tag: "StartWalPush", protoVersion: 3, allowTimelineCreation: true })
    expect(parse("START_WAL_PUSH ()")).toEqual({ _tag: "StartWalPush", protoVersion: 2, allowTimelineCreation: true })
    expect(parse("START_REPLICATION 0/1 (term '9', other 'x')")).toMatchObject({ term: 9 })
  })

  test("identifiers: unquoted fold to lower case, quoted keep doubled quotes as one", () => {
    expect(parse("READ_REPLICATION_SLOT RecvSlot")).toEqual({ _tag: "ReadReplicationSlot", slotName: "recvslot" })
    expect(parse("SHOW \"a\"\"b\"")).toEqual({ _tag: "ShowUnknown", name: "a\"b" })
  })

  test("other settings are a typed unknown result", () => {
    expect(parse("SHOW server_version")).toEqual({ _tag: "ShowUnknown", name: "server_version" })
  })
})

describe("refusals carry the text", () => {
  test("unknown commands", () => {
    for (const text of ["SELECT 1", "", " ; ", "CREATE_REPLICATION_SLOT \"s\" PHYSICAL", "BASE_BACKUP", "JSON_CTRL", "SET search_path TO x", "'IDENTIFY_SYSTEM'"]) {
      const error = errorOf(text)
      expect(error).toBeInstanceOf(UnknownCommand)
      expect(error?.text).toBe(text)
    }
  })

  test("malformed arguments", () => {
    for (const text of [
      "IDENTIFY_SYSTEM now", "SHOW", "SHOW a b", "READ_REPLICATION_SLOT", "READ_REPLICATION_SLOT \"Bad\"",
      `READ_REPLICATION_SLOT ${"s".repeat(64)}`, "TIMELINE_HISTORY", "TIMELINE_HISTORY 0", "TIMELINE_HISTORY -1",
      "TIMELINE_HISTORY 4294967296", "TIMELINE_HISTORY x", "SET datestyle", "SET datestyle TO",
      "START_WAL_PUSH (proto_version 'x')", "START_WAL_PUSH (allow_timeline_creation 'maybe')", "START_WAL_PUSH (proto_version)",
      "START_WAL_PUSH (proto_version '3'", "START_WAL_PUSH (proto_version '3' '4')", "START_WAL_PUSH x",
      "START_REPLICATION", "START_REPLICATION SLOT", "START_REPLICATION 5000000", "START_REPLICATION 0/1 TIMELINE",
      "START_REPLICATION 0/1 TIMELINE 0", "START_REPLICATION SLOT s LOGICAL 0/1", "START_REPLICATION 0/1 (term='x')",
      "START_REPLICATION 0/1 (term='9007199254740992')", "START_REPLICATION 123456789/0", "START_REPLICATION 0/1 extra",
      "IDENTIFY_SYSTEM;;", "SHOW 'unterminated", "SHOW \"unterminated"
    ]) {
      const error = errorOf(text)
      expect(error, text).toBeInstanceOf(MalformedCommand)
      expect(error?.text).toBe(text)
    }
  })
})

describe("properties", () => {
  const arbSlot = fc.stringMatching(/^[a-z0-9_]{1,63}$/)
  const arbLsn = fc.maxSafeNat().map(Lsn)
  const arbCommand: fc.Arbitrary<ReplicationCommand> = fc.oneof(
    fc.constant({ _tag: "IdentifySystem" } as const),
    fc.constant({ _tag: "TimelineStatus" } as const),
    fc.constantFrom("data_directory_mode", "wal_segment_size").map((name) => ({ _tag: "Show", name }) as const),
    arbSlot.map((slotName) => ({ _tag: "ReadReplicationSlot", slotName }) as const),
    fc.integer({ min: 1, max: 0xffff_ffff }).map((timelineId) => ({ _tag: "TimelineHistory", timelineId }) as const),
    fc.record({ protoVersion: fc.nat({ max: 0xffff_ffff }), allowTimelineCreation: fc.boolean() }).map((m) => ({ _tag: "StartWalPush", ...m }) as const),
    fc.record({
      slotName: fc.option(arbSlot, { nil: undefined }),
      startLsn: arbLsn,
      timelineId: fc.option(fc.integer({ min: 1, max: 0xffff_ffff }), { nil: undefined }),
      term: fc.option(fc.maxSafeNat().map(Term), { nil: undefined })
    }).map((m) => ({ _tag: "StartReplication", ...m }) as const)
  )

  /** Renders with random keyword case and spacing. */
  function render(command: ReplicationCommand, upper: boolean, space: string): string {
    const k = (keyword: string) => (upper ? keyword : keyword.toLowerCase())
    switch (command._tag) {
      case "IdentifySystem":
        return k("IDENTIFY_SYSTEM")
      case "TimelineStatus":
        return k("TIMELINE_STATUS")
      case "Show":
        return `${k("SHOW")}${space}${command.name}`
      case "ShowUnknown":
        return `${k("SHOW")}${space}${command.name}`
      case "ReadReplicationSlot":
        return `${k("READ_REPLICATION_SLOT")}${space}"${command.slotName}"`
      case "TimelineHistory":
        return `${k("TIMELINE_HISTORY")}${space}${command.timelineId}`
      case "SetDatestyle":
        return `${k("SET")} datestyle ${k("TO")} ${command.value}`
      case "StartWalPush":
        return `${k("START_WAL_PUSH")}${space}(proto_version '${command.protoVersion}',${space}allow_timeline_creation '${command.allowTimelineCreation}')`
      case "StartReplication":
        return [
          k("START_REPLICATION"),
          command.slotName === undefined ? "" : `${k("SLOT")}${space}${command.slotName}`,
          k("PHYSICAL"),
          formatLsn(command.startLsn),
          command.timelineId === undefined ? "" : `${k("TIMELINE")}${space}${command.timelineId}`,
          command.term === undefined ? "" : `(term='${command.term}')`
        ].filter((part) => part !== "").join(space)
    }
  }

  test("rendered commands parse back", () => {
    fc.assert(fc.property(arbCommand, fc.boolean(), fc.constantFrom(" ", "  ", "\t", " \n "), fc.boolean(), (command, upper, space, semicolon) => {
      expect(parse(`${space}${render(command, upper, space)}${semicolon ? ";" : ""}${space}`)).toEqual(command)
    }))
  })

  test("random strings and token soups never throw", () => {
    const check = (text: string) => {
      const result = parseReplicationCommand(text)
      if (Result.isFailure(result)) {
        expect(result.failure instanceof UnknownCommand || result.failure instanceof MalformedCommand).toBe(true)
        expect(result.failure.text).toBe(text)
      }
    }
    fc.assert(fc.property(fc.string({ maxLength: 200 }), check), { numRuns: 500 })
    const pieces = ["START_REPLICATION", "START_WAL_PUSH", "SLOT", "PHYSICAL", "TIMELINE", "SHOW", "SET", "datestyle", "TO",
      "READ_REPLICATION_SLOT", "TIMELINE_HISTORY", "0/0", "FFFFFFFF/FFFFFFFF", "1", "(", ")", ",", "=", "'", "\"", ";", "term", "'3'", " ", "x"]
    fc.assert(fc.property(fc.array(fc.constantFrom(...pieces), { maxLength: 12 }), (parts) => check(parts.join(" "))), { numRuns: 1000 })
  })
})
