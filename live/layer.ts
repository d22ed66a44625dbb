import { Layer } from "effect"
import type { Disk } from "../core/io/disk.js"
import type { Log } from "../core/io/log.js"
import type { Net } from "../core/io/net.js"
import { liveDiskLayer, type LiveDiskOptions } from "./disk.js"
import { liveLogLayer, type LiveLogOptions } from "./log.js"
import { liveNetLayer, type LiveNetOptions } from "./net.js"

/**
 * The live world: Disk, Net and Log over the real machine. Clock and Random are not provided
 * here: Effect's defaults are already the real clock and a real generator.
 */
export interface LiveWorldOptions {
  readonly disk?: LiveDiskOptions
  readonly net?: LiveNetOptions
  readonly log?: LiveLogOptions
}

export const liveLayer = (options: LiveWorldOptions = {}): Layer.Layer<Disk | Net | Log> =>
  Layer.mergeAll(liveDiskLayer(options.disk), liveNetLayer(options.net), liveLogLayer(options.log))
