import { Result, Schema, type Effect } from "effect"
import type { TenantId } from "../acceptor/state.js"

/**
 * Authorization as Neon's safekeeper does it (reference §2, §11). Tokens are Ed25519 JWTs;
 * verifying one is a value handed to `core` (live: `jose` in `live/jwt.ts`), so `core` never
 * sees keys or clocks. A verified token yields claims; `checkPermission` decides whether the
 * claims cover a request for a tenant (or for no tenant: the node-wide routes).
 */

/** Neon's `Scope`, as serialized (snake_case). Only tenant and safekeeperdata open anything here. */
export const Scope = Schema.Literals([
  "tenant",
  "safekeeperdata",
  "admin",
  "pageserverapi",
  "generations_api",
  "infra",
  "scrubber",
  "controller_peer",
  "tenant_endpoint"
])
export type Scope = typeof Scope.Type

export interface Claims {
  readonly scope: Scope
  /** Required for scope "tenant" (a tenant token without one is refused when verified). */
  readonly tenantId: TenantId | undefined
}

export const AuthErrorReason = Schema.Literals([
  "MissingToken", // no Authorization header, or no password message (401)
  "InvalidToken", // malformed, bad signature, expired, unknown scope (401)
  "Forbidden" // a valid token whose claims do not cover the request (403)
])
export type AuthErrorReason = typeof AuthErrorReason.Type

export class AuthError extends Schema.TaggedError<AuthError>()("AuthError", {
  reason: AuthErrorReason,
  message: Schema.String
}) {}

/** Verifies a token's signature and expiry and decodes its claims. */
export interface TokenVerifier {
  verify(token: string): Effect.Effect<Claims, AuthError>
}

/**
 * Neon's `check_permission`: a tenant token opens its own tenant only (never the node-wide
 * routes); safekeeperdata opens everything; every other scope is ineligible here.
 */
export function checkPermission(claims: Claims, tenantId: TenantId | undefined): Result.Result<void, AuthError> {
  switch (claims.scope) {
    case "safekeeperdata":
      return Result.void
    case "tenant":
      if (tenantId === undefined) return Result.fail(new AuthError({ reason: "Forbidden", message: "Attempt to access management api with tenant scope. Permission denied" }))
      if (claims.tenantId !== tenantId) return Result.fail(new AuthError({ reason: "Forbidden", message: "Tenant id mismatch. Permission denied" }))
      return Result.void
    default:
      return Result.fail(new AuthError({ reason: "Forbidden", message: `JWT scope '${claims.scope}' is ineligible for Safekeeper auth` }))
  }
}

/** The node's auth setup: absent verifiers mean that port is open (trust), as in Neon. */
export interface AuthConfig {
  /** The pg port (`--pg-auth-public-key-path`). */
  readonly pg?: TokenVerifier
  /** The tenant-only pg port (`--pg-tenant-only-auth-public-key-path`): tenant tokens only. */
  readonly pgTenantOnly?: TokenVerifier
  /** The HTTP API (`--http-auth-public-key-path`); /v1/status and /metrics stay open. */
  readonly http?: TokenVerifier
  /** The token this node presents to its peers (`--auth-token-path`), pg password and HTTP bearer. */
  readonly peerToken?: string
}
