// The project's own nftables table. It is declared whole here; what changes at run time are the elements
// of its maps and sets, reconciled by difference, so a new device or forward never rebuilds the rules and
// teardown is exact. The table survives firewall4 reloads (fw4 only replaces `inet fw4`).
import type { Sh } from '../core/exec.ts'

export const TABLE = 'dualgate'
const VERSION = 2

export interface TableOptions {
  /** "all" or a port list: which ports of a device's WAN IPv4 reach the device. */
  dnatPorts: string
  lanIf: string
  /** The LAN as a network prefix, e.g. 192.168.1.0/24, for hairpin NAT. */
  lanNet: string
  /** tayga's TUN device when NAT64 is on. */
  nat64?: string
  /** The CLAT's TUN device, and the MSS TCP SYNs into it are clamped to. */
  clat: { tun: string; mss: number }
}

/** The table's comment names the version of its rules and the settings baked into them. */
function stamp(o: TableOptions): string {
  return `dualgate v${VERSION} dnat=${o.dnatPorts} lan=${o.lanIf},${o.lanNet}${o.nat64 ? ` nat64=${o.nat64}` : ''}`
}

/**
 * NAT64: what leaves tayga toward the LAN is masqueraded, so a device answers the router as it does for the
 * relay. tayga's IPv4 side reaches the LAN and nothing else: neither the WAN (fw4 would masquerade it, an
 * open NAT64 for the upstream) nor the router itself (its LAN services); IPv4 into tayga comes from the LAN.
 */
function nat64Rules(o: TableOptions): { postrouting: string[]; chains: string } {
  if (!o.nat64) return { postrouting: [], chains: '' }
  const tun = o.nat64
  return {
    postrouting: [`iifname "${tun}" oifname "${o.lanIf}" masquerade`],
    chains: `
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "${tun}" meta nfproto ipv4 oifname != "${o.lanIf}" drop
    oifname "${tun}" meta nfproto ipv4 iifname != "${o.lanIf}" drop
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "${tun}" ct state established,related accept
    iifname "${tun}" drop
  }`,
  }
}

/**
 * dev_snat4/dev_dnat4: a device's LAN IPv4 <-> its WAN IPv4 (1:1 NAT through its own macvlan).
 * fwd4: port forwards on the router's own addresses, `proto . port : device . port`. A LAN client using a
 * forward (hairpin) is masqueraded so the device answers through the router.
 */
export function tableDefinition(o: TableOptions): string {
  const ports = o.dnatPorts === 'all' ? '' : `meta l4proto { tcp, udp } th dport { ${o.dnatPorts} } `
  const nat64 = nat64Rules(o)
  return `table inet ${TABLE} {
  comment "${stamp(o)}"
  map dev_snat4 { type ipv4_addr : ipv4_addr; }
  map dev_dnat4 { type ipv4_addr : ipv4_addr; }
  map fwd4 { type inet_proto . inet_service : ipv4_addr . inet_service; }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    iifname "dg*" ${ports}dnat ip to ip daddr map @dev_dnat4
    iifname != "dg*" fib daddr type local dnat ip to meta l4proto . th dport map @fwd4
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "dg*" snat ip to ip saddr map @dev_snat4
    oifname "${o.lanIf}" ct status dnat ip saddr ${o.lanNet} ip daddr ${o.lanNet} masquerade${nat64.postrouting.map((r) => `\n    ${r}`).join('')}
  }${nat64.chains}
  chain clat_mss {
    type filter hook forward priority mangle; policy accept;
    oifname "${o.clat.tun}" tcp flags syn / syn,rst tcp option maxseg size > ${o.clat.mss} counter tcp option maxseg size set ${o.clat.mss}
  }
}
`
}

/**
 * Creates the table when missing or from another version, with `elements` in the same transaction, so an
 * upgrade never leaves a moment without forwards.
 */
export async function ensureTable(sh: Sh, o: TableOptions, elements: Record<string, Map<string, string>>): Promise<'present' | 'created'> {
  // nft 1.0.6 leaves table comments out of its JSON output: read the text form.
  const { stdout, code } = await sh.query('nft', ['list', 'table', 'inet', TABLE], { nothrow: true })
  if (code === 0 && /^\s*comment "(.*)"$/m.exec(stdout)?.[1] === stamp(o)) return 'present'
  const adds = Object.entries(elements).filter(([, m]) => m.size > 0).map(([name, m]) => addElements(name, m))
  await sh.apply('nft', ['-f', '-'], { input: [`table inet ${TABLE}`, `delete table inet ${TABLE}`, tableDefinition(o), ...adds, ''].join('\n') })
  return 'created'
}

export function addElements(name: string, entries: Iterable<[string, string]>): string {
  return `add element inet ${TABLE} ${name} { ${[...entries].map(([k, v]) => `${k} : ${v}`).join(', ')} }`
}

export async function deleteTable(sh: Sh): Promise<void> {
  await sh.apply('nft', ['delete', 'table', 'inet', TABLE], { nothrow: true })
}

interface NftMapJson { nftables: { map?: { elem?: [unknown, unknown][] } }[] }

export async function readMap(sh: Sh, name: string): Promise<Map<string, string>> {
  const { stdout, code } = await sh.query('nft', ['-j', 'list', 'map', 'inet', TABLE, name], { nothrow: true })
  if (code !== 0) return new Map()
  const map = (JSON.parse(stdout) as NftMapJson).nftables.find((x) => x.map)?.map
  return new Map((map?.elem ?? []).map(([k, v]) => [flat(k), flat(v)]))
}

/** nft -j writes a concatenation as {"concat": [...]}; our keys are written "a . b". */
function flat(value: unknown): string {
  // Only an object's concat: a plain string has String.prototype.concat.
  const concat = typeof value === 'object' && value !== null ? (value as { concat?: unknown }).concat : undefined
  return Array.isArray(concat) ? concat.map(String).join(' . ') : String(value)
}

/** Makes the map hold exactly `want`, in one nft transaction. Keys and values must be validated addresses. */
export async function syncMap(sh: Sh, name: string, want: Map<string, string>): Promise<{ added: number; removed: number }> {
  const have = await readMap(sh, name)
  const remove = [...have].filter(([k, v]) => want.get(k) !== v).map(([k]) => k)
  const add = [...want].filter(([k, v]) => have.get(k) !== v)
  if (remove.length === 0 && add.length === 0) return { added: 0, removed: 0 }
  const lines: string[] = []
  if (remove.length > 0) lines.push(`delete element inet ${TABLE} ${name} { ${remove.join(', ')} }`)
  if (add.length > 0) lines.push(addElements(name, add))
  await sh.apply('nft', ['-f', '-'], { input: `${lines.join('\n')}\n` })
  return { added: add.length, removed: remove.length }
}

interface NftCounterJson { nftables: { counter?: { name?: unknown; packets?: unknown; bytes?: unknown } }[] }

/** The named counters of table `name` (inet): name -> packets and bytes; empty when the table is missing. */
export async function readCounters(sh: Sh, name: string): Promise<Map<string, { packets: number; bytes: number }>> {
  const { stdout, code } = await sh.query('nft', ['-j', 'list', 'counters', 'table', 'inet', name], { nothrow: true })
  if (code !== 0) return new Map()
  const counters = new Map<string, { packets: number; bytes: number }>()
  for (const { counter: c } of (JSON.parse(stdout) as NftCounterJson).nftables) {
    if (c && typeof c.name === 'string') counters.set(c.name, { packets: Number(c.packets) || 0, bytes: Number(c.bytes) || 0 })
  }
  return counters
}

/**
 * A table of a capability's own beside TABLE (the forwarder's): declared whole, its comment a stamp of its
 * definition. Its comment, or undefined when the table does not exist; null when it exists without one.
 */
export async function tableComment(sh: Sh, name: string): Promise<string | null | undefined> {
  const { stdout, code } = await sh.query('nft', ['list', 'table', 'inet', name], { nothrow: true })
  if (code !== 0) return undefined
  return /^\s*comment "(.*)"$/m.exec(stdout)?.[1] ?? null
}

/** `nft -f -` input that replaces table `name` with `definition` in one transaction (made first, so the delete never fails). */
export function replaceTableInput(name: string, definition: string): string {
  return `table inet ${name}\ndelete table inet ${name}\n${definition}`
}
