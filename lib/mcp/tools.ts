// The MCP tools: each answers through the runner's API (./backend.ts), so a tool says what the route says and
// passes the same checks. Read tools always; tools that change state only with config mcpWrite, and then with
// the API's token check like any client's. Every output is a JSON object (MCP's structuredContent): lists
// come wrapped under a name.
import type { Config } from '../core/config.ts'
import { DEVICE_STATUSES } from '../core/schema.ts'
import { ToolError, type ApiMethod, type Backend } from './backend.ts'
import { runDiagnose } from './diagnose.ts'
import type { JsonSchema } from './json-schema.ts'

export interface ToolContext {
  backend: Backend
  signal: AbortSignal
}

export interface Tool {
  name: string
  title: string
  description: string
  inputSchema: JsonSchema & { type: 'object' }
  outputSchema: JsonSchema & { type: 'object' }
  annotations: { readOnlyHint: boolean; destructiveHint?: boolean; idempotentHint?: boolean; openWorldHint: false }
  call(args: Record<string, unknown>, ctx: ToolContext): Promise<Record<string, unknown>>
}

const object = (properties: Record<string, JsonSchema> = {}, required: string[] = []): JsonSchema & { type: 'object' } => ({ type: 'object', properties, required })
const noInput = () => ({ ...object(), additionalProperties: false })
const list = (items: JsonSchema = { type: 'object' }): JsonSchema => ({ type: 'array', items })
const read = { readOnlyHint: true, openWorldHint: false } as const

const MAC = '^[0-9A-Fa-f]{2}([:-]?[0-9A-Fa-f]{2}){5}$'
const JOB = '^[a-z0-9][a-z0-9-]{0,63}$'
const NAME = '^[A-Za-z0-9_]{1,32}$'

const errorText = (body: unknown) => (typeof body === 'object' && body !== null && typeof (body as { error?: unknown }).error === 'string' ? (body as { error: string }).error : JSON.stringify(body).slice(0, 500))

/** The body of an API answer whose status is one of `ok`; any other is the tool's failure, in the API's words. */
async function call(ctx: ToolContext, method: ApiMethod, pathname: string, opts: { body?: unknown; ok?: number[] } = {}): Promise<unknown> {
  const { status, body } = await ctx.backend.api(method, pathname, { body: opts.body, signal: ctx.signal })
  if ((opts.ok ?? [200]).includes(status)) return body
  throw new ToolError(`${method} ${pathname}: ${status} ${errorText(body)}`)
}

const asObject = (body: unknown, what: string): Record<string, unknown> => {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new ToolError(`${what}: the API answered something other than a JSON object`)
  return body as Record<string, unknown>
}

const asList = (body: unknown, what: string): unknown[] => {
  if (!Array.isArray(body)) throw new ToolError(`${what}: the API answered something other than a JSON list`)
  return body
}

/** A tool that answers one GET route whose body is an object. */
function getTool(name: string, title: string, description: string, pathname: string, outputSchema: JsonSchema & { type: 'object' }): Tool {
  return { name, title, description, inputSchema: noInput(), outputSchema, annotations: read, call: async (_a, ctx) => asObject(await call(ctx, 'GET', pathname), pathname) }
}

const device: JsonSchema = { type: 'object', properties: { mac: { type: 'string' }, status: { type: 'string', enum: DEVICE_STATUSES } }, required: ['mac', 'status'] }
const run: JsonSchema = { type: 'object', properties: { id: { type: 'string' }, job: { type: 'string' }, startedAt: { type: 'string' }, ok: { type: 'boolean' } }, required: ['id', 'job', 'startedAt', 'ok'] }

export const READ_TOOLS: Tool[] = [
  getTool('gateway_status', 'Gateway status', 'The gateway summary: WAN and LAN interfaces, devices by status, upstream, runner (GET /status).', '/status',
    object({ interfaces: list(), devices: { type: 'object' } }, ['interfaces', 'devices'])),
  {
    name: 'health',
    title: 'Health',
    description: 'Whether the runner is healthy: its store, and what each supervisor reports (GET /health; ok is false when not).',
    inputSchema: noInput(),
    outputSchema: object({ ok: { type: 'boolean' }, version: { type: 'string' } }, ['ok']),
    annotations: read,
    call: async (_a, ctx) => asObject(await call(ctx, 'GET', '/health', { ok: [200, 503] }), '/health'),
  },
  {
    name: 'list_devices',
    title: 'Devices',
    description: 'The LAN devices dualgate knows, oldest first, optionally only those with one status (GET /devices).',
    inputSchema: { ...object({ status: { type: 'string', enum: DEVICE_STATUSES, description: 'Only devices with this status.' } }), additionalProperties: false },
    outputSchema: object({ devices: list(device) }, ['devices']),
    annotations: read,
    async call(args, ctx) {
      const query = args.status === undefined ? '' : `?status=${encodeURIComponent(args.status as string)}`
      return { devices: asList(await call(ctx, 'GET', `/devices${query}`), '/devices') }
    },
  },
  {
    name: 'get_device',
    title: 'One device',
    description: 'One device by its MAC address: status, LAN and WAN addresses, leases (GET /devices/:mac).',
    inputSchema: { ...object({ mac: { type: 'string', pattern: MAC, description: 'The device\'s MAC, such as 02:00:00:00:00:01.' } }, ['mac']), additionalProperties: false },
    outputSchema: device as JsonSchema & { type: 'object' },
    annotations: read,
    call: async (args, ctx) => asObject(await call(ctx, 'GET', `/devices/${encodeURIComponent(args.mac as string)}`), '/devices/:mac'),
  },
  {
    name: 'device_log',
    title: 'A device\'s log lines',
    description: 'The last lines of the gateway\'s log that name one device, oldest first, as JSON entries (time, level, tag, msg) (GET /devices/:mac/log).',
    inputSchema: {
      ...object({
        mac: { type: 'string', pattern: MAC, description: 'The device\'s MAC, such as 02:00:00:00:00:01.' },
        lines: { type: 'integer', minimum: 0, maximum: 1000, description: 'How many lines at most (default 50).' },
      }, ['mac']),
      additionalProperties: false,
    },
    outputSchema: object({ mac: { type: 'string' }, lines: list() }, ['mac', 'lines']),
    annotations: read,
    call: async (args, ctx) => asObject(await call(ctx, 'GET', `/devices/${encodeURIComponent(args.mac as string)}/log?lines=${args.lines ?? 50}`), '/devices/:mac/log'),
  },
  {
    name: 'list_forwards',
    title: 'Port forwards',
    description: 'The port forwards: gateway port, device address and port, protocol, and the IP family clients use (GET /forwards).',
    inputSchema: noInput(),
    outputSchema: object({ forwards: list({ type: 'object', properties: { id: { type: 'string' }, gatewayPort: { type: 'integer' } }, required: ['id', 'gatewayPort'] }) }, ['forwards']),
    annotations: read,
    call: async (_a, ctx) => ({ forwards: asList(await call(ctx, 'GET', '/forwards'), '/forwards') }),
  },
  getTool('relay_listeners', 'Relay listeners', 'The IPv6-to-IPv4 relay: its listeners, those that failed, and its connection counters (GET /relay).', '/relay',
    object({ rules: list(), failed: list(), stats: { type: 'object' } }, ['rules'])),
  getTool('nat64', 'NAT64', 'NAT64 through tayga: whether it runs, its prefix and pool (GET /nat64).', '/nat64', object()),
  getTool('clat', 'CLAT (464XLAT)', 'The CLAT on an IPv6-only upstream: whether it runs and the devices it maps (GET /clat).', '/clat', object()),
  getTool('tunnels', 'IPv6 tunnels', 'The IPv6 tunnels: state, score, loss and latency, the primary, failovers and route switches (GET /tunnels).', '/tunnels',
    object({ tunnels: list({ type: 'object', properties: { name: { type: 'string' } }, required: ['name'] }) }, ['tunnels'])),
  getTool('ipv6_addresses', 'IPv6 addresses', 'The gateway\'s global IPv6 addresses through its tunnels, and the routed prefixes (GET /v6/address).', '/v6/address',
    object({ addresses: list(), prefixes: list() }, ['addresses', 'prefixes'])),
  getTool('forwarder_targets', 'Forwarder targets', 'The forwarder\'s forwards: each target\'s name, resolved address, listeners and connections (GET /forwarder).', '/forwarder',
    object({ forwards: list() }, ['forwards'])),
  {
    name: 'list_jobs',
    title: 'Jobs',
    description: 'The jobs: schedule, whether running or queued, runs, failures and the last run (GET /jobs).',
    inputSchema: noInput(),
    outputSchema: object({ jobs: list({ type: 'object', properties: { name: { type: 'string' } }, required: ['name'] }) }, ['jobs']),
    annotations: read,
    call: async (_a, ctx) => ({ jobs: asList(await call(ctx, 'GET', '/jobs'), '/jobs') }),
  },
  {
    name: 'job_runs',
    title: 'Recent runs of a job',
    description: 'The recent runs of one job, newest first, with its run and failure counts (the store\'s run history).',
    inputSchema: {
      ...object({
        job: { type: 'string', pattern: JOB, description: 'The job\'s name, such as acquire-leases.' },
        limit: { type: 'integer', minimum: 1, maximum: 100, description: 'At most this many runs (default 10).' },
      }, ['job']),
      additionalProperties: false,
    },
    outputSchema: object({ job: { type: 'string' }, runs: { type: 'integer' }, failures: { type: 'integer' }, recent: list(run) }, ['job', 'runs', 'failures', 'recent']),
    annotations: read,
    async call(args, ctx) {
      const data = await ctx.backend.data()
      const job = args.job as string
      const limit = (args.limit as number | undefined) ?? 10
      const recent = data.runs.filter((r) => r.job === job).sort((a, b) => b.startedAt.localeCompare(a.startedAt)).slice(0, limit)
      return { job, runs: data.jobs[job]?.runs ?? 0, failures: data.jobs[job]?.failures ?? 0, recent }
    },
  },
  {
    name: 'diagnose',
    title: 'Diagnose',
    description: 'Checks the gateway end to end (links, upstream, kernel settings, dnsmasq, store, nftables, macvlans, DHCP clients, runner, relay) and reports each check; read-only, it repairs nothing. Takes a few seconds.',
    inputSchema: noInput(),
    outputSchema: object({ ok: { type: 'boolean' }, platform: { type: 'string' }, checks: list({ type: 'object', properties: { id: { type: 'string' }, status: { type: 'string' } }, required: ['id', 'status'] }) }, ['ok', 'checks']),
    annotations: read,
    call: async (_a, ctx) => asObject(await runDiagnose(ctx.backend.config(), ctx.signal), 'diagnose'),
  },
]

const write = (destructive: boolean, idempotent: boolean) => ({ readOnlyHint: false, destructiveHint: destructive, idempotentHint: idempotent, openWorldHint: false } as const)

export const WRITE_TOOLS: Tool[] = [
  {
    name: 'add_forward',
    title: 'Add a port forward',
    description: 'Forwards a gateway port to a LAN device\'s port (POST /forwards; needs the API token in the config).',
    inputSchema: {
      ...object({
        gatewayPort: { type: 'integer', minimum: 1, maximum: 65535 },
        deviceIp: { type: 'string', maxLength: 64, description: 'The device\'s LAN IPv4 address.' },
        devicePort: { type: 'integer', minimum: 1, maximum: 65535 },
        proto: { type: 'string', enum: ['tcp', 'udp'] },
        family: { type: 'string', enum: ['4', '6', 'both'], description: 'The IP family clients use.' },
      }, ['gatewayPort', 'deviceIp', 'devicePort']),
      additionalProperties: false,
    },
    outputSchema: object({ id: { type: 'string' } }, ['id']),
    annotations: write(false, false),
    call: async (args, ctx) => asObject(await call(ctx, 'POST', '/forwards', { body: args, ok: [201] }), '/forwards'),
  },
  {
    name: 'remove_forward',
    title: 'Remove a port forward',
    description: 'Removes a port forward by its id (DELETE /forwards/:id; needs the API token in the config).',
    inputSchema: { ...object({ id: { type: 'string', minLength: 1, maxLength: 200 } }, ['id']), additionalProperties: false },
    outputSchema: object(),
    annotations: write(true, true),
    async call(args, ctx) {
      const body = await call(ctx, 'DELETE', `/forwards/${encodeURIComponent(args.id as string)}`)
      return typeof body === 'object' && body !== null && !Array.isArray(body) ? body as Record<string, unknown> : { removed: body }
    },
  },
  {
    name: 'run_job',
    title: 'Run a job',
    description: 'Asks the runner to run a job now, or right after the run in progress (POST /jobs/:name/run; needs the API token in the config).',
    inputSchema: { ...object({ job: { type: 'string', pattern: JOB } }, ['job']), additionalProperties: false },
    outputSchema: object({ job: { type: 'string' }, state: { type: 'string' } }, ['job', 'state']),
    annotations: write(false, false),
    call: async (args, ctx) => asObject(await call(ctx, 'POST', `/jobs/${encodeURIComponent(args.job as string)}/run`, { ok: [202] }), '/jobs/:name/run'),
  },
  ...(['up', 'down'] as const).map((action): Tool => ({
    name: `tunnel_${action}`,
    title: `Bring a tunnel ${action}`,
    description: `Sets a configured tunnel administratively ${action} and has the tunnels job follow (POST /tunnels/:name/${action}; needs the API token in the config).`,
    inputSchema: { ...object({ name: { type: 'string', pattern: NAME } }, ['name']), additionalProperties: false },
    outputSchema: object({ tunnel: { type: 'string' }, adminDown: { type: 'boolean' } }, ['tunnel', 'adminDown']),
    annotations: write(action === 'down', true),
    call: async (args, ctx) => asObject(await call(ctx, 'POST', `/tunnels/${encodeURIComponent(args.name as string)}/${action}`, { ok: [202] }), `/tunnels/:name/${action}`),
  })),
]

/** The tools this config offers: the read tools, and those that change state when mcpWrite is on. */
export function toolsFor(config: Pick<Config, 'mcpWrite'>): Tool[] {
  return config.mcpWrite ? [...READ_TOOLS, ...WRITE_TOOLS] : READ_TOOLS
}
