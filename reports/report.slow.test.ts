// Goal: the HTML run report works in a real browser: it loads without console or page errors,
// and the progress chart and space-time diagram render with a visible size and SVG content.
// Method: run a real scenario (safekeeper-cluster seed 1, trace kept), write its report with
// writeRunReport, open it in Debian's headless Chromium driven by playwright-core, inspect the
// DOM and save a screenshot. A synthetic run with a recorded timeline is checked the same way,
// since scenarios that record no timeline draw only what their trace lines tell.
import { existsSync, mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { pathToFileURL } from "node:url"
import { type Browser, type BrowserServer, chromium } from "playwright-core"
import { afterAll, beforeAll, describe, expect, test } from "vitest"
import { findScenario } from "../scenarios/registry.js"
import type { ScenarioResult } from "../scenarios/scenario.js"
import { syntheticResult } from "./fixtures.js"
import { writeRunReport } from "./run-report.js"

const CHROMIUM = "/usr/bin/chromium"
const context = { effectVersion: "4.1.0", commit: "test", repro: "sk sim replay --scenario safekeeper-cluster --seed 1" }
const outDir = mkdtempSync(join(tmpdir(), "sk-report-browser-"))
let server: BrowserServer | undefined
let browser: Browser | undefined

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: run scripts/install-chromium.sh`)
  // As the probe found: without the background-networking flags Chromium keeps dialing out
  // into this machine's closed network.
  // A server, not launch(): it exposes the browser's process, so a hung close can be killed by pid.
  server = await chromium.launchServer({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
  })
  console.log(`chromium pid ${server.process().pid}`)
  browser = await chromium.connect(server.wsEndpoint())
})

afterAll(async () => {
  const pid = server?.process().pid
  const closed = (async () => {
    await browser?.close().catch(() => undefined)
    await server?.close()
  })()
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<"timeout">((resolve) => {
    timer = setTimeout(() => resolve("timeout"), 10_000)
  })
  const outcome = await Promise.race([closed, timeout])
  clearTimeout(timer)
  if (outcome === "timeout" && pid !== undefined) process.kill(pid, "SIGKILL")
  console.log(`report browser check: reports and screenshots in ${outDir}`)
})

interface Inspection {
  readonly errors: ReadonlyArray<string>
  readonly screenshot: string
  readonly boxes: Readonly<Record<string, { readonly width: number; readonly height: number; readonly children: number }>>
  readonly polylines: number
  readonly arrows: number
  readonly violationMarkers: number
  readonly title: string
}

async function inspect(result: ScenarioResult, name: string): Promise<Inspection> {
  const dir = join(outDir, name)
  const { files } = writeRunReport(result, context, dir)
  const html = files.find((f) => f.endsWith("report.html"))!
  const page = await browser!.newPage({ viewport: { width: 1400, height: 1000 } })
  const errors: Array<string> = []
  page.on("console", (message) => {
    if (message.type() === "error") errors.push(`console: ${message.text()}`)
  })
  page.on("pageerror", (error) => errors.push(`page: ${error.message}`))
  page.on("requestfailed", (request) => errors.push(`request failed: ${request.url()}`))
  await page.goto(pathToFileURL(html).href, { waitUntil: "load" })
  const boxes: Record<string, { width: number; height: number; children: number }> = {}
  for (const id of ["progress-chart", "spacetime"]) {
    const box = await page.locator(`#${id}`).boundingBox()
    const children = await page.locator(`#${id} > *`).count()
    boxes[id] = { width: box?.width ?? 0, height: box?.height ?? 0, children }
  }
  const screenshot = join(dir, "report.png")
  await page.screenshot({ path: screenshot, fullPage: true })
  console.log(`screenshot: ${screenshot}`)
  const inspection: Inspection = {
    errors,
    screenshot,
    boxes,
    polylines: await page.locator("#progress-chart polyline").count(),
    arrows: await page.locator("#spacetime g.msg").count(),
    violationMarkers: await page.locator("#progress-chart .violation-marker, #spacetime .violation-marker").count(),
    title: await page.title()
  }
  await page.close()
  return inspection
}

describe("HTML run report in headless Chromium", () => {
  test("a real safekeeper-cluster run: no errors, chart and diagram drawn", async () => {
    const result = findScenario("safekeeper-cluster")!.run(1, { recordTrace: true })
    const seen = await inspect(result, "safekeeper-cluster-1")
    expect(seen.errors).toEqual([])
    expect(seen.title).toContain("safekeeper-cluster seed 1")
    for (const id of ["progress-chart", "spacetime"]) {
      expect(seen.boxes[id]!.width, id).toBeGreaterThan(100)
      expect(seen.boxes[id]!.height, id).toBeGreaterThan(100)
      expect(seen.boxes[id]!.children, id).toBeGreaterThan(5)
    }
    // With or without a recorded timeline there are nodes with positions and connections to draw.
    expect(seen.polylines).toBeGreaterThan(0)
    expect(seen.arrows).toBeGreaterThan(0)
    expect(existsSync(seen.screenshot)).toBe(true)
  })

  test("a run with a recorded timeline and a violation: a line per node and measure, arrows, markers", async () => {
    const seen = await inspect(syntheticResult(), "synthetic-timeline")
    expect(seen.errors).toEqual([])
    expect(seen.boxes["progress-chart"]!.width).toBeGreaterThan(100)
    expect(seen.boxes["spacetime"]!.height).toBeGreaterThan(100)
    expect(seen.polylines).toBe(12)
    expect(seen.arrows).toBe(250)
    expect(seen.violationMarkers).toBe(2)
  })
})
