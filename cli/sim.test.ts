// Goal: `sk sim` behaves as documented: same seed → same trace hash within one process and
// across processes, distinct exit codes for violations and non-determinism, clear errors for
// bad input. Method: run the built CLI (`npm test` builds first) in child processes, and the
// scenario in-process, and compare.
import { spawnSync } from "node:child_process"
import { dirname, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, test } from "vitest"
import { findScenario } from "../scenarios/registry.js"

const SK = resolve(dirname(fileURLToPath(import.meta.url)), "../bin/sk.js")

function sk(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const child = spawnSync(process.execPath, [SK, ...args], { encoding: "utf8" })
  return { status: child.status, stdout: child.stdout, stderr: child.stderr }
}

describe("sk sim", () => {
  test("same seed, same hash: in one process, across two processes; different seeds differ", () => {
    const scenario = findScenario("append-log")!
    const inProcess = [scenario.run(17, { recordTrace: false }), scenario.run(17, { recordTrace: false })]
    expect(inProcess[0]!.traceHash).toBe(inProcess[1]!.traceHash)
    expect(inProcess[0]!.work["recordsAcked"]).toBeGreaterThan(100) // the seed did real work
    const children = [sk("sim", "run", "--scenario", "append-log", "--seed", "17", "--json"), sk("sim", "run", "--scenario", "append-log", "--seed", "17", "--json")]
    for (const child of children) expect(child.status).toBe(0)
    const parsed = children.map((c) => JSON.parse(c.stdout) as Record<string, unknown>)
    expect(parsed[0]!["traceHash"]).toBe(inProcess[0]!.traceHash)
    expect(parsed[1]!["traceHash"]).toBe(inProcess[0]!.traceHash)
    for (const key of ["scenario", "seed", "ok", "traceHash", "events", "simulatedMs", "violations"]) expect(parsed[0]).toHaveProperty(key)
    expect(parsed[0]!["ok"]).toBe(true)
    const hashes = new Set([17, 18, 19, 20, 21].map((seed) => scenario.run(seed, { recordTrace: false }).traceHash))
    expect(hashes.size).toBe(5)
  })

  test("exit codes: 0 pass, 2 violated invariant, 3 non-determinism", () => {
    expect(sk("sim", "run", "--scenario", "append-log", "--seed", "1").status).toBe(0)
    const violated = sk("sim", "run", "--scenario", "append-log-planted-ack-before-fsync", "--seed", "0")
    expect(violated.status).toBe(2)
    expect(violated.stdout).toMatch(/acknowledged record \d+ lost by a crash/)
    expect(violated.stdout).toMatch(/repro: sk sim run --scenario append-log-planted-ack-before-fsync --seed 0 .*effect 4\./)
    const clock = sk("sim", "run", "--scenario", "append-log-planted-wall-clock", "--seed", "0")
    expect(clock.status).toBe(3)
    expect(clock.stdout).toMatch(/NON-DETERMINISM: touched Date\.now/)
  })

  test("a sweep names the first differing trace line when a child process disagrees", () => {
    const sweep = sk("sim", "sweep", "--seeds", "2", "--recheck-every", "1", "--scenario", "append-log-planted-global-counter")
    expect(sweep.status).toBe(3)
    expect(sweep.stdout).toMatch(/first difference at trace line \d+/)
    expect(sweep.stdout).toMatch(/sk sim run --scenario append-log-planted-global-counter --seed 1/)
  })

  test("a sweep fails with repro lines when a planted durability bug is caught", () => {
    const sweep = sk("sim", "sweep", "--seeds", "2", "--scenario", "append-log-planted-ack-before-fsync", "--json")
    expect(sweep.status).toBe(2)
    const summary = JSON.parse(sweep.stdout) as { failures: Array<{ kind: string; repro: string }>; runs: number }
    expect(summary.runs).toBe(2)
    expect(summary.failures.length).toBeGreaterThan(0)
    expect(summary.failures[0]!.kind).toBe("violation")
  })

  test.each([
    [["sim", "run", "--scenario", "nope", "--seed", "1"], /unknown scenario "nope"/],
    [["sim", "run", "--scenario", "append-log", "--seed", "abc"], /seed must be a non-negative integer/],
    [["sim", "run", "--scenario", "append-log", "--seed", "-1"], /seed must be a non-negative integer|unknown option/],
    [["sim", "run", "--scenario", "append-log", "--seed", "9007199254740992"], /at most 2\^53-1/],
    [["sim", "run", "--scenario", "append-log", "--seed", "1", "--bogus"], /unknown option '--bogus'/],
    [["sim", "sweep", "--seeds", "0"], /positive integer/],
    [["sim", "sweep", "--seeds", "5", "--shard", "3/2"], /shard index/],
    [["sim", "sweep", "--seeds", "4", "--start", "9007199254740990"], /runs past the largest seed/],
    [["sim", "frobnicate"], /unknown command/]
  ])("bad input %j gets a clear error and a non-zero exit", (args, message) => {
    const result = sk(...args)
    expect(result.status).not.toBe(0)
    expect(result.stderr).toMatch(message)
  })

  test("every shard of a sweep re-checks some of its seeds in a child process", () => {
    for (const shard of ["0/2", "1/2"]) {
      const sweep = sk("sim", "sweep", "--seeds", "4", "--shard", shard, "--recheck-every", "10", "--scenario", "append-log", "--json")
      expect(sweep.status).toBe(0)
      const summary = JSON.parse(sweep.stdout) as { runs: number; rechecked: number }
      expect(summary.runs).toBe(2)
      expect(summary.rechecked).toBeGreaterThan(0)
    }
  })

  test("sim list names the scenarios", () => {
    const list = sk("sim", "list")
    expect(list.status).toBe(0)
    expect(list.stdout).toMatch(/^append-log\s/m)
  })
})
