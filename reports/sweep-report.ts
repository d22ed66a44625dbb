import { escapeHtml, htmlPage, keyValueTable } from "./html.js"

/** A sweep's outcome: what ran, what failed (with repro lines), marks hit and missed, work done. */
export interface SweepFailure {
  readonly scenario: string
  readonly seed: number
  readonly kind: "violation" | "nondeterminism"
  readonly detail: string
  readonly repro: string
}

export interface SweepSummary {
  readonly scenarios: ReadonlyArray<string>
  readonly seeds: number
  readonly start: number
  readonly runs: number
  readonly failures: ReadonlyArray<SweepFailure>
  /** How many seeds had run when the first failure showed (undefined: none failed). */
  readonly firstFailureAfterSeeds: number | undefined
  readonly rechecked: number
  readonly simulatedMs: number
  readonly elapsedMs: number
  readonly marks: Readonly<Record<string, number>>
  readonly missedMarks: ReadonlyArray<string>
  readonly work: Readonly<Record<string, number>>
  readonly effect: string
  readonly commit: string
}

export function sweepText(summary: SweepSummary): string {
  const lines = [
    `sweep: ${summary.runs} runs of ${summary.scenarios.join(", ")} from seed ${summary.start}, ${summary.failures.length} failed` +
      `${summary.firstFailureAfterSeeds === undefined ? "" : ` (first after ${summary.firstFailureAfterSeeds} seeds)`}, ` +
      `${summary.rechecked} re-checked in a child process, ${(summary.simulatedMs / 1000).toFixed(1)} s simulated in ${(summary.elapsedMs / 1000).toFixed(1)} s`,
    `work: ${Object.entries(summary.work).map(([k, v]) => `${k}=${v}`).join(" ")}`,
    `marks: ${Object.entries(summary.marks).map(([k, v]) => `${k}=${v}`).join(" ")}${summary.missedMarks.length > 0 ? ` (never hit: ${summary.missedMarks.join(", ")})` : ""}`
  ]
  for (const failure of summary.failures) lines.push(`FAIL ${failure.kind}: ${failure.detail}\n  ${failure.repro}`)
  return lines.join("\n")
}

export function sweepHtml(summary: SweepSummary): string {
  const failed = summary.failures.length > 0
  return htmlPage(`Sweep of ${summary.scenarios.join(", ")}: ${failed ? `${summary.failures.length} failed` : "all passed"}`, [
    `<p class="${failed ? "fail" : "pass"}">${summary.runs} runs, ${summary.failures.length} failed</p>`,
    keyValueTable([
      ["scenarios", summary.scenarios.join(", ")],
      ["seeds", `${summary.seeds} from ${summary.start}`],
      ["first failure after", summary.firstFailureAfterSeeds === undefined ? "-" : `${summary.firstFailureAfterSeeds} seeds`],
      ["re-checked in a child process", String(summary.rechecked)],
      ["simulated", `${(summary.simulatedMs / 1000).toFixed(1)} s`],
      ["wall clock", `${(summary.elapsedMs / 1000).toFixed(1)} s`],
      ["effect", summary.effect],
      ["commit", summary.commit]
    ]),
    failed
      ? `<h2>Failures</h2><table><tr><th>kind</th><th>seed</th><th>detail</th><th>repro</th></tr>${summary.failures.map((f) =>
        `<tr><td>${escapeHtml(f.kind)}</td><td>${f.seed}</td><td>${escapeHtml(f.detail)}</td><td><code>${escapeHtml(f.repro)}</code></td></tr>`).join("")}</table>`
      : "",
    "<h2>Coverage marks (seeds that reached each)</h2>",
    markTable(summary),
    summary.missedMarks.length > 0 ? `<p class="fail">Never hit: ${escapeHtml(summary.missedMarks.join(", "))}</p>` : "",
    "<h2>Work</h2>",
    keyValueTable(Object.entries(summary.work).map(([k, v]) => [k, String(v)]))
  ])
}

/** Every mark with the seeds that hit it and their share of the runs; marks never hit last, at 0. */
function markTable(summary: SweepSummary): string {
  const share = (count: number) => (summary.runs === 0 ? "-" : `${Math.round((count / summary.runs) * 100)}%`)
  const hit = Object.entries(summary.marks).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  const missed = summary.missedMarks.filter((mark) => !(mark in summary.marks))
  return `<table id="marks"><tr><th>mark</th><th>seeds</th><th>share</th></tr>${[
    ...hit.map(([mark, count]) => `<tr><td>${escapeHtml(mark)}</td><td class="num">${count}</td><td class="num">${share(count)}</td></tr>`),
    ...missed.map((mark) => `<tr class="missed"><td>${escapeHtml(mark)}</td><td class="num">0</td><td class="num">${share(0)}</td></tr>`)
  ].join("")}</table>`
}
