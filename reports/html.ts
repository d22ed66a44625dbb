/** Small HTML building blocks for reports: escaped text, a page, a key/value table. */
export function escapeHtml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;")
}

export function htmlPage(title: string, body: ReadonlyArray<string>): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 80em; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
.pass { color: #176317; font-weight: bold; } .fail { color: #a11; font-weight: bold; }
pre.trace { font-size: 0.8em; background: #f6f6f6; padding: 1em; overflow-x: auto; }
</style></head>
<body><h1>${escapeHtml(title)}</h1>
${body.join("\n")}
</body></html>
`
}

export function keyValueTable(rows: ReadonlyArray<readonly [string, string]>): string {
  return `<table>${rows.map(([key, value]) => `<tr><th>${escapeHtml(key)}</th><td>${escapeHtml(value)}</td></tr>`).join("")}</table>`
}
