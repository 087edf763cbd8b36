// The MCP server end to end, driven by the official TypeScript SDK's client (a client nobody here wrote):
// over stdio (jobs/mcp.ts, spawned by the SDK's StdioClientTransport, asking a real runner's API), and over
// the runner's unix socket through `socat UNIX-CONNECT:<path> STDIO` (the bridge the README documents).
// The runner is the real process with a temp data dir holding a few devices, a forward and job runs.
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js'
import type { JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CHECK_IDS } from '../../lib/diagnose/report.ts'
import type { Device, DeviceStatus } from '../../lib/core/schema.ts'
import { openStore } from '../../lib/core/store.ts'
import { WRITE_TOOLS } from '../../lib/mcp/tools.ts'
import { loadConfig } from '../../lib/core/config.ts'
import { emptyData } from '../../lib/core/schema.ts'
import type { Backend } from '../../lib/mcp/backend.ts'
import { listenMcpSocket } from '../../lib/mcp/transport.ts'
import { waitFor } from './wait.ts'
import { freePort } from './free-port.ts'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const FIXTURES = path.join(ROOT, 'test/fixtures/jobs')
const TOKEN = 'mcp-test-token-0123456789'

const dirs: string[] = []
function tempDir(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'dualgate-mcp-'))
  dirs.push(dir)
  return dir
}

function device(mac: string, status: DeviceStatus, n: number): Device {
  const at = `2024-01-0${n}T00:00:00.000Z`
  return { mac, status, statusChangedAt: at, firstSeen: at, lastSeen: at, lanIpv4: `192.168.1.${10 + n}`, hostname: `dev${n}`, wanIpv6: [], attempts: 0 }
}

let dataDir: string
let jobsDir: string
let socketPath: string
let runner: ChildProcess
let runnerOutput = ''
let baseUrl: string
let env: Record<string, string>
const clients: Client[] = []

/** The same configuration for the runner and for gateway-mcp: a temp data dir, no system interfaces. */
function configEnv(port: number): Record<string, string> {
  return {
    DUALGATE_DATA_DIR: dataDir,
    DUALGATE_RUN_DIR: path.join(dataDir, 'run'),
    DUALGATE_API_HOST: '127.0.0.1',
    DUALGATE_API_PORT: String(port),
    DUALGATE_API_TOKEN: TOKEN,
    DUALGATE_UCI_FILE: '/nonexistent',
    DUALGATE_JOBS_DIR: jobsDir,
    DUALGATE_WAN_IF: 'dgmcpw0',
    DUALGATE_LAN_IF: 'dgmcpl0',
    DUALGATE_RELAY_PORTS: '',
    DUALGATE_MCP_SOCKET: socketPath,
    DUALGATE_SCHEDULE_SCAN_ARP: '',
    DUALGATE_SCHEDULE_ACQUIRE_LEASES: '',
    DUALGATE_SCHEDULE_PRUNE_STALE: '',
    DUALGATE_SCHEDULE_REFRESH_PROXIES: '',
    DUALGATE_SCHEDULE_DIAGNOSE: '',
    DUALGATE_SCHEDULE_TUNNELS: '',
    DUALGATE_SCHEDULE_HE_UPDATE: '',
    DUALGATE_SCHEDULE_FORWARDER: '',
  }
}

beforeAll(async () => {
  dataDir = tempDir()
  // Only the jobs this test needs: diagnose (read-only without --fix) and a fixture job to run.
  jobsDir = tempDir()
  symlinkSync(path.join(ROOT, 'jobs/diagnose.ts'), path.join(jobsDir, 'diagnose.ts'))
  symlinkSync(path.join(FIXTURES, 'count.ts'), path.join(jobsDir, 'count.ts'))
  // The socket's directory is open to everyone (0755), so only the socket's own mode keeps others out.
  const socketDir = tempDir()
  chmodSync(socketDir, 0o755)
  socketPath = path.join(socketDir, 'mcp.sock')

  const store = openStore({ dataDir })
  await store.update((d) => {
    for (const [i, [mac, status]] of ([['02:00:00:00:00:01', 'active'], ['02:00:00:00:00:02', 'failed'], ['02:00:00:00:00:03', 'active']] as const).entries()) {
      d.devices[mac] = device(mac, status, i + 1)
    }
    d.forwards.push({ id: 'f0000001', gatewayPort: 18081, deviceIp: '192.168.1.11', devicePort: 80, proto: 'tcp', family: '4', createdAt: '2024-01-05T00:00:00.000Z' })
    for (let i = 0; i < 3; i++) {
      d.runs.push({ id: `r${i}`, job: 'count', trigger: 'cron', startedAt: `2024-01-0${i + 1}T00:00:00.000Z`, durationMs: 10 + i, ok: i !== 1, ...(i === 1 ? { error: 'boom' } : {}) })
    }
    d.jobs.count = { runs: 3, failures: 1, last: d.runs[2] }
  })
  // Log lines for device_log: two name device 2, one another device, one is torn.
  mkdirSync(path.join(dataDir, 'logs'), { recursive: true })
  writeFileSync(path.join(dataDir, 'logs', 'dualgate.log'), [
    { time: '2024-01-02T00:00:00.000Z', level: 'info', tag: 'acquire-leases', msg: '02:00:00:00:00:02 acquiring', mac: '02:00:00:00:00:02' },
    { time: '2024-01-02T00:00:01.000Z', level: 'info', tag: 'acquire-leases', msg: '02:00:00:00:00:01 active', mac: '02:00:00:00:00:01' },
    { time: '2024-01-02T00:00:02.000Z', level: 'warn', tag: 'acquire-leases', msg: 'no lease for 02:00:00:00:00:02' },
  ].map((e) => JSON.stringify(e)).join('\n') + '\n{"torn\n')

  const port = await freePort()
  baseUrl = `http://127.0.0.1:${port}`
  env = configEnv(port)
  const inherited: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('DUALGATE_')) inherited[k] = v
  runner = spawn(process.execPath, ['--import=tsx', 'lib/runner/main.ts'], { cwd: ROOT, env: { ...inherited, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  runner.stdout!.on('data', (d) => { runnerOutput += d })
  runner.stderr!.on('data', (d) => { runnerOutput += d })
  await waitFor(async () => (await fetch(`${baseUrl}/health`)).ok && existsSync(socketPath), 30_000, () => `runner did not come up:\n${runnerOutput}`)
})

afterAll(async () => {
  await Promise.all(clients.map((c) => c.close().catch(() => {})))
  if (runner && runner.exitCode === null) {
    const exited = new Promise((r) => runner.once('exit', r))
    runner.kill('SIGTERM')
    await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))])
    if (runner.exitCode === null) runner.kill('SIGKILL')
  }
  for (const d of dirs) rmSync(d, { recursive: true, force: true })
})

async function api(pathname: string): Promise<unknown> {
  const res = await fetch(`${baseUrl}${pathname}`)
  return res.json()
}

/** An SDK client over stdio: gateway-mcp (jobs/mcp.ts) with this test's configuration and `extra`. */
async function stdioClient(extra: Record<string, string> = {}): Promise<{ client: Client; transport: StdioClientTransport }> {
  const transport = new StdioClientTransport({ command: process.execPath, args: ['--import=tsx', 'jobs/mcp.ts'], cwd: ROOT, env: { ...env, ...extra }, stderr: 'pipe' })
  const client = new Client({ name: 'dualgate-test', version: '1.0.0' })
  clients.push(client)
  await client.connect(transport)
  return { client, transport }
}

/** An SDK client over the socket, through socat as an MCP client's configuration would run it. */
async function socketClient(): Promise<{ client: Client; transport: StdioClientTransport }> {
  const transport = new StdioClientTransport({ command: 'socat', args: [`UNIX-CONNECT:${socketPath}`, 'STDIO'], stderr: 'pipe' })
  const client = new Client({ name: 'dualgate-test', version: '1.0.0' })
  clients.push(client)
  await client.connect(transport)
  return { client, transport }
}

type Structured = Record<string, unknown>

async function call(client: Client, name: string, args: Record<string, unknown> = {}) {
  const result = await client.callTool({ name, arguments: args })
  return result as { structuredContent?: Structured; content: { type: string; text: string }[]; isError?: boolean }
}

/** What each read tool must answer: what its API route answers (or, for those with none, what the store holds). */
const EXPECTED: Record<string, (client: Client) => Promise<void>> = {
  gateway_status: async (c) => expect((await call(c, 'gateway_status')).structuredContent).toEqual(await api('/status')),
  health: async (c) => expect((await call(c, 'health')).structuredContent).toEqual(await api('/health')),
  list_devices: async (c) => {
    const all = (await call(c, 'list_devices')).structuredContent
    expect(all).toEqual({ devices: await api('/devices') })
    expect((all!.devices as unknown[]).length).toBe(3)
    const failed = (await call(c, 'list_devices', { status: 'failed' })).structuredContent
    expect(failed).toEqual({ devices: await api('/devices?status=failed') })
    expect((failed!.devices as Device[]).map((d) => d.mac)).toEqual(['02:00:00:00:00:02'])
  },
  get_device: async (c) => {
    expect((await call(c, 'get_device', { mac: '02:00:00:00:00:03' })).structuredContent).toEqual(await api('/devices/02:00:00:00:00:03'))
    const missing = await call(c, 'get_device', { mac: '02:00:00:00:00:99' })
    expect(missing.isError).toBe(true)
    expect(missing.content[0].text).toMatch(/404 no device 02:00:00:00:00:99/)
  },
  list_forwards: async (c) => {
    const r = (await call(c, 'list_forwards')).structuredContent
    expect(r).toEqual({ forwards: await api('/forwards') })
    expect(r!.forwards).toMatchObject([{ id: 'f0000001', gatewayPort: 18081 }])
  },
  device_log: async (c) => {
    const r = (await call(c, 'device_log', { mac: '02-00-00-00-00-02', lines: 5 })).structuredContent as { mac: string; lines: { msg: string }[] }
    expect(r).toEqual(await api('/devices/02:00:00:00:00:02/log?lines=5'))
    expect(r.lines.map((l) => l.msg)).toEqual(['02:00:00:00:00:02 acquiring', 'no lease for 02:00:00:00:00:02'])
    expect(((await call(c, 'device_log', { mac: '02:00:00:00:00:02', lines: 1 })).structuredContent as { lines: unknown[] }).lines).toHaveLength(1)
  },
  relay_listeners: async (c) => expect((await call(c, 'relay_listeners')).structuredContent).toEqual(await api('/relay')),
  nat64: async (c) => expect((await call(c, 'nat64')).structuredContent).toEqual(await api('/nat64')),
  clat: async (c) => expect((await call(c, 'clat')).structuredContent).toEqual(await api('/clat')),
  tunnels: async (c) => expect((await call(c, 'tunnels')).structuredContent).toEqual(await api('/tunnels')),
  ipv6_addresses: async (c) => expect((await call(c, 'ipv6_addresses')).structuredContent).toEqual(await api('/v6/address')),
  forwarder_targets: async (c) => expect((await call(c, 'forwarder_targets')).structuredContent).toEqual(await api('/forwarder')),
  list_jobs: async (c) => expect((await call(c, 'list_jobs')).structuredContent).toEqual({ jobs: await api('/jobs') }),
  job_runs: async (c) => {
    const r = (await call(c, 'job_runs', { job: 'count', limit: 2 })).structuredContent!
    const listed = (await api('/jobs') as { name: string; runs: number; failures: number }[]).find((j) => j.name === 'count')!
    expect(r).toMatchObject({ job: 'count', runs: listed.runs, failures: listed.failures })
    // The store's newest two runs of the job (run_job, in another test, may have added one).
    const stored = (await openStore({ dataDir }).snapshot()).runs.filter((x) => x.job === 'count').sort((x, y) => y.startedAt.localeCompare(x.startedAt))
    expect(r.recent).toEqual(stored.slice(0, 2))
    expect(stored.map((x) => x.id)).toEqual(expect.arrayContaining(['r2', 'r1', 'r0']))
  },
  diagnose: async (c) => {
    const r = await call(c, 'diagnose')
    expect(r.isError).toBeFalsy()
    const checks = r.structuredContent!.checks as { id: string; status: string }[]
    expect(checks.map((x) => x.id)).toEqual([...CHECK_IDS])
    // It saw this runner: its pid file and its API.
    expect(checks.find((x) => x.id === 'api')?.status).toBe('pass')
  },
}

/** Every read tool listed is checked against the API, and nothing that changes state is offered. */
async function checkReadTools(client: Client): Promise<void> {
  const { tools } = await client.listTools()
  const names = tools.map((t) => t.name)
  expect(names.sort()).toEqual(Object.keys(EXPECTED).sort())
  for (const t of tools) {
    expect(t.outputSchema?.type).toBe('object')
    expect(t.annotations?.readOnlyHint).toBe(true)
  }
  for (const name of names) {
    try {
      await EXPECTED[name](client)
    } catch (err) {
      throw new Error(`tool ${name}: ${(err as Error).message}`)
    }
  }
}

/** A notification gets no answer: the only message seen around it is the answer to the ping after it. */
async function checkNotificationsUnanswered(client: Client, transport: StdioClientTransport): Promise<void> {
  const seen: JSONRPCMessage[] = []
  const deliver = transport.onmessage!
  transport.onmessage = (m) => { seen.push(m); deliver(m) }
  await transport.send({ jsonrpc: '2.0', method: 'notifications/initialized' })
  await transport.send({ jsonrpc: '2.0', method: 'notifications/no-such-thing', params: { x: 1 } })
  await client.ping()
  await new Promise((r) => setTimeout(r, 200))
  transport.onmessage = deliver
  expect(seen).toEqual([expect.objectContaining({ result: {} })])
}

async function checkBadToolName(client: Client): Promise<void> {
  await expect(client.callTool({ name: 'no_such_tool', arguments: {} })).rejects.toMatchObject({ code: -32602 })
  await expect(client.callTool({ name: 'list_devices', arguments: { status: 'asleep' } })).rejects.toMatchObject({ code: -32602 })
  await expect(client.request({ method: 'resources/list', params: {} } as never, (await import('@modelcontextprotocol/sdk/types.js')).ListResourcesResultSchema)).rejects.toMatchObject({ code: -32601 })
}

describe('MCP over stdio (gateway-mcp), with the SDK client', () => {
  it('initializes, lists the read tools, and each answers what the API answers', async () => {
    const { client } = await stdioClient()
    expect(client.getServerVersion()).toMatchObject({ name: 'dualgate' })
    expect(client.getServerCapabilities()?.tools).toBeDefined()
    await checkReadTools(client)
  })

  it('answers no notification, and -32602 for a bad tool name or arguments', async () => {
    const { client, transport } = await stdioClient()
    await checkNotificationsUnanswered(client, transport)
    await checkBadToolName(client)
  })

  it('offers the tools that change state only with mcpWrite, and they pass the API\'s token check', async () => {
    const { client } = await stdioClient({ DUALGATE_MCP_WRITE: '1' })
    const names = (await client.listTools()).tools.map((t) => t.name)
    for (const t of WRITE_TOOLS) expect(names).toContain(t.name)
    const added = await call(client, 'add_forward', { gatewayPort: 18082, deviceIp: '192.168.1.13', devicePort: 8080 })
    expect(added.isError).toBeFalsy()
    const id = added.structuredContent!.id as string
    expect(await api('/forwards')).toContainEqual(expect.objectContaining({ id, gatewayPort: 18082, deviceIp: '192.168.1.13' }))
    // The API's own checks: a device address nobody has is refused, as a tool failure.
    const refused = await call(client, 'add_forward', { gatewayPort: 18083, deviceIp: '192.168.1.200', devicePort: 80 })
    expect(refused).toMatchObject({ isError: true, content: [{ text: expect.stringMatching(/400 no known device has the address 192.168.1.200/) }] })
    expect((await call(client, 'remove_forward', { id })).isError).toBeFalsy()
    expect((await api('/forwards') as { id: string }[]).map((f) => f.id)).toEqual(['f0000001'])
    const ran = await call(client, 'run_job', { job: 'count' })
    expect(ran.structuredContent).toMatchObject({ job: 'count', state: expect.stringMatching(/^(started|queued)$/) })
    // Its run is recorded before the other tests compare the store's runs with what the tools say.
    await waitFor(async () => (await api('/jobs') as { name: string; runs: number; running: boolean; queued: boolean }[])
      .some((j) => j.name === 'count' && j.runs === 4 && !j.running && !j.queued), 30_000, () => `the count run was not recorded:\n${runnerOutput}`)

    // The same tools with a wrong token: the API refuses them, and the client reads why.
    const { client: wrong } = await stdioClient({ DUALGATE_MCP_WRITE: '1', DUALGATE_API_TOKEN: 'not-the-token' })
    const denied = await call(wrong, 'add_forward', { gatewayPort: 18084, deviceIp: '192.168.1.13', devicePort: 80 })
    expect(denied).toMatchObject({ isError: true, content: [{ text: expect.stringMatching(/401 wrong API token/) }] })
    expect((await api('/forwards') as unknown[]).length).toBe(1)
  })

  it('says a runner that is not there as a tool failure, not a crash', async () => {
    const { client } = await stdioClient({ DUALGATE_API_PORT: String(await freePort()) })
    const r = await call(client, 'list_devices')
    expect(r).toMatchObject({ isError: true, content: [{ text: expect.stringMatching(/not answering \(ECONNREFUSED\)/) }] })
  })
})

describe('MCP on the runner\'s unix socket, with the SDK client through socat', () => {
  it('is root\'s and 0600, and refuses a user other than root', async () => {
    const st = statSync(socketPath)
    expect(st.isSocket()).toBe(true)
    expect(st.mode & 0o777).toBe(0o600)
    expect(st.uid).toBe(0)
    const asNobody = ['--reuid=nobody', '--regid=nogroup', '--clear-groups']
    const run = (args: string[]) => new Promise<{ code: number | null; out: string }>((resolve) => {
      execFile('setpriv', [...asNobody, ...args], { timeout: 10_000 }, (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, out: stdout + stderr }))
    })
    // nobody reaches the path (so the refusal below is the socket's own mode, not a directory's) ...
    expect(await run(['stat', '-c', '%a %U', socketPath])).toEqual({ code: 0, out: '600 root\n' })
    // ... and may not connect.
    const denied = await run(['socat', '-u', 'OPEN:/dev/null', `UNIX-CONNECT:${socketPath}`])
    expect(denied.code).not.toBe(0)
    expect(denied.out).toMatch(/Permission denied/)
  })

  it('initializes, lists the read tools, and each answers what the API answers', async () => {
    const { client } = await socketClient()
    expect(client.getServerVersion()).toMatchObject({ name: 'dualgate' })
    await checkReadTools(client)
  })

  it('answers no notification, and -32602 for a bad tool name or arguments', async () => {
    const { client, transport } = await socketClient()
    await checkNotificationsUnanswered(client, transport)
    await checkBadToolName(client)
  })

  it('answers what a client asked before it ended its side, then ends the connection', async () => {
    const lines = await new Promise<string[]>((resolve, reject) => {
      const socket = connect(socketPath)
      let out = ''
      const timer = setTimeout(() => { socket.destroy(); reject(new Error(`no end of connection; got ${out}`)) }, 20_000)
      socket.on('data', (d) => { out += d })
      socket.on('error', reject)
      socket.on('close', () => { clearTimeout(timer); resolve(out.split('\n').filter(Boolean)) })
      socket.end([
        { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'raw', version: '1' } } },
        { jsonrpc: '2.0', method: 'notifications/initialized' },
        { jsonrpc: '2.0', id: 'two', method: 'tools/call', params: { name: 'list_devices', arguments: { status: 'failed' } } },
      ].map((m) => `${JSON.stringify(m)}\n`).join(''))
    })
    const answers = lines.map((l) => JSON.parse(l))
    expect(answers.map((a) => a.id)).toEqual([1, 'two'])
    expect(answers[1].result.structuredContent.devices).toMatchObject([{ mac: '02:00:00:00:00:02' }])
  })

  it('serves two clients at once, each its own session', async () => {
    const [a, b] = await Promise.all([socketClient(), socketClient()])
    // Both connected together, both asking at the same time, several times over.
    const rounds = await Promise.all([a, b].flatMap(({ client }) => [
      call(client, 'list_devices', { status: 'active' }),
      client.ping(),
      call(client, 'list_forwards'),
    ]))
    expect(rounds[0]).toMatchObject({ structuredContent: { devices: [{ mac: '02:00:00:00:00:01' }, { mac: '02:00:00:00:00:03' }] } })
    expect(rounds[3]).toEqual(rounds[0])
    expect(rounds[5]).toEqual(rounds[2])
    // One leaving does not end the other's session.
    await a.client.close()
    expect((await call(b.client, 'health')).structuredContent).toMatchObject({ ok: true })
  })
})

describe('the socket server alone (lib/mcp/transport.ts)', () => {
  const backend: Backend = {
    config: () => loadConfig({ env: {}, uciFile: '/nonexistent' }).config,
    api: async () => ({ status: 200, body: [] }),
    data: async () => emptyData(),
  }
  const listen = (p: string, maxConnections?: number) => listenMcpSocket({ path: p, backend: () => backend, version: '0', log: () => {}, maxConnections })

  /** A raw connection: sends a ping, resolves with the answer, or with 'closed' when the server closes it first. */
  const pingOver = (p: string) => new Promise<{ answer: unknown; socket: ReturnType<typeof connect> }>((resolve, reject) => {
    const socket = connect(p)
    let out = ''
    const timer = setTimeout(() => reject(new Error('no answer and no close within 5 s')), 5000)
    socket.on('error', () => {})
    socket.on('data', (d) => {
      out += d
      if (out.includes('\n')) { clearTimeout(timer); resolve({ answer: JSON.parse(out.split('\n')[0]), socket }) }
    })
    socket.on('close', () => { clearTimeout(timer); resolve({ answer: 'closed', socket }) })
    socket.write(`${JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' })}\n`)
  })

  it('bounds the connections at once: one past the bound is closed, a freed place is taken again', async () => {
    const dir = tempDir()
    const p = path.join(dir, 'mcp.sock')
    const server = await listen(p, 2)
    try {
      const a = await pingOver(p)
      const b = await pingOver(p)
      expect([a.answer, b.answer]).toEqual([{ jsonrpc: '2.0', id: 1, result: {} }, { jsonrpc: '2.0', id: 1, result: {} }])
      expect((await pingOver(p)).answer).toBe('closed')
      a.socket.destroy()
      await waitFor(() => server.connections() === 1, 5000, () => `${server.connections()} connections`)
      const c = await pingOver(p)
      expect(c.answer).toEqual({ jsonrpc: '2.0', id: 1, result: {} })
      b.socket.destroy()
      c.socket.destroy()
    } finally {
      await server.close()
    }
    expect(existsSync(p)).toBe(false)
  })

  it('replaces a stale socket file, and refuses a directory others may write to', async () => {
    const dir = tempDir()
    const p = path.join(dir, 'mcp.sock')
    writeFileSync(p, 'left over')
    const server = await listen(p)
    expect(statSync(p).isSocket()).toBe(true)
    expect(statSync(p).mode & 0o777).toBe(0o600)
    await server.close()
    const open = path.join(dir, 'open')
    mkdirSync(open)
    chmodSync(open, 0o777)
    await expect(listen(path.join(open, 'mcp.sock'))).rejects.toThrow(/writable by others than its owner \(mode 777\)/)
    expect(existsSync(path.join(open, 'mcp.sock'))).toBe(false)
  })
})
