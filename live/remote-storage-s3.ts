import { Readable } from "node:stream"
import {
  CopyObjectCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig
} from "@aws-sdk/client-s3"
import { Effect, Layer, Stream } from "effect"
import { assert } from "../core/assert.js"
import { type ByteRange, RemoteStorage, RemoteStorageError, type RemoteObject, type RemoteStorageErrorReason, remotePathProblem } from "../core/io/remote-storage.js"

/**
 * Object storage in an S3 bucket (Neon's `S3Bucket`) through `@aws-sdk/client-s3`: the object
 * `<RemotePath>` is the key `<prefixInBucket>/<RemotePath>`. Works against AWS and S3-compatible
 * servers (MinIO, s3rver) given an endpoint and path-style addressing.
 */
export interface S3Credentials {
  readonly accessKeyId: string
  readonly secretAccessKey: string
  readonly sessionToken?: string
}

export interface S3Config {
  readonly bucket: string
  /** Keys are `<prefixInBucket>/<path>`; no leading or trailing "/". */
  readonly prefixInBucket?: string
  /** Absent: the SDK's chain (AWS_REGION, profiles). */
  readonly region?: string
  /** Absent: AWS. An S3-compatible server's URL otherwise. */
  readonly endpoint?: string
  readonly forcePathStyle?: boolean
  /** Absent: the SDK's standard chain (environment, profiles, IMDS, ...). */
  readonly credentials?: S3Credentials
  /** Attempts per call, SDK retries included (the caller retries Transient errors on its own too). */
  readonly maxAttempts?: number
  readonly connectionTimeoutMs?: number
  /** Whole request, body included. */
  readonly requestTimeoutMs?: number
}

export const S3_CONNECTION_TIMEOUT_MS_DEFAULT = 10_000
/** 16 MiB at a poor 1 MiB/s, with room to spare. */
export const S3_REQUEST_TIMEOUT_MS_DEFAULT = 120_000
export const S3_MAX_ATTEMPTS_DEFAULT = 3
/** The region signed for when an endpoint is given without one. */
export const S3_REGION_FOR_ENDPOINTS = "us-east-1"
/** ListObjectsV2 returns at most 1000 keys a page; this bounds the pages of one list. */
export const S3_LIST_PAGES_MAX = 10_000
/** A single get returns at most this much (a Buffer cannot pass 4 GiB; segments are 16 MiB). */
export const S3_GET_BYTES_MAX = 1024 * 1024 * 1024
/** S3's limit for a single PutObject. */
export const S3_PUT_BYTES_MAX = 5 * 1024 * 1024 * 1024
assert(S3_GET_BYTES_MAX <= S3_PUT_BYTES_MAX, "a get can hold what a put can store, up to its own bound")

export function makeS3RemoteStorage(client: S3Client, config: S3Config): RemoteStorage["Service"] {
  const bucket = config.bucket
  const rootPrefix = config.prefixInBucket !== undefined && config.prefixInBucket.length > 0 ? `${config.prefixInBucket}/` : ""
  const keyOf = (path: string): string => `${rootPrefix}${path}`

  return RemoteStorage.of({
    put: <E>(path: string, body: Stream.Stream<Uint8Array, E>, lengthBytes: number) =>
      Effect.gen(function*() {
        yield* checkObjectPath("put", path)
        if (!Number.isSafeInteger(lengthBytes) || lengthBytes < 0 || lengthBytes > S3_PUT_BYTES_MAX) {
          return yield* permanent("put", path, `declared length ${lengthBytes} is not an integer in [0, ${S3_PUT_BYTES_MAX}]`)
        }
        if (lengthBytes === 0) {
          // Nothing to stream: the body only has to be empty. (A zero-length streamed request
          // body hangs some servers, s3rver among them.)
          yield* Stream.runForEach(body, (chunk) => chunk.length === 0 ? Effect.void : lengthMismatch(path, 0, "a non-empty body"))
          yield* send("put", path, (signal) =>
            client.send(new PutObjectCommand({ Bucket: bucket, Key: keyOf(path), Body: new Uint8Array(0), ContentLength: 0 }), { abortSignal: signal })
          )
          return
        }
        // The body's own failure (E) or a length mismatch is recorded here and aborts the
        // request: the SDK only sees its Readable destroyed, and would otherwise wait for the
        // rest of the declared length until the request timeout.
        const bodyFailure: { error?: E | RemoteStorageError } = {}
        const bodyAborter = new AbortController()
        const readable = Readable.from(exactLength(path, body, lengthBytes, bodyFailure, () => bodyAborter.abort()), { objectMode: false })
        // The reason reaches the caller through bodyFailure; once the request is aborted nothing
        // else listens to the body, and an unheard 'error' event would crash the process.
        readable.on("error", () => undefined)
        const sent = send("put", path, (signal) =>
          client.send(
            new PutObjectCommand({ Bucket: bucket, Key: keyOf(path), Body: readable, ContentLength: lengthBytes }),
            { abortSignal: AbortSignal.any([signal, bodyAborter.signal]) }
          )
        ).pipe(Effect.ensuring(Effect.sync(() => readable.destroy())))
        yield* Effect.catch(sent, (error) => Effect.fail(bodyFailure.error ?? error))
        if (bodyFailure.error !== undefined) return yield* Effect.fail(bodyFailure.error)
      }),

    get: (path, range) =>
      Effect.gen(function*() {
        yield* checkObjectPath("get", path)
        if (range !== undefined) yield* checkRange(path, range)
        const startBytes = range?.startBytes ?? 0
        const endBytes = range?.endBytes
        // S3 cannot express an empty range; an object's existence is all there is to learn.
        if (endBytes !== undefined && endBytes === startBytes) {
          yield* send("get", path, (signal) => client.send(new HeadObjectCommand({ Bucket: bucket, Key: keyOf(path) }), { abortSignal: signal }))
          return new Uint8Array(0)
        }
        if (endBytes !== undefined && endBytes - startBytes > S3_GET_BYTES_MAX) {
          return yield* permanent("get", path, `range of ${endBytes - startBytes} bytes is over ${S3_GET_BYTES_MAX}`)
        }
        // No Range header for a whole object: `bytes=0-` on an empty object is a 416.
        const rangeHeader = startBytes === 0 && endBytes === undefined ? undefined : `bytes=${startBytes}-${endBytes === undefined ? "" : endBytes - 1}`
        const received = yield* send("get", path, async (signal) => {
          const response = await client.send(new GetObjectCommand({ Bucket: bucket, Key: keyOf(path), Range: rangeHeader }), { abortSignal: signal })
          if (response.ContentLength !== undefined && response.ContentLength > S3_GET_BYTES_MAX) {
            throw Object.assign(new Error(`object part of ${response.ContentLength} bytes is over ${S3_GET_BYTES_MAX}`), { name: "ObjectTooLarge" })
          }
          const bytes = response.Body === undefined ? new Uint8Array(0) : await response.Body.transformToByteArray()
          return { bytes, partial: response.ContentRange !== undefined }
        }).pipe(
          // 416: the object exists and the range starts at or past its end: the range is cut
          // there, so the answer is empty (core/io/remote-storage.ts).
          Effect.catchIf((error) => error.message.startsWith("InvalidRange"), () => Effect.succeed({ bytes: new Uint8Array(0), partial: true }))
        )
        // A server that ignored the Range header sent the whole object: cut it here.
        if (rangeHeader !== undefined && !received.partial) {
          return received.bytes.subarray(Math.min(startBytes, received.bytes.length), Math.min(endBytes ?? received.bytes.length, received.bytes.length))
        }
        const expectedBytes = endBytes === undefined ? undefined : endBytes - startBytes
        if (expectedBytes !== undefined && received.bytes.length > expectedBytes) {
          return yield* permanent("get", path, `asked for ${expectedBytes} bytes, got ${received.bytes.length}`)
        }
        return received.bytes
      }),

    list: (prefix) =>
      Effect.gen(function*() {
        if (prefix.startsWith("/")) return yield* permanent("list", prefix, "bad prefix: absolute path")
        const objects: RemoteObject[] = []
        let continuationToken: string | undefined
        for (let page = 0; ; page++) {
          if (page >= S3_LIST_PAGES_MAX) return yield* permanent("list", prefix, `more than ${S3_LIST_PAGES_MAX} pages of objects`)
          const token = continuationToken
          const response = yield* send("list", prefix, (signal) =>
            client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: keyOf(prefix), ContinuationToken: token }), { abortSignal: signal })
          )
          for (const entry of response.Contents ?? []) {
            if (entry.Key === undefined || !entry.Key.startsWith(rootPrefix)) continue
            const path = entry.Key.slice(rootPrefix.length)
            // Keys written by other tools that are not RemotePaths ("a//b") name no object of ours.
            if (remotePathProblem(path) !== undefined) continue
            objects.push({ path, sizeBytes: entry.Size ?? 0 })
          }
          if (response.IsTruncated !== true) break
          if (response.NextContinuationToken === undefined) return yield* permanent("list", prefix, "a truncated page without a continuation token")
          continuationToken = response.NextContinuationToken
        }
        // S3 lists in UTF-8 byte order already; sorting again costs little and guards other servers.
        const keyed = objects.map((object) => ({ object, key: Buffer.from(object.path) }))
        return keyed.sort((a, b) => Buffer.compare(a.key, b.key)).map(({ object }) => object)
      }),

    delete: (path) =>
      Effect.gen(function*() {
        yield* checkObjectPath("delete", path)
        // S3 answers 204 for an absent key too: deletes are idempotent there already.
        yield* send("delete", path, (signal) => client.send(new DeleteObjectCommand({ Bucket: bucket, Key: keyOf(path) }), { abortSignal: signal })).pipe(
          Effect.catchIf((error) => error.reason === "NotFound", () => Effect.void)
        )
      }),

    copy: (from, to) =>
      Effect.gen(function*() {
        yield* checkObjectPath("copy", from)
        yield* checkObjectPath("copy", to)
        // CopySource is "<bucket>/<key>", URL-encoded, with the "/" of the key kept.
        const source = `${bucket}/${keyOf(from).split("/").map(encodeURIComponent).join("/")}`
        yield* send("copy", from, (signal) => client.send(new CopyObjectCommand({ Bucket: bucket, Key: keyOf(to), CopySource: source }), { abortSignal: signal }))
      })
  })
}

/** The S3 client for a config: timeouts and retries bounded, checksums as S3-compatible servers take them. */
export function makeS3Client(config: S3Config): S3Client {
  const clientConfig: S3ClientConfig = {
    // S3-compatible servers take any region for signing; AWS without one falls to the SDK's chain.
    ...(config.region !== undefined ? { region: config.region } : config.endpoint !== undefined ? { region: S3_REGION_FOR_ENDPOINTS } : {}),
    ...(config.endpoint !== undefined ? { endpoint: config.endpoint } : {}),
    forcePathStyle: config.forcePathStyle ?? config.endpoint !== undefined,
    ...(config.credentials !== undefined ? { credentials: config.credentials } : {}),
    maxAttempts: config.maxAttempts ?? S3_MAX_ATTEMPTS_DEFAULT,
    requestHandler: {
      connectionTimeout: config.connectionTimeoutMs ?? S3_CONNECTION_TIMEOUT_MS_DEFAULT,
      requestTimeout: config.requestTimeoutMs ?? S3_REQUEST_TIMEOUT_MS_DEFAULT,
      throwOnRequestTimeout: true
    },
    // The SDK's default CRC32 on every upload sends streamed bodies aws-chunked with a
    // trailer, which S3-compatible servers (s3rver, older MinIO) refuse; TLS and S3's MD5/ETag
    // checks remain, and WAL carries its own CRCs.
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
    // Without a logger the SDK warns on the console ("An error was encountered in a
    // non-retryable streaming request") for every failed streamed put; the caller already
    // gets that failure as a typed error and logs it its own way.
    logger: SILENT_LOGGER
  }
  return new S3Client(clientConfig)
}

const SILENT_LOGGER = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined }

/** The store with its own client, destroyed (sockets closed) when the layer's scope closes. */
export const s3RemoteStorageLayer = (config: S3Config): Layer.Layer<RemoteStorage> =>
  Layer.effect(
    RemoteStorage,
    Effect.map(
      Effect.acquireRelease(Effect.sync(() => makeS3Client(config)), (client) => Effect.sync(() => client.destroy())),
      (client) => makeS3RemoteStorage(client, config)
    )
  )

// ---------------------------------------------------------------------------------------------
// Helpers

/**
 * The body as bytes for the request, exactly `lengthBytes` of them. The chunk that completes
 * the length is held back until the body has ended, so a body that turns out too long (or fails
 * at the end) never gets its full declared length to the server: a server that stored on
 * receiving ContentLength bytes would otherwise keep a wrong object.
 */
async function* exactLength<E>(
  path: string,
  body: Stream.Stream<Uint8Array, E>,
  lengthBytes: number,
  failure: { error?: E | RemoteStorageError },
  onFailure: () => void
): AsyncGenerator<Uint8Array> {
  const recorded = body.pipe(Stream.tapError((error) => Effect.sync(() => {
    failure.error = error
    onFailure()
  })))
  const mismatch = (actual: string): Error => {
    const error = new RemoteStorageError({ reason: "Permanent", operation: "put", path, message: lengthMismatchMessage(lengthBytes, actual) })
    failure.error = error
    onFailure()
    return new Error(error.message)
  }
  let sentBytes = 0
  let held: Uint8Array | undefined
  for await (const chunk of Stream.toAsyncIterable(recorded)) {
    if (chunk.length === 0) continue
    if (sentBytes + (held?.length ?? 0) + chunk.length > lengthBytes) throw mismatch(`more than ${lengthBytes}`)
    if (held !== undefined) {
      sentBytes += held.length
      yield held
    }
    held = chunk
  }
  const totalBytes = sentBytes + (held?.length ?? 0)
  if (totalBytes !== lengthBytes) throw mismatch(String(totalBytes))
  if (held !== undefined) yield held
}

const lengthMismatchMessage = (declaredBytes: number, actual: string): string => `body length differs from the declared ${declaredBytes} bytes: got ${actual}`

const lengthMismatch = (path: string, declaredBytes: number, actual: string): Effect.Effect<never, RemoteStorageError> =>
  permanent("put", path, lengthMismatchMessage(declaredBytes, actual))

function send<A>(operation: string, path: string, run: (signal: AbortSignal) => Promise<A>): Effect.Effect<A, RemoteStorageError> {
  // The signal aborts the HTTP request when the calling fiber is interrupted.
  return Effect.tryPromise({ try: (signal) => run(signal), catch: (cause) => s3Error(operation, path, cause) })
}

const REASON_BY_NAME: Readonly<Record<string, RemoteStorageErrorReason>> = {
  NoSuchKey: "NotFound",
  NotFound: "NotFound", // HeadObject's 404 has no body, so no code
  NoSuchBucket: "Permanent",
  InvalidAccessKeyId: "Permanent",
  SignatureDoesNotMatch: "Permanent",
  AccessDenied: "Permanent",
  InvalidBucketName: "Permanent",
  InvalidRange: "Permanent", // a request's own range; get turns the "past the end" case into an empty answer
  ObjectTooLarge: "Permanent",
  SlowDown: "Transient",
  Throttling: "Transient",
  ThrottlingException: "Transient",
  RequestTimeout: "Transient",
  RequestTimeTooSkewed: "Transient", // the clock may be corrected
  InternalError: "Transient",
  ServiceUnavailable: "Transient",
  TimeoutError: "Transient",
  RequestTimeoutException: "Transient",
  AbortError: "Cancelled",
  // No credentials anywhere in the chain: a configuration problem (an IMDS hiccup looks the
  // same, and is rare enough to take a restart).
  CredentialsProviderError: "Permanent"
}

/** Node's network errors: the server may be back on the next try. */
const TRANSIENT_CODES = new Set(["ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH", "ENOTFOUND", "EAI_AGAIN", "ERR_STREAM_PREMATURE_CLOSE"])

function s3Error(operation: string, path: string, cause: unknown): RemoteStorageError {
  const name = stringField(cause, "name") ?? ""
  const code = stringField(cause, "code")
  const status = httpStatusOf(cause)
  const message = cause instanceof Error ? cause.message : String(cause)
  const reason: RemoteStorageErrorReason =
    REASON_BY_NAME[name] ??
    // The SDK's plain Error when neither the config nor the chain names a region.
    (message.startsWith("Region is missing") ? "Permanent" : undefined) ??
    (code !== undefined && TRANSIENT_CODES.has(code) ? "Transient" : undefined) ??
    (/socket hang up|ECONNRESET|ECONNREFUSED|timed? ?out/i.test(message) ? "Transient" : undefined) ??
    (status === 404 ? "NotFound" : undefined) ??
    (status !== undefined && (status >= 500 || status === 429) ? "Transient" : undefined) ??
    (status !== undefined && status >= 400 ? "Permanent" : undefined) ??
    // No HTTP answer and no known cause: the request did not get through; trying again may.
    (status === undefined ? "Transient" : "Permanent")
  return new RemoteStorageError({ reason, operation, path, message: `${name.length > 0 ? `${name}: ` : ""}${message}${status !== undefined ? ` (HTTP ${status})` : ""}` })
}

function stringField(value: unknown, field: string): string | undefined {
  if (typeof value !== "object" || value === null || !(field in value)) return undefined
  const found: unknown = Reflect.get(value, field)
  return typeof found === "string" ? found : undefined
}

function httpStatusOf(value: unknown): number | undefined {
  if (typeof value !== "object" || value === null || !("$metadata" in value)) return undefined
  const metadata: unknown = value.$metadata
  if (typeof metadata !== "object" || metadata === null || !("httpStatusCode" in metadata)) return undefined
  return typeof metadata.httpStatusCode === "number" ? metadata.httpStatusCode : undefined
}

const permanent = (operation: string, path: string, message: string): Effect.Effect<never, RemoteStorageError> =>
  Effect.fail(new RemoteStorageError({ reason: "Permanent", operation, path, message }))

function checkObjectPath(operation: string, path: string): Effect.Effect<void, RemoteStorageError> {
  const problem = remotePathProblem(path)
  return problem === undefined ? Effect.void : permanent(operation, path, `bad remote path: ${problem}`)
}

function checkRange(path: string, range: ByteRange): Effect.Effect<void, RemoteStorageError> {
  const { startBytes, endBytes } = range
  if (!Number.isSafeInteger(startBytes) || startBytes < 0) return permanent("get", path, `range start ${startBytes} is not a non-negative integer`)
  if (endBytes !== undefined && (!Number.isSafeInteger(endBytes) || endBytes < startBytes)) {
    return permanent("get", path, `range end ${endBytes} is not an integer at or after the start ${startBytes}`)
  }
  return Effect.void
}
