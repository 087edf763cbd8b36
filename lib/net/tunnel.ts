// Kernel tunnels over iproute2: sit (6in4) links and their settings, tunnel links' addresses, and the routing
// of tunnels (a table and rules each, the default IPv6 route, a pinned route to a broker). Parsing is pure.
import { inPrefix6 } from '../addr/ipv6.ts'
import type { Sh } from '../core/exec.ts'
import { getLink } from './ip.ts'
import { listRules, type RuleJson } from './route.ts'

export interface SitSettings {
  ifname: string
  local: string
  remote: string
  ttl: number
}

export interface TunnelLink {
  ifname: string
  kind?: string
  up: boolean
  mtu: number
  rxBytes: number
  txBytes: number
  /** sit: the outer IPv4 addresses and TTL (0: inherit). */
  local?: string
  remote?: string
  ttl?: number
}

interface LinkJson {
  ifname: string
  mtu?: number
  flags?: string[]
  stats64?: { rx?: { bytes?: number }; tx?: { bytes?: number } }
  linkinfo?: { info_kind?: string; info_data?: { local?: string; remote?: string; ttl?: number } }
}

export function parseTunnelLinks(json: string): TunnelLink[] {
  return (JSON.parse(json || '[]') as LinkJson[]).map((l) => ({
    ifname: l.ifname,
    kind: l.linkinfo?.info_kind,
    up: (l.flags ?? []).includes('UP'),
    mtu: l.mtu ?? 0,
    rxBytes: l.stats64?.rx?.bytes ?? 0,
    txBytes: l.stats64?.tx?.bytes ?? 0,
    local: l.linkinfo?.info_data?.local,
    remote: l.linkinfo?.info_data?.remote,
    ttl: l.linkinfo?.info_data?.ttl,
  }))
}

/** A link's kind, state, settings and byte counters, in one `ip` call. */
export async function getTunnelLink(sh: Sh, ifname: string): Promise<TunnelLink | undefined> {
  const { stdout, code } = await sh.query('ip', ['-j', '-s', '-d', 'link', 'show', 'dev', ifname], { nothrow: true })
  return code === 0 ? parseTunnelLinks(stdout)[0] : undefined
}

export async function addSit(sh: Sh, s: SitSettings): Promise<void> {
  await sh.apply('ip', ['link', 'add', 'name', s.ifname, 'type', 'sit', 'local', s.local, 'remote', s.remote, 'ttl', String(s.ttl)])
}

/** Changes a sit link's outer addresses and TTL in place (traffic on it continues). */
export async function changeSit(sh: Sh, s: SitSettings): Promise<void> {
  await sh.apply('ip', ['tunnel', 'change', s.ifname, 'mode', 'sit', 'local', s.local, 'remote', s.remote, 'ttl', String(s.ttl)])
}

export async function setMtu(sh: Sh, ifname: string, mtu: number): Promise<void> {
  await sh.apply('ip', ['link', 'set', 'dev', ifname, 'mtu', String(mtu)])
}

export async function setLinkDown(sh: Sh, ifname: string): Promise<void> {
  await sh.apply('ip', ['link', 'set', 'dev', ifname, 'down'])
}

/** Adds the addresses (address/len) the link lacks; `have` are those it has. */
export async function addAddresses(sh: Sh, ifname: string, want: string[], have: string[]): Promise<string[]> {
  const added = want.filter((a) => !have.includes(a))
  for (const a of added) await sh.apply('ip', [a.includes(':') ? '-6' : '-4', 'addr', 'add', a, 'dev', ifname, ...(a.includes(':') ? ['nodad'] : [])])
  return added
}

/** Removes the /128 addresses on a link that lie in `subnet`. */
export async function removeAddressesIn(sh: Sh, ifname: string, subnet: string): Promise<void> {
  for (const a of (await getLink(sh, ifname))?.addresses ?? []) {
    if (a.family === 6 && a.prefixlen === 128 && inPrefix6(a.address, subnet)) await sh.apply('ip', ['-6', 'addr', 'del', `${a.address}/128`, 'dev', ifname], { nothrow: true })
  }
}

// Routing of tunnels. Each tunnel has a table of its own with a default route into it; sockets bound to the
// tunnel (the health probes) and traffic from its addresses and routed prefix use that table, so they
// never leave by another path (a broker drops packets from a prefix it did not hand out). The rule before
// them sends such traffic to the main table first for everything but a default route, so the LAN and the
// tunnel's own link stay reachable. The default IPv6 route of the host points at the primary tunnel.

/** `from <source> lookup main suppress_prefixlength 0`, then the tunnel's rules. */
export const PREF_TUNNEL_MAIN = 1200
export const PREF_TUNNEL = 1201
/** Tunnel tables: below the devices' (FIRST_DEVICE_TABLE). */
export const FIRST_TUNNEL_TABLE = 900
export const LAST_TUNNEL_TABLE = 999
/** The routing protocol number on routes dualgate adds for tunnels, so it finds and removes only its own. */
export const TUNNEL_ROUTE_PROTO = '78'

interface RouteJson { dst: string; dev?: string; gateway?: string; metric?: number; protocol?: string; from?: string; prefsrc?: string }

async function routes(sh: Sh, args: string[]): Promise<RouteJson[]> {
  const { stdout, code } = await sh.query('ip', ['-j', ...args], { nothrow: true })
  return code === 0 ? (JSON.parse(stdout || '[]') as RouteJson[]) : []
}

export interface TunnelRouting {
  ifname: string
  table: number
  /** Its addresses (as /128) and routed prefix. */
  sources: string[]
}

const cidrOf = (r: { src?: string; srclen?: number }) => (r.srclen === undefined ? r.src : `${r.src}/${r.srclen}`)
const hostCidr = (s: string) => (s.includes('/') ? s : `${s}/128`)
const sameSource = (rule: { src?: string; srclen?: number }, source: string) => {
  const [a, len] = hostCidr(source).split('/')
  return rule.src === a && (rule.srclen ?? 128) === Number(len)
}

/** Makes the tunnel's table and rules what `r` says; returns how many changes it made. */
export async function applyTunnelRouting(sh: Sh, r: TunnelRouting): Promise<number> {
  const table = String(r.table)
  const lines: string[] = []
  const current = (await routes(sh, ['-6', 'route', 'show', 'table', table])).find((x) => x.dst === 'default')
  if (current?.dev !== r.ifname) lines.push(`route replace default dev ${r.ifname} table ${table} metric 1`)
  const rules = await listRules(sh, 6)
  const mine = rules.filter((x) => x.priority === PREF_TUNNEL && x.table === table)
  if (!mine.some((x) => x.oif === r.ifname)) lines.push(`rule add oif ${r.ifname} lookup ${table} pref ${PREF_TUNNEL}`)
  for (const s of r.sources.map(hostCidr)) {
    if (!rules.some((x) => x.priority === PREF_TUNNEL_MAIN && x.table === 'main' && sameSource(x, s))) lines.push(`rule add from ${s} lookup main suppress_prefixlength 0 pref ${PREF_TUNNEL_MAIN}`)
    if (!mine.some((x) => sameSource(x, s))) lines.push(`rule add from ${s} lookup ${table} pref ${PREF_TUNNEL}`)
  }
  for (const x of mine) {
    const oif = x.oif
    if (oif !== undefined ? oif !== r.ifname : x.src !== 'all' && !r.sources.some((s) => sameSource(x, s))) lines.push(ruleDel(x, table))
  }
  if (lines.length > 0) await sh.apply('ip', ['-6', '-batch', '-'], { input: `${lines.join('\n')}\n` })
  return lines.length
}

function ruleDel(x: RuleJson, table: string): string {
  const selector = x.oif ? `oif ${x.oif}` : `from ${cidrOf(x)}`
  return `rule del ${selector} lookup ${table} pref ${x.priority}`
}

/** Removes the tunnel's rules (and the main-first rules of its sources) and empties its table. */
export async function removeTunnelRouting(sh: Sh, table: number): Promise<void> {
  const t = String(table)
  const rules = await listRules(sh, 6)
  const mine = rules.filter((x) => x.priority === PREF_TUNNEL && x.table === t)
  const lines = mine.map((x) => ruleDel(x, t))
  for (const x of mine.filter((m) => m.src && m.src !== 'all')) {
    if (rules.some((y) => y.priority === PREF_TUNNEL_MAIN && y.table === 'main' && y.src === x.src && y.srclen === x.srclen)) {
      lines.push(`rule del from ${cidrOf(x)} lookup main suppress_prefixlength 0 pref ${PREF_TUNNEL_MAIN}`)
    }
  }
  if (lines.length > 0) await sh.apply('ip', ['-6', '-batch', '-'], { input: `${lines.join('\n')}\n`, nothrow: true })
  if ((await routes(sh, ['-6', 'route', 'show', 'table', t])).length > 0) await sh.apply('ip', ['-6', 'route', 'flush', 'table', t], { nothrow: true })
}

/** The host's default IPv6 route that dualgate put on a tunnel: its interface, if there is one. */
export async function tunnelDefaultRoute(sh: Sh): Promise<string | undefined> {
  return (await routes(sh, ['-6', 'route', 'show', 'default', 'proto', TUNNEL_ROUTE_PROTO]))[0]?.dev
}

/** Points the default IPv6 route at `ifname` in one replace: no moment without a default route. */
export async function replaceTunnelDefault(sh: Sh, ifname: string, metric: number): Promise<void> {
  await sh.apply('ip', ['-6', 'route', 'replace', 'default', 'dev', ifname, 'metric', String(metric), 'proto', TUNNEL_ROUTE_PROTO])
}

export async function removeTunnelDefault(sh: Sh): Promise<void> {
  for (const r of await routes(sh, ['-6', 'route', 'show', 'default', 'proto', TUNNEL_ROUTE_PROTO])) {
    await sh.apply('ip', ['-6', 'route', 'del', 'default', 'dev', r.dev ?? '', 'proto', TUNNEL_ROUTE_PROTO, ...(r.metric ? ['metric', String(r.metric)] : [])], { nothrow: true })
  }
}

/**
 * Pins the route to a 6in4 broker as a host route through the path it takes now, unless that path is one of
 * `tunnels`: tunnel packets must never be routed into a tunnel, whatever later becomes the default route.
 */
export async function pinHostRoute4(sh: Sh, remote: string, tunnels: string[]): Promise<boolean> {
  const pinned = (await routes(sh, ['-4', 'route', 'show', `${remote}/32`, 'proto', TUNNEL_ROUTE_PROTO]))[0]
  const via = (await routes(sh, ['-4', 'route', 'get', remote]))[0]
  if (!via?.dev || tunnels.includes(via.dev)) return false
  if (pinned && pinned.dev === via.dev && pinned.gateway === via.gateway) return false
  await sh.apply('ip', ['-4', 'route', 'replace', `${remote}/32`, ...(via.gateway ? ['via', via.gateway] : []), 'dev', via.dev, 'proto', TUNNEL_ROUTE_PROTO])
  return true
}

export async function unpinHostRoute4(sh: Sh, remote: string): Promise<void> {
  if ((await routes(sh, ['-4', 'route', 'show', `${remote}/32`, 'proto', TUNNEL_ROUTE_PROTO])).length > 0) {
    await sh.apply('ip', ['-4', 'route', 'del', `${remote}/32`, 'proto', TUNNEL_ROUTE_PROTO], { nothrow: true })
  }
}
