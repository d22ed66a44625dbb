// Goal: reports show what a person needs (outcome, repro, problems, work, trace) and cannot be
// broken by what a trace or violation contains. Method: render a real run of a planted-bug
// scenario and a hand-made sweep summary; check content and escaping.
import { describe, expect, test } from "vitest"
import { findScenario } from "../scenarios/registry.js"
import { escapeHtml } from "./html.js"
import { runHtml, runJson, runText } from "./run-report.js"
import { sweepHtml, sweepText, type SweepSummary } from "./sweep-report.js"

const context = { effectVersion: "4.1.0", commit: "abc123", repro: "sk sim run --scenario x --seed 1" }

describe("reports", () => {
  test("a failing run's text, JSON and HTML name the violation, the hash and the repro", () => {
    const scenario = findScenario("append-log-planted-ack-before-fsync")!
    const result = [0, 1, 2, 3, 4, 5].map((seed) => scenario.run(seed, { recordTrace: true })).find((r) => !r.ok)
    expect(result).toBeDefined()
    const text = runText(result!, context)
    expect(text).toMatch(/^FAIL append-log-planted-ack-before-fsync seed \d+/)
    expect(text).toContain(`trace hash: ${result!.traceHash}`)
    expect(text).toMatch(/VIOLATION .* acknowledged record \d+ lost by a crash/)
    const json = runJson(result!, context)
    expect(json.ok).toBe(false)
    expect(json.repro).toBe(context.repro)
    const html = runHtml(result!, context)
    expect(html).toContain(result!.traceHash)
    expect(html).toContain("acknowledged record")
    expect(html).toContain(escapeHtml(result!.traceLines[result!.traceLines.length - 1]!))
    expect(html.startsWith("<!doctype html>")).toBe(true)
  })

  test("HTML escapes what it shows", () => {
    expect(escapeHtml(`<script>alert("x")</script> & more`)).toBe("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more")
    const summary: SweepSummary = {
      scenarios: ["s"], seeds: 2, start: 0, runs: 2, rechecked: 1, simulatedMs: 10, elapsedMs: 5, effect: "4.1.0", commit: "c",
      failures: [{ scenario: "s", seed: 1, kind: "violation", detail: "<b>boom</b>", repro: "sk sim run --scenario s --seed 1" }],
      firstFailureAfterSeeds: 2, marks: { "crash-after-ack": 2 }, missedMarks: ["torn-tail-recovered"], work: { fsyncs: 7 }
    }
    const html = sweepHtml(summary)
    expect(html).toContain("&lt;b&gt;boom&lt;/b&gt;")
    expect(html).not.toContain("<b>boom</b>")
    expect(html).toContain("Never hit: torn-tail-recovered")
    expect(sweepText(summary)).toContain("1 failed (first after 2 seeds)")
  })
})
