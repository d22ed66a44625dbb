import { Command, InvalidArgumentError, Option } from "commander"
import { Result } from "effect"
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs"
import { basename, join } from "node:path"
import seedrandom from "seedrandom"
import { isValidDecoderStart, WalDecoder, type WalRecord } from "../core/wal/decoder.js"
import { WalGenerator } from "../core/wal/generator.js"
import {
  DEFAULT_WAL_SEGMENT_SIZE_BYTES,
  formatLsn,
  isValidSegmentSize,
  Lsn,
  parseLsn,
  parseSegmentFileName,
  segmentFileName,
  segmentNoOf,
  segmentStartLsn
} from "../core/wal/lsn.js"
import { type PgMajorVersion, pgMajorVersionOf, SIZE_OF_XLOG_LONG_PHD_BYTES } from "../core/wal/page.js"
import { recordKind, rmgrName } from "../core/wal/record.js"

/** `sk wal dump` and `sk wal synth`: read and write Postgres WAL segment files. */
export function registerWalCommands(program: Command): void {
  const wal = program.command("wal").description("Read and write Postgres WAL segment files")

  wal.command("dump")
    .description("Decode WAL records from segment files (or directories of them), in LSN order")
    .argument("<file...>", "segment files or directories holding them")
    .option("--json", "print one JSON summary instead of one line per record")
    .addOption(new Option("--segment-size <bytes>", "WAL segment size").argParser(parseSegmentSize).default(DEFAULT_WAL_SEGMENT_SIZE_BYTES))
    .action(function(this: Command, files: string[], options: { json?: boolean; segmentSize: number }) {
      const inputs = collectSegmentFiles(files, options.segmentSize)
      if (Result.isFailure(inputs)) this.error(`error: ${inputs.failure}`)
      const out = new LineWriter()
      const summary = dumpWal(inputs.success, {
        segmentSizeBytes: options.segmentSize,
        onRecord: options.json === true ? undefined : (record) => out.line(formatRecordLine(record))
      })
      if (options.json === true) {
        out.line(JSON.stringify(summary, null, 2))
      } else {
        out.line(`stopped: ${summary.stoppedBecause}`)
      }
      out.flush()
    })

  wal.command("synth")
    .description("Write segment files holding valid logical-message records (pg_waldump accepts them)")
    .requiredOption("--out <dir>", "directory for the segment files (created if missing)")
    .addOption(new Option("--bytes <n>", "bytes of WAL records to write").argParser(parseByteCount).makeOptionMandatory())
    .addOption(new Option("--seed <n>", "seed for record sizes").argParser(parseSeed).default(1))
    .addOption(new Option("--start <lsn>", "LSN of the first record (X/Y, segment 1 or later)").argParser(parseLsnArgument))
    .addOption(new Option("--pg-version <v>", "PostgreSQL major (14-17) or PG_VERSION_NUM").argParser(parsePgVersion).default(15 as PgMajorVersion))
    .addOption(new Option("--sysid <id>", "system identifier (decimal u64)").argParser(parseSystemId).default(SYNTH_DEFAULT_SYSTEM_ID, SYNTH_DEFAULT_SYSTEM_ID.toString()))
    .addOption(new Option("--segment-size <bytes>", "WAL segment size").argParser(parseSegmentSize).default(DEFAULT_WAL_SEGMENT_SIZE_BYTES))
    .option("--switch", "end the first segment early with an XLOG_SWITCH record")
    .action(function(this: Command, options: SynthCliOptions) {
      const start = options.start ?? Lsn(segmentStartLsn(1, options.segmentSize) + SIZE_OF_XLOG_LONG_PHD_BYTES)
      if (segmentNoOf(start, options.segmentSize) < 1) this.error("error: --start must be in segment 1 or later (segment 0 never holds WAL)")
      if (!isValidDecoderStart(start, options.segmentSize)) {
        this.error(`error: --start ${formatLsn(start)} is not a record start: it must be 8-aligned and past its page header`)
      }
      const result = synthWal({
        outDir: options.out,
        bytes: options.bytes,
        seed: options.seed,
        startLsn: start,
        pgVersion: options.pgVersion,
        systemId: options.sysid,
        segmentSizeBytes: options.segmentSize,
        withSwitch: options.switch === true
      })
      process.stdout.write(JSON.stringify(result) + "\n")
    })
}

interface SynthCliOptions {
  readonly out: string
  readonly bytes: number
  readonly seed: number
  readonly start: Lsn | undefined
  readonly pgVersion: PgMajorVersion
  readonly sysid: bigint
  readonly segmentSize: number
  readonly switch?: boolean
}

export const SYNTH_DEFAULT_SYSTEM_ID = 7_000_000_000_000_000_001n
/** Bounds `--bytes` so a typo cannot fill the disk. */
export const SYNTH_BYTES_MAX = 64 * 1024 * 1024 * 1024

// ---- dump ----

export interface SegmentFile {
  readonly path: string
  readonly segmentNo: number
  readonly timelineId: number
}

export interface WalDumpSummary {
  /** Start of the first record decoded, if any. */
  readonly firstLsn: string | undefined
  /** End of the last valid record (unaligned); the start LSN when none was read. */
  readonly endLsn: string
  /** Where the next record would start (aligned; next segment after XLOG_SWITCH). */
  readonly nextLsn: string
  readonly records: number
  readonly recordBytes: number
  readonly segments: number
  /** Decoder's reason tag, or "EndOfInput" / "MissingSegment". */
  readonly stopReason: string
  /** The stop, in words, with its LSN. */
  readonly stoppedBecause: string
  readonly stopLsn: string | undefined
  readonly rmgrs: Readonly<Record<string, number>>
}

export interface DumpOptions {
  readonly segmentSizeBytes: number
  readonly onRecord?: ((record: WalRecord) => void) | undefined
}

/**
 * Decodes the given segments in segment order from the first one's start (a record
 * continued into it is skipped, as pg_waldump does) until the decoder stops, a segment is
 * missing, or the input ends.
 */
export function dumpWal(files: ReadonlyArray<SegmentFile>, options: DumpOptions): WalDumpSummary {
  const sorted = [...files].sort((a, b) => a.segmentNo - b.segmentNo || a.timelineId - b.timelineId)
  const rmgrs = new Map<string, number>()
  let records = 0
  let recordBytes = 0
  let firstLsn: number | undefined
  let segments = 0
  const first = sorted[0]
  if (first === undefined) {
    return {
      firstLsn: undefined, endLsn: "0/0", nextLsn: "0/0", records: 0, recordBytes: 0, segments: 0,
      stopReason: "EndOfInput", stoppedBecause: "no segment files given", stopLsn: undefined, rmgrs: {}
    }
  }
  const decoder = Result.getOrThrow(WalDecoder.make({
    startLsn: segmentStartLsn(first.segmentNo, options.segmentSizeBytes),
    segmentSizeBytes: options.segmentSizeBytes,
    timelineId: undefined
  }))
  let stopReason = "EndOfInput"
  let stoppedBecause = ""
  let stopLsn: number | undefined
  for (const file of sorted) {
    const expected = segmentNoOf(decoder.position, options.segmentSizeBytes)
    if (file.segmentNo < expected) continue
    if (file.segmentNo > expected) {
      stopReason = "MissingSegment"
      stopLsn = decoder.position
      stoppedBecause = `segment ${segmentFileName(first.timelineId, expected, options.segmentSizeBytes)} is missing at ${formatLsn(decoder.position)}`
      break
    }
    const bytes = readFileSync(file.path)
    segments += 1
    for (const record of decoder.push(bytes)) {
      records += 1
      recordBytes += record.totalLengthBytes
      firstLsn ??= record.startLsn
      const name = rmgrName(record.rmid)
      rmgrs.set(name, (rmgrs.get(name) ?? 0) + 1)
      options.onRecord?.(record)
    }
    if (decoder.error !== undefined) break
    if (bytes.length < options.segmentSizeBytes) break
  }
  const error = decoder.error
  if (error !== undefined) {
    stopReason = error.reason
    stopLsn = error.lsn
    stoppedBecause = error.message
  } else if (stopReason === "EndOfInput") {
    stopLsn = decoder.position
    stoppedBecause = decoder.inRecord
      ? `input ends at ${formatLsn(decoder.position)} inside the record at ${formatLsn(decoder.nextRecordLsn)}`
      : `input ends at ${formatLsn(decoder.position)}`
  }
  return {
    firstLsn: firstLsn === undefined ? undefined : formatLsn(firstLsn),
    endLsn: formatLsn(decoder.lastRecordEndLsn),
    nextLsn: formatLsn(decoder.nextRecordLsn),
    records,
    recordBytes,
    segments,
    stopReason,
    stoppedBecause,
    stopLsn: stopLsn === undefined ? undefined : formatLsn(stopLsn),
    rmgrs: Object.fromEntries([...rmgrs.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
  }
}

export function formatRecordLine(record: WalRecord): string {
  return `lsn: ${formatLsn(record.startLsn)} prev: ${formatLsn(record.prevLsn)} len: ${record.totalLengthBytes} ` +
    `rmgr: ${rmgrName(record.rmid)} ${recordKind(record.rmid, record.info)} xid: ${record.xid}`
}

/** Expands directories to the segment files in them; every named file must be a segment. */
export function collectSegmentFiles(paths: ReadonlyArray<string>, segmentSizeBytes: number): Result.Result<SegmentFile[], string> {
  const found: SegmentFile[] = []
  for (const path of paths) {
    let isDirectory: boolean
    try {
      isDirectory = statSync(path).isDirectory()
    } catch (error) {
      return Result.fail(`cannot read ${path}: ${error instanceof Error ? error.message : String(error)}`)
    }
    if (isDirectory) {
      for (const name of readdirSync(path).sort()) {
        const parsed = parseSegmentFileName(name, segmentSizeBytes)
        if (parsed !== undefined) found.push({ path: join(path, name), segmentNo: parsed.segmentNo, timelineId: parsed.timelineId })
      }
      continue
    }
    const parsed = parseSegmentFileName(basename(path), segmentSizeBytes)
    if (parsed === undefined) return Result.fail(`${path} is not named as a WAL segment (24 hex digits, optionally .partial)`)
    found.push({ path, segmentNo: parsed.segmentNo, timelineId: parsed.timelineId })
  }
  // As Neon's readers do, a `.partial` file wins over a full name for the same segment.
  const bySegment = new Map<number, SegmentFile>()
  for (const file of found) {
    const other = bySegment.get(file.segmentNo)
    if (other === undefined || (file.path.endsWith(".partial") && !other.path.endsWith(".partial"))) {
      if (other !== undefined && other.timelineId !== file.timelineId) {
        return Result.fail(`segment number ${file.segmentNo} appears on timelines ${other.timelineId} and ${file.timelineId}`)
      }
      bySegment.set(file.segmentNo, file)
    } else if (other.timelineId !== file.timelineId || other.path.endsWith(".partial") === file.path.endsWith(".partial")) {
      return Result.fail(`segment number ${file.segmentNo} given twice (${other.path}, ${file.path})`)
    }
  }
  if (bySegment.size === 0) return Result.fail("no WAL segment files found")
  return Result.succeed([...bySegment.values()])
}

/** Batches stdout writes: a dump prints a line per record. */
class LineWriter {
  private readonly lines: string[] = []
  private static readonly BATCH_LINES_MAX = 4096
  line(text: string): void {
    this.lines.push(text)
    if (this.lines.length >= LineWriter.BATCH_LINES_MAX) this.flush()
  }
  flush(): void {
    if (this.lines.length === 0) return
    process.stdout.write(this.lines.join("\n") + "\n")
    this.lines.length = 0
  }
}

// ---- synth ----

export interface SynthOptions {
  readonly outDir: string
  readonly bytes: number
  readonly seed: number
  readonly startLsn: Lsn
  readonly pgVersion: PgMajorVersion
  readonly systemId: bigint
  readonly segmentSizeBytes: number
  readonly timelineId?: number | undefined
  /** Append one XLOG_SWITCH once the first segment is half full. */
  readonly withSwitch?: boolean | undefined
}

export interface SynthResult {
  readonly files: ReadonlyArray<string>
  readonly startLsn: string
  /** End of the last record (aligned): where the next record would go. */
  readonly endLsn: string
  readonly records: number
  readonly pageSpanningRecords: number
  readonly segmentSpanningRecords: number
  readonly switches: number
}

/** Prefix of every synthesized message; pg_waldump shows it. */
const SYNTH_PREFIX = "sk-synth"

/**
 * Writes full-size segment files holding at least `bytes` bytes of logical-message records
 * from `startLsn` on, record sizes drawn from `seed`; the first segment gets the generated
 * prefix up to `startLsn`, the last is zero-filled after the end (the usual end of WAL).
 */
export function synthWal(options: SynthOptions): SynthResult {
  const segmentSize = options.segmentSizeBytes
  const timelineId = options.timelineId ?? 1
  const random = seedrandom(String(options.seed))
  const generator = new WalGenerator({
    startLsn: options.startLsn,
    segmentSizeBytes: segmentSize,
    systemId: options.systemId,
    pgVersion: options.pgVersion,
    timelineId
  })
  mkdirSync(options.outDir, { recursive: true })
  const files: string[] = []
  let segmentNo = segmentNoOf(options.startLsn, segmentSize)
  let segment = new Uint8Array(segmentSize)
  segment.set(generator.segmentPrefix(options.startLsn), 0)
  const writeSegment = () => {
    const path = join(options.outDir, segmentFileName(timelineId, segmentNo, segmentSize))
    writeFileSync(path, segment)
    files.push(path)
  }
  // Copies generated bytes into segment buffers, writing each as it fills.
  const place = (fromLsn: number, bytes: Uint8Array) => {
    let offset = 0
    let lsn = fromLsn
    while (offset < bytes.length) {
      if (segmentNoOf(lsn, segmentSize) !== segmentNo) {
        writeSegment()
        segmentNo = segmentNoOf(lsn, segmentSize)
        segment = new Uint8Array(segmentSize)
      }
      const at = lsn % segmentSize
      const take = Math.min(bytes.length - offset, segmentSize - at)
      segment.set(bytes.subarray(offset, offset + take), at)
      offset += take
      lsn += take
    }
  }

  let records = 0
  let pageSpanning = 0
  let segmentSpanning = 0
  let switches = 0
  const filler = new Uint8Array(Math.min(options.bytes, 4 * segmentSize) + 4096)
  for (let i = 0; i < filler.length; i++) filler[i] = (i * 31 + (i >>> 8)) & 0xff
  // Each record adds at least 64 bytes, so this ends after at most bytes/64 + 1 records.
  while (generator.insertLsn - options.startLsn < options.bytes) {
    const remaining = options.bytes - (generator.insertLsn - options.startLsn)
    if (options.withSwitch === true && switches === 0 && generator.insertLsn % segmentSize > segmentSize / 2) {
      place(generator.insertLsn, generator.appendSwitch().bytes)
      switches += 1
      records += 1
      continue
    }
    const size = Math.max(64, Math.min(remaining, chooseRecordLength(random, generator.insertLsn % segmentSize, segmentSize)))
    const messageLength = Math.max(0, Math.min(filler.length, size - 64))
    const record = generator.appendLogicalMessage(SYNTH_PREFIX, filler.subarray(0, messageLength))
    place(record.fromLsn, record.bytes)
    records += 1
    if (Math.floor(record.startLsn / 8192) !== Math.floor((record.endLsn - 1) / 8192)) pageSpanning += 1
    if (segmentNoOf(record.startLsn, segmentSize) !== segmentNoOf(record.endLsn - 1, segmentSize)) segmentSpanning += 1
  }
  // The segment holding the end is written with its zero tail. When the end is exactly a
  // segment boundary, the next segment gets its long header and zeros, so that a reader ends
  // on a zero xl_tot_len there rather than on a missing file.
  writeSegment()
  if (segmentNoOf(generator.insertLsn, segmentSize) !== segmentNo) {
    segmentNo = segmentNoOf(generator.insertLsn, segmentSize)
    segment = new Uint8Array(segmentSize)
    segment.set(generator.segmentPrefix(Lsn(generator.insertLsn + SIZE_OF_XLOG_LONG_PHD_BYTES)), 0)
    writeSegment()
  }
  return {
    files,
    startLsn: formatLsn(options.startLsn),
    endLsn: formatLsn(generator.insertLsn),
    records,
    pageSpanningRecords: pageSpanning,
    segmentSpanningRecords: segmentSpanning,
    switches
  }
}

/** Mostly small records, some spanning pages, a few spanning segments near their ends. */
function chooseRecordLength(random: () => number, segmentOffset: number, segmentSize: number): number {
  const toSegmentEnd = segmentSize - segmentOffset
  if (toSegmentEnd < 65_536 && random() < 0.5) return toSegmentEnd + 64 + Math.floor(random() * 20_000)
  const roll = random()
  if (roll < 0.7) return 64 + Math.floor(random() * 600)
  if (roll < 0.9) return 600 + Math.floor(random() * 20_000)
  if (roll < 0.99) return 20_000 + Math.floor(random() * 200_000)
  return segmentSize / 2 + Math.floor(random() * segmentSize)
}

// ---- flag parsers (commander reports InvalidArgumentError and exits non-zero) ----

function parseInteger(text: string, what: string): number {
  if (!/^\d+$/.test(text)) throw new InvalidArgumentError(`${what} must be a non-negative decimal integer`)
  const value = Number(text)
  if (!Number.isSafeInteger(value)) throw new InvalidArgumentError(`${what} is above 2^53-1`)
  return value
}

function parseSegmentSize(text: string): number {
  const value = parseInteger(text, "segment size")
  if (!isValidSegmentSize(value)) throw new InvalidArgumentError("segment size must be a power of two from 1048576 to 1073741824 bytes")
  return value
}

function parseByteCount(text: string): number {
  const value = parseInteger(text, "byte count")
  if (value < 1 || value > SYNTH_BYTES_MAX) throw new InvalidArgumentError(`byte count must be 1..${SYNTH_BYTES_MAX}`)
  return value
}

function parseSeed(text: string): number {
  return parseInteger(text, "seed")
}

function parseLsnArgument(text: string): Lsn {
  const parsed = parseLsn(text)
  if (Result.isFailure(parsed)) throw new InvalidArgumentError(`not an LSN (X/Y in hex): ${parsed.failure.message}`)
  return parsed.success
}

function parsePgVersion(text: string): PgMajorVersion {
  const version = pgMajorVersionOf(parseInteger(text, "PostgreSQL version"))
  if (version === undefined) throw new InvalidArgumentError("PostgreSQL version must be 14, 15, 16 or 17 (or a PG_VERSION_NUM of one)")
  return version
}

function parseSystemId(text: string): bigint {
  if (!/^\d{1,20}$/.test(text)) throw new InvalidArgumentError("system id must be a decimal u64")
  const value = BigInt(text)
  if (value >= 1n << 64n) throw new InvalidArgumentError("system id must fit in 64 bits")
  return value
}
