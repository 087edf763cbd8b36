#!/usr/bin/env node
// gateway-mcp: the MCP server over stdio, for an MCP client that starts it (newline-delimited JSON-RPC on
// stdin and stdout; logs on stderr only). Its tools ask the runner's API at apiHost:apiPort, with the
// configured token for the tools that change state (config mcp_write). Ends when stdin ends, after
// answering what was asked. The runner serves the same tools on its unix socket (config mcp_socket).
import { defineJob, runMain } from '../lib/core/job.ts'
import { packageVersion } from '../lib/core/api.ts'
import { httpBackend } from '../lib/mcp/backend.ts'
import { serveStreams } from '../lib/mcp/transport.ts'

const job = defineJob({
  name: 'mcp',
  description: 'Serve the MCP tools over stdio (for an MCP client\'s configuration); stops at the end of stdin.',
  async run({ ctx }): Promise<undefined> {
    // A client that went away mid-answer: nobody is left to write to.
    process.stdout.on('error', () => process.exit(0))
    const session = serveStreams({
      input: process.stdin,
      write: (text) => process.stdout.write(text),
      backend: httpBackend(ctx.config),
      version: packageVersion(),
      log: (m) => ctx.log.error(m),
    })
    await new Promise<void>((resolve) => {
      process.stdin.on('end', resolve)
      process.stdin.on('error', () => resolve())
    })
    await session.idle()
    session.close()
    return undefined
  },
})

export default job
await runMain(job, import.meta.url)
