// The runner: its pure parts (coalescing, the queue, routing) directly, and the real process with fixture
// jobs (test/fixtures/jobs), a temp data dir, the real shim, and a free port on 127.0.0.1.
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { afterAll, afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { loadConfig } from '../../lib/core/config.ts'
import { parseEvent, toPayload } from '../../lib/core/event.ts'
import { createCoalescer } from '../../lib/runner/coalescer.ts'
import { addBounded, createQueue, MAX_PENDING, type Batch, type Item } from '../../lib/runner/queue.ts'
import { jobsFor } from '../../lib/runner/event-jobs.ts'
import { discoverJobs } from '../../lib/runner/jobs.ts'
import { wantedSchedules } from '../../lib/runner/schedule.ts'
import { parseData, type Data } from '../../lib/core/schema.ts'
import { waitFor } from './wait.ts'
import { freePort } from './free-port.ts'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const SHIM = path.join(ROOT, 'hooks/dualgate-event')
const FIXTURES = path.join(ROOT, 'test/fixtures/jobs')
const TOKEN = 'test-token-0123456789'
const run = promisify(execFile)

const dirs: string[] = []
function tempDir(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'dualgate-runner-'))
  dirs.push(dir)
  return dir
}
afterAll(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }) })

const config = loadConfig({ env: { DUALGATE_WAN_IF: 'eth9' }, uciFile: '/nonexistent' }).config
const ev = (o: Record<string, unknown>) => parseEvent({ source: 'test', event: 'x', ...o })
/** The coalescer alone: every item kept (bounds are tested with the queue's addBounded). */
const unbounded = { add: <T>(items: T[], i: T) => { items.push(i); return [] as T[] }, onDrop: () => {} }

describe('coalescing', () => {
  beforeEach(() => { vi.useFakeTimers() })
  afterEach(() => { vi.useRealTimers() })

  it('turns a burst into one flush with every item', () => {
    const flushes: number[][] = []
    const c = createCoalescer<number>({ window: () => 1000, maxWait: () => 5000, onFlush: (_k, items) => flushes.push(items), ...unbounded })
    for (let i = 0; i < 500; i++) {
      c.add('scan-arp', i)
      vi.advanceTimersByTime(2)
    }
    expect(flushes).toEqual([])
    vi.advanceTimersByTime(1000)
    expect(flushes).toHaveLength(1)
    expect(flushes[0]).toEqual([...Array(500).keys()])
  })

  it('flushes a never-ending stream at the max wait, losing nothing', () => {
    const flushes: number[][] = []
    const c = createCoalescer<number>({ window: () => 1000, maxWait: () => 5000, onFlush: (_k, items) => flushes.push(items), ...unbounded })
    for (let i = 0; i < 120; i++) {
      c.add('j', i)
      vi.advanceTimersByTime(100)
    }
    vi.advanceTimersByTime(1000)
    expect(flushes.length).toBeGreaterThanOrEqual(3)
    expect(flushes.length).toBeLessThanOrEqual(4)
    expect(flushes.flat()).toEqual([...Array(120).keys()])
    expect(Math.max(...flushes.slice(0, -1).map((f) => f.length))).toBeLessThanOrEqual(51)
  })

  it('keeps keys apart and hands back what is pending without flushing', () => {
    const flushed: string[] = []
    const c = createCoalescer<number>({ window: () => 50, maxWait: () => 250, onFlush: (k) => flushed.push(k), ...unbounded })
    c.add('a', 1)
    c.add('b', 2)
    c.add('a', 3)
    expect(c.takeAll()).toEqual(new Map([['a', [1, 3]], ['b', [2]]]))
    vi.advanceTimersByTime(1000)
    expect(flushed).toEqual([])
  })

  it('with a zero window still merges what arrives in the same tick', () => {
    const flushes: number[][] = []
    const c = createCoalescer<number>({ window: () => 0, maxWait: () => 0, onFlush: (_k, items) => flushes.push(items), ...unbounded })
    c.add('j', 1)
    c.add('j', 2)
    vi.advanceTimersByTime(1)
    expect(flushes).toEqual([[1, 2]])
  })
})

describe('queue', () => {
  it('never overlaps a job with itself and queues one follow-up with everything that arrived', async () => {
    const runs: { job: string; n: number; triggers: string[] }[] = []
    let active = 0
    let maxActive = 0
    const q = createQueue(async (job, batch) => {
      active++
      maxActive = Math.max(maxActive, active)
      runs.push({ job, n: batch.items.length, triggers: batch.triggers })
      await new Promise((r) => setTimeout(r, 30))
      active--
    }, () => {})
    let seq = 0
    const batch = (n: number, trigger = 'event'): Batch => ({ items: Array.from({ length: n }, () => ({ event: ev({ args: [String(seq++)] }) })), triggers: [trigger] })
    expect(q.request('a', batch(1))).toBe('started')
    expect(q.request('a', batch(2))).toBe('queued')
    expect(q.request('a', batch(3, 'cron'))).toBe('queued')
    expect(q.request('b', batch(1))).toBe('started')
    expect(q.queued('a')).toBe(true)
    await q.idle()
    expect(runs.filter((r) => r.job === 'a')).toEqual([{ job: 'a', n: 1, triggers: ['event'] }, { job: 'a', n: 5, triggers: ['event', 'cron'] }])
    expect(maxActive).toBe(2)
  })

  it('after close() starts nothing and hands back the follow-ups', async () => {
    const q = createQueue(() => new Promise((r) => setTimeout(r, 20)), () => {})
    q.request('a', { items: [], triggers: ['cron'] })
    q.request('a', { items: [{ event: ev({}) }], triggers: ['event'] })
    const left = q.close()
    expect(left.get('a')?.items).toHaveLength(1)
    expect(q.request('a', { items: [], triggers: ['api'] })).toBe('closed')
    await q.idle()
  })
})

describe('bounds on waiting events', () => {
  const item = (n: number, size = 10) => ({ event: ev({ args: [String(n), 'x'.repeat(size)] }) })

  it('drops an event identical to one already waiting, whatever its time', () => {
    const items = [item(1)]
    const again = { event: { ...item(1).event, time: '2024-01-01T00:00:00.000Z' } }
    expect(addBounded(items, again)).toEqual([again])
    expect(addBounded(items, item(2))).toEqual([])
    expect(items.map((i) => i.event.args[0])).toEqual(['1', '2'])
  })

  it('keeps the newest MAX_PENDING and drops the oldest', () => {
    const items: Item[] = []
    const dropped: Item[] = []
    for (let i = 0; i < MAX_PENDING + 10; i++) dropped.push(...addBounded(items, item(i)))
    expect(items).toHaveLength(MAX_PENDING)
    expect(dropped.map((d) => d.event.args[0])).toEqual(Array.from({ length: 10 }, (_, i) => String(i)))
    expect(items[0].event.args[0]).toBe('10')
  })

  it('a burst and a follow-up run stay bounded, and what they drop is handed back', async () => {
    const flushed: Item[][] = []
    const dropped: Item[] = []
    const c = createCoalescer<Item>({ window: () => 1000, maxWait: () => 5000, onFlush: (_k, items) => flushed.push(items), add: (items, i) => addBounded(items, i, 5), onDrop: (_k, d) => dropped.push(...d) })
    vi.useFakeTimers()
    try {
      for (let i = 0; i < 8; i++) c.add('j', item(i))
      c.add('j', item(7))
      vi.advanceTimersByTime(2000)
    } finally {
      vi.useRealTimers()
    }
    expect(flushed.map((f) => f.map((i) => i.event.args[0]))).toEqual([['3', '4', '5', '6', '7']])
    expect(dropped.map((d) => d.event.args[0])).toEqual(['0', '1', '2', '7'])

    const queueDropped: Item[] = []
    const q = createQueue(() => new Promise((r) => setTimeout(r, 50)), (_job, d) => queueDropped.push(...d))
    q.request('j', { items: [], triggers: ['cron'] })
    for (let i = 0; i < MAX_PENDING + 3; i++) q.request('j', { items: [item(i)], triggers: ['event'] })
    expect(queueDropped).toHaveLength(3)
    expect(q.close().get('j')?.items).toHaveLength(MAX_PENDING)
    await q.idle()
  })
})

describe('routing and payloads', () => {
  it('routes dnsmasq, WAN interface and DHCP client events; an explicit job only among the reconcilers', () => {
    expect(jobsFor(ev({ source: 'dnsmasq', event: 'add' }), config)).toEqual(['scan-arp'])
    expect(jobsFor(ev({ source: 'dnsmasq', event: 'arp-del' }), config)).toEqual(['scan-arp'])
    expect(jobsFor(ev({ source: 'dnsmasq', event: 'tftp' }), config)).toEqual([])
    expect(jobsFor(ev({ source: 'iface', event: 'ifup', env: { INTERFACE: 'wan', DEVICE: 'eth0' } }), config)).toEqual(['acquire-leases'])
    expect(jobsFor(ev({ source: 'iface', event: 'ifupdate', env: { INTERFACE: 'uplink', DEVICE: 'eth9' } }), config)).toEqual(['acquire-leases'])
    expect(jobsFor(ev({ source: 'iface', event: 'ifup', env: { INTERFACE: 'lan', DEVICE: 'br-lan' } }), config)).toEqual([])
    expect(jobsFor(ev({ source: 'iface', event: 'ifdown', args: ['uplink', 'eth9'] }), config)).toEqual(['acquire-leases'])
    expect(jobsFor(ev({ source: 'iface', event: 'ifdown', args: ['lan', 'br-lan'] }), config)).toEqual([])
    expect(jobsFor(ev({ source: 'dhclient6', event: 'BOUND6', args: ['dg001122334455'] }), config)).toEqual(['acquire-leases'])
    expect(jobsFor(ev({ source: 'udhcpc', event: 'bound', env: { interface: 'dg001122334455' } }), config)).toEqual(['acquire-leases'])
    expect(jobsFor(ev({ source: 'firewall', event: 'reload', job: 'refresh-proxies' }), config)).toEqual(['refresh-proxies'])
    const withTunnels = { ...config, sections: { tunnels: [{ name: 'he', type: '6in4' }] } }
    expect(jobsFor(ev({ source: 'iface', event: 'ifupdate', env: { INTERFACE: 'wan', DEVICE: 'eth0' } }), withTunnels)).toEqual(['acquire-leases', 'tunnels', 'he-update'])
    expect(jobsFor(ev({ source: 'iface', event: 'ifdown', env: { INTERFACE: 'wan', DEVICE: 'eth0' } }), withTunnels)).toEqual(['acquire-leases'])
    const withPeer = { ...config, sections: { forwarderPeers: [{ name: 'vps', remote: 'vps.example.net' }] } }
    expect(jobsFor(ev({ source: 'iface', event: 'ifupdate', env: { INTERFACE: 'wan', DEVICE: 'eth0' } }), withPeer)).toEqual(['acquire-leases', 'forwarder'])
    expect(jobsFor(ev({ source: 'iface', event: 'ifupdate', env: { INTERFACE: 'wan', DEVICE: 'eth0' } }), config)).not.toContain('forwarder')
  })

  it('schedules the tunnels job and the HE updater only where tunnels are configured (no process every few minutes for nothing)', () => {
    expect(Object.keys(wantedSchedules(config))).not.toContain('tunnels')
    expect(Object.keys(wantedSchedules(config))).not.toContain('he-update')
    expect(Object.keys(wantedSchedules(config))).toContain('scan-arp')
    const sit = { name: 'he', type: '6in4', iface: 'he0', enabled: true, priority: 0, probe: ['2001:db8::1'], remote: '198.18.0.1', local: 'auto', address: ['2001:db8::2/64'], prefix: '', mtu: 0, ttl: 64 }
    expect(Object.keys(wantedSchedules({ ...config, sections: { tunnels: [sit] } }))).toEqual(expect.arrayContaining(['tunnels']))
    expect(Object.keys(wantedSchedules({ ...config, sections: { tunnels: [sit] } }))).not.toContain('he-update')
    const he = { ...sit, heTunnelId: '1', heUsername: 'me', heKeyFile: '/k' }
    expect(Object.keys(wantedSchedules({ ...config, sections: { tunnels: [he] } }))).toEqual(expect.arrayContaining(['tunnels', 'he-update']))
    // An event never starts a job that is not a reconciler, whatever it names.
    for (const job of ['diagnose', 'install', 'port-forward', 'config']) expect(jobsFor(ev({ source: 'dnsmasq', event: 'add', job }), config)).toEqual([])
  })

  it('runs the jobs in jobs/ but never the commands there: install and mcp are neither listed nor startable', () => {
    const jobs = discoverJobs(path.join(ROOT, 'jobs'))
    expect([...jobs.keys()]).toEqual(expect.arrayContaining(['acquire-leases', 'diagnose', 'prune-stale', 'scan-arp', 'forwarder']))
    expect(jobs.has('install')).toBe(false)
    expect(jobs.has('mcp')).toBe(false)
  })

  it('validates events and flattens them into payloads', () => {
    const e = parseEvent({ source: 'dnsmasq', event: 'add', args: ['aa:bb:cc:dd:ee:ff', '192.168.1.9'], env: { DNSMASQ_INTERFACE: 'br-lan', source: 'spoofed' }, time: '2024-01-01T00:00:00.000Z' })
    expect(toPayload(e)).toEqual({ DNSMASQ_INTERFACE: 'br-lan', arg1: 'aa:bb:cc:dd:ee:ff', arg2: '192.168.1.9', source: 'dnsmasq', event: 'add', time: '2024-01-01T00:00:00.000Z' })
    expect(() => parseEvent({ source: 'a b', event: 'x' })).toThrow(/source/)
    expect(() => parseEvent({ source: 'a', event: 'x', job: '../etc' })).toThrow(/job/)
    expect(() => parseEvent({ source: 'a', event: 'x', env: { 'A=B': '1' } })).toThrow(/env/)
    expect(() => parseEvent('{}')).toThrow(/invalid event/)
  })
})

describe('dualgate-event shim', () => {
  const busybox = ['/usr/bin/busybox', '/bin/busybox'].find((f) => existsSync(f))
  /** As on OpenWrt: busybox ash, and only busybox applets on the PATH (its awk, mv, mkdir). */
  function busyboxPath(): string {
    const dir = tempDir()
    for (const applet of ['ash', 'awk', 'mv', 'mkdir', 'rm', 'logger']) symlinkSync(busybox!, path.join(dir, applet))
    return dir
  }
  const shells = ['dash', ...(busybox ? ['busybox'] : [])]

  it.each(shells)('under %s spools the event as data, never as code', async (shell) => {
    const dir = tempDir()
    const canary = path.join(dir, 'pwned')
    const nasty = `$(touch ${canary}) \`touch ${canary}\` ; * "q" \\ \n \u0001 é`
    const bin = shell === 'busybox' ? busyboxPath() : undefined
    await run(bin ? path.join(bin, 'ash') : 'sh', [SHIM, 'dnsmasq', 'add', 'aa:bb:cc:dd:ee:ff', nasty], {
      env: { PATH: bin ?? process.env.PATH, DUALGATE_DATA_DIR: dir, DNSMASQ_INTERFACE: 'br-lan', DNSMASQ_TAGS: nasty, SECRET: 'not captured', interface: 'eth0' },
    })
    const files = readdirSync(path.join(dir, 'spool'))
    expect(files).toHaveLength(1)
    expect(files[0]).toMatch(/^e\d+-0\.json$/)
    const event = parseEvent(JSON.parse(readFileSync(path.join(dir, 'spool', files[0]), 'utf8')))
    expect(event).toEqual({ source: 'dnsmasq', event: 'add', args: ['aa:bb:cc:dd:ee:ff', nasty], env: { DNSMASQ_INTERFACE: 'br-lan', DNSMASQ_TAGS: nasty, interface: 'eth0' } })
    expect(existsSync(canary)).toBe(false)
  })

  it('names the job with --job, never fails, and finds the data dir the documented way', async () => {
    const dir = tempDir()
    const uci = path.join(dir, 'dualgate.uci')
    writeFileSync(uci, "config dualgate 'main'\n\toption wan_if 'eth0'\n\toption data_dir '/srv/dual gate'\n\nconfig job 'scan_arp'\n\toption data_dir '/not/this'\n")
    const env = { PATH: process.env.PATH }
    expect((await run('sh', [SHIM, '--data-dir'], { env: { ...env, DUALGATE_UCI_FILE: uci } })).stdout).toBe('/srv/dual gate\n')
    expect((await run('sh', [SHIM, '--data-dir'], { env: { ...env, DUALGATE_UCI_FILE: uci, DUALGATE_DATA_DIR: dir } })).stdout).toBe(`${dir}\n`)
    expect((await run('sh', [SHIM, '--data-dir'], { env: { ...env, DUALGATE_UCI_FILE: path.join(dir, 'none') } })).stdout).toBe('/var/lib/dualgate\n')
    await run('sh', [SHIM, '--job', 'count', 'test', 'ping'], { env: { ...env, DUALGATE_DATA_DIR: dir } })
    const [file] = readdirSync(path.join(dir, 'spool'))
    expect(JSON.parse(readFileSync(path.join(dir, 'spool', file), 'utf8'))).toEqual({ job: 'count', source: 'test', event: 'ping', args: [], env: {} })
    // Too few arguments, or a spool it cannot write: a usage line or a syslog line, and still exit 0.
    await expect(run('sh', [SHIM, 'only-source'], { env: { ...env, DUALGATE_DATA_DIR: dir } })).resolves.toBeDefined()
    await expect(run('sh', [SHIM, 'a', 'b'], { env: { ...env, DUALGATE_DATA_DIR: '/proc/nope' } })).resolves.toBeDefined()
  })
})

// ---------------------------------------------------------------- the real runner process

interface Runner {
  proc: ChildProcess
  dataDir: string
  url: string
  output(): string
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

const started: Runner[] = []
afterEach(async () => {
  for (const r of started.splice(0)) {
    if (r.proc.exitCode === null && r.proc.signalCode === null) {
      r.proc.kill('SIGKILL')
      await r.exited
    }
  }
})

function runnerEnv(dataDir: string, port: number, extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('DUALGATE_')) env[k] = v
  return {
    ...env,
    DUALGATE_DATA_DIR: dataDir,
    DUALGATE_RUN_DIR: path.join(dataDir, 'run'),
    DUALGATE_API_HOST: '127.0.0.1',
    DUALGATE_API_PORT: String(port),
    DUALGATE_API_TOKEN: TOKEN,
    DUALGATE_UCI_FILE: '/nonexistent',
    DUALGATE_JOBS_DIR: FIXTURES,
    DUALGATE_SCHEDULE_SCAN_ARP: '',
    DUALGATE_SCHEDULE_ACQUIRE_LEASES: '',
    DUALGATE_SCHEDULE_PRUNE_STALE: '',
    DUALGATE_SCHEDULE_REFRESH_PROXIES: '',
    DUALGATE_SCHEDULE_DIAGNOSE: '',
    ...extra,
  }
}

function spawnRunner(dataDir: string, port: number, extra: Record<string, string> = {}): Runner {
  const proc = spawn(process.execPath, ['--import=tsx', 'lib/runner/main.ts'], { cwd: ROOT, env: runnerEnv(dataDir, port, extra), stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  proc.stdout!.on('data', (d) => { out += d })
  proc.stderr!.on('data', (d) => { out += d })
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })))
  const r: Runner = { proc, dataDir, url: `http://127.0.0.1:${port}`, output: () => out, exited }
  started.push(r)
  return r
}

async function startRunner(dataDir: string, extra: Record<string, string> = {}): Promise<Runner> {
  const r = spawnRunner(dataDir, await freePort(), extra)
  await waitFor(async () => (await fetch(`${r.url}/health`)).ok, 30_000, () => `runner did not come up:\n${r.output()}`)
  return r
}

function storeData(dataDir: string): Data {
  try {
    return parseData(readFileSync(path.join(dataDir, 'dualgate.json'), 'utf8'))
  } catch {
    return parseData('{}')
  }
}

/** Alive and not a zombie (a zombie is dead; it only waits for a parent to reap it). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z'
  } catch {
    return false
  }
}

async function pool<T>(items: T[], width: number, fn: (item: T) => Promise<unknown>): Promise<void> {
  let next = 0
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) await fn(items[next++])
  }))
}

const post = (r: Runner, p: string, body?: unknown, token?: string) => fetch(`${r.url}${p}`, {
  method: 'POST',
  headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
  body: body === undefined ? undefined : JSON.stringify(body),
})

describe('runner process', () => {
  it('coalesces 500 events (shim and POST /events) into a handful of runs and delivers every one', async () => {
    const r = await startRunner(tempDir(), { DUALGATE_COALESCE_WINDOW: '1000' })
    const ids = [...Array(500).keys()].map((i) => `ev${i}`)
    const viaShim = ids.filter((_, i) => i % 2 === 0)
    const viaHttp = ids.filter((_, i) => i % 2 === 1)
    const shimEnv = { PATH: process.env.PATH, DUALGATE_DATA_DIR: r.dataDir, DNSMASQ_INTERFACE: 'br-lan' }
    await Promise.all([
      pool(viaShim, 8, (id) => run('sh', [SHIM, 'dnsmasq', 'add', '02:00:00:00:00:01', '192.168.1.20', id], { env: shimEnv })),
      pool(viaHttp, 8, async (id) => {
        const res = await post(r, '/events', { source: 'dnsmasq', event: 'add', args: ['02:00:00:00:00:01', '192.168.1.20', id] }, TOKEN)
        expect(res.status).toBe(202)
        expect(await res.json()).toEqual({ jobs: ['scan-arp'] })
      }),
    ])
    const payloads = path.join(r.dataDir, 'payloads-scan-arp.jsonl')
    const delivered = () => (existsSync(payloads) ? readFileSync(payloads, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, string>) : [])
    await waitFor(() => delivered().length >= 500 && storeData(r.dataDir).jobs['scan-arp']?.runs === storeData(r.dataDir).runs.filter((x) => x.job === 'scan-arp').length, 60_000, () => `${delivered().length} of 500 delivered\n${r.output()}`)
    await waitFor(() => readdirSync(path.join(r.dataDir, 'spool')).length === 0, 10_000, () => 'spool not emptied')
    await new Promise((res) => setTimeout(res, 1500)) // nothing more may arrive
    const runs = storeData(r.dataDir).runs.filter((x) => x.job === 'scan-arp')
    expect(runs.length).toBeGreaterThanOrEqual(1)
    expect(runs.length).toBeLessThanOrEqual(5)
    expect(runs.every((x) => x.ok && x.trigger === 'event')).toBe(true)
    expect(runs.reduce((sum, x) => sum + (x.result as { count: number }).count, 0)).toBe(500)
    const got = delivered()
    expect(got).toHaveLength(500)
    expect(new Set(got.map((p) => p.arg3))).toEqual(new Set(ids))
    const fromShim = got.find((p) => p.arg3 === 'ev0')!
    expect(fromShim).toMatchObject({ source: 'dnsmasq', event: 'add', arg1: '02:00:00:00:00:01', arg2: '192.168.1.20', DNSMASQ_INTERFACE: 'br-lan' })
    expect(Date.parse(fromShim.time)).not.toBeNaN()
  })

  it('records a throwing, an exiting and a hanging job as failed, kills the hung process group, and keeps serving', async () => {
    const r = await startRunner(tempDir(), { DUALGATE_JOB_TIMEOUT: '4' })
    expect((await post(r, '/jobs/boom/run')).status).toBe(401)
    expect((await post(r, '/jobs/boom/run', undefined, 'wrong')).status).toBe(401)
    expect((await post(r, '/jobs/nope/run', undefined, TOKEN)).status).toBe(404)
    for (const job of ['boom', 'crash', 'hang']) {
      const res = await post(r, `/jobs/${job}/run`, undefined, TOKEN)
      expect(res.status).toBe(202)
      expect(await res.json()).toEqual({ job, state: 'started' })
    }
    // A second request while hang runs becomes its one follow-up.
    expect(await (await post(r, '/jobs/hang/run', undefined, TOKEN)).json()).toEqual({ job: 'hang', state: 'queued' })
    await waitFor(() => ['boom', 'crash'].every((j) => storeData(r.dataDir).jobs[j]?.failures === 1) && storeData(r.dataDir).jobs.hang?.failures === 2, 40_000, () => r.output())
    const jobs = storeData(r.dataDir).jobs
    expect(jobs.boom.last).toMatchObject({ ok: false, trigger: 'api', error: 'boom: the fixture failed on purpose' })
    expect(jobs.crash.last?.error).toMatch(/exited with code 3/)
    expect(jobs.hang.last?.error).toMatch(/timed out after 4 s/)
    const pids = readFileSync(path.join(r.dataDir, 'hang.pids'), 'utf8').trim().split(/\s+/).map(Number)
    expect(pids).toHaveLength(4)
    await waitFor(() => pids.every((p) => !alive(p)), 5000, () => `left behind: ${pids.filter(alive)}`)
    const health = await fetch(`${r.url}/health`)
    expect(await health.json()).toMatchObject({ ok: true })
    const list = await (await fetch(`${r.url}/jobs`)).json() as { name: string; runs: number; failures: number; available: boolean }[]
    expect(list.find((j) => j.name === 'hang')).toMatchObject({ runs: 2, failures: 2, available: true })
    const metrics = await (await fetch(`${r.url}/metrics`)).text()
    expect(metrics).toContain('dualgate_job_failures_total{job_name="hang"} 2')
    // And it still runs a good job afterwards.
    await post(r, '/jobs/count/run', undefined, TOKEN)
    await waitFor(() => storeData(r.dataDir).jobs.count?.last?.ok === true, 20_000, () => r.output())
  })

  it('runs events spooled while it was down, and refresh-proxies at start; an event never starts a job outside the reconcilers', async () => {
    const dataDir = tempDir()
    const env = { PATH: process.env.PATH, DUALGATE_DATA_DIR: dataDir }
    for (const i of [1, 2, 3]) await run('sh', [SHIM, 'dnsmasq', 'old', `02:00:00:00:00:0${i}`, `192.168.1.${i}`], { env })
    await run('sh', [SHIM, '--job', 'prune-stale', 'test', 'ping'], { env })
    // A job that exists but that events may not start (in the field: install, diagnose, port-forward).
    await run('sh', [SHIM, '--job', 'count', 'test', 'ping'], { env })
    writeFileSync(path.join(dataDir, 'spool', 'garbage.json'), '{"source": nope')
    const r = await startRunner(dataDir)
    await waitFor(() => storeData(dataDir).jobs['scan-arp']?.runs === 1 && storeData(dataDir).jobs['prune-stale']?.runs === 1 && storeData(dataDir).jobs['refresh-proxies']?.runs === 1, 30_000, () => r.output())
    const data = storeData(dataDir)
    expect(data.jobs['scan-arp'].last?.result).toEqual({ count: 3 })
    expect(data.jobs['prune-stale'].last?.result).toEqual({ count: 1 })
    expect(data.jobs.count).toBeUndefined()
    expect(r.output()).toMatch(/names job count, which events may not start/)
    expect(data.jobs['refresh-proxies'].last).toMatchObject({ ok: true, trigger: 'start' })
    await waitFor(() => readdirSync(path.join(dataDir, 'spool')).join() === 'garbage.json.bad', 5000, () => readdirSync(path.join(dataDir, 'spool')).join())
    expect(r.output()).toMatch(/garbage\.json is not a valid event/)
  })

  it('stops cleanly on SIGTERM: children killed, pending events spooled, PID file removed, exit 0', async () => {
    const r = await startRunner(tempDir(), { DUALGATE_COALESCE_WINDOW: '60000' })
    expect(Number(readFileSync(path.join(r.dataDir, 'runner.pid'), 'utf8'))).toBe(r.proc.pid)
    await post(r, '/jobs/hang/run', undefined, TOKEN)
    expect((await post(r, '/events', { job: 'prune-stale', source: 'test', event: 'pending' })).status).toBe(401)
    expect((await post(r, '/events', { job: 'prune-stale', source: 'test', event: 'pending' }, TOKEN)).status).toBe(202)
    const pidsFile = path.join(r.dataDir, 'hang.pids')
    await waitFor(() => existsSync(pidsFile), 20_000, () => r.output())
    const pids = readFileSync(pidsFile, 'utf8').trim().split(/\s+/).map(Number)
    expect(pids.every(alive)).toBe(true)
    r.proc.kill('SIGTERM')
    const { code, signal } = await r.exited
    expect({ code, signal }).toEqual({ code: 0, signal: null })
    await waitFor(() => pids.every((p) => !alive(p)), 5000, () => `left behind: ${pids.filter(alive)}`)
    expect(existsSync(path.join(r.dataDir, 'runner.pid'))).toBe(false)
    const spooled = readdirSync(path.join(r.dataDir, 'spool')).map((f) => JSON.parse(readFileSync(path.join(r.dataDir, 'spool', f), 'utf8')))
    expect(spooled).toEqual([expect.objectContaining({ job: 'prune-stale', source: 'test', event: 'pending' })])
    expect(storeData(r.dataDir).jobs.hang.last?.error).toMatch(/shutting down/)
  })

  it('persists the store to persistDir when it stops, and restores it from there after a reboot (tmpfs)', async () => {
    const live = tempDir()
    const flash = tempDir()
    const r = await startRunner(live, { DUALGATE_PERSIST_DIR: flash })
    expect((await post(r, '/jobs/count/run', undefined, TOKEN)).status).toBe(202)
    await waitFor(() => (storeData(r.dataDir).jobs.count?.runs ?? 0) >= 1, 20_000, () => r.output())
    r.proc.kill('SIGTERM')
    expect((await r.exited).code).toBe(0)
    expect(readFileSync(path.join(flash, 'dualgate.json'), 'utf8')).toBe(readFileSync(path.join(live, 'dualgate.json'), 'utf8'))
    rmSync(live, { recursive: true })
    const again = await startRunner(live, { DUALGATE_PERSIST_DIR: flash })
    expect(storeData(again.dataDir).jobs.count?.runs).toBe(1)
    expect(again.output()).toMatch(/store restored from/)
    again.proc.kill('SIGTERM')
    expect((await again.exited).code).toBe(0)
  })

  it('runs cron schedules without ever overlapping a job with itself', async () => {
    // Every second, for a job that takes longer than that (a child process with a TypeScript loader).
    const r = await startRunner(tempDir(), { DUALGATE_SCHEDULE_SCAN_ARP: '* * * * * *' })
    await waitFor(() => (storeData(r.dataDir).jobs['scan-arp']?.runs ?? 0) >= 3, 30_000, () => r.output())
    r.proc.kill('SIGTERM')
    expect((await r.exited).code).toBe(0)
    const runs = storeData(r.dataDir).runs.filter((x) => x.job === 'scan-arp' && x.ok)
    expect(runs.length).toBeGreaterThanOrEqual(3)
    expect(runs.every((x) => x.trigger === 'cron')).toBe(true)
    for (let i = 1; i < runs.length; i++) {
      expect(Date.parse(runs[i].startedAt)).toBeGreaterThanOrEqual(Date.parse(runs[i - 1].startedAt) + runs[i - 1].durationMs)
    }
  })

  it('a run the runner starts waits for the same exclusive job run by hand, and they never overlap', async () => {
    const r = await startRunner(tempDir())
    const env = runnerEnv(r.dataDir, Number(new URL(r.url).port), { FIXTURE_HOLD_MS: '4000' })
    const manual = spawn(process.execPath, ['--import=tsx', path.join(FIXTURES, 'exclusive.ts')], { cwd: ROOT, env, stdio: 'ignore' })
    const manualDone = new Promise((resolve) => manual.on('exit', resolve))
    const log = path.join(r.dataDir, 'exclusive.log')
    await waitFor(() => existsSync(log), 10_000, () => 'the manual run never started')
    expect(await (await post(r, '/jobs/exclusive/run', undefined, TOKEN)).json()).toEqual({ job: 'exclusive', state: 'started' })
    await waitFor(() => storeData(r.dataDir).runs.some((x) => x.job === 'exclusive'), 20_000, () => r.output())
    await manualDone
    expect(storeData(r.dataDir).runs.find((x) => x.job === 'exclusive')?.ok).toBe(true)
    const lines = readFileSync(log, 'utf8').trim().split('\n').map((l) => l.split(' '))
    // The manual run starts and ends, then the runner's.
    expect(lines.map((l) => [l[0], Number(l[1]) === manual.pid ? 'manual' : 'runner'])).toEqual([['start', 'manual'], ['end', 'manual'], ['start', 'runner'], ['end', 'runner']])
  })

  it('keeps its configuration when a SIGHUP finds it invalid, and exits 2 on a bad one at start', async () => {
    const dataDir = tempDir()
    const file = path.join(dataDir, 'config.json')
    writeFileSync(file, JSON.stringify({ coalesceWindow: 100 }))
    const r = await startRunner(dataDir, { DUALGATE_CONFIG: file })
    writeFileSync(file, '{ not json')
    r.proc.kill('SIGHUP')
    await waitFor(() => /keeping the running configuration/.test(r.output()), 10_000, () => r.output())
    expect((await fetch(`${r.url}/health`)).ok).toBe(true)
    writeFileSync(file, JSON.stringify({ coalesceWindow: 200 }))
    r.proc.kill('SIGHUP')
    await waitFor(() => /configuration reloaded/.test(r.output()), 10_000, () => r.output())

    const bad = spawnRunner(tempDir(), await freePort(), { DUALGATE_JOB_TIMEOUT: 'soon' })
    expect((await bad.exited).code).toBe(2)
    expect(bad.output()).toMatch(/jobTimeout/)
  })
})
