// Goal: every form of `--remote-storage` parses to the config it names, bad values get a typed
// error with a message that says what is wrong, and no input makes the parser throw. Method:
// examples for each form and each refusal, fast-check over random strings (and over strings
// built near the grammar, where bugs hide), and a round trip through formatRemoteStorageFlag.
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Effect, Layer, Result } from "effect"
import fc from "fast-check"
import { describe, expect, test } from "vitest"
import { bytesBody, RemoteStorage } from "../core/io/remote-storage.js"
import {
  formatRemoteStorageFlag,
  parseRemoteStorageFlag,
  type RemoteStorageConfig,
  RemoteStorageConfigError,
  remoteStorageLayerFromFlag
} from "./remote-storage-config.js"

const parsed = (text: string): RemoteStorageConfig => {
  const result = parseRemoteStorageFlag(text)
  if (Result.isFailure(result)) throw new Error(`expected ${JSON.stringify(text)} to parse: ${result.failure.message}`)
  return result.success
}
const refusal = (text: string): string => {
  const result = parseRemoteStorageFlag(text)
  if (Result.isSuccess(result)) throw new Error(`expected ${JSON.stringify(text)} to be refused, got ${JSON.stringify(result.success)}`)
  expect(result.failure).toBeInstanceOf(RemoteStorageConfigError)
  expect(result.failure.input).toBe(text)
  return result.failure.message
}

describe("local directories", () => {
  test("a path, relative or absolute, and local://", () => {
    expect(parsed("/var/lib/sk/remote")).toEqual({ kind: "local", root: "/var/lib/sk/remote" })
    expect(parsed("./x")).toEqual({ kind: "local", root: "./x" })
    expect(parsed("remote")).toEqual({ kind: "local", root: "remote" })
    expect(parsed("  /padded  ")).toEqual({ kind: "local", root: "/padded" })
    expect(parsed("local:///var/lib/sk/remote")).toEqual({ kind: "local", root: "/var/lib/sk/remote" })
    expect(parsed("local://relative/dir")).toEqual({ kind: "local", root: "relative/dir" })
    expect(parsed("{ local_path = \"/x\" }")).toEqual({ kind: "local", root: "/x" })
    expect(parsed("{local_path='/with \"quotes\"'}")).toEqual({ kind: "local", root: "/with \"quotes\"" })
  })

  test("refusals", () => {
    expect(refusal("")).toMatch(/empty/)
    expect(refusal("   ")).toMatch(/empty/)
    expect(refusal("local://")).toMatch(/needs a path/)
    expect(refusal("gs://bucket/x")).toMatch(/unknown scheme "gs"/)
    expect(refusal("/a\0b")).toMatch(/NUL/)
    expect(refusal("{ local_path = \"\" }")).toMatch(/empty/)
    expect(refusal("{ local_path = \"/x\", bucket_name = \"bkt\" }")).toMatch(/cannot be combined/)
    expect(refusal("x".repeat(20_000))).toMatch(/longer than/)
  })
})

describe("s3:// URLs", () => {
  test("bucket, prefix, region, endpoint; an endpoint means path style", () => {
    expect(parsed("s3://my-bucket")).toEqual({ kind: "s3", s3: { bucket: "my-bucket" } })
    expect(parsed("s3://my-bucket/")).toEqual({ kind: "s3", s3: { bucket: "my-bucket" } })
    expect(parsed("s3://my-bucket/wal/prod/?region=eu-west-1")).toEqual({
      kind: "s3",
      s3: { bucket: "my-bucket", prefixInBucket: "wal/prod", region: "eu-west-1" }
    })
    expect(parsed("s3://bkt/p?region=us-east-1&endpoint=http://127.0.0.1:9000")).toEqual({
      kind: "s3",
      s3: { bucket: "bkt", prefixInBucket: "p", region: "us-east-1", endpoint: "http://127.0.0.1:9000", forcePathStyle: true }
    })
    expect(parsed("s3://bkt?endpoint=https://s3.example.com&force_path_style=false&timeout=30s")).toEqual({
      kind: "s3",
      s3: { bucket: "bkt", endpoint: "https://s3.example.com", forcePathStyle: false, requestTimeoutMs: 30_000 }
    })
    expect(parsed("s3://bkt?force_path_style=true")).toEqual({ kind: "s3", s3: { bucket: "bkt", forcePathStyle: true } })
  })

  test("refusals say what is wrong", () => {
    expect(refusal("s3://")).toMatch(/bad bucket name "": must be 3 to 63/)
    expect(refusal("s3://ab")).toMatch(/3 to 63/)
    expect(refusal("s3://My_Bucket")).toMatch(/lowercase/)
    expect(refusal("s3://a..b")).toMatch(/two dots/)
    expect(refusal("s3://192.168.1.1")).toMatch(/IP address/)
    expect(refusal("s3://bkt/a//b")).toMatch(/bad prefix in bucket "a\/\/b": empty path component/)
    expect(refusal("s3://bkt/a/../b")).toMatch(/bad prefix/)
    expect(refusal("s3://bkt?region=EU WEST")).toMatch(/bad region/)
    expect(refusal("s3://bkt?endpoint=127.0.0.1:9000")).toMatch(/bad endpoint .*(http|URL)/)
    expect(refusal("s3://bkt?endpoint=ftp://h")).toMatch(/http:\/\/ or https:\/\//)
    expect(refusal("s3://bkt?endpoint=http://key:secret@h")).toMatch(/credentials do not go in the endpoint/)
    expect(refusal("s3://bkt?bucket=x")).toMatch(/unknown query parameter "bucket"/)
    expect(refusal("s3://bkt?region=a&region=b")).toMatch(/given twice/)
    expect(refusal("s3://bkt?force_path_style=yes")).toMatch(/true or false/)
    expect(refusal("s3://bkt?timeout=soon")).toMatch(/bad timeout/)
    expect(refusal("s3://bkt?timeout=0s")).toMatch(/bad timeout/)
  })
})

describe("Neon's inline TOML", () => {
  test("the S3 keys", () => {
    expect(parsed("{ bucket_name = \"b-1\", bucket_region = \"eu-central-1\", prefix_in_bucket = \"/safekeeper/\", endpoint = \"http://minio:9000\" }")).toEqual({
      kind: "s3",
      s3: { bucket: "b-1", prefixInBucket: "safekeeper", region: "eu-central-1", endpoint: "http://minio:9000", forcePathStyle: true }
    })
    expect(parsed("{bucket_name='bkt',bucket_region='r1',timeout='2m'}")).toEqual({
      kind: "s3",
      s3: { bucket: "bkt", region: "r1", requestTimeoutMs: 120_000 }
    })
    expect(parsed("{ \"bucket_name\" = \"b\\u0061c\", bucket_region = \"r\" }")).toEqual({ kind: "s3", s3: { bucket: "bac", region: "r" } })
  })

  test("refusals", () => {
    expect(refusal("{ bucket_name = \"bkt\" }")).toMatch(/bucket_region is required/)
    expect(refusal("{ }")).toMatch(/needs local_path or bucket_name/)
    expect(refusal("{ bucket_name = \"bkt\", bucket_region = \"r\", colour = \"red\" }")).toMatch(/unknown key "colour"/)
    expect(refusal("{ local_path = \"/a\", local_path = \"/b\" }")).toMatch(/given twice/)
    expect(refusal("{ local_path = 5 }")).toMatch(/must be a string/)
    expect(refusal("{ local_path = \"/x\"")).toMatch(/bad TOML table: expected "}"/)
    expect(refusal("{ local_path = \"/x }")).toMatch(/unterminated string/)
    expect(refusal("{ local_path = \"\\q\" }")).toMatch(/bad escape/)
    expect(refusal("{ local_path = \"\\uD800\" }")).toMatch(/bad code point/)
    expect(refusal("{ local_path = \"/x\" } trailing")).toMatch(/unexpected text after the table/)
    expect(refusal("{ = \"/x\" }")).toMatch(/expected a key/)
    expect(refusal("{ local_path \"/x\" }")).toMatch(/expected "="/)
    expect(refusal("{ local_path = [1] }")).toMatch(/expected a string, an integer or a boolean/)
    expect(refusal("{ bucket_name = \"BAD\", bucket_region = \"r\" }")).toMatch(/bad bucket name/)
  })
})

describe("properties", () => {
  const neverThrows = (text: string): boolean => {
    const result = parseRemoteStorageFlag(text)
    return Result.isSuccess(result) || (result.failure instanceof RemoteStorageConfigError && result.failure.message.length > 0)
  }

  test("any string: a config or a typed error, never a throw", () => {
    fc.assert(fc.property(fc.string({ unit: "binary", maxLength: 200 }), neverThrows), { numRuns: 2000 })
  })

  test("strings near the grammar: a config or a typed error, never a throw", () => {
    const piece = fc.constantFrom("{", "}", "=", ",", "\"", "'", "\\", "\\u", "\\U0010FFFF", " ", "local_path", "bucket_name", "bucket_region",
      "prefix_in_bucket", "endpoint", "timeout", "s3://", "local://", "?", "&", "region=", "endpoint=", "http://", "bkt", "/", "..", "1", "true", "30s", "\0", "\n")
    fc.assert(fc.property(fc.array(piece, { maxLength: 30 }).map((pieces) => pieces.join("")), neverThrows), { numRuns: 3000 })
  })

  test("format then parse gives the config back", () => {
    const bucket = fc.stringMatching(/^[a-z0-9][a-z0-9-]{1,20}[a-z0-9]$/)
    const part = fc.stringMatching(/^[A-Za-z0-9_.-]{1,8}$/).filter((p) => p !== "." && p !== "..")
    const s3 = fc.record({
      bucket,
      prefixInBucket: fc.option(fc.array(part, { minLength: 1, maxLength: 3 }).map((parts) => parts.join("/")), { nil: undefined }),
      region: fc.option(fc.constantFrom("us-east-1", "eu-west-1"), { nil: undefined }),
      endpoint: fc.option(fc.constantFrom("http://127.0.0.1:9000", "https://s3.example.com"), { nil: undefined }),
      forcePathStyle: fc.option(fc.boolean(), { nil: undefined }),
      requestTimeoutMs: fc.option(fc.integer({ min: 1, max: 86_400_000 }), { nil: undefined })
    }).map((fields): RemoteStorageConfig => {
      // Absent fields are absent keys, as the parser builds them; an endpoint implies path style.
      const entries = Object.entries({ ...fields, forcePathStyle: fields.forcePathStyle ?? (fields.endpoint !== undefined ? true : undefined) })
      return { kind: "s3", s3: { bucket: fields.bucket, ...Object.fromEntries(entries.filter(([, value]) => value !== undefined)) } }
    })
    const local = fc.string({ minLength: 1, maxLength: 30 })
      .filter((root) => root.trim() === root && root.length > 0 && !root.includes("\0"))
      .map((root): RemoteStorageConfig => ({ kind: "local", root }))
    fc.assert(fc.property(fc.oneof(s3, local), (config) => {
      expect(parsed(formatRemoteStorageFlag(config))).toEqual(config)
    }), { numRuns: 1000 })
  })
})

describe("layers", () => {
  test("a local flag gives a working store", async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "sk-remote-config-"))
    try {
      const layer = remoteStorageLayerFromFlag(`local://${root}`)
      if (Result.isFailure(layer)) throw new Error(layer.failure.message)
      await Effect.runPromise(Effect.provide(
        Effect.gen(function*() {
          const storage = yield* RemoteStorage
          yield* storage.put("a/b", bytesBody(new Uint8Array([1, 2, 3])), 3)
        }),
        layer.success
      ))
      expect([...fs.readFileSync(path.join(root, "a", "b"))]).toEqual([1, 2, 3])
    } finally {
      fs.rmSync(root, { recursive: true, force: true })
    }
  })

  test("an s3 flag gives a layer that builds (the client is made lazily, no request sent)", async () => {
    const layer = remoteStorageLayerFromFlag("s3://bkt/p?region=us-east-1&endpoint=http://127.0.0.1:1")
    if (Result.isFailure(layer)) throw new Error(layer.failure.message)
    await Effect.runPromise(Effect.scoped(Effect.asVoid(Layer.build(layer.success))))
  })

  test("a bad flag is a typed error, not a layer", () => {
    const layer = remoteStorageLayerFromFlag("s3://x")
    expect(Result.isFailure(layer) && layer.failure._tag).toBe("RemoteStorageConfigError")
  })
})
