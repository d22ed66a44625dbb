import { mkdirSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import type { FaultEvent, ProgressSample, RunTimeline, ScenarioResult } from "../scenarios/scenario.js"
import { formatLsn, formatSeconds, messageWindow, progressChart, sortedNodes, spaceTimeDiagram } from "./charts.js"
import { escapeHtml, htmlPage, keyValueTable } from "./html.js"
import { timelineFromTrace } from "./trace-timeline.js"

/**
 * How one run is shown: text for a terminal, a JSON object for tools, an HTML page a person can
 * open (with the whole trace when it was recorded).
 */
export interface RunContext {
  readonly effectVersion: string
  readonly commit: string
  readonly repro: string
}

export function runJson(result: ScenarioResult, context: RunContext) {
  return {
    scenario: result.scenario,
    seed: result.seed,
    ok: result.ok,
    traceHash: result.traceHash,
    events: result.events,
    simulatedMs: result.simulatedMs,
    violations: result.violations,
    nondeterminism: result.nondeterminism,
    config: result.config,
    work: result.work,
    marks: result.marks,
    timeline: result.timeline ?? null,
    effect: context.effectVersion,
    commit: context.commit,
    repro: context.repro
  }
}

/** Each trip-wire hit once per (what, where): a loop that touches Date.now prints one line. */
export function distinctHits(result: ScenarioResult): ReadonlyArray<{ readonly what: string; readonly site: string }> {
  const seen = new Set<string>()
  return result.nondeterminism.filter((hit) => {
    const key = `${hit.what} ${hit.site}`
    if (seen.has(key)) return false
    seen.add(key)
    return true
  })
}

export function runText(result: ScenarioResult, context: RunContext): string {
  const lines = [
    `${result.ok ? "PASS" : "FAIL"} ${result.scenario} seed ${result.seed}: ${result.events} events, ${result.simulatedMs} ms simulated`,
    `config: ${result.config}`,
    `work: ${Object.entries(result.work).map(([k, v]) => `${k}=${v}`).join(" ")}`
  ]
  if (result.marks.length > 0) lines.push(`marks: ${result.marks.join(" ")}`)
  const timeline = result.timeline
  if (timeline === undefined) {
    lines.push("timeline: not recorded by this scenario")
  } else {
    lines.push(`timeline: ${timeline.faults.length} faults, ${timeline.progress.length} progress samples, ${timeline.messages.length} messages`)
    for (const p of lastPositions(timeline.progress)) {
      lines.push(`  ${p.node}: term ${p.term} flush ${formatLsn(p.flushLsn)} commit ${formatLsn(p.commitLsn)} at ${formatSeconds(p.atUs)}`)
    }
  }
  for (const v of result.violations) lines.push(`VIOLATION ${v.who} at ${v.atUs} µs: ${v.message}`)
  for (const h of distinctHits(result)) lines.push(`NON-DETERMINISM: touched ${h.what} at ${h.site}`)
  lines.push(`trace hash: ${result.traceHash}`, `repro: ${context.repro}`)
  return lines.join("\n")
}

/** Each node's last sample, in node order. */
function lastPositions(progress: ReadonlyArray<ProgressSample>): ReadonlyArray<ProgressSample> {
  const last = new Map<string, ProgressSample>()
  for (const p of progress) {
    const seen = last.get(p.node)
    if (seen === undefined || p.atUs >= seen.atUs) last.set(p.node, p)
  }
  return sortedNodes(last.keys()).map((node) => last.get(node)!)
}

/** How many trace lines the page shows: more makes a browser slow; trace.txt has them all. */
export const HTML_TRACE_LINES_MAX = 20_000
const HTML_FAULT_ROWS_MAX = 2_000
const SPACETIME_BEFORE = 200
const SPACETIME_AFTER = 50

/**
 * The trace lines the page shows: all when few, else the header and a window that ends a little
 * after the first violation (or at the end of the run), with a count of what was left out.
 */
export function traceExcerpt(lines: ReadonlyArray<string>, max: number = HTML_TRACE_LINES_MAX): { readonly text: ReadonlyArray<string>; readonly omitted: number } {
  if (lines.length <= max) return { text: lines, omitted: 0 }
  let header = 0
  while (header < lines.length && header < 50 && lines[header]!.startsWith("#")) header++
  let violationAt = -1
  for (let i = header; i < lines.length; i++) {
    if (lines[i]!.includes(" VIOLATION ")) {
      violationAt = i
      break
    }
  }
  const room = max - header
  const end = violationAt < 0 ? lines.length : Math.min(lines.length, violationAt + Math.floor(room / 10))
  const start = Math.max(header, end - room)
  const text = [...lines.slice(0, header), `… ${start - header} lines left out (trace.txt has them all) …`, ...lines.slice(start, end)]
  if (end < lines.length) text.push(`… ${lines.length - end} more lines (trace.txt has them all) …`)
  return { text, omitted: lines.length - (end - start) - header }
}

/** The swarm configuration ("crash=off partition=frequent ...") as a table, levels coloured. */
function configTable(config: string): string {
  const pairs = config.split(/\s+/).filter((word) => word.length > 0).map((word) => {
    const eq = word.indexOf("=")
    return eq < 0 ? [word, ""] as const : [word.slice(0, eq), word.slice(eq + 1)] as const
  })
  if (pairs.length === 0) return "<p class=\"note\">No configuration recorded.</p>"
  return `<table id="config"><tr><th>fault family</th><th>level</th></tr>${pairs.map(([key, value]) =>
    `<tr><td>${escapeHtml(key)}</td><td class="level-${escapeHtml(value)}">${escapeHtml(value)}</td></tr>`).join("")}</table>`
}

function faultTable(faults: ReadonlyArray<FaultEvent>): string {
  if (faults.length === 0) return "<p id=\"faults\">No faults happened.</p>"
  const shown = faults.slice(0, HTML_FAULT_ROWS_MAX)
  return `<div class="scroll"><table id="faults"><tr><th>time</th><th>fault</th><th>nodes</th><th>detail</th></tr>${shown.map((f) =>
    `<tr><td class="num">${formatSeconds(f.atUs)}</td><td>${escapeHtml(f.kind)}</td><td>${escapeHtml(f.nodes.join(", "))}</td><td>${escapeHtml(f.detail ?? "")}</td></tr>`).join("")}</table></div>` +
    (faults.length > shown.length ? `<p class="note">${faults.length - shown.length} more faults not listed (report.json has them all).</p>` : "")
}

function violationTable(result: ScenarioResult): string {
  if (result.violations.length === 0) return "<p id=\"violations\" class=\"pass\">No violations.</p>"
  return `<table id="violations"><tr><th>time</th><th>who</th><th>message</th></tr>${result.violations.map((v, index) =>
    `<tr id="violation-${index}"><td class="num">${formatSeconds(v.atUs)} (${v.atUs} µs)</td><td>${escapeHtml(v.who)}</td><td>${escapeHtml(v.message)}</td></tr>`).join("")}</table>`
}

export function runHtml(result: ScenarioResult, context: RunContext): string {
  const recorded = result.timeline
  const timeline: RunTimeline = recorded ?? timelineFromTrace(result.traceLines)
  const derived = recorded === undefined
  const note = derived
    ? result.traceLines.length > 0
      ? "This scenario recorded no timeline: faults, connections and positions below are read back from its trace lines."
      : "This scenario recorded no timeline and the trace was not kept: there is little to draw."
    : undefined
  const hits = distinctHits(result)
  const progressNodes = timeline.progress.map((p) => p.node)
  const window = messageWindow(timeline.messages, result.violations, SPACETIME_BEFORE, SPACETIME_AFTER)
  const trace = traceExcerpt(result.traceLines)
  const traceSection = result.traceLines.length > 0
    ? `<details id="trace"><summary>Trace (${result.traceLines.length} lines${trace.omitted > 0 ? `, ${trace.text.length} shown` : ""})</summary><pre class="trace">${trace.text.map(escapeHtml).join("\n")}</pre></details>`
    : `<p>The trace was not recorded (run with --trace or --report to keep it).</p>`
  return htmlPage(`${result.ok ? "PASS" : "FAIL"} ${result.scenario} seed ${result.seed}`, [
    `<p class="${result.ok ? "pass" : "fail"}">${result.ok ? "PASS" : "FAIL"}: ${escapeHtml(result.scenario)} seed ${result.seed}</p>`,
    `<p>Repro: <code>${escapeHtml(context.repro)}</code></p>`,
    keyValueTable([
      ["trace hash", result.traceHash],
      ["events", String(result.events)],
      ["simulated", `${result.simulatedMs} ms`],
      ["effect", context.effectVersion],
      ["commit", context.commit]
    ]),
    "<h2>Violations</h2>",
    violationTable(result),
    "<h2>Trip-wire hits (non-determinism)</h2>",
    hits.length > 0
      ? `<table id="tripwires"><tr><th>touched</th><th>at</th></tr>${hits.map((h) => `<tr><td>${escapeHtml(h.what)}</td><td><code>${escapeHtml(h.site)}</code></td></tr>`).join("")}</table>`
      : "<p id=\"tripwires\">None.</p>",
    "<h2>Configuration (swarm fault levels)</h2>",
    configTable(result.config),
    note === undefined ? "" : `<p class="note" id="timeline-note">${escapeHtml(note)}</p>`,
    "<h2>Progress: term and LSN per node</h2>",
    "<p class=\"note\">Top: term. Bottom: flush LSN (solid) and commit LSN (dashed). Orange ticks: faults; red rules: violations. Hover for details.</p>",
    `<div class="figure">${progressChart({
      progress: timeline.progress,
      faults: timeline.faults,
      violations: result.violations,
      endUs: result.simulatedMs * 1000,
      ...(derived ? { note: "read back from trace lines" } : {})
    })}</div>`,
    "<h2>Messages</h2>",
    `<p class="note">${window.total === 0 ? "No messages recorded." : `Messages ${window.first + 1} to ${window.first + window.messages.length} of ${window.total}` +
      (window.centeredOnViolation ? `, around the first violation (${SPACETIME_BEFORE} before, ${SPACETIME_AFTER} after).` : ", the last of the run.")}` +
      `${derived ? " Read back from trace lines: connection opens and closes only." : ""} Time runs downwards; each row is one distinct moment (not to scale); dashed arrows with a cross were never read.</p>`,
    `<div class="figure">${spaceTimeDiagram({
      messages: timeline.messages,
      faults: timeline.faults,
      violations: result.violations,
      nodes: progressNodes,
      before: SPACETIME_BEFORE,
      after: SPACETIME_AFTER
    })}</div>`,
    "<h2>Faults</h2>",
    faultTable(timeline.faults),
    "<h2>Coverage marks</h2>",
    result.marks.length > 0
      ? `<ul id="marks">${result.marks.map((m) => `<li>${escapeHtml(m)}</li>`).join("")}</ul>`
      : "<p id=\"marks\">No coverage mark reached.</p>",
    "<h2>Work</h2>",
    keyValueTable(Object.entries(result.work).map(([k, v]) => [k, String(v)])),
    traceSection
  ])
}

/**
 * Writes one run's report folder: trace.txt (every trace line), report.json (runJson with the
 * timeline), report.txt (runText) and report.html (self-contained, open it in a browser).
 * Returns the paths written, in that order.
 */
export function writeRunReport(result: ScenarioResult, context: RunContext, dir: string): { readonly files: ReadonlyArray<string> } {
  mkdirSync(dir, { recursive: true })
  const files: Array<readonly [string, string]> = [
    ["trace.txt", result.traceLines.length > 0 ? `${result.traceLines.join("\n")}\n` : ""],
    ["report.json", `${JSON.stringify(runJson(result, context), null, 2)}\n`],
    ["report.txt", `${runText(result, context)}\n`],
    ["report.html", runHtml(result, context)]
  ]
  return {
    files: files.map(([name, content]) => {
      const path = join(dir, name)
      writeFileSync(path, content)
      return path
    })
  }
}
