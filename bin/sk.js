#!/usr/bin/env node
// The built CLI; `npm run build` compiles cli/main.ts to dist/cli/main.js.
// The trip-wires load first: their wrappers must be in place before any module (effect, the
// simulator, a scenario) captures a reference to a timer, a clock or a built-in function.
import "../dist/sim/tripwires.js"
import "../dist/cli/main.js"
