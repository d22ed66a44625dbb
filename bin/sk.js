#!/usr/bin/env node
// The built CLI; `npm run build` compiles cli/main.ts to dist/cli/main.js. It installs the
// simulator's trip-wires itself, before loading any simulator module, and only for commands
// that run the simulator (a restore_command run per WAL segment should not pay for them).
import "../dist/cli/main.js"
