import { mkdirSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import type { ScenarioResult } from "../scenarios/scenario.js"
import { escapeHtml, htmlPage, keyValueTable } from "./html.js"

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
  for (const v of result.violations) lines.push(`VIOLATION ${v.who} at ${v.atUs} µs: ${v.message}`)
  for (const h of distinctHits(result)) lines.push(`NON-DETERMINISM: touched ${h.what} at ${h.site}`)
  lines.push(`trace hash: ${result.traceHash}`, `repro: ${context.repro}`)
  return lines.join("\n")
}

export function runHtml(result: ScenarioResult, context: RunContext): string {
  const problems = [
    ...result.violations.map((v) => `<li>violation: ${escapeHtml(v.who)} at ${v.atUs} µs: ${escapeHtml(v.message)}</li>`),
    ...distinctHits(result).map((h) => `<li>non-determinism: touched ${escapeHtml(h.what)} at <code>${escapeHtml(h.site)}</code></li>`)
  ]
  const trace = result.traceLines.length > 0
    ? `<h2>Trace (${result.traceLines.length} lines)</h2><pre class="trace">${result.traceLines.map(escapeHtml).join("\n")}</pre>`
    : `<p>The trace was not recorded (run with --trace or --report to keep it).</p>`
  return htmlPage(`${result.ok ? "PASS" : "FAIL"} ${result.scenario} seed ${result.seed}`, [
    `<p class="${result.ok ? "pass" : "fail"}">${result.ok ? "PASS" : "FAIL"}: ${escapeHtml(result.scenario)} seed ${result.seed}</p>`,
    `<p>Repro: <code>${escapeHtml(context.repro)}</code></p>`,
    keyValueTable([
      ["trace hash", result.traceHash],
      ["events", String(result.events)],
      ["simulated", `${result.simulatedMs} ms`],
      ["config", result.config],
      ["marks", result.marks.join(" ")],
      ["effect", context.effectVersion],
      ["commit", context.commit]
    ]),
    problems.length > 0 ? `<h2>Problems</h2><ul>${problems.join("")}</ul>` : "<h2>No problems</h2>",
    "<h2>Work</h2>",
    keyValueTable(Object.entries(result.work).map(([k, v]) => [k, String(v)])),
    trace
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
