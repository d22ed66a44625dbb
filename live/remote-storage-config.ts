import { Effect, Layer, Result, Schema } from "effect"
import { RemoteStorage, remotePathProblem } from "../core/io/remote-storage.js"
import { localRemoteStorageLayer } from "./remote-storage-local.js"
// Type only: the S3 client is loaded when an S3 store is built, so commands using a local
// store (`sk wal fetch` as PostgreSQL's restore_command, once a segment) do not pay for it.
import type { S3Config } from "./remote-storage-s3.js"

/**
 * The `--remote-storage` flag (reference §13): where WAL backups go. Accepted forms:
 *
 * - a local directory: `/var/lib/sk/remote`, `./remote`, `local:///var/lib/sk/remote`;
 * - an S3 URL: `s3://bucket/prefix/in/bucket?region=eu-west-1&endpoint=http://127.0.0.1:9000`
 *   (an endpoint turns on path-style addressing, which MinIO and other non-AWS servers need;
 *   `force_path_style=false` turns it off again). Credentials never go in the flag (it shows
 *   in `ps`): they come from the SDK's standard chain (AWS_ACCESS_KEY_ID, profiles, IMDS);
 * - Neon's inline TOML table: `{ bucket_name = "b", bucket_region = "r", prefix_in_bucket = "p",
 *   endpoint = "http://...", timeout = "30s" }` or `{ local_path = "/x" }`.
 */
export type RemoteStorageConfig =
  | { readonly kind: "local"; readonly root: string }
  | { readonly kind: "s3"; readonly s3: S3Config }

export class RemoteStorageConfigError extends Schema.TaggedError<RemoteStorageConfigError>()("RemoteStorageConfigError", {
  input: Schema.String,
  message: Schema.String
}) {}

/** Longer flag values are refused before parsing (a config, not a file's contents). */
export const REMOTE_STORAGE_FLAG_BYTES_MAX = 16 * 1024

export function parseRemoteStorageFlag(text: string): Result.Result<RemoteStorageConfig, RemoteStorageConfigError> {
  const fail = (message: string) => Result.fail(new RemoteStorageConfigError({ input: text, message }))
  if (text.length > REMOTE_STORAGE_FLAG_BYTES_MAX) return fail(`longer than ${REMOTE_STORAGE_FLAG_BYTES_MAX} characters`)
  const trimmed = text.trim()
  if (trimmed.length === 0) return fail("empty: give a directory, an s3:// URL or a TOML table")
  if (trimmed.includes("\0")) return fail("contains a NUL character")
  if (trimmed.startsWith("{")) return fromToml(trimmed, fail)
  if (trimmed.startsWith("s3://")) return fromS3Url(trimmed, fail)
  if (trimmed.startsWith("local://")) {
    const root = trimmed.slice("local://".length)
    return root.length === 0 ? fail("local:// needs a path, as in local:///var/lib/sk/remote") : Result.succeed({ kind: "local", root })
  }
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(trimmed)
  if (scheme !== null) return fail(`unknown scheme ${JSON.stringify(scheme[1])}: use a directory, local://, s3:// or a TOML table`)
  return Result.succeed({ kind: "local", root: trimmed })
}

/** The RemoteStorage a config names. The S3 client module is imported only here, on first use. */
export function remoteStorageLayer(config: RemoteStorageConfig): Layer.Layer<RemoteStorage> {
  switch (config.kind) {
    case "local":
      return localRemoteStorageLayer(config.root)
    case "s3":
      return Layer.unwrap(
        Effect.map(Effect.promise(() => import("./remote-storage-s3.js")), (module) => module.s3RemoteStorageLayer(config.s3))
      )
  }
}

/** Parses the flag and gives its layer: what the CLI calls. */
export function remoteStorageLayerFromFlag(text: string): Result.Result<Layer.Layer<RemoteStorage>, RemoteStorageConfigError> {
  return Result.map(parseRemoteStorageFlag(text), remoteStorageLayer)
}

/** The flag value that parses back to `config` (for `sk local` handing it to its safekeepers, and logs). */
export function formatRemoteStorageFlag(config: RemoteStorageConfig): string {
  if (config.kind === "local") return config.root.startsWith("{") || /^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(config.root) ? `local://${config.root}` : config.root
  const s3 = config.s3
  const query = new URLSearchParams()
  if (s3.region !== undefined) query.set("region", s3.region)
  if (s3.endpoint !== undefined) query.set("endpoint", s3.endpoint)
  // Written unless the parser would infer it (true from an endpoint).
  if (s3.forcePathStyle !== undefined && !(s3.endpoint !== undefined && s3.forcePathStyle)) query.set("force_path_style", String(s3.forcePathStyle))
  if (s3.requestTimeoutMs !== undefined) query.set("timeout", `${s3.requestTimeoutMs}ms`)
  const search = query.toString()
  const prefix = s3.prefixInBucket !== undefined && s3.prefixInBucket.length > 0 ? `/${s3.prefixInBucket}` : ""
  return `s3://${s3.bucket}${prefix}${search.length > 0 ? `?${search}` : ""}`
}

// ---------------------------------------------------------------------------------------------
// The forms

type Fail = (message: string) => Result.Result<never, RemoteStorageConfigError>

interface S3Fields {
  readonly bucket: string
  readonly prefix: string
  readonly region?: string | undefined
  readonly endpoint?: string | undefined
  readonly forcePathStyle?: boolean | undefined
  readonly timeout?: string | undefined
}

function fromS3Url(text: string, fail: Fail): Result.Result<RemoteStorageConfig, RemoteStorageConfigError> {
  const rest = text.slice("s3://".length)
  const questionMark = rest.indexOf("?")
  const location = questionMark < 0 ? rest : rest.slice(0, questionMark)
  const slash = location.indexOf("/")
  const bucket = slash < 0 ? location : location.slice(0, slash)
  const prefix = slash < 0 ? "" : location.slice(slash + 1)
  const known = new Set(["region", "endpoint", "force_path_style", "timeout"])
  const query = new URLSearchParams(questionMark < 0 ? "" : rest.slice(questionMark + 1))
  const seen = new Set<string>()
  for (const key of query.keys()) {
    if (!known.has(key)) return fail(`unknown query parameter ${JSON.stringify(key)} (known: ${[...known].join(", ")})`)
    if (seen.has(key)) return fail(`query parameter ${JSON.stringify(key)} given twice`)
    seen.add(key)
  }
  const forcePathStyle = query.get("force_path_style")
  if (forcePathStyle !== null && forcePathStyle !== "true" && forcePathStyle !== "false") return fail(`force_path_style must be true or false, not ${JSON.stringify(forcePathStyle)}`)
  return s3Config({
    bucket,
    prefix,
    region: query.get("region") ?? undefined,
    endpoint: query.get("endpoint") ?? undefined,
    forcePathStyle: forcePathStyle === null ? undefined : forcePathStyle === "true",
    timeout: query.get("timeout") ?? undefined
  }, fail)
}

const TOML_KEYS = ["local_path", "bucket_name", "bucket_region", "prefix_in_bucket", "endpoint", "timeout"] as const
type TomlKey = typeof TOML_KEYS[number]

function fromToml(text: string, fail: Fail): Result.Result<RemoteStorageConfig, RemoteStorageConfigError> {
  const table = parseInlineTable(text)
  if (typeof table === "string") return fail(`bad TOML table: ${table}`)
  const fields = new Map<TomlKey, string>()
  for (const [key, value] of table) {
    const known = TOML_KEYS.find((candidate) => candidate === key)
    if (known === undefined) return fail(`unknown key ${JSON.stringify(key)} (known: ${TOML_KEYS.join(", ")})`)
    if (typeof value !== "string") return fail(`${key} must be a string`)
    fields.set(known, value)
  }
  const localPath = fields.get("local_path")
  const bucket = fields.get("bucket_name")
  if (localPath !== undefined) {
    if (fields.size > 1) return fail("local_path cannot be combined with S3 keys")
    return localPath.length === 0 ? fail("local_path is empty") : Result.succeed({ kind: "local", root: localPath })
  }
  if (bucket === undefined) return fail("needs local_path or bucket_name")
  // Neon requires the region in this form; the s3:// form may leave it to the SDK's chain.
  const region = fields.get("bucket_region")
  if (region === undefined) return fail("bucket_region is required with bucket_name")
  return s3Config({
    bucket,
    prefix: fields.get("prefix_in_bucket") ?? "",
    region,
    endpoint: fields.get("endpoint"),
    timeout: fields.get("timeout")
  }, fail)
}

/** Checks the parts both S3 forms share and builds the config. */
function s3Config(fields: S3Fields, fail: Fail): Result.Result<RemoteStorageConfig, RemoteStorageConfigError> {
  const bucketProblem = s3BucketNameProblem(fields.bucket)
  if (bucketProblem !== undefined) return fail(`bad bucket name ${JSON.stringify(fields.bucket)}: ${bucketProblem}`)
  // Neon joins prefix_in_bucket and the object path with "/"; surrounding slashes add nothing.
  const prefixInBucket = fields.prefix.replace(/^\/+|\/+$/g, "")
  if (prefixInBucket.length > 0) {
    const problem = remotePathProblem(prefixInBucket)
    if (problem !== undefined) return fail(`bad prefix in bucket ${JSON.stringify(fields.prefix)}: ${problem}`)
  }
  if (fields.region !== undefined && !/^[a-z0-9][a-z0-9-]{0,62}$/.test(fields.region)) return fail(`bad region ${JSON.stringify(fields.region)}`)
  if (fields.endpoint !== undefined) {
    const problem = endpointProblem(fields.endpoint)
    if (problem !== undefined) return fail(`bad endpoint ${JSON.stringify(fields.endpoint)}: ${problem}`)
  }
  let requestTimeoutMs: number | undefined
  if (fields.timeout !== undefined) {
    const parsed = parseDurationMs(fields.timeout)
    if (parsed === undefined) return fail(`bad timeout ${JSON.stringify(fields.timeout)}: use a duration such as 30s, 2m or 500ms`)
    requestTimeoutMs = parsed
  }
  const s3: S3Config = {
    bucket: fields.bucket,
    ...(prefixInBucket.length > 0 ? { prefixInBucket } : {}),
    ...(fields.region !== undefined ? { region: fields.region } : {}),
    ...(fields.endpoint !== undefined ? { endpoint: fields.endpoint } : {}),
    // Servers other than AWS rarely have a DNS name per bucket, so an endpoint means path style.
    ...(fields.forcePathStyle !== undefined || fields.endpoint !== undefined ? { forcePathStyle: fields.forcePathStyle ?? true } : {}),
    ...(requestTimeoutMs !== undefined ? { requestTimeoutMs } : {})
  }
  return Result.succeed({ kind: "s3", s3 })
}

/** AWS's rules for bucket names (general purpose buckets), so a typo fails at start, not at the first upload. */
function s3BucketNameProblem(bucket: string): string | undefined {
  if (bucket.length < 3 || bucket.length > 63) return "must be 3 to 63 characters"
  if (!/^[a-z0-9][a-z0-9.-]*[a-z0-9]$/.test(bucket)) return "only lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit"
  if (bucket.includes("..")) return "two dots in a row"
  if (/^\d+\.\d+\.\d+\.\d+$/.test(bucket)) return "looks like an IP address"
  return undefined
}

function endpointProblem(endpoint: string): string | undefined {
  if (!URL.canParse(endpoint)) return "not a URL"
  const url = new URL(endpoint)
  if (url.protocol !== "http:" && url.protocol !== "https:") return "must be http:// or https://"
  if (url.hostname.length === 0) return "no host"
  if (url.username.length > 0 || url.password.length > 0) return "credentials do not go in the endpoint (use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
  if (url.search.length > 0 || url.hash.length > 0) return "no query or fragment"
  return undefined
}

const DURATION_UNIT_MS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }
/** Longest timeout accepted: a day (a longer one is a typo, and would hide a hung server). */
const TIMEOUT_MS_MAX = 86_400_000

/** `500ms`, `30s`, `2m`, `1h` (humantime's common units, as Neon's config uses). */
function parseDurationMs(text: string): number | undefined {
  const match = /^(\d{1,9})(ms|s|m|h)$/.exec(text.trim())
  if (match === null) return undefined
  const unit = DURATION_UNIT_MS[match[2] ?? ""]
  if (unit === undefined) return undefined
  const ms = Number(match[1]) * unit
  return ms > 0 && ms <= TIMEOUT_MS_MAX ? ms : undefined
}

// ---------------------------------------------------------------------------------------------
// Inline TOML tables: the subset Neon's flag uses (bare or quoted keys; basic and literal
// strings, integers, booleans as values). Returns the pairs in order, or what is wrong.

type TomlValue = string | number | boolean

function parseInlineTable(text: string): ReadonlyArray<readonly [string, TomlValue]> | string {
  let at = 0
  const pairs: Array<readonly [string, TomlValue]> = []
  const keys = new Set<string>()
  const skipSpace = (): void => {
    while (at < text.length && (text[at] === " " || text[at] === "\t")) at++
  }
  const expect = (character: string): string | undefined => {
    skipSpace()
    if (text[at] !== character) return `expected ${JSON.stringify(character)} at offset ${at}`
    at++
    return undefined
  }
  const opening = expect("{")
  if (opening !== undefined) return opening
  skipSpace()
  if (text[at] === "}") {
    at++
  } else {
    // Each round consumes at least one character, so the loop is bounded by the text's length.
    for (;;) {
      skipSpace()
      const key = parseKey()
      if (typeof key !== "string") return key.problem
      if (keys.has(key)) return `key ${JSON.stringify(key)} given twice`
      keys.add(key)
      const equals = expect("=")
      if (equals !== undefined) return equals
      skipSpace()
      const value = parseValue()
      if (typeof value === "object") return value.problem
      pairs.push([key, value])
      skipSpace()
      if (text[at] === ",") {
        at++
        continue
      }
      const closing = expect("}")
      if (closing !== undefined) return closing
      break
    }
  }
  skipSpace()
  if (at !== text.length) return `unexpected text after the table at offset ${at}`
  return pairs

  function parseKey(): string | { readonly problem: string } {
    if (text[at] === "\"" || text[at] === "'") {
      return parseString()
    }
    const match = /^[A-Za-z0-9_-]+/.exec(text.slice(at))
    if (match === null) return { problem: `expected a key at offset ${at}` }
    at += match[0].length
    return match[0]
  }

  function parseValue(): TomlValue | { readonly problem: string } {
    if (text[at] === "\"" || text[at] === "'") return parseString()
    const match = /^(true|false|[+-]?\d[\d_]*)/.exec(text.slice(at))
    if (match === null) return { problem: `expected a string, an integer or a boolean at offset ${at}` }
    at += match[0].length
    if (match[0] === "true" || match[0] === "false") return match[0] === "true"
    const value = Number(match[0].replace(/_/g, ""))
    return Number.isSafeInteger(value) ? value : { problem: `integer ${match[0]} out of range` }
  }

  function parseString(): string | { readonly problem: string } {
    const quote = text[at]
    const start = at
    at++
    let value = ""
    while (at < text.length) {
      const character = text[at] ?? ""
      at++
      if (character === quote) return value
      if (character === "\n" || character === "\r") return { problem: `newline in the string at offset ${start}` }
      if (character !== "\\" || quote === "'") {
        value += character
        continue
      }
      const escape = text[at] ?? ""
      at++
      const simple: Readonly<Record<string, string>> = { "\"": "\"", "\\": "\\", b: "\b", t: "\t", n: "\n", f: "\f", r: "\r" }
      const replacement = simple[escape]
      if (replacement !== undefined) {
        value += replacement
        continue
      }
      const digitCount = escape === "u" ? 4 : escape === "U" ? 8 : 0
      const hex = text.slice(at, at + digitCount)
      if (digitCount === 0 || !/^[0-9A-Fa-f]+$/.test(hex) || hex.length !== digitCount) return { problem: `bad escape at offset ${at - 2}` }
      const codePoint = Number.parseInt(hex, 16)
      if (codePoint > 0x10ffff || (codePoint >= 0xd800 && codePoint <= 0xdfff)) return { problem: `bad code point at offset ${at - 2}` }
      value += String.fromCodePoint(codePoint)
      at += digitCount
    }
    return { problem: `unterminated string at offset ${start}` }
  }
}
