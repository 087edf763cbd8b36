// The forwarder's kernel mode against plain routing (issue 13), in the kernel lab: for an IPv4-only client
// reaching a home server through a VPS, iperf3 throughput (one TCP stream, up and down) and ping RTT over
//   plain routing   client -> inet -> VPS -> inet -> home router -> server, IPv4 routed, no tunnel, no NAT
//   kernel 4in6     client -> VPS (DNAT) -> ipip6 over IPv6 -> home router -> server
//   kernel WG       client -> VPS (DNAT) -> kernel WireGuard over IPv6 -> home router -> server
// each as a ratio to plain routing. Both tunnels go through the same namespaces as the plain path, so the
// ratios are what the tunnel costs. Needs ip6tnl and kernel WireGuard: run it in the kernel lab, as root, on
// the host, from the repository (about 4 minutes, boot included):
//
//   node --import=tsx test/vm/run.ts --timeout 600 -- node --import=tsx bench/forwarder-kernel.ts
//
// Both ends are made by dualgate's own code, as test/kernel/forwarder.test.ts does: reconcileKernel in this
// process, its commands run in a namespace through nsSh. The namespaces (prefix fkb-): fkb-inet routes between
// fkb-vps (dual-stack), fkb-c4 (IPv4 only) and fkb-home (IPv6 WAN; an IPv4 on it only for the plain path),
// whose LAN holds fkb-srv (the iperf3 server). The VPS lends one extra IPv4 address of its own to each kernel
// forward (`port: all`), one forward per transport, both up at once so the rounds can interleave; the server
// has an address per path (the VPS routes each kernel target into its tunnel). ICMP is not something a forward
// carries (its DNAT is TCP and UDP), so for the ping a table of the bench's own on the VPS DNATs echo requests
// to those addresses the same way; the home's peers accept every port (`ports: all`), ICMP included.
//
// Each round measures every path in turn (the order rotates): iperf3 -t SECONDS after OMIT s of warm-up, up
// (client -> server) then -R, then `ping -c 20 -i 0.05`. Around each path the tunnels' byte counters on the VPS
// are read: a kernel path's data must have gone through its own tunnel, and the plain path's through neither.
// Everything is inside the fkb- namespaces and 198.18.0.0/15, 198.19.0.0/16, 2001:db8::/32; every command has
// a time limit; the namespaces, the processes started here and the temporary directory go in a finally.
import { execFileSync, spawn } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { loadConfig } from '../lib/core/config.ts'
import { createLogger } from '../lib/core/log.ts'
import { openStore, type Store } from '../lib/core/store.ts'
import { reconcileKernel, type KernelResult } from '../lib/forwarder/kernel-apply.ts'
import { nsSh } from '../test/lab/ns-sh.ts'
import { run, type RunOptions } from '../test/lab/proc.ts'

const SECONDS = 5
const OMIT = 1
const ROUNDS = 3
const PINGS = 20
const PING_INTERVAL = '0.05'
const IPERF_PORT = 5201
/** A path's bytes must show on its tunnel's counters at least this much (headers only add). */
const TUNNEL_SHARE = 0.9
/** What a path that must not use a tunnel may still see on it (WireGuard keepalives). */
const STRAY_BYTES = 1 << 20

const NS = { inet: 'fkb-inet', vps: 'fkb-vps', home: 'fkb-home', srv: 'fkb-srv', c4: 'fkb-c4' }
const A = {
  vps4: '198.18.100.2', vps6: '2001:db8:100::2', home6: '2001:db8:200::2', home4: '198.18.102.2',
  lan: '198.19.50.1', c4: '198.18.101.2',
}
const HOME_NAME = 'home.fkb.test'
type Transport = 'ipip6' | 'wireguard'
/** Per transport: the VPS's address lent to it, the server's address it reaches, the two ends' interfaces. */
const KERNEL: Record<Transport, { listen: string; server: string; vpsIf: string; homeIf: string }> = {
  ipip6: { listen: '198.18.100.3', server: '198.19.50.10', vpsIf: 'dgf-ip6', homeIf: 'dgp-ip6' },
  wireguard: { listen: '198.18.100.4', server: '198.19.50.11', vpsIf: 'dgf-wg', homeIf: 'dgp-wg' },
}
const PLAIN_SERVER = '198.19.50.12'

interface Path { name: string; dest: string; iface?: string }
const PATHS: Path[] = [
  { name: 'plain routing', dest: PLAIN_SERVER },
  { name: 'kernel 4in6 (ipip6)', dest: KERNEL.ipip6.listen, iface: KERNEL.ipip6.vpsIf },
  { name: 'kernel WireGuard', dest: KERNEL.wireguard.listen, iface: KERNEL.wireguard.vpsIf },
]

const log = createLogger({ tag: 'bench', level: 'warn' })
const progress = (line: string) => process.stderr.write(`bench/forwarder-kernel: ${line}\n`)
const started = new Set<number>()
let dir = ''

const inNs = (ns: string, cmd: string, args: string[], o?: RunOptions) => run('ip', ['netns', 'exec', ns, cmd, ...args], o)
const batch = (ns: string, lines: string[]) => run('ip', ['-n', ns, '-batch', '-'], { input: `${lines.join('\n')}\n` })

async function buildNamespaces(): Promise<void> {
  const existing = (await run('ip', ['netns', 'list'])).stdout
  if (/^fkb-/m.test(existing)) throw new Error('fkb- namespaces exist already (another run?): not touching them')
  for (const ns of Object.values(NS)) {
    await run('ip', ['netns', 'add', ns])
    await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up'])
  }
  for (const ns of [NS.inet, NS.home, NS.vps]) await inNs(ns, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1'])
  // The VPS sends the plain path back out of the link it came in by: no redirects for that.
  await inNs(NS.vps, 'sysctl', ['-qw', 'net.ipv4.conf.all.send_redirects=0', 'net.ipv4.conf.default.send_redirects=0'])
  const link = (from: string, fromIf: string, to: string, toIf: string) => run('ip', ['-n', from, 'link', 'add', fromIf, 'type', 'veth', 'peer', 'name', toIf, 'netns', to])
  await link(NS.vps, 'eth0', NS.inet, 'vps')
  await link(NS.home, 'eth0', NS.inet, 'home')
  await link(NS.c4, 'eth0', NS.inet, 'c4')
  await link(NS.home, 'eth1', NS.srv, 'eth0')
  // The plain path passes the VPS as the tunnels do: from the client's link and towards it, fkb-inet routes
  // by a table of its own through the VPS, which routes back to fkb-inet's main table.
  await batch(NS.inet, [
    'addr add 198.18.100.1/24 dev vps', 'addr add 2001:db8:100::1/64 dev vps nodad', 'addr add 2001:db8:200::1/64 dev home nodad',
    'addr add 198.18.102.1/24 dev home', 'addr add 198.18.101.1/24 dev c4', 'link set vps up', 'link set home up', 'link set c4 up',
    `route add 198.19.50.0/24 via ${A.home4}`,
    `route add 198.19.50.0/24 via ${A.vps4} table 100`, `route add 198.18.101.0/24 via ${A.vps4} table 100`,
    'rule add iif c4 to 198.19.50.0/24 lookup 100 pref 100', 'rule add iif home to 198.18.101.0/24 lookup 100 pref 101',
  ])
  await batch(NS.vps, [
    `addr add ${A.vps4}/24 dev eth0`, `addr add ${KERNEL.ipip6.listen}/24 dev eth0`, `addr add ${KERNEL.wireguard.listen}/24 dev eth0`,
    `addr add ${A.vps6}/64 dev eth0 nodad`, 'link set eth0 up', 'route add default via 198.18.100.1', 'route add ::/0 via 2001:db8:100::1',
    'route add 198.19.50.0/24 via 198.18.100.1',
  ])
  await batch(NS.home, [
    `addr add ${A.home6}/64 dev eth0 nodad`, `addr add ${A.home4}/24 dev eth0`, `addr add ${A.lan}/24 dev eth1`, 'link set eth0 up', 'link set eth1 up',
    'route add ::/0 via 2001:db8:200::1', 'route add default via 198.18.102.1',
  ])
  await batch(NS.srv, [
    ...[KERNEL.ipip6.server, KERNEL.wireguard.server, PLAIN_SERVER].map((a) => `addr add ${a}/24 dev eth0`),
    'link set eth0 up', `route add default via ${A.lan}`,
  ])
  await batch(NS.c4, [`addr add ${A.c4}/24 dev eth0`, 'link set eth0 up', 'route add default via 198.18.101.1'])
  // Echo requests to the lent addresses take the forwards' way (see the top).
  const icmp = (t: Transport) => `    ip daddr ${KERNEL[t].listen} icmp type echo-request dnat ip to ${KERNEL[t].server}\n`
  await inNs(NS.vps, 'nft', ['-f', '-'], { input: `table inet fkb_icmp {\n  chain pre {\n    type nat hook prerouting priority dstnat; policy accept;\n${icmp('ipip6')}${icmp('wireguard')}  }\n}\n` })

  const server = spawn('ip', ['netns', 'exec', NS.srv, 'iperf3', '-s', '-p', String(IPERF_PORT)], { detached: true, stdio: 'ignore' })
  server.on('error', () => {})
  server.unref()
  if (!server.pid) throw new Error('could not start iperf3 -s')
  const pid = server.pid
  started.add(pid)
  server.once('exit', () => started.delete(pid))
  for (let i = 0; i < 100; i++) {
    if ((await inNs(NS.srv, 'ss', ['-Hltn', 'sport', '=', `:${IPERF_PORT}`])).stdout.trim()) return
    await new Promise((r) => setTimeout(r, 200))
  }
  throw new Error('iperf3 -s did not start listening')
}

const keys: Record<'vps' | 'home', { file: string; pub: string }> = { vps: { file: '', pub: '' }, home: { file: '', pub: '' } }
const stores: Partial<Record<'vps' | 'home', Store>> = {}

/** One end's config: on the VPS a kernel forward per transport, on the home router a peer per transport. */
function endConfig(end: 'vps' | 'home'): object {
  const wg = (t: Transport) => (t === 'wireguard' ? { privateKeyFile: keys[end].file, peerPublicKey: keys[end === 'vps' ? 'home' : 'vps'].pub } : {})
  const transports: Transport[] = ['ipip6', 'wireguard']
  return end === 'vps'
    ? { role: 'forwarder', forwards: transports.map((t) => ({ name: `fkb_${t}`, mode: 'kernel', listen: KERNEL[t].listen, port: 'all', proto: 'both', target: HOME_NAME, targetAddress: KERNEL[t].server, transport: t, iface: KERNEL[t].vpsIf, ...wg(t) })) }
    : { role: 'gateway', forwarderPeers: transports.map((t) => ({ name: `vps_${t}`, remote: A.vps6, transport: t, iface: KERNEL[t].homeIf, servers: [KERNEL[t].server], ports: 'all', ...wg(t) })) }
}

async function reconcile(end: 'vps' | 'home'): Promise<KernelResult> {
  const file = path.join(dir, `${end}.json`)
  writeFileSync(file, JSON.stringify(endConfig(end)))
  const data = path.join(dir, `dg-${end}`)
  mkdirSync(data, { recursive: true })
  const { config } = loadConfig({
    uciFile: path.join(dir, 'no-uci'),
    env: { DUALGATE_CONFIG: file, DUALGATE_WAN_IF: 'eth0', DUALGATE_LAN_IF: 'eth1', DUALGATE_LAN_ADDR: `${A.lan}/24`, DUALGATE_DATA_DIR: data, DUALGATE_RUN_DIR: path.join(dir, `dg-${end}-run`) },
  })
  stores[end] ??= openStore({ dataDir: config.dataDir, backupCount: 0, backupInterval: 0 })
  return reconcileKernel({ sh: nsSh(NS[end]), config, store: stores[end]!, log, resolve6: async (name) => (name === HOME_NAME ? [A.home6] : []) })
}

/** Bytes through each tunnel interface on the VPS, both directions. */
async function tunnelBytes(): Promise<Record<string, number>> {
  const links = JSON.parse((await run('ip', ['-n', NS.vps, '-s', '-j', 'link', 'show'])).stdout) as { ifname: string; stats64?: { rx: { bytes: number }; tx: { bytes: number } } }[]
  return Object.fromEntries(links.filter((l) => l.ifname.startsWith('dgf-')).map((l) => [l.ifname, (l.stats64?.rx.bytes ?? 0) + (l.stats64?.tx.bytes ?? 0)]))
}

interface Iperf { mbps: number; bytes: number }
async function iperf(dest: string, reverse: boolean): Promise<Iperf> {
  const args = ['-c', dest, '-p', String(IPERF_PORT), '-t', String(SECONDS), '-O', String(OMIT), '-J', ...(reverse ? ['-R'] : [])]
  const r = await inNs(NS.c4, 'iperf3', args, { nothrow: true, timeoutMs: (SECONDS + OMIT + 30) * 1000 })
  let json: { error?: string; end?: { sum_received?: { bits_per_second: number; bytes: number }; sum_sent?: { bytes: number } } } = {}
  try {
    json = JSON.parse(r.stdout || '{}')
  } catch {
    // reported below
  }
  if (r.code !== 0 || json.error || !json.end?.sum_received) throw new Error(`iperf3 ${args.join(' ')}: ${json.error || r.stderr.trim() || `exit ${r.code}`}`)
  // The omitted warm-up is not in these bytes but crosses the tunnel too: the check in measure() errs safe.
  return { mbps: json.end.sum_received.bits_per_second / 1e6, bytes: json.end.sum_sent?.bytes ?? json.end.sum_received.bytes }
}

interface Ping { avgMs: number; received: number }
async function ping(dest: string, count: number, interval: string): Promise<Ping> {
  const r = await inNs(NS.c4, 'ping', ['-n', '-q', '-c', String(count), '-i', interval, '-W', '2', dest], { nothrow: true, timeoutMs: 60_000 })
  const received = Number(/(\d+) received/.exec(r.stdout)?.[1] ?? 0)
  const avg = /= [\d.]+\/([\d.]+)\//.exec(r.stdout)?.[1]
  return { avgMs: avg ? Number(avg) : NaN, received }
}

interface Sample { up: number; down: number; rttMs: number; lost: number }

async function measure(p: Path): Promise<Sample> {
  const before = await tunnelBytes()
  const up = await iperf(p.dest, false)
  const down = await iperf(p.dest, true)
  const pg = await ping(p.dest, PINGS, PING_INTERVAL)
  const after = await tunnelBytes()
  // The path's bytes went where they should: its own tunnel, or none.
  for (const iface of Object.keys(after)) {
    const delta = after[iface] - (before[iface] ?? 0)
    if (iface === p.iface && delta < TUNNEL_SHARE * (up.bytes + down.bytes)) throw new Error(`${p.name}: only ${delta} bytes through ${iface} for ${up.bytes + down.bytes} moved`)
    if (iface !== p.iface && delta > STRAY_BYTES) throw new Error(`${p.name}: ${delta} bytes went through ${iface}, not this path's`)
  }
  if (p.iface && !(p.iface in after)) throw new Error(`${p.name}: no ${p.iface} on the VPS`)
  return { up: up.mbps, down: down.mbps, rttMs: pg.avgMs, lost: PINGS - pg.received }
}

const f = (n: number, digits: number) => (Number.isFinite(n) ? n.toFixed(digits) : '-')
const ratio = (a: number, b: number) => `${f(a / b, 2)}x`

function table(samples: Map<string, Sample[]>, vmSeconds: number): string {
  const best = (s: Sample[], k: 'up' | 'down') => Math.max(...s.map((x) => x[k]))
  const rtt = (s: Sample[]) => s.reduce((a, x) => a + x.rttMs, 0) / s.length
  const base = samples.get(PATHS[0].name)!
  const lines = [
    `forwarder kernel mode vs plain routing: ${os.cpus().length} CPUs, kernel ${os.release()}, iperf3 1 TCP stream ${SECONDS} s (+${OMIT} s omitted) each way, best of ${ROUNDS} interleaved rounds; ping -c ${PINGS} -i ${PING_INTERVAL}, mean of the rounds' means`,
    '',
    `${''.padEnd(55)}${'----- vs plain -----'.padStart(24)}`,
    `${'path'.padEnd(22)}${'up Mbit/s'.padStart(11)}${'down Mbit/s'.padStart(13)}${'RTT ms'.padStart(9)}${'up'.padStart(8)}${'down'.padStart(8)}${'RTT'.padStart(8)}${'+RTT ms'.padStart(10)}`,
  ]
  for (const p of PATHS) {
    const s = samples.get(p.name)!
    lines.push(`${p.name.padEnd(22)}${f(best(s, 'up'), 1).padStart(11)}${f(best(s, 'down'), 1).padStart(13)}${f(rtt(s), 3).padStart(9)}${ratio(best(s, 'up'), best(base, 'up')).padStart(8)}${ratio(best(s, 'down'), best(base, 'down')).padStart(8)}${ratio(rtt(s), rtt(base)).padStart(8)}${(p === PATHS[0] ? '' : `+${f(rtt(s) - rtt(base), 3)}`).padStart(10)}`)
  }
  lines.push('', 'rounds (up / down Mbit/s, RTT ms, pings lost):')
  for (const p of PATHS) lines.push(`${p.name.padEnd(22)}${samples.get(p.name)!.map((s, i) => `  r${i + 1} ${`${f(s.up, 1)} / ${f(s.down, 1)}`.padStart(13)}, ${f(s.rttMs, 3)}, ${s.lost}`).join('  ')}`)
  lines.push('', `measured in ${vmSeconds.toFixed(0)} s (namespaces and reconcile included)`)
  return lines.join('\n')
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench/forwarder-kernel.ts needs root (network namespaces)')
  for (const m of ['ip6_tunnel', 'wireguard']) {
    if ((await run('modprobe', ['--dry-run', '--quiet', m], { nothrow: true })).code !== 0) {
      console.error(`bench/forwarder-kernel.ts: this kernel has no ${m} module; run it in the kernel lab:\n  node --import=tsx test/vm/run.ts --timeout 600 -- node --import=tsx bench/forwarder-kernel.ts`)
      process.exit(2)
    }
  }
  const t0 = Date.now()
  dir = await mkdtemp(path.join(os.tmpdir(), 'dualgate-fkb-'))
  try {
    for (const end of ['vps', 'home'] as const) {
      const key = execFileSync('wg', ['genkey'], { encoding: 'utf8', timeout: 10_000 }).trim()
      keys[end].file = path.join(dir, `${end}.key`)
      writeFileSync(keys[end].file, `${key}\n`, { mode: 0o600 })
      keys[end].pub = execFileSync('wg', ['pubkey'], { input: `${key}\n`, encoding: 'utf8', timeout: 10_000 }).trim()
    }
    await buildNamespaces()
    progress(`namespaces up after ${((Date.now() - t0) / 1000).toFixed(1)} s`)
    // Both ends at once, as two machines would.
    const [home, vps] = await Promise.all([reconcile('home'), reconcile('vps')])
    for (const [end, r] of [['home', home], ['vps', vps]] as const) {
      const bad = r.tunnels.filter((t) => t.action !== 'created')
      if (bad.length > 0 || r.tunnels.length !== 2) throw new Error(`${end}: reconcileKernel did not make both tunnels: ${JSON.stringify(r.tunnels)}`)
    }
    progress(`both ends reconciled after ${((Date.now() - t0) / 1000).toFixed(1)} s`)
    // Every path answers before anything is timed (WireGuard's handshake happens here).
    for (const p of PATHS) {
      const r = await ping(p.dest, 3, '0.2')
      if (r.received === 0) throw new Error(`${p.name}: ${p.dest} does not answer ping`)
    }

    const samples = new Map<string, Sample[]>(PATHS.map((p) => [p.name, []]))
    for (let round = 0; round < ROUNDS; round++) {
      for (let i = 0; i < PATHS.length; i++) {
        const p = PATHS[(round + i) % PATHS.length]
        const s = await measure(p)
        samples.get(p.name)!.push(s)
        progress(`round ${round + 1} ${p.name}: up ${f(s.up, 1)} down ${f(s.down, 1)} Mbit/s, RTT ${f(s.rttMs, 3)} ms, lost ${s.lost}`)
      }
    }
    console.log(table(samples, (Date.now() - t0) / 1000))
  } finally {
    for (const pid of started) {
      try {
        process.kill(pid, 'SIGTERM')
      } catch {
        // already gone
      }
    }
    for (const ns of Object.values(NS)) await run('ip', ['netns', 'del', ns], { nothrow: true })
    await rm(dir, { recursive: true, force: true })
  }
}

await main()
