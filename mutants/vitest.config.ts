import { defineConfig } from "vitest/config"

// The root config's unit project does not include mutants/; this one runs the catalog's tests
// (with the simulator's trip-wires first, as the root config does).
export default defineConfig({
  test: {
    root: ".",
    include: ["mutants/**/*.test.ts"],
    testTimeout: 60_000,
    setupFiles: ["sim/tripwires.ts"]
  }
})
