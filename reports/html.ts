/** Small HTML building blocks for reports: escaped text, a page, a key/value table. */
export function escapeHtml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;").replace(/'/g, "&#39;")
}

export function htmlPage(title: string, body: ReadonlyArray<string>): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 90em; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #176317; font-weight: bold; } .fail { color: #a11; font-weight: bold; }
.level-off { color: #888; } .level-rare { color: #a60; } .level-frequent { color: #a11; font-weight: bold; }
.note { color: #666; font-style: italic; }
pre.trace { font-size: 0.8em; background: #f6f6f6; padding: 1em; overflow-x: auto; }
.figure { overflow-x: auto; border: 1px solid #ddd; margin: 0.5em 0 1.5em; }
.scroll { max-height: 40em; overflow-y: auto; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
svg .grid { stroke: #eee; } svg .frame { fill: none; stroke: #bbb; }
svg .series { fill: none; stroke-width: 1.6; } svg .series.commit { stroke-dasharray: 5 3; } svg .series.term { stroke-width: 2; }
svg .fault-tick { stroke: #e08000; stroke-width: 2; } svg .fault-mark { fill: #e08000; opacity: 0.8; }
svg .violation-marker line { stroke: #d00; stroke-width: 2; } svg .violation-marker circle { fill: #d00; }
svg .msg line { stroke: #444; stroke-width: 1; } svg .msg text { font-size: 9px; fill: #555; }
svg .msg.lost line { stroke: #999; stroke-dasharray: 3 2; } svg .msg.lost path { stroke: #d00; }
svg text.note, svg text.empty { fill: #888; font-style: italic; }
</style></head>
<body><h1>${escapeHtml(title)}</h1>
${body.join("\n")}
</body></html>
`
}

export function keyValueTable(rows: ReadonlyArray<readonly [string, string]>): string {
  return `<table>${rows.map(([key, value]) => `<tr><th>${escapeHtml(key)}</th><td>${escapeHtml(value)}</td></tr>`).join("")}</table>`
}
