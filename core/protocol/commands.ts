import { Result, Schema } from "effect"
import { Term } from "../acceptor/state.js"
import { U53_MAX } from "../assert.js"
import { type Lsn, parseLsn } from "../wal/lsn.js"

/**
 * The simple-query commands a safekeeper accepts (neon-safekeeper.md §2 and §9,
 * pg-replication.md §3), parsed from the text of a Query message. Keywords are
 * case-insensitive (Neon matches them case-sensitively; Postgres' replication grammar does
 * not, and stock tools send upper case, so accepting both loses nothing). Identifiers may be
 * double-quoted; unquoted ones fold to lower case, as in Postgres. One trailing semicolon and
 * surrounding whitespace are allowed. The parser is a hand-written tokenizer plus a descent
 * over its tokens: linear in the text, no regular expressions, total.
 */
export type ReplicationCommand =
  | { readonly _tag: "IdentifySystem" }
  | { readonly _tag: "TimelineStatus" }
  | { readonly _tag: "Show"; readonly name: KnownSetting }
  /** A SHOW of a setting we do not serve; the server answers with an error. */
  | { readonly _tag: "ShowUnknown"; readonly name: string }
  | { readonly _tag: "ReadReplicationSlot"; readonly slotName: string }
  | { readonly _tag: "TimelineHistory"; readonly timelineId: number }
  /** psycopg sends `SET datestyle TO 'ISO'`; Neon answers CommandComplete "SELECT 1". */
  | { readonly _tag: "SetDatestyle"; readonly value: string }
  | {
    readonly _tag: "StartWalPush"
    /** The consensus protocol version the walproposer speaks; defaults to 2, as Neon's. */
    readonly protoVersion: number
    readonly allowTimelineCreation: boolean
  }
  | {
    readonly _tag: "StartReplication"
    readonly slotName: string | undefined
    readonly startLsn: Lsn
    readonly timelineId: number | undefined
    /** With `(term='N')`: stream flushed WAL while the acceptor's term stays N (reference §9). */
    readonly term: Term | undefined
  }

export const KNOWN_SETTINGS = ["data_directory_mode", "wal_segment_size"] as const
export type KnownSetting = (typeof KNOWN_SETTINGS)[number]

/** Neon's defaults when START_WAL_PUSH has no options. */
export const START_WAL_PUSH_DEFAULT_PROTO_VERSION = 2
/** Postgres' NAMEDATALEN - 1: the longest replication slot name. */
export const SLOT_NAME_LENGTH_MAX_BYTES = 63

/** Not a command a safekeeper knows. */
export class UnknownCommand extends Schema.TaggedError<UnknownCommand>()("UnknownCommand", {
  text: Schema.String,
  message: Schema.String
}) {}

/** A known command with arguments it cannot take. */
export class MalformedCommand extends Schema.TaggedError<MalformedCommand>()("MalformedCommand", {
  text: Schema.String,
  message: Schema.String
}) {}

export type CommandError = UnknownCommand | MalformedCommand

export function parseReplicationCommand(text: string): Result.Result<ReplicationCommand, CommandError> {
  const body = stripTerminator(text)
  const lexed = tokenize(body)
  if (typeof lexed === "string") return malformed(text, lexed)
  const tokens = new TokenStream(lexed)
  const first = tokens.next()
  if (first === undefined) return unknown(text, "empty query")
  if (first.kind !== "word") return unknown(text, `unsupported command ${text}`)
  let parsed: ReplicationCommand | string
  switch (first.text.toUpperCase()) {
    case "IDENTIFY_SYSTEM":
      parsed = { _tag: "IdentifySystem" }
      break
    case "TIMELINE_STATUS":
      parsed = { _tag: "TimelineStatus" }
      break
    case "SHOW":
      parsed = parseShow(tokens)
      break
    case "READ_REPLICATION_SLOT":
      parsed = parseReadReplicationSlot(tokens)
      break
    case "TIMELINE_HISTORY":
      parsed = parseTimelineHistory(tokens)
      break
    case "SET": {
      // Only datestyle; any other SET is as unknown to us as any other SQL.
      const setting = tokens.next()
      const to = tokens.next()
      const value = tokens.peek()
      if (setting?.kind !== "word" || setting.text.toLowerCase() !== "datestyle") return unknown(text, `unsupported command ${text}`)
      if (to === undefined || !(isKeyword(to, "TO") || isPunct(to, "=")) || value === undefined) return malformed(text, "expected SET datestyle TO <value>")
      return Result.succeed({ _tag: "SetDatestyle", value: body.slice(value.start).trim() })
    }
    case "START_WAL_PUSH":
      parsed = parseStartWalPush(tokens)
      break
    case "START_REPLICATION":
      parsed = parseStartReplication(tokens)
      break
    default:
      return unknown(text, `unsupported command ${text}`)
  }
  if (typeof parsed === "string") return malformed(text, parsed)
  const extra = tokens.next()
  if (extra !== undefined) return malformed(text, `unexpected ${describe(extra)} after ${first.text.toUpperCase()}`)
  return Result.succeed(parsed)
}

// ---- commands (each returns the command, or why its arguments are wrong) ----

function parseShow(tokens: TokenStream): ReplicationCommand | string {
  const name = tokens.next()
  if (name === undefined || (name.kind !== "word" && name.kind !== "identifier")) return "expected SHOW <setting>"
  // Setting names are case-insensitive in Postgres, quoted or not.
  const folded = name.text.toLowerCase()
  const known = KNOWN_SETTINGS.find((setting) => setting === folded)
  return known === undefined ? { _tag: "ShowUnknown", name: folded } : { _tag: "Show", name: known }
}

function parseReadReplicationSlot(tokens: TokenStream): ReplicationCommand | string {
  const slotName = readSlotName(tokens)
  return typeof slotName === "string" ? { _tag: "ReadReplicationSlot", slotName } : slotName.problem
}

function parseTimelineHistory(tokens: TokenStream): ReplicationCommand | string {
  const timelineId = readTimelineId(tokens, "TIMELINE_HISTORY")
  return typeof timelineId === "number" ? { _tag: "TimelineHistory", timelineId } : timelineId.problem
}

/**
 * `START_WAL_PUSH [ ( key 'value' [, ...] ) ]`, Neon's handler.rs: proto_version (a number)
 * and allow_timeline_creation (true|false); other keys are ignored, as Neon ignores them.
 */
function parseStartWalPush(tokens: TokenStream): ReplicationCommand | string {
  let protoVersion = START_WAL_PUSH_DEFAULT_PROTO_VERSION
  let allowTimelineCreation = true
  const options = readOptions(tokens, "START_WAL_PUSH")
  if (typeof options === "string") return options
  for (const [key, value] of options) {
    if (key === "proto_version") {
      const version = parseDecimal(value, 0xffff_ffff)
      if (version === undefined) return `proto_version '${value}' is not a number`
      protoVersion = version
    } else if (key === "allow_timeline_creation") {
      const flag = value.toLowerCase()
      if (flag !== "true" && flag !== "false") return `allow_timeline_creation '${value}' is not true or false`
      allowTimelineCreation = flag === "true"
    }
  }
  return { _tag: "StartWalPush", protoVersion, allowTimelineCreation }
}

/** `START_REPLICATION [SLOT s] [PHYSICAL] X/Y [TIMELINE n] [ (term='N') ]`. */
function parseStartReplication(tokens: TokenStream): ReplicationCommand | string {
  let slotName: string | undefined
  if (isKeyword(tokens.peek(), "SLOT")) {
    tokens.next()
    const slot = readSlotName(tokens)
    if (typeof slot !== "string") return slot.problem
    slotName = slot
  }
  if (isKeyword(tokens.peek(), "LOGICAL")) return "logical replication is not supported"
  if (isKeyword(tokens.peek(), "PHYSICAL")) tokens.next()
  const position = tokens.next()
  if (position?.kind !== "word") return "expected the start position X/Y"
  const startLsn = parseLsn(position.text)
  if (Result.isFailure(startLsn)) return `start position ${position.text}: ${startLsn.failure.message}`
  let timelineId: number | undefined
  if (isKeyword(tokens.peek(), "TIMELINE")) {
    tokens.next()
    const timeline = readTimelineId(tokens, "TIMELINE")
    if (typeof timeline !== "number") return timeline.problem
    timelineId = timeline
  }
  let term: Term | undefined
  const options = readOptions(tokens, "START_REPLICATION")
  if (typeof options === "string") return options
  for (const [key, value] of options) {
    if (key !== "term") continue
    const parsed = parseDecimal(value, U53_MAX)
    if (parsed === undefined) return `term '${value}' is not a number up to 2^53-1`
    term = Term(parsed)
  }
  return { _tag: "StartReplication", slotName, startLsn: startLsn.success, timelineId, term }
}

// ---- argument pieces ----

/** Postgres' ReplicationSlotValidateName: 1-63 of [a-z0-9_]. */
function readSlotName(tokens: TokenStream): string | { readonly problem: string } {
  const token = tokens.next()
  if (token === undefined || (token.kind !== "word" && token.kind !== "identifier")) return { problem: "expected a slot name" }
  const name = token.kind === "word" ? token.text.toLowerCase() : token.text
  if (name.length === 0 || name.length > SLOT_NAME_LENGTH_MAX_BYTES || !/^[a-z0-9_]+$/.test(name)) {
    return { problem: `replication slot name "${name}" must be 1-${SLOT_NAME_LENGTH_MAX_BYTES} lower-case letters, digits or underscores` }
  }
  return name
}

/** A timeline id: a decimal u32 above 0 (Postgres: "invalid timeline"). */
function readTimelineId(tokens: TokenStream, after: string): number | { readonly problem: string } {
  const token = tokens.next()
  const timelineId = token?.kind === "word" ? parseDecimal(token.text, 0xffff_ffff) : undefined
  if (timelineId === undefined || timelineId === 0) return { problem: `expected a timeline id (1 to 2^32-1) after ${after}` }
  return timelineId
}

/**
 * An optional parenthesized list `( key value, key = 'value', ... )`; keys fold to lower case,
 * values lose their quotes. Empty items are skipped, as Neon skips them.
 */
function readOptions(tokens: TokenStream, command: string): ReadonlyArray<readonly [string, string]> | string {
  if (!isPunct(tokens.peek(), "(")) return []
  tokens.next()
  const options: Array<readonly [string, string]> = []
  // Every step consumes a token, so the token count bounds the loop.
  for (;;) {
    const token = tokens.next()
    if (token === undefined) return `${command} options: missing )`
    if (isPunct(token, ")")) return options
    if (isPunct(token, ",")) continue
    if (token.kind !== "word" && token.kind !== "identifier") return `${command} options: expected a name, got ${describe(token)}`
    if (isPunct(tokens.peek(), "=")) tokens.next()
    const value = tokens.next()
    if (value === undefined || (value.kind !== "word" && value.kind !== "string")) return `${command} option ${token.text} needs a value`
    options.push([token.text.toLowerCase(), value.text])
    const after = tokens.peek()
    if (after !== undefined && !isPunct(after, ",") && !isPunct(after, ")")) return `${command} option ${token.text}: unexpected ${describe(after)}`
  }
}

/** Decimal digits only (no sign, no spaces), at most `max`. */
function parseDecimal(text: string, max: number): number | undefined {
  if (!/^[0-9]{1,16}$/.test(text)) return undefined
  const value = Number(text)
  return value <= max ? value : undefined
}

// ---- tokens ----

type Token =
  /** Unquoted text: keywords, names, numbers, LSNs. */
  | { readonly kind: "word"; readonly text: string; readonly start: number }
  /** "double quoted" ("" inside is one "). */
  | { readonly kind: "identifier"; readonly text: string; readonly start: number }
  /** 'single quoted' ('' inside is one '). */
  | { readonly kind: "string"; readonly text: string; readonly start: number }
  | { readonly kind: "punct"; readonly text: "(" | ")" | "," | "="; readonly start: number }

class TokenStream {
  private index = 0

  constructor(private readonly tokens: ReadonlyArray<Token>) {}

  peek(): Token | undefined {
    return this.tokens[this.index]
  }

  next(): Token | undefined {
    const token = this.tokens[this.index]
    if (token !== undefined) this.index++
    return token
  }
}

/** The tokens of `text`, or why it cannot be split (an unterminated quote, a stray character). */
function tokenize(text: string): ReadonlyArray<Token> | string {
  const tokens: Token[] = []
  let i = 0
  while (i < text.length) {
    const char = text[i]!
    if (isSpace(char)) {
      i++
    } else if (char === "(" || char === ")" || char === "," || char === "=") {
      tokens.push({ kind: "punct", text: char, start: i })
      i++
    } else if (char === "\"" || char === "'") {
      const quoted = readQuoted(text, i)
      if (quoted === undefined) return `unterminated ${char === "'" ? "quoted string" : "quoted identifier"} at offset ${i}`
      tokens.push({ kind: char === "'" ? "string" : "identifier", text: quoted.text, start: i })
      i = quoted.end
    } else if (char === ";") {
      return `unexpected ; at offset ${i}`
    } else {
      const start = i
      while (i < text.length && !isSpace(text[i]!) && !WORD_BREAKS.has(text[i]!)) i++
      tokens.push({ kind: "word", text: text.slice(start, i), start })
    }
  }
  return tokens
}

const WORD_BREAKS = new Set(["(", ")", ",", "=", "\"", "'", ";"])

/** A quoted run starting at `start` (the quote), with doubled quotes inside as one. */
function readQuoted(text: string, start: number): { readonly text: string; readonly end: number } | undefined {
  const quote = text[start]!
  let value = ""
  let i = start + 1
  while (i < text.length) {
    const char = text[i]!
    if (char === quote) {
      if (text[i + 1] === quote) {
        value += quote
        i += 2
        continue
      }
      return { text: value, end: i + 1 }
    }
    value += char
    i++
  }
  return undefined
}

function isSpace(char: string): boolean {
  return char === " " || char === "\t" || char === "\n" || char === "\r" || char === "\f" || char === "\v"
}

function isKeyword(token: Token | undefined, keyword: string): boolean {
  return token?.kind === "word" && token.text.toUpperCase() === keyword
}

function isPunct(token: Token | undefined, punct: string): boolean {
  return token?.kind === "punct" && token.text === punct
}

function describe(token: Token): string {
  switch (token.kind) {
    case "word":
      return token.text
    case "identifier":
      return `"${token.text}"`
    case "string":
      return `'${token.text}'`
    case "punct":
      return token.text
  }
}

/** Surrounding whitespace and one trailing semicolon. */
function stripTerminator(text: string): string {
  const trimmed = trimSpace(text)
  return trimmed.endsWith(";") ? trimSpace(trimmed.slice(0, -1)) : trimmed
}

function trimSpace(text: string): string {
  let start = 0
  let end = text.length
  while (start < end && isSpace(text[start]!)) start++
  while (end > start && isSpace(text[end - 1]!)) end--
  return text.slice(start, end)
}

function unknown(text: string, message: string): Result.Result<never, CommandError> {
  return Result.fail(new UnknownCommand({ text, message }))
}

function malformed(text: string, message: string): Result.Result<never, CommandError> {
  return Result.fail(new MalformedCommand({ text, message }))
}
