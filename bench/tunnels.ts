// Tunnels in the kernel lab (issue 12): in one run, the throughput of plain routing, sit (6in4), kernel
// WireGuard and wireguard-go between the lab's router and upstream namespaces, as ratios to plain routing;
// then the failover time of the tunnel supervisor over several faults of the 6in4 path.
//
// Needs sit and kernel WireGuard, so it runs inside the kernel lab's VM (test/vm/, QEMU TCG). As root, on
// the host, from the repository (about 8 minutes, boot included; the VM limit is 15):
//
//   node --import=tsx test/vm/run.ts --timeout 900 -- node --import=tsx bench/tunnels.ts
//
// The tunnels are made by dualgate's own code (reconcileTunnels, in this process, with commands run in the
// router namespace as test/kernel/dualgate-tunnels.test.ts does): a 6in4 to a broker on the upstream, a
// kernel WireGuard and a wireguard-go WireGuard (`backend: 'wireguard-go'`, over TUN), all over the router's
// IPv4 WAN. Their far ends in the upstream namespace are made by hand: a sit link, a kernel WireGuard link and
// a second wireguard-go. Throughput is one iperf3 TCP stream each way (router -> upstream "up", -R "down"),
// from the tunnel's address to the far end's, best of two interleaved rounds; plain routing is IPv4 on the
// same WAN link between the same two namespaces. The tunnels carry IPv6 (sit MTU 1480, WireGuard 1420).
//
// Failover: the tunnel supervisor runs in this process (probe interval 1 s, timeout 1 s, down after 3 failed
// checks, up after 2, hold 3 s) with 6in4 primary and kernel WireGuard as backup. Each fault drops protocol
// 41 at the broker (nft in the upstream namespace); the time runs from just before the rule goes in until
// `ip -6 monitor route` in the router namespace reports the default route (proto 78) on WireGuard, and until
// a ping through the default route answers (`ping -c 1 -W 1` after the route moved, one attempt after another,
// each a new process so each picks its source and route afresh; the answer's time includes a process start,
// shown as "one ping attempt"). The fault is then lifted and the route must come back to 6in4 after the hold
// time. While a fault is on, the bench itself starts no process until the route moves (in the VM a process
// start costs about half a second of an emulated CPU, which the supervisor's checks need): it reads the
// monitor and the supervisor's status in this process. It prints how often the supervisor really checked.
//
// Everything lives in the lab's namespaces and addresses (198.18.0.0/15, 2001:db8::/32); every wait is
// bounded; the lab, the supervisor and every process started here go in a finally.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { closeSync, existsSync, mkdirSync, openSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { loadConfig, type Config } from '../lib/core/config.ts'
import { createLogger } from '../lib/core/log.ts'
import { openStore, type Store } from '../lib/core/store.ts'
import { startSupervisor, type Supervisor } from '../lib/core/supervisor.ts'
import { reconcileTunnels, type TunnelOutcome } from '../lib/tunnels/reconcile.ts'
import { tunnelSupervisor, type TunnelStatus } from '../lib/tunnels/supervisor.ts'
import { createLab, type Lab } from '../test/lab/lab.ts'
import { nsSh } from '../test/lab/ns-sh.ts'

const SECONDS = 4
const OMIT = 1
const ROUNDS = 2
const IPERF_PORT = 5201
const FAULTS = 5
const INTERVAL_S = 1
const TIMEOUT_S = 1
const DOWN = 3
const UP = 2
const HOLD_S = 3
const TARGET = '2001:db8:ff::10'
const HE = { name: 'he', iface: 'he0', gw: '2001:db8:100::2', broker: '2001:db8:100::1', srv: 'hebroker' }
const WGK = { name: 'wg', iface: 'wgk', gw: '2001:db8:101::2', server: '2001:db8:101::1', srv: 'wgksrv', port: 51820 }
const WGG = { name: 'wggo', iface: 'wgg', gw: '2001:db8:102::2', server: '2001:db8:102::1', srv: 'wggsrv', port: 51821 }

const log = createLogger({ tag: 'bench', level: 'error' })
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))
const progress = (line: string) => process.stderr.write(`bench/tunnels: ${line}\n`)

export async function waitFor<T>(what: string, ms: number, probe: () => Promise<T | undefined>, everyMs = 200): Promise<T> {
  const deadline = Date.now() + ms
  let last: unknown
  for (;;) {
    const v = await probe().catch((err: unknown) => {
      last = err
      return undefined
    })
    if (v !== undefined) return v
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`)
    await sleep(everyMs)
  }
}

export const wgGenkey = () => execFileSync('wg', ['genkey'], { encoding: 'utf8', timeout: 10_000 }).trim()
export const wgPubkey = (key: string) => execFileSync('wg', ['pubkey'], { input: `${key}\n`, encoding: 'utf8', timeout: 10_000 }).trim()

/** Processes this bench started (by PID), stopped in the finally. */
export const started = new Set<number>()

/** Remembers a child's PID until it exits (once reaped, its PID may belong to someone else). */
function track(child: ChildProcess): void {
  const pid = child.pid
  if (!pid) return
  started.add(pid)
  child.once('exit', () => started.delete(pid))
}

function stopStarted(): void {
  for (const pid of started) {
    try {
      process.kill(pid, 'SIGTERM')
    } catch {
      // already gone
    }
  }
  started.clear()
}

/** Starts a process in a namespace of the lab (ip netns exec execs it: the PID is the command's). */
export function spawnIn(lab: Lab, ns: string, cmd: string, args: string[], logName: string, env?: NodeJS.ProcessEnv): ChildProcess {
  const out = openSync(path.join(lab.dir, logName), 'a')
  try {
    const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { detached: true, stdio: ['ignore', out, out], env: env ?? process.env })
    child.on('error', () => {})
    child.unref()
    track(child)
    return child
  } finally {
    closeSync(out)
  }
}

/** The far end of a WireGuard tunnel in the upstream namespace: kernel, or wireguard-go over TUN. */
export async function wireguardServer(lab: Lab, o: { srv: string; port: number; server: string; peerKey: string; peerAddress: string; go: boolean }): Promise<{ publicKey: string }> {
  const up = lab.upstream.ns
  const key = wgGenkey()
  const conf = path.join(lab.dir, `${o.srv}.conf`)
  writeFileSync(conf, `[Interface]\nPrivateKey = ${key}\nListenPort = ${o.port}\n\n[Peer]\nPublicKey = ${wgPubkey(o.peerKey)}\nAllowedIPs = ${o.peerAddress}/128\n`, { mode: 0o600 })
  if (o.go) {
    spawnIn(lab, up, 'wireguard-go', ['--foreground', o.srv], `${o.srv}.log`, { ...process.env, LOG_LEVEL: 'error' })
    await waitFor(`wireguard-go to bring up ${o.srv}`, 30_000, async () => ((await lab.exec(up, 'wg', ['show', o.srv], { nothrow: true })).code === 0 ? true : undefined))
  } else {
    await lab.exec(up, 'ip', ['link', 'add', o.srv, 'type', 'wireguard'])
  }
  await lab.exec(up, 'wg', ['setconf', o.srv, conf])
  await lab.exec(up, 'ip', ['-6', 'addr', 'add', `${o.server}/64`, 'dev', o.srv, 'nodad'])
  await lab.exec(up, 'ip', ['link', 'set', o.srv, 'up'])
  return { publicKey: wgPubkey(key) }
}

/** A config of these tunnel sections, loaded as the runner would, with the supervisor's timings. */
export function loadTunnels(lab: Lab, tunnels: Record<string, unknown>[]): Config {
  const file = path.join(lab.dir, 'tunnels.json')
  writeFileSync(file, JSON.stringify({ tunnels }))
  return loadConfig({
    uciFile: path.join(lab.dir, 'no-uci'),
    env: {
      DUALGATE_CONFIG: file,
      DUALGATE_WAN_IF: lab.router.wanIf,
      DUALGATE_DATA_DIR: path.join(lab.dir, 'dg'),
      DUALGATE_RUN_DIR: path.join(lab.dir, 'dg-run'),
      DUALGATE_TUNNEL_PROBE_INTERVAL: String(INTERVAL_S),
      DUALGATE_TUNNEL_PROBE_TIMEOUT: String(TIMEOUT_S),
      DUALGATE_TUNNEL_DOWN: String(DOWN),
      DUALGATE_TUNNEL_UP: String(UP),
      DUALGATE_TUNNEL_HOLD_TIME: String(HOLD_S),
    },
  }).config
}

export interface Throughput {
  gbps: number
  retransmits?: number
}

/** One iperf3 TCP stream from the router namespace, SECONDS long after OMIT seconds of warm-up. */
export async function iperf(lab: Lab, host: string, bind: string, reverse: boolean): Promise<Throughput> {
  const args = ['-c', host, '-B', bind, '-p', String(IPERF_PORT), '-t', String(SECONDS), '-O', String(OMIT), '-J', ...(reverse ? ['-R'] : [])]
  const r = await lab.exec(lab.router.ns, 'iperf3', args, { timeoutMs: (SECONDS + OMIT + 30) * 1000, nothrow: true })
  const json = JSON.parse(r.stdout || '{}') as { error?: string; end?: { sum_received?: { bits_per_second: number }; sum_sent?: { retransmits?: number } } }
  if (r.code !== 0 || json.error || !json.end?.sum_received) throw new Error(`iperf3 ${args.join(' ')}: ${json.error || r.stderr.trim() || `exit ${r.code}`}`)
  return { gbps: json.end.sum_received.bits_per_second / 1e9, retransmits: json.end.sum_sent?.retransmits }
}

/** Default IPv6 routes (proto 78: dualgate's) as `ip -6 monitor route` reports them, with the time each line arrived. */
export function routeMonitor(lab: Lab): { events: { at: number; dev: string }[]; child: ChildProcess } {
  const child = spawn('ip', ['netns', 'exec', lab.router.ns, 'ip', '-6', 'monitor', 'route'], { stdio: ['ignore', 'pipe', 'ignore'] })
  child.on('error', () => {})
  track(child)
  const events: { at: number; dev: string }[] = []
  createInterface({ input: child.stdout! }).on('line', (line) => {
    const at = Date.now()
    const m = /^default\b.*\bdev (\S+).*\bproto 78\b/.exec(line)
    if (m?.[1]) events.push({ at, dev: m[1] })
  })
  return { events, child }
}

export async function defaultDev(lab: Lab): Promise<string | undefined> {
  const out = (await lab.exec(lab.router.ns, 'ip', ['-j', '-6', 'route', 'show', 'default', 'proto', '78'])).stdout
  return (JSON.parse(out || '[]') as { dev?: string }[])[0]?.dev
}

export async function tunnelStatus(supervisor: Supervisor): Promise<Record<string, TunnelStatus>> {
  const route = supervisor.routes.find((r) => r.method === 'GET' && r.path === '/tunnels')
  if (!route) throw new Error('the tunnel supervisor has no GET /tunnels')
  const body = (await route.handler(undefined as never, undefined as never)) as { tunnels: TunnelStatus[] }
  return Object.fromEntries(body.tunnels.map((t) => [t.name, t]))
}

/** One `ping -c 1 -W 1` through the default route (a new process: it picks its source address afresh). */
async function pingOnce(lab: Lab): Promise<boolean> {
  return (await lab.exec(lab.router.ns, 'ping', ['-6', '-n', '-c', '1', '-W', String(TIMEOUT_S), TARGET], { nothrow: true, timeoutMs: 10_000 })).code === 0
}

/** When a ping through the default route first answers: one attempt after another (never two at once: in the
 * VM a process start costs about half a second of an emulated CPU, which the supervisor needs for its checks). */
async function firstAnswer(lab: Lab, limitMs: number): Promise<number> {
  const end = Date.now() + limitMs
  while (Date.now() < end) if (await pingOnce(lab)) return Date.now()
  throw new Error(`no ping through the default route answered within ${limitMs} ms`)
}

/**
 * When the default route reached `dev` after `since`: the monitor's time. It is read in this process; the
 * system is asked (a process start) only every few seconds, in case the monitor missed a line.
 */
async function routeOn(lab: Lab, monitor: ReturnType<typeof routeMonitor>, dev: string, since: number, limitMs: number): Promise<{ at: number; polled: boolean }> {
  let polledAt = Date.now()
  return waitFor(`the default route on ${dev}`, limitMs, async () => {
    const ev = monitor.events.find((e) => e.at >= since && e.dev === dev)
    if (ev) return { at: ev.at, polled: false }
    if (Date.now() - polledAt < 5_000) return undefined
    polledAt = Date.now()
    if ((await defaultDev(lab)) === dev) {
      // Give the monitor a moment before trusting the poll (its line may be on the way).
      await sleep(300)
      const late = monitor.events.find((e) => e.at >= since && e.dev === dev)
      return late ? { at: late.at, polled: false } : { at: polledAt, polled: true }
    }
    return undefined
  }, 50)
}

/** The start times of every check of the named tunnels, read from the supervisor's status in this process. */
export function checkSampler(supervisor: Supervisor, names: string[]): { times: Map<string, number[]>; stop: () => void } {
  const times = new Map<string, number[]>(names.map((n) => [n, []]))
  let busy = false
  const timer = setInterval(() => {
    if (busy) return
    busy = true
    tunnelStatus(supervisor)
      .then((st) => {
        for (const n of names) {
          const at = st[n]?.lastCheck ? Date.parse(st[n].lastCheck!) : undefined
          const list = times.get(n)!
          if (at !== undefined && at !== list.at(-1)) list.push(at)
        }
      })
      .catch(() => undefined)
      .finally(() => {
        busy = false
      })
  }, 400)
  timer.unref()
  return { times, stop: () => clearInterval(timer) }
}

export interface FaultResult {
  /** Absolute times (ms): the fault put in, the route on the backup, the fault lifted, the route back. */
  faultAt: number
  routeAt: number
  restoreAt: number
  backAt: number
  routeS: number
  routePolled: boolean
  pingS: number
  failbackS: number
}

export interface FailoverSpec {
  lab: Lab
  supervisor: Supervisor
  monitor: ReturnType<typeof routeMonitor>
  primary: { name: string; iface: string }
  backup: { name: string; iface: string }
  /** An nft statement for the upstream's input hook that cuts the primary (e.g. `meta l4proto 41 drop`). */
  drop: string
  faults: number
  /** How long both must have been clean before the first fault: a window of checks. */
  settleMs: number
}

/** Faults the primary `faults` times; for each, the time to the route on the backup and to a ping answer, and the failback. */
export async function measureFailover(s: FailoverSpec): Promise<FaultResult[]> {
  const { lab, supervisor, monitor, primary, backup } = s
  const up = lab.upstream.ns
  const faultFile = path.join(lab.dir, 'fault.nft')
  writeFileSync(faultFile, `table inet dgfault {\n  chain in {\n    type filter hook input priority 0; policy accept;\n    ${s.drop}\n  }\n}\n`)
  const results: FaultResult[] = []
  for (let i = 1; i <= s.faults; i++) {
    // A clean start each time: the primary carries the default route and both have had no loss for a whole
    // window of checks (a window still holding the last fault's failed checks, or not yet full, scores lower
    // and fails over after fewer failed checks).
    // No loss in the window means a whole window of good checks, once the window has filled: so only the first
    // fault waits for that.
    const settleMs = i === 1 ? s.settleMs : 0
    let cleanSince: number | undefined
    await waitFor(`${primary.name} primary with no loss for ${settleMs} ms, ${backup.name} up`, 90_000 + settleMs, async () => {
      const st = await tunnelStatus(supervisor)
      const p = st[primary.name]
      const b = st[backup.name]
      const clean = p?.primary && p.state === 'up' && p.lossPct === 0 && b?.state === 'up' && b.lossPct === 0 && monitor.events.at(-1)?.dev === primary.iface
      if (!clean) cleanSince = undefined
      else cleanSince ??= Date.now()
      return cleanSince !== undefined && Date.now() - cleanSince >= settleMs ? true : undefined
    }, 500)
    const dev = await defaultDev(lab)
    if (dev !== primary.iface) throw new Error(`the default route is on ${dev ?? 'nothing'}, not ${primary.iface}, though ip monitor said so`)
    const faultAt = Date.now()
    await lab.exec(up, 'nft', ['-f', faultFile])
    try {
      const route = await routeOn(lab, monitor, backup.iface, faultAt, 60_000)
      const pingAt = await firstAnswer(lab, 30_000)
      const restoreAt = Date.now()
      await lab.exec(up, 'nft', ['delete', 'table', 'inet', 'dgfault'])
      const back = await routeOn(lab, monitor, primary.iface, restoreAt, 60_000)
      const r = { faultAt, routeAt: route.at, restoreAt, backAt: back.at, routeS: (route.at - faultAt) / 1000, routePolled: route.polled, pingS: (pingAt - faultAt) / 1000, failbackS: (back.at - restoreAt) / 1000 }
      progress(`fault ${i}: route on ${backup.iface} after ${r.routeS.toFixed(2)} s, ping after ${r.pingS.toFixed(2)} s; back on ${primary.iface} ${r.failbackS.toFixed(2)} s after the fault was lifted`)
      results.push(r)
    } finally {
      await lab.exec(up, 'nft', ['delete', 'table', 'inet', 'dgfault'], { nothrow: true })
    }
  }
  return results
}

/** Seconds between consecutive checks of the primary: while it failed (fault to route moved), and while no fault was on. */
export function checkPeriods(checks: number[], faults: Pick<FaultResult, 'faultAt' | 'routeAt' | 'backAt'>[]): { healthy: number[]; failing: number[] } {
  const healthy: number[] = []
  const failing: number[] = []
  for (let k = 1; k < checks.length; k++) {
    const [a, b] = [checks[k - 1], checks[k]]
    if (faults.some((r) => a >= r.faultAt && b <= r.routeAt)) failing.push((b - a) / 1000)
    else if (!faults.some((r) => b >= r.faultAt && a <= r.backAt)) healthy.push((b - a) / 1000)
  }
  return { healthy, failing }
}

export function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

async function kernelHas(module: string): Promise<boolean> {
  const r = await new Promise<number>((resolve) => {
    const c = spawn('modprobe', ['--dry-run', '--quiet', module], { stdio: 'ignore' })
    c.on('error', () => resolve(127))
    c.on('exit', (code) => resolve(code ?? 1))
  })
  return r === 0
}

interface Path {
  name: string
  host: string
  bind: string
  /** Why it cannot be measured (the tunnel was not made). */
  unavailable?: string
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench/tunnels.ts needs root (network namespaces)')
  for (const m of ['sit', 'wireguard']) {
    if (!(await kernelHas(m))) {
      console.error(`bench/tunnels.ts: this kernel has no ${m} module; run it in the kernel lab:\n  node --import=tsx test/vm/run.ts --timeout 900 -- node --import=tsx bench/tunnels.ts`)
      process.exit(2)
    }
  }
  // wireguard-go needs /dev/net/tun. A system without udev's static nodes (the kernel lab's guest, a minimal
  // router image) has the node only once the module is loaded.
  if (!existsSync('/dev/net/tun')) {
    execFileSync('modprobe', ['tun'], { stdio: 'inherit', timeout: 30_000 })
    await waitFor('/dev/net/tun', 10_000, async () => (existsSync('/dev/net/tun') ? true : undefined), 100)
  }
  const t0 = Date.now()
  const lab = await createLab({ mode: 'ipv4', devices: 0 })
  let supervisor: Supervisor | undefined
  let sampler: ReturnType<typeof checkSampler> | undefined
  try {
    progress(`lab up after ${((Date.now() - t0) / 1000).toFixed(1)} s`)
    const R = lab.router.ns
    const up = lab.upstream.ns
    const x = (args: string[]) => lab.exec(up, 'ip', args)
    await x(['link', 'set', 'lo', 'up'])
    await x(['-6', 'addr', 'add', `${TARGET}/128`, 'dev', 'lo'])

    // The far ends: a 6in4 broker, a kernel WireGuard server and a wireguard-go server.
    await x(['link', 'add', 'name', HE.srv, 'type', 'sit', 'local', lab.upstream.ipv4, 'remote', lab.router.wanIpv4, 'ttl', '64'])
    await x(['-6', 'addr', 'add', `${HE.broker}/64`, 'dev', HE.srv, 'nodad'])
    await x(['link', 'set', HE.srv, 'up'])
    const keyK = wgGenkey()
    const keyG = wgGenkey()
    const srvK = await wireguardServer(lab, { ...WGK, peerKey: keyK, peerAddress: WGK.gw, go: false })
    const srvG = await wireguardServer(lab, { ...WGG, peerKey: keyG, peerAddress: WGG.gw, go: true })

    // The router's ends, by dualgate.
    mkdirSync(path.join(lab.dir, 'dg'), { recursive: true })
    const keyFile = (name: string, key: string) => {
      const file = path.join(lab.dir, `${name}.key`)
      writeFileSync(file, `${key}\n`, { mode: 0o600 })
      return file
    }
    const he = { name: HE.name, type: '6in4', iface: HE.iface, remote: lab.upstream.ipv4, address: [`${HE.gw}/64`], priority: 0, probe: [TARGET] }
    const wgk = { name: WGK.name, type: 'wireguard', backend: 'kernel', iface: WGK.iface, privateKeyFile: keyFile(WGK.iface, keyK), peerPublicKey: srvK.publicKey, endpoint: `${lab.upstream.ipv4}:${WGK.port}`, address: [`${WGK.gw}/64`], priority: 1, probe: [TARGET] }
    const wgg = { name: WGG.name, type: 'wireguard', backend: 'wireguard-go', iface: WGG.iface, privateKeyFile: keyFile(WGG.iface, keyG), peerPublicKey: srvG.publicKey, endpoint: `${lab.upstream.ipv4}:${WGG.port}`, address: [`${WGG.gw}/64`], priority: 2, probe: [TARGET] }
    let config = loadTunnels(lab, [he, wgk, wgg])
    const sh = nsSh(R)
    const store: Store = openStore({ dataDir: config.dataDir, backupCount: 0, backupInterval: 0 })
    const outcomes = await reconcileTunnels({ sh, config, store, log })
    const outcome = (name: string): TunnelOutcome | undefined => outcomes.find((o) => o.name === name)
    progress(`reconcileTunnels: ${outcomes.map((o) => `${o.name} ${o.action}${o.backend ? ` (${o.backend})` : ''}${o.detail ? `: ${o.detail}` : ''}`).join(', ')}`)

    const paths: Path[] = [
      { name: 'plain routing (IPv4 on the WAN)', host: lab.upstream.ipv4, bind: lab.router.wanIpv4 },
      { name: 'sit (6in4)', host: HE.broker, bind: HE.gw },
      { name: 'WireGuard (kernel)', host: WGK.server, bind: WGK.gw },
      { name: 'WireGuard (wireguard-go)', host: WGG.server, bind: WGG.gw },
    ]
    const expected: [Path, string, string | undefined][] = [[paths[1], HE.name, undefined], [paths[2], WGK.name, 'kernel'], [paths[3], WGG.name, 'wireguard-go']]
    for (const [p, name, backend] of expected) {
      const o = outcome(name)
      if (o?.action !== 'created') p.unavailable = `not created: ${o?.action ?? 'no outcome'}${o?.detail ? `: ${o.detail}` : ''}`
      else if (o.backend !== backend) p.unavailable = `backend ${o.backend}, not ${backend}`
    }
    // Each tunnel carries a ping from its own address first (WireGuard shakes hands on the first packet).
    for (const [p, iface] of [[paths[1], HE.iface], [paths[2], WGK.iface], [paths[3], WGG.iface]] as const) {
      if (p.unavailable) continue
      await waitFor(`a ping through ${iface}`, 30_000, async () => ((await lab.exec(R, 'ping', ['-6', '-n', '-c', '1', '-W', '2', '-I', iface, p.host], { nothrow: true })).code === 0 ? true : undefined), 500)
        .catch((err: Error) => { p.unavailable = err.message })
    }

    // Throughput, rounds interleaving the paths; each keeps its best round.
    const iperfServer = spawnIn(lab, up, 'iperf3', ['-s', '-p', String(IPERF_PORT)], 'iperf3.log')
    await waitFor('iperf3 in the upstream', 20_000, async () => ((await lab.exec(up, 'ss', ['-Hltn', 'sport', '=', `:${IPERF_PORT}`])).stdout.trim() ? true : undefined))
    const best = paths.map(() => ({ up: NaN, down: NaN, errors: [] as string[] }))
    const tIperf = Date.now()
    for (let round = 1; round <= ROUNDS; round++) {
      for (const [i, p] of paths.entries()) {
        if (p.unavailable) continue
        for (const reverse of [false, true]) {
          try {
            const r = await iperf(lab, p.host, p.bind, reverse)
            const key = reverse ? 'down' : 'up'
            best[i][key] = Number.isNaN(best[i][key]) ? r.gbps : Math.max(best[i][key], r.gbps)
            progress(`round ${round}: ${p.name} ${key} ${r.gbps.toFixed(3)} Gbit/s (${r.retransmits ?? '?'} retransmits)`)
          } catch (err) {
            best[i].errors.push((err as Error).message)
            progress(`round ${round}: ${p.name} ${reverse ? 'down' : 'up'} failed: ${(err as Error).message}`)
          }
        }
      }
    }
    const iperfS = (Date.now() - tIperf) / 1000
    iperfServer.kill('SIGTERM')

    // Failover: only 6in4 and kernel WireGuard (reconcile removes the wireguard-go tunnel, and its process with it).
    let faults: FaultResult[] = []
    let failoverSkipped: string | undefined
    let pingCostMs = NaN
    if (paths[1].unavailable || paths[2].unavailable) failoverSkipped = 'needs both the 6in4 and the kernel WireGuard tunnel'
    else {
      config = loadTunnels(lab, [he, wgk])
      const removed = await reconcileTunnels({ sh, config, store, log })
      progress(`reconcileTunnels for the failover: ${removed.map((o) => `${o.name} ${o.action}`).join(', ')}`)
      const monitor = routeMonitor(lab)
      await sleep(500)
      supervisor = startSupervisor(tunnelSupervisor, { store, config: () => config, sh, log: () => log })
      sampler = checkSampler(supervisor, [HE.name, WGK.name])
      await waitFor('6in4 primary and both tunnels up', 90_000, async () => {
        const st = await tunnelStatus(supervisor!)
        return st[HE.name]?.primary && st[HE.name].state === 'up' && st[WGK.name]?.state === 'up' ? true : undefined
      }, 500)
      await waitFor('the default route on 6in4', 30_000, async () => ((await defaultDev(lab)) === HE.iface ? true : undefined), 2_000)
      if (!monitor.events.some((e) => e.dev === HE.iface)) throw new Error('ip monitor did not report the first default route: no failover times without it')
      const costs: number[] = []
      for (let i = 0; i < 5; i++) {
        const a = Date.now()
        if (await pingOnce(lab)) costs.push(Date.now() - a)
      }
      pingCostMs = costs.length > 0 ? median(costs) : NaN
      faults = await measureFailover({ lab, supervisor, monitor, primary: { name: HE.name, iface: HE.iface }, backup: { name: WGK.name, iface: WGK.iface }, drop: 'meta l4proto 41 drop', faults: FAULTS, settleMs: config.tunnelWindow * INTERVAL_S * 1000 })
    }

    // The report.
    const base = best[0]
    const f = (v: number, d = 2) => (Number.isNaN(v) ? '-' : v.toFixed(d))
    const ratio = (v: number, b: number) => (Number.isNaN(v) || Number.isNaN(b) || b === 0 ? '-' : `${(v / b).toFixed(2)}x`)
    const lines: string[] = []
    lines.push('')
    lines.push(`dualgate tunnel bench (kernel lab: QEMU TCG, ${os.cpus().length} vCPUs, Linux ${os.release()}, load average ${os.loadavg()[0].toFixed(1)})`)
    lines.push('Absolute numbers are from TCG emulation (every guest instruction emulated): read the ratios, not the Gbit/s.')
    lines.push('Emulation costs computation more than copying: WireGuard\'s ratios (ChaCha20-Poly1305 on every packet) are pessimistic.')
    lines.push(`iperf3, 1 TCP stream, ${SECONDS} s (after ${OMIT} s omitted) each way, best of ${ROUNDS} interleaved rounds; up = router -> upstream`)
    lines.push('')
    lines.push(`${'path'.padEnd(34)}${'up'.padStart(8)}${'down'.padStart(8)}  Gbit/s${'up'.padStart(9)}${'down'.padStart(8)}  vs plain`)
    for (const [i, p] of paths.entries()) {
      const b = best[i]
      if (p.unavailable) {
        lines.push(`${p.name.padEnd(34)}  unavailable: ${p.unavailable}`)
        continue
      }
      lines.push(`${p.name.padEnd(34)}${f(b.up, 3).padStart(8)}${f(b.down, 3).padStart(8)}        ${ratio(b.up, base.up).padStart(9)}${ratio(b.down, base.down).padStart(8)}${b.errors.length ? `  (${b.errors.length} failed runs)` : ''}`)
    }
    lines.push('')
    const target = DOWN * INTERVAL_S + TIMEOUT_S
    if (failoverSkipped) lines.push(`failover: not measured (${failoverSkipped})`)
    else {
      lines.push(`Failover 6in4 -> kernel WireGuard, ${faults.length} faults (protocol 41 dropped at the broker); probe interval ${INTERVAL_S} s, timeout ${TIMEOUT_S} s, down after ${DOWN}, up after ${UP}, hold ${HOLD_S} s`)
      lines.push(`one ping attempt (a process start in the VM included) takes ${f(pingCostMs, 0)} ms when the path works`)
      lines.push('')
      lines.push(`${'fault'.padEnd(7)}${'route on wg'.padStart(13)}${'ping answers'.padStart(14)}${'failback'.padStart(11)}  (s; failback from lifting the fault)`)
      for (const [i, r] of faults.entries()) {
        lines.push(`${String(i + 1).padEnd(7)}${`${r.routePolled ? '~' : ''}${f(r.routeS)}`.padStart(13)}${f(r.pingS).padStart(14)}${f(r.failbackS).padStart(11)}`)
      }
      if (faults.length > 0) {
        const routeS = faults.map((r) => r.routeS)
        const pingS = faults.map((r) => r.pingS)
        const back = faults.map((r) => r.failbackS)
        lines.push(`${'median'.padEnd(7)}${f(median(routeS)).padStart(13)}${f(median(pingS)).padStart(14)}${f(median(back)).padStart(11)}`)
        lines.push(`${'max'.padEnd(7)}${f(Math.max(...routeS)).padStart(13)}${f(Math.max(...pingS)).padStart(14)}${f(Math.max(...back)).padStart(11)}`)
        lines.push('')
        const within = (v: number) => (v <= target ? 'within' : 'OVER')
        lines.push(`target: down x interval + timeout = ${DOWN} x ${INTERVAL_S} s + ${TIMEOUT_S} s = ${target} s; route median ${f(median(routeS))} s, max ${f(Math.max(...routeS))} s (${within(Math.max(...routeS))}); ping median ${f(median(pingS))} s, max ${f(Math.max(...pingS))} s (${within(Math.max(...pingS))})`)
        lines.push(`failback expected after about up x interval + hold = ${UP} x ${INTERVAL_S} s + ${HOLD_S} s = ${UP * INTERVAL_S + HOLD_S} s`)
        // How often the supervisor really checked the primary: a check is several process starts, which the
        // emulated CPU makes slow, so the configured interval is a floor, not the period.
        const { healthy, failing } = checkPeriods(sampler?.times.get(HE.name) ?? [], faults)
        if (healthy.length > 0 && failing.length > 0) {
          lines.push(`6in4 checks started every ${f(median(healthy))} s (median of ${healthy.length}) while healthy and every ${f(median(failing))} s (median of ${failing.length}) while failing, against the configured ${INTERVAL_S} s:`)
          lines.push(`  at that pace down x period + timeout is ${f(DOWN * median(failing) + TIMEOUT_S)} s`)
        }
      }
    }
    lines.push('')
    lines.push(`bench run ${((Date.now() - t0) / 1000).toFixed(0)} s (iperf3 ${iperfS.toFixed(0)} s), lab included`)
    console.log(lines.join('\n'))
  } finally {
    sampler?.stop()
    await supervisor?.close().catch(() => undefined)
    stopStarted()
    await lab.teardown()
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main()
