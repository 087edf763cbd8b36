// Policy routing that makes a device's traffic follow its identity: one routing table per device, selected
// by the device's LAN address (forwarded traffic) and by its WAN addresses (traffic the router originates
// for it: DHCP renewals, relay replies).
import type { Sh } from '../core/exec.ts'

/** Rule priorities: LAN-internal traffic keeps the main table, then the per-device rules. */
export const PREF_LAN = 1000
export const PREF_DEVICE = 1100
/** The CLAT's rules into a device's table (lib/clat/supervisor.ts): its own priority, so removing them never
 * takes a rule of the device's IPv4 identity with them. */
export const PREF_CLAT = 1101

export interface DeviceRoutes {
  table: number
  ifname: string
  lanIf: string
  lanIpv4: string
  lanSubnet: string
  wanIpv4?: { address: string; subnet: string; gateway?: string }
  /** All the device's WAN IPv6 addresses; `dhcpAddress` is the one we configure (SLAAC ones the kernel does). */
  wanIpv6?: { addresses: string[]; dhcpAddress?: string; prefixes: string[]; gateway?: string }
}

export interface RuleJson { priority: number; src?: string; srclen?: number; dst?: string; iif?: string; oif?: string; table?: string; fwmark?: string; fwmask?: string; suppress_prefixlen?: number }

export async function listRules(sh: Sh, family: 4 | 6): Promise<RuleJson[]> {
  const { stdout } = await sh.query('ip', [`-${family}`, '-j', 'rule', 'show'])
  return JSON.parse(stdout || '[]') as RuleJson[]
}

/** Device tables start here (freeRouteTable in lib/devices/state.ts). */
export const FIRST_DEVICE_TABLE = 1000

/** The routing tables that device rules point at now, IPv4 and IPv6. */
export async function deviceTables(sh: Sh): Promise<Set<number>> {
  const tables = new Set<number>()
  for (const family of [4, 6] as const) {
    for (const rule of await listRules(sh, family)) {
      if (rule.priority === PREF_DEVICE && rule.table && /^\d+$/.test(rule.table) && Number(rule.table) >= FIRST_DEVICE_TABLE) tables.add(Number(rule.table))
    }
  }
  return tables
}

/** The rule that keeps LAN-to-LAN traffic in the main table (shared by all devices). */
export async function ensureLanRule(sh: Sh, lanSubnet: string): Promise<void> {
  await ensureMainRule(sh, lanSubnet)
}

const isMainRule = (r: RuleJson, subnet: string) => {
  const [dst, len] = subnet.split('/')
  return r.priority === PREF_LAN && r.dst === dst && String((r as { dstlen?: number }).dstlen) === len
}

/** An IPv4 rule at PREF_LAN sending traffic to `subnet` to the main table, ahead of the per-device rules. */
export async function ensureMainRule(sh: Sh, subnet: string): Promise<void> {
  if (!(await listRules(sh, 4)).some((r) => isMainRule(r, subnet))) {
    await sh.apply('ip', ['-4', 'rule', 'add', 'to', subnet, 'lookup', 'main', 'pref', String(PREF_LAN)])
  }
}

export async function removeMainRule(sh: Sh, subnet: string): Promise<void> {
  if ((await listRules(sh, 4)).some((r) => isMainRule(r, subnet))) {
    await sh.apply('ip', ['-4', 'rule', 'del', 'to', subnet, 'lookup', 'main', 'pref', String(PREF_LAN)], { nothrow: true })
  }
}

export async function applyDeviceRoutes(sh: Sh, r: DeviceRoutes): Promise<void> {
  const table = String(r.table)
  const has = (rules: RuleJson[], src: string, iif?: string) => rules.some((x) => x.priority === PREF_DEVICE && x.src === src && x.table === table && (iif === undefined || x.iif === iif))
  if (r.wanIpv4) {
    const src = r.wanIpv4.address
    const existing = await listRules(sh, 4)
    const lines = [
      `addr replace ${src}/${r.wanIpv4.subnet.split('/')[1]} dev ${r.ifname} noprefixroute`,
      `route replace ${r.wanIpv4.subnet} dev ${r.ifname} src ${src} table ${table}`,
    ]
    if (r.wanIpv4.gateway) lines.push(`route replace default via ${r.wanIpv4.gateway} dev ${r.ifname} src ${src} table ${table}`)
    if (!has(existing, r.lanIpv4, r.lanIf)) lines.push(`rule add from ${r.lanIpv4} iif ${r.lanIf} lookup ${table} pref ${PREF_DEVICE}`)
    if (!has(existing, src)) lines.push(`rule add from ${src} lookup ${table} pref ${PREF_DEVICE}`)
    await sh.apply('ip', ['-4', '-batch', '-'], { input: `${lines.join('\n')}\n` })
  }
  if (r.wanIpv6 && r.wanIpv6.addresses.length > 0) {
    const existing = await listRules(sh, 6)
    const lines = r.wanIpv6.dhcpAddress ? [`addr replace ${r.wanIpv6.dhcpAddress}/128 dev ${r.ifname} noprefixroute`] : []
    for (const prefix of r.wanIpv6.prefixes) lines.push(`route replace ${prefix} dev ${r.ifname} table ${table}`)
    if (r.wanIpv6.gateway) lines.push(`route replace default via ${r.wanIpv6.gateway} dev ${r.ifname} table ${table}`)
    for (const address of r.wanIpv6.addresses) if (!has(existing, address)) lines.push(`rule add from ${address} lookup ${table} pref ${PREF_DEVICE}`)
    if (lines.length > 0) await sh.apply('ip', ['-6', '-batch', '-'], { input: `${lines.join('\n')}\n` })
  }
}

/** Removes every rule that points at the device's table, and the table's routes. */
export async function removeDeviceRoutes(sh: Sh, table: number): Promise<void> {
  for (const family of [4, 6] as const) {
    for (const rule of await listRules(sh, family)) {
      if (rule.table !== String(table)) continue
      const args = [`-${family}`, 'rule', 'del', 'pref', String(rule.priority), 'lookup', String(table)]
      if (rule.src) args.push('from', rule.srclen !== undefined ? `${rule.src}/${rule.srclen}` : rule.src)
      if (rule.iif) args.push('iif', rule.iif)
      await sh.apply('ip', args, { nothrow: true })
    }
    await sh.apply('ip', [`-${family}`, 'route', 'flush', 'table', String(table)], { nothrow: true })
  }
}

export interface RouteJson { dst: string; dev?: string; table?: string; protocol?: string }

/** The IPv4 routes of every table that carry routing protocol `proto` (how a capability marks its own); main's have no table. */
export async function listProtoRoutes4(sh: Sh, proto: string): Promise<RouteJson[]> {
  const { stdout, code } = await sh.query('ip', ['-4', '-j', 'route', 'show', 'table', 'all', 'proto', proto], { nothrow: true })
  return code === 0 ? (JSON.parse(stdout || '[]') as RouteJson[]) : []
}
