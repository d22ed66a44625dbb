import { execFileSync, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

/**
 * `npm run mutants`: for each planted bug in mutants/*.patch, copy the working tree to a
 * scratch directory, apply the patch there (never in the real tree), build, and run the
 * patch's scenario seed after seed until the first failure. Prints, per mutant, after how many
 * seeds and how many seconds the simulator caught it, or that it escaped (exit 1 then).
 * A patch names its scenario and seed budget in a first line `# scenario: NAME seeds: N`.
 */
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..")
const MUTANTS_DIR = path.join(ROOT, "mutants")
const COPY_EXCLUDES = new Set(["node_modules", "dist", ".git", "reports-out"])

interface Hunt {
  readonly scenario: string
  readonly seedsRun: number
  readonly firstFailingSeed: number | null
  readonly seconds: number
  readonly violation: string | null
}

function main(): number {
  const only = process.argv[2]
  const patches = fs.readdirSync(MUTANTS_DIR).filter((name) => name.endsWith(".patch") && (only === undefined || name.includes(only))).sort()
  let escaped = 0
  for (const name of patches) {
    const patchPath = path.join(MUTANTS_DIR, name)
    const header = /^# scenario: (\S+) seeds: (\d+)/m.exec(fs.readFileSync(patchPath, "utf8"))
    if (header === null) throw new Error(`${name}: first line must be "# scenario: NAME seeds: N"`)
    const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "sk-mutant-"))
    try {
      copyTree(ROOT, scratch)
      fs.symlinkSync(path.join(ROOT, "node_modules"), path.join(scratch, "node_modules"))
      execFileSync("patch", ["-p1", "--quiet", "-i", patchPath], { cwd: scratch, stdio: "inherit" })
      // A patch that breaks type checking still emits JavaScript; the simulator judges it.
      const built = spawnSync(process.execPath, [path.join(ROOT, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.json"], { cwd: scratch, encoding: "utf8" })
      if (built.status !== 0) process.stdout.write(`note: ${name} does not type-check in the scratch copy:\n${built.stdout}`)
      const output = execFileSync(process.execPath, [path.join(scratch, "dist", "mutants", "hunt.js"), header[1]!, header[2]!], { cwd: scratch, encoding: "utf8" })
      const hunt = JSON.parse(output.trim().split("\n").pop()!) as Hunt
      if (hunt.firstFailingSeed === null) {
        escaped++
        process.stdout.write(`ESCAPED ${name}: ${hunt.scenario} passed ${hunt.seedsRun} seeds (${hunt.seconds.toFixed(1)} s)\n`)
      } else {
        process.stdout.write(`caught  ${name}: ${hunt.scenario} failed at seed ${hunt.firstFailingSeed} (after ${hunt.seedsRun} seeds, ${hunt.seconds.toFixed(1)} s): ${hunt.violation}\n`)
      }
    } finally {
      fs.rmSync(scratch, { recursive: true, force: true })
    }
  }
  return escaped === 0 ? 0 : 1
}

function copyTree(from: string, to: string): void {
  for (const entry of fs.readdirSync(from, { withFileTypes: true })) {
    if (COPY_EXCLUDES.has(entry.name)) continue
    const source = path.join(from, entry.name)
    const target = path.join(to, entry.name)
    if (entry.isDirectory()) {
      fs.mkdirSync(target)
      copyTree(source, target)
    } else if (entry.isFile()) {
      fs.copyFileSync(source, target)
    }
  }
}

process.exitCode = main()
