// dualgate's tunnels on a full kernel (runs in the kernel lab's VM): a 6in4 tunnel to a broker on the
// IPv4-only upstream and a kernel WireGuard tunnel beside it, made by reconcileTunnels and watched by the
// tunnel supervisor, both in this process with commands run in the router namespace (a job's process
// start costs ~15 s in emulation). netem adds latency the score must show; 6in4 failing moves the default
// IPv6 route to WireGuard and back after the hold time; the 6in4 local address follows the WAN.
import { execFileSync, spawn } from 'node:child_process'
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadConfig, type Config } from '../../lib/core/config.ts'
import type { Sh } from '../../lib/core/exec.ts'
import { createLogger } from '../../lib/core/log.ts'
import { openStore, type Store } from '../../lib/core/store.ts'
import { startSupervisor, type Supervisor } from '../../lib/core/supervisor.ts'
import { eui64Address } from '../../lib/addr/ipv6.ts'
import { relayView, syncTunnelAddresses } from '../../lib/reach/relay-view.ts'
import { reconcileTunnels } from '../../lib/tunnels/reconcile.ts'
import { tunnelSupervisor, type TunnelStatus } from '../../lib/tunnels/supervisor.ts'
import { connectAgent } from '../../bench/netns.ts'
import { ROOT, until } from '../lab/gateway.ts'
import { createLab, type Lab } from '../lab/lab.ts'
import { nsSh } from '../lab/ns-sh.ts'

const TARGET = '2001:db8:ff::10'
// Process starts are slow in emulation (a check here takes about a second of its own): 3 s between checks.
const INTERVAL_S = 3
const DOWN = 3
const HOLD_S = 4
const HE = { iface: 'he0', gw: '2001:db8:100::2', broker: '2001:db8:100::1', prefix: '2001:db8:200::/48' }
const WG = { iface: 'wgk', gw: '2001:db8:101::2', server: '2001:db8:101::1', port: 51820 }

let lab: Lab
let sh: Sh
let store: Store
let config: Config
let supervisor: Supervisor | undefined
let configFile: string
let peerPid: number | undefined
const log = createLogger({ tag: 'kernel-lab', level: 'warn' })

function load(tunnels: unknown[]): Config {
  writeFileSync(configFile, JSON.stringify({ tunnels }))
  return loadConfig({
    uciFile: path.join(lab.dir, 'no-uci'),
    env: {
      DUALGATE_CONFIG: configFile,
      DUALGATE_WAN_IF: 'eth0',
      DUALGATE_DATA_DIR: path.join(lab.dir, 'dg'),
      DUALGATE_RUN_DIR: path.join(lab.dir, 'dg-run'),
      DUALGATE_TUNNEL_PROBE_INTERVAL: String(INTERVAL_S),
      DUALGATE_TUNNEL_PROBE_TIMEOUT: '1',
      DUALGATE_TUNNEL_DOWN: String(DOWN),
      DUALGATE_TUNNEL_UP: '2',
      DUALGATE_TUNNEL_HOLD_TIME: String(HOLD_S),
      DUALGATE_TUNNEL_WINDOW: '2',
    },
  }).config
}

async function status(): Promise<Record<string, TunnelStatus>> {
  const route = supervisor!.routes.find((r) => r.method === 'GET' && r.path === '/tunnels')!
  const body = (await route.handler(undefined as never, undefined as never)) as { tunnels: TunnelStatus[] }
  return Object.fromEntries(body.tunnels.map((t) => [t.name, t]))
}

const defaultDev = async () => (JSON.parse((await lab.exec(lab.router.ns, 'ip', ['-j', '-6', 'route', 'show', 'default', 'proto', '78'])).stdout || '[]') as { dev: string }[]).map((r) => r.dev)
const sitOf = async () => (JSON.parse((await lab.exec(lab.router.ns, 'ip', ['-j', '-d', 'link', 'show', HE.iface])).stdout) as { linkinfo: { info_data: { local: string; remote: string } } }[])[0].linkinfo.info_data

let tunnels: Record<string, unknown>[]

beforeAll(async () => {
  lab = await createLab({ mode: 'ipv4', devices: 1 })
  sh = nsSh(lab.router.ns)
  const up = lab.upstream.ns
  const x = (args: string[]) => lab.exec(up, 'ip', args)
  await x(['link', 'set', 'lo', 'up'])
  await x(['-6', 'addr', 'add', `${TARGET}/128`, 'dev', 'lo'])
  // The broker: a sit endpoint, and the routed /48 through it.
  await x(['link', 'add', 'name', 'hebroker', 'type', 'sit', 'local', lab.upstream.ipv4, 'remote', lab.router.wanIpv4, 'ttl', '64'])
  await x(['-6', 'addr', 'add', `${HE.broker}/64`, 'dev', 'hebroker', 'nodad'])
  await x(['link', 'set', 'hebroker', 'up'])
  await x(['-6', 'route', 'add', HE.prefix, 'dev', 'hebroker'])
  // The WireGuard server.
  const serverKey = execFileSync('wg', ['genkey'], { encoding: 'utf8' }).trim()
  const gwKey = execFileSync('wg', ['genkey'], { encoding: 'utf8' }).trim()
  const pub = (k: string) => execFileSync('wg', ['pubkey'], { input: `${k}\n`, encoding: 'utf8' }).trim()
  const conf = path.join(lab.dir, 'wgsrv.conf')
  writeFileSync(conf, `[Interface]\nPrivateKey = ${serverKey}\nListenPort = ${WG.port}\n\n[Peer]\nPublicKey = ${pub(gwKey)}\nAllowedIPs = ${WG.gw}/128\n`, { mode: 0o600 })
  await x(['link', 'add', 'wgsrv', 'type', 'wireguard'])
  await lab.exec(up, 'wg', ['setconf', 'wgsrv', conf])
  await x(['-6', 'addr', 'add', `${WG.server}/64`, 'dev', 'wgsrv', 'nodad'])
  await x(['link', 'set', 'wgsrv', 'up'])
  await lab.exec(up, 'sysctl', ['-qw', 'net.ipv6.conf.all.forwarding=1'])
  const ready = path.join(lab.dir, 'peer.ready')
  const peer = spawn('ip', ['netns', 'exec', up, process.execPath, path.join(ROOT, 'test/fixtures/tunnel-peer.mjs'), 'serve', '--ready', ready], { detached: true, stdio: 'ignore' })
  peer.unref()
  peerPid = peer.pid
  await until('the IPv6 internet', 30_000, async () => (existsSync(ready) ? true : undefined))

  mkdirSync(path.join(lab.dir, 'dg'), { recursive: true })
  const keyFile = path.join(lab.dir, 'wgk.key')
  writeFileSync(keyFile, `${gwKey}\n`, { mode: 0o600 })
  configFile = path.join(lab.dir, 'tunnels.json')
  tunnels = [
    { name: 'he', type: '6in4', iface: HE.iface, remote: lab.upstream.ipv4, address: [`${HE.gw}/64`], prefix: HE.prefix, priority: 0, probe: [TARGET] },
    { name: 'wg', type: 'wireguard', iface: WG.iface, privateKeyFile: keyFile, peerPublicKey: pub(serverKey), endpoint: `${lab.upstream.ipv4}:${WG.port}`, address: [`${WG.gw}/64`], priority: 1, probe: [TARGET] },
  ]
  config = load(tunnels)
  store = openStore({ dataDir: config.dataDir, backupCount: 0, backupInterval: 0 })
})

afterAll(async () => {
  await supervisor?.close()
  if (peerPid) process.kill(peerPid, 'SIGTERM')
  await lab?.teardown()
})

describe('6in4 and kernel WireGuard made by dualgate', () => {
  it('creates both: a sit link from the WAN address with a pinned route to the broker, and kernel WireGuard', async () => {
    const out = await reconcileTunnels({ sh, config, store, log })
    expect(out.map((o) => [o.name, o.action, o.backend])).toEqual([['he', 'created', undefined], ['wg', 'created', 'kernel']])
    expect(await sitOf()).toMatchObject({ local: lab.router.wanIpv4, remote: lab.upstream.ipv4 })
    const pinned = await lab.exec(lab.router.ns, 'ip', ['-4', 'route', 'show', `${lab.upstream.ipv4}/32`, 'proto', '78'])
    expect(pinned.stdout).toContain('dev eth0')
  })

  it('each carries ICMPv6 and TCP from its own address', async () => {
    for (const [iface, gw] of [[HE.iface, HE.gw], [WG.iface, WG.gw]]) {
      await lab.exec(lab.router.ns, 'ping', ['-6', '-n', '-c', '2', '-W', '3', '-I', iface, TARGET])
      const page = await lab.exec(lab.router.ns, 'curl', ['-sS', '--max-time', '10', '--interface', iface, `http://[${TARGET}]:8080/`])
      expect(page.stdout.trim()).toBe(`you are ${gw}`)
    }
  })

  it('a second run changes nothing', async () => {
    const out = await reconcileTunnels({ sh, config, store, log })
    expect(out.map((o) => o.action)).toEqual(['unchanged', 'unchanged'])
  })

  it('an IPv4-only LAN device is reached from the IPv6 internet at its address in the 6in4 prefix', async () => {
    // The device's identity upstream is not the point here (jobs cost ~15 s each in the VM): it is recorded
    // active, and the relay's plan and addresses come from the product's code; the relay runs in the router.
    const dev = lab.devices[0]
    const at = new Date().toISOString()
    await store.update((d) => {
      d.devices[dev.mac] = { mac: dev.mac, status: 'active', statusChangedAt: at, firstSeen: at, lastSeen: at, lanIpv4: dev.lanIpv4, wanIpv6: [], attempts: 0 }
    })
    const view = await relayView(sh, config, await store.read())
    expect(await syncTunnelAddresses(sh, view)).toBe(1)
    const address = eui64Address(HE.prefix, dev.mac)
    expect(view.rules).toContainEqual({ listen: { host: address, port: 80 }, target: { host: dev.lanIpv4, port: 80 }, proto: 'tcp' })
    const child = spawn('ip', ['netns', 'exec', lab.router.ns, process.execPath, '--import=tsx', path.join(ROOT, 'test/fixtures/relay-agent.ts')], { stdio: 'pipe' })
    // A tsx process start takes about 15 s in emulation.
    const relay = await connectAgent(child, 'relay agent', 90_000).catch((err: unknown) => {
      child.kill('SIGKILL')
      throw err
    })
    try {
      const applied = await relay.call<{ failed: unknown[] }>('relay.start', { opts: {}, rules: view.rules }, 60_000)
      expect(applied.failed).toEqual([])
      const page = await lab.exec(lab.upstream.ns, 'curl', ['-sS', '--max-time', '10', `http://[${address}]/`])
      expect(page.stdout.trim()).toBe(`device ${dev.name} peer ${lab.router.lanIp}`)
    } finally {
      await relay.stop()
    }
  }, 120_000)

  it('measures latency: 150 ms of netem on the WAN gives the score of the 100-200 ms tier (75)', async () => {
    supervisor = startSupervisor(tunnelSupervisor, { store, config: () => config, sh, log: () => log })
    const before = await until('both up', 30_000, async () => {
      const s = await status()
      return s.he?.state === 'up' && s.wg?.state === 'up' && s.he.primary ? s : undefined
    })
    expect(before.he.score).toBe(100)
    expect(before.wg.backend).toBe('kernel')
    expect(await defaultDev()).toEqual([HE.iface])
    await lab.exec(lab.router.ns, 'tc', ['qdisc', 'add', 'dev', 'eth0', 'root', 'netem', 'delay', '150ms'])
    try {
      const slow = await until('the delay in the score', 30_000, async () => {
        const s = await status()
        return s.he.latencyMs !== undefined && s.he.latencyMs >= 150 && s.wg.latencyMs! >= 150 ? s : undefined
      })
      console.info(`kernel lab: with 150 ms netem: he ${slow.he.latencyMs} ms score ${slow.he.score}, wg ${slow.wg.latencyMs} ms score ${slow.wg.score}`)
      expect(slow.he.score).toBe(75)
      expect(slow.wg.score).toBe(75)
    } finally {
      await lab.exec(lab.router.ns, 'tc', ['qdisc', 'del', 'dev', 'eth0', 'root'])
    }
    await until('the score back at 100', 30_000, async () => ((await status()).he.score === 100 ? true : undefined))
  }, 120_000)

  it('fails over to WireGuard when the broker drops 6in4, and back after the hold time', async () => {
    const nft = (args: string[]) => lab.exec(lab.upstream.ns, 'nft', args)
    await nft(['add', 'table', 'inet', 'fault'])
    try {
      await nft(['add', 'chain', 'inet', 'fault', 'in', '{ type filter hook input priority 0; }'])
      await nft(['add', 'rule', 'inet', 'fault', 'in', 'meta', 'l4proto', '41', 'drop'])
      const faultAt = Date.now()
      await until('traffic on wg', 30_000, async () => ((await defaultDev())[0] === WG.iface ? true : undefined))
      const failoverS = (Date.now() - faultAt) / 1000
      console.info(`kernel lab: 6in4 dropped; default route on WireGuard after ${failoverS.toFixed(1)} s (target ${DOWN * INTERVAL_S + 2} s)`)
      expect(failoverS).toBeLessThanOrEqual(DOWN * INTERVAL_S + 2)
      await lab.exec(lab.router.ns, 'ping', ['-6', '-n', '-c', '2', '-W', '3', TARGET])
    } finally {
      await nft(['delete', 'table', 'inet', 'fault'])
    }
    // 6in4 is eligible again from its first good check after the fault, which cannot come before the lift.
    const liftedAt = Date.now()
    const backAt = await until('traffic back on he', 40_000, async () => ((await defaultDev())[0] === HE.iface ? Date.now() : undefined))
    console.info(`kernel lab: failback ${((backAt - liftedAt) / 1000).toFixed(1)} s after the fault was lifted (hold ${HOLD_S} s)`)
    expect(backAt - liftedAt).toBeGreaterThanOrEqual(HOLD_S * 1000)
  }, 120_000)

  it('the 6in4 local address follows the WAN address', async () => {
    await supervisor?.close()
    supervisor = undefined
    // Deleting the primary address first: deleting it after adding the new one would take the new one
    // (a secondary) with it.
    await lab.exec(lab.router.ns, 'ip', ['addr', 'del', `${lab.router.wanIpv4}/22`, 'dev', 'eth0'])
    await lab.exec(lab.router.ns, 'ip', ['addr', 'add', '198.18.0.3/22', 'dev', 'eth0'])
    const he = (await reconcileTunnels({ sh, config, store, log })).find((o) => o.name === 'he')
    expect(he?.action, he?.detail).toBe('changed')
    expect((await sitOf()).local).toBe('198.18.0.3')
    await lab.exec(lab.upstream.ns, 'ip', ['tunnel', 'change', 'hebroker', 'mode', 'sit', 'remote', '198.18.0.3', 'local', lab.upstream.ipv4, 'ttl', '64'])
    await lab.exec(lab.router.ns, 'ping', ['-6', '-n', '-c', '2', '-W', '3', '-I', HE.iface, TARGET])
  })

  it('removing the 6in4 tunnel from config removes its link, rules, table and broker route', async () => {
    config = load(tunnels.slice(1))
    const out = await reconcileTunnels({ sh, config, store, log })
    expect(out.map((o) => [o.name, o.action])).toEqual([['he', 'removed'], ['wg', 'unchanged']])
    expect((await lab.exec(lab.router.ns, 'ip', ['link', 'show', HE.iface], { nothrow: true })).code).not.toBe(0)
    const rules = (await lab.exec(lab.router.ns, 'ip', ['-6', 'rule', 'show'])).stdout
    expect(rules).not.toContain(HE.prefix.split('/')[0])
    expect(rules).not.toContain(HE.gw)
    expect((await lab.exec(lab.router.ns, 'ip', ['-4', 'route', 'show', 'proto', '78'])).stdout.trim()).toBe('')
  })
})
