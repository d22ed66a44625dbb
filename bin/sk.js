#!/usr/bin/env node
// The built CLI; `npm run build` compiles cli/main.ts to dist/cli/main.js.
import "../dist/cli/main.js"
