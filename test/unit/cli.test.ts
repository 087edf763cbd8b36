// The commands people type: the gateway-* wrappers in hooks/bin, run as processes against a temporary data
// dir. Only reading jobs run here (outside a lab nothing may change the network): a readable table, --json
// that parses, and usage with exit status 2 for a bad argument.
import { execFile, spawn } from 'node:child_process'
import { appendFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { openStore } from '../../lib/core/store.ts'

const BIN = fileURLToPath(new URL('../../hooks/bin', import.meta.url))
const MAC = '02:aa:bb:cc:dd:01'
let dir: string
let env: NodeJS.ProcessEnv

function cli(name: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(path.join(BIN, name), args, { env, timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr })
    })
  })
}

const logLine = (o: Record<string, unknown>) => `${JSON.stringify({ time: new Date().toISOString(), level: 'info', msg: '', ...o })}\n`

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'dualgate-cli-'))
  env = {
    PATH: process.env.PATH,
    DUALGATE_DATA_DIR: path.join(dir, 'data'),
    DUALGATE_RUN_DIR: path.join(dir, 'run'),
    DUALGATE_UCI_FILE: path.join(dir, 'no-uci'),
    // Interfaces that do not exist: status reads nothing of this machine's network.
    DUALGATE_WAN_IF: 'dgnowan0',
    DUALGATE_LAN_IF: 'dgnolan0',
  }
  const now = new Date().toISOString()
  await openStore({ dataDir: path.join(dir, 'data') }).update((d) => {
    d.devices[MAC] = { mac: MAC, status: 'active', statusChangedAt: now, firstSeen: now, lastSeen: now, lanIpv4: '192.168.1.20', hostname: 'printer', wanIpv4: '198.18.1.20', wanIpv6: [], attempts: 0 }
  })
  mkdirSync(path.join(dir, 'data', 'logs'), { recursive: true })
  writeFileSync(path.join(dir, 'data', 'logs', 'dualgate.log.1'), logLine({ tag: 'scan-arp', msg: `${MAC} discovered`, mac: MAC }))
  writeFileSync(path.join(dir, 'data', 'logs', 'dualgate.log'), [
    logLine({ tag: 'acquire-leases', msg: `${MAC} acquiring -> active`, mac: MAC }),
    logLine({ tag: 'runner', msg: 'acquire-leases (cron): ok in 40 ms' }),
    '{"torn',
  ].join(''))
}, 60_000)
afterAll(() => { rmSync(dir, { recursive: true, force: true }) })

describe('gateway-* commands', () => {
  it('gateway-devices: a table, JSON, a status filter, usage and exit 2 for a bad status', async () => {
    const table = await cli('gateway-devices', [])
    expect(table.code, table.stderr).toBe(0)
    expect(table.stdout).toMatch(/^MAC\s+HOSTNAME\s+LAN IPV4\s+STATUS/)
    expect(table.stdout).toMatch(new RegExp(`${MAC}\\s+printer\\s+192\\.168\\.1\\.20\\s+active\\s+198\\.18\\.1\\.20`))
    const json = await cli('gateway-devices', ['--json'])
    expect(JSON.parse(json.stdout)).toEqual([expect.objectContaining({ mac: MAC, status: 'active' })])
    expect((await cli('gateway-devices', ['failed'])).stdout.trim()).toBe('no devices')
    const bad = await cli('gateway-devices', ['bogus'])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toMatch(/unknown status "bogus"[\s\S]*usage: devices/)
  })

  it('gateway-status: readable sections and JSON', async () => {
    const r = await cli('gateway-status', [])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toMatch(/ROLE\s+INTERFACE\s+STATE/)
    expect(r.stdout).toMatch(/wan\s+dgnowan0\s+missing/)
    expect(r.stdout).toMatch(/devices: 1 \(.*active 1/)
    const json = JSON.parse((await cli('gateway-status', ['--json'])).stdout)
    expect(json.devices).toMatchObject({ total: 1, active: 1 })
    expect((await cli('gateway-status', ['--bogus'])).code).toBe(2)
  })

  it('gateway-port-forward and gateway-diagnose refuse bad arguments with usage and exit 2', async () => {
    const pf = await cli('gateway-port-forward', ['list', '--protocol', 'tcp'])
    expect(pf.code).toBe(2)
    expect(pf.stderr).toMatch(/Unknown option '--protocol'[\s\S]*usage: port-forward/)
    expect(JSON.parse((await cli('gateway-port-forward', ['list', '--json'])).stdout)).toEqual({ action: 'list', forwards: [] })
    const d = await cli('gateway-diagnose', ['--fix', 'everything'])
    expect(d.code).toBe(2)
    expect(d.stderr).toMatch(/unknown check "everything"[\s\S]*usage: diagnose/)
  })

  it('gateway-logs: readable lines across rotations, filters, JSON pass-through, bad input', async () => {
    const all = await cli('gateway-logs', [])
    expect(all.code, all.stderr).toBe(0)
    const lines = all.stdout.trim().split('\n')
    expect(lines).toHaveLength(3)
    expect(lines[0]).toMatch(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO  \[scan-arp\] 02:aa:bb:cc:dd:01 discovered$/)
    expect(lines[2]).toMatch(/INFO {2}\[runner\] acquire-leases \(cron\): ok/)
    const device = await cli('gateway-logs', ['--device', '02-AA-BB-CC-DD-01'])
    expect(device.stdout.trim().split('\n')).toHaveLength(2)
    expect((await cli('gateway-logs', ['--device', '02aa.bbcc.dd01', '--job', 'acquire-leases'])).stdout).toMatch(/^\S+ \S+ INFO {2}\[acquire-leases\] /)
    const json = await cli('gateway-logs', ['--json', '--lines', '2'])
    expect(json.stdout.trim().split('\n').map((l) => JSON.parse(l).tag)).toEqual(['acquire-leases', 'runner'])
    for (const args of [['--device', 'nope'], ['--lines', 'ten'], ['--job', 'Bad Name'], ['extra']]) {
      const bad = await cli('gateway-logs', args)
      expect(bad.code, args.join(' ')).toBe(2)
      expect(bad.stderr).toMatch(/usage: logs/)
    }
  })

  it('gateway-logs -f follows new lines until it is stopped', async () => {
    const child = spawn(path.join(BIN, 'gateway-logs'), ['-f', '--lines', '0', '--job', 'prune-stale'], { env, stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    child.stdout.on('data', (b: Buffer) => { out += b.toString() })
    try {
      await new Promise((r) => setTimeout(r, 1500))
      appendFileSync(path.join(dir, 'data', 'logs', 'dualgate.log'), logLine({ tag: 'runner', msg: 'not this one' }) + logLine({ tag: 'prune-stale', msg: 'gone 1' }))
      for (let i = 0; i < 50 && !out.includes('gone 1'); i++) await new Promise((r) => setTimeout(r, 100))
      expect(out).toMatch(/\[prune-stale\] gone 1\n$/)
      expect(out).not.toContain('not this one')
    } finally {
      child.kill('SIGTERM')
    }
  })

  it('on a host that is not a gateway, the gateway jobs do nothing and say so, and diagnose passes over the LAN', async () => {
    // As a gateway, scan-arp refuses to run without its LAN interface: the role is what stops it below.
    const asGateway = await cli('dualgate-job', ['scan-arp'])
    expect(asGateway.code).toBe(1)
    expect(asGateway.stderr).toMatch(/dgnolan0/)
    const saved = env
    env = { ...env, DUALGATE_ROLE: 'forwarder' }
    try {
      for (const job of ['scan-arp', 'acquire-leases', 'prune-stale', 'refresh-proxies']) {
        const r = await cli('dualgate-job', [job])
        expect(r.code, r.stderr).toBe(0)
        expect(r.stderr).toContain(`${job}: nothing to do, this host is not a gateway (role forwarder)`)
      }
      const diag = await cli('gateway-diagnose', ['--json'])
      const checks = JSON.parse(diag.stdout).checks as { id: string; status: string; reason: string }[]
      for (const id of ['lan-link', 'lan-address', 'dnsmasq', 'macvlans', 'relay']) {
        expect(checks.find((c) => c.id === id)).toMatchObject({ status: 'pass', reason: expect.stringMatching(/not a gateway/) })
      }
      // The WAN is every role's: still checked (and missing here).
      expect(checks.find((c) => c.id === 'wan-link')).toMatchObject({ status: 'fail' })
    } finally {
      env = saved
    }
  }, 60_000)
})
