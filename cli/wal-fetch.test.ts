// Goal: `sk wal fetch` restores what PostgreSQL asks for and answers with the exit statuses its
// restore_command contract needs: the full segment byte for byte, else the newest partial
// zero-padded to the segment size; 1 only for a file the WAL service does not hold; a status
// PostgreSQL treats as FATAL for a store that cannot answer or a corrupt object (never "end of
// WAL"). Method: the pure choice (pickRestoreObject, planRestore) by examples and fast-check;
// restoreSegment against a Map-backed RemoteStorage with injected faults; the real binary
// (bin/sk.js after `npm run build`) against a local-directory store in a temporary directory.
import { spawnSync } from "node:child_process"
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { Effect, Layer, Stream } from "effect"
import fc from "fast-check"
import { afterAll, beforeAll, describe, expect, test } from "vitest"
import { bytesBody, type RemoteObject, RemoteStorage, RemoteStorageError, type RemoteStorageErrorReason } from "../core/io/remote-storage.js"
import { NodeId, TenantId, Term, TimelineId } from "../core/acceptor/state.js"
import { partialObjectName, parsePartialObjectName as parseLayoutPartialName, segmentObjectPath } from "../core/timeline/remote-layout.js"
import { Lsn, segmentFileName } from "../core/wal/lsn.js"
import { parseRemoteStorageFlag } from "../live/remote-storage-config.js"
import { localRemoteStorageLayer } from "../live/remote-storage-local.js"
import {
  comparePartials,
  isWalSegmentName,
  type PartialObjectName,
  parsePartialObjectName,
  pickRestoreObject,
  planRestore,
  plainLocalRoot,
  restoreFromLocalDirectory,
  restoreSegment,
  WAL_FETCH_ATTEMPTS_MAX,
  WAL_FETCH_EXIT_MISSING,
  WAL_FETCH_EXIT_RESTORED,
  WAL_FETCH_EXIT_STORAGE_ERROR,
  WAL_FETCH_EXIT_USAGE,
  WAL_FETCH_EXIT_WRITE_ERROR
} from "./wal-fetch.js"

const SK = resolve(dirname(fileURLToPath(import.meta.url)), "../bin/sk.js")
const SEGMENT_BYTES = 16 * 1024 * 1024
const TENANT = "0123456789abcdef0123456789abcdef"
const TIMELINE = "fedcba9876543210fedcba9876543210"
const PREFIX = `${TENANT}/${TIMELINE}`
const SEGMENT_3 = "000000010000000000000003"
const SEGMENT_4 = "000000010000000000000004"

function partialName(fields: PartialObjectName): string {
  const hex16 = (n: number) => n.toString(16).toUpperCase().padStart(16, "0")
  return `${fields.segmentName}_${fields.lastLogTerm}_${hex16(fields.flushLsn)}_${hex16(fields.commitLsn)}_sk${fields.nodeId}.partial`
}

/** Bytes that differ from position to position, so a shifted or truncated copy shows. */
function patternBytes(length: number, salt: number): Uint8Array {
  const bytes = new Uint8Array(length)
  for (let i = 0; i < length; i++) bytes[i] = (i * 31 + salt + (i >>> 8)) & 0xff
  return bytes
}

const segment4Start = 4 * SEGMENT_BYTES

describe("pickRestoreObject", () => {
  test("the full segment wins over any partial of it", () => {
    const objects: RemoteObject[] = [
      { path: `${PREFIX}/${partialName({ segmentName: SEGMENT_3, lastLogTerm: 9, flushLsn: 3 * SEGMENT_BYTES + 100, commitLsn: 0, nodeId: 1 })}`, sizeBytes: 100 },
      { path: `${PREFIX}/${SEGMENT_3}`, sizeBytes: SEGMENT_BYTES }
    ]
    expect(pickRestoreObject(objects, SEGMENT_3)).toEqual({ kind: "full", object: objects[1] })
  })

  test("partials: last_log_term first, then flush, then commit; another segment's objects never", () => {
    const at = (offset: number) => segment4Start + offset
    const names = [
      { segmentName: SEGMENT_4, lastLogTerm: 2, flushLsn: at(9000), commitLsn: at(9000), nodeId: 1 }, // longer, older term
      { segmentName: SEGMENT_4, lastLogTerm: 3, flushLsn: at(500), commitLsn: at(400), nodeId: 2 },
      { segmentName: SEGMENT_4, lastLogTerm: 3, flushLsn: at(500), commitLsn: at(450), nodeId: 3 }, // the newest
      { segmentName: SEGMENT_4, lastLogTerm: 3, flushLsn: at(300), commitLsn: at(300), nodeId: 1 },
      { segmentName: "000000010000000000000005", lastLogTerm: 7, flushLsn: 5 * SEGMENT_BYTES + 8, commitLsn: 0, nodeId: 1 }
    ]
    const objects = names.map((fields) => ({ path: `${PREFIX}/${partialName(fields)}`, sizeBytes: fields.flushLsn % SEGMENT_BYTES }))
    const pick = pickRestoreObject([...objects, { path: `${PREFIX}/000000010000000000000005`, sizeBytes: SEGMENT_BYTES }], SEGMENT_4)
    expect(pick).toEqual({ kind: "partial", object: objects[2], partial: names[2] })
    expect(pickRestoreObject(objects, "000000010000000000000006")).toBeUndefined()
    expect(pickRestoreObject([{ path: `${PREFIX}/${SEGMENT_4}.partial`, sizeBytes: 5 }, { path: `${PREFIX}/${SEGMENT_4}_x.partial`, sizeBytes: 5 }], SEGMENT_4)).toBeUndefined()
  })

  const arbPartial = fc.record({
    segmentName: fc.constantFrom(SEGMENT_3, SEGMENT_4),
    lastLogTerm: fc.integer({ min: 0, max: 4 }),
    flushLsn: fc.integer({ min: 0, max: 3 }).map((n) => segment4Start + n * 8),
    commitLsn: fc.integer({ min: 0, max: 3 }).map((n) => segment4Start + n * 8),
    nodeId: fc.integer({ min: 0, max: 3 })
  })
  const arbObjects = fc.uniqueArray(arbPartial, { selector: partialName, maxLength: 12 }).chain((partials) =>
    fc.tuple(fc.constant(partials), fc.boolean(), fc.shuffledSubarray(partials, { minLength: partials.length })))

  test("property: the pick is the maximum by comparePartials (or the full segment), whatever the listing order", () => {
    fc.assert(fc.property(arbObjects, ([partials, withFull, shuffled]) => {
      const toObject = (fields: PartialObjectName): RemoteObject => ({ path: `${PREFIX}/${partialName(fields)}`, sizeBytes: 1 })
      const full: RemoteObject[] = withFull ? [{ path: `${PREFIX}/${SEGMENT_4}`, sizeBytes: SEGMENT_BYTES }] : []
      const pick = pickRestoreObject([...partials.map(toObject), ...full], SEGMENT_4)
      const again = pickRestoreObject([...full, ...shuffled.map(toObject)], SEGMENT_4)
      expect(again).toEqual(pick)
      const candidates = partials.filter((p) => p.segmentName === SEGMENT_4)
      if (withFull) return pick?.kind === "full"
      if (candidates.length === 0) return pick === undefined
      if (pick?.kind !== "partial") return false
      return candidates.every((other) => comparePartials(pick.partial, other) >= 0) && pick.partial.segmentName === SEGMENT_4
    }))
  })

  test("property: partial names round-trip, and numbers past 2^53-1 are refused", () => {
    fc.assert(fc.property(arbPartial, (fields) => {
      expect(parsePartialObjectName(partialName(fields))).toEqual(fields)
    }))
    expect(parsePartialObjectName(`${SEGMENT_4}_1_0020000000000000_0000000000000000_sk1.partial`)).toBeUndefined()
    expect(parsePartialObjectName(`${SEGMENT_4}_9007199254740993_0000000004000000_0000000000000000_sk1.partial`)).toBeUndefined()
  })
})

describe("agreement with core/timeline/remote-layout.ts (the names the backup uploads)", () => {
  // Goal: the restore reads the names the backup writes. wal-fetch.ts keeps its own parser
  // (the layout module loads Effect, which the restore_command's start-up avoids), so drift
  // between the two would make uploaded partials invisible. Method: names made by the layout
  // module, for random fields and segment sizes, parse to the same fields here.
  test("property: every partial name the backup makes parses to the same fields", () => {
    const arb = fc.record({
      segmentSizeBytes: fc.constantFrom(1024 * 1024, SEGMENT_BYTES, 1024 * 1024 * 1024),
      segmentNo: fc.integer({ min: 1, max: 2 ** 40 }),
      offset: fc.integer({ min: 0, max: 1024 * 1024 - 1 }),
      lastLogTerm: fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
      commitBack: fc.integer({ min: 0, max: 2 ** 30 }),
      nodeId: fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER })
    })
    fc.assert(fc.property(arb, ({ segmentSizeBytes, segmentNo, offset, lastLogTerm, commitBack, nodeId }) => {
      const flushLsn = segmentNo * segmentSizeBytes + offset
      fc.pre(Number.isSafeInteger(flushLsn))
      const fields = { segmentNo, lastLogTerm: Term(lastLogTerm), flushLsn: Lsn(flushLsn), commitLsn: Lsn(Math.max(0, flushLsn - commitBack)), nodeId: NodeId(nodeId) }
      const name = partialObjectName(fields, segmentSizeBytes)
      expect(parseLayoutPartialName(name, segmentSizeBytes)).toEqual(fields)
      expect(parsePartialObjectName(name)).toEqual({
        segmentName: segmentFileName(1, segmentNo, segmentSizeBytes),
        lastLogTerm,
        flushLsn,
        commitLsn: fields.commitLsn,
        nodeId
      })
    }))
  })

  test("a full segment's object path ends in the name PostgreSQL asks for", () => {
    const path = segmentObjectPath({ tenantId: TenantId(TENANT), timelineId: TimelineId(TIMELINE) }, 4, SEGMENT_BYTES)
    expect(path).toBe(`${PREFIX}/${SEGMENT_4}`)
    expect(pickRestoreObject([{ path, sizeBytes: SEGMENT_BYTES }], SEGMENT_4)?.kind).toBe("full")
  })
})

describe("planRestore and segment names", () => {
  const full = (sizeBytes: number) => ({ kind: "full" as const, object: { path: `${PREFIX}/${SEGMENT_4}`, sizeBytes } })
  const partial = (flushOffset: number, sizeBytes: number) => {
    const fields = { segmentName: SEGMENT_4, lastLogTerm: 1, flushLsn: segment4Start + flushOffset, commitLsn: segment4Start, nodeId: 1 }
    return { kind: "partial" as const, object: { path: `${PREFIX}/${partialName(fields)}`, sizeBytes }, partial: fields }
  }

  test("a full object must be exactly one segment", () => {
    expect(planRestore(full(SEGMENT_BYTES), SEGMENT_BYTES)).toMatchObject({ kind: "read", meaningfulBytes: SEGMENT_BYTES })
    expect(planRestore(full(SEGMENT_BYTES - 1), SEGMENT_BYTES).kind).toBe("corrupt")
    // The store holds 16 MiB segments, the command was told 1 MiB: refused, not misread.
    expect(planRestore(full(SEGMENT_BYTES), 1024 * 1024).kind).toBe("corrupt")
  })

  test("a partial holds its flush offset's bytes (or a whole padded segment); flushed to its start, it holds nothing", () => {
    expect(planRestore(partial(8192, 8192), SEGMENT_BYTES)).toMatchObject({ kind: "read", meaningfulBytes: 8192 })
    expect(planRestore(partial(8192, SEGMENT_BYTES), SEGMENT_BYTES)).toMatchObject({ kind: "read", meaningfulBytes: 8192 })
    expect(planRestore(partial(8192, 8191), SEGMENT_BYTES).kind).toBe("corrupt")
    expect(planRestore(partial(8192, 8193), SEGMENT_BYTES).kind).toBe("corrupt")
    expect(planRestore(partial(0, 0), SEGMENT_BYTES).kind).toBe("empty")
    expect(planRestore(partial(SEGMENT_BYTES + 8, 8), SEGMENT_BYTES).kind).toBe("corrupt") // flush in the next segment
  })

  test("segment names follow the segment size; histories and backup labels are not segments", () => {
    expect(isWalSegmentName(SEGMENT_4, SEGMENT_BYTES)).toBe(true)
    expect(isWalSegmentName("0000000100000000000000FF", SEGMENT_BYTES)).toBe(true)
    expect(isWalSegmentName("000000010000000000000100", SEGMENT_BYTES)).toBe(false) // 256 segments of 16 MiB per 4 GiB
    expect(isWalSegmentName("000000010000000000000100", 1024 * 1024)).toBe(true)
    for (const name of ["00000002.history", "000000010000000000000003.00000028.backup", `${SEGMENT_3}.partial`, "000000010000000000000003x", "0000000100000000000000a3", "RECOVERYXLOG"]) {
      expect(isWalSegmentName(name, SEGMENT_BYTES)).toBe(false)
    }
  })
})

describe("plainLocalRoot (the Effect-free local path)", () => {
  test("claims only specs that live/remote-storage-config.ts reads as that same local directory", () => {
    const arbSpec = fc.oneof(
      fc.string(),
      fc.string().map((rest) => `/${rest}`),
      fc.string().map((rest) => `local://${rest}`),
      fc.constantFrom("s3://", "S3://", "local:/", "{", " ", "file://", "x+y://").chain((head) => fc.string().map((rest) => head + rest))
    )
    fc.assert(fc.property(arbSpec, (spec) => {
      const root = plainLocalRoot(spec)
      if (root === undefined) return true
      const parsed = parseRemoteStorageFlag(spec)
      return parsed._tag === "Success" && parsed.success.kind === "local" && parsed.success.root === root
    }), { numRuns: 2000 })
    expect(plainLocalRoot("/var/lib/sk/remote")).toBe("/var/lib/sk/remote")
    expect(plainLocalRoot("local:///x")).toBe("/x")
    for (const other of ["s3://bucket/p", "{ local_path = \"/x\" }", " /x", "", "ftp://x"]) expect(plainLocalRoot(other)).toBeUndefined()
  })
})

/** An in-memory RemoteStorage; `fault` may fail any call before it runs. */
function mapStorage(objects: Map<string, Uint8Array>, fault?: (operation: string, path: string) => RemoteStorageErrorReason | undefined) {
  const failIf = (operation: string, path: string) => {
    const reason = fault?.(operation, path)
    return reason === undefined ? Effect.void : Effect.fail(new RemoteStorageError({ reason, operation, path, message: "injected" }))
  }
  return Layer.succeed(RemoteStorage, RemoteStorage.of({
    put: (path, body, _lengthBytes) =>
      Effect.flatMap(Stream.runCollect(body), (chunks) =>
        Effect.sync(() => {
          objects.set(path, new Uint8Array(Buffer.concat([...chunks])))
        })),
    get: (path, range) =>
      Effect.andThen(failIf("get", path), () => {
        const bytes = objects.get(path)
        if (bytes === undefined) return Effect.fail(new RemoteStorageError({ reason: "NotFound", operation: "get", path, message: "absent" }))
        return Effect.succeed(bytes.slice(range?.startBytes ?? 0, range?.endBytes ?? bytes.length))
      }),
    list: (prefix) =>
      Effect.andThen(failIf("list", prefix), () =>
        Effect.succeed([...objects.entries()].filter(([path]) => path.startsWith(prefix)).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
          .map(([path, bytes]) => ({ path, sizeBytes: bytes.length })))),
    delete: (path) => Effect.sync(() => void objects.delete(path)),
    copy: (from, to) => Effect.sync(() => void objects.set(to, objects.get(from) ?? new Uint8Array()))
  }))
}

describe("restoreSegment (in-memory store)", () => {
  let directory: string
  beforeAll(() => {
    directory = mkdtempSync(join(tmpdir(), "sk-wal-fetch-unit-"))
  })
  afterAll(() => rmSync(directory, { recursive: true, force: true }))
  const request = (segmentName: string, target: string) => ({ prefix: PREFIX, segmentName, targetPath: join(directory, target), segmentSizeBytes: SEGMENT_BYTES })

  test("a full segment is written as it is; a partial is padded with zeros to the segment size", async () => {
    const segment = patternBytes(SEGMENT_BYTES, 3)
    const fields = { segmentName: SEGMENT_4, lastLogTerm: 2, flushLsn: segment4Start + 12345, commitLsn: segment4Start + 100, nodeId: 1 }
    const objects = new Map([[`${PREFIX}/${SEGMENT_3}`, segment], [`${PREFIX}/${partialName(fields)}`, patternBytes(12345, 4)]])
    expect(await restoreSegment(request(SEGMENT_3, "full"), mapStorage(objects))).toMatchObject({ status: "restored", kind: "full" })
    expect(Buffer.from(readFileSync(join(directory, "full"))).equals(Buffer.from(segment))).toBe(true)
    expect(await restoreSegment(request(SEGMENT_4, "partial"), mapStorage(objects))).toMatchObject({ status: "restored", kind: "partial", meaningfulBytes: 12345 })
    const restored = readFileSync(join(directory, "partial"))
    expect(restored.length).toBe(SEGMENT_BYTES)
    expect(restored.subarray(0, 12345).equals(Buffer.from(patternBytes(12345, 4)))).toBe(true)
    expect(restored.subarray(12345).every((byte) => byte === 0)).toBe(true)
    expect(() => statSync(join(directory, "partial.tmp"))).toThrow() // renamed, not left behind
  })

  test("transient errors are retried a bounded number of times, then reported as a storage error (not missing)", async () => {
    const objects = new Map([[`${PREFIX}/${SEGMENT_3}`, patternBytes(SEGMENT_BYTES, 5)]])
    let lists = 0
    const flaky = mapStorage(objects, (operation) => (operation === "list" && ++lists === 1 ? "Transient" : undefined))
    expect(await restoreSegment(request(SEGMENT_3, "retried"), flaky)).toMatchObject({ status: "restored" })
    expect(lists).toBe(2)
    let calls = 0
    const down = mapStorage(objects, () => (++calls, "Transient"))
    const outcome = await restoreSegment(request(SEGMENT_3, "never"), down)
    expect(outcome.status).toBe("storage-error")
    expect(calls).toBe(WAL_FETCH_ATTEMPTS_MAX)
    const denied = await restoreSegment(request(SEGMENT_3, "never"), mapStorage(objects, () => "Permanent"))
    expect(denied.status).toBe("storage-error")
  })

  test("an object replaced between list and get is looked up again; absent is missing", async () => {
    const old = { segmentName: SEGMENT_4, lastLogTerm: 1, flushLsn: segment4Start + 64, commitLsn: segment4Start, nodeId: 1 }
    const objects = new Map([[`${PREFIX}/${partialName(old)}`, patternBytes(64, 6)]])
    // The backup replaces the partial by the full segment after our list: get finds it gone.
    const racing = mapStorage(objects, (operation, path) => {
      if (operation === "get" && path.endsWith(".partial")) {
        objects.delete(path)
        objects.set(`${PREFIX}/${SEGMENT_4}`, patternBytes(SEGMENT_BYTES, 7))
      }
      return undefined
    })
    expect(await restoreSegment(request(SEGMENT_4, "raced"), racing)).toMatchObject({ status: "restored", kind: "full" })
    expect(await restoreSegment(request("000000010000000000000009", "absent"), mapStorage(objects))).toMatchObject({ status: "missing" })
  })

  test("a target that cannot be written is a write error", async () => {
    const objects = new Map([[`${PREFIX}/${SEGMENT_3}`, patternBytes(SEGMENT_BYTES, 8)]])
    const outcome = await restoreSegment({ ...request(SEGMENT_3, "x"), targetPath: join(directory, "no-such-dir", "RECOVERYXLOG") }, mapStorage(objects))
    expect(outcome.status).toBe("write-error")
  })
})

describe("sk wal fetch (the built binary, local-directory store)", () => {
  let directory: string
  let store: string
  beforeAll(() => {
    directory = mkdtempSync(join(tmpdir(), "sk-wal-fetch-"))
    store = join(directory, "store")
    mkdirSync(join(store, TENANT, TIMELINE), { recursive: true })
  })
  afterAll(() => rmSync(directory, { recursive: true, force: true }))

  const putObject = (name: string, bytes: Uint8Array) => writeFileSync(join(store, TENANT, TIMELINE, name), bytes)
  const fetch = (segmentName: string, target: string, extra: ReadonlyArray<string> = [], remoteStorage = store) =>
    spawnSync(process.execPath, [SK, "wal", "fetch", "--remote-storage", remoteStorage, "--tenant-id", TENANT, "--timeline-id", TIMELINE, ...extra, segmentName, join(directory, target)], {
      encoding: "utf8",
      timeout: 60_000
    })

  test("restores a full segment byte for byte, and the newest partial zero-padded", () => {
    const segment = patternBytes(SEGMENT_BYTES, 11)
    putObject(SEGMENT_3, segment)
    const partials = [
      { segmentName: SEGMENT_4, lastLogTerm: 2, flushLsn: segment4Start + 20000, commitLsn: segment4Start + 20000, nodeId: 1 },
      { segmentName: SEGMENT_4, lastLogTerm: 3, flushLsn: segment4Start + 8192, commitLsn: segment4Start + 4096, nodeId: 2 }, // newest
      { segmentName: SEGMENT_4, lastLogTerm: 3, flushLsn: segment4Start + 4096, commitLsn: segment4Start + 4096, nodeId: 3 }
    ]
    for (const [index, fields] of partials.entries()) putObject(partialName(fields), patternBytes(fields.flushLsn % SEGMENT_BYTES, 20 + index))

    const full = fetch(SEGMENT_3, "RECOVERYXLOG")
    expect(full.stderr).toBe("")
    expect(full.status).toBe(WAL_FETCH_EXIT_RESTORED)
    expect(readFileSync(join(directory, "RECOVERYXLOG")).equals(Buffer.from(segment))).toBe(true)

    const partial = fetch(SEGMENT_4, "RECOVERYXLOG")
    expect(partial.status).toBe(WAL_FETCH_EXIT_RESTORED)
    const restored = readFileSync(join(directory, "RECOVERYXLOG"))
    expect(restored.length).toBe(SEGMENT_BYTES)
    expect(restored.subarray(0, 8192).equals(Buffer.from(patternBytes(8192, 21)))).toBe(true)
    expect(restored.subarray(8192).every((byte) => byte === 0)).toBe(true)
  })

  test("a segment not held and a history file exit 1 with one line on stderr", () => {
    for (const name of ["000000010000000000000007", "00000002.history"]) {
      const result = fetch(name, "RECOVERYHISTORY")
      expect(result.status).toBe(WAL_FETCH_EXIT_MISSING)
      expect(result.stderr.trim().split("\n")).toHaveLength(1)
      expect(() => statSync(join(directory, "RECOVERYHISTORY"))).toThrow()
    }
  })

  test("a corrupt (wrong-size) full object is a storage error, above 125 so PostgreSQL stops", () => {
    putObject("000000010000000000000005", patternBytes(SEGMENT_BYTES - 512, 12))
    const result = fetch("000000010000000000000005", "corrupt")
    expect(result.status).toBe(WAL_FETCH_EXIT_STORAGE_ERROR)
    expect(WAL_FETCH_EXIT_STORAGE_ERROR).toBeGreaterThan(125)
    expect(result.stderr).toMatch(/holds 16776704 bytes, not one segment/)
    expect(() => statSync(join(directory, "corrupt"))).toThrow()
  })

  test("an unreachable S3 endpoint is a storage error, not a missing file", () => {
    const result = fetch(SEGMENT_3, "unreachable", [], "s3://bucket/prefix?region=us-east-1&endpoint=http://127.0.0.1:1")
    expect(result.stderr).toMatch(/object storage error/)
    expect(result.status).toBe(WAL_FETCH_EXIT_STORAGE_ERROR)
    // PostgreSQL's FATAL range (wait_result_is_any_signal): above 125, and not 128+SIGTERM.
    expect(result.status).toBeGreaterThan(125)
    expect(result.status).not.toBe(143)
  })

  test("the direct local read and the RemoteStorage path agree on objects the local store wrote", async () => {
    // Goal: the Effect-free reader must not drift from live/remote-storage-local.ts's layout (a
    // drift would turn held segments into "missing" and end recovery early). Method: write
    // through the real store, fetch through both (a plain path is read directly; the same
    // directory as Neon's TOML goes through remoteStorageLayer), compare statuses and bytes.
    const root = join(directory, "agree")
    mkdirSync(root)
    const layer = localRemoteStorageLayer(root)
    const put = (name: string, bytes: Uint8Array) =>
      Effect.runPromise(Effect.provide(RemoteStorage.use((storage) => storage.put(`${PREFIX}/${name}`, bytesBody(bytes), bytes.length)), layer))
    await put(SEGMENT_3, patternBytes(SEGMENT_BYTES, 30))
    await put(partialName({ segmentName: SEGMENT_4, lastLogTerm: 4, flushLsn: segment4Start + 777, commitLsn: segment4Start + 700, nodeId: 2 }), patternBytes(777, 31))
    await put(partialName({ segmentName: SEGMENT_4, lastLogTerm: 3, flushLsn: segment4Start + 999, commitLsn: segment4Start + 999, nodeId: 1 }), patternBytes(999, 32))
    await put("000000010000000000000005", patternBytes(1000, 33))
    const toml = `{ local_path = ${JSON.stringify(root)} }`
    for (const segment of [SEGMENT_3, SEGMENT_4, "000000010000000000000005", "000000010000000000000006"]) {
      const direct = fetch(segment, "direct", [], root)
      const viaLayer = fetch(segment, "via-layer", [], toml)
      expect([segment, direct.status]).toEqual([segment, viaLayer.status])
      if (direct.status === WAL_FETCH_EXIT_RESTORED) {
        expect(readFileSync(join(directory, "direct")).equals(readFileSync(join(directory, "via-layer")))).toBe(true)
      }
    }
    expect(restoreFromLocalDirectory(root, { prefix: PREFIX, segmentName: SEGMENT_4, targetPath: join(directory, "direct"), segmentSizeBytes: SEGMENT_BYTES }))
      .toMatchObject({ status: "restored", kind: "partial", meaningfulBytes: 777 })
  })

  test("a local store that does not exist is a bad argument, not a store with nothing in it", () => {
    for (const spec of [join(directory, "no-store"), `{ local_path = ${JSON.stringify(join(directory, "no-store"))} }`]) {
      const result = fetch(SEGMENT_3, "nothing", [], spec)
      expect(result.status).toBe(WAL_FETCH_EXIT_USAGE)
      expect(result.stderr).toMatch(/no-store/)
    }
  })

  test("bad arguments and an unwritable target are fatal statuses too; --help exits 0", () => {
    const badId = spawnSync(process.execPath, [SK, "wal", "fetch", "--remote-storage", store, "--tenant-id", "xyz", "--timeline-id", TIMELINE, SEGMENT_3, "p"], { encoding: "utf8" })
    expect(badId.status).toBe(WAL_FETCH_EXIT_USAGE)
    expect(WAL_FETCH_EXIT_USAGE).toBeGreaterThan(125)
    expect(WAL_FETCH_EXIT_WRITE_ERROR).toBeGreaterThan(125)
    expect(badId.stderr).toMatch(/tenant id must be 32 hex digits/)
    const missingFlag = spawnSync(process.execPath, [SK, "wal", "fetch", SEGMENT_3, "p"], { encoding: "utf8" })
    expect(missingFlag.status).toBe(WAL_FETCH_EXIT_USAGE)
    expect(fetch(SEGMENT_3, "p", ["--wal-seg-size", "1000"]).status).toBe(WAL_FETCH_EXIT_USAGE)
    expect(fetch(SEGMENT_3, "p", [], "ftp://nowhere").status).toBe(WAL_FETCH_EXIT_USAGE)
    expect(fetch(SEGMENT_3, join("no-such-dir", "RECOVERYXLOG")).status).toBe(WAL_FETCH_EXIT_WRITE_ERROR)
    const help = spawnSync(process.execPath, [SK, "wal", "fetch", "--help"], { encoding: "utf8" })
    expect(help.status).toBe(0)
    expect(help.stdout).toMatch(/Exit status: 0 restored; 1 not held/)
  })
})
