// The project's own nftables table. It is declared whole here; what changes at run time are the elements
// of its maps and sets, reconciled by difference, so a new device or forward never rebuilds the rules and
// teardown is exact. The table survives firewall4 reloads (fw4 only replaces `inet fw4`).
import type { Sh } from '../exec.ts'

export const TABLE = 'dualgate'
const VERSION = 1

/** The table's comment names the version of its rules and the settings baked into them. */
function stamp(o: { dnatPorts: string }): string {
  return `dualgate v${VERSION} dnat=${o.dnatPorts}`
}

/** Device maps: LAN IPv4 -> WAN IPv4 (source NAT out of the device's macvlan) and back (destination NAT). */
export function tableDefinition(o: { dnatPorts: string }): string {
  const ports = o.dnatPorts === 'all' ? '' : `meta l4proto { tcp, udp } th dport { ${o.dnatPorts} } `
  return `table inet ${TABLE} {
  comment "${stamp(o)}"
  map dev_snat4 { type ipv4_addr : ipv4_addr; }
  map dev_dnat4 { type ipv4_addr : ipv4_addr; }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    iifname "dg*" ${ports}dnat ip to ip daddr map @dev_dnat4
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "dg*" snat ip to ip saddr map @dev_snat4
  }
}
`
}

interface NftTableJson { nftables: { table?: { name: string; comment?: string } }[] }

/** Creates the table when missing or from another version (elements are re-synced by the caller). */
export async function ensureTable(sh: Sh, o: { dnatPorts: string }): Promise<'present' | 'created'> {
  const { stdout, code } = await sh.query('nft', ['-j', 'list', 'table', 'inet', TABLE], { nothrow: true })
  const definition = tableDefinition(o)
  if (code === 0) {
    const table = (JSON.parse(stdout) as NftTableJson).nftables.find((x) => x.table)?.table
    if (table?.comment === stamp(o)) return 'present'
  }
  await sh.apply('nft', ['-f', '-'], { input: `table inet ${TABLE}\ndelete table inet ${TABLE}\n${definition}` })
  return 'created'
}

export async function deleteTable(sh: Sh): Promise<void> {
  await sh.apply('nft', ['delete', 'table', 'inet', TABLE], { nothrow: true })
}

interface NftMapJson { nftables: { map?: { elem?: [unknown, unknown][] } }[] }

export async function readMap(sh: Sh, name: string): Promise<Map<string, string>> {
  const { stdout, code } = await sh.query('nft', ['-j', 'list', 'map', 'inet', TABLE, name], { nothrow: true })
  if (code !== 0) return new Map()
  const map = (JSON.parse(stdout) as NftMapJson).nftables.find((x) => x.map)?.map
  return new Map((map?.elem ?? []).map(([k, v]) => [String(k), String(v)]))
}

/** Makes the map hold exactly `want`, in one nft transaction. Keys and values must be validated addresses. */
export async function syncMap(sh: Sh, name: string, want: Map<string, string>): Promise<{ added: number; removed: number }> {
  const have = await readMap(sh, name)
  const remove = [...have].filter(([k, v]) => want.get(k) !== v).map(([k]) => k)
  const add = [...want].filter(([k, v]) => have.get(k) !== v)
  if (remove.length === 0 && add.length === 0) return { added: 0, removed: 0 }
  const lines: string[] = []
  if (remove.length > 0) lines.push(`delete element inet ${TABLE} ${name} { ${remove.join(', ')} }`)
  if (add.length > 0) lines.push(`add element inet ${TABLE} ${name} { ${add.map(([k, v]) => `${k} : ${v}`).join(', ')} }`)
  await sh.apply('nft', ['-f', '-'], { input: `${lines.join('\n')}\n` })
  return { added: add.length, removed: remove.length }
}
