// Goal: keep core/ deterministic and free of I/O (DESIGN.md §3). Method: tokenize every
// non-test source file under core/ (TypeScript 7 has no compiler API, so a small scanner
// that skips comments, strings, template text and regular expressions) and flag ambient
// globals that read time, randomness or the host, or run code from strings (`Date` in any
// form, `Intl`, timers, `process`, `performance`, `crypto`, `globalThis`, `Function`, `eval`,
// `.constructor`...), any Effect run* call (it would run on Effect's default Clock and
// Scheduler, outside the node's runtime), and imports of Node built-ins (checked against
// module.builtinModules, with and without the `node:` prefix), of live/ or sim/, of
// third-party packages off the allowlist, or of Effect modules off the allowlist of those core
// uses that do no I/O. The checker is tested against planted escapes so that it cannot pass
// vacuously.
import { builtinModules } from "node:module"
import { readdirSync, readFileSync } from "node:fs"
import { dirname, join, relative, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, test } from "vitest"

const coreDir = dirname(fileURLToPath(import.meta.url))
const repoRoot = resolve(coreDir, "..")

/** Packages other than effect that do no I/O and read no clock or randomness. */
const THIRD_PARTY_ALLOWLIST = new Set(["@node-rs/crc32"])

/**
 * Effect modules core may use, from "effect" or as "effect/<Module>": the ones it uses today.
 * Clock and Random are services each world provides; none of these does I/O of its own.
 * Effect's I/O modules (FileSystem, Path, Stdio, Terminal, unstable/*), its runtimes
 * (ManagedRuntime, Runtime) and wall-clock readers (DateTime, Cron) stay out.
 */
const EFFECT_MODULE_ALLOWLIST = new Set([
  "Brand", "Cause", "Clock", "Context", "Deferred", "Duration", "Effect", "Exit", "Fiber", "Layer", "Option", "Queue",
  "Random", "Result", "Schema", "Scope", "Semaphore", "Stream"
])

/** Free identifiers (not a property name) that reach time, randomness, the host or eval. */
const FORBIDDEN_IDENTIFIERS = new Map<string, string>([
  ["Date", "Date (the wall clock)"],
  ["Intl", "Intl (host time zone, locale and clock)"],
  ["setTimeout", "setTimeout"],
  ["setInterval", "setInterval"],
  ["setImmediate", "setImmediate"],
  ["clearTimeout", "clearTimeout"],
  ["clearInterval", "clearInterval"],
  ["clearImmediate", "clearImmediate"],
  ["queueMicrotask", "queueMicrotask"],
  ["process", "process"],
  ["performance", "performance"],
  ["crypto", "crypto"],
  ["require", "require"],
  ["globalThis", "globalThis"],
  ["global", "global"],
  ["window", "window"],
  ["navigator", "navigator"],
  ["Promise", "Promise"],
  ["eval", "eval"],
  ["Function", "Function (code from strings)"],
  ["MessageChannel", "MessageChannel"],
  ["BroadcastChannel", "BroadcastChannel"],
  ["fetch", "fetch"],
  ["WeakRef", "WeakRef (garbage-collector timing)"],
  ["FinalizationRegistry", "FinalizationRegistry (garbage-collector timing)"]
])

/** Effect's ways to run an effect outside the caller's fiber (Effect.runSync, runPromise...). */
const EFFECT_RUN = /^run(Sync|Promise|Fork|Callback)/

export function violations(file: string, source: string): string[] {
  const problems: string[] = []
  const tokens = tokenize(source)
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i]!
    if (token.kind !== "identifier") continue
    const previous = tokens[i - 1]
    const next = tokens[i + 1]
    const isProperty = previous !== undefined && previous.kind === "punctuator" && (previous.text === "." || previous.text === "?.")
    if (EFFECT_RUN.test(token.text)) problems.push(`${file}: uses ${token.text} (runs an effect outside the node's runtime)`)
    if (isProperty) {
      if (token.text === "constructor") problems.push(`${file}: uses .constructor (reaches Function and Date by reflection)`)
      continue
    }
    const forbidden = FORBIDDEN_IDENTIFIERS.get(token.text)
    if (forbidden !== undefined && !isObjectKey(previous, next)) problems.push(`${file}: uses ${forbidden}`)
    if (token.text === "Math" && next?.text === "[") problems.push(`${file}: uses Math[...] (computed access reaches Math.random)`)
    if (token.text === "Math" && next?.text === "." && tokens[i + 2]?.text === "random") problems.push(`${file}: uses Math.random`)
    if (token.text === "import" && next?.text === "(") {
      const argument = tokens[i + 2]
      const closing = tokens[i + 3]
      if (argument?.kind !== "string" || closing?.text !== ")") problems.push(`${file}: imports a computed specifier`)
    }
  }
  for (const declaration of importDeclarations(tokens)) {
    problems.push(...importProblems(file, declaration))
  }
  return problems
}

/** `{ Date: 1 }` or `(a, Date: T)`: a name being declared, not the global being read. */
function isObjectKey(previous: Token | undefined, next: Token | undefined): boolean {
  return next?.text === ":" && (previous?.text === "{" || previous?.text === ",")
}

interface ImportDeclaration {
  readonly specifier: string
  /** Names imported from the module; "*" for a namespace, "default" for a default import. */
  readonly names: ReadonlyArray<string>
}

function importProblems(file: string, { specifier, names }: ImportDeclaration): string[] {
  if (specifier.startsWith("node:") || builtins.has(specifier) || builtins.has(specifier.split("/")[0]!)) {
    return [`${file}: imports Node built-in ${specifier}`]
  }
  if (specifier.startsWith(".")) {
    const target = relative(repoRoot, resolve(dirname(join(repoRoot, file)), specifier))
    return target.startsWith("core/") ? [] : [`${file}: imports ${specifier} outside core/`]
  }
  if (specifier === "effect") {
    return names
      .filter((name) => !EFFECT_MODULE_ALLOWLIST.has(name))
      .map((name) => `${file}: imports ${name === "*" ? "all of effect" : name} from effect, not on the core allowlist`)
  }
  if (specifier.startsWith("effect/")) {
    const module = specifier.slice("effect/".length)
    return EFFECT_MODULE_ALLOWLIST.has(module) ? [] : [`${file}: imports ${specifier}, not on the core allowlist`]
  }
  const pkg = specifier.startsWith("@") ? specifier.split("/").slice(0, 2).join("/") : specifier.split("/")[0]!
  return THIRD_PARTY_ALLOWLIST.has(pkg) ? [] : [`${file}: imports ${specifier}, not on the core allowlist`]
}

const builtins = new Set(builtinModules.flatMap((name) => [name, `node:${name}`, name.split("/")[0]!]))

/**
 * Static imports and re-exports with a module specifier: `import x, { a, b as c } from "m"`,
 * `import * as m from "m"`, `import "m"`, `export { a } from "m"`, `export * from "m"`,
 * `import("m")`. Type-only imports count too: the allowlist is short enough to hold them.
 */
function importDeclarations(tokens: ReadonlyArray<Token>): ImportDeclaration[] {
  const found: ImportDeclaration[] = []
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i]!
    if (token.kind !== "identifier" || (token.text !== "import" && token.text !== "export")) continue
    const next = tokens[i + 1]
    if (tokens[i - 1]?.text === "." || next?.text === ".") continue // a property, or import.meta
    if (token.text === "export" && !isReexportClause(next, tokens[i + 2])) continue
    if (token.text === "import" && next?.kind === "string") {
      found.push({ specifier: next.text, names: [] })
      continue
    }
    if (token.text === "import" && next?.text === "(") {
      const argument = tokens[i + 2]
      if (argument?.kind === "string") found.push({ specifier: argument.text, names: ["*"] })
      continue
    }
    // Collect the clause up to `from "specifier"`; a statement end means no specifier.
    const names: string[] = []
    let braces = 0
    for (let j = i + 1; j < tokens.length; j++) {
      const part = tokens[j]!
      // After `{ ... }` at the top comes `from`, or the statement had no specifier.
      if (braces === 0 && tokens[j - 1]?.text === "}" && part.text !== "from") break
      if (part.text === "{") braces++
      else if (part.text === "}") braces--
      else if (braces === 0 && (part.text === ";" || part.text === "=" || part.text === "(")) break
      else if (braces === 0 && part.kind === "identifier" && part.text === "from" && tokens[j + 1]?.kind === "string") {
        found.push({ specifier: tokens[j + 1]!.text, names })
        break
      } else if (part.text === "*") names.push("*")
      else if (part.kind === "identifier" && part.text !== "type" && part.text !== "as") {
        const before = tokens[j - 1]
        // `a as b` imports a; `* as m` is already the namespace.
        if (before?.text === "as") continue
        if (braces === 0 && token.text === "import") names.push("default")
        else if (braces > 0) names.push(part.text)
      }
    }
  }
  return found
}

/** `export {`, `export *`, `export type {`: the forms that may re-export from a module. */
function isReexportClause(next: Token | undefined, afterNext: Token | undefined): boolean {
  if (next?.text === "{" || next?.text === "*") return true
  return next?.text === "type" && (afterNext?.text === "{" || afterNext?.text === "*")
}

interface Token {
  readonly kind: "identifier" | "string" | "number" | "punctuator"
  readonly text: string
}

const IDENTIFIER_START = /[A-Za-z_$\\]/
const IDENTIFIER_PART = /[\w$\\]/
/** After these, a `/` starts a regular expression rather than a division. */
const REGEX_AFTER_KEYWORDS = new Set(["return", "typeof", "instanceof", "in", "of", "new", "delete", "void", "throw", "case", "do", "else", "yield", "await"])

/**
 * Splits source into identifiers, strings (with their value, so import specifiers can be
 * read), numbers and punctuators. Comments, template text and regular expression bodies are
 * dropped; template `${...}` expressions are tokenized like code. Unicode escapes in
 * identifiers are decoded (`D\u0061te` is Date).
 */
function tokenize(source: string): Token[] {
  const tokens: Token[] = []
  /** Open braces per template nesting level: at 0, a `}` resumes the template's text. */
  const templateBraces: number[] = []
  let i = 0
  const length = source.length
  while (i < length) {
    const char = source[i]!
    if (/\s/.test(char)) {
      i++
    } else if (char === "/" && source[i + 1] === "/") {
      while (i < length && source[i] !== "\n") i++
    } else if (char === "/" && source[i + 1] === "*") {
      const end = source.indexOf("*/", i + 2)
      i = end < 0 ? length : end + 2
    } else if (char === "\"" || char === "'") {
      const [value, end] = readString(source, i)
      tokens.push({ kind: "string", text: value })
      i = end
    } else if (char === "`") {
      i = readTemplateText(source, i + 1, tokens, templateBraces)
    } else if (char === "}" && templateBraces.length > 0 && templateBraces[templateBraces.length - 1] === 0) {
      templateBraces.pop()
      i = readTemplateText(source, i + 1, tokens, templateBraces)
    } else if (IDENTIFIER_START.test(char) || char.charCodeAt(0) > 127) {
      let end = i + 1
      while (end < length && (IDENTIFIER_PART.test(source[end]!) || source.charCodeAt(end) > 127)) end++
      tokens.push({ kind: "identifier", text: decodeIdentifier(source.slice(i, end)) })
      i = end
    } else if (/[0-9]/.test(char) || (char === "." && /[0-9]/.test(source[i + 1] ?? ""))) {
      let end = i + 1
      while (end < length && /[\w.]/.test(source[end]!)) end++
      tokens.push({ kind: "number", text: source.slice(i, end) })
      i = end
    } else if (char === "/" && startsRegex(tokens[tokens.length - 1])) {
      i = skipRegex(source, i)
      tokens.push({ kind: "string", text: "" })
    } else {
      const text = source.startsWith("?.", i) && !/[0-9]/.test(source[i + 2] ?? "") ? "?." : source.startsWith("...", i) ? "..." : char
      if (templateBraces.length > 0) {
        if (text === "{") templateBraces[templateBraces.length - 1]!++
        if (text === "}") templateBraces[templateBraces.length - 1]!--
      }
      tokens.push({ kind: "punctuator", text })
      i += text.length
    }
  }
  return tokens
}

function readString(source: string, start: number): [string, number] {
  const quote = source[start]
  let value = ""
  let i = start + 1
  while (i < source.length && source[i] !== quote && source[i] !== "\n") {
    if (source[i] === "\\") {
      value += source[i + 1] ?? ""
      i += 2
    } else {
      value += source[i]
      i++
    }
  }
  return [value, i + 1]
}

/** Reads template text from `start` up to the closing backtick or a `${` (which opens code). */
function readTemplateText(source: string, start: number, tokens: Token[], templateBraces: number[]): number {
  let i = start
  while (i < source.length) {
    if (source[i] === "\\") {
      i += 2
    } else if (source[i] === "`") {
      tokens.push({ kind: "string", text: "" })
      return i + 1
    } else if (source[i] === "$" && source[i + 1] === "{") {
      tokens.push({ kind: "string", text: "" })
      templateBraces.push(0)
      return i + 2
    } else {
      i++
    }
  }
  return i
}

function startsRegex(previous: Token | undefined): boolean {
  if (previous === undefined) return true
  if (previous.kind === "identifier") return REGEX_AFTER_KEYWORDS.has(previous.text)
  if (previous.kind === "number" || previous.kind === "string") return false
  return previous.text !== ")" && previous.text !== "]" && previous.text !== "}"
}

function skipRegex(source: string, start: number): number {
  let i = start + 1
  let inClass = false
  while (i < source.length && source[i] !== "\n") {
    const char = source[i]!
    if (char === "\\") i++
    else if (char === "[") inClass = true
    else if (char === "]") inClass = false
    else if (char === "/" && !inClass) break
    i++
  }
  i++
  while (i < source.length && /\w/.test(source[i]!)) i++
  return i
}

function decodeIdentifier(raw: string): string {
  return raw.replace(/\\u\{([0-9a-fA-F]+)\}|\\u([0-9a-fA-F]{4})/g, (_match, braced: string | undefined, plain: string | undefined) =>
    String.fromCodePoint(Number.parseInt(braced ?? plain ?? "0", 16)))
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

  test.each<readonly [string, string]>([
    ["const t = Date.now()", "Date"],
    ["const d = new Date()", "Date"],
    ["const s = Date()", "Date"],
    ["const D = Date; const d = new D()", "Date"],
    ["const d = new globalThis.Date()", "globalThis"],
    ["const D = globalThis[\"Da\" + \"te\"]", "globalThis"],
    ["const d = Reflect.construct(Date, [])", "Date"],
    ["const d = new D\\u0061te()", "Date"],
    ["const d = new global.Date()", "global"],
    ["const f = new Intl.DateTimeFormat().format()", "Intl"],
    ["const n = Intl.DateTimeFormat().format()", "Intl"],
    ["const f = Function(\"return Da\" + \"te.now()\")", "Function"],
    ["const f = new Function(\"return 1\")", "Function"],
    ["const v = eval(\"Date.now()\")", "eval"],
    ["const f = (() => 0).constructor(\"return 1\")", ".constructor"],
    ["const r = Math.random()", "Math.random"],
    ["const r = Math[\"random\"]()", "Math["],
    ["setTimeout(() => {}, 1)", "setTimeout"],
    ["const t = setTimeout", "setTimeout"],
    ["queueMicrotask(() => {})", "queueMicrotask"],
    ["const e = process.env.X", "process"],
    ["performance.now()", "performance"],
    ["const o = performance.timeOrigin", "performance"],
    ["crypto.randomUUID()", "crypto"],
    ["const c = new MessageChannel()", "MessageChannel"],
    ["const p = new Promise(() => {})", "Promise"],
    ["const w = new WeakRef(x)", "WeakRef"],
    ["const now = Effect.runSync(Clock.currentTimeMillis)", "runSync"],
    ["Effect.runPromise(program)", "runPromise"],
    ["Effect.runFork(program)", "runFork"],
    ["const x = yield* Effect.sync(() => Effect.runSyncExit(e))", "runSyncExit"],
    ["const t = `${Date.now()}`", "Date"],
    ["const t = `a ${`b ${setTimeout}`} c`", "setTimeout"],
    ["import { readFileSync } from \"fs\"", "built-in fs"],
    ["import { readFileSync } from \"node:fs\"", "built-in node:fs"],
    ["import * as p from \"path/posix\"", "built-in path/posix"],
    ["import { x } from \"../../sim/kernel.js\"", "outside core"],
    ["import { x } from \"../../live/disk.js\"", "outside core"],
    ["import seedrandom from \"seedrandom\"", "seedrandom"],
    ["const m = await import(\"node:net\")", "built-in node:net"],
    ["const m = await import(name)", "computed specifier"],
    ["export { x } from \"node:os\"", "built-in node:os"],
    ["import \"node:timers\"", "built-in node:timers"],
    ["import { FileSystem } from \"effect\"", "FileSystem from effect"],
    ["import { Effect, DateTime } from \"effect\"", "DateTime from effect"],
    ["import { ManagedRuntime as R } from \"effect\"", "ManagedRuntime from effect"],
    ["import * as E from \"effect\"", "all of effect"],
    ["import { layer } from \"effect/unstable/http/HttpClient\"", "effect/unstable/http/HttpClient"],
    ["import * as FileSystem from \"effect/FileSystem\"", "effect/FileSystem"],
    ["export * from \"effect\"", "all of effect"]
  ])("the guard flags %s", (line, what) => {
    const problems = violations("core/wal/planted.ts", line)
    expect(problems.join("\n")).toContain(what)
  })

  test("prose, strings, regular expressions and property names stay clean", () => {
    const clean = [
      "import { Effect, Schema, type Cause } from \"effect\"",
      "import * as Duration from \"effect/Duration\"",
      "import { crc32c } from \"@node-rs/crc32\"",
      "import { x } from \"./local.js\"",
      "// Date.now() in a comment",
      "/* setTimeout(() => {}, 1) in a block comment */",
      "const s = \"Math.random and process.env in a string\"",
      "const t = `Date in template text ${1 + 2} and more`",
      "const r = /Date|setTimeout/g.test(s)",
      "const q = a / b / c",
      "const o = { Date: 1, process: 2 }",
      "const v = schema.Date",
      "const w = record?.performance",
      "class A { constructor() {} }",
      "const runner = 1; const runs = 2",
      "const self = this"
    ].join("\n")
    expect(violations("core/wal/clean.ts", clean)).toEqual([])
  })
})
