// One MCP session: one client on one connection (stdio, or one connection to the socket). It takes the
// client's lines one at a time and writes its answers through `send`: initialize with version negotiation,
// ping, tools/list and tools/call; notifications (initialized, cancelled) are never answered. Requests run
// concurrently up to MAX_IN_FLIGHT; one more is refused at once rather than queued without end.
import { ToolError, type Backend } from './backend.ts'
import { schemaError } from './json-schema.ts'
import {
  errorLine, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, negotiateVersion, parseLine, resultLine,
  type Params, type RequestId,
} from './protocol.ts'
import { toolsFor, type Tool } from './tools.ts'

/** Requests of one session being answered at once. */
export const MAX_IN_FLIGHT = 16
/** JSON-RPC's range for a server's own errors: this one says "too many requests at once, retry". */
export const SERVER_BUSY = -32000

export interface SessionOptions {
  backend: Backend
  /** Writes one line (without its newline) to the client. */
  send(line: string): void
  version: string
  /** The tools offered; by default those of the backend's config (read tools, and write tools with mcpWrite). */
  tools?: Tool[]
  log?(message: string): void
}

export interface Session {
  /** One line from the client (without its newline). */
  receive(line: string): void
  /** Resolves when every request received so far has been answered. */
  idle(): Promise<void>
  /** The client is gone: requests in flight are cancelled and their answers dropped. */
  close(): void
}

class RpcError extends Error {
  readonly code: number
  constructor(code: number, message: string) {
    super(message)
    this.code = code
  }
}

const text = (v: unknown) => JSON.stringify(v, null, 2)

export function createSession(o: SessionOptions): Session {
  const inFlight = new Map<RequestId, AbortController>()
  const pending = new Set<Promise<void>>()
  let initialized = false
  let closed = false
  const tools = () => o.tools ?? toolsFor(o.backend.config())
  const send = (line: string) => { if (!closed) o.send(line) }

  function describe(t: Tool) {
    return { name: t.name, title: t.title, description: t.description, inputSchema: t.inputSchema, outputSchema: t.outputSchema, annotations: t.annotations }
  }

  async function callTool(params: Params, signal: AbortSignal): Promise<unknown> {
    if (typeof params.name !== 'string') throw new RpcError(INVALID_PARAMS, 'tools/call needs the tool\'s name')
    const tool = tools().find((t) => t.name === params.name)
    if (!tool) throw new RpcError(INVALID_PARAMS, `unknown tool: ${JSON.stringify(params.name).slice(0, 100)}`)
    const args = params.arguments ?? {}
    const why = schemaError(tool.inputSchema, args)
    if (why) throw new RpcError(INVALID_PARAMS, `${tool.name}: ${why}`)
    try {
      const structured = await tool.call(args as Record<string, unknown>, { backend: o.backend, signal })
      return { content: [{ type: 'text', text: text(structured) }], structuredContent: structured }
    } catch (err) {
      if (signal.aborted) throw err
      // A tool's failure is the model's to read and act on, so it is a result, not a protocol error.
      if (!(err instanceof ToolError)) o.log?.(`mcp: ${tool.name}: ${(err as Error).stack ?? String(err)}`)
      return { content: [{ type: 'text', text: (err as Error).message ?? String(err) }], isError: true }
    }
  }

  async function answer(method: string, params: Params, signal: AbortSignal): Promise<unknown> {
    switch (method) {
      case 'initialize': {
        if (typeof params.protocolVersion !== 'string') throw new RpcError(INVALID_PARAMS, 'initialize needs protocolVersion')
        initialized = true
        return {
          protocolVersion: negotiateVersion(params.protocolVersion),
          capabilities: { tools: { listChanged: false } },
          serverInfo: { name: 'dualgate', title: 'dualgate gateway', version: o.version },
          instructions: 'Tools that read the gateway\'s state (devices, forwards, relay, tunnels, forwarder, jobs, health, diagnose); tools that change it only when the gateway allows (config mcp_write).',
        }
      }
      case 'ping':
        return {}
      case 'tools/list':
        if (!initialized) throw new RpcError(INVALID_REQUEST, 'initialize first')
        return { tools: tools().map(describe) }
      case 'tools/call':
        if (!initialized) throw new RpcError(INVALID_REQUEST, 'initialize first')
        return callTool(params, signal)
      default:
        throw new RpcError(METHOD_NOT_FOUND, `method not found: ${method.slice(0, 100)}`)
    }
  }

  function request(id: RequestId, method: string, params: Params): void {
    if (inFlight.has(id)) return send(errorLine(id, INVALID_REQUEST, 'a request with this id is still being answered'))
    if (inFlight.size >= MAX_IN_FLIGHT) return send(errorLine(id, SERVER_BUSY, `more than ${MAX_IN_FLIGHT} requests at once; retry when one has been answered`))
    const controller = new AbortController()
    inFlight.set(id, controller)
    const work = answer(method, params, controller.signal)
      .then((result) => { if (!controller.signal.aborted) send(resultLine(id, result)) })
      .catch((err: unknown) => {
        if (controller.signal.aborted) return
        if (err instanceof RpcError) return send(errorLine(id, err.code, err.message))
        o.log?.(`mcp: ${method}: ${(err as Error).stack ?? String(err)}`)
        send(errorLine(id, INTERNAL_ERROR, 'internal error'))
      })
      .finally(() => {
        inFlight.delete(id)
        pending.delete(work)
      })
    pending.add(work)
  }

  function notification(method: string, params: Params): void {
    // The client gave up on a request: stop it, and (as the specification says) send no answer for it.
    if (method === 'notifications/cancelled' && (typeof params.requestId === 'string' || typeof params.requestId === 'number')) {
      inFlight.get(params.requestId)?.abort(new Error('cancelled by the client'))
    }
    // notifications/initialized and any other: nothing to do, nothing to say.
  }

  return {
    receive(line) {
      if (closed) return
      const msg = parseLine(line)
      if (!msg) return
      switch (msg.kind) {
        case 'request': return request(msg.id, msg.method, msg.params)
        case 'notification': return notification(msg.method, msg.params)
        case 'invalid': return send(errorLine(msg.id, msg.code, msg.message))
        case 'ignore': return
      }
    },
    async idle() {
      while (pending.size > 0) await Promise.all(pending)
    },
    close() {
      closed = true
      for (const c of inFlight.values()) c.abort(new Error('the client is gone'))
    },
  }
}
