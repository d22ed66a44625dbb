import { type ChildProcess, spawn } from "node:child_process"
import { createRequire } from "node:module"

/**
 * s3rver (npm) on 127.0.0.1, a free port, in a child node started by tests and benches: with
 * OpenSSL's legacy provider, since it makes ListObjectsV2 continuation tokens with DES, which
 * OpenSSL 3 (Node 17+) refuses (every list past 1000 keys would fail with a 500). The child
 * prints its port as one JSON line and stops when its stdin closes, so it cannot outlive its
 * parent.
 *
 * `atomicPuts`: s3rver's store writes a PUT's body straight into the object's file, so an
 * upload aborted midway leaves the old object truncated, where S3 replaces an object only when
 * a PUT completes. With it, putObject writes a temporary file and renames it over the object.
 */
const S3RVER_LAUNCHER = `
const path = require("path")
const fs = require("fs")
const crypto = require("crypto")
const { Transform, pipeline } = require("stream")
const S3rver = require(process.argv[1])
if (process.argv[3] === "atomic") {
  const FilesystemStore = require(path.join(path.dirname(process.argv[1]), "stores", "filesystem.js"))
  let uploadCount = 0
  FilesystemStore.prototype.putObject = async function (object) {
    const objectPath = this.getResourcePath(object.bucket, object.key, "object")
    await fs.promises.mkdir(path.dirname(objectPath), { recursive: true })
    // Not listed: the store lists only names ending in ._S3rver_object.
    const tempPath = objectPath + ".upload-" + (++uploadCount)
    const md5Context = crypto.createHash("md5")
    let size = 0
    try {
      if (Buffer.isBuffer(object.content)) {
        await fs.promises.writeFile(tempPath, object.content)
        md5Context.update(object.content)
        size = object.content.length
      } else {
        const count = new Transform({ transform(chunk, encoding, callback) { md5Context.update(chunk); size += chunk.length; callback(null, chunk) } })
        await new Promise((resolve, reject) => pipeline(object.content, count, fs.createWriteStream(tempPath), (error) => error ? reject(error) : resolve()))
      }
      await fs.promises.rename(tempPath, objectPath)
    } catch (error) {
      await fs.promises.rm(tempPath, { force: true })
      throw error
    }
    const md5 = md5Context.digest("hex")
    await this.putMetadata(object.bucket, object.key, object.metadata, md5)
    return { size, md5 }
  }
}
const server = new S3rver({ address: "127.0.0.1", port: 0, silent: true, directory: process.argv[2] })
server.run().then((address) => {
  process.stdout.write(JSON.stringify({ port: address.port }) + "\\n")
  process.stdin.on("end", () => server.close().then(() => process.exit(0)))
  process.stdin.resume()
}, (error) => {
  process.stderr.write(String(error && error.stack || error))
  process.exit(1)
})
`

/** s3rver's built-in account. */
export const S3RVER_CREDENTIALS = { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" }

export interface S3rverHandle {
  readonly port: number
  readonly endpoint: string
  readonly child: ChildProcess
  /** Closes its stdin and waits for it to exit. */
  stop(): Promise<void>
}

export async function startS3rver(directory: string, options: { readonly atomicPuts?: boolean } = {}): Promise<S3rverHandle> {
  const s3rverModule = createRequire(import.meta.url).resolve("s3rver")
  const child = spawn(process.execPath, ["--openssl-legacy-provider", "-e", S3RVER_LAUNCHER, s3rverModule, directory, options.atomicPuts === true ? "atomic" : "plain"], { stdio: ["pipe", "pipe", "inherit"] })
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
    child.stdin?.end()
    await exited
  }
  try {
    const port = await new Promise<number>((resolve, reject) => {
      let output = ""
      child.stdout?.on("data", (data: Buffer) => {
        output += data.toString()
        const line = output.split("\n")[0]
        if (output.includes("\n") && line !== undefined) resolve(Number((JSON.parse(line) as { port: number }).port))
      })
      child.once("exit", (code) => reject(new Error(`s3rver exited with ${String(code)} before listening`)))
    })
    return { port, endpoint: `http://127.0.0.1:${port}`, child, stop }
  } catch (error) {
    await stop()
    throw error
  }
}
