// The network lab: a small internet built from network namespaces and veth pairs, for integration
// tests and demos (see shared DESIGN.md, "Tests run against a real network").
//
//   dgXXXX-c4 (client4, 198.18.0.10/22, IPv4 only) ──┐
//   dgXXXX-c6 (client6, 2001:db8:1::10/64, IPv6 only) ┤ br0 in dgXXXX-up (upstream):
//                                                      │   198.18.0.1/22, 2001:db8:1::1/64, dnsmasq
//                                                      │   (DHCPv4, DHCPv6, RA) answering registered
//                                                      │   MACs only, nftables bridge firewall dropping
//                                                      │   unregistered source MACs, HTTP on :80
//   dgXXXX-router: eth0 (WAN) ────────────────────────┘
//                  eth1 (LAN, 198.19.0.1/24, dnsmasq DHCPv4) ── br0 in dgXXXX-sw (the LAN switch)
//                                                                 ├── dgXXXX-dev0 eth0 (udhcpc, services)
//                                                                 ├── dgXXXX-dev1 ...
//                                                                 └── dgXXXX-crowd0 eth0 + n macvlans
//
// Safety rules (shared DESIGN.md): every interface is created inside a namespace of this lab (veth
// pairs are made with `ip -n A link add ... peer ... netns B`, so no end ever exists in the root
// namespace); the root namespace gets no address and no route; addresses come from 198.18.0.0/15
// and 2001:db8::/32 only; every wait is bounded; every command runs with an argument vector (never
// a shell line); teardown kills only processes inside this lab's namespaces, by PID.
//
// What dnsmasq 2.90 (Debian 12) does here, checked by lab.test.ts:
// - Environment of --dhcp-script: the script gets dnsmasq's own environment plus its DNSMASQ_*
//   variables (DNSMASQ_INTERFACE, DNSMASQ_SUPPLIED_HOSTNAME, ...), arguments "add|old|del MAC IP
//   [HOSTNAME]". The lab starts the router's dnsmasq with PATH plus opts.dhcpScriptEnv (e.g.
//   DUALGATE_DATA_DIR), so those reach the script. The script runs as root (dhcp-scriptuser default).
// - DHCPv6 and unknown MACs: `dhcp-host=<mac>` lines (the hosts file) do make DHCPv6 clients
//   "known", so `dhcp-ignore=tag:!known` refuses DHCPv6 to unregistered MACs ("DHCPSOLICIT ...
//   ignored") as it does DHCPv4. dnsmasq logs "client MAC address: ..." and takes it from the
//   link layer (its neighbour table for the client's link-local source), NOT from the DUID: a
//   Solicit whose DUID-LL names an unregistered MAC, sent from a registered MAC, gets a lease.
//   (That is why the firewall lets unregistered MACs do neighbour discovery.)
// - RA: `enable-ra` with `dhcp-range=2001:db8:1::1000,2001:db8:1::ffff,slaac,64,T` sends RAs with
//   the M and O flags and a prefix option 2001:db8:1::/64 with the L and A flags, so a host does
//   both SLAAC and stateful DHCPv6. In ipv4 mode no RA is sent and nothing listens on UDP 547.
// - dnsmasq pings an address before offering it and blocks all DHCP for up to 3 s while it waits:
//   with 3 devices that was 9 s, with 200 it would be 10 minutes. Both dnsmasqs run with --no-ping.
// - The bridge firewall lets unregistered MACs send only DHCP requests (UDP 67, 547) and the
//   neighbour-discovery messages needed to ask (RS, NS, NA), so that "no lease for an unregistered
//   MAC" is dnsmasq's answer, not just the firewall's; every other frame from them is dropped and
//   counted (`nft list chain bridge dgfw pre`).
// - The router namespace forwards, so the kernel ignores RAs there unless an interface has
//   accept_ra=2: a WAN macvlan that should do SLAAC needs net.ipv6.conf.<if>.accept_ra=2.
import { execFileSync, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import {
  accessSync,
  chmodSync,
  constants as fsConstants,
  closeSync,
  copyFileSync,
  existsSync,
  fstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { fileSize, ip, isAlive, isRoot, kill, killNamespaces, listNetns, listNetnsSync, nsPidsSync, readText, removeNamespaces, run, sleep, waitFor, type ExecResult } from './proc.ts'

export { isRoot, type ExecResult } from './proc.ts'

export type LabMode = 'ipv4' | 'ipv6' | 'dual'

export interface LabOptions {
  mode: LabMode
  /** LAN devices, each its own namespace, default 3. */
  devices?: number
  /** Indices of devices whose MAC is NOT registered upstream (default none). */
  unregistered?: number[]
  /** Upstream DHCP lease seconds (default 3600; dnsmasq's minimum is 120). */
  leaseTime?: number
  /** Absolute path given to the router's LAN dnsmasq as --dhcp-script (optional). */
  dhcpScript?: string
  /** Environment the router dnsmasq (and so its script) gets, on top of PATH. */
  dhcpScriptEnv?: Record<string, string>
  /** The upstream runs a NAT64 (PLAT, tayga) at plat.prefix in front of an IPv4 host: 464XLAT labs. */
  plat?: boolean
}

export interface LabDevice {
  name: string
  ns: string
  mac: string
  lanIpv4: string
  hostname: string
  /** Every peer of the device's services, one line each: "<http|tcp|udp> <address>". */
  peerLog: string
}

export interface UpstreamLeases {
  v4: { mac: string; ip: string; expires: number }[]
  v6: { duid: string; iaid: string; ip: string; expires: number }[]
}

export interface LabExecOptions {
  timeoutMs?: number
  env?: Record<string, string>
  nothrow?: boolean
}

export interface Lab {
  id: string
  mode: LabMode
  /** Temp dir for this lab's files (leases, logs, pid files). */
  dir: string
  router: {
    ns: string
    wanIf: 'eth0'
    lanIf: 'eth1'
    lanAddr: '198.19.0.1/24'
    lanIp: '198.19.0.1'
    wanIpv4: '198.18.0.2'
    wanMac: string
    leasesFile: string
  }
  upstream: {
    ns: string
    ipv4: '198.18.0.1'
    ipv6: '2001:db8:1::1'
    prefix6: '2001:db8:1::/64'
    leasesFile: string
    register(mac: string): Promise<void>
    unregister(mac: string): Promise<void>
    leases(): Promise<UpstreamLeases>
    /** Moves the upstream to a new IPv6 /64 (returned), as an ISP renumbering would; client6 gets ::10 in it. */
    renumber6(): Promise<string>
    /** With opts.plat: the NAT64 prefix, the IPv4 host behind it (the upstream's HTTP server), the pool. */
    plat?: { prefix: string; ipv4Host: string; pool: string }
  }
  /** Live devices in order (dev0, dev1, ...); addDevice appends, unplug removes. */
  devices: LabDevice[]
  /** IPv4-only client on the upstream bridge (/22, default via 198.18.0.1; idle in ipv6 mode). */
  client4: { ns: string; ip: '198.18.0.10' }
  /** IPv6-only client on the upstream bridge (/64, default via 2001:db8:1::1, no RA, IPv4 dropped). */
  client6: { ns: string; ip: '2001:db8:1::10' }
  /** Runs cmd inside one of this lab's namespaces (`ip netns exec`); throws on non-zero exit unless nothrow. */
  exec(ns: string, cmd: string, args: string[], opts?: LabExecOptions): Promise<ExecResult>
  addDevice(opts?: { registered?: boolean; hostname?: string }): Promise<LabDevice>
  /** Removes the device (its namespace and link) as if unplugged: no DHCP release. */
  unplug(dev: LabDevice): Promise<void>
  /** n extra devices as macvlans in ONE namespace, each takes a LAN lease once (udhcpc -q). */
  addCrowd(n: number, opts?: { registered?: boolean }): Promise<{ ns: string; macs: string[] }>
  /** HTTP GET from inside a namespace (curl); throws with curl's stderr on failure. */
  fetch(ns: string, url: string, timeoutMs?: number): Promise<string>
  /** Idempotent. */
  teardown(): Promise<void>
}

const HERE = dirname(fileURLToPath(import.meta.url))
const SERVICES = join(HERE, 'services.mjs')
const UDHCPC_SCRIPT = join(HERE, 'udhcpc.sh')

const LAN_IP = '198.19.0.1'
const UP_V4 = '198.18.0.1'
const UP_V6 = '2001:db8:1::1'
const UP_PREFIX6_BASE = '2001:db8:1::'
const UP_PREFIX6_NEXT = '2001:db8:2::'
const PLAT = { prefix: '2001:db8:64::/96', ipv4Host: '198.18.66.1', pool: '198.18.65.0/24' }
const ROUTER_V4 = '198.18.0.2'
const ROUTER_V6 = '2001:db8:1::2'
const C4_IP = '198.18.0.10'
const C6_IP = '2001:db8:1::10'
const DEVICE_LEASE_TIMEOUT_MS = 20_000
const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/

/** Runs fn over items with at most `limit` running at once. */
async function pool<T, R>(items: T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length)
  let next = 0
  const worker = async () => {
    while (next < items.length) {
      const i = next++
      out[i] = await fn(items[i] as T, i)
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
  return out
}

function randomMac(): string {
  const b = randomBytes(6)
  b[0] = ((b[0] ?? 0) & 0xfc) | 0x02 // locally administered, unicast
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':')
}

function normalizeMac(mac: string): string {
  const m = mac.trim().toLowerCase()
  if (!MAC_RE.test(m)) throw new Error(`not a MAC address: ${JSON.stringify(mac)}`)
  return m
}

function tail(file: string, lines = 30): string {
  try {
    return readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n')
  } catch {
    return '(no log)'
  }
}

// ---------------------------------------------------------------------------------------------
// The lab's own namespaces (./proc.ts finds and ends their processes).

const LAB_NS_RE = /^dg([0-9a-f]{4})-[a-z0-9]+$/
const DIR_PREFIX = 'dualgate-lab-'

interface LiveLab {
  id: string
  dir: string
  namespaces: Set<string>
}

const live = new Map<string, LiveLab>()
let handlersInstalled = false

function teardownSync(l: LiveLab): void {
  const prefix = `dg${l.id}-`
  const namespaces = new Set([...l.namespaces, ...listNetnsSync().filter((n) => n.startsWith(prefix))])
  for (const ns of namespaces) for (const pid of nsPidsSync(ns)) kill(pid, 'SIGKILL')
  for (const ns of namespaces) {
    try {
      execFileSync('ip', ['netns', 'del', ns], { timeout: 5_000, stdio: 'ignore' })
    } catch {
      // already gone
    }
  }
  rmSync(l.dir, { recursive: true, force: true })
  live.delete(l.id)
}

function installSafetyNet(): void {
  if (handlersInstalled) return
  handlersInstalled = true
  process.on('exit', () => {
    for (const l of [...live.values()]) teardownSync(l)
  })
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const onSignal = () => {
      for (const l of [...live.values()]) teardownSync(l)
      process.off(sig, onSignal)
      // Without other listeners this re-raises with the default action (exit by that signal).
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig)
    }
    process.on(sig, onSignal)
  }
}

/** Removes labs left by processes that died without tearing down (SIGKILL, power loss of a CI box). */
async function cleanStaleLabs(): Promise<void> {
  const byId = new Map<string, string[]>()
  for (const ns of await listNetns()) {
    const m = LAB_NS_RE.exec(ns)
    if (!m?.[1] || live.has(m[1])) continue
    byId.set(m[1], [...(byId.get(m[1]) ?? []), ns])
  }
  if (byId.size === 0) return
  const dirs = readdirSync(tmpdir()).filter((d) => d.startsWith(DIR_PREFIX))
  for (const [id, namespaces] of byId) {
    // Only namespaces whose lab dir names a dead owner are ours to remove: anything else may
    // belong to someone else's tooling that happens to use a similar name.
    const dir = dirs.find((d) => d.startsWith(`${DIR_PREFIX}${id}-`))
    if (!dir) continue
    const owner = Number.parseInt(readText(join(tmpdir(), dir, 'owner')), 10)
    if (!(owner > 0) || isAlive(owner)) continue
    await removeNamespaces(namespaces)
    rmSync(join(tmpdir(), dir), { recursive: true, force: true })
  }
}

// ---------------------------------------------------------------------------------------------
// Lease files.

function parseUpstreamLeases(text: string): UpstreamLeases {
  const out: UpstreamLeases = { v4: [], v6: [] }
  let v6 = false
  for (const line of text.split('\n')) {
    // dnsmasq writes the IPv4 leases, then "duid <server DUID>", then the IPv6 leases.
    const f = line.trim().split(/\s+/)
    if (f[0] === 'duid') {
      v6 = true
      continue
    }
    if (f.length < 3) continue
    const expires = Number(f[0])
    if (!v6) out.v4.push({ mac: (f[1] ?? '').toLowerCase(), ip: f[2] ?? '', expires })
    else out.v6.push({ iaid: f[1] ?? '', ip: f[2] ?? '', duid: (f[4] ?? '').toLowerCase(), expires })
  }
  return out
}


/** The text of file from byte offset on. */
function readFrom(file: string, offset: number): string {
  let fd: number | undefined
  try {
    fd = openSync(file, 'r')
    const size = fstatSync(fd).size
    if (size <= offset) return ''
    const buf = Buffer.alloc(size - offset)
    readSync(fd, buf, 0, buf.length, offset)
    return buf.toString('utf8')
  } catch {
    return ''
  } finally {
    if (fd !== undefined) closeSync(fd)
  }
}


/** The MAC inside a DUID-LLT (type 1) or DUID-LL (type 3) with hardware type Ethernet, as dnsmasq writes DUIDs (aa:bb:...). */
export function macFromDuid(duid: string): string | undefined {
  const b = duid.toLowerCase().split(':')
  if (b[0] !== '00' || b[2] !== '00' || b[3] !== '01') return undefined
  if (b[1] === '03' && b.length === 10) return b.slice(4).join(':')
  if (b[1] === '01' && b.length === 14) return b.slice(8).join(':')
  return undefined
}

// ---------------------------------------------------------------------------------------------

export async function createLab(opts: LabOptions): Promise<Lab> {
  if (!isRoot()) throw new Error('the network lab needs root (network namespaces)')
  const mode = opts.mode
  if (mode !== 'ipv4' && mode !== 'ipv6' && mode !== 'dual') throw new Error(`bad lab mode ${String(mode)}`)
  const deviceCount = opts.devices ?? 3
  if (!Number.isInteger(deviceCount) || deviceCount < 0 || deviceCount > 50) throw new Error(`devices must be 0..50, got ${deviceCount}`)
  const leaseTime = opts.leaseTime ?? 3600
  if (!Number.isInteger(leaseTime) || leaseTime < 120) throw new Error(`leaseTime must be an integer >= 120 (dnsmasq's minimum), got ${leaseTime}`)
  const unregistered = new Set(opts.unregistered ?? [])
  if (opts.dhcpScript !== undefined) {
    if (!opts.dhcpScript.startsWith('/')) throw new Error('dhcpScript must be an absolute path')
    // dnsmasq itself starts fine with a missing script and only fails on the first lease.
    accessSync(opts.dhcpScript, fsConstants.X_OK)
  }
  const v4 = mode !== 'ipv6'
  const v6 = mode !== 'ipv4'

  await cleanStaleLabs()
  // Claim an id by creating its router namespace (`ip netns add` fails if it exists), so two
  // processes can never share one; the dir and its owner file come first, for cleanStaleLabs().
  let id = ''
  let dir = ''
  let lastErr = ''
  const taken = new Set((await listNetns()).map((n) => LAB_NS_RE.exec(n)?.[1]).filter(Boolean))
  for (let i = 0; i < 20 && !id; i++) {
    const candidate = randomBytes(2).toString('hex')
    if (taken.has(candidate) || live.has(candidate)) continue
    const d = mkdtempSync(join(tmpdir(), `${DIR_PREFIX}${candidate}-`))
    chmodSync(d, 0o755)
    writeFileSync(join(d, 'owner'), `${process.pid}\n`)
    const r = await ip(['netns', 'add', `dg${candidate}-router`], { nothrow: true })
    if (r.code === 0) {
      id = candidate
      dir = d
    } else {
      rmSync(d, { recursive: true, force: true })
      lastErr = r.stderr.trim()
    }
  }
  if (!id) throw new Error(`could not claim a free lab id: ${lastErr}`)
  const state: LiveLab = { id, dir, namespaces: new Set([`dg${id}-router`]) }
  live.set(id, state)
  installSafetyNet()

  const nsName = (suffix: string) => `dg${id}-${suffix}`
  const routerNs = nsName('router')
  const upNs = nsName('up')
  const swNs = nsName('sw')
  const c4Ns = nsName('c4')
  const c6Ns = nsName('c6')
  const udhcpcScript = join(dir, 'udhcpc.sh')
  const hostsFile = join(dir, 'upstream.hosts')
  const upLog = join(dir, 'upstream-dnsmasq.log')
  const upPidFile = join(dir, 'upstream-dnsmasq.pid')
  const routerLog = join(dir, 'router-dnsmasq.log')
  const routerPidFile = join(dir, 'router-dnsmasq.pid')
  const routerLeases = join(dir, 'router.leases')
  const upLeases = join(dir, 'upstream.leases')

  const registered = new Set<string>()
  const wanMac = randomMac()
  const c4Mac = randomMac()
  const c6Mac = randomMac()
  let upDnsmasqPid = 0
  let firewallUp = false
  let deviceSeq = 0
  let crowdSeq = 0
  let torn: Promise<void> | undefined

  const ownNs = (ns: string) => {
    if (!state.namespaces.has(ns)) throw new Error(`${ns} is not a namespace of lab ${id}`)
  }

  async function addNs(name: string, sysctls: string[] = []): Promise<void> {
    if (name !== routerNs) {
      await ip(['netns', 'add', name])
      state.namespaces.add(name)
    }
    await ip(['-n', name, 'link', 'set', 'lo', 'up'])
    if (sysctls.length) await run('ip', ['netns', 'exec', name, 'sysctl', '-q', '-w', ...sysctls])
  }

  /** Starts a long-running process inside ns, detached, output to logFile; resolves with its PID once ready() holds. */
  async function startDaemon(
    ns: string,
    cmd: string,
    args: string[],
    o: { log: string; env?: Record<string, string>; ready: () => boolean | Promise<boolean>; timeoutMs?: number; what: string },
  ): Promise<number> {
    const fd = openSync(o.log, 'a')
    const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], {
      detached: true,
      stdio: ['ignore', fd, fd],
      env: o.env ?? process.env,
    })
    closeSync(fd)
    let exited: string | undefined
    child.on('error', (err) => (exited = err.message))
    child.on('exit', (code, sig) => (exited = `exited ${code ?? sig}`))
    child.unref()
    await waitFor(`${o.what} in ${ns}`, o.timeoutMs ?? 10_000, async () => {
      if (await o.ready()) return true
      if (exited !== undefined) throw new Error(`${o.what} ${exited}:\n${tail(o.log)}`)
      return false
    }, 50).catch((err: Error) => {
      throw new Error(`${err.message}\n${tail(o.log)}`)
    })
    return child.pid ?? 0
  }

  // Upstream dnsmasq: DHCPv4, DHCPv6 and RA (of the prefix `<base>/64`), registered MACs only.
  async function startUpstreamDnsmasq(base: string): Promise<void> {
    // With a NAT64, the upstream is also its DNS64 as far as RFC 7050 goes: ipv4only.arpa under the prefix,
    // and the RA names it as the DNS server (RDNSS).
    const pref64 = PLAT.prefix.replace(/\/96$/, '')
    const dns = opts.plat ? ['no-resolv', 'no-hosts', `host-record=ipv4only.arpa,${pref64}c000:aa,${pref64}c000:ab`, `dhcp-option=option6:dns-server,[${UP_V6}]`] : ['port=0']
    const upConf = [
      ...dns,
      'interface=br0',
      'no-ping',
      'user=root',
      `pid-file=${upPidFile}`,
      `dhcp-leasefile=${upLeases}`,
      `log-facility=${upLog}`,
      'log-dhcp',
      `dhcp-hostsfile=${hostsFile}`,
      'dhcp-ignore=tag:!known',
      'dhcp-authoritative',
      ...(v4 ? [`dhcp-range=198.18.1.0,198.18.3.250,255.255.252.0,${leaseTime}`, `dhcp-option=option:router,${UP_V4}`] : []),
      ...(v6 ? ['enable-ra', `dhcp-range=${base}1000,${base}ffff,slaac,64,${leaseTime}`] : []),
      '',
    ].join('\n')
    const upConfFile = join(dir, 'upstream-dnsmasq.conf')
    writeFileSync(upConfFile, upConf)
    writeFileSync(upPidFile, '')
    upDnsmasqPid = await startDaemon(upNs, 'dnsmasq', ['--keep-in-foreground', `--conf-file=${upConfFile}`], {
      log: join(dir, 'upstream-dnsmasq.out'),
      ready: () => readText(upPidFile).trim().length > 0,
      what: 'upstream dnsmasq',
    })
  }

  /** The upstream moves to 2001:db8:2::/64: its dnsmasq advertises and leases only that prefix, client6 gets ::10 in it. */
  async function renumber6(): Promise<string> {
    if (!v6) throw new Error(`lab ${id} has no IPv6 upstream to renumber`)
    await ip(['-n', upNs, 'addr', 'add', `${UP_PREFIX6_NEXT}1/64`, 'dev', 'br0', 'nodad'])
    await ip(['-n', c6Ns, 'addr', 'add', `${UP_PREFIX6_NEXT}10/64`, 'dev', 'eth0', 'nodad'])
    const pid = upDnsmasqPid
    kill(pid, 'SIGTERM')
    await waitFor('upstream dnsmasq to stop', 5_000, () => !isAlive(pid), 20)
    await startUpstreamDnsmasq(UP_PREFIX6_NEXT)
    return `${UP_PREFIX6_NEXT}/64`
  }

  /**
   * The upstream's NAT64: tayga on TUN `plat` maps IPv6 sources to addresses of PLAT.pool and IPv4 under
   * PLAT.prefix, and PLAT.ipv4Host on the upstream's loopback stands for the IPv4 internet.
   */
  async function startPlat(): Promise<void> {
    if (!v6 || v4) throw new Error('plat needs an IPv6-only lab (mode ipv6)')
    const conf = join(dir, 'plat-tayga.conf')
    writeFileSync(conf, [
      'tun-device plat',
      `ipv4-addr ${PLAT.pool.replace(/0\/24$/, '1')}`,
      `prefix ${PLAT.prefix}`,
      `dynamic-pool ${PLAT.pool}`,
      `data-dir ${join(dir, 'plat')}`,
      '',
    ].join('\n'))
    mkdirSync(join(dir, 'plat'), { recursive: true })
    await run('ip', ['netns', 'exec', upNs, 'sysctl', '-q', '-w', 'net.ipv6.conf.all.forwarding=1', 'net.ipv4.ip_forward=1'])
    await ip(['-n', upNs, 'addr', 'add', `${PLAT.ipv4Host}/32`, 'dev', 'lo'])
    await startDaemon(upNs, 'tayga', ['--config', conf, '-d'], {
      log: join(dir, 'plat-tayga.log'),
      ready: async () => (await ip(['-n', upNs, 'link', 'show', 'plat'], { nothrow: true })).code === 0,
      what: 'upstream NAT64 (tayga)',
    })
    await ip(['-n', upNs, 'link', 'set', 'plat', 'up'])
    await ip(['-n', upNs, '-6', 'route', 'add', PLAT.prefix, 'dev', 'plat'])
    await ip(['-n', upNs, '-4', 'route', 'add', PLAT.pool, 'dev', 'plat'])
  }

  // --- upstream registration: dnsmasq hosts file + nftables set, kept equal ---------------------
  function writeHostsFile(): void {
    // One dhcp-host per registered MAC; "known" is what dhcp-ignore=tag:!known checks.
    writeFileSync(hostsFile, [...registered].map((m) => `${m}\n`).join(''))
  }

  async function reloadUpstream(): Promise<void> {
    if (!upDnsmasqPid) return
    // dnsmasq logs "read <file>" for the hosts file on SIGHUP: wait for that line past the current end of its log.
    const from = fileSize(upLog)
    kill(upDnsmasqPid, 'SIGHUP')
    await waitFor('upstream dnsmasq to re-read its hosts file', 5_000, () => readFrom(upLog, from).includes(`read ${hostsFile}`), 20)
  }

  // Registration changes run one at a time: each waits for its own dnsmasq reload.
  let registering: Promise<void> = Promise.resolve()
  function setRegistered(macs: string[], on: boolean): Promise<void> {
    const next = registering.then(() => applyRegistered(macs, on))
    registering = next.catch(() => undefined)
    return next
  }

  async function applyRegistered(macs: string[], on: boolean): Promise<void> {
    const changed: string[] = []
    for (const raw of macs) {
      const mac = normalizeMac(raw)
      if (registered.has(mac) === on) continue
      if (on) registered.add(mac)
      else registered.delete(mac)
      changed.push(mac)
    }
    if (changed.length === 0) return
    writeHostsFile()
    if (firewallUp) {
      for (let i = 0; i < changed.length; i += 256) {
        const chunk = changed.slice(i, i + 256)
        await run('ip', ['netns', 'exec', upNs, 'nft', on ? 'add' : 'delete', 'element', 'bridge', 'dgfw', 'registered', `{ ${chunk.join(', ')} }`])
      }
    }
    await reloadUpstream()
  }

  // --- devices ------------------------------------------------------------------------------
  const devices: LabDevice[] = []

  async function lanAddress(ns: string, ifname: string): Promise<string | undefined> {
    const r = await ip(['-n', ns, '-4', '-o', 'addr', 'show', 'dev', ifname], { nothrow: true })
    const m = /inet (198\.19\.0\.\d+)\//.exec(r.stdout)
    return m?.[1]
  }

  async function addDevice(o: { registered?: boolean; hostname?: string } = {}): Promise<LabDevice> {
    const n = deviceSeq++
    const name = `dev${n}`
    const hostname = o.hostname ?? `lab-${name}`
    if (!/^[A-Za-z0-9][A-Za-z0-9-]{0,62}$/.test(hostname)) throw new Error(`bad hostname ${JSON.stringify(hostname)}`)
    const ns = nsName(name)
    const mac = randomMac()
    const peerLog = join(dir, `${name}.peers`)
    writeFileSync(peerLog, '')
    if (o.registered ?? true) await setRegistered([mac], true)
    await addNs(ns, ['net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1'])
    await ip(['-n', ns, 'link', 'add', 'eth0', 'address', mac, 'type', 'veth', 'peer', 'name', `d${n}`, 'netns', swNs])
    await ip(['-n', swNs, 'link', 'set', `d${n}`, 'master', 'br0', 'up'])
    await ip(['-n', ns, 'link', 'set', 'eth0', 'up'])
    const ready = join(dir, `${name}.ready`)
    const services = startDaemon(ns, process.execPath, [SERVICES, 'device', '--name', name, '--log', peerLog, '--ready', ready], {
      log: join(dir, `${name}-services.log`),
      ready: () => existsSync(ready),
      what: `services of ${name}`,
    })
    const udhcpcLog = join(dir, `${name}-udhcpc.log`)
    const udhcpcPid = join(dir, `${name}-udhcpc.pid`)
    // -f: stays in the foreground (our detached child) and keeps renewing; it writes its pid file at start.
    const udhcpc = startDaemon(
      ns,
      'udhcpc',
      ['-f', '-i', 'eth0', '-s', udhcpcScript, '-p', udhcpcPid, '-x', `hostname:${hostname}`, '-t', '10', '-T', '1', '-A', '2'],
      { log: udhcpcLog, ready: () => readText(udhcpcPid).trim().length > 0, what: `udhcpc of ${name}` },
    )
    await Promise.all([services, udhcpc])
    const lanIpv4 = await waitFor(`a LAN lease for ${name} (${mac})`, DEVICE_LEASE_TIMEOUT_MS, async () => {
      const addr = await lanAddress(ns, 'eth0')
      return addr && readText(routerLeases).includes(mac) ? addr : undefined
    }).catch((err: Error) => {
      throw new Error(`${err.message}\nudhcpc log:\n${tail(udhcpcLog)}\nrouter dnsmasq log:\n${tail(routerLog)}`)
    })
    const dev: LabDevice = { name, ns, mac, lanIpv4, hostname, peerLog }
    devices.push(dev)
    return dev
  }

  async function unplug(dev: LabDevice): Promise<void> {
    ownNs(dev.ns)
    await killNamespaces([dev.ns])
    await ip(['netns', 'del', dev.ns], { nothrow: true })
    state.namespaces.delete(dev.ns)
    const i = devices.indexOf(dev)
    if (i >= 0) devices.splice(i, 1)
  }

  async function addCrowd(n: number, o: { registered?: boolean } = {}): Promise<{ ns: string; macs: string[] }> {
    if (!Number.isInteger(n) || n < 1 || n > 230) throw new Error(`crowd size must be 1..230 (the LAN pool), got ${n}`)
    const k = crowdSeq++
    const ns = nsName(`crowd${k}`)
    const macs = Array.from({ length: n }, () => randomMac())
    if (o.registered ?? true) await setRegistered(macs, true)
    await addNs(ns, [
      'net.ipv6.conf.all.disable_ipv6=1',
      'net.ipv6.conf.default.disable_ipv6=1',
      // Hundreds of interfaces on one subnet: each answers ARP only for its own address.
      'net.ipv4.conf.all.arp_ignore=1',
      'net.ipv4.conf.default.arp_ignore=1',
      'net.ipv4.conf.all.arp_announce=2',
      'net.ipv4.conf.default.arp_announce=2',
      'net.ipv4.conf.all.rp_filter=0',
      'net.ipv4.conf.default.rp_filter=0',
    ])
    await ip(['-n', ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', `c${k}`, 'netns', swNs])
    await ip(['-n', swNs, 'link', 'set', `c${k}`, 'master', 'br0', 'up'])
    await ip(['-n', ns, 'link', 'set', 'eth0', 'up'])
    const batch = macs.flatMap((mac, i) => [`link add m${i} link eth0 address ${mac} type macvlan mode bridge`, `link set m${i} up`])
    const batchFile = join(dir, `crowd${k}.ip`)
    writeFileSync(batchFile, `${batch.join('\n')}\n`)
    await ip(['-n', ns, '-batch', batchFile])
    const failed: string[] = []
    await pool(macs, 32, async (mac, i) => {
      const args = ['-q', '-n', '-i', `m${i}`, '-s', udhcpcScript, '-x', `hostname:crowd${k}-${i}`, '-t', '5', '-T', '2']
      for (let attempt = 0; attempt < 2; attempt++) {
        const r = await run('ip', ['netns', 'exec', ns, 'udhcpc', ...args], { nothrow: true, timeoutMs: 30_000 })
        if (r.code === 0 && (await lanAddress(ns, `m${i}`))) return
      }
      failed.push(`m${i} ${mac}`)
    })
    if (failed.length) throw new Error(`${failed.length} of ${n} crowd interfaces got no LAN lease: ${failed.slice(0, 5).join(', ')}...\n${tail(routerLog)}`)
    return { ns, macs }
  }

  // --- the lab object -----------------------------------------------------------------------
  const lab: Lab = {
    id,
    mode,
    dir,
    router: {
      ns: routerNs,
      wanIf: 'eth0',
      lanIf: 'eth1',
      lanAddr: '198.19.0.1/24',
      lanIp: '198.19.0.1',
      wanIpv4: '198.18.0.2',
      wanMac,
      leasesFile: routerLeases,
    },
    upstream: {
      ns: upNs,
      ipv4: '198.18.0.1',
      ipv6: '2001:db8:1::1',
      prefix6: '2001:db8:1::/64',
      leasesFile: upLeases,
      register: (mac) => setRegistered([mac], true),
      unregister: (mac) => setRegistered([mac], false),
      leases: async () => parseUpstreamLeases(readText(upLeases)),
      renumber6,
      plat: opts.plat ? PLAT : undefined,
    },
    devices,
    client4: { ns: c4Ns, ip: '198.18.0.10' },
    client6: { ns: c6Ns, ip: '2001:db8:1::10' },
    async exec(ns, cmd, args, o = {}) {
      ownNs(ns)
      return run('ip', ['netns', 'exec', ns, cmd, ...args], o)
    },
    addDevice,
    unplug,
    addCrowd,
    async fetch(ns, url, timeoutMs = 5_000) {
      ownNs(ns)
      const secs = Math.max(1, Math.ceil(timeoutMs / 1000))
      const r = await run('ip', ['netns', 'exec', ns, 'curl', '-sS', '-g', '--noproxy', '*', '--fail-with-body', '--max-time', String(secs), url], {
        nothrow: true,
        timeoutMs: timeoutMs + 2_000,
      })
      if (r.code !== 0) throw new Error(`GET ${url} from ${ns} failed (curl exit ${r.code}): ${r.stderr.trim()} ${r.stdout.trim()}`.trim())
      return r.stdout
    },
    teardown() {
      torn ??= (async () => {
        const prefix = `dg${id}-`
        const namespaces = [...new Set([...state.namespaces, ...(await listNetns()).filter((n) => n.startsWith(prefix))])]
        await removeNamespaces(namespaces)
        state.namespaces.clear()
        rmSync(dir, { recursive: true, force: true })
        live.delete(id)
      })()
      return torn
    },
  }

  try {
    copyFileSync(UDHCPC_SCRIPT, udhcpcScript)
    chmodSync(udhcpcScript, 0o755)

    // Namespaces. The switch carries no IPv6 of its own; client4 and devices are IPv4 only.
    const noV6 = ['net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']
    await Promise.all([
      // The router routes IPv6 as OpenWrt does (dualgate reports IPv6 forwarding, never forces it: it would
      // change how the WAN takes RAs); IPv4 forwarding stays at the kernel's default, off: turning it on is
      // dualgate's own business on a plain host.
      addNs(routerNs, ['net.ipv6.conf.all.forwarding=1', 'net.ipv6.conf.default.forwarding=1']),
      addNs(upNs, ['net.ipv6.conf.all.accept_ra=0', 'net.ipv6.conf.default.accept_ra=0']),
      addNs(swNs, noV6),
      addNs(c4Ns, noV6),
      addNs(c6Ns, ['net.ipv6.conf.all.accept_ra=0', 'net.ipv6.conf.default.accept_ra=0']),
    ])

    // Upstream bridge and its ports. Each veth is created inside a lab namespace with its peer
    // placed straight into another one.
    // A bridge takes the lowest MAC of its ports unless given one: give it its own, stable one.
    const brMac = randomMac()
    await ip(['-n', upNs, 'link', 'add', 'br0', 'address', brMac, 'type', 'bridge', 'mcast_snooping', '0'])
    await ip(['-n', routerNs, 'link', 'add', 'eth0', 'address', wanMac, 'type', 'veth', 'peer', 'name', 'rtr', 'netns', upNs])
    await ip(['-n', c4Ns, 'link', 'add', 'eth0', 'address', c4Mac, 'type', 'veth', 'peer', 'name', 'c4', 'netns', upNs])
    await ip(['-n', c6Ns, 'link', 'add', 'eth0', 'address', c6Mac, 'type', 'veth', 'peer', 'name', 'c6', 'netns', upNs])
    for (const port of ['rtr', 'c4', 'c6']) await ip(['-n', upNs, 'link', 'set', port, 'master', 'br0', 'up'])
    await ip(['-n', upNs, 'link', 'set', 'br0', 'up'])

    // LAN switch.
    await ip(['-n', swNs, 'link', 'add', 'br0', 'type', 'bridge', 'mcast_snooping', '0'])
    await ip(['-n', routerNs, 'link', 'add', 'eth1', 'type', 'veth', 'peer', 'name', 'rtr', 'netns', swNs])
    await ip(['-n', swNs, 'link', 'set', 'rtr', 'master', 'br0', 'up'])
    await ip(['-n', swNs, 'link', 'set', 'br0', 'up'])

    // Addresses and routes (static ones skip DAD: nothing else claims them).
    if (v4) {
      await ip(['-n', upNs, 'addr', 'add', `${UP_V4}/22`, 'dev', 'br0'])
      await ip(['-n', routerNs, 'addr', 'add', `${ROUTER_V4}/22`, 'dev', 'eth0'])
    }
    if (v6) {
      await ip(['-n', upNs, 'addr', 'add', `${UP_V6}/64`, 'dev', 'br0', 'nodad'])
      await ip(['-n', routerNs, 'addr', 'add', `${ROUTER_V6}/64`, 'dev', 'eth0', 'nodad'])
    }
    await ip(['-n', routerNs, 'addr', 'add', `${LAN_IP}/24`, 'dev', 'eth1'])
    await ip(['-n', routerNs, 'link', 'set', 'eth0', 'up'])
    await ip(['-n', routerNs, 'link', 'set', 'eth1', 'up'])
    if (v4) await ip(['-n', routerNs, 'route', 'add', 'default', 'via', UP_V4, 'dev', 'eth0'])
    if (v6) await ip(['-n', routerNs, '-6', 'route', 'add', 'default', 'via', UP_V6, 'dev', 'eth0'])
    await ip(['-n', c4Ns, 'addr', 'add', `${C4_IP}/22`, 'dev', 'eth0'])
    await ip(['-n', c4Ns, 'link', 'set', 'eth0', 'up'])
    await ip(['-n', c4Ns, 'route', 'add', 'default', 'via', UP_V4, 'dev', 'eth0', 'onlink'])
    await ip(['-n', c6Ns, 'addr', 'add', `${C6_IP}/64`, 'dev', 'eth0', 'nodad'])
    await ip(['-n', c6Ns, 'link', 'set', 'eth0', 'up'])
    await ip(['-n', c6Ns, '-6', 'route', 'add', 'default', 'via', UP_V6, 'dev', 'eth0', 'onlink'])
    // client6 uses no IPv4 at all.
    await run('ip', ['netns', 'exec', c6Ns, 'nft', '-f', '-'], {
      input: 'table ip noipv4 {\n  chain out { type filter hook output priority 0; policy drop; }\n  chain in { type filter hook input priority 0; policy drop; }\n}\n',
    })

    // Registration and the upstream firewall.
    await setRegistered([wanMac, c4Mac, c6Mac], true)
    const nft = [
      'table bridge dgfw {',
      '  set registered { type ether_addr; }',
      '  chain pre {',
      '    type filter hook prerouting priority -200; policy accept;',
      `    ether saddr ${brMac} accept`,
      '    ether saddr @registered accept',
      '    # unregistered MACs may only ask the DHCP servers (whose answer is then the test)',
      '    udp dport { 67, 547 } accept',
      '    icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept',
      '    counter drop',
      '  }',
      '}',
      `add element bridge dgfw registered { ${[...registered].join(', ')} }`,
      '',
    ].join('\n')
    await run('ip', ['netns', 'exec', upNs, 'nft', '-f', '-'], { input: nft })
    firewallUp = true

    await startUpstreamDnsmasq(UP_PREFIX6_BASE)
    if (opts.plat) await startPlat()
    const upReady = join(dir, 'upstream-http.ready')
    const upHttp = startDaemon(upNs, process.execPath, [SERVICES, 'upstream', '--log', join(dir, 'upstream-http.peers'), '--ready', upReady], {
      log: join(dir, 'upstream-http.log'),
      ready: () => existsSync(upReady),
      what: 'upstream HTTP server',
    })

    // Router LAN dnsmasq. Its environment is PATH plus opts.dhcpScriptEnv, like a service
    // manager's: dnsmasq hands its environment on to --dhcp-script (see the top of this file).
    const routerArgs = [
      '--keep-in-foreground',
      '--conf-file=/dev/null',
      '--port=0',
      '--interface=eth1',
      '--no-ping',
      '--user=root',
      `--pid-file=${routerPidFile}`,
      `--dhcp-leasefile=${routerLeases}`,
      `--log-facility=${routerLog}`,
      '--log-dhcp',
      '--dhcp-authoritative',
      '--dhcp-range=198.19.0.20,198.19.0.254,255.255.255.0,12h',
      `--dhcp-option=option:router,${LAN_IP}`,
      ...(opts.dhcpScript ? [`--dhcp-script=${opts.dhcpScript}`] : []),
    ]
    await startDaemon(routerNs, 'dnsmasq', routerArgs, {
      log: join(dir, 'router-dnsmasq.out'),
      env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', ...opts.dhcpScriptEnv },
      ready: () => readText(routerPidFile).trim().length > 0,
      what: 'router dnsmasq',
    })
    await upHttp

    // LAN devices, all at once.
    const plan = Array.from({ length: deviceCount }, (_, i) => !unregistered.has(i))
    const made = await Promise.all(plan.map(() => addDevice({ registered: false })))
    // Register after creation so that indices map to devN in order even though they come up in parallel.
    await setRegistered(made.filter((_, i) => plan[i]).map((d) => d.mac), true)
    devices.sort((a, b) => Number(a.name.slice(3)) - Number(b.name.slice(3)))
    return lab
  } catch (err) {
    await lab.teardown()
    throw err
  }
}

// ---------------------------------------------------------------------------------------------
// Router advertisements, as seen on the wire (for tests of what upstream offers).

export interface RouterAdvert {
  /** M flag: addresses via DHCPv6. */
  managed: boolean
  /** O flag: other configuration via DHCPv6. */
  other: boolean
  routerLifetime: number
  prefixes: { prefix: string; length: number; onLink: boolean; autonomous: boolean }[]
  sourceMac?: string
}

function formatIpv6(b: number[]): string {
  const groups = Array.from({ length: 8 }, (_, i) => (((b[2 * i] ?? 0) << 8) | (b[2 * i + 1] ?? 0)).toString(16))
  // RFC 5952: compress the longest run of two or more zero groups.
  let best = -1
  let bestLen = 0
  for (let i = 0; i < 8; ) {
    let j = i
    while (j < 8 && groups[j] === '0') j++
    if (j - i > bestLen && j - i >= 2) {
      best = i
      bestLen = j - i
    }
    i = j === i ? i + 1 : j
  }
  if (best < 0) return groups.join(':')
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`
}

/** Parses an ICMPv6 router advertisement (type 134), ICMPv6 header first. */
export function parseRouterAdvert(p: number[]): RouterAdvert | undefined {
  if (p[0] !== 134 || p.length < 16) return undefined
  const flags = p[5] ?? 0
  const ra: RouterAdvert = { managed: (flags & 0x80) !== 0, other: (flags & 0x40) !== 0, routerLifetime: ((p[6] ?? 0) << 8) | (p[7] ?? 0), prefixes: [] }
  for (let off = 16; off + 2 <= p.length; ) {
    const type = p[off] ?? 0
    const len = (p[off + 1] ?? 0) * 8
    if (len === 0 || off + len > p.length) break
    const opt = p.slice(off, off + len)
    if (type === 1 && len >= 8) ra.sourceMac = opt.slice(2, 8).map((x) => x.toString(16).padStart(2, '0')).join(':')
    if (type === 3 && len === 32) {
      const f = opt[3] ?? 0
      ra.prefixes.push({ prefix: formatIpv6(opt.slice(16, 32)), length: opt[2] ?? 0, onLink: (f & 0x80) !== 0, autonomous: (f & 0x40) !== 0 })
    }
    off += len
  }
  return ra
}

/** Splits `socat -x` hex dumps (on stderr) into packets. */
function parseSocatHex(text: string): number[][] {
  const packets: number[][] = []
  let cur: number[] | undefined
  for (const line of text.split('\n')) {
    if (line.startsWith('>') || line.startsWith('<')) {
      cur = []
      packets.push(cur)
    } else if (cur && /^\s*([0-9a-f]{2}\s*)+$/i.test(line)) {
      for (const h of line.trim().split(/\s+/)) cur.push(Number.parseInt(h, 16))
    }
  }
  return packets
}

/**
 * Listens for ICMPv6 in namespace ns for about ms milliseconds (socat on a raw ICMPv6 socket),
 * runs trigger() once the socket is open (e.g. bring up an interface with accept_ra=2, which sends
 * a router solicitation), and returns the router advertisements received.
 */
export async function watchRouterAdverts(lab: Lab, ns: string, ms: number, trigger?: () => Promise<unknown>): Promise<RouterAdvert[]> {
  const secs = Math.max(1, Math.ceil(ms / 1000))
  const capture = lab.exec(ns, 'timeout', [String(secs), 'socat', '-u', '-x', 'IP6-RECV:58', '/dev/null'], { nothrow: true, timeoutMs: ms + 5_000 })
  try {
    await waitFor('socat to open its ICMPv6 socket', 3_000, async () => (await lab.exec(ns, 'ss', ['-w', '-a', '-n', '-p'], { nothrow: true })).stdout.includes('"socat"'), 20)
    if (trigger) await trigger()
  } catch (err) {
    await capture
    throw err
  }
  const r = await capture
  return parseSocatHex(r.stderr)
    .map(parseRouterAdvert)
    .filter((ra): ra is RouterAdvert => ra !== undefined)
}
