import * as http from "node:http"
import { Effect } from "effect"
import type { NodeId } from "../core/acceptor/state.js"
import { NetError, parseAddress } from "../core/io/net.js"

/**
 * The safekeeper's HTTP listener, for now only `GET /v1/status` → `{"id": N}` (reference §11),
 * which tools use to tell a safekeeper is up. The management API comes with its own issue.
 * Anything else is a JSON 404; bodies are not read.
 */
export const serveHttpStatus = (address: string, nodeId: NodeId) =>
  Effect.acquireRelease(
    Effect.callback<http.Server, NetError>((resume) => {
      const target = parseAddress(address)
      if (target === undefined) return resume(Effect.fail(new NetError({ reason: "InvalidAddress", address, message: `not host:port: ${address}` })))
      const server = http.createServer((request, response) => {
        const body = request.method === "GET" && request.url === "/v1/status"
          ? { status: 200, json: { id: nodeId } }
          : { status: 404, json: { msg: `no route for ${request.method ?? "?"} ${request.url ?? "?"}` } }
        response.writeHead(body.status, { "content-type": "application/json" })
        response.end(JSON.stringify(body.json))
      })
      server.once("error", (error) => resume(Effect.fail(new NetError({ reason: "AddressInUse", address, message: error.message }))))
      server.listen({ host: target.host, port: target.port }, () => resume(Effect.succeed(server)))
    }),
    (server) => Effect.callback<void>((resume) => {
      server.closeAllConnections()
      server.close(() => resume(Effect.void))
    })
  )
