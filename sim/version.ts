import { createRequire } from "node:module"

/** The exact Effect version: a seed replays only on the same one (its scheduler shapes interleavings). */
export const EFFECT_VERSION: string = (createRequire(import.meta.url)("effect/package.json") as { version: string }).version
