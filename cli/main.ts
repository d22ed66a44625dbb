#!/usr/bin/env node
import { Command } from "commander"

/**
 * The `sk` command. Start-up time matters: PostgreSQL runs `sk wal fetch` once per WAL segment
 * (restore_command), and loading every command's modules (the simulator, every Effect module)
 * took ~0.43 s against ~0.09 s for `node -e 0`. So only commander loads here, and the module of
 * the command named on the command line is imported before parsing; `sk --help`, `sk help`, an
 * unknown or missing command load them all, so the full listing and commander's suggestions
 * stay as they were.
 *
 * The simulator's trip-wires (sim/tripwires.ts) must be installed before any module captures a
 * timer, a clock or a built-in function, and only a simulated run reports to them. They load
 * here, first, whenever `sim` modules are going to be imported; a live command (a safekeeper,
 * the restore_command) runs without their wrappers. Nothing before this point imports effect.
 */
interface CommandModule {
  readonly name: string
  /** Whether it loads the simulator (the trip-wires go first). */
  readonly simulated: boolean
  readonly register: (program: Command) => Promise<void>
}

const COMMAND_MODULES: ReadonlyArray<CommandModule> = [
  { name: "sim", simulated: true, register: async (program) => (await import("./sim.js")).registerSimCommands(program) },
  {
    name: "wal",
    simulated: false,
    register: async (program) => {
      const [{ registerWalCommands }, { registerWalFetchCommand }] = await Promise.all([import("./wal.js"), import("./wal-fetch.js")])
      registerWalCommands(program)
      registerWalFetchCommand(subcommand(program, "wal"))
    }
  },
  { name: "control", simulated: false, register: async (program) => (await import("./control.js")).registerControlCommands(program) },
  { name: "safekeeper", simulated: false, register: async (program) => (await import("./safekeeper.js")).registerSafekeeperCommand(program) },
  { name: "proposer", simulated: false, register: async (program) => (await import("./proposer.js")).registerProposerCommand(program) },
  { name: "local", simulated: false, register: async (program) => (await import("./local.js")).registerLocalCommand(program) },
  { name: "broker", simulated: false, register: async (program) => (await import("./broker.js")).registerBrokerCommand(program) }
]

const program = new Command()
program
  .name("sk")
  .description("A quorum WAL service for Postgres (a re-implementation of Neon's safekeeper) and its deterministic simulator")
  .version("0.1.0")
  .showHelpAfterError()
  .configureOutput({ outputError: (text, write) => write(text) })

try {
  await registerCommandsFor(program, process.argv.slice(2))
  await program.parseAsync(process.argv)
} catch (error: unknown) {
  process.stderr.write(`sk: ${error instanceof Error ? error.message : String(error)}\n`)
  process.exitCode = 1
}

/** Registers what `args` needs: the named command's module, or every module. */
async function registerCommandsFor(program: Command, args: ReadonlyArray<string>): Promise<void> {
  // The program's only options (--help, --version) end parsing, so a command name is args[0].
  const named = COMMAND_MODULES.find((module) => module.name === args[0])
  if (named !== undefined && named.name === "wal" && args[1] === "fetch") {
    // restore_command: the `wal` group with only `fetch`, whose module loads nothing else.
    const { registerWalFetchCommand } = await import("./wal-fetch.js")
    registerWalFetchCommand(program.command("wal"))
    return
  }
  const modules = named === undefined ? COMMAND_MODULES : [named]
  if (modules.some((module) => module.simulated)) await import("../sim/tripwires.js")
  // In order, so `sk --help` lists the commands as before.
  for (const module of modules) await module.register(program)
}

function subcommand(program: Command, name: string): Command {
  const found = program.commands.find((command) => command.name() === name)
  if (found === undefined) throw new Error(`sk: no "${name}" command was registered`)
  return found
}
