// The registry's lifecycle rules beyond creation: delete leaves a tombstone a late push cannot
// get past; install (pull_timeline's last step) puts a directory built in tmp/ into place and
// is all-or-nothing across a crash at any disk operation; the restoring gate keeps a wiped
// node from creating or finding timelines it has not pulled yet.
import { Effect, Exit } from "effect"
import { describe, expect, test } from "vitest"
import { DiskLab } from "../../sim/testing.js"
import { loadControlFile, persistControlFile } from "../acceptor/control-file.js"
import { EMPTY_MEMBER_CONFIGURATION, Generation, newTimelineState, NodeId, TenantId, TimelineId } from "../acceptor/state.js"
import { Disk, joinPath } from "../io/disk.js"
import { Log } from "../io/log.js"
import { Lsn } from "../wal/lsn.js"
import { LogLines } from "./manager-testing.js"
import { TimelineRegistry } from "./registry.js"

const DATADIR = "/data"
const KEY = { tenantId: TenantId("a".repeat(32)), timelineId: TimelineId("b".repeat(32)) }
const SERVER = { pgVersion: 150000, systemId: 7n, walSegSizeBytes: 16 * 1024 * 1024 }

const load = TimelineRegistry.load({ datadir: DATADIR, nodeId: NodeId(1), noSync: false })

function run<A, E>(lab: DiskLab, program: Effect.Effect<A, E, Disk | Log>, crashBeforeOperation?: number) {
  return lab.run(program.pipe(Effect.provideService(Log, new LogLines().service)), crashBeforeOperation === undefined ? {} : { crashBeforeOperation })
}

function success<A, E>(outcome: ReturnType<typeof run<A, E>>): A {
  if (outcome._tag !== "done" || !Exit.isSuccess(outcome.exit)) throw new Error(`expected success, got ${JSON.stringify(outcome)}`)
  return outcome.exit.value
}

function failureReason<A, E>(outcome: ReturnType<typeof run<A, E>>): string {
  if (outcome._tag !== "done" || Exit.isSuccess(outcome.exit)) throw new Error(`expected a failure, got ${outcome._tag}`)
  const error = outcome.exit.cause.reasons[0]
  return error !== undefined && "error" in error ? String((error.error as { reason?: string }).reason) : "defect"
}

/** A pulled timeline as pull_timeline builds it: a control file in the temp directory. */
const buildPulled = (registry: TimelineRegistry, commit: number) =>
  Effect.gen(function* () {
    const temp = yield* registry.makeTempDirectory(KEY)
    yield* persistControlFile(temp, newTimelineState({ ...KEY, mconf: EMPTY_MEMBER_CONFIGURATION, server: SERVER, startLsn: Lsn(0x1000000), commitLsn: Lsn(commit) }), { noSync: false })
    return temp
  })

describe("delete", () => {
  test("removes the directory, and a tombstone refuses a late push that may create", () => {
    const lab = new DiskLab(1)
    const result = success(run(lab, Effect.gen(function* () {
      const registry = yield* load
      yield* registry.getOrCreate(KEY, SERVER, true)
      const first = yield* registry.delete(KEY, Generation(0))
      const second = yield* registry.delete(KEY, Generation(0))
      const recreated = yield* Effect.flip(registry.getOrCreate(KEY, SERVER, true))
      const disk = yield* Disk
      return { first, second, recreated: recreated.reason, dir: yield* disk.stat(joinPath(DATADIR, KEY.tenantId, KEY.timelineId)), listed: registry.list().length }
    })))
    expect(result.first).toEqual({ existed: true, dirExisted: true })
    expect(result.second).toEqual({ existed: false, dirExisted: false })
    expect(result.recreated).toBe("Deleted")
    expect(result.dir).toBeUndefined()
    expect(result.listed).toBe(0)
    // A restart does not bring it back either: its directory is gone for good.
    expect(success(run(lab, Effect.map(load, (r) => r.list().length)))).toBe(0)
  })
})

describe("install", () => {
  test("moves a pulled directory into place and opens it; refuses over an existing timeline and under a tombstone", () => {
    const lab = new DiskLab(2)
    const result = success(run(lab, Effect.gen(function* () {
      const registry = yield* load
      const installed = yield* registry.install(KEY, yield* buildPulled(registry, 0x1000100), Generation(1))
      const again = yield* Effect.flip(registry.install(KEY, yield* buildPulled(registry, 0x1000100), Generation(1)))
      yield* registry.delete(KEY, Generation(2))
      const underTombstone = yield* Effect.flip(registry.install(KEY, yield* buildPulled(registry, 0x1000100), Generation(2)))
      const reAdded = yield* registry.install(KEY, yield* buildPulled(registry, 0x1000200), Generation(3))
      return { commit: installed.acceptor.commitLsn(), again: again.reason, underTombstone: underTombstone.reason, reAdded: reAdded.acceptor.commitLsn() }
    })))
    expect(result).toEqual({ commit: 0x1000100, again: "AlreadyExists", underTombstone: "Deleted", reAdded: 0x1000200 })
  })

  test("a crash at any disk operation leaves the whole timeline or none, and tmp/ is cleared at load", () => {
    let sawNone = false
    let sawWhole = false
    for (let crashAt = 0; ; crashAt++) {
      const lab = new DiskLab(100 + crashAt)
      success(run(lab, Effect.asVoid(load)))
      const outcome = run(lab, Effect.gen(function* () {
        const registry = yield* load
        return yield* registry.install(KEY, yield* buildPulled(registry, 0x1000100), Generation(1))
      }), crashAt)
      const after = success(run(lab, Effect.gen(function* () {
        const registry = yield* load
        const disk = yield* Disk
        const timeline = registry.get(KEY)
        const state = timeline === undefined ? undefined : yield* loadControlFile(timeline.directory)
        const tmp = joinPath(DATADIR, "tmp")
        const temp = (yield* disk.stat(tmp)) === undefined ? 0 : (yield* disk.list(tmp)).length
        return { held: timeline !== undefined, commit: state?.commitLsn, temp }
      })))
      expect(after.temp).toBe(0)
      if (after.held) {
        expect(after.commit).toBe(0x1000100)
        sawWhole = true
      } else sawNone = true
      if (outcome._tag === "done") {
        expect(after.held).toBe(true)
        break
      }
    }
    expect(sawNone && sawWhole).toBe(true)
  })
})

describe("restoring gate", () => {
  test("while restoring, a missing timeline is neither created nor found; held ones stay served", () => {
    const other = { ...KEY, timelineId: TimelineId("c".repeat(32)) }
    const lab = new DiskLab(3)
    const result = success(run(lab, Effect.gen(function* () {
      const registry = yield* load
      yield* registry.getOrCreate(other, SERVER, true)
      registry.restoring.set(true)
      const created = yield* Effect.flip(registry.getOrCreate(KEY, SERVER, true))
      const found = yield* Effect.flip(registry.lookup(KEY))
      const held = yield* registry.lookup(other)
      registry.restoring.set(false)
      const afterRestore = yield* registry.getOrCreate(KEY, SERVER, true)
      return { created: created.reason, found: found.reason, held: held.key.timelineId, afterRestore: afterRestore.key.timelineId }
    })))
    expect(result).toEqual({ created: "Restoring", found: "Restoring", held: other.timelineId, afterRestore: KEY.timelineId })
  })
})
