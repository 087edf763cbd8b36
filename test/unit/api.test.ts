// The API against a real store in a temp dir, through app.fetch (no socket).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createApi, type ApiRoute, type RunnerControl } from '../../lib/core/api.ts'
import { createRunnerApi } from '../../lib/runner/api.ts'
import { loadConfig, type Config } from '../../lib/core/config.ts'
import type { HookEvent } from '../../lib/core/event.ts'
import { DEVICE_STATUSES, type Device, type DeviceStatus } from '../../lib/core/schema.ts'
import { openStore, type Store } from '../../lib/core/store.ts'
import { parseExposition } from './exposition.ts'

const TOKEN = 'api-test-token'
const dirs: string[] = []
afterAll(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }) })

function setup(env: Record<string, string> = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), 'dualgate-api-'))
  dirs.push(dir)
  const { config } = loadConfig({ env: { DUALGATE_DATA_DIR: dir, DUALGATE_API_TOKEN: TOKEN, ...env }, uciFile: '/nonexistent' })
  return { dir, config, store: openStore({ dataDir: dir }) }
}

function device(mac: string, status: DeviceStatus, firstSeen: string): Device {
  return { mac, status, statusChangedAt: firstSeen, firstSeen, lastSeen: firstSeen, wanIpv6: [], attempts: 0 }
}

/** A stand-in runner that records what the API asks of it. */
function fakeRunner() {
  const triggered: string[] = []
  const events: HookEvent[] = []
  const runner: RunnerControl = {
    jobs: () => [{ name: 'scan-arp', running: true, queued: false }, { name: 'count', running: false, queued: false }],
    trigger(job, trigger) {
      if (!['scan-arp', 'count'].includes(job)) return undefined
      triggered.push(`${job}:${trigger}`)
      return job === 'scan-arp' ? 'queued' : 'started'
    },
    submit(event) {
      events.push(event)
      return event.source === 'dnsmasq' ? ['scan-arp'] : []
    },
  }
  return { runner, triggered, events }
}

/** A Request as srvx hands it over, with the peer address. */
function req(url: string, init: RequestInit & { ip?: string; token?: string } = {}): Request {
  const headers = new Headers(init.headers)
  if (init.token) headers.set('authorization', `Bearer ${init.token}`)
  const r = new Request(`http://127.0.0.1:5050${url}`, { ...init, headers })
  if (init.ip) Object.defineProperty(r, 'ip', { value: init.ip })
  return r
}

async function json(res: Response | Promise<Response>): Promise<{ status: number; body: any }> {
  const r = await res
  expect(r.headers.get('content-type')).toMatch(/^application\/json/)
  return { status: r.status, body: await r.json() }
}

describe('api', () => {
  let store: Store
  let config: Config
  let app: ReturnType<typeof createRunnerApi>
  let fake: ReturnType<typeof fakeRunner>

  beforeAll(async () => {
    ({ store, config } = setup())
    fake = fakeRunner()
    app = createRunnerApi({ store, config, runner: fake.runner, version: '9.9.9' })
    await store.update((d) => {
      d.devices['02:00:00:00:00:01'] = device('02:00:00:00:00:01', 'active', '2024-01-01T00:00:00.000Z')
      d.devices['02:00:00:00:00:02'] = device('02:00:00:00:00:02', 'failed', '2024-01-02T00:00:00.000Z')
      d.devices['02:00:00:00:00:03'] = device('02:00:00:00:00:03', 'active', '2023-12-31T00:00:00.000Z')
      const last = { id: 'r1', job: 'scan-arp', trigger: 'cron', startedAt: '2024-01-03T00:00:00.000Z', durationMs: 12, ok: false, error: 'x' }
      d.runs.push(last)
      d.jobs['scan-arp'] = { runs: 7, failures: 2, last }
      d.jobs['odd"job\\'] = { runs: 1, failures: 0 }
    })
  })

  it('GET /health, with the store it answers from', async () => {
    expect(await json(app.fetch(req('/health')))).toEqual({ status: 200, body: { ok: true, version: '9.9.9', store: { ok: true, devices: 3 } } })
    const head = await app.fetch(req('/health', { method: 'HEAD' }))
    expect(head.status).toBe(200)
    expect(await head.text()).toBe('')
  })

  it('GET /health is 503 when the store cannot be read', async () => {
    const s = setup()
    const broken = createRunnerApi({ store: { ...s.store, snapshot: () => Promise.reject(new Error('EACCES: permission denied')) }, config: s.config })
    expect(await json(broken.fetch(req('/health')))).toEqual({ status: 503, body: { ok: false, version: expect.any(String), store: { ok: false, error: 'EACCES: permission denied' } } })
  })

  it('GET /status: devices by status, runner, jobs', async () => {
    const { status, body } = await json(app.fetch(req('/status')))
    expect(status).toBe(200)
    expect(body.devices).toEqual({ discovered: 0, acquiring: 0, active: 2, failed: 1, gone: 0, total: 3 })
    expect(body.runner).toEqual({ up: false })
    expect(body.jobs['scan-arp']).toMatchObject({ runs: 7, failures: 2, last: { id: 'r1' } })
    expect(body.interfaces.map((i: { role: string }) => i.role)).toEqual(['wan', 'lan'])
  })

  it('GET /devices, filtered by status, sorted by first seen; a bad status is a 400', async () => {
    const all = await json(app.fetch(req('/devices')))
    expect(all.body.map((d: Device) => d.mac)).toEqual(['02:00:00:00:00:03', '02:00:00:00:00:01', '02:00:00:00:00:02'])
    const active = await json(app.fetch(req('/devices?status=active')))
    expect(active.body.map((d: Device) => d.mac)).toEqual(['02:00:00:00:00:03', '02:00:00:00:00:01'])
    expect((await json(app.fetch(req('/devices?status=gone')))).body).toEqual([])
    const bad = await json(app.fetch(req('/devices?status=sleeping')))
    expect(bad.status).toBe(400)
    expect(bad.body.error).toMatch(/unknown status "sleeping"/)
    expect((await json(app.fetch(req('/devices?status=active&status=failed')))).status).toBe(400)
  })

  it.each(['02:00:00:00:00:01', '02-00-00-00-00-01', '0200.0000.0001', '020000000001', '02%3A00%3A00%3A00%3A00%3A01', ' 02:00:00:00:00:01'.trim().toUpperCase()])(
    'GET /devices/%s finds the device',
    async (spelling) => {
      const { status, body } = await json(app.fetch(req(`/devices/${spelling}`)))
      expect(status).toBe(200)
      expect(body).toMatchObject({ mac: '02:00:00:00:00:01', status: 'active' })
    },
  )

  it('GET /devices/:mac: malformed is a 400, unknown a 404', async () => {
    expect(await json(app.fetch(req('/devices/02:00:00:00:00')))).toEqual({ status: 400, body: { error: 'not a MAC address: "02:00:00:00:00"' } })
    expect(await json(app.fetch(req('/devices/nope')))).toMatchObject({ status: 400 })
    expect(await json(app.fetch(req('/devices/%zz')))).toMatchObject({ status: 400 })
    expect(await json(app.fetch(req('/devices/%25zz')))).toMatchObject({ status: 400 })
    expect(await json(app.fetch(req('/devices/02:00:00:00:00:99')))).toEqual({ status: 404, body: { error: 'no device 02:00:00:00:00:99' } })
  })

  it('GET /devices/:mac/log: the last lines naming the device, across rotations; bad arguments are a 400', async () => {
    const logs = path.join(config.dataDir, 'logs')
    mkdirSync(logs, { recursive: true })
    const line = (msg: string, mac?: string) => JSON.stringify({ time: '2024-01-01T00:00:00.000Z', level: 'info', tag: 'acquire-leases', msg, ...(mac ? { mac } : {}) })
    writeFileSync(path.join(logs, 'dualgate.log.1'), `${line('old one', '02:00:00:00:00:01')}\n`)
    writeFileSync(path.join(logs, 'dualgate.log'), `${line('other', '02:00:00:00:00:02')}\nnot json\n${line('says 02:00:00:00:00:01 in words')}\n`)
    const r = await json(app.fetch(req('/devices/02-00-00-00-00-01/log')))
    expect(r.status).toBe(200)
    expect((r.body as { lines: { msg: string }[] }).lines.map((l) => l.msg)).toEqual(['old one', 'says 02:00:00:00:00:01 in words'])
    expect(((await json(app.fetch(req('/devices/02:00:00:00:00:01/log?lines=1')))).body as { lines: unknown[] }).lines).toHaveLength(1)
    for (const bad of ['lines=-1', 'lines=1001', 'lines=x', 'lines=1&lines=2']) expect((await json(app.fetch(req(`/devices/02:00:00:00:00:01/log?${bad}`)))).status, bad).toBe(400)
    expect((await json(app.fetch(req('/devices/nope/log')))).status).toBe(400)
  })

  it('GET /jobs: every known job with schedule, state and totals', async () => {
    const { body } = await json(app.fetch(req('/jobs')))
    const byName = Object.fromEntries(body.map((j: { name: string }) => [j.name, j]))
    expect(byName['scan-arp']).toMatchObject({ available: true, running: true, schedule: config.schedules['scan-arp'], runs: 7, failures: 2, last: { id: 'r1' } })
    expect(byName.count).toMatchObject({ available: true, running: false, runs: 0, failures: 0, schedule: '' })
    expect(byName.diagnose).toMatchObject({ available: false, schedule: config.schedules.diagnose })
  })

  it('GET /metrics in the Prometheus text format', async () => {
    const res = await app.fetch(req('/metrics'))
    expect(res.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8')
    const text = await res.text()
    for (const s of DEVICE_STATUSES) expect(text).toMatch(new RegExp(`^dualgate_devices\\{status="${s}"\\} \\d+$`, 'm'))
    expect(text).toContain('dualgate_devices{status="active"} 2\n')
    expect(text).toContain('dualgate_job_runs_total{job_name="scan-arp"} 7\n')
    expect(text).toContain('dualgate_job_failures_total{job_name="scan-arp"} 2\n')
    expect(text).toContain('dualgate_job_runs_total{job_name="count"} 0\n')
    expect(text).toContain('dualgate_job_runs_total{job_name="odd\\"job\\\\"} 1\n')
    expect(text).toContain('dualgate_job_last_run_success{job_name="scan-arp"} 0\n')
    expect(text).toContain('dualgate_job_last_run_duration_seconds{job_name="scan-arp"} 0.012\n')
    expect(text).toContain('dualgate_job_running{job_name="count"} 0\ndualgate_job_running{job_name="scan-arp"} 1\n')
    expect(text).toMatch(/^dualgate_store_writes_total [1-9]\d*$/m)
    expect(text).toContain('# TYPE dualgate_job_runs_total counter\n')
    // Each family once, HELP and TYPE before its samples, labels escaped (the strict parser of ./exposition.ts).
    const families = parseExposition(text)
    expect(families.get('dualgate_forwards')?.samples).toHaveLength(6)
    // Without the runner's own numbers (no `stats`), no process families.
    expect(families.has('process_resident_memory_bytes')).toBe(false)
  })

  it('POST /jobs/:name/run needs the token, compared exactly', async () => {
    const none = await json(app.fetch(req('/jobs/count/run', { method: 'POST' })))
    expect(none.status).toBe(401)
    expect(none.body.error).toMatch(/Authorization: Bearer/)
    expect((await json(app.fetch(req('/jobs/count/run', { method: 'POST', token: 'wrong' })))).status).toBe(401)
    expect((await json(app.fetch(req('/jobs/count/run', { method: 'POST', token: `${TOKEN}x` })))).status).toBe(401)
    expect((await json(app.fetch(req('/jobs/count/run', { method: 'POST', headers: { authorization: `Basic ${TOKEN}` } })))).status).toBe(401)
    // From loopback is no excuse: only hook events are let in without a token.
    expect((await json(app.fetch(req('/jobs/count/run', { method: 'POST', ip: '127.0.0.1' })))).status).toBe(401)
    expect(fake.triggered).toEqual([])
    expect(await json(app.fetch(req('/jobs/count/run', { method: 'POST', token: TOKEN })))).toEqual({ status: 202, body: { job: 'count', state: 'started' } })
    expect(await json(app.fetch(req('/jobs/scan-arp/run', { method: 'POST', token: TOKEN })))).toEqual({ status: 202, body: { job: 'scan-arp', state: 'queued' } })
    expect((await json(app.fetch(req('/jobs/nope/run', { method: 'POST', token: TOKEN })))).status).toBe(404)
    expect(fake.triggered).toEqual(['count:api', 'scan-arp:api'])
  })

  it('POST /events: only with the token, from loopback too (any local user can reach it); bad events are 400, large ones 413', async () => {
    const body = JSON.stringify({ source: 'dnsmasq', event: 'add', args: ['02:00:00:00:00:05'] })
    for (const ip of ['127.0.0.1', '::1', '::ffff:127.0.0.1', '192.168.1.7', undefined]) {
      expect((await json(app.fetch(req('/events', { method: 'POST', body, ip })))).status).toBe(401)
    }
    expect(fake.events).toHaveLength(0)
    expect(await json(app.fetch(req('/events', { method: 'POST', body, ip: '127.0.0.1', token: TOKEN })))).toEqual({ status: 202, body: { jobs: ['scan-arp'] } })
    expect((await json(app.fetch(req('/events', { method: 'POST', body, ip: '192.168.1.7', token: TOKEN })))).status).toBe(202)
    expect(fake.events).toHaveLength(2)
    expect(fake.events[0]).toEqual({ source: 'dnsmasq', event: 'add', args: ['02:00:00:00:00:05'], env: {} })
    const notJson = await json(app.fetch(req('/events', { method: 'POST', body: '{', token: TOKEN })))
    expect(notJson).toEqual({ status: 400, body: { error: 'body is not JSON' } })
    const invalid = await json(app.fetch(req('/events', { method: 'POST', body: JSON.stringify({ source: 'x y', event: 'add' }), token: TOKEN })))
    expect(invalid.status).toBe(400)
    expect(invalid.body.error).toMatch(/source/)
    const large = await json(app.fetch(req('/events', { method: 'POST', body: JSON.stringify({ source: 'a', event: 'b', args: Array(5).fill('x'.repeat(1000)) }), token: TOKEN })))
    expect(large).toMatchObject({ status: 400, body: { error: expect.stringMatching(/larger than 4096 bytes/) } })
    const huge = await json(app.fetch(req('/events', { method: 'POST', body: JSON.stringify({ source: 'a', event: 'b', args: ['x'.repeat(70_000)] }), token: TOKEN })))
    expect(huge.status).toBe(413)
    expect(fake.events).toHaveLength(2)
  })

  it('reads a body as it streams and stops at the limit: a chunked body without a length gets 413', async () => {
    let pulled = 0
    const chunk = new Uint8Array(16 * 1024).fill(0x20)
    // An endless body: the API must stop reading it, not wait for its end.
    const body = new ReadableStream<Uint8Array>({ pull(c) { pulled++; c.enqueue(chunk) } })
    const res = await app.fetch(new Request('http://localhost/forwards', { method: 'POST', body, headers: { authorization: `Bearer ${TOKEN}` }, duplex: 'half' } as RequestInit))
    expect(res.status).toBe(413)
    expect(pulled).toBeLessThan(20)
  })

  it('unknown routes are 404 and wrong methods 405, both as JSON', async () => {
    expect((await json(app.fetch(req('/nope')))).status).toBe(404)
    expect((await json(app.fetch(req('/devices/02:00:00:00:00:01/extra')))).status).toBe(404)
    const wrong = await json(app.fetch(req('/devices', { method: 'DELETE', token: TOKEN })))
    expect(wrong.status).toBe(405)
    expect(wrong.body.error).toMatch(/GET/)
  })

  it('refuses every change when no token is configured', async () => {
    const s = setup({ DUALGATE_API_TOKEN: '' })
    const bare = createRunnerApi({ store: s.store, config: s.config, runner: fakeRunner().runner })
    for (const token of [undefined, '', 'anything']) {
      const res = await json(bare.fetch(req('/jobs/count/run', { method: 'POST', token })))
      expect(res.status).toBe(403)
      expect(res.body.error).toMatch(/no API token is configured/)
    }
    for (const ip of ['10.0.0.2', '127.0.0.1']) expect((await json(bare.fetch(req('/events', { method: 'POST', body: '{"source":"a","event":"b"}', ip })))).status).toBe(403)
    // Reading is still open.
    expect((await json(bare.fetch(req('/health')))).status).toBe(200)
  })

  it('without a runner, runs and events are 503; the token is read afresh from a config getter', async () => {
    const s = setup()
    let current = s.config
    const alone = createRunnerApi({ store: s.store, config: () => current })
    expect((await json(alone.fetch(req('/jobs/count/run', { method: 'POST', token: TOKEN })))).status).toBe(503)
    current = { ...s.config, apiToken: 'rotated' }
    expect((await json(alone.fetch(req('/jobs/count/run', { method: 'POST', token: TOKEN })))).status).toBe(401)
    expect((await json(alone.fetch(req('/jobs/count/run', { method: 'POST', token: 'rotated' })))).status).toBe(503)
  })

  it('adds, refuses and removes forwards, and asks for refresh-proxies after a change', async () => {
    const s = setup({ DUALGATE_LAN_ADDR: '198.19.0.1/24' })
    await s.store.update((d) => { d.devices['02:00:00:00:00:09'] = { ...device('02:00:00:00:00:09', 'active', '2024-01-01T00:00:00.000Z'), lanIpv4: '198.19.0.9' } })
    const triggered: string[] = []
    const runner: RunnerControl = { jobs: () => [], trigger: (job, trigger) => { triggered.push(`${job}:${trigger}`); return 'queued' }, submit: () => [] }
    const ext = createRunnerApi({ store: s.store, config: s.config, runner })
    const post = (body: unknown, token: string | undefined = TOKEN) => json(ext.fetch(req('/forwards', { method: 'POST', token, body: JSON.stringify(body), headers: { 'content-type': 'application/json' } })))
    expect((await post({ gatewayPort: 8080, deviceIp: '198.19.0.9', devicePort: 80 }, '')).status).toBe(401)
    const created = await post({ gatewayPort: 8080, deviceIp: '198.19.0.9', devicePort: 80 })
    expect(created.status).toBe(201)
    expect(created.body).toMatchObject({ gatewayPort: 8080, deviceIp: '198.19.0.9', devicePort: 80, proto: 'tcp', family: 'both' })
    expect((await post({ gatewayPort: 8080, deviceIp: '198.19.0.9', devicePort: 81 })).status).toBe(409)
    expect((await post({ gatewayPort: 8081, deviceIp: '198.19.0.9', devicePort: 81, proto: 'udp' })).status).toBe(201)
    for (const bad of [{ gatewayPort: 70000, deviceIp: '198.19.0.9', devicePort: 80 }, { gatewayPort: 8082, deviceIp: '10.0.0.9', devicePort: 80 }, { gatewayPort: 8082, deviceIp: '198.19.0.99', devicePort: 80 }, { gatewayPort: 8082, deviceIp: '198.19.0.9', devicePort: 80, family: 5 }]) {
      const r = await post(bad)
      expect(r.status).toBe(400)
      expect(r.body.error).toMatch(/port|LAN|device|family/)
    }
    expect((await s.store.read()).forwards).toHaveLength(2)
    expect((await json(ext.fetch(req('/forwards/nosuch', { method: 'DELETE', token: TOKEN })))).status).toBe(404)
    expect((await json(ext.fetch(req(`/forwards/${created.body.id}`, { method: 'DELETE', token: TOKEN })))).status).toBe(200)
    expect((await json(ext.fetch(req('/forwards')))).body).toHaveLength(1)
    // One refresh per accepted change (two adds, one delete); refused requests ask for nothing.
    expect(triggered).toEqual(['refresh-proxies:api', 'refresh-proxies:api', 'refresh-proxies:api'])
  })

  it('GET /health and GET /metrics take what the supervisors add, under their names and after the runner\'s own', async () => {
    const s = setup()
    let ipv6: Record<string, unknown> | undefined = { ipv6: { reachable: true, primary: 'wga', tunnels: { up: 1, total: 2 } } }
    const supervisors = [
      { name: 'relay' },
      { name: 'tunnels', health: () => ipv6, metrics: () => '# HELP dualgate_tunnel_up Up.\n# TYPE dualgate_tunnel_up gauge\ndualgate_tunnel_up{tunnel="wga"} 1' },
      { name: 'quiet', health: () => undefined, metrics: () => '' },
    ]
    const ext = createRunnerApi({ store: s.store, config: s.config, supervisors })
    expect(await json(ext.fetch(req('/health')))).toEqual({ status: 200, body: { ok: true, version: expect.any(String), store: { ok: true, devices: 0 }, tunnels: ipv6 } })
    const text = await (await ext.fetch(req('/metrics'))).text()
    expect(text).toMatch(/^dualgate_store_writes_total \d+\n# HELP dualgate_tunnel_up Up\.\n# TYPE dualgate_tunnel_up gauge\ndualgate_tunnel_up\{tunnel="wga"\} 1\n$/m)
    expect(text.endsWith('dualgate_tunnel_up{tunnel="wga"} 1\n')).toBe(true)
    ipv6 = undefined
    expect((await json(ext.fetch(req('/health')))).body).not.toHaveProperty('tunnels')
    // An unreadable store is still a 503, with what the supervisors know.
    ipv6 = { ipv6: { reachable: false, tunnels: { up: 0, total: 1 } } }
    const broken = createRunnerApi({ store: { ...s.store, snapshot: () => Promise.reject(new Error('EIO')) }, config: s.config, supervisors })
    expect(await json(broken.fetch(req('/health')))).toEqual({ status: 503, body: { ok: false, version: expect.any(String), store: { ok: false, error: 'EIO' }, tunnels: ipv6 } })
  })

  it('takes more routes from the caller, with the same access rules', async () => {
    const s = setup()
    const widgets: string[] = []
    const routes: ApiRoute[] = [
      { method: 'GET', path: '/widgets', handler: () => widgets },
      { method: 'DELETE', path: '/widgets/:id', handler: (event) => { widgets.push(`deleted ${event.context.params?.id}`); return { ok: true } } },
    ]
    const ext = createApi({ store: s.store, config: s.config, routes })
    expect(await json(ext.fetch(req('/widgets')))).toEqual({ status: 200, body: [] })
    expect((await json(ext.fetch(req('/widgets/w1', { method: 'DELETE' })))).status).toBe(401)
    expect(await json(ext.fetch(req('/widgets/w1', { method: 'DELETE', token: TOKEN })))).toEqual({ status: 200, body: { ok: true } })
    expect(widgets).toEqual(['deleted w1'])
  })
})
