#!/usr/bin/env node
import { Command } from "commander"
import { registerControlCommands } from "./control.js"
import { registerLocalCommand } from "./local.js"
import { registerProposerCommand } from "./proposer.js"
import { registerSafekeeperCommand } from "./safekeeper.js"
import { registerSimCommands } from "./sim.js"
import { registerWalCommands } from "./wal.js"

const program = new Command()
program
  .name("sk")
  .description("A quorum WAL service for Postgres (a re-implementation of Neon's safekeeper) and its deterministic simulator")
  .version("0.1.0")
  .showHelpAfterError()
  .configureOutput({ outputError: (text, write) => write(text) })
registerSimCommands(program)
registerWalCommands(program)
registerControlCommands(program)
registerSafekeeperCommand(program)
registerProposerCommand(program)
registerLocalCommand(program)

program.parseAsync(process.argv).catch((error: unknown) => {
  process.stderr.write(`sk: ${error instanceof Error ? error.message : String(error)}\n`)
  process.exitCode = 1
})
