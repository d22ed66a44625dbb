import type { FaultEvent, MessageEvent, ProgressSample, ScenarioResult } from "../scenarios/scenario.js"

/**
 * A made-up run for report tests: three safekeepers and a compute over `seconds` of simulated
 * time, progress every 10 ms, AppendRequest/AppendResponse traffic (some never read), a crash,
 * a partition and its heal, and (unless `violationAtUs` is undefined) one violation. Node
 * names and messages can be replaced to test escaping.
 */
export function syntheticResult(options: {
  readonly seconds?: number
  readonly violationAtUs?: number | undefined
  readonly nodes?: ReadonlyArray<string>
  readonly violationMessage?: string
} = {}): ScenarioResult {
  const seconds = options.seconds ?? 3
  const nodes = options.nodes ?? ["sk1", "sk2", "sk3"]
  const compute = "compute"
  const endUs = seconds * 1_000_000
  const violationAtUs = "violationAtUs" in options ? options.violationAtUs : 2_000_000
  const progress: Array<ProgressSample> = []
  const messages: Array<MessageEvent> = []
  const base = 0x100_0028
  for (let atUs = 0, step = 0; atUs <= endUs; atUs += 10_000, step++) {
    const term = 1 + Math.floor(atUs / 1_000_000)
    nodes.forEach((node, index) => {
      const flushLsn = base + step * 8192 - index * 4096 * (step % 3)
      progress.push({ atUs, node, term, flushLsn: Math.max(base, flushLsn), commitLsn: Math.max(base, base + (step - 2) * 8192) })
    })
    progress.push({ atUs, node: compute, term, flushLsn: base + step * 8192, commitLsn: Math.max(base, base + (step - 2) * 8192) })
    nodes.forEach((node, index) => {
      const sentUs = atUs + index * 100
      const lost = step % 37 === index
      messages.push({ sentUs, from: compute, to: node, kind: "AppendRequest", detail: `lsn=${base + step * 8192}`, ...(lost ? {} : { receivedUs: sentUs + 700 }) })
      if (!lost) messages.push({ sentUs: sentUs + 900, receivedUs: sentUs + 1600, from: node, to: compute, kind: "AppendResponse" })
    })
  }
  const faults: ReadonlyArray<FaultEvent> = [
    { atUs: 500_000, kind: "partition", nodes: [compute, nodes[2]!] },
    { atUs: 900_000, kind: "heal", nodes: [compute, nodes[2]!] },
    { atUs: 1_995_000, kind: "crash", nodes: [nodes[1]!], detail: "nemesis" },
    { atUs: 2_100_000, kind: "restart", nodes: [nodes[1]!] }
  ]
  const traceLines = ["# scenario synthetic", "# seed 7"]
  for (let i = 0; i < 500; i++) traceLines.push(`${i * 6000} ${nodes[i % nodes.length]!}#1 info tick i=${i}`)
  const violations = violationAtUs === undefined
    ? []
    : [{ atUs: violationAtUs, who: nodes[1]!, message: options.violationMessage ?? "commit 0/1000028 lost after a crash" }]
  return {
    scenario: "synthetic",
    seed: 7,
    ok: violations.length === 0,
    traceHash: "0123abcd",
    events: traceLines.length,
    simulatedMs: seconds * 1000,
    violations,
    nondeterminism: [],
    config: "crash=rare partition=frequent break=off",
    work: { appends: 42, fsyncs: 17 },
    marks: ["partition-healed", "sk-crash-after-commit"],
    traceLines,
    timeline: { faults, progress, messages }
  }
}
