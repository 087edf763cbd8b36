// Effective configuration: defaults, then /etc/config/dualgate (UCI), then the JSON file named by
// DUALGATE_CONFIG, then DUALGATE_* environment variables; later wins. Each value remembers its source.
import { existsSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { validate as validCron } from 'node-cron'
import { z } from 'zod'
import { isHostname } from '../addr/hostname.ts'
import { isIpv4 } from '../addr/ipv4.ts'
import { parseIpv6 } from '../addr/ipv6.ts'
import { nat64PoolError, nat64PrefixError, prefix96Error } from '../addr/nat64.ts'
import { parseUci, UciSyntaxError } from './uci.ts'

const ifname = z.string().regex(/^[A-Za-z0-9_.@-]{1,15}$/, 'not an interface name (1-15 of A-Z a-z 0-9 _ . @ -)')
  .refine((v) => v !== '.' && v !== '..', 'not an interface name')
const cidr4 = z.string().regex(/^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/, 'expected an IPv4 address with prefix, such as 192.168.1.1/24')
  .refine((v) => { const [a, p] = v.split('/'); return a.split('.').every((o) => Number(o) <= 255) && Number(p) >= 1 && Number(p) <= 30 }, 'octet above 255 or prefix outside 1-30')
const int = (min: number, max: number) => z.coerce.number().int('expected a whole number').min(min).max(max)
/**
 * The Fetch standard's blocked ports (fetch.spec.whatwg.org, "bad port"): browsers, and the fetch that our CLI
 * commands use, refuse to connect to them, so the API and its status page cannot live there.
 */
const FETCH_BLOCKED_PORTS = new Set([1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77, 79, 87, 95, 101, 102, 103, 104, 109, 110, 111, 113, 115, 117, 119, 123, 135, 137, 139, 143, 161, 179, 389, 427, 465, 512, 513, 514, 515, 526, 530, 531, 532, 540, 548, 554, 556, 563, 587, 601, 636, 989, 990, 993, 995, 1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000, 6566, 6665, 6666, 6667, 6668, 6669, 6679, 6697, 10080])
const httpPort = int(1, 65535).refine((p) => !FETCH_BLOCKED_PORTS.has(p), 'a port that browsers and fetch refuse to connect to (the Fetch standard\'s blocked ports); choose another')
const bool = z.union([z.boolean(), z.enum(['0', '1', 'true', 'false', 'yes', 'no', 'on', 'off'])])
  .transform((v) => v === true || v === '1' || v === 'true' || v === 'yes' || v === 'on')
const cron = z.string().refine((v) => v === '' || validCron(v), 'not a cron expression (five or six fields; empty disables)')
const ports = z.union([z.array(z.coerce.number()), z.string()])
  .transform((v) => (Array.isArray(v) ? v : v.split(/[\s,]+/).filter(Boolean).map(Number)))
  .pipe(z.array(z.number().int('expected whole port numbers').min(1).max(65535)))
const list = (item: z.ZodType<string, string>) => z.union([z.array(z.string()), z.string()])
  .transform((v) => (Array.isArray(v) ? v : v.split(/[\s,]+/).filter(Boolean)))
  .pipe(z.array(item))
const ipv6 = z.string().refine((v) => parseIpv6(v) !== undefined, 'not an IPv6 address')
const ipv4OrEmpty = z.string().refine((v) => v === '' || isIpv4(v), 'not an IPv4 address')
const cidr6OrEmpty = z.string().refine((v) => {
  if (v === '') return true
  const [a, len, extra] = v.split('/')
  return extra === undefined && parseIpv6(a) !== undefined && /^\d{1,3}$/.test(len ?? '') && Number(len) <= 128
}, 'expected an IPv6 prefix such as 2001:db8:1::/48')
const cidr = z.string().refine((v) => {
  const [a, len, extra] = v.split('/')
  if (extra !== undefined || !/^\d{1,3}$/.test(len ?? '')) return false
  return isIpv4(a) ? Number(len) <= 32 : parseIpv6(a) !== undefined && Number(len) <= 128
}, 'expected an address with its prefix length, such as 2001:db8::2/64 or 10.0.0.2/32')
/** A WireGuard key: 32 bytes in base64 (the last character carries 4 bits, hence its short alphabet). */
export const WG_KEY = /^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$/
const wgKey = z.string().refine((v) => v === '' || WG_KEY.test(v), 'not a WireGuard key (44 characters of base64)')
const endpoint = z.string().regex(/^$|^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253}):\d{1,5}$/, 'expected host:port or [IPv6]:port')
const checked = (why: (v: string) => string | undefined) => z.string().superRefine((v, ctx) => {
  const message = why(v)
  if (message) ctx.addIssue({ code: 'custom', message })
})

export const ROLES = ['gateway', 'forwarder'] as const
export type Role = (typeof ROLES)[number]
const roles = z.union([z.array(z.string()), z.string()])
  .transform((v) => (Array.isArray(v) ? v : v.split(/[\s,]+/).filter(Boolean)))
  .pipe(z.array(z.enum(ROLES, `expected ${ROLES.join(', ')}, or both as "gateway,forwarder"`)).min(1, 'at least one role'))
  .transform((v) => [...new Set(v)])

/** Every key: its schema and its default. UCI option names and env names are derived from the key. */
const spec = {
  /**
   * What this host is: `gateway` (the router with its LAN devices: relay, NAT64, CLAT), `forwarder` (a VPS
   * that lends IPv4 to IPv6-only homes: no LAN, no devices), or both. Tunnels work in any role.
   */
  role: [roles, ['gateway']],
  wanIf: [ifname, 'eth0'],
  lanIf: [ifname, 'eth1'],
  lanAddr: [cidr4, '192.168.1.1/24'],
  dataDir: [z.string().min(1), './data'],
  runDir: [z.string().min(1), '/var/run/dualgate'],
  /** Where the runner keeps a copy of the store when dataDir is on tmpfs; empty: dataDir is persistent. */
  persistDir: [z.string(), ''],
  persistInterval: [int(10, 86_400), 600],
  apiHost: [z.string().regex(/^[0-9A-Fa-f:.]+$|^localhost$/, 'expected an IP address'), '127.0.0.1'],
  apiPort: [httpPort, 5050],
  apiToken: [z.string(), ''],
  /** The runner's MCP server on a unix socket (root's, 0600): a path, relative to runDir; empty: <runDir>/mcp.sock; "off": none. */
  mcpSocket: [z.string(), ''],
  /** MCP tools that change state (forwards, job runs, tunnels up and down), through the API and its token. */
  mcpWrite: [bool, false],
  jobTimeout: [int(1, 86_400), 300],
  coalesceWindow: [int(0, 60_000), 1000],
  maxParallel: [int(1, 512), 32],
  dhcpTimeout: [int(1, 300), 10],
  dhcpRetries: [int(0, 20), 3],
  retryBase: [int(1, 86_400), 30],
  retryMax: [int(1, 604_800), 3600],
  staleAfter: [int(10, 31_536_000), 1800],
  goneRetention: [int(0, 31_536_000), 7 * 86_400],
  maxDevices: [int(1, 100_000), 1000],
  backupCount: [int(0, 100), 5],
  backupInterval: [int(0, 604_800), 3600],
  logLevel: [z.enum(['error', 'warn', 'info', 'debug']), 'info'],
  logMaxBytes: [int(4096, 1 << 30), 1 << 20],
  logFiles: [int(1, 20), 3],
  arpSweep: [bool, false],
  /**
   * dnsmasq's lease file: OpenWrt's path by default; the Debian install sets dnsmasq's own
   * /var/lib/misc/dnsmasq.leases. Read only when it is a regular file of root's (or the dnsmasq user's).
   */
  dnsmasqLeases: [z.string(), '/tmp/dhcp.leases'],
  relayPorts: [ports, [80, 23]],
  relayUdpPorts: [ports, []],
  /** Relayed TCP connections and UDP sessions at once, each (every connection takes two descriptors). */
  relayMaxConnections: [int(1, 65_536), 1024],
  /** Of those, what one client may hold: an IPv6 client is its /64. A sixteenth of the default total. */
  relayMaxPerSource: [int(1, 65_536), 64],
  dnatPorts: [z.string().regex(/^(all|\d+(-\d+)?(,\d+(-\d+)?)*)$/, 'expected "all" or ports such as 80,443,8000-8100'), 'all'],
  /** NAT64 through tayga, run by the runner: every port and protocol of a device at <nat64Prefix>::<its LAN IPv4>. */
  nat64: [bool, false],
  /**
   * A /96 the upstream routes to the router. "auto": a ULA derived from the WAN MAC (fdxx:xxxx:xxxx:64::/96),
   * unique per router. Not 64:ff9b::/96: RFC 6052 forbids it for private IPv4, and tayga 0.9.2 refuses
   * RFC 8215's 64:ff9b:1::/48.
   */
  nat64Prefix: [checked((v) => (v === 'auto' ? undefined : nat64PrefixError(v))), 'auto'],
  /** IPv4 addresses tayga gives IPv6 clients; they never leave the router (masqueraded toward the LAN). */
  nat64Pool: [checked(nat64PoolError), '192.168.255.0/24'],
  /**
   * 464XLAT on an IPv6-only upstream (lib/clat.ts): the runner translates each device's IPv4 to IPv6 from a
   * CLAT address of the device's own, toward the upstream's NAT64 at clatPrefix. Needs tayga.
   */
  clat: [bool, false],
  /**
   * The upstream's NAT64 (PLAT) /96. "auto": what its DNS64 reports for ipv4only.arpa (RFC 7050), else the
   * Well-Known Prefix 64:ff9b::/96.
   */
  clatPrefix: [checked((v) => (v === 'auto' ? undefined : prefix96Error(v))), 'auto'],
  /** Prefix for the system files diagnose and install read and change (/etc/...); tests use a fake root. */
  rootDir: [z.string().min(1), '/'],
  /** openwrt or debian; auto: openwrt when <rootDir>/etc/openwrt_release exists. */
  platform: [z.enum(['auto', 'openwrt', 'debian']), 'auto'],
  /** Command run with `start` or `restart` to start dnsmasq (diagnose --fix, install). */
  dnsmasqService: [z.string(), '/etc/init.d/dnsmasq'],
  /** Command run with `start` or `restart` for the runner; empty: /etc/init.d/dualgate (OpenWrt), systemctl (Debian). */
  runnerService: [z.string(), ''],
  /** Seconds between health checks of each tunnel (lib/tunnels/health.ts); each check pings every probe target. */
  tunnelProbeInterval: [int(1, 3600), 10],
  /** Echo requests to each target per check, and how long a check may take (s): a failing one ends then. */
  tunnelProbeCount: [int(1, 20), 3],
  tunnelProbeTimeout: [int(1, 30), 2],
  /** Failed checks (net of good ones, as mwan3 counts) that take a tunnel down, and good checks that bring it up. */
  tunnelDown: [int(1, 100), 3],
  tunnelUp: [int(1, 100), 3],
  /** A check fails at this loss (%) or mean round trip (ms), and is good at or below the recovery values. */
  tunnelFailureLoss: [int(1, 100), 50],
  tunnelRecoveryLoss: [int(0, 100), 10],
  tunnelFailureLatency: [int(1, 60_000), 1000],
  tunnelRecoveryLatency: [int(1, 60_000), 500],
  /** Checks kept for a tunnel's loss, latency and score. */
  tunnelWindow: [int(1, 360), 6],
  /** The primary is replaced when its score falls below this, by a tunnel scoring at least tunnelHealthyScore. */
  tunnelFailoverScore: [int(0, 100), 30],
  tunnelHealthyScore: [int(0, 100), 50],
  /** Seconds a preferred tunnel must stay healthy before traffic fails back to it. */
  tunnelHoldTime: [int(0, 86_400), 60],
  /** Metric of the default IPv6 route through the primary tunnel: below an RA's 1024, so the tunnel wins. */
  tunnelRouteMetric: [int(1, 65_535), 512],
  /** Hurricane Electric's update URL (jobs/he-update.ts); the lab points it at a fake broker. */
  heUpdateUrl: [z.string().url('expected a URL'), 'https://ipv4.tunnelbroker.net/nic/update'],
  /** A SOCKS5 server (RFC 1928/1929) for applications on this host: names resolved preferring AAAA, so through the tunnel. */
  socks5: [bool, false],
  socks5Host: [z.string().regex(/^[0-9A-Fa-f:.]+$|^localhost$/, 'expected an IP address'), '127.0.0.1'],
  socks5Port: [int(1, 65535), 1080],
  /** DNS servers the SOCKS5 server asks (IP addresses); empty: the system's resolver. */
  socks5Dns: [list(z.string().regex(/^[0-9A-Fa-f:.]+$/, 'expected an IP address')), []],
  socks5MaxConnections: [int(1, 65_536), 256],
  /** DNS servers the forwarder asks for its targets' names (IP addresses, optionally [IPv6]:port); empty: the system's resolver. */
  forwarderDns: [list(z.string().regex(/^[0-9A-Fa-f:.]+$|^\[[0-9A-Fa-f:.]+\]:\d{1,5}$|^[0-9.]+:\d{1,5}$/, 'expected an IP address, or address:port')), []],
  /** Seconds between resolutions of each forward's target name; a shorter TTL in the answer is honoured (at least 5 s). */
  forwarderResolveInterval: [int(5, 86_400), 60],
  /** Seconds connections to a target's old address are kept after it changed; then they are closed. */
  forwarderGrace: [int(0, 86_400), 300],
  /** Run when a target's address changes, with the arguments: forward name, old address, new address. */
  forwarderNotifyCommand: [z.string(), ''],
  /** POSTed a JSON body { forward, target, old, new, at } when a target's address changes. */
  forwarderNotifyUrl: [z.string().refine((v) => v === '' || /^https?:\/\//.test(v), 'expected an http:// or https:// URL'), ''],
  /** Relay mode: a TCP connection idle this long (s) is closed (SSH sessions sit idle for hours), and a UDP session. */
  forwarderTcpIdle: [int(10, 604_800), 7200],
  forwarderUdpIdle: [int(5, 86_400), 60],
  /** Relay mode: connections and UDP sessions at once, each, and what one source (an IPv4 address, an IPv6 /64) may hold. */
  forwarderMaxConnections: [int(1, 65_536), 1024],
  forwarderMaxPerSource: [int(1, 65_536), 64],
} as const

type Spec = typeof spec
export type Config = { -readonly [K in keyof Spec]: z.output<Spec[K][0]> } & {
  schedules: Record<string, string>
  /** Named, repeated sections by their JSON key (tunnels, forwards, ...): see SectionSpec. */
  sections: Record<string, Section[]>
}

/** Whether this host has `role` (config key role). */
export function hasRole(config: Pick<Config, 'role'>, role: Role): boolean {
  return config.role.includes(role)
}

/**
 * A named, repeated section type: `config <uci> 'name'` in UCI, `"<json>": [{ "name": ..., ... }]` in the JSON
 * file. Options are written in snake_case in UCI and camelCase in JSON, like the main keys; a later layer's
 * section of the same name replaces the earlier one whole. The capabilities that use them declare them here.
 */
export interface SectionSpec {
  uci: string
  json: string
  /** Each option's schema; an option without a default must be given. */
  options: Record<string, { schema: z.ZodType; default?: unknown }>
  /** Rules across options (what one type of section needs): the problem, or undefined. */
  check?(section: Section): string | undefined
}

export interface Section { name: string; [option: string]: unknown }

export const TUNNEL_TYPES = ['6in4', 'wireguard', 'external'] as const
export type TunnelType = (typeof TUNNEL_TYPES)[number]

/**
 * Public anycast resolvers that answer ICMPv6 echo (Google, Cloudflare, Quad9). Real routers only: tests and
 * the lab always give their own targets.
 */
export const DEFAULT_PROBES = ['2001:4860:4860::8888', '2606:4700:4700::1111', '2620:fe::fe']

const opt = (schema: z.ZodType, fallback?: unknown) => ({ schema, default: fallback })

/** The options each tunnel type uses beyond the common ones (type, iface, enabled, priority, probe). */
const TUNNEL_OPTIONS: Record<TunnelType, string[]> = {
  '6in4': ['remote', 'local', 'address', 'prefix', 'mtu', 'ttl', 'heTunnelId', 'heUsername', 'heKeyFile'],
  wireguard: ['wgConfig', 'privateKeyFile', 'peerPublicKey', 'presharedKeyFile', 'endpoint', 'allowedIps', 'persistentKeepalive', 'listenPort', 'address', 'prefix', 'mtu', 'backend'],
  external: ['prefix'],
}

/** `config tunnel 'he'` / `"tunnels": [{ "name": "he", ... }]`: an IPv6 tunnel kept up and watched (lib/tunnels). */
const tunnelSection: SectionSpec = {
  uci: 'tunnel',
  json: 'tunnels',
  options: {
    type: opt(z.enum(TUNNEL_TYPES, `expected ${TUNNEL_TYPES.join(', ')}`)),
    iface: opt(ifname),
    enabled: opt(bool, true),
    /** 0 is preferred; traffic fails back to the lowest number that is healthy. */
    priority: opt(int(0, 100), 0),
    probe: opt(list(ipv6).refine((v) => v.length > 0, 'at least one probe target'), DEFAULT_PROBES),
    // 6in4
    remote: opt(ipv4OrEmpty, ''),
    /** The IPv4 tunnel packets leave from: "auto" follows the WAN address. */
    local: opt(z.string().refine((v) => v === 'auto' || isIpv4(v), 'expected "auto" or an IPv4 address'), 'auto'),
    /** This end's addresses on the tunnel (IPv6 for 6in4; IPv4 and IPv6 for WireGuard). */
    address: opt(list(cidr), []),
    /** A routed prefix the tunnel brings: traffic from it always leaves through this tunnel. */
    prefix: opt(cidr6OrEmpty, ''),
    /** 0: the type's default (6in4 1480, WireGuard 1420). */
    mtu: opt(z.coerce.number().int('expected a whole number').refine((v) => v === 0 || (v >= 1280 && v <= 9000), 'expected 0 (the type\'s default) or 1280-9000'), 0),
    ttl: opt(int(1, 255), 64),
    /** Hurricane Electric's tunnel id, account name, and a file holding the tunnel's update key (jobs/he-update.ts). */
    heTunnelId: opt(z.string().regex(/^$|^[A-Za-z0-9._-]{1,64}$/, 'expected the tunnel id from tunnelbroker.net'), ''),
    heUsername: opt(z.string().regex(/^$|^[A-Za-z0-9._@+-]{1,64}$/, 'expected the tunnelbroker.net user name'), ''),
    heKeyFile: opt(z.string(), ''),
    // WireGuard
    /** A wg-quick style file ([Interface] and [Peer] sections); instead of the key and peer options below. */
    wgConfig: opt(z.string(), ''),
    privateKeyFile: opt(z.string(), ''),
    peerPublicKey: opt(wgKey, ''),
    presharedKeyFile: opt(z.string(), ''),
    endpoint: opt(endpoint, ''),
    allowedIps: opt(list(cidr), ['::/0']),
    persistentKeepalive: opt(int(0, 65_535), 25),
    listenPort: opt(int(0, 65_535), 0),
    /** kernel, wireguard-go, or auto: the kernel's module when it has one. */
    backend: opt(z.enum(['auto', 'kernel', 'wireguard-go']), 'auto'),
  },
  check(t) {
    const type = t.type as TunnelType
    const given = Object.keys(tunnelSection.options).filter((k) => !['type', 'iface', 'enabled', 'priority', 'probe'].includes(k) && JSON.stringify(t[k]) !== JSON.stringify(tunnelSection.options[k].default))
    const foreign = given.filter((k) => !TUNNEL_OPTIONS[type].includes(k))
    if (foreign.length > 0) return `option${foreign.length > 1 ? 's' : ''} ${foreign.join(', ')} do${foreign.length > 1 ? '' : 'es'} not apply to a ${type} tunnel`
    const addresses = t.address as string[]
    if (type === '6in4') {
      if (!t.remote) return 'a 6in4 tunnel needs remote (the broker\'s IPv4)'
      if (addresses.some((a) => !a.includes(':'))) return 'a 6in4 tunnel carries IPv6 only: address must be IPv6'
      if (addresses.length === 0) return 'a 6in4 tunnel needs address (this end\'s IPv6 with its length, from the broker)'
      const he = [t.heTunnelId, t.heUsername, t.heKeyFile].filter(Boolean).length
      if (he !== 0 && he !== 3) return 'the Hurricane Electric updater needs he_tunnel_id, he_username and he_key_file together'
    }
    if (type === 'wireguard') {
      if (t.wgConfig && (t.privateKeyFile || t.peerPublicKey || t.endpoint)) return 'give either wg_config or private_key_file, peer_public_key and endpoint, not both'
      if (!t.wgConfig && !(t.privateKeyFile && t.peerPublicKey && t.endpoint)) return 'a wireguard tunnel needs wg_config, or private_key_file, peer_public_key and endpoint'
    }
    return undefined
  },
}

export const FORWARD_MODES = ['relay', 'kernel'] as const
export const FORWARD_TRANSPORTS = ['ipip6', 'wireguard'] as const
const portRange = z.coerce.string().regex(/^(all|\d{1,5}(-\d{1,5})?)$/, 'expected a port, a range such as 8000-8100, or "all"')
  .refine((v) => v === 'all' || v.split('-').every((p) => Number(p) >= 1 && Number(p) <= 65_535), 'ports are 1-65535')
  .refine((v) => v === 'all' || !v.includes('-') || Number(v.split('-')[0]) < Number(v.split('-')[1]), 'a range goes from low to high')
const hostOrIpv6 = z.string().refine((v) => parseIpv6(v) !== undefined || isHostname(v), 'expected a host name or an IPv6 address')
const listenAt = z.coerce.string().refine((v) => ['4', '6', 'both'].includes(v) || isIpv4(v) || parseIpv6(v) !== undefined, 'expected 4, 6, both, or an IP address of this host')
const transport = z.enum(FORWARD_TRANSPORTS, `expected ${FORWARD_TRANSPORTS.join(' or ')}`)
/** 0: the transport's default (ipip6 1452, WireGuard 1420). */
const tunnelMtu = z.coerce.number().int('expected a whole number').refine((v) => v === 0 || (v >= 1280 && v <= 9000), 'expected 0 (the transport\'s default) or 1280-9000')

/** The options of a kernel-mode forward that say how its tunnel is made; forwards on one iface share it. */
const FORWARD_TUNNEL_OPTIONS = ['transport', 'iface', 'privateKeyFile', 'peerPublicKey', 'listenPort', 'mtu', 'encaplimit']

/**
 * `config forward 'nas'` / `"forwards": [...]` (role forwarder): a port of this host forwarded to a home behind
 * DS-Lite. relay: the runner's relay connects to `target` by name. kernel: packets go through a tunnel to the
 * home router (`target`) and are DNATed to the home server's IPv4 (`targetAddress`), so it sees the client.
 */
const forwardSection: SectionSpec = {
  uci: 'forward',
  json: 'forwards',
  options: {
    enabled: opt(bool, true),
    mode: opt(z.enum(FORWARD_MODES, `expected ${FORWARD_MODES.join(' or ')}`), 'relay'),
    listen: opt(listenAt, 'both'),
    port: opt(portRange),
    proto: opt(z.enum(['tcp', 'udp', 'both'], 'expected tcp, udp or both'), 'tcp'),
    /** relay: the home server's name (or IPv6). kernel: the home router's name (or IPv6), the tunnel's far end. */
    target: opt(hostOrIpv6),
    /** 0: the same port (a range maps onto a range of the same length from here). */
    targetPort: opt(int(0, 65_535), 0),
    /** Relay: use the A record when the name has no AAAA. */
    ipv4Fallback: opt(bool, false),
    /** Relay, TCP: a PROXY protocol v2 header toward the target, carrying the client's address. */
    proxyProtocol: opt(bool, false),
    // kernel mode
    /** The home server's IPv4 on the home LAN: where the forwarded packets are DNATed to. */
    targetAddress: opt(ipv4OrEmpty, ''),
    transport: opt(transport, 'ipip6'),
    /** The tunnel's interface; default dgf-<name>. */
    iface: opt(z.union([z.literal(''), ifname]), ''),
    privateKeyFile: opt(z.string(), ''),
    peerPublicKey: opt(wgKey, ''),
    listenPort: opt(int(0, 65_535), 51830),
    mtu: opt(tunnelMtu, 0),
    /** ipip6: `encaplimit none` (MTU 1460 instead of 1452); both ends must agree. */
    encaplimit: opt(bool, true),
  },
  check(f) {
    if (f.port === 'all' && f.mode !== 'kernel') return 'port "all" is for mode kernel only (a relay listens on each port)'
    if (f.port === 'all' && !isIpv4(f.listen as string)) return 'port "all" takes every port of an address: give listen as this host\'s extra IPv4 address, never 4 or both'
    const range = forwardPorts(f.port as string)
    if (range && f.targetPort !== 0 && (f.targetPort as number) + range[1] - range[0] > 65_535) return 'target_port plus the range\'s length passes 65535'
    if (f.mode === 'relay') {
      const foreign = ['targetAddress', ...FORWARD_TUNNEL_OPTIONS].filter((k) => JSON.stringify(f[k]) !== JSON.stringify(forwardSection.options[k].default))
      if (foreign.length > 0) return `${foreign.join(', ')} apply to mode kernel only`
    } else {
      if (!f.targetAddress) return 'mode kernel needs target_address (the home server\'s IPv4, where packets are DNATed to)'
      if (f.proxyProtocol) return 'proxy_protocol is for mode relay (in kernel mode the server sees the client\'s own address)'
      if (f.ipv4Fallback) return 'ipv4_fallback is for mode relay (a tunnel\'s far end is IPv6)'
      if (f.listen === '6' || (parseIpv6(f.listen as string) !== undefined)) return 'mode kernel lends IPv4: listen must be 4, both, or an IPv4 address'
      if (f.transport === 'wireguard' && !(f.privateKeyFile && f.peerPublicKey)) return 'transport wireguard needs private_key_file and peer_public_key'
      if (f.transport === 'ipip6' && (f.privateKeyFile || f.peerPublicKey)) return 'private_key_file and peer_public_key are for transport wireguard'
    }
    return undefined
  },
}

/**
 * `config forwarder_peer 'vps'` / `"forwarderPeers": [...]` (role gateway): this home router's end of a
 * kernel-mode forwarder's tunnel. Replies from `servers` to connections that came in through it go back
 * through it (connection mark, policy rule, own table); everything else keeps the default route.
 */
const forwarderPeerSection: SectionSpec = {
  uci: 'forwarder_peer',
  json: 'forwarderPeers',
  options: {
    enabled: opt(bool, true),
    /** The VPS: its name or IPv6, the tunnel's far end. */
    remote: opt(hostOrIpv6),
    /** This end's IPv6: "auto" follows the WAN's global address. */
    local: opt(z.string().refine((v) => v === 'auto' || parseIpv6(v) !== undefined, 'expected "auto" or an IPv6 address'), 'auto'),
    transport: opt(transport, 'ipip6'),
    /** The tunnel's interface; default dgp-<name>. */
    iface: opt(z.union([z.literal(''), ifname]), ''),
    /** The home servers' IPv4 addresses the VPS forwards to. */
    servers: opt(list(z.string().refine(isIpv4, 'not an IPv4 address')).refine((v) => v.length > 0, 'at least one server')),
    /** The forwarded ports accepted from the tunnel (such as 22,80,443,8000-8100); "all": whatever the VPS forwards. */
    ports: opt(z.string().regex(/^(all|\d+(-\d+)?(,\d+(-\d+)?)*)$/, 'expected "all" or ports such as 80,443,8000-8100'), 'all'),
    privateKeyFile: opt(z.string(), ''),
    peerPublicKey: opt(wgKey, ''),
    /** The VPS's WireGuard port. */
    endpointPort: opt(int(1, 65_535), 51830),
    mtu: opt(tunnelMtu, 0),
    encaplimit: opt(bool, true),
  },
  check(p) {
    const badPorts = p.ports === 'all' ? [] : (p.ports as string).split(',').filter((r) => { const [a, b] = r.split('-').map(Number); return a < 1 || a > 65_535 || (b !== undefined && (b > 65_535 || b <= a)) })
    if (badPorts.length > 0) return `ports ${badPorts.join(',')}: ports are 1-65535 and a range goes from low to high`
    if (p.transport === 'wireguard' && !(p.privateKeyFile && p.peerPublicKey)) return 'transport wireguard needs private_key_file and peer_public_key'
    if (p.transport === 'ipip6' && (p.privateKeyFile || p.peerPublicKey)) return 'private_key_file and peer_public_key are for transport wireguard'
    return undefined
  },
}

/** A forward's ports as [first, last]; undefined for "all". */
export function forwardPorts(port: string): [number, number] | undefined {
  if (port === 'all') return undefined
  const [a, b] = port.split('-').map(Number)
  return [a, b ?? a]
}

/** The section types dualgate knows. */
export const SECTIONS: SectionSpec[] = [tunnelSection, forwardSection, forwarderPeerSection]

const SECTION_NAME = /^[A-Za-z0-9_]{1,32}$/

const DEFAULT_SCHEDULES: Record<string, string> = {
  'scan-arp': '*/1 * * * *',
  'acquire-leases': '*/2 * * * *',
  'prune-stale': '*/5 * * * *',
  'refresh-proxies': '*/5 * * * *',
  diagnose: '17 * * * *',
  tunnels: '*/5 * * * *',
  'he-update': '*/15 * * * *',
  forwarder: '*/15 * * * *',
}

export interface Loaded {
  config: Config
  /** Where each value came from: "default", "uci /etc/config/dualgate", "json <file>", "env DUALGATE_X". */
  sources: Record<string, string>
}

export class ConfigError extends Error {}

const snake = (key: string) => key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)
const envName = (key: string) => `DUALGATE_${snake(key).toUpperCase()}`

interface Layer {
  source: (key: string) => string
  values: Record<string, unknown>
  /** Raw sections by JSON key, then by name. */
  sections: Record<string, Map<string, Record<string, unknown>>>
}

export interface LoadOptions {
  env?: NodeJS.ProcessEnv
  uciFile?: string
  cwd?: string
  /** The section types to read (tests declare their own). */
  sections?: SectionSpec[]
}

export function loadConfig(opts: LoadOptions = {}): Loaded {
  const env = opts.env ?? process.env
  const sectionSpecs = opts.sections ?? SECTIONS
  const layers: Layer[] = []
  const uciFile = opts.uciFile ?? env.DUALGATE_UCI_FILE ?? '/etc/config/dualgate'
  if (existsSync(uciFile)) layers.push(uciLayer(uciFile, sectionSpecs))
  if (env.DUALGATE_CONFIG) layers.push(jsonLayer(env.DUALGATE_CONFIG, sectionSpecs))
  layers.push(envLayer(env))

  const config: Record<string, unknown> = {}
  const sources: Record<string, string> = {}
  for (const [key, [schema, fallback]] of Object.entries(spec)) {
    let raw: unknown = fallback
    let source = 'default'
    for (const layer of layers) {
      if (layer.values[key] !== undefined) { raw = layer.values[key]; source = layer.source(key) }
    }
    config[key] = parseValue(key, schema, raw, source)
    sources[key] = source
  }
  const schedules: Record<string, string> = {}
  for (const job of Object.keys(DEFAULT_SCHEDULES)) {
    let raw: unknown = DEFAULT_SCHEDULES[job]
    let source = 'default'
    for (const layer of layers) {
      const v = (layer.values.schedules as Record<string, unknown> | undefined)?.[job]
      if (v !== undefined) { raw = v; source = layer.source(`schedules.${job}`) }
    }
    schedules[job] = parseValue(`schedules.${job}`, cron, raw, source) as string
    sources[`schedules.${job}`] = source
  }
  config.schedules = schedules
  const sections: Config['sections'] = {}
  for (const sec of sectionSpecs) {
    const named = new Map<string, { raw: Record<string, unknown>; source: string }>()
    for (const layer of layers) {
      for (const [name, raw] of layer.sections[sec.json] ?? []) named.set(name, { raw, source: layer.source(`${sec.json}.${name}`) })
    }
    sections[sec.json] = [...named].map(([name, { raw, source }]) => {
      sources[`${sec.json}.${name}`] = source
      return parseSection(sec, name, raw, source)
    })
  }
  config.sections = sections
  config.dataDir = path.resolve(opts.cwd ?? process.cwd(), config.dataDir as string)
  config.runDir = path.resolve(opts.cwd ?? process.cwd(), config.runDir as string)
  config.mcpSocket = config.mcpSocket === 'off' ? 'off' : path.resolve(config.runDir as string, (config.mcpSocket as string) || 'mcp.sock')
  if (config.persistDir) config.persistDir = path.resolve(opts.cwd ?? process.cwd(), config.persistDir as string)
  config.rootDir = path.resolve(opts.cwd ?? process.cwd(), config.rootDir as string)
  return { config: config as Config, sources }
}

function parseValue(key: string, schema: z.ZodType, raw: unknown, source: string): unknown {
  const result = schema.safeParse(raw)
  if (result.success) return result.data
  const why = result.error.issues.map((i) => i.message).join('; ')
  throw new ConfigError(`config: ${key} = ${JSON.stringify(raw)} from ${source}: ${why}`)
}

function parseSection(sec: SectionSpec, name: string, raw: Record<string, unknown>, source: string): Section {
  const where = `${sec.json}.${name}`
  for (const option of Object.keys(raw)) {
    if (!(option in sec.options)) throw new ConfigError(`config: ${where} from ${source}: unknown option "${option}"; known: ${Object.keys(sec.options).join(', ')}`)
  }
  const out: Section = { name }
  for (const [option, { schema, default: fallback }] of Object.entries(sec.options)) {
    const value = raw[option] ?? fallback
    if (value === undefined) throw new ConfigError(`config: ${where} from ${source}: option "${option}" is required`)
    out[option] = parseValue(`${where}.${option}`, schema, value, source)
  }
  const problem = sec.check?.(out)
  if (problem) throw new ConfigError(`config: ${where} from ${source}: ${problem}`)
  return out
}

/** A section's name, checked: UCI allows [A-Za-z0-9_] and these names end up in interface names and URLs. */
function sectionName(sec: SectionSpec, name: unknown, where: string): string {
  if (name === undefined) throw new ConfigError(`config: ${where}: a ${sec.uci} section needs a name: config ${sec.uci} 'name'`)
  if (typeof name !== 'string' || !SECTION_NAME.test(name)) throw new ConfigError(`config: ${where}: ${sec.uci} name ${JSON.stringify(name)} is not 1-32 of A-Z a-z 0-9 _`)
  return name
}

function addSection(into: Layer['sections'], sec: SectionSpec, name: string, raw: Record<string, unknown>, where: string): void {
  const named = (into[sec.json] ??= new Map())
  if (named.has(name)) throw new ConfigError(`config: ${where}: ${sec.uci} "${name}" is defined twice`)
  named.set(name, raw)
}

const camel = (option: string) => option.replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase())

function uciLayer(file: string, sectionSpecs: SectionSpec[]): Layer {
  let sections
  try {
    sections = parseUci(readFileSync(file, 'utf8'))
  } catch (err) {
    if (err instanceof UciSyntaxError) throw new ConfigError(`config: ${file}: ${err.message}`)
    throw err
  }
  const byOption = Object.fromEntries(Object.keys(spec).map((k) => [snake(k), k]))
  const values: Record<string, unknown> = {}
  const schedules: Record<string, string> = {}
  const named: Layer['sections'] = {}
  for (const section of sections) {
    const sec = sectionSpecs.find((x) => x.uci === section.type)
    if (sec) {
      const name = sectionName(sec, section.name, file)
      addSection(named, sec, name, Object.fromEntries(Object.entries(section.options).map(([k, v]) => [camel(k), v])), file)
    } else if (section.type === 'dualgate') {
      for (const [option, value] of Object.entries(section.options)) {
        const key = byOption[option]
        if (!key) throw new ConfigError(`config: ${file}: unknown option "${option}" in config dualgate`)
        values[key] = Array.isArray(value) ? value.join(',') : value
      }
    } else if (section.type === 'job') {
      const job = (section.name ?? '').replaceAll('_', '-')
      if (!(job in DEFAULT_SCHEDULES)) throw new ConfigError(`config: ${file}: unknown job "${section.name}"`)
      if (typeof section.options.schedule === 'string') schedules[job] = section.options.schedule
    } else {
      throw new ConfigError(`config: ${file}: unknown section type "config ${section.type}"; known: ${['dualgate', 'job', ...sectionSpecs.map((x) => x.uci)].join(', ')}`)
    }
  }
  values.schedules = schedules
  return { source: () => `uci ${file}`, values, sections: named }
}

function jsonLayer(file: string, sectionSpecs: SectionSpec[]): Layer {
  let values: Record<string, unknown>
  try {
    values = JSON.parse(readFileSync(file, 'utf8'))
  } catch (err) {
    throw new ConfigError(`config: ${file} (DUALGATE_CONFIG): ${(err as Error).message}`)
  }
  if (typeof values !== 'object' || values === null || Array.isArray(values)) throw new ConfigError(`config: ${file}: expected a JSON object`)
  const named: Layer['sections'] = {}
  for (const key of Object.keys(values)) {
    const sec = sectionSpecs.find((x) => x.json === key)
    if (sec) {
      const list = values[key]
      if (!Array.isArray(list)) throw new ConfigError(`config: ${file}: "${key}" must be a list of sections`)
      for (const [i, entry] of list.entries()) {
        if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw new ConfigError(`config: ${file}: ${key}[${i}] must be an object`)
        const { name, ...raw } = entry as Record<string, unknown>
        addSection(named, sec, sectionName(sec, name, `${file} ${key}[${i}]`), raw, file)
      }
      delete values[key]
    } else if (key !== 'schedules' && !(key in spec)) throw new ConfigError(`config: ${file}: unknown key "${key}"`)
  }
  return { source: () => `json ${file}`, values, sections: named }
}

const scheduleEnv = (job: string) => `DUALGATE_SCHEDULE_${job.replaceAll('-', '_').toUpperCase()}`

function envLayer(env: NodeJS.ProcessEnv): Layer {
  const values: Record<string, unknown> = {}
  for (const key of Object.keys(spec)) {
    const value = env[envName(key)]
    if (value !== undefined) values[key] = value
  }
  const schedules: Record<string, string> = {}
  for (const job of Object.keys(DEFAULT_SCHEDULES)) {
    const value = env[scheduleEnv(job)]
    if (value !== undefined) schedules[job] = value
  }
  values.schedules = schedules
  return { source: (key) => `env ${key.startsWith('schedules.') ? scheduleEnv(key.slice(10)) : envName(key)}`, values, sections: {} }
}
