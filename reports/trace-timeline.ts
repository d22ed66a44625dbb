import type { FaultEvent, MessageEvent, ProgressSample, RunTimeline } from "../scenarios/scenario.js"

/**
 * What a report can draw when a scenario recorded no timeline: a rough one read back from the
 * trace lines ("<µs> <node>#<life> <event>", or "<µs> net <event>" for the network itself).
 * Faults come from the world's and the network's own lines (exact); messages are connection
 * opens and closes (not protocol messages); progress is what log lines say about terms and
 * LSNs (`term=`, `flush=`, `commit=`), attributed to the `sk=` they name or else to the writer.
 */

/** A node's name from a trace label ("sk1#2") or an address ("sk1:5454"). */
function hostOf(label: string): string {
  const hash = label.indexOf("#")
  const base = hash >= 0 ? label.slice(0, hash) : label
  const colon = base.lastIndexOf(":")
  return colon >= 0 ? base.slice(0, colon) : base
}

function parseLsn(text: string): number | undefined {
  const match = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text)
  if (match === null) return undefined
  return parseInt(match[1]!, 16) * 0x1_0000_0000 + parseInt(match[2]!, 16)
}

/** key=value fields of a log line (values end at a space; quoted values are skipped). */
function fields(event: string): ReadonlyMap<string, string> {
  const out = new Map<string, string>()
  for (const match of event.matchAll(/(?:^| )([a-z_A-Z]+)=([^ "]+)/g)) out.set(match[1]!, match[2]!)
  return out
}

interface Position {
  term: number
  flushLsn: number
  commitLsn: number
}

export function timelineFromTrace(lines: ReadonlyArray<string>): RunTimeline {
  const faults: Array<FaultEvent> = []
  const progress: Array<ProgressSample> = []
  const messages: Array<MessageEvent> = []
  const positions = new Map<string, Position>()
  // Connects waiting for their accept, by "client host>address"; closes waiting for the eof.
  const connects = new Map<string, Array<number>>()
  const closes = new Map<string, Array<number>>()
  const push = (queue: Map<string, Array<number>>, key: string, index: number) => {
    const list = queue.get(key)
    if (list === undefined) queue.set(key, [index])
    else list.push(index)
  }
  const take = (queue: Map<string, Array<number>>, key: string): number | undefined => {
    const list = queue.get(key)
    return list === undefined ? undefined : list.shift()
  }
  const position = (node: string): Position => {
    let p = positions.get(node)
    if (p === undefined) {
      p = { term: 0, flushLsn: 0, commitLsn: 0 }
      positions.set(node, p)
    }
    return p
  }
  for (const line of lines) {
    if (line.startsWith("#")) continue
    const firstSpace = line.indexOf(" ")
    const secondSpace = line.indexOf(" ", firstSpace + 1)
    if (firstSpace <= 0 || secondSpace < 0) continue
    const atUs = Number(line.slice(0, firstSpace))
    if (!Number.isFinite(atUs)) continue
    const label = line.slice(firstSpace + 1, secondSpace)
    const event = line.slice(secondSpace + 1)
    const node = hostOf(label)
    if (label === "net") {
      const [verb, arg] = event.split(" ")
      if (verb === "partition" && arg !== undefined) {
        const oneWay = !arg.includes("<->")
        faults.push({ atUs, kind: "partition", nodes: arg.split(oneWay ? "->" : "<->"), ...(oneWay ? { detail: "one-way" } : {}) })
      } else if ((verb === "heal" || verb === "break") && arg !== undefined) {
        faults.push({ atUs, kind: verb, nodes: arg.split("<->") })
      } else if (verb === "heal-all") {
        faults.push({ atUs, kind: "heal-all", nodes: [] })
      } else if (verb === "isolate" && arg !== undefined) {
        faults.push({ atUs, kind: "isolate", nodes: [arg] })
      }
      continue
    }
    if (event.startsWith("world ")) {
      const lifeText = label.slice(label.indexOf("#") + 1)
      if (event === "world start" && label.includes("#") && Number(lifeText) > 1) faults.push({ atUs, kind: "restart", nodes: [node] })
      else if (event.startsWith("world crash") && event !== "world crash (end of run)") faults.push({ atUs, kind: "crash", nodes: [node], detail: event.slice("world crash ".length) })
      else if (event === "world wipe disk") faults.push({ atUs, kind: "wipe", nodes: [node] })
      else if (event.startsWith("world exited with")) faults.push({ atUs, kind: "exit", nodes: [node], detail: event.slice("world exited with ".length) })
      continue
    }
    if (event.startsWith("disk ")) {
      if (/ (EIO|ENOSPC)$/.test(event)) faults.push({ atUs, kind: "disk-error", nodes: [node], detail: event.slice(5) })
      continue
    }
    if (event.startsWith("net ")) {
      const words = event.split(" ")
      if (words[1] === "connect" && words.length === 3) {
        push(connects, `${node}>${words[2]!}`, messages.length)
        messages.push({ sentUs: atUs, from: node, to: hostOf(words[2]!), kind: "connect" })
      } else if (words[1] === "connect" && (words[3] === "refused" || words[3] === "timed")) {
        take(connects, `${node}>${words[2]!}`)
      } else if (words[1] === "accept" && words[2] !== undefined) {
        const [local, remote] = words[2].split("<-")
        if (local !== undefined && remote !== undefined) {
          const index = take(connects, `${hostOf(remote)}>${local}`)
          if (index !== undefined) messages[index] = { ...messages[index]!, receivedUs: atUs }
        }
      } else if (words[2] === "close" && words[1] !== undefined) {
        push(closes, words[1], messages.length)
        const [from, to] = words[1].split("->")
        messages.push({ sentUs: atUs, from: hostOf(from!), to: hostOf(to ?? from!), kind: "close" })
      } else if (words[2] === "eof" && words[1] !== undefined) {
        const [local, remote] = words[1].split("<-")
        const index = take(closes, `${remote}->${local}`)
        if (index !== undefined) messages[index] = { ...messages[index]!, receivedUs: atUs }
      }
      continue
    }
    const values = fields(event)
    const term = values.get("term")
    const flush = values.get("flush")
    const commit = values.get("commit")
    if (term === undefined && flush === undefined && commit === undefined) continue
    const about = values.get("sk")
    const subject = about === undefined ? node : hostOf(about)
    const p = position(subject)
    let changed = false
    const termValue = term === undefined ? undefined : Number(term)
    if (termValue !== undefined && Number.isSafeInteger(termValue) && termValue !== p.term) {
      p.term = termValue
      changed = true
    }
    const flushValue = flush === undefined ? undefined : parseLsn(flush)
    if (flushValue !== undefined && flushValue !== p.flushLsn) {
      p.flushLsn = flushValue
      changed = true
    }
    // commit= is what the writer itself knows to be committed, whoever the line is about.
    const commitValue = commit === undefined ? undefined : parseLsn(commit)
    const own = position(node)
    if (commitValue !== undefined && commitValue !== own.commitLsn) {
      own.commitLsn = commitValue
      if (subject !== node) progress.push({ atUs, node, ...own })
      else changed = true
    }
    if (changed) progress.push({ atUs, node: subject, ...p })
  }
  return { faults, progress, messages }
}
