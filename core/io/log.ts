import { Context, Effect } from "effect"


/**
 * Structured events. The simulator writes them into the run's trace (with virtual time, node
 * and life); the live world writes JSON lines. Fields must be plain data with a stable order,
 * because they end up in the trace hash.
 */
export type LogLevel = "debug" | "info" | "warn" | "error"
export type LogFields = Readonly<Record<string, string | number | boolean | bigint | undefined>>

export class Log extends Context.Service<Log, {
  emit(level: LogLevel, message: string, fields?: LogFields): Effect.Effect<void>
}>()("sk/core/io/Log") {}

export const logInfo = (message: string, fields?: LogFields) => Log.use((log) => log.emit("info", message, fields))
export const logWarn = (message: string, fields?: LogFields) => Log.use((log) => log.emit("warn", message, fields))
export const logError = (message: string, fields?: LogFields) => Log.use((log) => log.emit("error", message, fields))
export const logDebug = (message: string, fields?: LogFields) => Log.use((log) => log.emit("debug", message, fields))

/** Renders fields as `k=v` pairs in the order given (callers pass a fixed order). */
export function formatFields(fields: LogFields | undefined): string {
  if (fields === undefined) return ""
  const parts: string[] = []
  for (const key of Object.keys(fields)) {
    const value = fields[key]
    if (value === undefined) continue
    parts.push(`${key}=${typeof value === "string" && /\s/.test(value) ? JSON.stringify(value) : String(value)}`)
  }
  return parts.join(" ")
}
