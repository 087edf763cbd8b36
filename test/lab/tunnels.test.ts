// Tunnels on the host, through wireguard-go (this kernel has no WireGuard; the kernel lab runs the kernel's):
// the router of an IPv4-only lab gets two WireGuard tunnels to servers on its upstream, which hold the
// lab's "IPv6 internet" (2001:db8:ff::10: HTTP, UDP echo, probe target). The tunnels job makes them; the
// runner measures them through each tunnel only, moves the default IPv6 route when the primary fails,
// and moves it back after the hold time. Faults: 100 % loss, ICMPv6 unreachable, 20 % loss.
import { execFileSync, spawn } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { eui64Address } from '../../lib/addr/ipv6.ts'
import type { TunnelOutcome } from '../../lib/tunnels/reconcile.ts'
import type { TunnelStatus, V6Addresses } from '../../lib/tunnels/supervisor.ts'
import { api, API_PORT, API_TOKEN, ROOT, runJob, startRunner, until, type LabRunner } from './gateway.ts'
import { createLab, isRoot, type Lab } from './lab.ts'

const TARGET = '2001:db8:ff::10'
const PEER = path.join(ROOT, 'test/fixtures/tunnel-peer.mjs')
const INTERVAL_S = 1
const DOWN = 3
const UP = 2
const HOLD_S = 6

interface Server { name: string; port: number; gw: string; server: string; iface: string; prefix?: string }
const SERVERS: Server[] = [
  // wga also brings a routed prefix, in which the LAN device gets its address.
  { name: 'wga', port: 51820, gw: '2001:db8:a::2', server: '2001:db8:a::1', iface: 'wgs0', prefix: '2001:db8:ea::/48' },
  { name: 'wgb', port: 51821, gw: '2001:db8:b::2', server: '2001:db8:b::1', iface: 'wgs1' },
]

let lab: Lab
let runner: LabRunner | undefined
const pids: number[] = []
let configFile = ''
let env: Record<string, string> = {}

const key = () => execFileSync('wg', ['genkey'], { encoding: 'utf8' }).trim()
const pub = (k: string) => execFileSync('wg', ['pubkey'], { input: `${k}\n`, encoding: 'utf8' }).trim()

function writeConfig(tunnels: unknown[]): void {
  writeFileSync(configFile, JSON.stringify({ tunnels }))
}

function startIn(ns: string, cmd: string, args: string[]): number {
  const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { detached: true, stdio: 'ignore' })
  child.unref()
  if (!child.pid) throw new Error(`could not start ${cmd}`)
  pids.push(child.pid)
  return child.pid
}

async function tunnels(): Promise<Record<string, TunnelStatus> & { failovers: number }> {
  const r = await api<{ tunnels: TunnelStatus[]; failovers: number }>(lab, 'GET', '/tunnels')
  return Object.assign(Object.fromEntries(r.body.tunnels.map((t) => [t.name, t])), { failovers: r.body.failovers }) as Record<string, TunnelStatus> & { failovers: number }
}

const defaultDev = async () => {
  const r = await lab.exec(lab.router.ns, 'ip', ['-j', '-6', 'route', 'show', 'default', 'proto', '78'])
  return (JSON.parse(r.stdout || '[]') as { dev: string }[]).map((x) => x.dev)
}

const upstreamNft = (args: string[]) => lab.exec(lab.upstream.ns, 'nft', args)

describe.skipIf(!isRoot())('tunnels through wireguard-go: reconcile, health, failover', () => {
  const gatewayKeys: Record<string, string> = {}
  let baseTunnels: Record<string, unknown>[] = []

  beforeAll(async () => {
    lab = await createLab({ mode: 'ipv4', devices: 1 })
    const up = lab.upstream.ns
    await lab.exec(up, 'ip', ['link', 'set', 'lo', 'up'])
    await lab.exec(up, 'ip', ['-6', 'addr', 'add', `${TARGET}/128`, 'dev', 'lo'])
    for (const s of SERVERS) {
      const serverKey = key()
      gatewayKeys[s.name] = key()
      const keyFile = path.join(lab.dir, `${s.name}.key`)
      writeFileSync(keyFile, `${gatewayKeys[s.name]}\n`, { mode: 0o600 })
      startIn(up, 'wireguard-go', ['--foreground', s.iface])
      await until(`${s.iface} in the upstream`, 5000, async () => ((await lab.exec(up, 'ip', ['link', 'show', s.iface], { nothrow: true })).code === 0 ? true : undefined))
      const conf = path.join(lab.dir, `${s.iface}.conf`)
      const allowed = [`${s.gw}/128`, ...(s.prefix ? [s.prefix] : [])].join(', ')
      writeFileSync(conf, `[Interface]\nPrivateKey = ${serverKey}\nListenPort = ${s.port}\n\n[Peer]\nPublicKey = ${pub(gatewayKeys[s.name])}\nAllowedIPs = ${allowed}\n`, { mode: 0o600 })
      await lab.exec(up, 'wg', ['setconf', s.iface, conf])
      await lab.exec(up, 'ip', ['-6', 'addr', 'add', `${s.server}/64`, 'dev', s.iface, 'nodad'])
      await lab.exec(up, 'ip', ['link', 'set', s.iface, 'up'])
      if (s.prefix) await lab.exec(up, 'ip', ['-6', 'route', 'add', s.prefix, 'dev', s.iface])
      ;(s as Server & { serverPub?: string }).serverPub = pub(serverKey)
    }
    // The IPv6 internet's DNS, for the SOCKS5 server's names.
    startIn(up, 'dnsmasq', ['--keep-in-foreground', '--conf-file=/dev/null', `--pid-file=${path.join(lab.dir, 'dns6.pid')}`, '--no-resolv', '--no-hosts',
      '--bind-interfaces', `--listen-address=${TARGET}`, '--port=53', '--local=/test/', `--host-record=internet.test,${TARGET}`])
    const ready = path.join(lab.dir, 'peer.ready')
    startIn(up, process.execPath, [PEER, 'serve', '--ready', ready])
    await until('the IPv6 internet', 10_000, async () => ((await lab.exec(up, 'test', ['-e', ready], { nothrow: true })).code === 0 ? true : undefined))
    await upstreamNft(['add', 'table', 'inet', 'fault'])
    await upstreamNft(['add', 'chain', 'inet', 'fault', 'in', '{ type filter hook input priority 0; }'])

    baseTunnels = SERVERS.map((s, i) => ({
      name: s.name,
      type: 'wireguard',
      iface: s.name,
      priority: i,
      probe: [TARGET],
      privateKeyFile: path.join(lab.dir, `${s.name}.key`),
      peerPublicKey: (s as Server & { serverPub?: string }).serverPub,
      endpoint: `${lab.upstream.ipv4}:${s.port}`,
      address: [`${s.gw}/64`],
      ...(s.prefix ? { prefix: s.prefix } : {}),
    }))
    configFile = path.join(lab.dir, 'tunnels.json')
    writeConfig(baseTunnels)
    env = {
      DUALGATE_CONFIG: configFile,
      DUALGATE_TUNNEL_PROBE_INTERVAL: String(INTERVAL_S),
      DUALGATE_TUNNEL_PROBE_TIMEOUT: '1',
      DUALGATE_TUNNEL_DOWN: String(DOWN),
      DUALGATE_TUNNEL_UP: String(UP),
      DUALGATE_TUNNEL_HOLD_TIME: String(HOLD_S),
      DUALGATE_SOCKS5: '1',
      DUALGATE_SOCKS5_DNS: TARGET,
    }
    // The LAN device becomes active as on any gateway: discovered, then given its identity upstream.
    await runJob(lab, 'scan-arp', [], env)
    const acquired = await runJob<{ active?: number }>(lab, 'acquire-leases', [], env)
    expect(acquired.code, acquired.stderr).toBe(0)
  }, 90_000)

  afterAll(async () => {
    await runner?.stop()
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGTERM')
      } catch {}
    }
    await lab?.teardown()
  })

  it('plans in a dry run without changing anything, and never prints a private key', async () => {
    const r = await runJob<{ tunnels: TunnelOutcome[] }>(lab, 'tunnels', ['--dry-run'], env)
    expect(r.code, r.stderr).toBe(0)
    expect(r.stderr).toContain('wireguard-go --foreground wga')
    expect(r.stderr).toMatch(/^wg syncconf wga \S+\/wireguard\/wga\.conf$/m)
    for (const k of Object.values(gatewayKeys)) expect(r.stdout + r.stderr).not.toContain(k)
    expect((await lab.exec(lab.router.ns, 'ip', ['link', 'show', 'wga'], { nothrow: true })).code).not.toBe(0)
  })

  it('creates both tunnels with wireguard-go, and each carries traffic from its own address', async () => {
    const r = await runJob<{ tunnels: TunnelOutcome[] }>(lab, 'tunnels', [], env)
    expect(r.code, r.stderr + r.stdout).toBe(0)
    expect(r.result.tunnels.map((t) => [t.name, t.action, t.backend])).toEqual([['wga', 'created', 'wireguard-go'], ['wgb', 'created', 'wireguard-go']])
    for (const s of SERVERS) {
      const page = await lab.exec(lab.router.ns, 'curl', ['-sS', '--max-time', '5', '--interface', s.name, `http://[${TARGET}]:8080/`])
      expect(page.stdout.trim()).toBe(`you are ${s.gw}`)
    }
  })

  it('changes nothing on a second run; its dry run prints no command', async () => {
    const r = await runJob<{ tunnels: TunnelOutcome[] }>(lab, 'tunnels', [], env)
    expect(r.result.tunnels.map((t) => t.action)).toEqual(['unchanged', 'unchanged'])
    const dry = await runJob(lab, 'tunnels', ['--dry-run'], env)
    expect(dry.stderr.split('\n').filter((l) => /^(ip|wg|wireguard-go) /.test(l))).toEqual([])
  })

  it('measures both in the runner and routes IPv6 through the preferred one', async () => {
    runner = startRunner(lab, env)
    const t = await until('both tunnels up', 20_000, async () => {
      const s = await tunnels()
      return s.wga?.state === 'up' && s.wgb?.state === 'up' && s.wga.primary ? s : undefined
    })
    expect(t.wga).toMatchObject({ backend: 'wireguard-go', score: 100, lossPct: 0, primary: true })
    expect(t.wgb.primary).toBe(false)
    expect(t.wga.handshakeAgeS).toBeLessThan(60)
    expect(t.wga.txBytes).toBeGreaterThan(0)
    expect(await defaultDev()).toEqual(['wga'])
    const page = await lab.exec(lab.router.ns, 'curl', ['-sS', '--max-time', '5', `http://[${TARGET}]:8080/`])
    expect(page.stdout.trim()).toBe(`you are ${SERVERS[0].gw}`)
  }, 40_000)

  it('reports the tunnels in /metrics, IPv6 reachability in /health and the tunnel addresses in /v6/address', async () => {
    const metrics = (await lab.exec(lab.router.ns, 'curl', ['-sS', '--max-time', '5', `http://127.0.0.1:${API_PORT}/metrics`])).stdout
    const sample = (name: string, t: string) => new RegExp(`^${name}\\{tunnel="${t}",type="wireguard",iface="${t}"\\} (\\S+)$`, 'm').exec(metrics)?.[1]
    expect(metrics).toContain('# TYPE dualgate_tunnel_up gauge\n')
    expect([sample('dualgate_tunnel_up', 'wga'), sample('dualgate_tunnel_up', 'wgb')]).toEqual(['1', '1'])
    expect([sample('dualgate_tunnel_primary', 'wga'), sample('dualgate_tunnel_primary', 'wgb')]).toEqual(['1', '0'])
    expect(Number(sample('dualgate_tunnel_latency_seconds', 'wga'))).toBeGreaterThan(0)
    expect(Number(sample('dualgate_tunnel_tx_bytes_total', 'wga'))).toBeGreaterThan(0)
    expect(metrics).toMatch(/^dualgate_tunnel_failovers_total 0$/m)
    const health = await api<{ ok: boolean; tunnels: { ipv6: unknown } }>(lab, 'GET', '/health')
    expect(health.status).toBe(200)
    expect(health.body.tunnels.ipv6).toEqual({ reachable: true, primary: 'wga', tunnels: { up: 2, total: 2 } })
    const v6 = await api<V6Addresses>(lab, 'GET', '/v6/address')
    expect(v6.body.addresses).toEqual([
      { address: SERVERS[0].gw, prefixlen: 64, tunnel: 'wga', primary: true, reachable: true },
      { address: SERVERS[1].gw, prefixlen: 64, tunnel: 'wgb', primary: false, reachable: true },
    ])
    // The device addresses in wga's prefix are the devices', not this host's: listed as a prefix only.
    expect(v6.body.prefixes).toEqual([{ prefix: SERVERS[0].prefix, tunnel: 'wga', reachable: true }])
  })

  it('reaches an IPv4-only LAN device from the IPv6 internet at its address in the tunnel prefix', async () => {
    const dev = lab.devices[0]
    const address = eui64Address(SERVERS[0].prefix!, dev.mac)
    await until(`${address} on wga`, 15_000, async () => ((await lab.exec(lab.router.ns, 'ip', ['-6', 'addr', 'show', 'dev', 'wga'])).stdout.includes(`${address}/128`) ? true : undefined))
    const page = await until('the device through the tunnel', 15_000, async () => {
      const r = await lab.exec(lab.upstream.ns, 'curl', ['-sS', '--max-time', '3', `http://[${address}]/`], { nothrow: true })
      return r.code === 0 ? r.stdout.trim() : undefined
    })
    expect(page).toBe(`device ${dev.name} peer ${lab.router.lanIp}`)
  }, 40_000)

  it('offers a local IPv4 service on the tunnels\' IPv6 (proxy mode: /ports), and takes it back', async () => {
    const ready = path.join(lab.dir, 'local.ready')
    startIn(lab.router.ns, process.execPath, [PEER, 'serve', '--ready', ready])
    await until('the local service', 10_000, async () => ((await lab.exec(lab.router.ns, 'test', ['-e', ready], { nothrow: true })).code === 0 ? true : undefined))
    expect((await api(lab, 'POST', '/ports', { port: 8081, targetPort: 8080 }, '')).status).toBe(401)
    const added = await api<{ id: string; port: number }>(lab, 'POST', '/ports', { port: 8081, targetPort: 8080 })
    expect(added.status).toBe(201)
    expect((await api(lab, 'POST', '/ports', { port: 8081 })).status).toBe(409)
    for (const s of SERVERS) {
      const page = await until(`port 8081 on ${s.gw}`, 15_000, async () => {
        const r = await lab.exec(lab.upstream.ns, 'curl', ['-sS', '--max-time', '3', `http://[${s.gw}]:8081/`], { nothrow: true })
        return r.code === 0 ? r.stdout.trim() : undefined
      })
      // The relay connected to the service from the loopback: the local service never sees IPv6.
      expect(page).toMatch(/^you are (::ffff:)?127\.0\.0\.1$/)
    }
    expect((await api<{ port: number }[]>(lab, 'GET', '/ports')).body.map((p) => p.port)).toEqual([8081])
    expect((await api(lab, 'DELETE', `/ports/${added.body.id}`)).status).toBe(200)
    await until('port 8081 closed', 15_000, async () => ((await lab.exec(lab.upstream.ns, 'curl', ['-sS', '--max-time', '3', `http://[${SERVERS[0].gw}]:8081/`], { nothrow: true })).code !== 0 ? true : undefined))
  }, 60_000)

  it('fetches a page from the IPv6 internet by name through the tunnel with curl --socks5-hostname', async () => {
    const page = await until('SOCKS5 on 127.0.0.1:1080', 15_000, async () => {
      const r = await lab.exec(lab.router.ns, 'curl', ['-sS', '--max-time', '5', '--socks5-hostname', '127.0.0.1:1080', 'http://internet.test:8080/'], { nothrow: true })
      return r.code === 0 ? r.stdout.trim() : undefined
    })
    // The name resolved to the AAAA, and the connection left through the primary tunnel from its address.
    expect(page).toBe(`you are ${SERVERS[0].gw}`)
  }, 30_000)

  it(`fails over within down × interval + 2 s of 100 % loss, and a running flow continues over the backup; probes never leave by another link`, async () => {
    // Echo requests from wga's address that leave by any other link (a probe that escaped its tunnel).
    await lab.exec(lab.router.ns, 'nft', ['add', 'table', 'inet', 'probes'])
    await lab.exec(lab.router.ns, 'nft', ['add', 'chain', 'inet', 'probes', 'out', '{ type filter hook output priority 0; }'])
    await lab.exec(lab.router.ns, 'nft', ['add', 'rule', 'inet', 'probes', 'out', 'oifname', '!=', 'wga', 'icmpv6', 'type', 'echo-request', 'ip6', 'daddr', TARGET, 'meta', 'l4proto', 'ipv6-icmp', 'ip6', 'saddr', SERVERS[0].gw, 'counter'])
    const flowMs = 15_000
    const flow = lab.exec(lab.router.ns, process.execPath, [PEER, 'flow', '--to', TARGET, '--ms', String(flowMs), '--every', '50'], { timeoutMs: flowMs + 10_000 })
    await new Promise((r) => setTimeout(r, 2000))
    const faultAt = 2000
    await upstreamNft(['add', 'rule', 'inet', 'fault', 'in', 'udp', 'dport', String(SERVERS[0].port), 'drop'])
    const { replies, sent } = JSON.parse((await flow).stdout) as { sent: number; replies: number[] }
    const resumed = replies.find((t) => t > faultAt + 200)
    expect(resumed, `no reply after the fault (${replies.length} of ${sent})`).toBeDefined()
    const gapS = (resumed! - faultAt) / 1000
    console.info(`tunnels: 100 % loss on the primary; the flow resumed over the backup after ${gapS.toFixed(1)} s (target ${DOWN * INTERVAL_S + 2} s)`)
    expect(gapS).toBeLessThanOrEqual(DOWN * INTERVAL_S + 2)
    const s = await tunnels()
    expect(s.wga.state).toBe('down')
    expect(s.wgb.primary).toBe(true)
    expect(s.failovers).toBe(1)
    expect(await defaultDev()).toEqual(['wgb'])
    const counter = await lab.exec(lab.router.ns, 'nft', ['list', 'chain', 'inet', 'probes', 'out'])
    expect(counter.stdout).toMatch(/counter packets 0 bytes 0/)
  }, 40_000)

  it('fails back only after the preferred tunnel has been healthy for the hold time', async () => {
    await upstreamNft(['flush', 'chain', 'inet', 'fault', 'in'])
    const restored = Date.now()
    const upAt = await until('wga up again', 20_000, async () => ((await tunnels()).wga.state === 'up' ? Date.now() : undefined))
    expect((await tunnels()).wgb.primary).toBe(true)
    const backAt = await until('traffic back on wga', 30_000, async () => ((await defaultDev())[0] === 'wga' ? Date.now() : undefined))
    const heldS = (backAt - upAt) / 1000
    console.info(`tunnels: wga healthy ${((upAt - restored) / 1000).toFixed(1)} s after the fault ended; failback ${heldS.toFixed(1)} s later (hold ${HOLD_S} s)`)
    expect(heldS).toBeGreaterThanOrEqual(HOLD_S - 1.5)
    expect(heldS).toBeLessThan(HOLD_S + 5)
    expect((await tunnels()).failovers).toBe(2)
  }, 60_000)

  it('counts an ICMPv6 Destination Unreachable as a failure', async () => {
    await upstreamNft(['add', 'rule', 'inet', 'fault', 'in', 'iifname', 'wgs1', 'icmpv6', 'type', 'echo-request', 'reject', 'with', 'icmpv6', 'type', 'addr-unreachable'])
    const direct = await lab.exec(lab.router.ns, 'ping', ['-6', '-n', '-c', '1', '-W', '1', '-I', 'wgb', TARGET], { nothrow: true })
    expect(direct.stdout).toContain('Destination unreachable')
    const s = await until('wgb down on unreachables', 15_000, async () => {
      const t = await tunnels()
      return t.wgb.state === 'down' ? t : undefined
    })
    expect(s.wgb.score).toBeLessThan(30)
    expect(s.wga.primary).toBe(true)
    await upstreamNft(['flush', 'chain', 'inet', 'fault', 'in'])
    await until('wgb up again', 15_000, async () => ((await tunnels()).wgb.state === 'up' ? true : undefined))
  }, 40_000)

  it('does not flap under 20 % loss on the primary', async () => {
    await upstreamNft(['add', 'rule', 'inet', 'fault', 'in', 'udp', 'dport', String(SERVERS[0].port), 'numgen', 'random', 'mod', '10', '<', '2', 'drop'])
    const states = new Set<string>()
    const until20 = Date.now() + 20_000
    while (Date.now() < until20) {
      const s = await tunnels()
      states.add(s.wga.state)
      expect(s.wga.primary).toBe(true)
      await new Promise((r) => setTimeout(r, 500))
    }
    await upstreamNft(['flush', 'chain', 'inet', 'fault', 'in'])
    console.info(`tunnels: 20 s of 20 % loss on wga: states seen ${[...states].join(', ')}`)
    expect(states.has('down')).toBe(false)
  }, 40_000)

  it('is set down and up again through the API with the token, and never becomes primary while down', async () => {
    expect((await api(lab, 'POST', '/tunnels/wga/down', undefined, '')).status).toBe(401)
    expect((await api(lab, 'POST', '/tunnels/nope/down', undefined, API_TOKEN)).status).toBe(404)
    expect((await api(lab, 'POST', '/tunnels/wga/down')).status).toBe(202)
    await until('wga set down and traffic on wgb', 20_000, async () => {
      const s = await tunnels()
      const link = await lab.exec(lab.router.ns, 'ip', ['-j', 'link', 'show', 'wga'])
      return s.wga.adminDown && !(JSON.parse(link.stdout) as { flags: string[] }[])[0].flags.includes('UP') && (await defaultDev())[0] === 'wgb' ? true : undefined
    })
    expect((await api(lab, 'POST', '/tunnels/wga/up')).status).toBe(202)
    await until('wga primary again', 30_000, async () => ((await defaultDev())[0] === 'wga' ? true : undefined))
  }, 60_000)

  it('follows a config reload: an external tunnel is routed and used for device addresses; a tunnel that left the config is removed (link, rules, table, process), an external one only loses what we added', async () => {
    const hup = () => process.kill(runner!.pid, 'SIGHUP')
    const rules6 = async () => (await lab.exec(lab.router.ns, 'ip', ['-6', 'rule', 'show'])).stdout
    const ext0 = async () => (await lab.exec(lab.router.ns, 'ip', ['-6', 'addr', 'show', 'dev', 'ext0'])).stdout
    const deviceOnExt = eui64Address('2001:db8:e::/48', lab.devices[0].mac)
    await lab.exec(lab.router.ns, 'ip', ['link', 'add', 'ext0', 'type', 'veth', 'peer', 'name', 'ext1'])
    await lab.exec(lab.router.ns, 'ip', ['link', 'set', 'ext0', 'up'])
    writeConfig([...baseTunnels, { name: 'ext', type: 'external', iface: 'ext0', priority: 5, probe: [TARGET], prefix: '2001:db8:e::/48' }])
    hup()
    // The runner runs the tunnels job on a reload that changed tunnels, and its relay adds the device address.
    await until('ext routed, and the device address on ext0', 20_000, async () => ((await rules6()).includes('from 2001:db8:e::/48 lookup') && (await ext0()).includes(deviceOnExt) ? true : undefined))
    const again = await runJob<{ tunnels: TunnelOutcome[] }>(lab, 'tunnels', [], env)
    expect(again.result.tunnels.map((t) => [t.name, t.action])).toEqual([['wga', 'unchanged'], ['wgb', 'unchanged'], ['ext', 'unchanged']])
    const list = await runJob<{ rows: { name: string; link: string; primary: boolean }[] }>(lab, 'tunnels', ['list'], env)
    expect(list.result.rows.map((r) => [r.name, r.link, r.primary])).toEqual([['wga', 'up', true], ['wgb', 'up', false], ['ext', 'up', false]])
    expect(await rules6()).toContain('from 2001:db8:b::2 lookup')

    const wgbPid = Number((await lab.exec(lab.router.ns, 'pgrep', ['-f', 'wireguard-go --foreground wgb'])).stdout.trim().split('\n')[0])
    writeConfig(baseTunnels.slice(0, 1))
    hup()
    await until('wgb and ext gone', 20_000, async () => ((await lab.exec(lab.router.ns, 'ip', ['link', 'show', 'wgb'], { nothrow: true })).code !== 0 && !(await rules6()).includes('oif ext0') ? true : undefined))
    const after = await runJob<{ tunnels: TunnelOutcome[] }>(lab, 'tunnels', [], env)
    expect(after.result.tunnels.map((t) => [t.name, t.action])).toEqual([['wga', 'unchanged']])
    expect((await lab.exec(lab.router.ns, 'ip', ['link', 'show', 'ext0'], { nothrow: true })).code).toBe(0)
    const rules = await rules6()
    expect(rules).not.toMatch(/2001:db8:e::\/48|2001:db8:b::2|oif wgb|oif ext0/)
    expect(rules).toContain('oif wga')
    expect(await ext0()).not.toContain('2001:db8:e:')
    const tables = (await lab.exec(lab.router.ns, 'ip', ['-6', 'route', 'show', 'table', 'all'])).stdout
    expect(tables).not.toMatch(/dev (wgb|ext0) table 9\d\d/)
    await until('wireguard-go of wgb gone', 5000, async () => {
      try {
        process.kill(wgbPid, 0)
        return undefined
      } catch {
        return true
      }
    })
  }, 90_000)
})
