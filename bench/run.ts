import { benchKernel } from "./kernel.js"
import { benchSeeds } from "./seeds.js"

/** `npm run bench`: figures and ratios against baselines measured in the same run. */
const only = process.argv[2]
const benches: ReadonlyArray<readonly [string, () => void | Promise<void>]> = [
  ["kernel", benchKernel],
  ["seeds", benchSeeds],
  ["sim", async () => (await import("./sim.js")).benchSim()],
  ["wal", async () => (await import("./wal.js")).benchWal()],
  ["service", async () => (await import("./service.js")).benchService()],
  ["restore", async () => (await import("./restore.js")).benchRestore()],
  ["backup", async () => (await import("./backup.js")).benchBackup()]
]
for (const [name, bench] of benches) {
  if (only !== undefined && only !== name) continue
  await bench()
  console.log()
}
