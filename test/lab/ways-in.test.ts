// The ways in, against a lab gateway with an active device, a port forward, NAT64 running, the SOCKS5 server and
// a WireGuard tunnel (wireguard-go) whose routed prefix gives the device an address the relay listens on:
// - GET /metrics as Prometheus takes it: after traffic through the relay and a job run through the API,
//   promtool (Debian's prometheus package) checks the whole page, parse and lint, and the families the issue
//   asks for are there with values that follow from what the lab did;
// - MCP on the runner's unix socket through `socat UNIX-CONNECT:... STDIO`, with the official SDK's client:
//   every read tool answers what the API answers on this gateway.
import { execFile, execFileSync, spawn } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import path from 'node:path'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { eui64Address } from '../../lib/addr/ipv6.ts'
import type { Forward } from '../../lib/core/schema.ts'
import type { GatewayStatus } from '../../lib/devices/status.ts'
import type { TunnelStatus } from '../../lib/tunnels/supervisor.ts'
import { api, API_PORT, gatewayEnv, runJob, startRunner, until, type LabRunner } from './gateway.ts'
import { createLab, isRoot, type Lab } from './lab.ts'

const TARGET = '2001:db8:ff::10'
const PREFIX = '2001:db8:ea::/48'
const GW = '2001:db8:a::2'
const SERVER = '2001:db8:a::1'
const WG_PORT = 51820
const NAT64_PREFIX = '2001:db8:6464::/96'
const NAT64_POOL = '198.18.255.0/24'

/** promtool's exit code and what it said: nothing, and 0, when the page parses and lints clean. */
function promtool(text: string): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    const child = execFile('promtool', ['check', 'metrics'], { timeout: 10_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, output: `${stdout}${stderr}` })
    })
    child.stdin?.end(text)
  })
}

/** The samples of one family: labels rendered as `a=x,b=y` (values unescaped enough for the ones used here). */
function samples(text: string, name: string): Map<string, number> {
  const out = new Map<string, number>()
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (m?.[1] !== name) continue
    const labels = [...(m[2] ?? '').matchAll(/([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"/g)].map(([, k, v]) => `${k}=${v}`).join(',')
    out.set(labels, Number(m[3]))
  }
  return out
}

describe.skipIf(!isRoot())('GET /metrics checked by promtool, and MCP with the SDK client (lab)', () => {
  let lab: Lab
  let runner: LabRunner | undefined
  let env: Record<string, string> = {}
  let text = ''

  beforeAll(async () => {
    const t0 = Date.now()
    lab = await createLab({ mode: 'ipv4', devices: 1 })
    const up = lab.upstream.ns
    // The IPv6 internet behind a WireGuard server on the upstream (as in tunnels.test.ts, one tunnel).
    await lab.exec(up, 'ip', ['link', 'set', 'lo', 'up'])
    await lab.exec(up, 'ip', ['-6', 'addr', 'add', `${TARGET}/128`, 'dev', 'lo'])
    const key = () => execFileSync('wg', ['genkey'], { encoding: 'utf8' }).trim()
    const pub = (k: string) => execFileSync('wg', ['pubkey'], { input: `${k}\n`, encoding: 'utf8' }).trim()
    const serverKey = key()
    const gatewayKey = key()
    const keyFile = path.join(lab.dir, 'wga.key')
    writeFileSync(keyFile, `${gatewayKey}\n`, { mode: 0o600 })
    // Detached in the upstream namespace: the lab's teardown ends it with everything else in its namespaces.
    spawn('ip', ['netns', 'exec', up, 'wireguard-go', '--foreground', 'wgs0'], { detached: true, stdio: 'ignore' }).unref()
    await until('wgs0 in the upstream', 5000, async () => ((await lab.exec(up, 'ip', ['link', 'show', 'wgs0'], { nothrow: true })).code === 0 ? true : undefined))
    const conf = path.join(lab.dir, 'wgs0.conf')
    writeFileSync(conf, `[Interface]\nPrivateKey = ${serverKey}\nListenPort = ${WG_PORT}\n\n[Peer]\nPublicKey = ${pub(gatewayKey)}\nAllowedIPs = ${GW}/128, ${PREFIX}\n`, { mode: 0o600 })
    await lab.exec(up, 'wg', ['setconf', 'wgs0', conf])
    await lab.exec(up, 'ip', ['-6', 'addr', 'add', `${SERVER}/64`, 'dev', 'wgs0', 'nodad'])
    await lab.exec(up, 'ip', ['link', 'set', 'wgs0', 'up'])
    await lab.exec(up, 'ip', ['-6', 'route', 'add', PREFIX, 'dev', 'wgs0'])

    const configFile = path.join(lab.dir, 'dualgate.json')
    writeFileSync(configFile, JSON.stringify({
      tunnels: [{
        name: 'wga', type: 'wireguard', iface: 'wga', probe: [TARGET], privateKeyFile: keyFile, peerPublicKey: pub(serverKey),
        endpoint: `${lab.upstream.ipv4}:${WG_PORT}`, address: [`${GW}/64`], prefix: PREFIX,
      }],
    }))
    env = {
      DUALGATE_CONFIG: configFile,
      DUALGATE_TUNNEL_PROBE_INTERVAL: '1',
      DUALGATE_TUNNEL_PROBE_TIMEOUT: '1',
      DUALGATE_SOCKS5: '1',
      DUALGATE_NAT64: '1',
      DUALGATE_NAT64_PREFIX: NAT64_PREFIX,
      DUALGATE_NAT64_POOL: NAT64_POOL,
    }
    expect((await runJob(lab, 'scan-arp', [], env)).code).toBe(0)
    const acquired = await runJob(lab, 'acquire-leases', [], env)
    expect(acquired.code, acquired.stderr).toBe(0)
    const tunnels = await runJob(lab, 'tunnels', [], env)
    expect(tunnels.code, tunnels.stderr + tunnels.stdout).toBe(0)
    runner = startRunner(lab, env)
    await until('wga up', 20_000, async () => {
      const r = await api<{ tunnels: TunnelStatus[] }>(lab, 'GET', '/tunnels')
      return r.body.tunnels.find((t) => t.name === 'wga')?.state === 'up' ? true : undefined
    })
    console.info(`metrics: lab, tunnel and runner ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`)
  }, 90_000)

  afterAll(async () => {
    await runner?.stop()
    await lab?.teardown()
  })

  it('passes promtool check metrics with a device, a forward, a tunnel, relay traffic and a job run', async () => {
    const dev = lab.devices[0]
    const forward = await api<Forward>(lab, 'POST', '/forwards', { gatewayPort: 8080, deviceIp: dev.lanIpv4, devicePort: 80 })
    expect(forward.status, JSON.stringify(forward.body)).toBe(201)
    // Through the tunnel to the device's address in the routed prefix: a TCP connection through the relay.
    const address = eui64Address(PREFIX, dev.mac)
    const page = await until('the device through the tunnel', 20_000, async () => {
      const r = await lab.exec(lab.upstream.ns, 'curl', ['-sS', '--max-time', '3', `http://[${address}]/`], { nothrow: true })
      return r.code === 0 ? r.stdout.trim() : undefined
    })
    expect(page).toContain(`device ${dev.name}`)
    expect((await api(lab, 'POST', '/jobs/scan-arp/run')).status).toBe(202)
    const metrics = async () => (await lab.exec(lab.router.ns, 'curl', ['-sS', '--max-time', '5', `http://127.0.0.1:${API_PORT}/metrics`])).stdout
    text = await until('the scan-arp run and NAT64 in /metrics', 20_000, async () => {
      const t = await metrics()
      return samples(t, 'dualgate_job_runs_total').get('job_name=scan-arp') === 1 && samples(t, 'dualgate_nat64_running').get('') === 1 ? t : undefined
    })
    writeFileSync(path.join(lab.dir, 'metrics.txt'), text)

    const checked = await promtool(text)
    expect(checked.output).toBe('')
    expect(checked.code).toBe(0)
    // The check can fail: the same page with a counter renamed off *_total is a lint problem.
    const broken = await promtool(text.replaceAll('dualgate_relay_bytes_total', 'dualgate_relay_bytes'))
    expect(broken.code).not.toBe(0)
    expect(broken.output).toMatch(/dualgate_relay_bytes counter metrics should have "_total" suffix/)
  }, 60_000)

  it('has the families the issue lists, each once with HELP and TYPE, and values that follow from the lab', () => {
    const types = new Map([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map(([, name, type]) => [name, type]))
    const helps = [...text.matchAll(/^# HELP (\S+) /gm)].map(([, name]) => name)
    expect(helps).toEqual([...types.keys()])
    expect(new Set(helps).size).toBe(helps.length)
    const want: Record<string, string> = {
      dualgate_devices: 'gauge',
      dualgate_forwards: 'gauge',
      dualgate_job_runs_total: 'counter',
      dualgate_job_failures_total: 'counter',
      dualgate_job_last_run_timestamp_seconds: 'gauge',
      dualgate_job_last_run_success: 'gauge',
      process_resident_memory_bytes: 'gauge',
      dualgate_runner_event_queue_length: 'gauge',
      dualgate_runner_spool_backlog_files: 'gauge',
      dualgate_relay_listeners: 'gauge',
      dualgate_relay_tcp_connections: 'gauge',
      dualgate_relay_tcp_connections_total: 'counter',
      dualgate_relay_bytes_total: 'counter',
      dualgate_relay_refusals_total: 'counter',
      dualgate_nat64_running: 'gauge',
      dualgate_nat64_mapped_devices: 'gauge',
      dualgate_clat_running: 'gauge',
      dualgate_clat_mapped_devices: 'gauge',
      dualgate_tunnel_up: 'gauge',
      dualgate_tunnel_score: 'gauge',
      dualgate_tunnel_rx_bytes_total: 'counter',
      dualgate_socks5_listening: 'gauge',
    }
    for (const [name, type] of Object.entries(want)) expect(types.get(name), name).toBe(type)

    const one = (name: string, labels = '') => samples(text, name).get(labels)
    expect(one('dualgate_devices', 'status=active')).toBe(1)
    expect(one('dualgate_forwards', 'proto=tcp,family=both')).toBe(1)
    expect(one('dualgate_job_last_run_success', 'job_name=scan-arp')).toBe(1)
    expect(one('process_resident_memory_bytes')).toBeGreaterThan(10e6)
    expect(one('dualgate_runner_event_queue_length')).toBeGreaterThanOrEqual(0)
    expect(one('dualgate_runner_spool_backlog_files')).toBeGreaterThanOrEqual(0)
    // The device's address in the tunnel prefix: TCP 80 and 23 (the relay's defaults) at least.
    expect(one('dualgate_relay_listeners', 'proto=tcp')).toBeGreaterThanOrEqual(2)
    expect(one('dualgate_relay_tcp_connections_total')).toBeGreaterThanOrEqual(1)
    expect(one('dualgate_relay_bytes_total')).toBeGreaterThan(0)
    expect([...samples(text, 'dualgate_relay_refusals_total').keys()].sort()).toEqual(
      ['reason=connections', 'reason=connections_per_source', 'reason=udp_sessions', 'reason=udp_sessions_per_source'])
    expect(one('dualgate_nat64_running')).toBe(1)
    expect(one('dualgate_nat64_mapped_devices')).toBe(1)
    expect(one('dualgate_clat_running')).toBe(0)
    expect(one('dualgate_tunnel_up', 'tunnel=wga,type=wireguard,iface=wga')).toBe(1)
    expect(one('dualgate_tunnel_score', 'tunnel=wga,type=wireguard,iface=wga')).toBeGreaterThan(0)
    expect(one('dualgate_socks5_listening')).toBe(1)
    const forwarder = [...types.keys()].filter((n) => n.startsWith('dualgate_forward_'))
    console.info(`metrics: ${types.size} families, ${text.split('\n').filter((l) => l && !l.startsWith('#')).length} samples, ${Buffer.byteLength(text)} bytes; forwarder families: ${forwarder.length ? forwarder.join(', ') : 'none yet'}`)
  })
  it('MCP on the runner\'s socket, with the SDK client: every read tool answers what the API answers on this gateway', async () => {
    const get = async (p: string) => {
      const r = await api(lab, 'GET', p)
      expect(r.status, p).toBe(200)
      return r.body
    }
    const dev = lab.devices[0]
    const client = new Client({ name: 'dualgate-lab', version: '1.0.0' })
    await client.connect(new StdioClientTransport({ command: 'socat', args: [`UNIX-CONNECT:${path.join(gatewayEnv(lab).DUALGATE_RUN_DIR, 'mcp.sock')}`, 'STDIO'], stderr: 'pipe' }))
    try {
      const call = async (name: string, args: Record<string, unknown> = {}) => {
        const r = await client.callTool({ name, arguments: args })
        expect(r.isError, `${name}: ${JSON.stringify(r.content)}`).toBeFalsy()
        return r.structuredContent as Record<string, unknown>
      }
      // Live measurements (a tunnel's latency, byte counters) move between two calls: those are compared by
      // what does not.
      const pick = (x: unknown, keys: string[]) => Object.fromEntries(keys.map((k) => [k, (x as Record<string, unknown>)[k]]))
      const names = (x: unknown) => (x as { tunnels: { name: string; state: string }[] }).tunnels.map((t) => `${t.name} ${t.state}`)
      const checks: Record<string, () => Promise<void>> = {
        gateway_status: async () => {
          const steady = (x: unknown) => {
            const st = x as GatewayStatus
            return { devices: st.devices, runner: st.runner, interfaces: st.interfaces.map((i) => `${i.role} ${i.ifname} ${i.up}`) }
          }
          expect(steady(await call('gateway_status'))).toEqual(steady(await get('/status')))
        },
        health: async () => expect(pick(await call('health'), ['ok', 'version', 'store'])).toEqual(pick(await get('/health'), ['ok', 'version', 'store'])),
        list_devices: async () => {
          expect(await call('list_devices')).toEqual({ devices: await get('/devices') })
          expect((await call('list_devices', { status: 'active' })).devices).toMatchObject([{ mac: dev.mac, status: 'active' }])
        },
        get_device: async () => expect(await call('get_device', { mac: dev.mac })).toEqual(await get(`/devices/${dev.mac}`)),
        device_log: async () => {
          const r = await call('device_log', { mac: dev.mac, lines: 20 })
          expect(r).toEqual(await get(`/devices/${dev.mac}/log?lines=20`))
          expect((r.lines as { msg: string }[]).some((l) => l.msg.includes('active'))).toBe(true)
        },
        list_forwards: async () => {
          const r = await call('list_forwards')
          expect(r).toEqual({ forwards: await get('/forwards') })
          expect(r.forwards).toMatchObject([{ gatewayPort: 8080, deviceIp: dev.lanIpv4 }])
        },
        relay_listeners: async () => expect(pick(await call('relay_listeners'), ['rules', 'failed'])).toEqual(pick(await get('/relay'), ['rules', 'failed'])),
        nat64: async () => expect(await call('nat64')).toEqual(await get('/nat64')),
        clat: async () => expect(await call('clat')).toEqual(await get('/clat')),
        tunnels: async () => expect(names(await call('tunnels'))).toEqual(names(await get('/tunnels'))),
        ipv6_addresses: async () => expect(await call('ipv6_addresses')).toEqual(await get('/v6/address')),
        forwarder_targets: async () => expect(await call('forwarder_targets')).toEqual(await get('/forwarder')),
        list_jobs: async () => {
          const jobs = (await call('list_jobs')).jobs as { name: string; runs: number }[]
          expect(jobs.map((j) => `${j.name} ${j.runs}`)).toEqual((await get('/jobs') as { name: string; runs: number }[]).map((j) => `${j.name} ${j.runs}`))
        },
        job_runs: async () => expect(await call('job_runs', { job: 'scan-arp', limit: 1 })).toMatchObject({ job: 'scan-arp', runs: 1, recent: [{ job: 'scan-arp', ok: true }] }),
        diagnose: async () => {
          const checks = (await call('diagnose')).checks as { id: string; status: string }[]
          expect(checks.find((c) => c.id === 'api')?.status).toBe('pass')
          expect(checks.find((c) => c.id === 'nft')?.status).toBe('pass')
        },
      }
      const { tools } = await client.listTools()
      expect(tools.map((t) => t.name).sort()).toEqual(Object.keys(checks).sort())
      for (const t of tools) {
        try {
          await checks[t.name]()
        } catch (err) {
          throw new Error(`tool ${t.name}: ${(err as Error).message}`)
        }
      }
    } finally {
      await client.close()
    }
  }, 60_000)
})
