import { execFileSync } from "node:child_process"
import { createRequire } from "node:module"
import { dirname } from "node:path"
import { fileURLToPath } from "node:url"

/** The exact Effect version: a seed replays only on the same one (its scheduler shapes interleavings). */
export const EFFECT_VERSION: string = (createRequire(import.meta.url)("effect/package.json") as { version: string }).version

/**
 * The commit of the checkout this code runs from, as a repro line names it: the short hash,
 * "+dirty" when tracked files differ from it (a seed replays only on the same code), or
 * "unknown" outside a git checkout or without git. Asked once per process: git is slow next
 * to a short run, and the answer does not change while the process lives.
 */
export function sourceCommit(): string {
  cachedSourceCommit ??= describeCommit(dirname(fileURLToPath(import.meta.url)))
  return cachedSourceCommit
}
let cachedSourceCommit: string | undefined

/** `sourceCommit` for the checkout holding `dir` (any folder inside it). */
export function describeCommit(dir: string): string {
  const git = (...args: string[]) => execFileSync("git", args, { cwd: dir, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] })
  try {
    const commit = git("rev-parse", "--short=12", "HEAD").trim()
    // Untracked files are left out: scratch files and reports beside the code change no behaviour.
    const dirty = git("status", "--porcelain", "--untracked-files=no").trim().length > 0
    return dirty ? `${commit}+dirty` : commit
  } catch {
    return "unknown"
  }
}
