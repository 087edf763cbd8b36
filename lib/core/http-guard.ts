// Bounds on the API's HTTP server, so that no client can starve the runner of descriptors or memory: a cap
// on open connections, where a new client displaces the longest-quiet connection that has no request under
// way (a flood of silent sockets then only displaces itself, and a real request still gets in); a short
// limit for the headers of a request and for the whole request; quiet keep-alive sockets closed after a
// few seconds.
import type { Server, ServerResponse } from 'node:http'
import type { Socket } from 'node:net'

export interface HttpLimits {
  maxConnections: number
  /** Headers must arrive within this; the whole request within requestTimeoutMs. */
  headersTimeoutMs: number
  requestTimeoutMs: number
  /** A connection with no request under way is closed after this long without traffic. */
  idleMs: number
}

export const API_LIMITS: HttpLimits = { maxConnections: 256, headersTimeoutMs: 5000, requestTimeoutMs: 15_000, idleMs: 5000 }

/** Options for http.createServer: Node checks the header and request limits this often. */
export function serverOptions(limits: HttpLimits): { headersTimeout: number; requestTimeout: number; keepAliveTimeout: number; connectionsCheckingInterval: number } {
  return { headersTimeout: limits.headersTimeoutMs, requestTimeout: limits.requestTimeoutMs, keepAliveTimeout: limits.idleMs, connectionsCheckingInterval: 1000 }
}

export function guardServer(server: Server, limits: HttpLimits): void {
  /** Open connections, longest-quiet first; true while a request is under way. */
  const open = new Map<Socket, boolean>()

  server.on('connection', (socket: Socket) => {
    open.set(socket, false)
    socket.setTimeout(limits.idleMs, () => { if (!open.get(socket)) socket.destroy() })
    socket.once('close', () => open.delete(socket))
    if (open.size <= limits.maxConnections) return
    const victim = [...open].find(([s, busy]) => !busy && s !== socket)?.[0] ?? socket
    open.delete(victim)
    victim.destroy()
  })
  server.on('request', (req: { socket: Socket }, res: ServerResponse) => {
    const { socket } = req
    if (!open.has(socket)) return
    open.set(socket, true)
    res.once('close', () => {
      if (!open.has(socket)) return
      // Quiet again: to the back of the line.
      open.delete(socket)
      open.set(socket, false)
    })
  })
}
