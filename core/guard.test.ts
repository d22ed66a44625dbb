// Goal: keep core/ deterministic and free of I/O (DESIGN.md §3). Method: scan every non-test
// source file under core/ for ambient time, timers, randomness, process/performance/crypto
// globals and for imports of Node built-ins (checked against module.builtinModules, with and
// without the `node:` prefix), of live/ or sim/, or of third-party packages off the allowlist.
// The checker itself is tested against planted violations so that it cannot pass vacuously.
import { builtinModules } from "node:module"
import { readdirSync, readFileSync } from "node:fs"
import { dirname, join, relative, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, test } from "vitest"

const coreDir = dirname(fileURLToPath(import.meta.url))
const repoRoot = resolve(coreDir, "..")

/** Packages that do no I/O and read no clock or randomness. */
const THIRD_PARTY_ALLOWLIST = new Set(["effect", "@node-rs/crc32"])

const FORBIDDEN_GLOBALS: ReadonlyArray<readonly [RegExp, string]> = [
  [/\bDate\s*\.\s*now\b/, "Date.now"],
  [/\bnew\s+Date\b/, "new Date"],
  [/\bDate\s*\(/, "Date()"],
  [/\bMath\s*\.\s*random\b/, "Math.random"],
  [/\bsetTimeout\b/, "setTimeout"],
  [/\bsetInterval\b/, "setInterval"],
  [/\bsetImmediate\b/, "setImmediate"],
  [/\bqueueMicrotask\b/, "queueMicrotask"],
  [/\bprocess\s*\./, "process."],
  [/\bperformance\s*\./, "performance."],
  [/\bcrypto\s*\./, "crypto."],
  [/\brequire\s*\(/, "require("],
  [/\bglobalThis\b/, "globalThis"],
  [/\bPromise\b/, "Promise"]
]

/** Drops comments and string contents so that prose cannot trip the checks. */
function codeOnly(source: string): string {
  return source
    .replace(/\/\*[\s\S]*?\*\//g, " ")
    .replace(/(^|[^:\\])\/\/.*$/gm, "$1")
}

function importSpecifiers(source: string): string[] {
  const found: string[] = []
  const patterns = [/\bfrom\s+["']([^"']+)["']/g, /\bimport\s+["']([^"']+)["']/g, /\bimport\s*\(\s*["']([^"']+)["']\s*\)/g]
  for (const pattern of patterns) for (const match of source.matchAll(pattern)) found.push(match[1]!)
  return found
}

const builtins = new Set(builtinModules.flatMap((name) => [name, `node:${name}`, name.split("/")[0]!]))

export function violations(file: string, source: string): string[] {
  const problems: string[] = []
  const code = codeOnly(source)
  const withoutStrings = code.replace(/"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`(?:[^`\\]|\\.)*`/g, "\"\"")
  for (const [pattern, name] of FORBIDDEN_GLOBALS) {
    if (pattern.test(withoutStrings)) problems.push(`${file}: uses ${name}`)
  }
  for (const specifier of importSpecifiers(code)) {
    if (specifier.startsWith("node:") || builtins.has(specifier) || builtins.has(specifier.split("/")[0]!)) {
      problems.push(`${file}: imports Node built-in ${specifier}`)
    } else if (specifier.startsWith(".")) {
      const target = relative(repoRoot, resolve(dirname(join(repoRoot, file)), specifier))
      if (!target.startsWith("core/")) problems.push(`${file}: imports ${specifier} outside core/`)
    } else {
      const pkg = specifier.startsWith("@") ? specifier.split("/").slice(0, 2).join("/") : specifier.split("/")[0]!
      if (!THIRD_PARTY_ALLOWLIST.has(pkg)) problems.push(`${file}: imports ${specifier}, not on the core allowlist`)
    }
  }
  return problems
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) return sourceFiles(path)
    return entry.name.endsWith(".ts") && !entry.name.endsWith(".test.ts") ? [path] : []
  })
}

describe("core/ purity guard", () => {
  test("no file under core/ touches ambient time, randomness, process or Node built-ins", () => {
    const files = sourceFiles(coreDir)
    expect(files.length).toBeGreaterThan(3)
    const problems = files.flatMap((path) => violations(relative(repoRoot, path), readFileSync(path, "utf8")))
    expect(problems).toEqual([])
  })

  test("the guard catches planted violations", () => {
    const planted: ReadonlyArray<readonly [string, string]> = [
      ["const t = Date.now()", "Date.now"],
      ["const d = new Date()", "new Date"],
      ["const r = Math.random()", "Math.random"],
      ["setTimeout(() => {}, 1)", "setTimeout"],
      ["queueMicrotask(() => {})", "queueMicrotask"],
      ["const e = process.env.X", "process."],
      ["performance.now()", "performance."],
      ["crypto.randomUUID()", "crypto."],
      ['import { readFileSync } from "fs"', "built-in fs"],
      ['import { readFileSync } from "node:fs"', "built-in node:fs"],
      ['import * as p from "path/posix"', "built-in path/posix"],
      ['import { x } from "../../sim/kernel.js"', "outside core"],
      ['import { x } from "../../live/disk.js"', "outside core"],
      ['import seedrandom from "seedrandom"', "allowlist"],
      ['const m = await import("node:net")', "dynamic built-in"]
    ]
    for (const [line, what] of planted) {
      expect(violations("core/wal/planted.ts", line), what).not.toEqual([])
    }
    expect(violations("core/wal/clean.ts", 'import { Effect } from "effect"\n// Date.now() in a comment\nconst s = "Math.random"')).toEqual([])
  })
})
