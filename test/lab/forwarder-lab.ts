// The forwarder lab: a small internet of network namespaces in which a dual-stack VPS lends IPv4 to an
// IPv6-only home (issue 13). Used by the relay-mode tests (prefix fwr), the kernel-mode tests on the host
// and in the kernel lab VM (prefix fwk), and bench/forwarder.ts.
//
//   <p><id>-vps  eth0 198.18.100.2/24, 2001:db8:100::2/64 ──┐
//   <p><id>-c4   eth0 198.18.101.2/24 (IPv4 only) ──────────┤ <p><id>-inet: routes between them all,
//   <p><id>-c6   eth0 2001:db8:201::2/64 (IPv6 only) ───────┤   dnsmasq on 198.18.53.53 and 2001:db8:53::53
//   <p><id>-router eth0 2001:db8:200::2/64 (no IPv4 WAN) ───┘   (home.lab.test, router.lab.test; short TTL)
//                  eth1 198.19.50.1/24, 2001:db8:250::1/64 ── <p><id>-server eth0 198.19.50.10/24,
//                                                              2001:db8:250::10/64 and ::11/64:
//                                                              HTTP :80, TCP echo :23, UDP echo :7
//                                                              (services.mjs home), HAProxy :8080 taking
//                                                              PROXY v2 (accept-proxy)
//
// The home router forwards both families and has an IPv6 default route only: an IPv6-only home. The
// internet routes the home's LAN prefix 2001:db8:250::/64 to it, as a delegated prefix would be.
//
// Safety (shared DESIGN.md): every interface is created inside a namespace of this lab (veth peers go
// straight into another lab namespace); the root namespace gets no address and no route; addresses come
// from 198.18.0.0/15 and 2001:db8::/32; every wait is bounded; commands run with argument vectors; teardown
// kills only processes inside this lab's namespaces, by PID, and is idempotent; a safety net tears down on
// exit and on SIGINT/SIGTERM/SIGHUP; labs of this prefix left by a dead process are removed at the next start.
import { execFileSync, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chmodSync, closeSync, existsSync, mkdtempSync, openSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { fileSize, ip, isAlive, isRoot, kill, listNetns, listNetnsSync, nsPidsSync, readText, removeNamespaces, run, sleep, waitFor, type ExecResult, type RunOptions } from './proc.ts'

export { isRoot } from './proc.ts'

/** Every address of the lab. */
export const FWLAB = {
  vps: { ipv4: '198.18.100.2', ipv6: '2001:db8:100::2', gw4: '198.18.100.1', gw6: '2001:db8:100::1', wanIf: 'eth0' },
  router: { wanIf: 'eth0', lanIf: 'eth1', wanIpv6: '2001:db8:200::2', gw6: '2001:db8:200::1', lanIpv4: '198.19.50.1', lanIpv6: '2001:db8:250::1', lanPrefix4: '198.19.50.0/24', lanPrefix6: '2001:db8:250::/64' },
  server: { ipv4: '198.19.50.10', ipv6: '2001:db8:250::10', ipv6Alt: '2001:db8:250::11', http: 80, tcpEcho: 23, udpEcho: 7, proxyHttp: 8080 },
  client4: { ipv4: '198.18.101.2', gw4: '198.18.101.1' },
  client6: { ipv6: '2001:db8:201::2', gw6: '2001:db8:201::1' },
  dns: { ipv4: '198.18.53.53', ipv6: '2001:db8:53::53', home: 'home.lab.test', router: 'router.lab.test' },
} as const

export interface ForwarderLabOptions {
  /** Namespace names are `<prefix><id>-<role>`: 2-4 lower-case letters, default 'fwr'. */
  prefix?: string
  /** TTL of the DNS answers (dnsmasq --local-ttl), seconds, default 2. */
  dnsTtl?: number
}

export type { ExecResult }
export type ExecOptions = RunOptions

export type Role = 'inet' | 'vps' | 'router' | 'server' | 'client4' | 'client6'

/** One line of the home server's peer log: what reached it, from where, on which of its addresses. */
export interface Peer { proto: 'http' | 'tcp' | 'udp' | 'proxy'; peer: string; local: string }

/** A TCP connection held open from a namespace (socat), for tests of what happens to established ones. */
export interface HeldConnection {
  /** Sends a line and resolves with the echo, or rejects when the connection is gone or after timeoutMs. */
  echo(line: string, timeoutMs?: number): Promise<string>
  /** Resolves when the connection has ended (socat exited). */
  closed: Promise<void>
  isClosed(): boolean
  close(): Promise<void>
}

export interface ForwarderLab {
  id: string
  prefix: string
  /** Temp dir for this lab's files (logs, pid files, DNS records). */
  dir: string
  ns: Record<Role, string>
  /** Runs cmd inside one of this lab's namespaces (`ip netns exec`); throws on a non-zero exit unless nothrow. */
  exec(ns: string, cmd: string, args: string[], opts?: ExecOptions): Promise<ExecResult>
  /** Starts a long-running process in one of the lab's namespaces, output to log; killed at teardown. */
  spawn(ns: string, cmd: string, args: string[], opts: { log: string; env?: Record<string, string> }): number
  /** HTTP GET from inside a namespace (curl); throws with curl's stderr on failure. */
  fetch(ns: string, url: string, timeoutMs?: number): Promise<string>
  /** One TCP connection: sends text, half-closes, returns what came back (socat). */
  tcpEcho(ns: string, host: string, port: number, text: string, timeoutMs?: number): Promise<string>
  /** One UDP datagram, returns the first answer (socat); '' when none came within timeoutMs. */
  udpEcho(ns: string, host: string, port: number, text: string, timeoutMs?: number): Promise<string>
  /** A TCP connection kept open for line-by-line echoes. */
  hold(ns: string, host: string, port: number): Promise<HeldConnection>
  server: {
    /** Every peer the home server's services saw, oldest first (HAProxy's PROXY v2 peers as proto 'proxy'). */
    peers(): Peer[]
    peerLog: string
    proxyLog: string
  }
  dns: {
    /** Replaces a name's records (no records: the name is gone, NXDOMAIN); waits until dnsmasq has read them. */
    set(name: string, records: { aaaa?: string[] | string; a?: string[] | string }): Promise<void>
    /** on: dnsmasq stops answering (SIGSTOP: queries time out); off: it answers again (SIGCONT). */
    fail(on: boolean): void
    /** Queries dnsmasq has logged so far for name (any type). */
    queries(name: string): number
    log: string
  }
  /** Idempotent. */
  teardown(): Promise<void>
}

const HERE = dirname(fileURLToPath(import.meta.url))
const SERVICES = join(HERE, 'services.mjs')
const DIR_PREFIX = 'dualgate-fwlab-'
const ROLES: Role[] = ['inet', 'vps', 'router', 'server', 'client4', 'client6']
const SHORT: Record<Role, string> = { inet: 'inet', vps: 'vps', router: 'router', server: 'server', client4: 'c4', client6: 'c6' }

const tail = (file: string, lines = 20) => readText(file).split('\n').slice(-lines).join('\n')

interface LiveLab { key: string; dir: string; namespaces: Set<string> }
const live = new Map<string, LiveLab>()
let handlersInstalled = false

function teardownSync(l: LiveLab): void {
  const namespaces = new Set([...l.namespaces, ...listNetnsSync().filter((n) => n.startsWith(`${l.key}-`))])
  for (const ns of namespaces) for (const pid of nsPidsSync(ns)) { kill(pid, 'SIGCONT'); kill(pid, 'SIGKILL') }
  for (const ns of namespaces) {
    try { execFileSync('ip', ['netns', 'del', ns], { timeout: 5_000, stdio: 'ignore' }) } catch { /* already gone */ }
  }
  rmSync(l.dir, { recursive: true, force: true })
  live.delete(l.key)
}

function installSafetyNet(): void {
  if (handlersInstalled) return
  handlersInstalled = true
  process.on('exit', () => { for (const l of [...live.values()]) teardownSync(l) })
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const onSignal = () => {
      for (const l of [...live.values()]) teardownSync(l)
      process.off(sig, onSignal)
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig)
    }
    process.on(sig, onSignal)
  }
}

/** Removes labs of this prefix whose owner process is dead (its dir names the owner). */
async function cleanStaleLabs(prefix: string): Promise<void> {
  const re = new RegExp(`^${prefix}([0-9a-f]{4})-[a-z0-9]+$`)
  const byId = new Map<string, string[]>()
  for (const ns of await listNetns()) {
    const id = re.exec(ns)?.[1]
    if (!id || live.has(`${prefix}${id}`)) continue
    byId.set(id, [...(byId.get(id) ?? []), ns])
  }
  if (byId.size === 0) return
  const dirs = readdirSync(tmpdir()).filter((d) => d.startsWith(`${DIR_PREFIX}${prefix}`))
  for (const [id, namespaces] of byId) {
    const dir = dirs.find((d) => d.startsWith(`${DIR_PREFIX}${prefix}${id}-`))
    if (!dir) continue
    const owner = Number.parseInt(readText(join(tmpdir(), dir, 'owner')), 10)
    if (!(owner > 0) || isAlive(owner)) continue
    await removeNamespaces(namespaces)
    rmSync(join(tmpdir(), dir), { recursive: true, force: true })
  }
}

const asList = (v: string[] | string | undefined) => (v === undefined ? [] : Array.isArray(v) ? v : [v])
const DNS_NAME = /^[a-z0-9]([a-z0-9-]{0,62}\.)*[a-z0-9-]{1,63}$/
const IPV4 = /^(\d{1,3}\.){3}\d{1,3}$/

export async function createForwarderLab(opts: ForwarderLabOptions = {}): Promise<ForwarderLab> {
  if (!isRoot()) throw new Error('the forwarder lab needs root (network namespaces)')
  const prefix = opts.prefix ?? 'fwr'
  if (!/^[a-z]{2,4}$/.test(prefix)) throw new Error(`prefix must be 2-4 lower-case letters, got ${JSON.stringify(prefix)}`)
  const ttl = opts.dnsTtl ?? 2
  if (!Number.isInteger(ttl) || ttl < 0 || ttl > 3600) throw new Error(`dnsTtl must be 0..3600, got ${ttl}`)

  await cleanStaleLabs(prefix)
  // Claim an id by creating its first namespace (`ip netns add` fails when it exists); the dir and its owner
  // file come first, for cleanStaleLabs.
  let id = ''
  let dir = ''
  let lastErr = ''
  const taken = new Set(await listNetns())
  for (let i = 0; i < 20 && !id; i++) {
    const candidate = randomBytes(2).toString('hex')
    if (taken.has(`${prefix}${candidate}-inet`) || live.has(`${prefix}${candidate}`)) continue
    const d = mkdtempSync(join(tmpdir(), `${DIR_PREFIX}${prefix}${candidate}-`))
    chmodSync(d, 0o755)
    writeFileSync(join(d, 'owner'), `${process.pid}\n`)
    const r = await ip(['netns', 'add', `${prefix}${candidate}-inet`], { nothrow: true })
    if (r.code === 0) { id = candidate; dir = d } else { rmSync(d, { recursive: true, force: true }); lastErr = r.stderr.trim() }
  }
  if (!id) throw new Error(`could not claim a free forwarder lab id: ${lastErr}`)
  const key = `${prefix}${id}`
  const state: LiveLab = { key, dir, namespaces: new Set([`${key}-inet`]) }
  live.set(key, state)
  installSafetyNet()

  const ns = Object.fromEntries(ROLES.map((r) => [r, `${key}-${SHORT[r]}`])) as Record<Role, string>
  const own = (name: string) => { if (!state.namespaces.has(name)) throw new Error(`${name} is not a namespace of forwarder lab ${key}`) }
  const inNs = (name: string, cmd: string, args: string[], o?: ExecOptions) => run('ip', ['netns', 'exec', name, cmd, ...args], o)
  const peerLog = join(dir, 'server.peers')
  const proxyLog = join(dir, 'server-haproxy.log')
  const hostsFile = join(dir, 'dns.hosts')
  const dnsLog = join(dir, 'dns.log')
  const dnsPidFile = join(dir, 'dns.pid')
  const records = new Map<string, { aaaa: string[]; a: string[] }>()
  let dnsPid = 0
  let dnsStopped = false
  let torn: Promise<void> | undefined

  function spawnIn(name: string, cmd: string, args: string[], o: { log: string; env?: Record<string, string> }): { pid: number; exited: () => string | undefined } {
    own(name)
    const fd = openSync(o.log, 'a')
    const child = spawn('ip', ['netns', 'exec', name, cmd, ...args], { detached: true, stdio: ['ignore', fd, fd], env: o.env ? { ...process.env, ...o.env } : process.env })
    closeSync(fd)
    let exited: string | undefined
    child.on('error', (err) => (exited = err.message))
    child.on('exit', (code, sig) => (exited = `exited ${code ?? sig}`))
    child.unref()
    if (!child.pid) throw new Error(`could not start ${cmd} in ${name}`)
    return { pid: child.pid, exited: () => exited }
  }

  async function startDaemon(name: string, cmd: string, args: string[], o: { log: string; what: string; ready: () => boolean | Promise<boolean> }): Promise<number> {
    const d = spawnIn(name, cmd, args, { log: o.log })
    await waitFor(`${o.what} in ${name}`, 10_000, async () => {
      if (await o.ready()) return true
      if (d.exited() !== undefined) throw new Error(`${o.what} ${d.exited()}:\n${tail(o.log)}`)
      return false
    }).catch((err: Error) => { throw new Error(`${err.message}\n${tail(o.log)}`) })
    return d.pid
  }

  const listening = async (name: string, proto: 't' | 'u', port: number) =>
    (await inNs(name, 'ss', ['-Hln', `-${proto}`, 'sport', '=', `:${port}`], { nothrow: true })).stdout.trim().length > 0

  function writeHosts(): void {
    const lines = [...records].flatMap(([name, r]) => [...r.aaaa, ...r.a].map((addr) => `${addr} ${name}`))
    writeFileSync(hostsFile, `${lines.join('\n')}\n`)
  }

  async function setRecords(name: string, r: { aaaa?: string[] | string; a?: string[] | string }): Promise<void> {
    if (!DNS_NAME.test(name)) throw new Error(`bad DNS name ${JSON.stringify(name)}`)
    const aaaa = asList(r.aaaa)
    const a = asList(r.a)
    for (const x of aaaa) if (!x.includes(':') || !/^[0-9a-f:]+$/i.test(x)) throw new Error(`not an IPv6 address: ${x}`)
    for (const x of a) if (!IPV4.test(x)) throw new Error(`not an IPv4 address: ${x}`)
    if (aaaa.length + a.length === 0) records.delete(name)
    else records.set(name, { aaaa, a })
    writeHosts()
    if (!dnsPid) return
    // dnsmasq re-reads --addn-hosts (and clears its cache) on SIGHUP and logs "read <file>"; a stopped one
    // reads it when it is let go.
    const from = fileSize(dnsLog)
    kill(dnsPid, 'SIGHUP')
    if (dnsStopped) return
    await waitFor('dnsmasq to re-read its hosts file', 5_000, () => readText(dnsLog).slice(from).includes(`read ${hostsFile}`), 20)
  }

  function parsePeers(): Peer[] {
    const out: Peer[] = []
    for (const line of readText(peerLog).split('\n')) {
      const [proto, peer, local] = line.trim().split(/\s+/)
      if ((proto === 'http' || proto === 'tcp' || proto === 'udp') && peer) out.push({ proto, peer, local: local ?? '' })
    }
    // HAProxy's log-format line: "proxy <client> <destination>" (both from the PROXY header).
    for (const line of readText(proxyLog).split('\n')) {
      const m = /^proxy (\S+) (\S+)/.exec(line.trim())
      if (m) out.push({ proto: 'proxy', peer: m[1]!.replace(/^::ffff:/, ''), local: m[2]!.replace(/^::ffff:/, '') })
    }
    return out
  }

  async function hold(name: string, host: string, port: number): Promise<HeldConnection> {
    own(name)
    const target = host.includes(':') ? `TCP6:[${host}]:${port}` : `TCP4:${host}:${port}`
    const child = spawn('ip', ['netns', 'exec', name, 'socat', '-', target], { stdio: ['pipe', 'pipe', 'pipe'] })
    let buffered = ''
    let stderr = ''
    let isClosed = false
    const waiters: (() => void)[] = []
    child.stdout.on('data', (b) => { buffered += String(b); for (const w of waiters.splice(0)) w() })
    child.stderr.on('data', (b) => { if (stderr.length < 4096) stderr += String(b) })
    child.stdin.on('error', () => {})
    const closed = new Promise<void>((resolve) => child.once('exit', () => { isClosed = true; for (const w of waiters.splice(0)) w(); resolve() }))
    const echo = async (line: string, timeoutMs = 3_000) => {
      if (isClosed) throw new Error(`connection to ${host}:${port} is closed: ${stderr.trim()}`)
      child.stdin.write(`${line}\n`)
      const deadline = Date.now() + timeoutMs
      while (!buffered.includes('\n')) {
        if (isClosed) throw new Error(`connection to ${host}:${port} closed: ${stderr.trim()}`)
        const left = deadline - Date.now()
        if (left <= 0) throw new Error(`no echo from ${host}:${port} within ${timeoutMs} ms`)
        await new Promise<void>((resolve) => { waiters.push(resolve); setTimeout(resolve, Math.min(left, 200)) })
      }
      const cut = buffered.indexOf('\n')
      const got = buffered.slice(0, cut)
      buffered = buffered.slice(cut + 1)
      return got
    }
    return {
      echo,
      closed,
      isClosed: () => isClosed,
      async close() {
        if (!isClosed) child.kill('SIGTERM')
        await Promise.race([closed, sleep(2_000)])
        if (!isClosed) child.kill('SIGKILL')
      },
    }
  }

  const lab: ForwarderLab = {
    id,
    prefix,
    dir,
    ns,
    async exec(name, cmd, args, o = {}) {
      own(name)
      return inNs(name, cmd, args, o)
    },
    spawn: (name, cmd, args, o) => spawnIn(name, cmd, args, o).pid,
    async fetch(name, url, timeoutMs = 5_000) {
      own(name)
      const secs = Math.max(1, Math.ceil(timeoutMs / 1000))
      const r = await inNs(name, 'curl', ['-sS', '-g', '--noproxy', '*', '--fail-with-body', '--max-time', String(secs), url], { nothrow: true, timeoutMs: timeoutMs + 2_000 })
      if (r.code !== 0) throw new Error(`GET ${url} from ${name} failed (curl exit ${r.code}): ${r.stderr.trim()} ${r.stdout.trim()}`.trim())
      return r.stdout
    },
    async tcpEcho(name, host, port, text, timeoutMs = 5_000) {
      own(name)
      const target = host.includes(':') ? `TCP6:[${host}]:${port}` : `TCP4:${host}:${port}`
      const secs = String(Math.max(1, Math.ceil(timeoutMs / 1000)))
      const r = await inNs(name, 'socat', ['-T', secs, '-', `${target},connect-timeout=${secs}`], { input: text, nothrow: true, timeoutMs: timeoutMs + 2_000 })
      if (r.code !== 0) throw new Error(`TCP ${host}:${port} from ${name} failed (socat exit ${r.code}): ${r.stderr.trim()}`)
      return r.stdout
    },
    async udpEcho(name, host, port, text, timeoutMs = 2_000) {
      own(name)
      const target = host.includes(':') ? `UDP6:[${host}]:${port}` : `UDP4:${host}:${port}`
      // -T: socat ends after that long without traffic, having printed whatever answer came.
      const r = await inNs(name, 'socat', ['-T', String(Math.max(0.2, timeoutMs / 1000)), '-', target], { input: text, nothrow: true, timeoutMs: timeoutMs + 3_000 })
      return r.stdout
    },
    hold,
    server: { peers: parsePeers, peerLog, proxyLog },
    dns: {
      set: setRecords,
      fail(on) {
        if (!dnsPid) return
        dnsStopped = on
        kill(dnsPid, on ? 'SIGSTOP' : 'SIGCONT')
      },
      queries: (name) => readText(dnsLog).split('\n').filter((l) => / query\[[A-Z0-9]+\] /.test(l) && l.includes(` ${name} from `)).length,
      log: dnsLog,
    },
    teardown() {
      torn ??= (async () => {
        const namespaces = [...new Set([...state.namespaces, ...(await listNetns()).filter((n) => n.startsWith(`${key}-`))])]
        await removeNamespaces(namespaces)
        state.namespaces.clear()
        rmSync(dir, { recursive: true, force: true })
        live.delete(key)
      })()
      return torn
    },
  }

  try {
    const addNs = async (name: string, sysctls: string[]) => {
      if (!state.namespaces.has(name)) {
        await ip(['netns', 'add', name])
        state.namespaces.add(name)
      }
      await ip(['-n', name, 'link', 'set', 'lo', 'up'])
      if (sysctls.length) await inNs(name, 'sysctl', ['-q', '-w', ...sysctls])
    }
    const forward = ['net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1', 'net.ipv6.conf.default.forwarding=1']
    const noRa = ['net.ipv6.conf.all.accept_ra=0', 'net.ipv6.conf.default.accept_ra=0']
    const noV6 = ['net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']
    await Promise.all([
      addNs(ns.inet, forward),
      addNs(ns.vps, noRa),
      addNs(ns.router, forward),
      addNs(ns.server, noRa),
      addNs(ns.client4, noV6),
      addNs(ns.client6, noRa),
    ])

    // Links: <ns> eth0 to the internet's port named after it; the router's LAN eth1 to the server's eth0.
    const { vps, router, server, client4, client6, dns } = FWLAB
    const link = (from: string, fromIf: string, to: string, toIf: string) => ip(['-n', from, 'link', 'add', fromIf, 'type', 'veth', 'peer', 'name', toIf, 'netns', to])
    await link(ns.vps, 'eth0', ns.inet, 'vps')
    await link(ns.router, 'eth0', ns.inet, 'home')
    await link(ns.client4, 'eth0', ns.inet, 'c4')
    await link(ns.client6, 'eth0', ns.inet, 'c6')
    await link(ns.router, 'eth1', ns.server, 'eth0')

    const batch = async (name: string, lines: string[]) => ip(['-n', name, '-batch', '-'], { input: `${lines.join('\n')}\n` })
    await batch(ns.inet, [
      `addr add ${vps.gw4}/24 dev vps`, `addr add ${vps.gw6}/64 dev vps nodad`,
      `addr add ${router.gw6}/64 dev home nodad`,
      `addr add ${client4.gw4}/24 dev c4`,
      `addr add ${client6.gw6}/64 dev c6 nodad`,
      `addr add ${dns.ipv4}/32 dev lo`, `addr add ${dns.ipv6}/128 dev lo`,
      'link set vps up', 'link set home up', 'link set c4 up', 'link set c6 up',
      `route add ${router.lanPrefix6} via ${router.wanIpv6} dev home`,
    ])
    await batch(ns.vps, [
      `addr add ${vps.ipv4}/24 dev eth0`, `addr add ${vps.ipv6}/64 dev eth0 nodad`, 'link set eth0 up',
      `route add default via ${vps.gw4} dev eth0`, `route add ::/0 via ${vps.gw6} dev eth0`,
    ])
    await batch(ns.router, [
      `addr add ${router.wanIpv6}/64 dev eth0 nodad`,
      `addr add ${router.lanIpv4}/24 dev eth1`, `addr add ${router.lanIpv6}/64 dev eth1 nodad`,
      'link set eth0 up', 'link set eth1 up',
      // An IPv6-only home: no IPv4 on the WAN and no IPv4 default route.
      `route add ::/0 via ${router.gw6} dev eth0`,
    ])
    await batch(ns.server, [
      `addr add ${server.ipv4}/24 dev eth0`, `addr add ${server.ipv6}/64 dev eth0 nodad`, `addr add ${server.ipv6Alt}/64 dev eth0 nodad`, 'link set eth0 up',
      `route add default via ${router.lanIpv4} dev eth0`, `route add ::/0 via ${router.lanIpv6} dev eth0`,
    ])
    await batch(ns.client4, [`addr add ${client4.ipv4}/24 dev eth0`, 'link set eth0 up', `route add default via ${client4.gw4} dev eth0`])
    await batch(ns.client6, [`addr add ${client6.ipv6}/64 dev eth0 nodad`, 'link set eth0 up', `route add ::/0 via ${client6.gw6} dev eth0`])

    // DNS: the home's names from a hosts file re-read on SIGHUP, a short TTL, nothing forwarded elsewhere.
    records.set(dns.home, { aaaa: [server.ipv6], a: [] })
    records.set(dns.router, { aaaa: [router.wanIpv6], a: [] })
    writeHosts()
    writeFileSync(dnsPidFile, '')
    dnsPid = await startDaemon(ns.inet, 'dnsmasq', [
      '--keep-in-foreground', '--conf-file=/dev/null', '--no-resolv', '--no-hosts', '--user=root',
      '--bind-interfaces', `--listen-address=${dns.ipv4}`, `--listen-address=${dns.ipv6}`, '--port=53',
      `--addn-hosts=${hostsFile}`, `--local-ttl=${ttl}`, '--local=/lab.test/', '--log-queries',
      `--log-facility=${dnsLog}`, `--pid-file=${dnsPidFile}`,
    ], { log: join(dir, 'dns.out'), what: 'dnsmasq', ready: () => readText(dnsPidFile).trim().length > 0 })

    // The home server's services, and HAProxy taking PROXY v2 in front of an answer that names the client.
    writeFileSync(peerLog, '')
    const ready = join(dir, 'server.ready')
    const services = startDaemon(ns.server, process.execPath, [SERVICES, 'home', '--addrs', [server.ipv4, server.ipv6, server.ipv6Alt].join(','), '--log', peerLog, '--ready', ready], {
      log: join(dir, 'server-services.log'), what: 'home services', ready: () => existsSync(ready),
    })
    const haproxyConf = join(dir, 'server-haproxy.cfg')
    writeFileSync(haproxyConf, [
      'global',
      '  log stdout format raw local0 info',
      'defaults',
      '  mode http',
      '  log global',
      '  timeout connect 5s',
      '  timeout client 10s',
      '  timeout server 10s',
      'frontend proxied',
      `  bind :::${server.proxyHttp} v4v6 accept-proxy`,
      '  log-format "proxy %ci %fi"',
      '  http-request return status 200 content-type text/plain lf-string "home %[dst] peer %[src]\\n"',
      '',
    ].join('\n'))
    const haproxy = startDaemon(ns.server, 'haproxy', ['-db', '-f', haproxyConf], {
      log: proxyLog, what: 'HAProxy (PROXY v2 consumer)', ready: () => listening(ns.server, 't', server.proxyHttp),
    })
    await Promise.all([services, haproxy])
    return lab
  } catch (err) {
    await lab.teardown()
    throw err
  }
}
