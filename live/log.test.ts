// Goal: the live Log writes one parseable JSON object per line with the real time, drops events
// below the minimum level, and renders every field type (bigint included) without throwing.
// Method: collect the lines written to an in-memory output and parse them back.
import { Effect } from "effect"
import { describe, expect, test } from "vitest"
import { Log, logDebug, logError, logInfo, logWarn } from "../core/io/log.js"
import { formatLogLine, liveLogLayer, makeLiveLog } from "./log.js"

function collector() {
  const lines: string[] = []
  return { lines, output: { write: (line: string) => lines.push(line) } }
}

describe("live log", () => {
  test("one JSON object per line: ts, level, msg, then the fields in order", async () => {
    const { lines, output } = collector()
    const before = Date.now()
    await Effect.runPromise(Effect.provide(
      Effect.gen(function* () {
        yield* logInfo("appended", { lsn: "0/16B3748", bytes: 8192, flushed: true, systemId: 7_000_000_000_000_000_001n, skipped: undefined })
        yield* logWarn("line\nbreak \"quoted\"")
      }),
      liveLogLayer({ output })
    ))
    const after = Date.now()
    expect(lines).toHaveLength(2)
    for (const line of lines) expect(line.endsWith("\n") && line.indexOf("\n") === line.length - 1).toBe(true)
    const first = JSON.parse(lines[0]!)
    expect(Object.keys(first)).toEqual(["ts", "level", "msg", "lsn", "bytes", "flushed", "systemId"])
    expect(first).toMatchObject({ level: "info", msg: "appended", lsn: "0/16B3748", bytes: 8192, flushed: true, systemId: "7000000000000000001" })
    expect(first.ts).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
    const ts = Date.parse(first.ts)
    expect(ts >= before && ts <= after).toBe(true)
    expect(JSON.parse(lines[1]!)).toMatchObject({ level: "warn", msg: "line\nbreak \"quoted\"" })
  })

  test("events below the minimum level are dropped", async () => {
    const { lines, output } = collector()
    await Effect.runPromise(Effect.provide(
      Effect.all([logDebug("d"), logInfo("i"), logWarn("w"), logError("e")]),
      liveLogLayer({ output, levelMin: "warn" })
    ))
    expect(lines.map((line) => JSON.parse(line).level)).toEqual(["warn", "error"])

    const all = collector()
    await Effect.runPromise(makeLiveLog({ output: all.output, levelMin: "debug" }).emit("debug", "d"))
    expect(all.lines).toHaveLength(1)
    const defaults = collector()
    await Effect.runPromise(makeLiveLog({ output: defaults.output }).emit("debug", "d"))
    expect(defaults.lines).toHaveLength(0) // info is the default minimum
  })

  test("a field named like a line key does not overwrite it", () => {
    const line = JSON.parse(formatLogLine("2024-01-01T00:00:00.000Z", "error", "m", { level: "x", ts: 1, msg: false }))
    expect(line).toEqual({ ts: "2024-01-01T00:00:00.000Z", level: "error", msg: "m", "field.level": "x", "field.ts": 1, "field.msg": false })
  })

  test("defaults to stderr", async () => {
    const written: string[] = []
    const original = process.stderr.write.bind(process.stderr)
    process.stderr.write = ((chunk: string) => written.push(chunk) > 0) as typeof process.stderr.write
    try {
      await Effect.runPromise(Log.use((log) => log.emit("error", "to stderr")).pipe(Effect.provide(liveLogLayer())))
    } finally {
      process.stderr.write = original
    }
    expect(written.map((line) => JSON.parse(line).msg)).toEqual(["to stderr"])
  })
})
