import { Clock, Effect, Layer } from "effect"
import { Log, type LogFields, type LogLevel } from "../core/io/log.js"

/**
 * Log as JSON lines: {"ts":"<ISO time>","level":"info","msg":"...",...fields}, one object per
 * line, fields in the order the caller gave them. The time comes from Effect's Clock, which is
 * the real clock in the live world.
 */
export interface LiveLogOptions {
  /** Where lines go; process.stderr when absent. */
  readonly output?: LogOutput
  /** Events below this level are dropped. */
  readonly levelMin?: LogLevel
}

export interface LogOutput {
  write(line: string): unknown
}

export const LOG_LEVEL_MIN_DEFAULT: LogLevel = "info"

const LEVEL_RANK: Readonly<Record<LogLevel, number>> = { debug: 0, info: 1, warn: 2, error: 3 }
/** Keys the line itself uses; a field with one of these names is written as `field.<name>`. */
const RESERVED_KEYS: ReadonlySet<string> = new Set(["ts", "level", "msg"])

export function makeLiveLog(options: LiveLogOptions = {}): Log["Service"] {
  const output = options.output ?? process.stderr
  const rankMin = LEVEL_RANK[options.levelMin ?? LOG_LEVEL_MIN_DEFAULT]
  return Log.of({
    emit: (level, message, fields) =>
      LEVEL_RANK[level] < rankMin
        ? Effect.void
        : Effect.flatMap(Clock.currentTimeMillis, (ms) =>
          Effect.sync(() => {
            output.write(`${formatLogLine(new Date(ms).toISOString(), level, message, fields)}\n`)
          })
        )
  })
}

export const liveLogLayer = (options: LiveLogOptions = {}): Layer.Layer<Log> => Layer.succeed(Log, makeLiveLog(options))

/** One JSON object (no newline); bigints become decimal strings, undefined fields are left out. */
export function formatLogLine(ts: string, level: LogLevel, message: string, fields: LogFields | undefined): string {
  const record: Record<string, string | number | boolean> = { ts, level, msg: message }
  if (fields !== undefined) {
    for (const key of Object.keys(fields)) {
      const value = fields[key]
      if (value === undefined) continue
      record[RESERVED_KEYS.has(key) ? `field.${key}` : key] = typeof value === "bigint" ? value.toString() : value
    }
  }
  return JSON.stringify(record)
}
