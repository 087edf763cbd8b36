// One device's identity on the WAN: its macvlan (its own MAC), its DHCP clients, its addresses and the
// routes that make its traffic leave from them. acquire-leases and prune-stale read as plans over this.
import { existsSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Config } from '../core/config.ts'
import type { Sh } from '../core/exec.ts'
import { formatIpv4, parseCidr4 } from '../addr/ipv4.ts'
import { inPrefix6 } from '../addr/ipv6.ts'
import type { Logger } from '../core/log.ts'
import { macvlanName } from '../addr/mac.ts'
import { clientPid, readLease4, readLease6, startDhcp4, startDhcp6, stopClients, dhcp6Kind, type Lease4, type Lease6 } from '../net/dhcp.ts'
import { readMap } from '../net/nft.ts'
import { confKey, readSysctl, setSysctls } from '../net/sysctl.ts'
import { addMacvlan, deleteLink, getLink, setLinkUp, type LinkInfo } from '../net/ip.ts'
import { applyDeviceRoutes, listRules, PREF_DEVICE, removeDeviceRoutes } from '../net/route.ts'
import type { Offer } from '../net/upstream.ts'
import type { Device } from '../core/schema.ts'

export interface IdentityEnv { sh: Sh; config: Config; log: Logger }

/**
 * The lock that acquire-leases and prune-stale share (their `exclusive`): both make and unmake identities, and
 * neither may act on a device the other is half-way through (a prune stopping a client that a concurrent
 * acquire then finds dead and acquires again, for a device that has left).
 */
export const IDENTITY_LOCK = 'identities'

export interface Identity {
  ifname: string
  wanIpv4?: string
  wanIpv4Expires?: string
  wanIpv6: string[]
  /** Set when nothing was acquired: the device is failed with this reason. */
  failure?: string
  /** Partial trouble on an otherwise working identity. */
  note?: string
}

const POLL_MS = 200

/** Per-interface settings of a device macvlan: answer ARP only for its own addresses, accept RAs although
 * the router forwards, SLAAC from the device's MAC (EUI-64), and no default route in the main table. */
function macvlanSysctls(ifname: string): Record<string, string> {
  return {
    [confKey(ifname, 'arp_ignore')]: '1',
    [confKey(ifname, 'arp_announce')]: '2',
    [confKey(ifname, 'rp_filter')]: '0',
    [confKey(ifname, 'accept_ra', 6)]: '2',
    [confKey(ifname, 'accept_ra_defrtr', 6)]: '0',
    [confKey(ifname, 'autoconf', 6)]: '1',
    [confKey(ifname, 'addr_gen_mode', 6)]: '0',
    [confKey(ifname, 'accept_dad', 6)]: '0',
  }
}

/** The WAN port must not answer ARP for addresses that belong to device macvlans. */
export function wanSysctls(wanIf: string): Record<string, string> {
  return { [confKey(wanIf, 'arp_ignore')]: '1', [confKey(wanIf, 'arp_announce')]: '2' }
}

/**
 * Devices' IPv4 is routed by the router: a plain Debian host starts with forwarding off (OpenWrt has it on),
 * and then every identity would be up and nothing would pass. Turned on here; the installer persists it.
 */
export async function ensureForwarding(env: IdentityEnv): Promise<void> {
  if ((await readSysctl(env.sh, 'net.ipv4.ip_forward')) === '1') return
  await setSysctls(env.sh, { 'net.ipv4.ip_forward': '1' })
  env.log.info('IPv4 forwarding turned on (net.ipv4.ip_forward=1): devices\' traffic is routed by this host')
}

/**
 * Why a device whose leases are in still has no working path, or undefined when it has one: forwarding on,
 * its macvlan up with its WAN address, its policy rule and its 1:1 NAT in place. Active means reachable.
 */
export async function pathProblem(env: IdentityEnv, device: Device, identity: Identity, table: number): Promise<string | undefined> {
  const { sh } = env
  const link = await getLink(sh, identity.ifname)
  if (!link?.up) return `its macvlan ${identity.ifname} is not up`
  const wanAddress = identity.wanIpv4 ?? identity.wanIpv6[0]
  if (wanAddress && !link.addresses.some((a) => a.address === wanAddress)) return `its macvlan ${identity.ifname} lacks its address ${wanAddress}`
  if (!identity.wanIpv4 || !device.lanIpv4) return undefined
  const forwarding = await readSysctl(sh, 'net.ipv4.ip_forward')
  if (forwarding !== '1') return `IPv4 forwarding is off on this host (net.ipv4.ip_forward=${forwarding ?? '?'}): its traffic cannot pass`
  if (!(await listRules(sh, 4)).some((r) => r.priority === PREF_DEVICE && r.src === device.lanIpv4 && r.table === String(table))) return `its policy rule (from ${device.lanIpv4} lookup ${table}) is missing`
  if ((await readMap(sh, 'dev_snat4')).get(device.lanIpv4) !== identity.wanIpv4) return `its source NAT (${device.lanIpv4} -> ${identity.wanIpv4}) is missing`
  return undefined
}

export async function ensureMacvlan(env: IdentityEnv, mac: string): Promise<string> {
  const ifname = macvlanName(mac)
  if (!(await getLink(env.sh, ifname))) {
    await addMacvlan(env.sh, { parent: env.config.wanIf, name: ifname, mac })
    await setSysctls(env.sh, macvlanSysctls(ifname))
  }
  await setLinkUp(env.sh, ifname)
  return ifname
}

function clientEnv(config: Config): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH, DUALGATE_RUN_DIR: config.runDir, DUALGATE_DATA_DIR: config.dataDir }
}

async function waitFor<T>(deadline: number, probe: () => Promise<T | undefined>, pollMs = POLL_MS): Promise<T | undefined> {
  while (Date.now() < deadline) {
    const value = await probe()
    if (value !== undefined) return value
    await sleep(pollMs)
  }
  return undefined
}

async function dhcp4(env: IdentityEnv, ifname: string, hostname: string | undefined): Promise<Lease4 | string> {
  const { config } = env
  const pid = await startDhcp4(env.sh, { ifname, runDir: config.runDir, hostname, retries: config.dhcpRetries, timeout: config.dhcpTimeout, env: clientEnv(config) })
  if (pid === undefined) return 'dry run'
  const deadline = Date.now() + ((config.dhcpRetries + 1) * config.dhcpTimeout + 5) * 1000
  const lease = await waitFor(deadline, async () => {
    const record = await readLease4(config.runDir, ifname)
    if (record !== undefined) return record
    return existsSync(`/proc/${pid}`) ? undefined : 'exited'
  })
  if (typeof lease === 'object') return lease
  if (lease !== undefined && lease !== 'exited') return `unusable DHCPv4 lease record: ${lease}`
  return 'no DHCPv4 offer: MAC not registered upstream?'
}

/** How long DHCPv6 may still take once DHCPv4 has made the device reachable. */
const DHCP6_GRACE_MS = 3000

/**
 * `wait.until` is the deadline, read at every poll: once DHCPv4 succeeds it is brought forward, so a slow
 * DHCPv6 server does not hold up a device that already has its identity. The client keeps soliciting either
 * way; a late reply is picked up by refreshIdentity (the client's event runs acquire-leases).
 */
async function dhcp6(env: IdentityEnv, ifname: string, wait: { until: number }): Promise<Lease6 | string> {
  const { config } = env
  const pid = await startDhcp6(env.sh, { ifname, runDir: config.runDir, retries: config.dhcpRetries, timeout: config.dhcpTimeout, env: clientEnv(config) })
  if (pid === undefined) return 'dry run'
  let lease: Lease6 | string | undefined
  while (Date.now() < wait.until) {
    lease = await readLease6(config.runDir, ifname)
    if (lease !== undefined) break
    await sleep(POLL_MS)
  }
  if (typeof lease === 'object') return lease
  if (lease !== undefined) return `unusable DHCPv6 lease record: ${lease}`
  return 'no DHCPv6 reply yet: MAC not registered upstream?'
}

/** The link's SLAAC addresses inside the advertised prefixes. */
function slaacOf(link: LinkInfo | undefined, prefixes: string[]): string[] {
  return (link?.addresses ?? []).filter((a) => a.family === 6 && a.scope === 'global' && a.prefixlen === 64 && prefixes.some((p) => inPrefix6(a.address, p))).map((a) => a.address)
}

/** Starts the device's clients on its macvlan and waits for what the upstream offers. */
export async function acquireIdentity(env: IdentityEnv, device: Device, offer: Offer, table: number): Promise<Identity> {
  const ifname = await ensureMacvlan(env, device.mac)
  const wait6 = { until: Date.now() + ((env.config.dhcpRetries + 1) * env.config.dhcpTimeout + 5) * 1000 }
  const [v4, v6dhcp] = await Promise.all([
    offer.dhcpv4
      ? dhcp4(env, ifname, device.hostname).then((r) => {
        if (typeof r === 'object') wait6.until = Math.min(wait6.until, Date.now() + DHCP6_GRACE_MS)
        return r
      })
      : undefined,
    offer.dhcpv6 ? dhcp6(env, ifname, wait6) : undefined,
  ])
  // Routers answer solicitations with RAs at most every few seconds, so SLAAC can lag. Where DHCPv4 already
  // made the device reachable, take what is there now; refreshIdentity adds a later address.
  const slaacNow = async () => {
    const found = slaacOf(await getLink(env.sh, ifname), offer.prefixes)
    return found.length > 0 ? found : undefined
  }
  const slaac = !offer.slaac || env.sh.dryRun ? undefined : typeof v4 === 'object' ? await slaacNow() : await waitFor(Date.now() + 10_000, slaacNow, 500)
  const failures: string[] = []
  if (typeof v4 === 'string' && v4 !== 'dry run') failures.push(v4)
  if (typeof v6dhcp === 'string' && v6dhcp !== 'dry run') failures.push(v6dhcp)
  if (offer.slaac && !offer.dhcpv6 && !slaac && !env.sh.dryRun) failures.push('no SLAAC address from the upstream RA')
  const identity: Identity = { ifname, wanIpv6: [] }
  if (typeof v4 === 'object') {
    identity.wanIpv4 = v4.ip
    identity.wanIpv4Expires = new Date((v4.at + v4.lease) * 1000).toISOString()
  }
  // A SLAAC address alone proves nothing where DHCPv6 is on offer: the kernel makes one from any RA, even
  // for a MAC the upstream firewall drops.
  const v6ok = typeof v6dhcp === 'object' || (!offer.dhcpv6 && slaac)
  if (v6ok) identity.wanIpv6 = [...(typeof v6dhcp === 'object' ? [v6dhcp.ip6] : []), ...(slaac ?? [])]
  if (!identity.wanIpv4 && identity.wanIpv6.length === 0 && !env.sh.dryRun) {
    identity.failure = failures.join('; ') || 'the upstream offers neither DHCPv4 nor IPv6'
    await releaseIdentity(env, { ...device, ifname, routeTable: table })
    return identity
  }
  if (failures.length > 0) identity.note = failures.join('; ')
  await configureIdentity(env, device, ifname, offer, table, typeof v4 === 'object' ? v4 : undefined, typeof v6dhcp === 'object' ? v6dhcp : undefined, identity.wanIpv6)
  return identity
}

async function configureIdentity(env: IdentityEnv, device: Device, ifname: string, offer: Offer, table: number, v4: Lease4 | undefined, v6: Lease6 | undefined, wanIpv6: string[]): Promise<void> {
  if (!device.lanIpv4) return
  const subnet4 = v4 ? `${formatIpv4(parseCidr4(`${v4.ip}/${v4.prefix}`).network)}/${v4.prefix}` : undefined
  // The DHCPv6 address is kept until we remove it: a client that dies is noticed by refreshIdentity.
  await applyDeviceRoutes(env.sh, {
    table,
    ifname,
    lanIf: env.config.lanIf,
    lanIpv4: device.lanIpv4,
    lanSubnet: env.config.lanAddr,
    wanIpv4: v4 && subnet4 ? { address: v4.ip, subnet: subnet4, gateway: v4.router } : undefined,
    wanIpv6: wanIpv6.length > 0 ? { addresses: wanIpv6, dhcpAddress: v6?.ip6, prefixes: offer.prefixes, gateway: offer.gateway6 } : undefined,
  })
}

/**
 * An active device as it is now: clients alive, lease records current. Returns the identity to store, or a
 * reason to acquire again (client died, lease lost, macvlan gone).
 */
export async function refreshIdentity(env: IdentityEnv, device: Device, offer: Offer, links: Map<string, LinkInfo>): Promise<Identity | string> {
  const { config } = env
  const ifname = macvlanName(device.mac)
  if (device.routeTable === undefined) return 'no routing table recorded'
  const link = links.get(ifname)
  if (!link) return 'macvlan missing'
  let v4: Lease4 | undefined
  if (device.wanIpv4) {
    if (!clientPid(config.runDir, ifname, 'udhcpc')) return 'DHCPv4 client not running'
    const lease = await readLease4(config.runDir, ifname)
    if (typeof lease !== 'object') return `DHCPv4 lease lost${typeof lease === 'string' ? ` (${lease})` : ''}`
    v4 = lease
  }
  let v6: Lease6 | undefined
  if (offer.dhcpv6) {
    // Restarted in place: the device's IPv4 and its connections are not disturbed for an IPv6 client.
    if (!clientPid(config.runDir, ifname, dhcp6Kind())) {
      env.log.warn(`${device.mac}: DHCPv6 client not running, starting it again`, { mac: device.mac })
      await startDhcp6(env.sh, { ifname, runDir: config.runDir, retries: config.dhcpRetries, timeout: config.dhcpTimeout, env: clientEnv(config) })
    }
    const lease = await readLease6(config.runDir, ifname)
    if (typeof lease === 'object') v6 = lease
  }
  const slaac = offer.slaac ? slaacOf(link, offer.prefixes) : []
  const wanIpv6 = [...(v6 ? [v6.ip6] : []), ...slaac]
  const unchanged = v4?.ip === device.wanIpv4 && wanIpv6.join() === device.wanIpv6.join()
  if (!unchanged) await configureIdentity(env, device, ifname, offer, device.routeTable, v4, v6, wanIpv6)
  return {
    ifname,
    wanIpv4: v4?.ip,
    wanIpv4Expires: v4 ? new Date((v4.at + v4.lease) * 1000).toISOString() : undefined,
    wanIpv6: wanIpv6.length > 0 ? wanIpv6 : device.wanIpv6,
    note: offer.dhcpv6 && !v6 ? 'no DHCPv6 lease yet: the client keeps asking' : undefined,
  }
}

/** Releases the leases and removes everything of the device: clients, routes and rules, the macvlan. */
export async function releaseIdentity(env: IdentityEnv, device: Device): Promise<void> {
  const ifname = device.ifname ?? macvlanName(device.mac)
  await stopClients(env.sh, env.config.runDir, ifname, env.config.dataDir)
  if (device.routeTable !== undefined) await removeDeviceRoutes(env.sh, device.routeTable)
  await deleteLink(env.sh, ifname)
}
