import { defineConfig } from "vitest/config"

// Two projects: `unit` runs on every `npm test`; `slow` holds suites that start real
// components (PostgreSQL, etcd, S3) or run big sweeps. CI runs both. Both load the
// simulator's trip-wires first, so their wrappers are in place before any test module captures
// a timer, a clock or a built-in function (sim/tripwires.ts).
const setupFiles = ["sim/tripwires.ts"]

export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: "unit",
          include: ["{core,live,sim,scenarios,cli,reports,mutants}/**/*.test.ts"],
          exclude: ["**/*.slow.test.ts", "node_modules/**", "dist/**"],
          testTimeout: 60_000,
          setupFiles
        }
      },
      {
        test: {
          name: "slow",
          include: ["{core,live,sim,scenarios,cli,reports}/**/*.slow.test.ts"],
          exclude: ["node_modules/**", "dist/**"],
          testTimeout: 600_000,
          hookTimeout: 300_000,
          setupFiles
        }
      }
    ]
  }
})
