import type { FaultEvent, MessageEvent, ProgressSample } from "../scenarios/scenario.js"
import type { Violation } from "../sim/world.js"
import { escapeHtml } from "./html.js"

/**
 * SVG pictures of one run, as strings (no DOM, no scripts): term and LSN progress per node over
 * time, and a space-time diagram of the messages around the first violation. Inputs can be large
 * (a long run samples progress often), so series are thinned to what a pixel can show.
 */

const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]
const MIB = 1024 * 1024

/** Node names in a fixed order: plain code-unit comparison, so a report never depends on locale. */
export function sortedNodes(names: Iterable<string>): ReadonlyArray<string> {
  return [...new Set(names)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
}

export function nodeColor(index: number): string {
  return PALETTE[index % PALETTE.length]!
}

export function formatLsn(lsn: number): string {
  // Postgres prints an LSN as two 32-bit halves in hex; 2^32 is beyond bit operators, so divide.
  const high = Math.floor(lsn / 0x1_0000_0000)
  const low = lsn - high * 0x1_0000_0000
  return `${high.toString(16).toUpperCase()}/${low.toString(16).toUpperCase()}`
}

export function formatSeconds(us: number): string {
  return `${(us / 1_000_000).toFixed(3)} s`
}

/** Tick values for [0, max]: steps of 1, 2 or 5 times a power of ten (seconds, terms). */
function decimalTicks(max: number, wanted: number): ReadonlyArray<number> {
  if (max <= 0) return [0]
  const raw = max / wanted
  const power = 10 ** Math.floor(Math.log10(raw))
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) ?? 10 * power
  const ticks: Array<number> = []
  for (let v = 0; v <= max + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)))
  return ticks
}

/** Tick values for LSNs: powers of two in bytes, so hex labels come out round. */
function lsnTicks(min: number, max: number, wanted: number): ReadonlyArray<number> {
  const span = Math.max(1, max - min)
  let step = 1
  while (span / step > wanted) step *= 2
  const ticks: Array<number> = []
  for (let v = Math.ceil(min / step) * step; v <= max; v += step) ticks.push(v)
  return ticks
}

interface Scale {
  readonly at: (value: number) => number
}

function linear(domainMin: number, domainMax: number, rangeMin: number, rangeMax: number): Scale {
  const span = domainMax - domainMin
  return { at: (value) => (span === 0 ? rangeMin : rangeMin + ((value - domainMin) / span) * (rangeMax - rangeMin)) }
}

function num(value: number): string {
  return (Math.round(value * 10) / 10).toString()
}

/**
 * A step line through (x, y) points, thinned to at most a few points per pixel column: each
 * column keeps its first, lowest, highest and last value, so spikes and drops stay visible.
 */
function stepPath(points: ReadonlyArray<readonly [number, number]>): string {
  const kept: Array<readonly [number, number]> = []
  let column = Number.NaN
  let bucket: Array<readonly [number, number]> = []
  const flush = () => {
    if (bucket.length <= 4) {
      kept.push(...bucket)
    } else {
      let low = bucket[0]!
      let high = bucket[0]!
      for (const p of bucket) {
        if (p[1] < low[1]) low = p
        if (p[1] > high[1]) high = p
      }
      const inner = low[0] <= high[0] ? [low, high] : [high, low]
      kept.push(bucket[0]!, ...inner, bucket[bucket.length - 1]!)
    }
    bucket = []
  }
  for (const p of points) {
    const c = Math.round(p[0])
    if (c !== column) {
      flush()
      column = c
    }
    bucket.push(p)
  }
  flush()
  const out: Array<string> = []
  let lastY = Number.NaN
  for (const [x, y] of kept) {
    // Hold the previous value until the next sample: a position stays until it changes.
    if (!Number.isNaN(lastY)) out.push(`${num(x)},${num(lastY)}`)
    out.push(`${num(x)},${num(y)}`)
    lastY = y
  }
  return out.join(" ")
}

export interface ProgressChartInput {
  readonly progress: ReadonlyArray<ProgressSample>
  readonly faults: ReadonlyArray<FaultEvent>
  readonly violations: ReadonlyArray<Violation>
  readonly endUs: number
  /** Says where the samples came from when not from a recorded timeline. */
  readonly note?: string
}

/**
 * Two panels over one time axis: terms (top) and LSNs (bottom; flush solid, commit dashed),
 * a line per node and measure; faults as ticks under the axis, violations as red rules.
 */
export function progressChart(input: ProgressChartInput): string {
  const width = 1100
  const left = 90
  const right = 130
  const termTop = 20
  const termHeight = 110
  const lsnTop = termTop + termHeight + 30
  const lsnHeight = 300
  const axisY = lsnTop + lsnHeight
  const faultRow = axisY + 40
  const height = faultRow + 30
  const nodes = sortedNodes(input.progress.map((s) => s.node))
  // Loops, not Math.max(...list): a long run has more samples than a call may take arguments.
  let endUs = Math.max(1, input.endUs)
  for (const v of input.violations) if (v.atUs > endUs) endUs = v.atUs
  for (const s of input.progress) if (s.atUs > endUs) endUs = s.atUs
  const x = linear(0, endUs, left, width - right)
  let maxTerm = 1
  let minLsn = Number.POSITIVE_INFINITY
  let maxLsn = 0
  for (const s of input.progress) {
    if (s.term > maxTerm) maxTerm = s.term
    if (s.flushLsn > maxLsn) maxLsn = s.flushLsn
    if (s.commitLsn > maxLsn) maxLsn = s.commitLsn
    if (s.flushLsn > 0 && s.flushLsn < minLsn) minLsn = s.flushLsn
    if (s.commitLsn > 0 && s.commitLsn < minLsn) minLsn = s.commitLsn
  }
  if (!Number.isFinite(minLsn)) minLsn = 0
  // A run starts at some segment offset; start the axis at a round value below the first LSN.
  const lsnFloor = minLsn > 0 ? Math.floor(minLsn / MIB) * MIB : 0
  if (maxLsn <= lsnFloor) maxLsn = lsnFloor + MIB
  const yTerm = linear(0, maxTerm, termTop + termHeight, termTop)
  const yLsn = linear(lsnFloor, maxLsn, lsnTop + lsnHeight, lsnTop)
  const parts: Array<string> = []
  parts.push(`<svg id="progress-chart" xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="term and LSN per node over time">`)
  // Axes and grid.
  for (const t of decimalTicks(endUs / 1_000_000, 10)) {
    const px = num(x.at(t * 1_000_000))
    parts.push(`<line class="grid" x1="${px}" y1="${termTop}" x2="${px}" y2="${axisY}"/>`)
    parts.push(`<text class="tick" x="${px}" y="${axisY + 16}" text-anchor="middle">${t}</text>`)
  }
  parts.push(`<text class="axis-label" x="${num((left + width - right) / 2)}" y="${axisY + 32}" text-anchor="middle">time (s, simulated)</text>`)
  for (const t of decimalTicks(maxTerm, 4).filter((v) => Number.isInteger(v))) {
    const py = num(yTerm.at(t))
    parts.push(`<line class="grid" x1="${left}" y1="${py}" x2="${width - right}" y2="${py}"/>`)
    parts.push(`<text class="tick" x="${left - 6}" y="${py}" text-anchor="end" dominant-baseline="middle">${t}</text>`)
  }
  parts.push(`<text class="axis-label" x="12" y="${termTop + termHeight / 2}" transform="rotate(-90 12 ${termTop + termHeight / 2})" text-anchor="middle">term</text>`)
  for (const v of lsnTicks(lsnFloor, maxLsn, 8)) {
    const py = num(yLsn.at(v))
    parts.push(`<line class="grid" x1="${left}" y1="${py}" x2="${width - right}" y2="${py}"/>`)
    parts.push(`<text class="tick" x="${left - 6}" y="${py}" text-anchor="end" dominant-baseline="middle">${formatLsn(v)}</text>`)
  }
  parts.push(`<text class="axis-label" x="12" y="${lsnTop + lsnHeight / 2}" transform="rotate(-90 12 ${lsnTop + lsnHeight / 2})" text-anchor="middle">LSN</text>`)
  parts.push(`<rect class="frame" x="${left}" y="${termTop}" width="${width - left - right}" height="${termHeight}"/>`)
  parts.push(`<rect class="frame" x="${left}" y="${lsnTop}" width="${width - left - right}" height="${lsnHeight}"/>`)
  // One line per node and measure.
  const byNode = new Map<string, Array<ProgressSample>>()
  for (const s of input.progress) {
    const list = byNode.get(s.node)
    if (list === undefined) byNode.set(s.node, [s])
    else list.push(s)
  }
  nodes.forEach((node, index) => {
    const samples = [...byNode.get(node)!].sort((a, b) => a.atUs - b.atUs)
    const color = nodeColor(index)
    const name = escapeHtml(node)
    const series: ReadonlyArray<readonly [string, (s: ProgressSample) => number, Scale]> = [
      ["term", (s) => s.term, yTerm],
      ["flush", (s) => s.flushLsn, yLsn],
      ["commit", (s) => s.commitLsn, yLsn]
    ]
    for (const [measure, pick, y] of series) {
      // LSN 0 means no WAL yet (or, read from a trace, not known): no point rather than one at the floor.
      const points = samples
        .filter((s) => measure === "term" || pick(s) > 0)
        .map((s) => [x.at(s.atUs), y.at(Math.max(measure === "term" ? 0 : lsnFloor, pick(s)))] as const)
      parts.push(`<polyline class="series ${measure}" data-node="${name}" stroke="${color}" points="${stepPath(points)}"><title>${name} ${measure}</title></polyline>`)
    }
    const legendY = termTop + 10 + index * 34
    parts.push(`<g class="legend" data-node="${name}"><line x1="${width - right + 10}" y1="${legendY}" x2="${width - right + 30}" y2="${legendY}" stroke="${color}" stroke-width="2"/>` +
      `<text x="${width - right + 34}" y="${legendY}" dominant-baseline="middle">${name} flush</text>` +
      `<line x1="${width - right + 10}" y1="${legendY + 14}" x2="${width - right + 30}" y2="${legendY + 14}" stroke="${color}" stroke-width="2" stroke-dasharray="4 3"/>` +
      `<text x="${width - right + 34}" y="${legendY + 14}" dominant-baseline="middle">${name} commit</text></g>`)
  })
  if (nodes.length === 0) {
    parts.push(`<text class="empty" x="${num((left + width - right) / 2)}" y="${lsnTop + lsnHeight / 2}" text-anchor="middle">no progress samples</text>`)
  }
  // Faults under the axis: a tick per fault, its kind and nodes in a tooltip.
  parts.push(`<text class="tick" x="${left - 6}" y="${faultRow}" text-anchor="end" dominant-baseline="middle">faults</text>`)
  for (const f of input.faults) {
    const px = num(x.at(f.atUs))
    parts.push(`<line class="fault-tick" x1="${px}" y1="${faultRow - 7}" x2="${px}" y2="${faultRow + 7}"><title>${escapeHtml(`${formatSeconds(f.atUs)} ${f.kind} ${f.nodes.join(",")}${f.detail === undefined ? "" : ` ${f.detail}`}`)}</title></line>`)
  }
  input.violations.forEach((v, index) => {
    const px = num(x.at(v.atUs))
    parts.push(`<g class="violation-marker" data-index="${index}"><line x1="${px}" y1="${termTop}" x2="${px}" y2="${axisY}"/>` +
      `<circle cx="${px}" cy="${termTop}" r="5"/><title>${escapeHtml(`violation at ${formatSeconds(v.atUs)} by ${v.who}: ${v.message}`)}</title></g>`)
  })
  if (input.note !== undefined) parts.push(`<text class="note" x="${left}" y="12">${escapeHtml(input.note)}</text>`)
  parts.push("</svg>")
  return parts.join("\n")
}

export interface SpaceTimeInput {
  readonly messages: ReadonlyArray<MessageEvent>
  readonly faults: ReadonlyArray<FaultEvent>
  readonly violations: ReadonlyArray<Violation>
  /** Nodes that get a line even with no message in the window. */
  readonly nodes: ReadonlyArray<string>
  readonly before: number
  readonly after: number
  readonly note?: string
}

export interface MessageWindow {
  readonly messages: ReadonlyArray<MessageEvent>
  readonly first: number
  readonly total: number
  readonly centeredOnViolation: boolean
}

/** The messages to draw: `before` sent before the first violation and `after` from it on, else the last ones. */
export function messageWindow(messages: ReadonlyArray<MessageEvent>, violations: ReadonlyArray<Violation>, before: number, after: number): MessageWindow {
  const sorted = [...messages].sort((a, b) => a.sentUs - b.sentUs)
  let firstViolationUs: number | undefined = undefined
  for (const v of violations) if (firstViolationUs === undefined || v.atUs < firstViolationUs) firstViolationUs = v.atUs
  if (firstViolationUs === undefined) {
    const first = Math.max(0, sorted.length - before - after)
    return { messages: sorted.slice(first), first, total: sorted.length, centeredOnViolation: false }
  }
  const pivotUs = firstViolationUs
  let pivot = sorted.findIndex((m) => m.sentUs > pivotUs)
  if (pivot < 0) pivot = sorted.length
  const first = Math.max(0, pivot - before)
  return { messages: sorted.slice(first, pivot + after), first, total: sorted.length, centeredOnViolation: true }
}

/**
 * A vertical line per node, time downwards, an arrow per message from its send to its receipt.
 * Rows are the distinct moments in the window in order (not linear time): bursts of messages a
 * microsecond apart stay readable, and each row is labelled with its time.
 */
export function spaceTimeDiagram(input: SpaceTimeInput): string {
  const window = messageWindow(input.messages, input.violations, input.before, input.after)
  const shown = window.messages
  const fromUs = shown.length > 0 ? shown[0]!.sentUs : 0
  const toUs = shown.length > 0 ? Math.max(...shown.map((m) => m.receivedUs ?? m.sentUs)) : 0
  const violations = input.violations.filter((v) => shown.length === 0 || (v.atUs >= fromUs && v.atUs <= toUs))
  const faults = input.faults.filter((f) => shown.length > 0 && f.atUs >= fromUs && f.atUs <= toUs)
  const nodes = sortedNodes([...input.nodes, ...shown.flatMap((m) => [m.from, m.to])])
  const moments = [...new Set([
    ...shown.flatMap((m) => (m.receivedUs === undefined ? [m.sentUs] : [m.sentUs, m.receivedUs])),
    ...violations.map((v) => v.atUs),
    ...faults.map((f) => f.atUs)
  ])].sort((a, b) => a - b)
  const row = new Map<number, number>()
  moments.forEach((us, index) => row.set(us, index))
  const rowHeight = 14
  const top = 50
  const left = 110
  const column = 160
  const width = left + Math.max(1, nodes.length) * column
  const height = top + Math.max(1, moments.length) * rowHeight + 30
  const colX = new Map<string, number>()
  nodes.forEach((node, index) => colX.set(node, left + column / 2 + index * column))
  const y = (us: number) => top + (row.get(us) ?? 0) * rowHeight
  const parts: Array<string> = []
  parts.push(`<svg id="spacetime" xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="messages between nodes over time">`)
  parts.push(`<defs><marker id="arrowhead" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#444"/></marker></defs>`)
  nodes.forEach((node, index) => {
    const cx = colX.get(node)!
    parts.push(`<g class="lifeline" data-node="${escapeHtml(node)}"><text x="${cx}" y="${top - 24}" text-anchor="middle" fill="${nodeColor(index)}">${escapeHtml(node)}</text>` +
      `<line x1="${cx}" y1="${top - 14}" x2="${cx}" y2="${height - 20}" stroke="${nodeColor(index)}"/></g>`)
  })
  // Time labels at the left, sparse enough not to overlap.
  let lastLabelY = Number.NEGATIVE_INFINITY
  for (const us of moments) {
    const py = y(us)
    if (py - lastLabelY < rowHeight * 3) continue
    lastLabelY = py
    // Microseconds: rows of one burst are often less than a millisecond apart.
    parts.push(`<text class="tick" x="${left - 8}" y="${py}" text-anchor="end" dominant-baseline="middle">${(us / 1_000_000).toFixed(6)} s</text>`)
  }
  for (const f of faults) {
    const py = y(f.atUs)
    for (const node of f.nodes) {
      const cx = colX.get(node)
      if (cx === undefined) continue
      parts.push(`<rect class="fault-mark" x="${cx - 6}" y="${py - 6}" width="12" height="12"><title>${escapeHtml(`${formatSeconds(f.atUs)} ${f.kind} ${f.nodes.join(",")}${f.detail === undefined ? "" : ` ${f.detail}`}`)}</title></rect>`)
    }
  }
  for (const m of shown) {
    const x1 = colX.get(m.from)!
    const x2 = colX.get(m.to)!
    const y1 = y(m.sentUs)
    const tooltip = escapeHtml(`${m.kind} ${m.from} → ${m.to} sent ${formatSeconds(m.sentUs)}${m.receivedUs === undefined ? ", never read" : `, read ${formatSeconds(m.receivedUs)}`}${m.detail === undefined ? "" : `: ${m.detail}`}`)
    if (m.receivedUs === undefined) {
      // Lost (a crash or break came first): a dashed stub towards the receiver, ending in a cross.
      const xe = x1 + (x2 - x1) * 0.4
      const ye = y1 + rowHeight
      parts.push(`<g class="msg lost"><line x1="${x1}" y1="${y1}" x2="${num(xe)}" y2="${ye}"/>` +
        `<path d="M${num(xe - 4)},${ye - 4} L${num(xe + 4)},${ye + 4} M${num(xe - 4)},${ye + 4} L${num(xe + 4)},${ye - 4}"/><title>${tooltip}</title></g>`)
    } else {
      const y2 = y(m.receivedUs)
      parts.push(`<g class="msg"><line x1="${x1}" y1="${y1}" x2="${x2}" y2="${y2}" marker-end="url(#arrowhead)"/>` +
        `<text x="${num(x1 + (x2 > x1 ? 4 : -4))}" y="${y1 - 2}" text-anchor="${x2 > x1 ? "start" : "end"}">${escapeHtml(m.kind)}</text><title>${tooltip}</title></g>`)
    }
  }
  violations.forEach((v, index) => {
    const py = y(v.atUs)
    const cx = colX.get(v.who)
    parts.push(`<g class="violation-marker" data-index="${index}"><line x1="${left}" y1="${py}" x2="${width}" y2="${py}"/>` +
      (cx === undefined ? "" : `<circle cx="${cx}" cy="${py}" r="6"/>`) +
      `<title>${escapeHtml(`violation at ${formatSeconds(v.atUs)} by ${v.who}: ${v.message}`)}</title></g>`)
  })
  if (shown.length === 0) parts.push(`<text class="empty" x="${num(width / 2)}" y="${top + 10}" text-anchor="middle">no messages recorded</text>`)
  if (input.note !== undefined) parts.push(`<text class="note" x="4" y="12">${escapeHtml(input.note)}</text>`)
  parts.push("</svg>")
  return parts.join("\n")
}
