import { Context, Effect } from "effect"

/**
 * A metrics registry handed to `core` as a value (DESIGN.md §3): live it is `prom-client`
 * (`live/metrics-prom.ts`), rendered in Prometheus text format at `/metrics`; in the simulator
 * and in unit tests it is the no-op default, or an in-memory one where a test reads values.
 * Instruments are created once per name (creating a name twice returns the same one).
 */
export type Labels = Readonly<Record<string, string>>

export interface Counter {
  inc(labels?: Labels, value?: number): void
}

export interface Gauge {
  set(labels: Labels | undefined, value: number): void
}

export interface Histogram {
  observe(labels: Labels | undefined, value: number): void
}

export interface MetricsRegistryService {
  counter(name: string, help: string, labelNames?: ReadonlyArray<string>): Counter
  gauge(name: string, help: string, labelNames?: ReadonlyArray<string>): Gauge
  histogram(name: string, help: string, labelNames: ReadonlyArray<string>, buckets: ReadonlyArray<number>): Histogram
  /**
   * Runs before each render: sets gauges read from current state (per-timeline LSNs) instead
   * of updating them on every change.
   */
  onCollect(collect: () => void): void
  /** Prometheus text exposition format (version 0.0.4). */
  readonly render: Effect.Effect<string>
  readonly contentType: string
}

const NOOP_COUNTER: Counter = { inc: () => {} }
const NOOP_GAUGE: Gauge = { set: () => {} }
const NOOP_HISTOGRAM: Histogram = { observe: () => {} }

export const NOOP_METRICS: MetricsRegistryService = {
  counter: () => NOOP_COUNTER,
  gauge: () => NOOP_GAUGE,
  histogram: () => NOOP_HISTOGRAM,
  onCollect: () => {},
  render: Effect.succeed(""),
  contentType: "text/plain; version=0.0.4; charset=utf-8"
}

export const MetricsRegistry = Context.Reference<MetricsRegistryService>("sk/core/io/MetricsRegistry", {
  defaultValue: () => NOOP_METRICS
})
