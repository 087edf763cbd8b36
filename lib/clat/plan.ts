// 464XLAT's customer-side translator (CLAT, RFC 6877) for an IPv6-only upstream, as pure rules: each device's
// IPv4 traffic is translated to IPv6 with a source address of the device's own (its CLAT address, in the
// upstream /64, answered for by the device's macvlan through proxy NDP) and a destination under the
// upstream's NAT64 prefix (the PLAT). One tayga translates for every device with a `map` line each.
import { createHash } from 'node:crypto'
import { hasRole, type Config } from '../core/config.ts'
import { isIpv4 } from '../addr/ipv4.ts'
import { formatIpv6, parseIpv6 } from '../addr/ipv6.ts'
import { macvlanName, normalizeMac } from '../addr/mac.ts'
import { WELL_KNOWN_PREFIX } from '../addr/nat64.ts'
import type { Data } from '../core/schema.ts'

export const CLAT_TUN = 'dgclat'
/** The instance name of the CLAT's tayga in the run directory (lib/net/tayga.ts). */
export const CLAT_INSTANCE = 'clat'
/** tayga's own IPv4 address on the CLAT side: RFC 7335 sets 192.0.0.0/29 aside for exactly this. */
export const CLAT_IPV4 = '192.0.0.1'
/** IPv4 over the CLAT costs 20 bytes of header: forwarded packets are held to this, so a 1500-byte WAN fits. */
export const CLAT_MTU = 1480

/**
 * The CLAT address of `mac` in an upstream /64: a stable interface identifier hashed from the MAC, distinct
 * from its EUI-64 SLAAC address (which the macvlan holds and the kernel would answer locally).
 */
export function clatAddress(prefix64: string, mac: string): string {
  const [net, len] = prefix64.split('/')
  const bytes = parseIpv6(net)
  const m = normalizeMac(mac)
  if (!bytes || len !== '64' || !m) throw new Error(`no CLAT address for ${mac} in ${prefix64}`)
  const iid = createHash('sha256').update(`dualgate clat ${m}`).digest().subarray(0, 8)
  // The universal/local bit cleared (RFC 7136 leaves IIDs opaque, but this keeps it off EUI-64's space).
  iid[0] &= 0xfd
  bytes.set(iid, 8)
  return formatIpv6(bytes)
}

export interface ClatMap { lanIpv4: string; clatIpv6: string }

/** tayga's config for the CLAT: its own addresses, the PLAT prefix, one static map per device. */
export function clatConfig(s: { prefix: string; ipv6Addr: string; dataDir: string; maps: ClatMap[] }): string {
  return [
    '# Written by dualgate (lib/clat.ts) when its runner starts the CLAT; edits are overwritten.',
    `tun-device ${CLAT_TUN}`,
    `ipv4-addr ${CLAT_IPV4}`,
    `ipv6-addr ${s.ipv6Addr}`,
    `prefix ${s.prefix}`,
    `data-dir ${s.dataDir}`,
    ...[...s.maps].sort((a, b) => a.lanIpv4.localeCompare(b.lanIpv4)).map((m) => `map ${m.lanIpv4} ${m.clatIpv6}`),
    '',
  ].join('\n')
}

export interface ClatDevice extends ClatMap { mac: string; table: number; ifname: string }

export interface ClatPlan {
  /** The NAT64 prefix translated toward: clatPrefix, or for "auto" the upstream's (RFC 7050) or the WKP. */
  prefix: string
  devices: ClatDevice[]
  /** tayga's own IPv6 address (the router's CLAT address, proxied on the WAN port). */
  routerAddress?: string
  /** Why nobody is translated. */
  idle?: string
  /** Set with `idle` when the router lacks what the CLAT needs (tayga, the TUN driver): a fault, not a state. */
  missing?: boolean
}

/** What the CLAT should translate now: a pure function of the store, the config and what the router has. */
export function clatPlan(data: Data, config: Config, has: { wanMac?: string; tayga: boolean; tun: boolean }): ClatPlan {
  const prefix = config.clatPrefix === 'auto' ? (data.upstream.pref64 ?? WELL_KNOWN_PREFIX) : config.clatPrefix
  const idle = (why: string, missing?: boolean): ClatPlan => ({ prefix, devices: [], idle: why, ...(missing ? { missing } : {}) })
  if (!config.clat) return idle('clat is off')
  if (!hasRole(config, 'gateway')) return idle('this host is not a gateway (role)')
  if (data.upstream.dhcpv4 !== false || !data.upstream.ra) return idle('the upstream is not IPv6-only')
  const prefix64 = data.upstream.prefixes.find((p) => p.endsWith('/64'))
  if (!prefix64) return idle('the upstream advertises no /64 prefix')
  if (!has.tayga) return idle('tayga is not installed (package tayga)', true)
  if (!has.tun) return idle('/dev/net/tun is missing (the TUN driver: kmod-tun on OpenWrt)', true)
  if (!has.wanMac) return idle(`${config.wanIf} has no MAC`)
  const devices = Object.values(data.devices)
    .filter((d) => d.status === 'active' && d.lanIpv4 && isIpv4(d.lanIpv4) && d.routeTable !== undefined && d.wanIpv6.length > 0)
    .map((d) => ({ mac: d.mac, lanIpv4: d.lanIpv4!, clatIpv6: clatAddress(prefix64, d.mac), table: d.routeTable!, ifname: d.ifname ?? macvlanName(d.mac) }))
  return { prefix, devices, routerAddress: clatAddress(prefix64, has.wanMac), idle: devices.length === 0 ? 'no active device' : undefined }
}
