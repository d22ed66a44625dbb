import { makeAcceptorStorageScenario } from "./acceptor-storage.js"
import { makeAppendLogScenario } from "./append-log.js"
import { makeSafekeeperClusterScenario } from "./safekeeper-cluster.js"
import type { Scenario } from "./scenario.js"
import { makeSwarmScenario } from "./swarm.js"
import { makeIncidentScenarios } from "./incidents.js"

/** Every named scenario. Planted-bug variants exist to prove the checkers can fail. */
export const SCENARIOS: ReadonlyArray<Scenario> = [
  makeSwarmScenario(),
  ...makeIncidentScenarios(),
  makeAppendLogScenario("none"),
  makeAcceptorStorageScenario("none"),
  makeAcceptorStorageScenario("no-fsync"),
  makeSafekeeperClusterScenario(),
  makeAppendLogScenario("ack-before-fsync"),
  makeAppendLogScenario("wall-clock"),
  makeAppendLogScenario("global-counter")
]

/** Scenarios a default sweep runs (planted bugs are run only when named). */
export const DEFAULT_SWEEP_SCENARIOS: ReadonlyArray<Scenario> = SCENARIOS.filter((s) => !s.name.includes("-planted-"))

export function findScenario(name: string): Scenario | undefined {
  return SCENARIOS.find((s) => s.name === name)
}
