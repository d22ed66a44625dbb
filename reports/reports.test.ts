// Goal: reports show what a person needs (outcome, repro, problems, configuration, progress
// chart, space-time diagram, faults, marks, work, trace) and cannot be broken by what a trace,
// node name or violation contains. Method: render a real run of a planted-bug scenario, a
// synthetic run with a timeline and a violation, and a hand-made sweep summary; check
// content, structure and escaping.
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, describe, expect, test } from "vitest"
import { findScenario } from "../scenarios/registry.js"
import { messageWindow } from "./charts.js"
import { syntheticResult } from "./fixtures.js"
import { escapeHtml } from "./html.js"
import { runHtml, runJson, runText, traceExcerpt, writeRunReport } from "./run-report.js"
import { sweepHtml, sweepText, type SweepSummary } from "./sweep-report.js"
import { timelineFromTrace } from "./trace-timeline.js"

const context = { effectVersion: "4.1.0", commit: "abc123", repro: "sk sim run --scenario x --seed 1" }
const dirs: Array<string> = []
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true })
})

/** The opening tag of the element with this id and everything up to its closing tag. */
function element(html: string, id: string, tag: string): string {
  const start = html.indexOf(`<${tag} id="${id}"`)
  expect(start, `#${id}`).toBeGreaterThanOrEqual(0)
  const end = html.indexOf(`</${tag}>`, start)
  return html.slice(start, end + tag.length + 3)
}

function count(text: string, pattern: RegExp): number {
  return [...text.matchAll(pattern)].length
}

describe("reports", () => {
  test("a failing run's text, JSON and HTML name the violation, the hash and the repro", () => {
    const scenario = findScenario("append-log-planted-ack-before-fsync")!
    const result = [0, 1, 2, 3, 4, 5].map((seed) => scenario.run(seed, { recordTrace: true })).find((r) => !r.ok)
    expect(result).toBeDefined()
    const text = runText(result!, context)
    expect(text).toMatch(/^FAIL append-log-planted-ack-before-fsync seed \d+/)
    expect(text).toContain(`trace hash: ${result!.traceHash}`)
    expect(text).toMatch(/VIOLATION .* acknowledged record \d+ lost by a crash/)
    expect(text).toContain("timeline: not recorded")
    const json = runJson(result!, context)
    expect(json.ok).toBe(false)
    expect(json.repro).toBe(context.repro)
    const html = runHtml(result!, context)
    expect(html).toContain(result!.traceHash)
    expect(html).toContain("acknowledged record")
    expect(html).toContain(escapeHtml(result!.traceLines[result!.traceLines.length - 1]!))
    expect(html.startsWith("<!doctype html>")).toBe(true)
    // No timeline: the page says so and still draws both pictures.
    expect(html).toContain('id="timeline-note"')
    expect(html).toContain('<svg id="progress-chart"')
    expect(html).toContain('<svg id="spacetime"')
  })

  test("with a timeline: a line per node and measure, arrows per message, violation marked on chart, diagram and list", () => {
    const result = syntheticResult()
    const html = runHtml(result, context)
    const chart = element(html, "progress-chart", "svg")
    for (const node of ["sk1", "sk2", "sk3", "compute"]) {
      for (const measure of ["term", "flush", "commit"]) {
        expect(count(chart, new RegExp(`<polyline class="series ${measure}" data-node="${node}"`, "g")), `${node} ${measure}`).toBe(1)
      }
    }
    expect(count(chart, /<polyline /g)).toBe(12)
    expect(count(chart, /class="violation-marker"/g)).toBe(1)
    expect(count(chart, /class="fault-tick"/g)).toBe(4)
    // The diagram: a lifeline per node, the 200 messages before the violation and 50 after.
    const diagram = element(html, "spacetime", "svg")
    expect(count(diagram, /class="lifeline"/g)).toBe(4)
    const window = messageWindow(result.timeline!.messages, result.violations, 200, 50)
    expect(window.messages).toHaveLength(250)
    expect(window.messages[199]!.sentUs).toBeLessThanOrEqual(2_000_000)
    expect(window.messages[200]!.sentUs).toBeGreaterThan(2_000_000)
    const arrows = count(diagram, /<g class="msg"><line [^>]*marker-end="url\(#arrowhead\)"/g)
    const lost = count(diagram, /<g class="msg lost">/g)
    expect(arrows + lost).toBe(250)
    expect(lost).toBe(window.messages.filter((m) => m.receivedUs === undefined).length)
    expect(lost).toBeGreaterThan(0)
    expect(count(diagram, /class="violation-marker"/g)).toBe(1)
    expect(diagram).toContain("<circle") // on sk2's own line
    expect(count(diagram, /class="fault-mark"/g)).toBeGreaterThan(0) // the crash of sk2 at 1.995 s
    const violations = element(html, "violations", "table")
    expect(violations).toContain("2.000 s (2000000 µs)")
    expect(violations).toContain("commit 0/1000028 lost after a crash")
    const faults = element(html, "faults", "table")
    expect(count(faults, /<tr>/g)).toBe(5)
    expect(faults).toContain("nemesis")
    expect(html).toContain("<td class=\"level-frequent\">frequent</td>")
    expect(html).toContain("<li>partition-healed</li>")
    expect(html).not.toContain('id="timeline-note"')
    expect(html).toContain('<details id="trace">')
    // Self-contained: no scripts, nothing fetched.
    expect(html).not.toMatch(/<script|<link|src=|https?:\/\/(?!www\.w3\.org\/2000\/svg)/)
  })

  test("without a violation the diagram shows the last messages", () => {
    const result = syntheticResult({ violationAtUs: undefined })
    const window = messageWindow(result.timeline!.messages, result.violations, 200, 50)
    expect(window.centeredOnViolation).toBe(false)
    expect(window.first + window.messages.length).toBe(window.total)
    const html = runHtml(result, context)
    expect(html).toContain("the last of the run")
    expect(html).toContain('<p id="violations" class="pass">No violations.</p>')
    expect(count(element(html, "spacetime", "svg"), /class="violation-marker"/g)).toBe(0)
  })

  test("hostile node names and messages are escaped everywhere", () => {
    const evil = `<img src=x onerror="alert(1)">'&`
    const result = syntheticResult({ nodes: ["sk1", evil, "sk3"], violationMessage: `</table><script>alert("x")</script>` })
    const html = runHtml(result, context)
    expect(html).not.toContain("<img")
    expect(html).not.toContain("<script")
    expect(html).not.toContain(`"alert(1)"`)
    expect(html).toContain(escapeHtml(evil))
    expect(html).toContain("&lt;/table&gt;&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;")
    expect(escapeHtml(`'`)).toBe("&#39;")
    // The attribute carrying the node name stays one attribute.
    expect(html).toContain(`data-node="${escapeHtml(evil)}"`)
  })

  test("writeRunReport writes the four files; JSON and text read back to what the run holds", () => {
    const dir = mkdtempSync(join(tmpdir(), "sk-report-"))
    dirs.push(dir)
    const result = syntheticResult()
    const { files } = writeRunReport(result, context, join(dir, "nested", "out"))
    expect(files.map((f) => f.slice(f.lastIndexOf("/") + 1))).toEqual(["trace.txt", "report.json", "report.txt", "report.html"])
    const trace = readFileSync(files[0]!, "utf8")
    expect(trace.split("\n").slice(0, -1)).toEqual(result.traceLines)
    const json = JSON.parse(readFileSync(files[1]!, "utf8")) as ReturnType<typeof runJson>
    expect(json).toEqual(JSON.parse(JSON.stringify(runJson(result, context))))
    expect(json.timeline).toEqual(result.timeline)
    expect(json.violations).toEqual(result.violations)
    expect(json.config).toBe(result.config)
    expect(json.marks).toEqual(result.marks)
    const text = readFileSync(files[2]!, "utf8")
    expect(text.trimEnd()).toBe(runText(result, context))
    expect(text).toContain("timeline: 4 faults")
    expect(text).toMatch(/ {2}sk2: term 4 flush [0-9A-F]+\/[0-9A-F]+ commit [0-9A-F]+\/[0-9A-F]+ at 3\.000 s/)
    expect(readFileSync(files[3]!, "utf8")).toBe(runHtml(result, context))
    // Without a timeline the JSON says so rather than leaving the key out.
    const { timeline: _, ...bare } = result
    expect(runJson(bare, context).timeline).toBeNull()
  })

  test("a 100k-line trace renders fast and the page keeps a window around the first violation", () => {
    const lines = ["# scenario big", "# seed 1"]
    for (let i = 0; i < 100_000; i++) lines.push(`${i * 10} sk${1 + (i % 3)}#1 disk write /data/x @${i} +8192`)
    lines[60_002] = "600000 sk2#1 VIOLATION commit lost"
    const excerpt = traceExcerpt(lines, 20_000)
    expect(excerpt.text.length).toBeLessThanOrEqual(20_003)
    expect(excerpt.text).toContain("600000 sk2#1 VIOLATION commit lost")
    expect(excerpt.text.slice(0, 2)).toEqual(["# scenario big", "# seed 1"])
    // Header, a marker, 19,998 lines ending a tenth of the room after the violation, a marker.
    expect(excerpt.text).toHaveLength(20_002)
    expect(excerpt.text[3]).toBe(lines[62_001 - 19_998])
    expect(excerpt.text[20_000]).toBe(lines[62_000])
    expect(excerpt.text[20_001]).toBe("… 38001 more lines (trace.txt has them all) …")
    expect(excerpt.omitted).toBe(80_002)
    const result = { ...syntheticResult({ seconds: 20 }), traceLines: lines, events: lines.length }
    const started = performance.now()
    const html = runHtml(result, context)
    const elapsedMs = performance.now() - started
    expect(html.length).toBeLessThan(8 * 1024 * 1024)
    expect(elapsedMs).toBeLessThan(3000)
  })

  test("a timeline read back from trace lines: faults, connections and positions", () => {
    const timeline = timelineFromTrace([
      "# scenario x",
      "0 compute#1 net connect sk1:5454",
      "90 compute#1 net connect sk2:5454",
      "100 sk1#1 net accept sk1:5454<-compute:49152",
      "120 compute#1 net connect sk2:5454 refused",
      "200 net partition compute<->sk3",
      "250 net partition sk1->sk2",
      "300 compute#1 info proposer got vote sk=sk1:5454 term=2 given=true flush=0/1000028 truncate=0/0",
      "310 compute#1 info proposer elected term=2 start=0/1000028",
      "400 compute#1 debug proposer commit commit=0/1000100",
      "500 sk2#1 world crash (nemesis)",
      "600 sk2#2 world start",
      "650 sk3#1 disk datasync /data/f EIO",
      "700 compute#1 net compute:49152->sk1:5454 close",
      "710 sk1#1 net sk1:5454<-compute:49152 eof",
      "800 net heal compute<->sk3",
      "900 sk1#1 world crash (end of run)"
    ])
    expect(timeline.faults.map((f) => `${f.atUs} ${f.kind} ${f.nodes.join(",")}`)).toEqual([
      "200 partition compute,sk3", "250 partition sk1,sk2", "500 crash sk2", "600 restart sk2", "650 disk-error sk3", "800 heal compute,sk3"
    ])
    expect(timeline.messages).toEqual([
      { sentUs: 0, receivedUs: 100, from: "compute", to: "sk1", kind: "connect" },
      { sentUs: 90, from: "compute", to: "sk2", kind: "connect" },
      { sentUs: 700, receivedUs: 710, from: "compute", to: "sk1", kind: "close" }
    ])
    expect(timeline.progress).toEqual([
      { atUs: 300, node: "sk1", term: 2, flushLsn: 0x100_0028, commitLsn: 0 },
      { atUs: 310, node: "compute", term: 2, flushLsn: 0, commitLsn: 0 },
      { atUs: 400, node: "compute", term: 2, flushLsn: 0, commitLsn: 0x100_0100 }
    ])
  })

  test("HTML escapes what it shows; the sweep lists every mark with its seed count", () => {
    expect(escapeHtml(`<script>alert("x")</script> & more`)).toBe("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more")
    const summary: SweepSummary = {
      scenarios: ["s"], seeds: 2, start: 0, runs: 2, rechecked: 1, simulatedMs: 10, elapsedMs: 5, effect: "4.1.0", commit: "c",
      failures: [{ scenario: "s", seed: 1, kind: "violation", detail: "<b>boom</b>", repro: "sk sim run --scenario s --seed 1" }],
      firstFailureAfterSeeds: 2, marks: { "crash-after-ack": 2, "<i>odd</i>": 1 }, missedMarks: ["torn-tail-recovered"], work: { fsyncs: 7 }
    }
    const html = sweepHtml(summary)
    expect(html).toContain("&lt;b&gt;boom&lt;/b&gt;")
    expect(html).not.toContain("<b>boom</b>")
    expect(html).not.toContain("<i>odd</i>")
    expect(html).toContain("Never hit: torn-tail-recovered")
    const marks = element(html, "marks", "table")
    expect(marks).toContain('<tr><td>crash-after-ack</td><td class="num">2</td><td class="num">100%</td></tr>')
    expect(marks).toContain('<tr class="missed"><td>torn-tail-recovered</td><td class="num">0</td><td class="num">0%</td></tr>')
    expect(sweepText(summary)).toContain("1 failed (first after 2 seeds)")
  })
})
