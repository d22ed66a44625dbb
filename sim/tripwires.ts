/**
 * Trip-wires: every ambient source of non-determinism a simulated run could reach is wrapped,
 * and a use while a run is active is recorded with the caller's stack and fails the run as
 * non-deterministic. Time and random reads return virtual/seeded values, and timers are never
 * armed, so the run can go on and report every touch.
 *
 * How: the wrappers are installed once per process, when this module loads (bin/sk.js imports
 * it before anything else, vitest loads it as a setup file), and stay installed. A wrapper
 * reads one slot, the active run: empty, it calls the real function (one branch of cost);
 * set, it reports. Because they are permanent, references captured after installation (`const
 * t = setTimeout` at module load, `Date.now`, named imports from `node:timers`) are wrappers
 * too. Methods are patched where they live (Date.now on the real Date, prototypes of
 * Performance, Crypto, Intl.DateTimeFormat, Date and Promise, the `bigint` property of the real
 * process.hrtime that Effect captures at load for its default Clock's monotonic time), and the
 * CommonJS objects of the built-in modules are patched and then synced to their ESM exports
 * (`syncBuiltinESMExports`), so `import { statSync } from "node:fs"` sees the wrapper.
 *
 * What is caught:
 * - time: Date.now, `new Date()` and `Date()` without arguments (the replacement Date keeps
 *   Date.prototype, so dates made before a run stay `instanceof Date`), performance.now /
 *   timeOrigin / mark / measure / timerify / eventLoopUtilization / toJSON / nodeTiming,
 *   process.hrtime (and .bigint), process.uptime, cpuUsage, memoryUsage (and .rss),
 *   resourceUsage, Intl.DateTimeFormat construction (host time zone and locale) and its
 *   format()/formatToParts() without a date (the real clock), Date.prototype.toLocale*String;
 * - randomness: Math.random, crypto.randomUUID / getRandomValues (web and node:crypto),
 *   node:crypto's randomBytes, randomInt, randomFill(Sync), generateKey(Sync),
 *   generateKeyPair(Sync), generatePrime(Sync);
 * - scheduling outside the kernel: setTimeout, setInterval, setImmediate (global and
 *   node:timers), node:timers/promises, queueMicrotask, process.nextTick, MessageChannel,
 *   BroadcastChannel, Promise.prototype.then (a real promise resumes a fiber after the
 *   synchronous run ends);
 * - host state and real I/O: node:os (uptime, loadavg, memory, cpus, interfaces, host and user),
 *   every function of node:fs (sync and callback) and node:fs/promises, the entry points of
 *   node:child_process, node:net, node:http(s), node:dns and node:dgram, worker threads, fetch.
 *
 * What is not: a reference captured before this module loaded, the real Date constructor kept
 * from then (`const D = Date`), methods of objects made before a run (a socket's write), local
 * time getters of a Date (host time zone), other Intl services and localeCompare (host
 * locale), WeakRef/FinalizationRegistry timing. DESIGN.md §3 lists the run-level checks that
 * back these up.
 */
import { createRequire, syncBuiltinESMExports } from "node:module"
import seedrandom from "seedrandom"

export interface TripwireHit {
  readonly what: string
  readonly site: string
}

export interface Tripwires {
  readonly hits: ReadonlyArray<TripwireHit>
  readonly hitCount: number
}

const SITE_FRAMES_MAX = 4
const HITS_KEPT_MAX = 20
/** Frames above the caller in a hit's stack: "Error", ActiveRun.hit, the wrapper. */
const SITE_FRAMES_SKIPPED = 3

/** The run the trip-wires report to while it executes. */
class ActiveRun {
  readonly hits: TripwireHit[] = []
  hitCount = 0
  readonly random: () => number

  constructor(seed: number, readonly nowMs: () => number) {
    this.random = seedrandom.alea(`${seed}/tripwire`)
  }

  hit(what: string): void {
    this.hitCount++
    if (this.hits.length >= HITS_KEPT_MAX) return
    // Formatting a stack may read source maps from disk (vitest does): with the slot emptied
    // meanwhile, that read neither counts as a hit nor recurses into this one.
    state.active = undefined
    try {
      const lines = (new Error().stack ?? "").split("\n")
      const site = lines.slice(SITE_FRAMES_SKIPPED, SITE_FRAMES_SKIPPED + SITE_FRAMES_MAX).map((line) => line.trim())
      this.hits.push({ what, site: site.join(" <- ") })
    } finally {
      state.active = this
    }
  }
}

/** Shared by every copy of this module in the process (vitest may load it more than once). */
interface TripwireState {
  active: ActiveRun | undefined
}

/**
 * Runs `body` with the trip-wires reporting to a fresh run, even when `body` throws. A nested
 * call reports to its own run and hands the slot back after. `virtualNowMs` gives the value
 * Date.now and friends return meanwhile.
 */
export function withTripwires<A>(seed: number, virtualNowMs: () => number, body: () => A): [A, Tripwires] {
  const run = new ActiveRun(seed, virtualNowMs)
  const previous = state.active
  state.active = run
  try {
    const result = body()
    return [result, { hits: run.hits, get hitCount() { return run.hitCount } }]
  } finally {
    state.active = previous
  }
}

/** True while some run is active (for checks of the run boundary). */
export function tripwiresActive(): boolean {
  return state.active !== undefined
}

type Callable = (this: unknown, ...args: Array<unknown>) => unknown
type Constructor = new (...args: Array<unknown>) => object
type Bag = Record<PropertyKey, unknown>
/** What a wrapper does instead of (or besides) the real call while a run is active. */
type WhenActive = (run: ActiveRun, self: unknown, args: Array<unknown>, real: Callable) => unknown

const callReal: WhenActive = (_run, self, args, real) => real.apply(self, args)
const armNothing: WhenActive = () => undefined // a timer would fire after the run, outside virtual time
const pendingForever: WhenActive = () => new Promise<never>(() => {})

const STATE_KEY = Symbol.for("sk/sim/tripwires")
const registry = globalThis as unknown as Record<symbol, TripwireState | undefined>
// Installed here, at module load, once per process; later copies of this module share it.
const state: TripwireState = registry[STATE_KEY] ?? install()

function install(): TripwireState {
  const installed: TripwireState = { active: undefined }
  registry[STATE_KEY] = installed
  const require = createRequire(import.meta.url)
  const builtin = (name: string): Bag => require(name) as Bag

  /** A function that behaves as `real` outside runs and reports `what` inside one. */
  const wrap = (what: string, real: Callable, whenActive: WhenActive = callReal): Callable => {
    const wrapper = function (this: unknown, ...args: Array<unknown>): unknown {
      const run = installed.active
      if (run === undefined) return real.apply(this, args)
      run.hit(what)
      return whenActive(run, this, args, real)
    }
    copyOwnProperties(real, wrapper)
    return wrapper
  }
  /** Replaces `owner[key]` (a function) by its wrapper; a missing key is skipped. */
  const patch = (owner: Bag, key: string, what: string, whenActive?: WhenActive): void => {
    const real = owner[key]
    if (typeof real !== "function") return
    owner[key] = wrap(what, real as Callable, whenActive)
  }
  /** Replaces an accessor's getter; the wrapper reports a read. */
  const patchGetter = (owner: object, key: string, what: string, whenActive?: WhenActive): void => {
    const descriptor = Object.getOwnPropertyDescriptor(owner, key)
    if (descriptor?.get === undefined) return
    Object.defineProperty(owner, key, { ...descriptor, get: wrap(what, descriptor.get as Callable, whenActive) })
  }
  /** A constructor that behaves as `Real`, shares its prototype (so instanceof holds both ways). */
  const wrapClass = (what: string, Real: Constructor, reportWhen: (args: Array<unknown>) => boolean = () => true): Constructor => {
    const Wrapper = function (this: unknown, ...args: Array<unknown>): unknown {
      const run = installed.active
      if (run !== undefined && reportWhen(args)) run.hit(what)
      return new.target === undefined ? (Real as unknown as Callable).apply(this, args) : Reflect.construct(Real, args, new.target)
    } as unknown as Constructor
    copyOwnProperties(Real, Wrapper)
    Object.defineProperty(Wrapper, "prototype", { value: Real.prototype })
    Object.defineProperty(Real.prototype, "constructor", { value: Wrapper, writable: true, configurable: true, enumerable: false })
    return Wrapper
  }
  const patchClass = (owner: Bag, key: string, what: string): void => {
    const Real = owner[key]
    if (typeof Real !== "function") return
    Object.defineProperty(owner, key, { value: wrapClass(what, Real as Constructor), writable: true, configurable: true, enumerable: false })
  }
  const g = globalThis as unknown as Bag

  // Time. Date.now is patched on the real Date too: a `Date.now` captured from it stays caught.
  const RealDate = Date
  const dateNow = wrap("Date.now", RealDate.now as Callable, (run) => run.nowMs())
  RealDate.now = dateNow as typeof Date.now
  const SimDate = function (this: unknown, ...args: Array<unknown>): unknown {
    const run = installed.active
    if (new.target === undefined) {
      if (run === undefined) return (RealDate as unknown as Callable).apply(this, args)
      run.hit("Date()")
      return new RealDate(run.nowMs()).toString()
    }
    if (args.length === 0) {
      if (run === undefined) return new.target === SimDate ? new RealDate() : Reflect.construct(RealDate, args, new.target)
      run.hit("new Date()")
      return Reflect.construct(RealDate, [run.nowMs()], new.target)
    }
    // The common `new Date(x)` without Reflect.construct: five times cheaper.
    if (new.target === SimDate && args.length === 1) return new RealDate(args[0] as number)
    return Reflect.construct(RealDate, args, new.target)
  }
  copyOwnProperties(RealDate, SimDate)
  Object.defineProperty(SimDate, "prototype", { value: RealDate.prototype })
  Object.defineProperty(RealDate.prototype, "constructor", { value: SimDate, writable: true, configurable: true, enumerable: false })
  Object.defineProperty(globalThis, "Date", { value: SimDate, writable: true, configurable: true, enumerable: false })
  const dateProto = RealDate.prototype as unknown as Bag
  for (const name of ["toLocaleString", "toLocaleDateString", "toLocaleTimeString"]) patch(dateProto, name, `Date.prototype.${name}`)

  const RealDateTimeFormat = Intl.DateTimeFormat
  const formatProto = RealDateTimeFormat.prototype as unknown as Bag
  // format is a getter returning a function bound to the formatter; keep one per formatter.
  const boundFormats = new WeakMap<object, Callable>()
  const formatDescriptor = Object.getOwnPropertyDescriptor(formatProto, "format")
  if (formatDescriptor?.get !== undefined) {
    const realGet = formatDescriptor.get as Callable
    Object.defineProperty(formatProto, "format", {
      ...formatDescriptor,
      get(this: object): Callable {
        const known = boundFormats.get(this)
        if (known !== undefined) return known
        const bound = realGet.call(this) as Callable
        const format = wrapUndatedFormat("Intl.DateTimeFormat.format", bound)
        boundFormats.set(this, format)
        return format
      }
    })
  }
  const realFormatToParts = formatProto["formatToParts"] as Callable
  formatProto["formatToParts"] = wrapUndatedFormat("Intl.DateTimeFormat.formatToParts", realFormatToParts)
  function wrapUndatedFormat(what: string, real: Callable): Callable {
    return wrapIf(real, (args) => args[0] === undefined, what, (run, self) => real.call(self, run.nowMs()))
  }
  /** Like wrap, but reports only calls for which `reportWhen(args)` holds. */
  function wrapIf(real: Callable, reportWhen: (args: Array<unknown>) => boolean, what: string, whenActive: WhenActive): Callable {
    const wrapper = function (this: unknown, ...args: Array<unknown>): unknown {
      const run = installed.active
      if (run === undefined || !reportWhen(args)) return real.apply(this, args)
      run.hit(what)
      return whenActive(run, this, args, real)
    }
    copyOwnProperties(real, wrapper)
    return wrapper
  }
  Object.defineProperty(Intl, "DateTimeFormat", { value: wrapClass("Intl.DateTimeFormat", RealDateTimeFormat as unknown as Constructor), writable: true, configurable: true, enumerable: false })

  const performanceProto = Object.getPrototypeOf(performance) as Bag
  patch(performanceProto, "now", "performance.now", (run) => run.nowMs())
  for (const name of ["mark", "measure", "timerify", "eventLoopUtilization", "toJSON"]) patch(performanceProto, name, `performance.${name}`)
  patchGetter(performanceProto, "timeOrigin", "performance.timeOrigin")
  patchGetter(performanceProto, "nodeTiming", "performance.nodeTiming")

  const processBag = process as unknown as Bag
  // Effect captures the real process.hrtime at load and calls its `bigint`: patch that in place.
  const realHrtime = process.hrtime as unknown as Bag
  patch(realHrtime, "bigint", "process.hrtime.bigint")
  const realMemoryUsage = process.memoryUsage as unknown as Bag
  patch(realMemoryUsage, "rss", "process.memoryUsage.rss")
  for (const name of ["hrtime", "uptime", "cpuUsage", "memoryUsage", "resourceUsage"]) patch(processBag, name, `process.${name}`)
  // vitest swaps process.nextTick for the real one around its RPC calls and restores it a tick
  // later, so a plain replacement gets lost: an accessor turns an assignment of the real
  // function back into the wrapper, and keeps anything else assigned (a patch that calls the
  // wrapper it saw), as a plain property would.
  const realNextTick = process.nextTick
  const nextTickWrapper = wrap("process.nextTick", realNextTick as unknown as Callable, armNothing)
  let nextTick: unknown = nextTickWrapper
  Object.defineProperty(process, "nextTick", {
    get: () => nextTick,
    set: (assigned: unknown) => {
      nextTick = assigned === realNextTick ? nextTickWrapper : assigned
    },
    enumerable: true,
    configurable: true
  })

  // Randomness.
  Math.random = wrap("Math.random", Math.random as Callable, (run) => run.random()) as typeof Math.random
  const cryptoModule = builtin("node:crypto")
  const webcryptoProto = Object.getPrototypeOf(cryptoModule["webcrypto"]) as Bag
  patch(webcryptoProto, "randomUUID", "crypto.randomUUID", () => "00000000-0000-4000-8000-000000000000")
  // node:crypto's getRandomValues calls the web one: one wrapper reports both.
  patch(webcryptoProto, "getRandomValues", "crypto.getRandomValues", (_run, _self, args) => args[0])
  for (const name of ["randomUUID", "randomBytes", "randomInt", "randomFillSync", "randomFill", "generateKey", "generateKeySync",
    "generateKeyPair", "generateKeyPairSync", "generatePrime", "generatePrimeSync", "pseudoRandomBytes", "prng", "rng"]) {
    patch(cryptoModule, name, `crypto.${name}`)
  }

  // Scheduling outside the kernel. The global timers are node:timers' own functions.
  const timers = builtin("node:timers")
  for (const name of ["setTimeout", "setInterval", "setImmediate"]) {
    const wrapper = wrap(name, timers[name] as Callable, armNothing)
    timers[name] = wrapper
    g[name] = wrapper
  }
  patch(g, "queueMicrotask", "queueMicrotask", armNothing)
  const timersPromises = builtin("node:timers/promises")
  patch(timersPromises, "setTimeout", "timers/promises.setTimeout", pendingForever)
  patch(timersPromises, "setImmediate", "timers/promises.setImmediate", pendingForever)
  patch(timersPromises, "setInterval", "timers/promises.setInterval")
  const schedulerProto = Object.getPrototypeOf(timersPromises["scheduler"]) as Bag
  patch(schedulerProto, "wait", "timers/promises.scheduler.wait", pendingForever)
  patch(schedulerProto, "yield", "timers/promises.scheduler.yield", pendingForever)
  const promiseProto = Promise.prototype as unknown as Bag
  patch(promiseProto, "then", "a real Promise (then)")
  const workerThreads = builtin("node:worker_threads")
  for (const name of ["MessageChannel", "BroadcastChannel", "Worker"]) {
    patchClass(workerThreads, name, name)
    if (name in g) Object.defineProperty(g, name, { value: workerThreads[name], writable: true, configurable: true, enumerable: false })
  }
  patch(g, "fetch", "fetch", pendingForever)

  // Host state and real I/O.
  const os = builtin("node:os")
  for (const name of ["uptime", "loadavg", "freemem", "totalmem", "cpus", "networkInterfaces", "hostname", "userInfo", "availableParallelism"]) {
    patch(os, name, `os.${name}`)
  }
  const fs = builtin("node:fs")
  patchFunctions(fs, "fs")
  patchFunctions(builtin("node:fs/promises"), "fs/promises")
  for (const name of ["node:child_process", "node:dns", "node:dgram"]) patchFunctions(builtin(name), name.slice("node:".length))
  const net = builtin("node:net")
  for (const name of ["connect", "createConnection", "createServer"]) patch(net, name, `net.${name}`)
  for (const module of ["http", "https"]) {
    const http = builtin(`node:${module}`)
    for (const name of ["request", "get", "createServer"]) patch(http, name, `${module}.${name}`)
  }

  syncBuiltinESMExports()
  return installed

  /** Every function-valued data property with a lowercase name (classes keep their names). */
  function patchFunctions(module: Bag, prefix: string): void {
    for (const name of Object.keys(module)) {
      const descriptor = Object.getOwnPropertyDescriptor(module, name)
      if (descriptor === undefined || !("value" in descriptor) || typeof descriptor.value !== "function") continue
      if (!/^[a-z]/.test(name)) continue
      const real = descriptor.value as Bag
      // realpath(Sync).native and the like hang off the function itself.
      for (const inner of Object.keys(real)) {
        if (typeof real[inner] === "function") patch(real, inner, `${prefix}.${name}.${inner}`)
      }
      patch(module, name, `${prefix}.${name}`)
    }
  }
}

/** Gives a wrapper the real function's name, length and extra properties (promisify.custom). */
function copyOwnProperties(real: object, wrapper: object): void {
  for (const key of Reflect.ownKeys(real)) {
    if (key === "prototype" || key === "caller" || key === "arguments") continue
    const descriptor = Object.getOwnPropertyDescriptor(real, key)
    if (descriptor !== undefined) Object.defineProperty(wrapper, key, descriptor)
  }
}
