import seedrandom from "seedrandom"

/**
 * Swarm testing: each seed switches every fault family off, rare or frequent, so that some
 * seeds hammer one fault while others run nearly clean (Groce et al. 2012: more distinct bugs
 * than one fixed mix). The configuration comes from its own stream, so the choice of faults
 * does not shift the kernel's stream.
 */
export type FaultLevel = "off" | "rare" | "frequent"

export class SwarmConfig {
  private readonly random: seedrandom.PRNG
  readonly levels: Record<string, FaultLevel> = {}
  private readonly notes: Record<string, string> = {}

  constructor(seed: number) {
    this.random = seedrandom.alea(`${seed}/swarm`)
  }

  /** Draws the level of one fault family (off 1/3, rare 1/3, frequent 1/3). */
  level(family: string): FaultLevel {
    const draw = this.random()
    const level: FaultLevel = draw < 1 / 3 ? "off" : draw < 2 / 3 ? "rare" : "frequent"
    this.levels[family] = level
    return level
  }

  /** A value for the family's level: 0 when off. */
  pick(family: string, rare: number, frequent: number): number {
    const level = this.level(family)
    return level === "off" ? 0 : level === "rare" ? rare : frequent
  }

  /** A float in [0, 1) from the swarm's own stream (plans: times, targets, durations). */
  float(): number {
    return this.random()
  }

  /** An integer in [minInclusive, maxInclusive] from the swarm's own stream. */
  intBetween(minInclusive: number, maxInclusive: number): number {
    return minInclusive + Math.floor(this.random() * (maxInclusive - minInclusive + 1))
  }

  /** Records a drawn choice that is not a fault level (node counts, workload), for the printout. */
  note(family: string, value: string): void {
    this.notes[family] = value
  }

  describe(): string {
    const levels = Object.keys(this.levels).map((family) => `${family}=${this.levels[family]}`)
    const notes = Object.keys(this.notes).map((family) => `${family}=${this.notes[family]}`)
    return [...notes, ...levels].join(" ")
  }
}
