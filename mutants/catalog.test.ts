import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "vitest"
import { findScenario } from "../scenarios/registry.js"
import { invariantOf } from "./hunt.js"
import { median, parseHeader, table } from "./run.js"

/**
 * The catalog's shape, without hunting (that is `npm run mutants`): at least 12 patches, each
 * with a header naming a registered scenario, a comment saying the bug, touching only core/ or
 * the pageserver model, and applying to the tree as it is now (a refactor that moves a mutated
 * line breaks the patch, and this test says which).
 */
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const MUTANTS_DIR = path.join(ROOT, "mutants")
const PATCHES = fs.readdirSync(MUTANTS_DIR).filter((name) => name.endsWith(".patch")).sort()

/** The files a unified diff changes ("+++ b/<path>" lines). */
function patchedFiles(text: string): string[] {
  return [...text.matchAll(/^\+\+\+ b\/(\S+)/gm)].map((m) => m[1]!)
}

/** Whether `patch -p1 --dry-run` applies the patch to a copy of the files it touches. */
function appliesToTree(patchText: string): { readonly ok: boolean; readonly output: string } {
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "sk-mutant-check-"))
  try {
    for (const file of patchedFiles(patchText)) {
      fs.mkdirSync(path.dirname(path.join(scratch, file)), { recursive: true })
      fs.copyFileSync(path.join(ROOT, file), path.join(scratch, file))
    }
    const patchPath = path.join(scratch, "mutant.patch")
    fs.writeFileSync(patchPath, patchText)
    const run = spawnSync("patch", ["-p1", "--dry-run", "--forward", "--fuzz=0", "-i", patchPath], { cwd: scratch, encoding: "utf8" })
    return { ok: run.status === 0, output: `${run.stdout}${run.stderr}` }
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true })
  }
}

describe("mutants catalog", () => {
  it("holds at least 12 distinct planted bugs", () => {
    expect(PATCHES.length).toBeGreaterThanOrEqual(12)
    const bodies = PATCHES.map((name) => fs.readFileSync(path.join(MUTANTS_DIR, name), "utf8").replace(/^#.*\n/gm, ""))
    expect(new Set(bodies).size).toBe(bodies.length)
  })

  it.each(PATCHES)("%s: header, comment, and only core/ or the pageserver model changed", (name) => {
    const text = fs.readFileSync(path.join(MUTANTS_DIR, name), "utf8")
    const header = parseHeader(text)
    expect(header, "first line: # scenario: NAME seeds: N").toBeDefined()
    expect(findScenario(header!.scenario), `scenario ${header!.scenario}`).toBeDefined()
    expect(header!.seeds).toBeGreaterThan(0)
    // A mark the bug suppresses must be one the scenario expects, and coverage needs 100 runs.
    for (const mark of header!.marks) expect(findScenario(header!.scenario)!.expectedMarks).toContain(mark)
    if (header!.marks.length > 0) expect(header!.seeds).toBeGreaterThanOrEqual(100)
    expect(text).toMatch(/^# Planted bug/m)
    expect(text).toMatch(/^# .*[Ss]hould catch it/m)
    const files = patchedFiles(text)
    expect(files.length).toBeGreaterThan(0)
    for (const file of files) expect(file.startsWith("core/") || file === "sim/pageserver.ts", file).toBe(true)
    // One idea, a minimal diff: a handful of changed lines.
    const changed = text.split("\n").filter((line) => /^[-+](?![-+]{2} )/.test(line))
    expect(changed.length).toBeGreaterThan(0)
    expect(changed.length).toBeLessThanOrEqual(4)
  })

  it.each(PATCHES)("%s applies to the current tree", (name) => {
    const result = appliesToTree(fs.readFileSync(path.join(MUTANTS_DIR, name), "utf8"))
    expect(result.ok, result.output).toBe(true)
  })

  it("the applicability check fails a patch whose context moved", () => {
    const text = fs.readFileSync(path.join(MUTANTS_DIR, PATCHES[0]!), "utf8")
    // The first context line of the first hunk no longer matches the tree.
    const broken = text.replace(/^(@@[^\n]*\n) (.*)$/m, "$1 $2 // moved")
    expect(broken).not.toBe(text)
    expect(appliesToTree(broken).ok).toBe(false)
  })
})

describe("hunt and run helpers", () => {
  it("names the invariant of a sweep failure", () => {
    expect(invariantOf("violation", "swarm seed 7: service-checker at 1200 µs: commit-durability: lost 0/1A0 on sk1; and 2 more")).toBe("commit-durability")
    expect(invariantOf("violation", "liveness failure: swarm seed 3: service at 99 µs: liveness: consumer behind")).toBe("liveness")
    expect(invariantOf("nondeterminism", "swarm seed 3: hash a in worker 0, b when re-run in worker 1")).toBe("nondeterminism")
    expect(invariantOf("violation", "swarm seed 3: the run threw Error: x")).toBe("threw")
    expect(invariantOf("violation", "acceptor-storage seed 6: sk1 at 78 µs: recovered WAL differs from what was streamed at LSN 1648640; sk1 at 99 µs: x"))
      .toBe("recovered WAL differs from what was streamed")
  })

  it("reads a header's optional marks", () => {
    expect(parseHeader("# scenario: swarm seeds: 120 marks: a,b\n# x")).toEqual({ scenario: "swarm", seeds: 120, marks: ["a", "b"] })
    expect(parseHeader("# scenario: swarm seeds: 5\n")).toEqual({ scenario: "swarm", seeds: 5, marks: [] })
    expect(parseHeader("# comment\n# scenario: swarm seeds: 5\n")).toBeUndefined()
  })

  it("takes the median of seeds to catch and tabulates", () => {
    expect(median([])).toBeUndefined()
    expect(median([5, 1, 3])).toBe(3)
    expect(median([4, 1, 3, 10])).toBe(3.5)
    const text = table([
      { name: "a.patch", hunt: { scenario: "swarm", seedsRun: 3, firstFailingSeed: 2, seconds: 1.25, violation: "x", invariant: "ack-after-fsync", baselineFailures: [], missedMarks: [] }, problem: undefined },
      { name: "bb.patch", hunt: { scenario: "swarm", seedsRun: 50, firstFailingSeed: null, seconds: 9, violation: null, invariant: null, baselineFailures: [4], missedMarks: ["torn-write"] }, problem: undefined }
    ])
    expect(text.split("\n")[1]).toBe("a       yes      3      ack-after-fsync  1.3")
    expect(text.split("\n")[2]).toBe("bb      ESCAPED  50     -                9.0")
  })
})
