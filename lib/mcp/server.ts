// The runner's MCP server: its unix socket (config mcpSocket), whose tools answer through the runner's own
// h3 app in process. A socket that cannot be made is logged and the runner goes on without it.
import type { Config } from '../core/config.ts'
import type { Logger } from '../core/log.ts'
import type { Store } from '../core/store.ts'
import { inProcessBackend } from './backend.ts'
import { listenMcpSocket, type McpSocket } from './transport.ts'

export async function startMcpSocket(o: {
  config(): Config
  store: Store
  fetch(request: Request): Response | Promise<Response>
  version: string
  log(): Logger
}): Promise<McpSocket | undefined> {
  const socketPath = o.config().mcpSocket
  if (socketPath === 'off') return undefined
  const backend = inProcessBackend({ config: o.config, store: o.store, fetch: async (r) => o.fetch(r) })
  try {
    const socket = await listenMcpSocket({ path: socketPath, backend: () => backend, version: o.version, log: (m) => o.log().error(m) })
    o.log().info(`MCP on ${socketPath}`)
    return socket
  } catch (err) {
    o.log().error(`cannot serve MCP on ${socketPath}: ${(err as Error).message}`)
    return undefined
  }
}
