// Kernel-mode forwarding on a full kernel (runs in the kernel lab's VM, issue 13): reconcileKernel, in this
// process with commands run through `ip netns exec` (a job's process start costs ~15 s in emulation), makes
// the tunnel between a dual-stack VPS and an IPv6-only home router, first as ipip6 (4in6), then as kernel
// WireGuard. An IPv4-only client reaches the home server's TCP and UDP echo at the VPS's IPv4 and the server
// sees the client's own address, and TCP through the tunnel is held to its MTU from the SYN on (MSS clamping at
// both ends); a second reconcile changes nothing; for ipip6 the home's new address moves
// the tunnel's remote; removing the config removes everything at both ends.
//
// The namespaces are a small set of their own (the forwarder lab's services and DNS would cost a node start
// here): fwk-inet routes between fwk-vps (198.18.100.2, 2001:db8:100::2), fwk-c4 (198.18.101.2, IPv4 only)
// and fwk-home (2001:db8:200::2, no IPv4 WAN), whose LAN holds fwk-srv (198.19.50.10: socat echoes that log
// their peers). The home's name resolves through resolve6, which the test answers.
import { execFileSync, spawn } from 'node:child_process'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadConfig } from '../../lib/core/config.ts'
import { createLogger } from '../../lib/core/log.ts'
import { openStore, type Store } from '../../lib/core/store.ts'
import { reconcileKernel, type KernelResult } from '../../lib/forwarder/kernel-apply.ts'
import { nsSh } from '../lab/ns-sh.ts'
import { run, type RunOptions } from '../lab/proc.ts'

const NS = { inet: 'fwk-inet', vps: 'fwk-vps', home: 'fwk-home', srv: 'fwk-srv', c4: 'fwk-c4' }
const A = {
  vps4: '198.18.100.2', vps6: '2001:db8:100::2', home6: '2001:db8:200::2', home6New: '2001:db8:200::3',
  lan: '198.19.50.1', srv: '198.19.50.10', c4: '198.18.101.2',
}
const HOME_NAME = 'home.fwk.test'
const TCP_ECHO = 23
const UDP_ECHO = 7

type End = 'vps' | 'home'
let dir = ''
const pids: number[] = []
let homeAddress = A.home6
const stores: Partial<Record<End, Store>> = {}
const log = createLogger({ tag: 'kernel-lab', level: 'warn' })

const inNs = (ns: string, cmd: string, args: string[], o?: RunOptions) => run('ip', ['netns', 'exec', ns, cmd, ...args], o)
const batch = (ns: string, lines: string[]) => run('ip', ['-n', ns, '-batch', '-'], { input: `${lines.join('\n')}\n` })

function startIn(ns: string, cmd: string, args: string[], logFile: string): void {
  const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { detached: true, stdio: ['ignore', 'ignore', 'pipe'] })
  child.stderr.on('data', (b) => writeFileSync(logFile, String(b), { flag: 'a' }))
  child.unref()
  if (!child.pid) throw new Error(`could not start ${cmd}`)
  pids.push(child.pid)
}

async function buildNamespaces(): Promise<void> {
  for (const ns of Object.values(NS)) {
    await run('ip', ['netns', 'add', ns])
    await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up'])
  }
  await inNs(NS.inet, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1'])
  await inNs(NS.home, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1'])
  const link = (from: string, fromIf: string, to: string, toIf: string) => run('ip', ['-n', from, 'link', 'add', fromIf, 'type', 'veth', 'peer', 'name', toIf, 'netns', to])
  await link(NS.vps, 'eth0', NS.inet, 'vps')
  await link(NS.home, 'eth0', NS.inet, 'home')
  await link(NS.c4, 'eth0', NS.inet, 'c4')
  await link(NS.home, 'eth1', NS.srv, 'eth0')
  await batch(NS.inet, [
    'addr add 198.18.100.1/24 dev vps', 'addr add 2001:db8:100::1/64 dev vps nodad', 'addr add 2001:db8:200::1/64 dev home nodad',
    'addr add 198.18.101.1/24 dev c4', 'link set vps up', 'link set home up', 'link set c4 up',
  ])
  await batch(NS.vps, [`addr add ${A.vps4}/24 dev eth0`, `addr add ${A.vps6}/64 dev eth0 nodad`, 'link set eth0 up', 'route add default via 198.18.100.1', 'route add ::/0 via 2001:db8:100::1'])
  await batch(NS.home, [`addr add ${A.home6}/64 dev eth0 nodad`, `addr add ${A.lan}/24 dev eth1`, 'link set eth0 up', 'link set eth1 up', 'route add ::/0 via 2001:db8:200::1'])
  await batch(NS.srv, [`addr add ${A.srv}/24 dev eth0`, 'link set eth0 up', `route add default via ${A.lan}`])
  await batch(NS.c4, [`addr add ${A.c4}/24 dev eth0`, 'link set eth0 up', 'route add default via 198.18.101.1'])
  // The home server: echoes that log each peer (socat -d -d).
  startIn(NS.srv, 'socat', ['-d', '-d', `TCP4-LISTEN:${TCP_ECHO},fork,reuseaddr`, 'PIPE'], path.join(dir, 'tcp.log'))
  startIn(NS.srv, 'socat', ['-d', '-d', `UDP4-RECVFROM:${UDP_ECHO},fork`, 'PIPE'], path.join(dir, 'udp.log'))
  for (let i = 0; i < 100; i++) {
    const ss = await inNs(NS.srv, 'ss', ['-Hln', 'sport', '=', `:${TCP_ECHO}`, 'or', 'sport', '=', `:${UDP_ECHO}`])
    if (ss.stdout.trim().split('\n').length >= 2) return
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error('the home server\'s echoes did not start')
}

const keys: Record<End, { file: string; pub: string }> = { vps: { file: '', pub: '' }, home: { file: '', pub: '' } }

function writeConfig(end: End, transport: 'ipip6' | 'wireguard' | 'none'): string {
  const file = path.join(dir, `${end}.json`)
  const wg = (mine: End, other: End) => (transport === 'wireguard' ? { privateKeyFile: keys[mine].file, peerPublicKey: keys[other].pub } : {})
  const body = end === 'vps'
    ? { role: 'forwarder', forwards: transport === 'none' ? [] : [
        { name: 'ssh', mode: 'kernel', listen: '4', port: String(TCP_ECHO), proto: 'tcp', target: HOME_NAME, targetAddress: A.srv, transport, iface: 'dgf-home', ...wg('vps', 'home') },
        { name: 'echo', mode: 'kernel', listen: '4', port: String(UDP_ECHO), proto: 'udp', target: HOME_NAME, targetAddress: A.srv, transport, iface: 'dgf-home', ...wg('vps', 'home') },
      ] }
    : { role: 'gateway', forwarderPeers: transport === 'none' ? [] : [{ name: 'vps', remote: A.vps6, transport, iface: 'dgp-vps', servers: [A.srv], ports: `${TCP_ECHO},${UDP_ECHO}`, ...wg('home', 'vps') }] }
  writeFileSync(file, JSON.stringify(body))
  return file
}

async function reconcile(end: End, transport: 'ipip6' | 'wireguard' | 'none'): Promise<KernelResult> {
  const data = path.join(dir, `dg-${end}`)
  mkdirSync(data, { recursive: true })
  const { config } = loadConfig({
    uciFile: path.join(dir, 'no-uci'),
    env: { DUALGATE_CONFIG: writeConfig(end, transport), DUALGATE_WAN_IF: 'eth0', DUALGATE_LAN_IF: 'eth1', DUALGATE_LAN_ADDR: `${A.lan}/24`, DUALGATE_DATA_DIR: data, DUALGATE_RUN_DIR: path.join(dir, `dg-${end}-run`) },
  })
  stores[end] ??= openStore({ dataDir: config.dataDir, backupCount: 0, backupInterval: 0 })
  return reconcileKernel({ sh: nsSh(NS[end]), config, store: stores[end]!, log, resolve6: async (name) => (name === HOME_NAME ? [homeAddress] : []) })
}

const seen = (file: string) => readFileSync(path.join(dir, file), 'utf8').split('\n').filter((l) => l.includes(`AF=2 ${A.c4}:`)).length

/** TCP and UDP echo from the client at the VPS's IPv4; the server's logs name the client's own address. */
async function clientReaches(): Promise<void> {
  const [tcpBefore, udpBefore] = [seen('tcp.log'), seen('udp.log')]
  const tcp = await inNs(NS.c4, 'socat', ['-T', '5', '-', `TCP4:${A.vps4}:${TCP_ECHO},connect-timeout=10`], { input: 'through the tunnel\n', nothrow: true })
  expect(tcp.stdout, tcp.stderr).toBe('through the tunnel\n')
  const udp = await inNs(NS.c4, 'socat', ['-T', '5', '-', `UDP4:${A.vps4}:${UDP_ECHO}`], { input: 'datagram\n', nothrow: true })
  expect(udp.stdout, udp.stderr).toBe('datagram\n')
  expect(seen('tcp.log')).toBe(tcpBefore + 1)
  expect(seen('udp.log')).toBeGreaterThan(udpBefore)
}

/** Linux's timestamp option, on by default, takes 12 bytes of every segment: ss's mss is the MSS less that. */
const TIMESTAMPS = 12

/**
 * The segment size both sides of one TCP connection through the tunnel send (ss's mss: the least of the peer's
 * SYN option and the own path, less options): without the clamp both would take 1460 - 12 from their
 * 1500-byte links.
 */
async function mssThroughTunnel(): Promise<{ client: number; server: number }> {
  const child = spawn('ip', ['netns', 'exec', NS.c4, 'socat', '-T', '5', 'EXEC:sleep 4', `TCP4:${A.vps4}:${TCP_ECHO},connect-timeout=10`], { stdio: 'ignore' })
  const mss = (text: string) => Number(/\bmss:(\d+)/.exec(text)?.[1] ?? 0)
  try {
    for (let i = 0; i < 50; i++) {
      const client = mss((await inNs(NS.c4, 'ss', ['-Htni', 'state', 'established', 'dport', '=', `:${TCP_ECHO}`])).stdout)
      const server = mss((await inNs(NS.srv, 'ss', ['-Htni', 'state', 'established', 'sport', '=', `:${TCP_ECHO}`])).stdout)
      if (client && server) return { client, server }
      await new Promise((r) => setTimeout(r, 100))
    }
    throw new Error('no TCP connection through the tunnel within 5 s')
  } finally {
    child.kill()
  }
}

async function ours(end: End): Promise<string[]> {
  const ns = NS[end]
  const out: string[] = []
  const rules = (await inNs(ns, 'ip', ['-4', 'rule'])).stdout.split('\n').filter((l) => /^10(50|51):/.test(l))
  const routes = (await inNs(ns, 'ip', ['-4', 'route', 'show', 'table', 'all', 'proto', '79'])).stdout.trim()
  const tables = (await inNs(ns, 'nft', ['list', 'tables'])).stdout.split('\n').filter((l) => l.includes('dualgate_fwd'))
  const links = (await inNs(ns, 'ip', ['-o', 'link', 'show'])).stdout.split('\n').filter((l) => /dg[fp]-/.test(l))
  out.push(...rules, ...(routes ? routes.split('\n') : []), ...tables, ...links)
  return out
}

/** Both ends at once, as two machines would (the VM has two CPUs). */
const bothEnds = async (transport: 'ipip6' | 'wireguard' | 'none') => {
  const [home, vps] = await Promise.all([reconcile('home', transport), reconcile('vps', transport)])
  return { home, vps }
}

async function removesEverything(): Promise<void> {
  const r = await bothEnds('none')
  const left = await Promise.all([ours('vps'), ours('home')])
  for (const end of ['vps', 'home'] as End[]) {
    expect(r[end].tunnels.map((t) => t.action)).toEqual(['removed'])
    expect(r[end].nft).toBe('removed')
  }
  expect(left).toEqual([[], []])
  const tcp = await inNs(NS.c4, 'socat', ['-T', '1', '-', `TCP4:${A.vps4}:${TCP_ECHO},connect-timeout=1`], { input: 'x\n', nothrow: true })
  expect(tcp.code).not.toBe(0)
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'dualgate-fwk-'))
  for (const end of ['vps', 'home'] as End[]) {
    const key = execFileSync('wg', ['genkey'], { encoding: 'utf8' }).trim()
    keys[end].file = path.join(dir, `${end}.key`)
    writeFileSync(keys[end].file, `${key}\n`, { mode: 0o600 })
    keys[end].pub = execFileSync('wg', ['pubkey'], { input: `${key}\n`, encoding: 'utf8' }).trim()
  }
  await buildNamespaces()
})

afterAll(async () => {
  for (const pid of pids) {
    try { process.kill(pid, 'SIGTERM') } catch { /* gone */ }
  }
  for (const ns of Object.values(NS)) await run('ip', ['netns', 'del', ns], { nothrow: true })
  if (dir) await rm(dir, { recursive: true, force: true })
})

describe('forwarder kernel mode over ipip6 (4in6)', () => {
  it('makes both ends; the client reaches the server, which sees the client\'s own IPv4', async () => {
    const { home, vps } = await bothEnds('ipip6')
    expect(home.tunnels.map((t) => `${t.action} ${t.remote}`)).toEqual([`created ${A.vps6}`])
    expect(vps.tunnels.map((t) => `${t.action} ${t.remote}`)).toEqual([`created ${A.home6}`])
    const link = JSON.parse((await inNs(NS.vps, 'ip', ['-j', '-d', 'link', 'show', 'dgf-home'])).stdout)[0]
    expect(link.linkinfo).toMatchObject({ info_kind: 'ip6tnl', info_data: { proto: 'ipip6', local: A.vps6, remote: A.home6 } })
    expect(link.mtu).toBe(1452)
    await clientReaches()
    expect(await mssThroughTunnel()).toEqual({ client: 1452 - 40 - TIMESTAMPS, server: 1452 - 40 - TIMESTAMPS })
  })

  it('changes nothing on a second reconcile at either end', async () => {
    const r = await bothEnds('ipip6')
    for (const end of ['home', 'vps'] as End[]) {
      expect(r[end].changes, JSON.stringify(r[end])).toBe(0)
      expect(r[end].tunnels.map((t) => t.action)).toEqual(['unchanged'])
    }
  })

  it('moves the tunnel\'s remote when the home\'s address changes', async () => {
    await inNs(NS.home, 'ip', ['-6', 'addr', 'add', `${A.home6New}/64`, 'dev', 'eth0', 'nodad'])
    await inNs(NS.home, 'ip', ['-6', 'addr', 'del', `${A.home6}/64`, 'dev', 'eth0'])
    homeAddress = A.home6New
    const r = await bothEnds('ipip6')
    expect(r.home.tunnels.map((t) => t.action)).toEqual(['changed'])
    expect(r.vps.tunnels.map((t) => `${t.action} ${t.remote}`)).toEqual([`changed ${A.home6New}`])
    const remote = JSON.parse((await inNs(NS.vps, 'ip', ['-j', '-d', 'link', 'show', 'dgf-home'])).stdout)[0].linkinfo.info_data.remote
    expect(remote).toBe(A.home6New)
    await clientReaches()
  })

  it('removes every rule, route, table and interface on both ends when the config goes', removesEverything)
})

describe('forwarder kernel mode over kernel WireGuard', () => {
  it('makes both ends with the kernel\'s WireGuard; the client reaches the server, which sees the client\'s own IPv4', async () => {
    const { home, vps } = await bothEnds('wireguard')
    expect(home.tunnels.map((t) => `${t.action} ${t.remote}`)).toEqual([`created ${A.vps6}`])
    expect(vps.tunnels.map((t) => `${t.action} ${t.remote}`)).toEqual([`created ${homeAddress}`])
    const link = JSON.parse((await inNs(NS.vps, 'ip', ['-j', '-d', 'link', 'show', 'dgf-home'])).stdout)[0]
    expect(link.linkinfo.info_kind).toBe('wireguard')
    await clientReaches()
    expect(await mssThroughTunnel()).toEqual({ client: link.mtu - 40 - TIMESTAMPS, server: link.mtu - 40 - TIMESTAMPS })
  })

  it('changes nothing on a second reconcile at either end', async () => {
    const r = await bothEnds('wireguard')
    for (const end of ['home', 'vps'] as End[]) {
      expect(r[end].changes, JSON.stringify(r[end])).toBe(0)
      expect(r[end].tunnels.map((t) => t.action)).toEqual(['unchanged'])
    }
  })

  it('removes every rule, route, table and interface on both ends when the config goes', removesEverything)
})
