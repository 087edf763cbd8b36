// The tunnels' metrics, checked against the text exposition format by a strict parser (./exposition.ts),
// the IPv6 part of /health, and GET /v6/address from the supervisor with a fake `ip`.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it, vi } from 'vitest'
import type { ApiContext } from '../../lib/core/api.ts'
import { loadConfig } from '../../lib/core/config.ts'
import type { Sh } from '../../lib/core/exec.ts'
import type { Logger } from '../../lib/core/log.ts'
import { emptyData } from '../../lib/core/schema.ts'
import type { Store } from '../../lib/core/store.ts'
import { labelValue } from '../../lib/core/prometheus.ts'
import { tunnelMetrics, type TunnelSample } from '../../lib/tunnels/metrics.ts'
import { parseExposition } from './exposition.ts'
import { ipv6Health, tunnelSupervisor, type TunnelStatus, type V6Addresses } from '../../lib/tunnels/supervisor.ts'

const dir = mkdtempSync(path.join(tmpdir(), 'dg-tunnel-metrics-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const wga: TunnelSample = { name: 'wga', type: 'wireguard', iface: 'wga', state: 'up', score: 100, latencyMs: 12.5, lossPct: 0, primary: true, rxBytes: 1500, txBytes: 3000 }
const wgb: TunnelSample = { name: 'wgb', type: 'wireguard', iface: 'wgb', state: 'degraded', score: 70, latencyMs: 80, lossPct: 25, primary: false, rxBytes: 10, txBytes: 20 }
const he: TunnelSample = { name: 'he', type: '6in4', iface: 'hetun', state: 'down', score: 0, lossPct: 100, primary: false }

describe('the parser itself', () => {
  it.each([
    ['no HELP', '# TYPE a gauge\na 1\n'],
    ['TYPE after a sample', '# HELP a x\na 1\n# TYPE a gauge\n'],
    ['a counter without _total', '# HELP a x\n# TYPE a counter\na 1\n'],
    ['a bad name', '# HELP 1a x\n# TYPE 1a gauge\n1a 1\n'],
    ['an unescaped quote', '# HELP a x\n# TYPE a gauge\na{l="x"y"} 1\n'],
    ['a bad escape', '# HELP a x\n# TYPE a gauge\na{l="x\\ty"} 1\n'],
    ['a family split in two', '# HELP a x\n# TYPE a gauge\na{l="1"} 1\n# HELP b x\n# TYPE b gauge\nb 1\na{l="2"} 1\n'],
    ['a series twice', '# HELP a x\n# TYPE a gauge\na 1\na 2\n'],
    ['no final newline', '# HELP a x\n# TYPE a gauge\na 1'],
    ['a bad value', '# HELP a x\n# TYPE a gauge\na one\n'],
  ])('refuses %s', (_what, text) => {
    expect(() => parseExposition(text)).toThrow()
  })
  it('accepts the format', () => {
    expect(parseExposition('# HELP a_total x\n# TYPE a_total counter\na_total{l="q\\"\\\\\\n",m="2"} 1.5e3\n').get('a_total')?.samples).toEqual([{ labels: { l: 'q"\\\n', m: '2' }, value: 1500 }])
  })
})

describe('tunnelMetrics', () => {
  it('is empty without tunnels', () => {
    expect(tunnelMetrics([], 3)).toBe('')
  })

  it('gives each tunnel its gauges and counters, in the exposition format', () => {
    const families = parseExposition(tunnelMetrics([wga, wgb, he], 2))
    const values = (name: string) => Object.fromEntries((families.get(name)?.samples ?? []).map((s) => [s.labels.tunnel, s.value]))
    expect([...families.keys()]).toEqual([
      'dualgate_tunnel_up', 'dualgate_tunnel_score', 'dualgate_tunnel_latency_seconds', 'dualgate_tunnel_loss_ratio', 'dualgate_tunnel_primary',
      'dualgate_tunnel_rx_bytes_total', 'dualgate_tunnel_tx_bytes_total', 'dualgate_tunnel_failovers_total',
    ])
    expect(values('dualgate_tunnel_up')).toEqual({ wga: 1, wgb: 1, he: 0 })
    expect(values('dualgate_tunnel_score')).toEqual({ wga: 100, wgb: 70, he: 0 })
    // Unknown values are left out, never reported as 0.
    expect(values('dualgate_tunnel_latency_seconds')).toEqual({ wga: 0.0125, wgb: 0.08 })
    expect(values('dualgate_tunnel_loss_ratio')).toEqual({ wga: 0, wgb: 0.25, he: 1 })
    expect(values('dualgate_tunnel_primary')).toEqual({ wga: 1, wgb: 0, he: 0 })
    expect(values('dualgate_tunnel_rx_bytes_total')).toEqual({ wga: 1500, wgb: 10 })
    expect(values('dualgate_tunnel_tx_bytes_total')).toEqual({ wga: 3000, wgb: 20 })
    expect(families.get('dualgate_tunnel_failovers_total')).toMatchObject({ type: 'counter', samples: [{ labels: {}, value: 2 }] })
    expect(families.get('dualgate_tunnel_rx_bytes_total')?.type).toBe('counter')
    expect(families.get('dualgate_tunnel_up')?.type).toBe('gauge')
    expect(families.get('dualgate_tunnel_up')?.samples[2].labels).toEqual({ tunnel: 'he', type: '6in4', iface: 'hetun' })
  })

  it('leaves out a family with no known value', () => {
    const families = parseExposition(tunnelMetrics([he], 0))
    expect(families.has('dualgate_tunnel_latency_seconds')).toBe(false)
    expect(families.has('dualgate_tunnel_rx_bytes_total')).toBe(false)
  })

  it('escapes label values', () => {
    const odd = { ...wga, name: 'a"b\\c\nd' }
    expect(labelValue(odd.name)).toBe('a\\"b\\\\c\\nd')
    const families = parseExposition(tunnelMetrics([odd], 0))
    expect(families.get('dualgate_tunnel_up')?.samples[0].labels.tunnel).toBe('a"b\\c\nd')
  })
})

describe('ipv6Health', () => {
  const status = (t: TunnelSample): TunnelStatus => ({ ...t, adminDown: false })
  it('is reachable when the primary is up or degraded', () => {
    expect(ipv6Health([status(wga), status(wgb), status(he)])).toEqual({ ipv6: { reachable: true, primary: 'wga', tunnels: { up: 2, total: 3 } } })
    expect(ipv6Health([status({ ...wgb, primary: true })]).ipv6.reachable).toBe(true)
  })
  it('is not reachable with no primary, or a primary that is down', () => {
    expect(ipv6Health([status({ ...wga, primary: false }), status(wgb)])).toEqual({ ipv6: { reachable: false, tunnels: { up: 2, total: 2 } } })
    expect(ipv6Health([status({ ...he, primary: true })])).toEqual({ ipv6: { reachable: false, primary: 'he', tunnels: { up: 0, total: 1 } } })
    expect(ipv6Health([])).toEqual({ ipv6: { reachable: false, tunnels: { up: 0, total: 0 } } })
  })
})

/** The tunnel supervisor's parts, with `ip -j -d addr show dev X` answered from `links` and nothing else run. */
function supervisorWith(tunnels: unknown[], links: Record<string, unknown>) {
  const file = path.join(dir, `c${Math.random()}.json`)
  writeFileSync(file, JSON.stringify({ tunnels }))
  const { config } = loadConfig({ uciFile: path.join(dir, 'no-uci'), env: { DUALGATE_CONFIG: file, DUALGATE_DATA_DIR: dir } })
  const sh: Sh = {
    dryRun: true,
    async query(cmd, args) {
      const dev = args.at(-1) ?? ''
      if (cmd === 'ip' && args.join(' ') === `-j -d addr show dev ${dev}` && links[dev]) return { stdout: JSON.stringify([links[dev]]), stderr: '', code: 0 }
      return { stdout: '', stderr: 'Device does not exist.', code: 1 }
    },
    apply: () => Promise.reject(new Error('nothing is changed here')),
    daemon: () => Promise.reject(new Error('nothing is started here')),
  }
  const log = { error() {}, warn() {}, info() {}, debug() {} } as unknown as Logger
  return tunnelSupervisor.setup({ store: { file: path.join(dir, 'dualgate.json') } as Store, config: () => config, sh, log: () => log })
}

describe('the tunnel supervisor reports', () => {
  it('nothing for /metrics and /health without tunnels', () => {
    const parts = supervisorWith([], {})
    expect(parts.metrics?.()).toBe('')
    expect(parts.health?.()).toBeUndefined()
  })

  it('GET /v6/address: usable global IPv6 addresses on each link and routed prefixes, not yet reachable before a check', async () => {
    const parts = supervisorWith([
      { name: 'wga', type: 'external', iface: 'wga', probe: ['2001:db8:ff::10'], prefix: '2001:db8:a0::/48' },
      { name: 'gone', type: 'external', iface: 'gone0', probe: ['2001:db8:ff::10'] },
    ], {
      wga: {
        ifname: 'wga', flags: ['UP'], addr_info: [
          { family: 'inet6', local: '2001:db8:a::2', prefixlen: 64, scope: 'global' },
          // Not usable yet (duplicate address detection under way), or never (a duplicate).
          { family: 'inet6', local: '2001:db8:a::3', prefixlen: 64, scope: 'global', tentative: true },
          { family: 'inet6', local: '2001:db8:a::4', prefixlen: 64, scope: 'global', dadfailed: true, tentative: true },
          { family: 'inet6', local: 'fe80::1', prefixlen: 64, scope: 'link' },
          { family: 'inet', local: '198.18.5.1', prefixlen: 30, scope: 'global' },
        ],
      },
    })
    const route = parts.routes?.find((r) => r.method === 'GET' && r.path === '/v6/address')
    const body = (await route!.handler({} as never, {} as ApiContext)) as V6Addresses
    expect(body).toEqual({
      addresses: [{ address: '2001:db8:a::2', prefixlen: 64, tunnel: 'wga', primary: false, reachable: false }],
      prefixes: [{ prefix: '2001:db8:a0::/48', tunnel: 'wga', reachable: false }],
    })
    expect(parts.health?.()).toEqual({ ipv6: { reachable: false, tunnels: { up: 0, total: 2 } } })
    const families = parseExposition(await parts.metrics!())
    expect(families.get('dualgate_tunnel_up')?.samples.map((s) => s.value)).toEqual([0, 0])
  })
})

describe('the tunnel supervisor during a check', () => {
  it('reports the last complete view, counters included, while the next check is under way', async () => {
    const file = path.join(dir, 'during.json')
    writeFileSync(file, JSON.stringify({ tunnels: [{ name: 'ext', type: 'external', iface: 'ext0', probe: ['2001:db8:ff::10'] }] }))
    const { config } = loadConfig({ uciFile: path.join(dir, 'no-uci'), env: { DUALGATE_CONFIG: file, DUALGATE_DATA_DIR: dir, DUALGATE_TUNNEL_PROBE_INTERVAL: '1' } })
    let hold: Promise<void> | undefined
    let checking: (() => void) | undefined
    // Any `ip ... link show dev ext0` (with -d, -s or both) gets the link with its counters.
    const link = '[{"ifname":"ext0","flags":["UP"],"mtu":1500,"linkinfo":{"info_kind":"veth"},"stats64":{"rx":{"bytes":100},"tx":{"bytes":200}}}]'
    const sh: Sh = {
      dryRun: false,
      async query(cmd, args) {
        if (cmd === 'ping') return { stdout: [1, 2, 3].map((i) => `64 bytes from 2001:db8:ff::10: icmp_seq=${i} ttl=64 time=5.0 ms`).join('\n'), stderr: '', code: 0 }
        const line = [cmd, ...args].join(' ')
        if (/^ip -j( -[sd])* link show dev ext0$/.test(line)) {
          checking?.()
          await hold
          return { stdout: link, stderr: '', code: 0 }
        }
        if (line === 'ip -j -6 route show default proto 78') return { stdout: '[]', stderr: '', code: 0 }
        return { stdout: '', stderr: 'unexpected', code: 1 }
      },
      apply: async () => ({ stdout: '', stderr: '', code: 0 }),
      daemon: async () => undefined,
    }
    const data = emptyData()
    data.tunnels.ext = { type: 'external', iface: 'ext0', table: 900, owned: false, adminDown: false, since: new Date().toISOString() }
    const log = { error() {}, warn() {}, info() {}, debug() {} } as unknown as Logger
    const store = { file: path.join(dir, 'none.json'), read: async () => data } as unknown as Store
    const parts = tunnelSupervisor.setup({ store, config: () => config, sh, log: () => log })
    const tx = async () => /^dualgate_tunnel_tx_bytes_total\{tunnel="ext",type="external",iface="ext0"\} (\d+)$/m.exec(await parts.metrics!())?.[1]
    vi.useFakeTimers({ toFake: ['Date'] })
    try {
      await parts.pass()
      expect(await tx()).toBe('200')
      vi.setSystemTime(Date.now() + 2000)
      let release!: () => void
      hold = new Promise((resolve) => { release = resolve })
      const started = new Promise<void>((resolve) => { checking = resolve })
      const second = parts.pass()
      await started
      expect(await tx()).toBe('200')
      expect(parts.health?.()).toEqual({ ipv6: { reachable: true, primary: 'ext', tunnels: { up: 1, total: 1 } } })
      release()
      await second
    } finally {
      vi.useRealTimers()
    }
  })
})
