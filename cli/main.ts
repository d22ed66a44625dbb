#!/usr/bin/env node
import { Command } from "commander"

const program = new Command()
program.name("sk").description("A quorum WAL service for Postgres and its deterministic simulator")
program.parseAsync(process.argv).catch((error: unknown) => {
  process.stderr.write(`sk: ${error instanceof Error ? error.message : String(error)}\n`)
  process.exit(1)
})
