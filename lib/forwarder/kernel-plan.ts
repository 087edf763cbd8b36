// Kernel-mode forwarding, both ends, as a plan: config (kernel forwards on the VPS, forwarder peers on the home
// router), the far ends' resolved addresses, the private keys and the system as read go in; the commands that
// make the system so, the records to keep and an outcome per tunnel come out. Pure: lib/forwarder/kernel-apply.ts
// reads and runs.
//
// The VPS end: a tunnel per iface (ipip6 or WireGuard over IPv6) to the home router, a /32 route for each
// forward's targetAddress into it, and DNAT of the listen IPv4 and ports to targetAddress. No SNAT: the client's
// own address reaches the home server (the point of kernel mode), its replies come back through the tunnel and
// conntrack undoes the DNAT; the server's own traffic never comes this way (the home end routes only replies into
// the tunnel), so nothing leaves the VPS with a home address. Only DNATed connections enter the tunnel and only
// their packets come out of it: the VPS is no open router for the home, nor the home's LAN for the internet.
//
// The home end: its tunnel to the VPS; a connection that comes in through it gets a connection mark, and its
// packets (both ways) the same packet mark; two rules for that mark (main first for everything but a default
// route, so the LAN stays reachable; then a table of its own with a default route into the tunnel) send the
// servers' replies back through the tunnel while everything else keeps the default route. The mark is also
// what the reverse-path check uses (src_valid_mark on the tunnel), so rp_filter can stay strict. From the tunnel
// only the servers' forwarded ports are accepted; nothing else goes out through it.
//
// TCP MSS is clamped to the tunnel's MTU on both ends, both ways. Everything of ours in nftables is one table
// (FWD_NFT_TABLE) beside the gateway's, declared whole with a stamp of its definition, so a reconcile that
// finds it right changes nothing and neither reconcile ever touches the other's table.
import { createHash } from 'node:crypto'
import { isIpv4 } from '../addr/ipv4.ts'
import { formatIpv6, parseIpv6 } from '../addr/ipv6.ts'
import type { ForwarderTunnelRecord } from '../core/schema.ts'
import { addIp6tnlArgs, changeIp6tnlArgs, ip6tnlMatches, type Ip6tnlLink } from '../net/ip6tnl.ts'
import { replaceTableInput } from '../net/nft.ts'
import type { RouteJson, RuleJson } from '../net/route.ts'
import type { ListeningSocket } from '../net/sockets.ts'
import { confKey } from '../net/sysctl.ts'
import { wgPublicKey, type WgState } from '../net/wireguard.ts'
import { wgSetconfText } from '../tunnels/config.ts'
import { tunnelMtu, type ForwarderPeer, type KernelForward } from './config.ts'

export const FWD_NFT_TABLE = 'dualgate_fwd'
/** The routing protocol number on our routes (the tunnels' are 78), so we find and remove only ours. */
export const FWD_ROUTE_PROTO = '79'
/** Home end: main without its default route, then the peer's table; before the devices' rules (1100). */
export const PREF_PEER_MAIN = 1050
export const PREF_PEER = 1051
/** Home end: a table per peer, below the tunnels' (900-999). */
export const FIRST_PEER_TABLE = 800
export const LAST_PEER_TABLE = 899
/** The bits of the packet and connection marks that are ours; a peer's mark is its table's index there. */
export const MARK_MASK = 0x00ff0000
/** A port range mapped onto another start is written port by port; beyond this it is refused. */
export const MAX_SHIFTED_RANGE = 4096
const WG_KEEPALIVE = 25

/** One tunnel as config wants it: the VPS end of the kernel forwards on an iface, or a forwarder peer. */
export interface WantedTunnel {
  iface: string
  side: 'forward' | 'peer'
  /** The forwards (VPS end) or the peer. */
  names: string[]
  transport: 'ipip6' | 'wireguard'
  mtu: number
  encaplimit: boolean
  /** The far end as config gives it: a name or an IPv6 literal. */
  far: string
  /** "auto" (the WAN's global IPv6) or an IPv6. */
  local: string
  wireguard?: { privateKeyFile: string; peerPublicKey: string; listenPort: number; peerPort: number }
  forwards: KernelForward[]
  peer?: ForwarderPeer
}

export function wantedTunnels(forwards: KernelForward[], peers: ForwarderPeer[]): WantedTunnel[] {
  const out: WantedTunnel[] = []
  for (const f of forwards.filter((x) => x.enabled)) {
    const same = out.find((t) => t.side === 'forward' && t.iface === f.tunnel.iface)
    if (same) {
      same.names.push(f.name)
      same.forwards.push(f)
      continue
    }
    const wg = f.tunnel.wireguard
    out.push({
      iface: f.tunnel.iface,
      side: 'forward',
      names: [f.name],
      transport: f.tunnel.transport,
      mtu: tunnelMtu(f.tunnel),
      encaplimit: f.tunnel.encaplimit,
      far: f.target,
      local: 'auto',
      // Both ends listen on the same port: the VPS reaches the home at [target]:listenPort.
      wireguard: wg ? { privateKeyFile: wg.privateKeyFile, peerPublicKey: wg.peerPublicKey, listenPort: wg.listenPort, peerPort: wg.listenPort } : undefined,
      forwards: [f],
    })
  }
  for (const p of peers.filter((x) => x.enabled)) {
    const wg = p.wireguard
    out.push({
      iface: p.iface,
      side: 'peer',
      names: [p.name],
      transport: p.transport,
      mtu: tunnelMtu(p),
      encaplimit: p.encaplimit,
      far: p.remote,
      local: p.local,
      wireguard: wg ? { privateKeyFile: wg.privateKeyFile, peerPublicKey: wg.peerPublicKey, listenPort: wg.endpointPort, peerPort: wg.endpointPort } : undefined,
      forwards: [],
      peer: p,
    })
  }
  return out
}

/** What was read of the system (lib/forwarder/kernel-apply.ts readSystem). */
export interface ForwarderSystem {
  /** Each wanted or recorded iface as `ip -d -j link show` has it; undefined: no such link. */
  links: Record<string, Ip6tnlLink | undefined>
  wg: Record<string, WgState | undefined>
  wanIpv4?: string
  /** The WAN's usable global IPv6 addresses. */
  wanIpv6: string[]
  /** Our routes (proto FWD_ROUTE_PROTO), every table. */
  routes: RouteJson[]
  rules: RuleJson[]
  /** The comment of our nft table; undefined: no table. */
  nftComment: string | null | undefined
  sysctls: Record<string, string | undefined>
  kernelWireguard: boolean
  listeners: ListeningSocket[]
}

export type Resolution = { address: string } | { error: string }

export interface PlanInput {
  tunnels: WantedTunnel[]
  /** The far end's address by iface: resolved now (or the literal), or why not. */
  resolved: Record<string, Resolution>
  /** WireGuard private keys by iface, or why the key file could not be used. */
  keys: Record<string, { key: string } | { error: string }>
  records: Record<string, ForwarderTunnelRecord>
  system: ForwarderSystem
  wanIf: string
  now: string
}

export type Step =
  | { kind: 'run'; iface?: string; cmd: string; args: string[]; input?: string; nothrow?: boolean }
  /** `wg syncconf` with this text (it holds the private key: it goes through a 0600 file, never printed). */
  | { kind: 'wg-set'; iface: string; text: string }
  | { kind: 'wireguard-go'; iface: string }
  | { kind: 'stop-wireguard-go'; iface: string; pid: number }

export type KernelAction = 'created' | 'adopted' | 'changed' | 'unchanged' | 'removed' | 'failed'

export interface KernelOutcome {
  side: 'forward' | 'peer'
  /** The forwards on the tunnel (comma-separated), the forward, or the peer. */
  name: string
  iface: string
  transport: 'ipip6' | 'wireguard'
  action: KernelAction
  remote?: string
  detail?: string
}

export interface KernelPlan {
  steps: Step[]
  records: Record<string, ForwarderTunnelRecord>
  outcomes: KernelOutcome[]
  nft: 'unchanged' | 'written' | 'removed'
}

const canonical6 = (a: string) => {
  const b = parseIpv6(a)
  return b ? formatIpv6(b) : a
}
const run = (cmd: string, args: string[], iface?: string, extra: Partial<Extract<Step, { kind: 'run' }>> = {}): Step => ({ kind: 'run', iface, cmd, args, ...extra })

/** The peer's packet and connection mark: its table's index in MARK_MASK. */
export function peerMark(table: number): number {
  return ((table - FIRST_PEER_TABLE + 1) << 16) & MARK_MASK
}
const hex = (n: number) => `0x${n.toString(16).padStart(8, '0')}`

export function freePeerTable(records: Record<string, ForwarderTunnelRecord>): number | undefined {
  const used = new Set(Object.values(records).map((r) => r.table))
  for (let t = FIRST_PEER_TABLE; t <= LAST_PEER_TABLE; t++) if (!used.has(t)) return t
  return undefined
}

/** This end's outer address: the configured one, or the WAN's, keeping the one in use while the WAN still has it. */
export function pickLocal(setting: string, wanIpv6: string[], current: string | undefined): string | undefined {
  if (setting !== 'auto') return canonical6(setting)
  if (current && wanIpv6.includes(current)) return current
  return wanIpv6[0]
}

// ---- nftables ----

export interface DnatPart { forward: KernelForward; listen: string }
export interface VpsPart { iface: string; mtu: number; dnat: DnatPart[] }
export interface HomePart { iface: string; mtu: number; mark: number; servers: string[]; ports: string }

const l4 = (protos: string[]) => (protos.length > 1 ? `{ ${protos.join(', ')} }` : protos[0])

/**
 * The named counter of a forward's DNAT rule. A nat chain sees only the first packet of each connection (UDP:
 * each conntrack flow), so its packets are the connections the forward has opened since the table was written.
 */
export const forwardCounter = (name: string) => `fwd_${name}`

export function dnatRule({ forward: f, listen }: DnatPart): string {
  const match = `ip daddr ${listen} meta l4proto ${l4(f.protos)}`
  const count = `counter name "${forwardCounter(f.name)}"`
  if (!f.ports) return `${match} ${count} dnat ip to ${f.targetAddress}`
  const [a, b] = f.ports
  const to = f.targetPort ?? a
  const dport = a === b ? `${a}` : `${a}-${b}`
  if (to === a) return `${match} th dport ${dport} ${count} dnat ip to ${f.targetAddress}`
  if (a === b) return `${match} th dport ${a} ${count} dnat ip to ${f.targetAddress}:${to}`
  const pairs = Array.from({ length: b - a + 1 }, (_, i) => `${a + i} : ${f.targetAddress} . ${to + i}`)
  return `${match} th dport ${dport} ${count} dnat ip to th dport map { ${pairs.join(', ')} }`
}

const clamp = (dir: 'iifname' | 'oifname', iface: string, mtu: number) =>
  `${dir} "${iface}" tcp flags syn / syn,rst tcp option maxseg size > ${mtu - 40} tcp option maxseg size set ${mtu - 40}`

/** The table's definition without its stamp; empty when there is nothing to hold. */
export function nftBody(vps: VpsPart[], home: HomePart[]): string {
  if (vps.length === 0 && home.length === 0) return ''
  const parts: string[] = vps.flatMap((t) => t.dnat.map((d) => `  counter ${forwardCounter(d.forward.name)} {\n  }`))
  const chain = (name: string, hook: string, rules: string[]) => {
    if (rules.length > 0) parts.push(`  chain ${name} {\n    ${hook}\n${rules.map((r) => `    ${r}\n`).join('')}  }`)
  }
  chain('dnat_in', 'type nat hook prerouting priority dstnat; policy accept;', vps.flatMap((t) => t.dnat.map(dnatRule)))
  const keep = hex(~MARK_MASK >>> 0)
  chain('mark_in', 'type filter hook prerouting priority mangle; policy accept;', home.flatMap((t) => [
    `iifname "${t.iface}" ct state new ct mark set ct mark & ${keep} | ${hex(t.mark)}`,
    `ct mark & ${hex(MARK_MASK)} == ${hex(t.mark)} meta mark set meta mark & ${keep} | ${hex(t.mark)}`,
  ]))
  chain('clamp_mss', 'type filter hook forward priority mangle; policy accept;', [...vps, ...home].flatMap((t) => [clamp('oifname', t.iface, t.mtu), clamp('iifname', t.iface, t.mtu)]))
  chain('filter_forward', 'type filter hook forward priority filter; policy accept;', [
    ...vps.flatMap((t) => [
      `oifname "${t.iface}" ct status dnat accept`,
      `oifname "${t.iface}" drop`,
      `iifname "${t.iface}" ct state established,related accept`,
      `iifname "${t.iface}" drop`,
    ]),
    ...home.flatMap((t) => {
      const ports = t.ports === 'all' ? '' : ` meta l4proto { tcp, udp } th dport { ${t.ports.split(',').join(', ')} }`
      return [
        `iifname "${t.iface}" ct state established,related accept`,
        `iifname "${t.iface}" ip daddr { ${t.servers.join(', ')} }${ports} accept`,
        `iifname "${t.iface}" drop`,
        `oifname "${t.iface}" ct state established,related accept`,
        `oifname "${t.iface}" drop`,
      ]
    }),
  ])
  chain('filter_input', 'type filter hook input priority filter; policy accept;', [...vps, ...home].flatMap((t) => [
    `iifname "${t.iface}" ct state established,related accept`,
    `iifname "${t.iface}" drop`,
  ]))
  return parts.join('\n')
}

export function nftStamp(body: string): string {
  return `dualgate forwarder ${createHash('sha256').update(body).digest('hex').slice(0, 16)}`
}

export function nftDefinition(body: string): string {
  return `table inet ${FWD_NFT_TABLE} {\n  comment "${nftStamp(body)}"\n${body}\n}\n`
}

// ---- the plan ----

/** Why a forward cannot be made on this host now (its listen address, a port in use), or undefined. */
export function forwardProblem(f: KernelForward, listen: string | undefined, wanIf: string, listeners: ListeningSocket[], made: boolean): string | undefined {
  if (!listen) return `listen ${f.listen}: ${wanIf} has no IPv4 address`
  if (f.ports && f.targetPort !== undefined && f.targetPort !== f.ports[0] && f.ports[1] - f.ports[0] + 1 > MAX_SHIFTED_RANGE) {
    return `port ${f.ports[0]}-${f.ports[1]} onto target_port ${f.targetPort}: a range of more than ${MAX_SHIFTED_RANGE} ports maps only onto the same ports (target_port 0)`
  }
  // A port a local service holds would be taken from it by the DNAT (sshd: the VPS's own way in). Checked
  // when the forward is new; once made, its DNAT is what answers there.
  if (made) return undefined
  const addresses = new Set(['0.0.0.0', '::', listen, `::ffff:${listen}`])
  const busy = listeners.find((s) => f.protos.includes(s.proto) && addresses.has(s.address) && (!f.ports || (s.port >= f.ports[0] && s.port <= f.ports[1])))
  if (busy) return `port ${busy.port}/${busy.proto} is in use on this host (a service listens on ${busy.address.includes(':') ? `[${busy.address}]` : busy.address}:${busy.port}): choose another port`
  return undefined
}

interface TunnelResult {
  steps: Step[]
  action: KernelAction
  detail?: string
  record: ForwarderTunnelRecord
}

class Refused extends Error {}

function linkSteps(t: WantedTunnel, link: Ip6tnlLink | undefined, local: string | undefined, remote: string, input: PlanInput, record: ForwarderTunnelRecord | undefined): { steps: Step[]; created: boolean } {
  const steps: Step[] = []
  const { iface } = t
  let created = false
  if (t.transport === 'ipip6') {
    if (!local) throw new Refused(`local ${t.local}: ${input.wanIf} has no global IPv6 address`)
    const want = { ifname: iface, local, remote, encaplimit: t.encaplimit }
    if (!link) {
      steps.push(run('ip', addIp6tnlArgs(want), iface))
      created = true
    } else if (link.kind !== 'ip6tnl') throw new Refused(`interface ${iface} exists and is ${link.kind ?? 'not a tunnel'}, not ip6tnl: not touching it`)
    else if (!ip6tnlMatches(link, want)) steps.push(run('ip', changeIp6tnlArgs(want), iface))
  } else {
    const wg = t.wireguard!
    const key = input.keys[iface]
    if (!key || 'error' in key) throw new Refused(key?.error ?? 'no private key')
    if (!link) {
      steps.push(input.system.kernelWireguard ? run('ip', ['link', 'add', 'dev', iface, 'type', 'wireguard'], iface) : { kind: 'wireguard-go', iface })
      created = true
    } else if (link.kind !== 'wireguard' && link.kind !== 'tun') throw new Refused(`interface ${iface} exists and is ${link.kind ?? 'not a tunnel'}, not WireGuard: not touching it`)
    const state = created ? undefined : input.system.wg[iface]
    const peer = state?.peers.find((p) => p.publicKey === wg.peerPublicKey)
    const endpoint = `[${remote}]:${wg.peerPort}`
    // The home end dials the VPS: always its endpoint. The VPS follows the home's resolved address when it
    // changes and otherwise leaves the endpoint the home's packets taught it (WireGuard roams).
    const setEndpoint = t.side === 'peer' ? peer?.endpoint !== endpoint : !peer?.endpoint || (record?.remote !== remote && peer.endpoint !== endpoint)
    const allowedIps = t.side === 'peer' ? ['0.0.0.0/0'] : [...new Set(t.forwards.map((f) => `${f.targetAddress}/32`))].sort()
    const keepalive = t.side === 'peer' ? WG_KEEPALIVE : 0
    const same = state !== undefined && state.publicKey === wgPublicKey(key.key) && state.listenPort === wg.listenPort && state.peers.length === 1 && peer !== undefined &&
      [...peer.allowedIps].sort().join() === allowedIps.join() && peer.persistentKeepalive === keepalive && !setEndpoint
    if (!same) {
      const text = wgSetconfText({ privateKey: key.key, listenPort: wg.listenPort, peers: [{ publicKey: wg.peerPublicKey, endpoint: setEndpoint ? endpoint : undefined, allowedIps, persistentKeepalive: keepalive }] })
      steps.push({ kind: 'wg-set', iface, text })
    }
  }
  if (created || link?.mtu !== t.mtu) steps.push(run('ip', ['link', 'set', 'dev', iface, 'mtu', String(t.mtu)], iface))
  if (created || !link?.up) steps.push(run('ip', ['link', 'set', 'dev', iface, 'up'], iface))
  return { steps, created }
}

/** Removes what a record says we made: the link (and its wireguard-go), its routes and rules (synced apart). */
function removeSteps(iface: string, record: ForwarderTunnelRecord, link: Ip6tnlLink | undefined): Step[] {
  const steps: Step[] = []
  if (link) steps.push(run('ip', ['link', 'del', 'dev', iface], iface, { nothrow: true }))
  if (record.pid) steps.push({ kind: 'stop-wireguard-go', iface, pid: record.pid })
  return steps
}

const routeKey = (table: string, dst: string) => `${table} ${dst === 'default' ? dst : dst.replace(/\/32$/, '')}`

export function planKernel(input: PlanInput): KernelPlan {
  const { system: sys, now } = input
  const outcomes: KernelOutcome[] = []
  const records: Record<string, ForwarderTunnelRecord> = {}
  const linkSteps_: Step[] = []
  const gone = new Set<string>()

  // Records config no longer wants (or wants made another way) go first: their iface may be made again below.
  for (const [iface, r] of Object.entries(input.records)) {
    const t = input.tunnels.find((x) => x.iface === iface)
    if (t && t.side === r.side && t.transport === r.transport) continue
    linkSteps_.push(...removeSteps(iface, r, sys.links[iface]))
    gone.add(iface)
    outcomes.push({ side: r.side, name: r.names.join(','), iface, transport: r.transport, action: 'removed', remote: r.remote })
  }

  const vps: VpsPart[] = []
  const home: HomePart[] = []
  /** Routes and rules wanted; those of a tunnel that failed are kept as they are, never added. */
  const wantRoutes = new Map<string, { dst: string; dev: string; table: string }>()
  const frozen = new Set<string>()
  const frozenTables = new Set<string>()
  const tunnelSteps = new Map<string, Step[]>()
  const usedTables: Record<string, ForwarderTunnelRecord> = { ...input.records }
  const sysctls: Record<string, string> = {}
  const sysctlIfaces: Record<string, string> = {}

  for (const t of input.tunnels) {
    const prior = gone.has(t.iface) ? undefined : input.records[t.iface]
    const link = gone.has(t.iface) ? undefined : sys.links[t.iface]
    const resolution = input.resolved[t.iface]
    const remote = resolution && 'address' in resolution ? resolution.address : prior?.remote
    const resolveError = resolution && 'error' in resolution ? resolution.error : undefined
    const what = t.side === 'forward' ? 'target' : 'remote'
    const record: ForwarderTunnelRecord = {
      side: t.side,
      transport: t.transport,
      names: t.names,
      remote,
      changedAt: prior && prior.remote === remote && prior.resolveError === resolveError ? prior.changedAt : now,
      resolveError,
      routes: [],
      table: prior?.table,
      pid: prior?.pid,
      since: prior?.since ?? now,
    }
    const fail = (detail: string) => {
      outcomes.push({ side: t.side, name: t.names.join(','), iface: t.iface, transport: t.transport, action: 'failed', remote, detail })
      if (prior) {
        records[t.iface] = { ...prior, names: prior.names, resolveError: record.resolveError, changedAt: record.changedAt }
        frozen.add(t.iface)
        if (prior.table) frozenTables.add(String(prior.table))
      }
    }

    // Per forward: where it listens and whether it may.
    const dnat: DnatPart[] = []
    for (const f of t.forwards) {
      const listen = isIpv4(f.listen) ? f.listen : sys.wanIpv4
      const problem = forwardProblem(f, listen, input.wanIf, sys.listeners, prior?.names.includes(f.name) ?? false)
      if (problem) outcomes.push({ side: 'forward', name: f.name, iface: t.iface, transport: t.transport, action: 'failed', detail: problem })
      else dnat.push({ forward: f, listen: listen! })
    }
    // A failed tunnel made before keeps its forwards' DNAT (config's, for those it carried).
    const keptDnat = () => (prior ? dnat.filter((d) => prior.names.includes(d.forward.name)) : [])
    const addParts = (parts: DnatPart[], table: number | undefined) => {
      if (t.side === 'forward' && parts.length > 0) vps.push({ iface: t.iface, mtu: t.mtu, dnat: parts })
      if (t.side === 'peer' && table !== undefined) home.push({ iface: t.iface, mtu: t.mtu, mark: peerMark(table), servers: t.peer!.servers, ports: t.peer!.ports })
    }

    if (!remote) {
      fail(`${what} ${t.far} does not resolve${resolveError ? ` (${resolveError})` : ''}: nothing made`)
      addParts(keptDnat(), prior?.table)
      continue
    }
    if (t.side === 'forward' && dnat.length === 0) {
      fail('no forward on it can be made')
      continue
    }
    const table = t.side === 'peer' ? (prior?.table ?? freePeerTable(usedTables)) : undefined
    if (t.side === 'peer' && table === undefined) {
      fail(`more than ${LAST_PEER_TABLE - FIRST_PEER_TABLE + 1} forwarder peers`)
      continue
    }
    try {
      const local = t.transport === 'ipip6' ? pickLocal(t.local, sys.wanIpv6, link?.local) : undefined
      const made = linkSteps(t, link, local, remote, input, prior)
      tunnelSteps.set(t.iface, made.steps)
      record.table = table
      if (t.side === 'forward') {
        record.names = dnat.map((d) => d.forward.name)
        record.routes = [...new Set(dnat.map((d) => `${d.forward.targetAddress}/32`))].sort()
        for (const r of record.routes) wantRoutes.set(routeKey('main', r), { dst: r, dev: t.iface, table: 'main' })
      } else {
        usedTables[t.iface] = record
        wantRoutes.set(routeKey(String(table), 'default'), { dst: 'default', dev: t.iface, table: String(table) })
        sysctls[confKey(t.iface, 'src_valid_mark')] = '1'
        sysctlIfaces[confKey(t.iface, 'src_valid_mark')] = t.iface
      }
      if (made.created) record.pid = undefined
      records[t.iface] = record
      addParts(dnat, table)
      const action: KernelAction = made.created ? 'created' : !prior ? 'adopted' : 'unchanged'
      outcomes.push({ side: t.side, name: t.names.join(','), iface: t.iface, transport: t.transport, action, remote, detail: resolveError ? `${what} ${t.far} did not resolve (${resolveError}): kept ${remote}` : undefined })
    } catch (err) {
      if (!(err instanceof Refused)) throw err
      fail(err.message)
      addParts(keptDnat(), prior?.table)
    }
  }

  const steps: Step[] = [...linkSteps_]
  for (const s of tunnelSteps.values()) steps.push(...s)

  // Routes (ours: proto FWD_ROUTE_PROTO), without those of links deleted above (they went with the link).
  const haveRoutes = sys.routes.filter((r) => !r.dev || !gone.has(r.dev))
  const routeSteps: Step[] = []
  for (const [key, w] of wantRoutes) {
    const have = haveRoutes.find((r) => routeKey(r.table ?? 'main', r.dst) === key)
    if (have?.dev !== w.dev) routeSteps.push(run('ip', ['-4', 'route', 'replace', w.dst, 'dev', w.dev, ...(w.table === 'main' ? [] : ['table', w.table]), 'proto', FWD_ROUTE_PROTO], w.dev))
  }
  for (const r of haveRoutes) {
    const table = r.table ?? 'main'
    if (wantRoutes.has(routeKey(table, r.dst)) || (r.dev && frozen.has(r.dev)) || frozenTables.has(table)) continue
    routeSteps.push(run('ip', ['-4', 'route', 'del', r.dst, ...(r.dev ? ['dev', r.dev] : []), ...(table === 'main' ? [] : ['table', table]), 'proto', FWD_ROUTE_PROTO], r.dev, { nothrow: true }))
  }

  // Rules: for each peer's mark, main without its default route, then the peer's table.
  const wantRules: { pref: number; mark: string; table: string; iface: string }[] = []
  for (const [iface, r] of Object.entries(records)) {
    if (r.side !== 'peer' || r.table === undefined || frozen.has(iface)) continue
    const mark = hex(peerMark(r.table)).replace(/^0x0+/, '0x')
    wantRules.push({ pref: PREF_PEER_MAIN, mark, table: 'main', iface }, { pref: PREF_PEER, mark, table: String(r.table), iface })
  }
  const ruleSteps: Step[] = []
  const ours = sys.rules.filter((r) => r.priority === PREF_PEER_MAIN || r.priority === PREF_PEER)
  const maskText = hex(MARK_MASK).replace(/^0x0+/, '0x')
  const sameRule = (r: RuleJson, w: { pref: number; mark: string; table: string }) => r.priority === w.pref && r.fwmark === w.mark && r.fwmask === maskText && r.table === w.table
  for (const w of wantRules) {
    if (ours.some((r) => sameRule(r, w))) continue
    ruleSteps.push(run('ip', ['-4', 'rule', 'add', 'fwmark', `${w.mark}/${maskText}`, 'lookup', w.table, ...(w.table === 'main' ? ['suppress_prefixlength', '0'] : []), 'pref', String(w.pref)], w.iface))
  }
  const frozenMarks = new Set([...frozenTables].map((t) => hex(peerMark(Number(t))).replace(/^0x0+/, '0x')))
  for (const r of ours) {
    if (wantRules.some((w) => sameRule(r, w)) || (r.fwmark && frozenMarks.has(r.fwmark))) continue
    const selector = r.fwmark ? ['fwmark', r.fwmask ? `${r.fwmark}/${r.fwmask}` : r.fwmark] : []
    ruleSteps.push(run('ip', ['-4', 'rule', 'del', ...selector, 'lookup', r.table ?? 'main', 'pref', String(r.priority)], undefined, { nothrow: true }))
  }

  // One nft table for both ends.
  const body = nftBody(vps, home)
  let nft: KernelPlan['nft'] = 'unchanged'
  const nftSteps: Step[] = []
  if (!body) {
    if (sys.nftComment !== undefined) {
      nftSteps.push(run('nft', ['delete', 'table', 'inet', FWD_NFT_TABLE], undefined, { nothrow: true }))
      nft = 'removed'
    }
  } else if (sys.nftComment !== nftStamp(body)) {
    nftSteps.push(run('nft', ['-f', '-'], undefined, { input: sys.nftComment === undefined ? nftDefinition(body) : replaceTableInput(FWD_NFT_TABLE, nftDefinition(body)) }))
    nft = 'written'
  }

  // Forwarding for IPv4 (only: the VPS's IPv6, often SLAAC, keeps accepting router advertisements).
  if (Object.keys(records).length > 0) sysctls['net.ipv4.ip_forward'] = '1'
  // A tunnel's own setting is its step (its link may fail to be made, and the setting with it); the rest, one.
  const changedSysctls = Object.entries(sysctls).filter(([k, v]) => sys.sysctls[k] !== v)
  const sysctlSteps: Step[] = []
  const shared: string[] = []
  for (const [k, v] of changedSysctls) {
    const iface = sysctlIfaces[k]
    if (iface) sysctlSteps.push(run('sysctl', ['-q', '-w', `${k}=${v}`], iface))
    else shared.push(`${k}=${v}`)
  }
  if (shared.length > 0) sysctlSteps.push(run('sysctl', ['-q', '-w', ...shared]))

  steps.push(...routeSteps, ...ruleSteps, ...nftSteps, ...sysctlSteps)

  // A tunnel that was right but whose routes, rules or settings were not is changed.
  for (const o of outcomes) {
    if (o.action !== 'unchanged' && o.action !== 'adopted') continue
    const mine = steps.filter((s) => s.iface === o.iface || (s.kind === 'run' && s.cmd === 'sysctl' && s.args.some((a) => a.includes(`.${o.iface}.`) || a.includes(`/${o.iface}/`))))
    if (mine.length > 0 && o.action === 'unchanged') o.action = 'changed'
  }
  return { steps, records, outcomes, nft }
}
