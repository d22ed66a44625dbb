// Goal: whatever point a crash hits, the segment store keeps its durability promises (DESIGN.md
// §5, §7; reference §7): no acknowledged (flushed) WAL is lost; what discovery finds is exactly
// WAL that was written, at a record boundary; a crash during a truncate leaves the new end or
// the whole old end; once a truncate has returned the old tail is never found or served again;
// and files beyond the discovered end are never decoded or served, even after new WAL is
// written there. Method: a workload (writes split anywhere, flushes, persisted commits,
// truncations, removals, segment rollovers, XLOG_SWITCH) runs against SimDisk in a Kernel and is
// crashed before its k-th Disk operation, for every k, under several kernel seeds so that
// different subsets of unsynced writes survive, tear at sector boundaries and reorder, and
// unsynced metadata is undone (SimDisk.crash). A model records what was issued and what was
// acknowledged as each call returned. A second life reopens the store with the last persisted
// commit_lsn, checks what it found against the model, then writes new WAL after a truncate and
// checks a clean reopen finds exactly that.
import { Cause, Effect, Exit } from "effect"
import { describe, expect, test } from "vitest"
import { Disk } from "../io/disk.js"
import { NO_DISK_FAULTS, SimDisk } from "../../sim/disk.js"
import { Incarnation, Kernel } from "../../sim/kernel.js"
import { forkInLife } from "../../sim/runtime.js"
import { type GeneratedRecord, WalGenerator } from "./generator.js"
import { Lsn, parseSegmentFileName, segmentNoOf } from "./lsn.js"
import { openSegmentStore, type SegmentStore, type SegmentStoreOptions } from "./segment-store.js"

const SEGMENT_BYTES = 1024 * 1024
const SYSTEM_ID = 6_021_000_777n
const START = 2 * SEGMENT_BYTES + 40
const DIRECTORY = "/timeline"
/** The workload stops generating WAL past this much (a bound on every run's size). */
const WAL_BYTES_MAX = 2.2 * SEGMENT_BYTES
const WORKLOAD_STEPS_MAX = 50

// ---------------------------------------------------------------- model

interface GeneratedRecordInfo {
  readonly startLsn: number
  readonly endLsn: number
  readonly nextLsn: number
}

/** What the workload issued and what the store acknowledged, as of the last call that returned. */
interface View {
  /** Generated WAL from START (past `generatedEnd` meaningless). */
  readonly bytes: Uint8Array
  readonly generatedEnd: number
  /** Bytes handed to write calls (the call may not have returned). */
  readonly issuedEnd: number
  readonly records: ReadonlyArray<GeneratedRecordInfo>
  /** flush_record_lsn when the last call returned: must survive any crash. */
  readonly acked: number
}

interface Model {
  bytes: Uint8Array
  generatedEnd: number
  issuedEnd: number
  records: GeneratedRecordInfo[]
  acked: number
  /** The persisted commit_lsn (the control file's, which is not what is under test). */
  commit: number
  /** Set while a truncate call is under way. */
  truncating: { readonly old: View; readonly newEndLsn: number } | undefined
}

function newModel(): Model {
  return { bytes: new Uint8Array(256 * 1024), generatedEnd: START, issuedEnd: START, records: [], acked: 0, commit: 0, truncating: undefined }
}

function viewOf(model: Model): View {
  return { bytes: model.bytes.slice(0, model.generatedEnd - START), generatedEnd: model.generatedEnd, issuedEnd: model.issuedEnd, records: [...model.records], acked: model.acked }
}

function addGenerated(model: Model, record: GeneratedRecord): void {
  expect(record.fromLsn).toBe(model.generatedEnd)
  if (record.nextLsn - START > model.bytes.length) {
    const grown = new Uint8Array(Math.max(record.nextLsn - START, 2 * model.bytes.length))
    grown.set(model.bytes.subarray(0, model.generatedEnd - START))
    model.bytes = grown
  }
  model.bytes.set(record.bytes, record.fromLsn - START)
  model.generatedEnd = record.nextLsn
  model.records.push({ startLsn: record.startLsn, endLsn: record.endLsn, nextLsn: record.nextLsn })
}

function cutModel(model: Model, endLsn: number): void {
  model.generatedEnd = endLsn
  model.issuedEnd = endLsn
  model.records = model.records.filter((r) => r.nextLsn <= endLsn)
  model.acked = endLsn
}

/** xl_prev for a record starting at `lsn`: the start of the record that ends there. */
function prevOf(records: ReadonlyArray<GeneratedRecordInfo>, lsn: number): Lsn | undefined {
  const before = records.findLast((r) => r.nextLsn === lsn)
  return before === undefined ? undefined : Lsn(before.startLsn)
}

// ---------------------------------------------------------------- workload

/** mulberry32: the workload's own PRNG, so the workload is the same for every crash point. */
function prng(seed: number): () => number {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const storeOptions = (commitLsn: number): SegmentStoreOptions => ({
  directory: DIRECTORY,
  segmentSizeBytes: SEGMENT_BYTES,
  commitLsn: Lsn(commitLsn),
  pgVersion: 150004,
  systemId: SYSTEM_ID
})

const generatorAt = (startLsn: number, prevLsn: Lsn | undefined) =>
  new WalGenerator({ startLsn: Lsn(startLsn), segmentSizeBytes: SEGMENT_BYTES, systemId: SYSTEM_ID, pgVersion: 15, timelineId: 1, prevLsn })

function appendMessage(generator: WalGenerator, sizeBytes: number, tag: string): GeneratedRecord {
  const payload = new Uint8Array(sizeBytes)
  for (let i = 0; i < sizeBytes; i += 61) payload[i] = (i * 7 + tag.charCodeAt(tag.length - 1)) & 0xff
  return generator.appendLogicalMessage(tag, payload)
}

const ackedOf = (store: SegmentStore) => store.positions().flushRecordLsn

/** Writes `records` (already in the model) as 1–3 writes cut anywhere, keeping the model in step. */
const issue = (store: SegmentStore, model: Model, from: number, to: number, random: () => number) =>
  Effect.gen(function* () {
    const cuts = [from, to]
    const extra = Math.floor(random() * 3)
    for (let i = 0; i < extra; i++) cuts.push(from + Math.floor(random() * (to - from)))
    cuts.sort((a, b) => a - b)
    for (let i = 0; i + 1 < cuts.length; i++) {
      const [a, b] = [cuts[i]!, cuts[i + 1]!]
      if (a === b) continue
      model.issuedEnd = b
      yield* store.write(Lsn(a), model.bytes.subarray(a - START, b - START))
      model.acked = ackedOf(store)
    }
  })

const workload = (model: Model, workloadSeed: number) =>
  Effect.gen(function* () {
    const random = prng(workloadSeed)
    const disk = yield* Disk
    yield* disk.mkdir(DIRECTORY)
    yield* disk.syncDirectory("/")
    const store = yield* openSegmentStore(storeOptions(0))
    yield* store.initializeFirstSegment(Lsn(START))
    model.truncating = { old: viewOf(model), newEndLsn: START }
    yield* store.truncate(Lsn(START))
    model.truncating = undefined
    model.acked = ackedOf(store)
    let generator = generatorAt(START, undefined)
    let epoch = 0
    let deepTruncationDone = false
    // Truncates to a boundary at or above the persisted commit; `deep` takes the lowest one, which
    // usually lies segments below write_lsn (the case where the order of operations matters).
    const truncate = (deep: boolean) =>
      Effect.gen(function* () {
        if (random() < 0.5) {
          yield* store.flush
          model.acked = ackedOf(store)
        }
        const floor = Math.max(model.commit, START)
        const writeRecordLsn = store.positions().writeRecordLsn
        const candidates = [START, ...model.records.map((r) => r.nextLsn)].filter((lsn) => lsn >= floor && lsn <= writeRecordLsn && lsn <= model.issuedEnd)
        const endLsn = deep ? candidates[0]! : candidates[Math.floor(random() * candidates.length)]!
        model.truncating = { old: viewOf(model), newEndLsn: endLsn }
        yield* store.truncate(Lsn(endLsn))
        model.truncating = undefined
        cutModel(model, endLsn)
        expect(ackedOf(store)).toBe(endLsn)
        generator = generatorAt(endLsn, prevOf(model.records, endLsn))
        epoch++
      })
    for (let step = 0; step < WORKLOAD_STEPS_MAX && model.generatedEnd - START < WAL_BYTES_MAX; step++) {
      const roll = random()
      if (!deepTruncationDone && model.generatedEnd > START + 1.6 * SEGMENT_BYTES) {
        yield* truncate(true)
        deepTruncationDone = true
        continue
      }
      if (roll < 0.08 && model.records.length > 0) {
        yield* truncate(random() < 0.3)
        continue
      }
      if (roll < 0.12) {
        const below = segmentNoOf(model.commit, SEGMENT_BYTES) - 1
        if (model.commit > 0 && below >= 2) yield* store.removeUpTo(below)
        continue
      }
      // A batch of records, written in pieces that ignore record boundaries.
      const from = model.generatedEnd
      const count = 1 + Math.floor(random() * 4)
      for (let i = 0; i < count; i++) {
        const kind = random()
        if (kind < 0.04) {
          addGenerated(model, generator.appendSwitch())
        } else {
          const sizeBytes = kind < 0.7 ? 40 + Math.floor(random() * 600) : kind < 0.9 ? 2000 + Math.floor(random() * 10_000) : 20_000 + Math.floor(random() * 80_000)
          addGenerated(model, appendMessage(generator, sizeBytes, `epoch${epoch}`))
        }
      }
      yield* issue(store, model, from, model.generatedEnd, random)
      if (random() < 0.5) {
        yield* store.flush
        model.acked = ackedOf(store)
        // The persisted commit lags: a proposer's commit_lsn trails, and the control file is
        // saved now and then.
        if (random() < 0.2) model.commit = model.acked
      }
    }
    yield* store.flush
    model.acked = ackedOf(store)
    yield* store.close
  })

// ---------------------------------------------------------------- verification

type Outcome = "no-crash" | "no-commit" | "end" | "truncate-new-end" | "truncate-old-end"

/** Boundaries discovery may stop at: ends of records whose bytes were issued, and commit_lsn. */
function isBoundary(view: View, lsn: number, commitLsn: number): boolean {
  return lsn === commitLsn || view.records.some((r) => r.nextLsn === lsn && r.endLsn <= view.issuedEnd)
}

function sameBytes(actual: Uint8Array, expected: Uint8Array): boolean {
  return Buffer.compare(Buffer.from(actual.buffer, actual.byteOffset, actual.length), Buffer.from(expected.buffer, expected.byteOffset, expected.length)) === 0
}

const readRange = (store: SegmentStore, from: number, to: number) =>
  Effect.gen(function* () {
    const out = new Uint8Array(to - from)
    let at = from
    while (at < to) {
      const chunk = yield* store.read(Lsn(at), to - at)
      expect(chunk.length).toBeGreaterThan(0)
      out.set(chunk, at - from)
      at += chunk.length
    }
    return out
  })

const segmentNosOnDisk = Effect.gen(function* () {
  const entries = yield* (yield* Disk).list(DIRECTORY)
  return entries.flatMap((entry) => {
    const parsed = parseSegmentFileName(entry.name, SEGMENT_BYTES)
    return parsed === undefined ? [] : [parsed.segmentNo]
  })
})

const recover = (model: Model) =>
  Effect.gen(function* () {
    const commitLsn = model.commit
    // The timeline directory (made by timeline creation, outside this test) may not have survived.
    yield* (yield* Disk).mkdir(DIRECTORY)
    const store = yield* openSegmentStore(storeOptions(commitLsn))
    const { writeLsn: endLsn, flushLsn, writeRecordLsn, flushRecordLsn } = store.positions()
    expect([flushLsn, writeRecordLsn, flushRecordLsn]).toEqual([endLsn, endLsn, endLsn])
    expect(store.isTruncationPending).toBe(true)
    let outcome: Outcome
    let base: View
    if (commitLsn === 0) {
      // No commit persisted yet: Neon's rule, no WAL at all.
      expect(endLsn).toBe(0)
      outcome = "no-commit"
      base = viewOf(model)
    } else {
      const found = yield* readRange(store, commitLsn, endLsn)
      // Nothing past the end is served, whatever files lie there.
      expect((yield* store.read(endLsn, 1000)).length).toBe(0)
      const written = (view: View) =>
        endLsn <= view.generatedEnd && isBoundary(view, endLsn, commitLsn) &&
        sameBytes(found, view.bytes.subarray(commitLsn - START, endLsn - START))
      const matches = (view: View) => endLsn >= view.acked && written(view)
      const truncating = model.truncating
      if (truncating !== undefined) {
        // The new end exactly, or the old log with all it had acknowledged.
        const newEnd = endLsn === truncating.newEndLsn && written(truncating.old)
        const oldEnd = matches(truncating.old)
        expect(newEnd || oldEnd, `crash in truncate to ${truncating.newEndLsn}: found end ${endLsn}, old acked ${truncating.old.acked}`).toBe(true)
        outcome = newEnd ? "truncate-new-end" : "truncate-old-end"
        base = truncating.old
      } else {
        const view = viewOf(model)
        expect(endLsn, "acknowledged WAL lost").toBeGreaterThanOrEqual(view.acked)
        expect(matches(view), `found end ${endLsn} (acked ${view.acked}, issued ${view.issuedEnd}) is not written WAL`).toBe(true)
        outcome = "end"
        base = view
      }
    }

    // Life goes on: truncate to what was found, write new WAL over whatever lies beyond, and a
    // clean reopen must find exactly the kept prefix plus the new WAL.
    const restartLsn = commitLsn === 0 ? START : endLsn
    if (commitLsn === 0) yield* store.initializeFirstSegment(Lsn(START))
    yield* store.truncate(Lsn(restartLsn))
    expect(Math.max(...yield* segmentNosOnDisk)).toBeLessThanOrEqual(segmentNoOf(restartLsn, SEGMENT_BYTES))
    const generator = generatorAt(restartLsn, prevOf(base.records, restartLsn))
    const fresh = [appendMessage(generator, 300, "after"), appendMessage(generator, 200_000, "after"), appendMessage(generator, 500, "after")]
    for (const record of fresh) yield* store.write(record.fromLsn, record.bytes)
    yield* store.flush
    yield* store.close
    const reopenLsn = commitLsn === 0 ? START : commitLsn
    const reopened = yield* openSegmentStore(storeOptions(reopenLsn))
    const finalLsn = fresh.at(-1)!.nextLsn
    expect(reopened.positions().flushRecordLsn).toBe(finalLsn)
    const expected = new Uint8Array(finalLsn - reopenLsn)
    expected.set(base.bytes.subarray(reopenLsn - START, restartLsn - START), 0)
    let at = restartLsn - reopenLsn
    for (const record of fresh) {
      expected.set(record.bytes, at)
      at += record.bytes.length
    }
    expect(sameBytes(yield* readRange(reopened, reopenLsn, finalLsn), expected), "WAL after recovery differs").toBe(true)
    yield* reopened.close
    return outcome
  })

// ---------------------------------------------------------------- harness

interface RunResult {
  readonly operations: number
  readonly outcome: Outcome
  /** What the crash did to unsynced state (SimDisk stats). */
  readonly tornWrites: number
  readonly droppedWrites: number
  readonly undoneMetadata: number
}

function runOnce(workloadSeed: number, kernelSeed: number, crashAtOperation: number): RunResult {
  const kernel = new Kernel(kernelSeed, { recordTrace: false })
  const disk = new SimDisk(kernel, "sk", NO_DISK_FAULTS)
  const first = new Incarnation("sk", 1)
  let operations = 0
  let crashed = false
  const hooks = {
    beforeOperation: () => {
      operations++
      if (operations !== crashAtOperation) return true
      first.alive = false
      disk.crash()
      crashed = true
      return false
    }
  }
  const model = newModel()
  const fiber = forkInLife(kernel, first, Effect.provideService(workload(model, workloadSeed), Disk, disk.service(first, hooks)))
  kernel.run()
  const { tornWrites, droppedWrites, undoneMetadata } = disk.stats
  if (!crashed) {
    expectSuccess(fiber.pollUnsafe())
    return { operations, outcome: "no-crash", tornWrites, droppedWrites, undoneMetadata }
  }
  expect(fiber.pollUnsafe()).toBeUndefined()
  const second = new Incarnation("sk", 2)
  const recovery = forkInLife(kernel, second, Effect.provideService(recover(model), Disk, disk.service(second)))
  kernel.run()
  return { operations, outcome: expectSuccess(recovery.pollUnsafe()), tornWrites, droppedWrites, undoneMetadata }
}

function expectSuccess<A, E>(exit: Exit.Exit<A, E> | undefined): A {
  if (exit === undefined) throw new Error("the program did not finish")
  if (Exit.isFailure(exit)) throw new Error(Cause.pretty(exit.cause))
  return exit.value
}

/** Kernel seed for one crash point: distinct per (workload, point, repetition). */
const kernelSeedOf = (workloadSeed: number, operation: number, repetition: number) => workloadSeed * 1_000_003 + operation * 17 + repetition

describe("segment store crash safety (simulated disk, crash before every Disk operation)", () => {
  const WORKLOAD_SEEDS = [1, 2, 3, 4]
  const REPETITIONS = 2
  const outcomes = new Map<Outcome, number>()
  const crashEffects = { tornWrites: 0, droppedWrites: 0, undoneMetadata: 0 }

  test.each(WORKLOAD_SEEDS)("workload %i: every crash point, %#", (workloadSeed) => {
    const total = runOnce(workloadSeed, 0, Number.POSITIVE_INFINITY).operations
    expect(total).toBeGreaterThan(50)
    for (let operation = 1; operation <= total; operation++) {
      for (let repetition = 0; repetition < REPETITIONS; repetition++) {
        const seed = kernelSeedOf(workloadSeed, operation, repetition)
        let result: RunResult
        try {
          result = runOnce(workloadSeed, seed, operation)
        } catch (error) {
          throw new Error(`workload ${workloadSeed}, crash before operation ${operation} of ${total}, kernel seed ${seed}: ${String(error)}`)
        }
        outcomes.set(result.outcome, (outcomes.get(result.outcome) ?? 0) + 1)
        crashEffects.tornWrites += result.tornWrites
        crashEffects.droppedWrites += result.droppedWrites
        crashEffects.undoneMetadata += result.undoneMetadata
      }
    }
  })

  test("the crash points covered what matters", () => {
    // Both ways out of an interrupted truncate were taken, ordinary crashes were checked, and
    // the crash model tore, dropped and undid things.
    expect(outcomes.get("truncate-new-end") ?? 0).toBeGreaterThan(0)
    expect(outcomes.get("truncate-old-end") ?? 0).toBeGreaterThan(0)
    expect(outcomes.get("no-commit") ?? 0).toBeGreaterThan(0)
    expect(outcomes.get("end") ?? 0).toBeGreaterThan(100)
    expect(crashEffects.tornWrites).toBeGreaterThan(0)
    expect(crashEffects.droppedWrites).toBeGreaterThan(0)
    expect(crashEffects.undoneMetadata).toBeGreaterThan(0)
  })
})
