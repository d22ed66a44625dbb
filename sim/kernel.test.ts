// Goal: the kernel ends a livelock instead of hanging, holds a paused life's work and gives it
// back in order, and records calls that arrive while it is not open. Method: plain tasks and
// timers on a bare kernel (no Effect), with small budgets where a budget is under test.
import { describe, expect, test } from "vitest"
import { Incarnation, Kernel, LivelockError, STEPS_MAX_DEFAULT, STEPS_PER_INSTANT_MAX_DEFAULT, takeLateCalls } from "./kernel.js"

describe("step budgets", () => {
  test("tasks that re-enqueue themselves at one instant are a livelock, not a hang", () => {
    const kernel = new Kernel(1, { stepsPerInstantMax: 1000 })
    const life = new Incarnation("n", 1)
    const spin = (): void => kernel.enqueue(spin, life)
    kernel.enqueue(spin, life)
    let caught: unknown
    try {
      kernel.run()
    } catch (error) {
      caught = error
    }
    expect(caught).toBeInstanceOf(LivelockError)
    const livelock = caught as LivelockError
    expect(livelock.budget).toBe("instant")
    expect(livelock.message).toMatch(/without time advancing.*n#1/)
    expect(kernel.stats.tasks).toBe(1001)
    expect(kernel.nowUs).toBe(0)
  })

  test("timers at the current instant count too (sleep(0) forever)", () => {
    const kernel = new Kernel(1, { stepsPerInstantMax: 500 })
    const spin = (): void => void kernel.after(0, spin, undefined)
    kernel.after(10, spin, undefined)
    expect(() => kernel.run()).toThrow(/without time advancing/)
    expect(kernel.nowUs).toBe(10)
  })

  test("time creeping forward by a microsecond forever runs into the total budget", () => {
    const kernel = new Kernel(1, { stepsMax: 5000 })
    const creep = (): void => void kernel.after(1, creep, undefined)
    kernel.after(1, creep, undefined)
    let caught: unknown
    try {
      kernel.run()
    } catch (error) {
      caught = error
    }
    expect((caught as LivelockError).budget).toBe("total")
    expect(kernel.nowUs).toBe(5001)
  })

  test("the instant budget restarts whenever time advances, and the largest instant is measured", () => {
    const kernel = new Kernel(1, { stepsPerInstantMax: 10 })
    // Ten steps at each of 100 instants: never more than the budget at one instant.
    for (let at = 0; at < 100; at++) for (let i = 0; i < 10; i++) kernel.setTimer(at * 5, () => {}, undefined)
    kernel.run()
    expect(kernel.stats.timersFired).toBe(1000)
    expect(kernel.stats.instantStepsMax).toBe(10)
  })

  test("defaults leave room far above what scenarios reach", () => {
    // Measured over every scenario (kernel.ts): at most 49 steps at one instant, 25,599 in a run.
    expect(STEPS_PER_INSTANT_MAX_DEFAULT).toBeGreaterThanOrEqual(49 * 1000)
    expect(STEPS_MAX_DEFAULT).toBeGreaterThanOrEqual(25_599 * 100)
  })
})

describe("pauses", () => {
  test("a paused life's tasks and timers are held and run after the resume, in their original order", () => {
    const kernel = new Kernel(1)
    const life = new Incarnation("n", 1)
    const other = new Incarnation("m", 1)
    const ran: string[] = []
    const note = (what: string) => () => void ran.push(`${kernel.nowUs} ${what}`)
    kernel.setTimer(100, note("timer 100"), life)
    kernel.setTimer(200, () => {
      ran.push(`${kernel.nowUs} timer 200`)
      kernel.enqueue(note("task from timer 200"), life)
    }, life)
    kernel.setTimer(150, note("other 150"), other)
    kernel.setTimer(300, note("timer 300"), life)
    kernel.setTimer(50, () => kernel.pause(life), undefined)
    kernel.setTimer(1000, () => {
      ran.push(`${kernel.nowUs} resume held=${kernel.resume(life)}`)
    }, undefined)
    kernel.setTimer(1000, note("timer 1000 (after the resume)"), life)
    kernel.run()
    expect(ran).toEqual([
      "150 other 150", // other lives keep running meanwhile
      "1000 resume held=3",
      "1000 timer 100", // overdue, in order
      "1000 timer 200",
      "1000 timer 300",
      "1000 task from timer 200", // enqueued by a held timer once it ran
      "1000 timer 1000 (after the resume)"
    ])
    expect(kernel.stats.heldTasks).toBe(3)
  })

  test("held work goes ahead of what the life enqueued later", () => {
    const kernel = new Kernel(1)
    const life = new Incarnation("n", 1)
    const ran: string[] = []
    kernel.pause(life)
    kernel.enqueue(() => ran.push("first"), life)
    kernel.run()
    expect(ran).toEqual([])
    // Resumed from a task while a later task of the life already waits in the ready queue.
    kernel.enqueue(() => {
      kernel.resume(life)
    }, undefined)
    kernel.enqueue(() => ran.push("second"), life)
    kernel.run()
    expect(ran).toEqual(["first", "second"])
  })

  test("a life that dies while paused loses what was held", () => {
    const kernel = new Kernel(1)
    const life = new Incarnation("n", 1)
    let ran = 0
    kernel.setTimer(10, () => kernel.pause(life), undefined)
    kernel.setTimer(20, () => ran++, life)
    kernel.setTimer(30, () => {
      life.alive = false
      expect(kernel.resume(life)).toBe(1)
    }, undefined)
    kernel.run()
    expect(ran).toBe(0)
    expect(kernel.stats.droppedTasks).toBe(1)
  })
})

describe("the run boundary", () => {
  test("the kernel is open only inside a run or an admitted harness step, and a closed kernel refuses to run", () => {
    const kernel = new Kernel(77)
    takeLateCalls()
    expect(kernel.isOpen).toBe(false)
    let inside = false
    kernel.enqueue(() => {
      inside = kernel.isOpen
    }, undefined)
    kernel.run()
    expect(inside).toBe(true)
    expect(kernel.admit(() => kernel.isOpen)).toBe(true)
    kernel.lateCall("n#1", "Clock.sleep")
    kernel.close()
    expect(kernel.admit(() => kernel.isOpen)).toBe(false)
    kernel.lateCall("n#1", "Disk open")
    expect(kernel.lateCalls).toEqual([
      { seed: 77, who: "n#1", what: "Clock.sleep", afterClose: false },
      { seed: 77, who: "n#1", what: "Disk open", afterClose: true }
    ])
    expect(takeLateCalls().calls).toEqual(kernel.lateCalls)
    expect(takeLateCalls().calls).toEqual([]) // taken and cleared
    expect(() => kernel.run()).toThrow(/closed/)
  })
})
