import { assert, assertNever } from "../assert.js"
import { US_PER_SECOND } from "../io/clock.js"

/**
 * Which safekeeper a pageserver streams WAL from, and when it moves to another (Neon's
 * `pageserver/src/tenant/timeline/walreceiver/connection_manager.rs`, seed 003): a pure state
 * machine over plain data. The caller owns the clock (every function takes `nowUs`) and the
 * I/O: it feeds in what it learns about safekeepers (probes, broker, the stream itself) and
 * about its one connection, and asks `nextCandidate` whether to (re)connect.
 *
 * The rules, as Neon's:
 * - Candidates are safekeepers heard from within `laggingWalTimeoutUs`, with a valid commit_lsn,
 *   out of retry cooldown. The best one has the highest commit_lsn; ties go to the higher
 *   flush_lsn, then to the smaller address (a total order, so a seed replays).
 * - With no connection: connect to the best candidate.
 * - With one, switch to the best other candidate when (first rule that holds):
 *   `NoKeepAlives`: nothing (keepalive, WAL, or the connection's start) for `walConnectTimeoutUs`;
 *   `LaggingWal`: the candidate's commit_lsn leads the connection's by `maxLsnWalLagBytes` or more;
 *   `NoWalTimeout`: the candidate has WAL the connection does not send us, and we have waited
 *   `laggingWalTimeoutUs` for it (measured from when we last got WAL or first saw the candidate's).
 *   No switch while the connection has not finished its start, except on NoKeepAlives.
 * - A connection that ends puts its safekeeper in cooldown until `started + backoff`, and the
 *   backoff grows by `retryBackoffMultiplier` up to `retryBackoffMaxUs` (Neon bases the cooldown
 *   on the start, so a connection that lived long may be retried at once). WAL received and
 *   ingested from a safekeeper resets its backoff (Neon removes its retry entry).
 *
 * One addition: a candidate whose commit_lsn is below the receiver's position is not eligible:
 * our walsender refuses a START_REPLICATION ahead of its commit_lsn (core/server/send-wal.ts
 * `checkStart`), as after a restart its commit_lsn falls back to the persisted one.
 */

/** Neon's `WalReceiverConf` values that the rules read. */
export interface ConnectionManagerConfig {
  /** No keepalive or WAL on the current connection this long: switch (NoKeepAlives). */
  readonly walConnectTimeoutUs: number
  /** Waiting this long for WAL another safekeeper has: switch (NoWalTimeout); also how long a candidate's info stays fresh. */
  readonly laggingWalTimeoutUs: number
  /** A candidate ahead by this many bytes of commit_lsn: switch (LaggingWal). */
  readonly maxLsnWalLagBytes: number
  readonly retryBackoffMinUs: number
  readonly retryBackoffMaxUs: number
  readonly retryBackoffMultiplier: number
}

/** Neon's defaults (pageserver `wal_connect_timeout`, `lagging_wal_timeout`, `max_lsn_wal_lag`; WALCONNECTION_RETRY_*). */
export const WAL_CONNECT_TIMEOUT_US_DEFAULT = 10 * US_PER_SECOND
export const LAGGING_WAL_TIMEOUT_US_DEFAULT = 10 * US_PER_SECOND
export const MAX_LSN_WAL_LAG_BYTES_DEFAULT = 10 * 1024 * 1024
export const RETRY_BACKOFF_MIN_US_DEFAULT = 100_000
export const RETRY_BACKOFF_MAX_US_DEFAULT = 15 * US_PER_SECOND
export const RETRY_BACKOFF_MULTIPLIER_DEFAULT = 1.5

export const CONNECTION_MANAGER_CONFIG_DEFAULT: ConnectionManagerConfig = {
  walConnectTimeoutUs: WAL_CONNECT_TIMEOUT_US_DEFAULT,
  laggingWalTimeoutUs: LAGGING_WAL_TIMEOUT_US_DEFAULT,
  maxLsnWalLagBytes: MAX_LSN_WAL_LAG_BYTES_DEFAULT,
  retryBackoffMinUs: RETRY_BACKOFF_MIN_US_DEFAULT,
  retryBackoffMaxUs: RETRY_BACKOFF_MAX_US_DEFAULT,
  retryBackoffMultiplier: RETRY_BACKOFF_MULTIPLIER_DEFAULT
}

/** Safekeepers a manager tracks: a bound for a bad broker, far above any real cluster. */
export const CANDIDATE_COUNT_MAX = 1024

/** What we last heard about one safekeeper's timeline. */
export interface CandidateInfo {
  readonly commitLsn: number
  readonly flushLsn: number
  readonly heardAtUs: number
}

export interface RetryInfo {
  /** Not connected to before this; undefined until the first connection to it ended. */
  readonly nextRetryAtUs: number | undefined
  readonly backoffUs: number
}

/** Neon's `NewCommittedWAL`: when we learned that another safekeeper has WAL up to `lsn`. */
export interface DiscoveredWal {
  readonly lsn: number
  readonly discoveredAtUs: number
}

/** The one connection (Neon's `WalConnection` with its `WalConnectionStatus`). */
export interface CurrentConnection {
  readonly safekeeper: string
  readonly startedAtUs: number
  /** The stream is open (START_REPLICATION answered). */
  readonly connected: boolean
  /** Last keepalive, WAL or start step (Neon's latest_connection_update). */
  readonly lastMessageAtUs: number
  /** Last WAL received (Neon's latest_wal_update). */
  readonly lastWalAtUs: number
  /** End of the WAL received on this connection; undefined before the first. */
  readonly streamingLsn: number | undefined
  /** The safekeeper's commit_lsn as the stream reports it (walEnd); undefined before the first message. */
  readonly commitLsn: number | undefined
  readonly discoveredWal: DiscoveredWal | undefined
}

export interface ConnectionManagerState {
  readonly config: ConnectionManagerConfig
  readonly candidates: ReadonlyMap<string, CandidateInfo>
  readonly retries: ReadonlyMap<string, RetryInfo>
  readonly connection: CurrentConnection | undefined
}

export type ReconnectReason =
  | { readonly _tag: "NoExistingConnection" }
  | { readonly _tag: "NoKeepAlives"; readonly lastMessageAtUs: number; readonly thresholdUs: number }
  | { readonly _tag: "LaggingWal"; readonly currentCommitLsn: number; readonly candidateCommitLsn: number; readonly thresholdBytes: number }
  | { readonly _tag: "NoWalTimeout"; readonly currentLsn: number; readonly currentCommitLsn: number; readonly candidateCommitLsn: number; readonly waitingSinceUs: number; readonly thresholdUs: number }

export interface ConnectionCandidate {
  readonly safekeeper: string
  readonly reason: ReconnectReason
}

export function checkConfig(config: ConnectionManagerConfig): void {
  assert(config.walConnectTimeoutUs > 0 && config.laggingWalTimeoutUs > 0, "timeouts are positive")
  assert(config.maxLsnWalLagBytes > 0, "the lag threshold is positive")
  assert(config.retryBackoffMinUs > 0 && config.retryBackoffMinUs <= config.retryBackoffMaxUs, "0 < backoff min <= backoff max")
  assert(config.retryBackoffMultiplier >= 1, "a backoff never shrinks")
}

export function initialState(config: ConnectionManagerConfig = CONNECTION_MANAGER_CONFIG_DEFAULT): ConnectionManagerState {
  checkConfig(config)
  return { config, candidates: new Map(), retries: new Map(), connection: undefined }
}

// ---- what the caller learns ----

/** A safekeeper's timeline as a probe, the broker or the stream reported it. */
export function registerCandidate(
  state: ConnectionManagerState,
  safekeeper: string,
  info: { readonly commitLsn: number; readonly flushLsn: number },
  nowUs: number
): ConnectionManagerState {
  if (!state.candidates.has(safekeeper) && state.candidates.size >= CANDIDATE_COUNT_MAX) return state
  const candidates = new Map(state.candidates)
  candidates.set(safekeeper, { commitLsn: info.commitLsn, flushLsn: info.flushLsn, heardAtUs: nowUs })
  return { ...state, candidates }
}

/** A new connection to `safekeeper` is being opened (the old one, if any, must have been ended). */
export function connectionStarted(state: ConnectionManagerState, safekeeper: string, nowUs: number): ConnectionManagerState {
  assert(state.connection === undefined, "one connection at a time: end the old one first")
  return {
    ...state,
    connection: {
      safekeeper,
      startedAtUs: nowUs,
      connected: false,
      lastMessageAtUs: nowUs,
      lastWalAtUs: nowUs,
      streamingLsn: undefined,
      commitLsn: undefined,
      discoveredWal: undefined
    }
  }
}

/** The stream is open; `commitLsn` if the start told us (IDENTIFY_SYSTEM's xlogpos). */
export function connectionEstablished(state: ConnectionManagerState, nowUs: number, commitLsn?: number): ConnectionManagerState {
  const connection = state.connection
  if (connection === undefined) return state
  return {
    ...state,
    connection: { ...connection, connected: true, lastMessageAtUs: nowUs, commitLsn: commitLsn ?? connection.commitLsn }
  }
}

export interface StreamMessage {
  /** The sender's end of WAL (its commit_lsn for a pageserver stream). */
  readonly walEndLsn: number
  /** With WAL: where the receiver's WAL now ends. */
  readonly receivedEndLsn?: number | undefined
  /** The WAL advanced what the receiver ingested (Neon's has_processed_wal): resets the backoff. */
  readonly processedWal: boolean
}

/** A keepalive or XLogData on the current connection. `backoffReset` when it cleared a retry record. */
export function messageReceived(
  state: ConnectionManagerState,
  message: StreamMessage,
  nowUs: number
): { readonly state: ConnectionManagerState; readonly backoffReset: boolean } {
  const connection = state.connection
  if (connection === undefined) return { state, backoffReset: false }
  const gotWal = message.receivedEndLsn !== undefined
  const next: CurrentConnection = {
    ...connection,
    connected: true,
    lastMessageAtUs: nowUs,
    lastWalAtUs: gotWal ? nowUs : connection.lastWalAtUs,
    streamingLsn: message.receivedEndLsn ?? connection.streamingLsn,
    commitLsn: Math.max(connection.commitLsn ?? 0, message.walEndLsn)
  }
  // What the stream says about its safekeeper is as good as a probe.
  const known = state.candidates.get(connection.safekeeper)
  let updated: ConnectionManagerState = { ...state, connection: next }
  updated = registerCandidate(updated, connection.safekeeper, {
    commitLsn: Math.max(known?.commitLsn ?? 0, message.walEndLsn),
    flushLsn: Math.max(known?.flushLsn ?? 0, message.walEndLsn)
  }, nowUs)
  const backoffReset = message.processedWal && state.retries.has(connection.safekeeper)
  if (backoffReset) {
    const retries = new Map(state.retries)
    retries.delete(connection.safekeeper)
    updated = { ...updated, retries }
  }
  return { state: updated, backoffReset }
}

/**
 * The current connection ended (it broke, or the caller shut it down to switch): its
 * safekeeper cools down until `started + backoff`, and the backoff grows (Neon's
 * `drop_old_connection`).
 */
export function connectionEnded(state: ConnectionManagerState): ConnectionManagerState {
  const connection = state.connection
  if (connection === undefined) return state
  const { config } = state
  const backoffUs = state.retries.get(connection.safekeeper)?.backoffUs ?? config.retryBackoffMinUs
  const retries = new Map(state.retries)
  retries.set(connection.safekeeper, {
    nextRetryAtUs: connection.startedAtUs + backoffUs,
    backoffUs: nextBackoffUs(config, backoffUs)
  })
  return { ...state, connection: undefined, retries }
}

export function nextBackoffUs(config: ConnectionManagerConfig, backoffUs: number): number {
  const grown = Math.round(backoffUs * config.retryBackoffMultiplier)
  return Math.min(config.retryBackoffMaxUs, Math.max(config.retryBackoffMinUs, grown))
}

// ---- decisions ----

/** Whether `safekeeper` is in retry cooldown at `nowUs`. */
export function inCooldown(state: ConnectionManagerState, safekeeper: string, nowUs: number): boolean {
  const next = state.retries.get(safekeeper)?.nextRetryAtUs
  return next !== undefined && next > nowUs
}

/**
 * Drops stale candidates and says whether to (re)connect, and where. The state it returns keeps
 * what the check learned (Neon's `discovered_new_wal`); the caller then ends the old
 * connection (`connectionEnded`) and starts the new one (`connectionStarted`).
 * `positionLsn` is where the receiver would start streaming.
 */
export function nextCandidate(
  state: ConnectionManagerState,
  nowUs: number,
  positionLsn: number
): { readonly state: ConnectionManagerState; readonly candidate: ConnectionCandidate | undefined } {
  const cleaned = withoutStaleCandidates(state, nowUs)
  const connection = cleaned.connection
  const { config } = cleaned
  if (connection === undefined) {
    const best = bestCandidate(cleaned, nowUs, positionLsn, undefined)
    return { state: cleaned, candidate: best === undefined ? undefined : { safekeeper: best.safekeeper, reason: { _tag: "NoExistingConnection" } } }
  }
  const best = bestCandidate(cleaned, nowUs, positionLsn, connection.safekeeper)
  if (best === undefined) return { state: cleaned, candidate: undefined }
  const switchTo = (reason: ReconnectReason) => ({ state: cleaned, candidate: { safekeeper: best.safekeeper, reason } })

  if (nowUs - connection.lastMessageAtUs > config.walConnectTimeoutUs) {
    return switchTo({ _tag: "NoKeepAlives", lastMessageAtUs: connection.lastMessageAtUs, thresholdUs: config.walConnectTimeoutUs })
  }
  // Not connected yet: only the timeout above may end the attempt.
  if (!connection.connected) return { state: cleaned, candidate: undefined }

  if (connection.commitLsn !== undefined && best.info.commitLsn - connection.commitLsn >= config.maxLsnWalLagBytes) {
    return switchTo({ _tag: "LaggingWal", currentCommitLsn: connection.commitLsn, candidateCommitLsn: best.info.commitLsn, thresholdBytes: config.maxLsnWalLagBytes })
  }

  const currentLsn = connection.streamingLsn ?? positionLsn
  const currentCommitLsn = connection.commitLsn ?? currentLsn
  const candidateCommitLsn = best.info.commitLsn
  // Keep what we discovered only while the connected safekeeper has not caught up with it.
  let discoveredWal = connection.discoveredWal !== undefined && connection.discoveredWal.lsn > currentCommitLsn ? connection.discoveredWal : undefined
  if (discoveredWal === undefined && candidateCommitLsn > currentCommitLsn) discoveredWal = { lsn: candidateCommitLsn, discoveredAtUs: nowUs }
  const waitingSinceUs = currentLsn < currentCommitLsn
    // The connected safekeeper has WAL it does not send.
    ? connection.lastWalAtUs
    : discoveredWal === undefined ? undefined : Math.max(discoveredWal.discoveredAtUs, connection.lastWalAtUs)
  if (waitingSinceUs !== undefined && candidateCommitLsn > currentCommitLsn && nowUs - waitingSinceUs > config.laggingWalTimeoutUs) {
    return switchTo({ _tag: "NoWalTimeout", currentLsn, currentCommitLsn, candidateCommitLsn, waitingSinceUs, thresholdUs: config.laggingWalTimeoutUs })
  }
  return { state: { ...cleaned, connection: { ...connection, discoveredWal } }, candidate: undefined }
}

/** How long until a safekeeper leaves cooldown (the caller's next wake-up), or undefined if none waits. */
export function timeUntilNextRetryUs(state: ConnectionManagerState, nowUs: number): number | undefined {
  let soonest: number | undefined
  for (const retry of state.retries.values()) {
    const at = retry.nextRetryAtUs
    if (at !== undefined && at > nowUs && (soonest === undefined || at < soonest)) soonest = at
  }
  return soonest === undefined ? undefined : soonest - nowUs
}

/**
 * The best eligible candidate other than `omit`: fresh (already cleaned), valid commit_lsn, at
 * or above the receiver's position, out of cooldown; highest commit_lsn, then highest
 * flush_lsn, then smallest address.
 */
export function bestCandidate(
  state: ConnectionManagerState,
  nowUs: number,
  positionLsn: number,
  omit: string | undefined
): { readonly safekeeper: string; readonly info: CandidateInfo } | undefined {
  let best: { safekeeper: string; info: CandidateInfo } | undefined
  for (const [safekeeper, info] of state.candidates) {
    if (safekeeper === omit || info.commitLsn === 0 || info.commitLsn < positionLsn) continue
    if (inCooldown(state, safekeeper, nowUs)) continue
    if (best === undefined || compareCandidates({ safekeeper, info }, best) < 0) best = { safekeeper, info }
  }
  return best
}

/** Negative when `a` ranks before `b`; a total order over distinct addresses. */
export function compareCandidates(
  a: { readonly safekeeper: string; readonly info: CandidateInfo },
  b: { readonly safekeeper: string; readonly info: CandidateInfo }
): number {
  return b.info.commitLsn - a.info.commitLsn || b.info.flushLsn - a.info.flushLsn || (a.safekeeper < b.safekeeper ? -1 : a.safekeeper > b.safekeeper ? 1 : 0)
}

/** Neon's `cleanup_old_candidates`: info older than `laggingWalTimeoutUs` is forgotten. */
function withoutStaleCandidates(state: ConnectionManagerState, nowUs: number): ConnectionManagerState {
  let candidates: Map<string, CandidateInfo> | undefined
  for (const [safekeeper, info] of state.candidates) {
    if (nowUs - info.heardAtUs < state.config.laggingWalTimeoutUs) continue
    candidates ??= new Map(state.candidates)
    candidates.delete(safekeeper)
  }
  return candidates === undefined ? state : { ...state, candidates }
}

/** A one-line description for logs and switch events. */
export function describeReason(reason: ReconnectReason): string {
  switch (reason._tag) {
    case "NoExistingConnection":
      return "no existing connection"
    case "NoKeepAlives":
      return `no keepalive since ${reason.lastMessageAtUs} (threshold ${reason.thresholdUs} us)`
    case "LaggingWal":
      return `commit_lsn ${reason.currentCommitLsn} lags candidate's ${reason.candidateCommitLsn} by >= ${reason.thresholdBytes} bytes`
    case "NoWalTimeout":
      return `no WAL since ${reason.waitingSinceUs} while the candidate has ${reason.candidateCommitLsn} (at ${reason.currentLsn}, threshold ${reason.thresholdUs} us)`
    default:
      return assertNever(reason, "reconnect reason")
  }
}
