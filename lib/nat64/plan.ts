// NAT64 through tayga: one process for all devices, a TUN device `dgnat64`. Device 198.19.0.x on the LAN is
// reachable from IPv6 at <prefix>::198.19.0.x (RFC 6052); each IPv6 client is mapped to an address of the
// dynamic pool, and our nft table masquerades what leaves tayga toward the LAN to the router's LAN address.
// tayga brings its TUN up only when told. Supervision is in ./supervisor.ts.
import { existsSync, readFileSync } from 'node:fs'
import path from 'node:path'
import type { Config } from '../core/config.ts'
import type { Sh } from '../core/exec.ts'
import { formatIpv4, parseCidr4 } from '../addr/ipv4.ts'
import { canonicalPrefix6 } from '../addr/ipv6.ts'
import { isDeviceMac, normalizeMac } from '../addr/mac.ts'
import { nat64PoolError, nat64PrefixError, overlaps4, ulaPrefix } from '../addr/nat64.ts'
import { ensureMainRule, removeMainRule } from '../net/route.ts'
import { findTayga, stopTayga, taygaSearchPath, taygaVersion } from '../net/tayga.ts'

export const TUN = 'dgnat64'
/** The instance name of NAT64's tayga in the run directory (lib/net/tayga.ts). */
export const INSTANCE = 'tayga'

export type Nat64Config = Pick<Config, 'nat64' | 'nat64Prefix' | 'nat64Pool' | 'lanAddr' | 'wanIf' | 'runDir'>

export interface Nat64Probe {
  /** Directories searched for tayga; by default $PATH, then the usual sbin directories. */
  path: string
  /** The TUN clone device tayga opens. */
  tunDevice: string
  /** Where the WAN MAC is read for nat64Prefix "auto". */
  sysNet: string
}

const defaultProbe = (): Nat64Probe => ({ path: taygaSearchPath(), tunDevice: '/dev/net/tun', sysNet: '/sys/class/net' })

export interface Nat64Status {
  /** config.nat64. */
  enabled: boolean
  /** tayga found, the TUN driver present and the settings usable: the runner can start it. */
  available: boolean
  binary?: string
  version?: string
  /** The /96 in use (nat64Prefix, or the ULA derived from the WAN MAC for "auto"); absent when unusable. */
  prefix?: string
  pool: string
  tun: string
  /** Why it is not available. */
  problems: string[]
}

function readMac(sysNet: string, ifname: string): string | undefined {
  try {
    return normalizeMac(readFileSync(path.join(sysNet, ifname, 'address'), 'utf8'))
  } catch {
    return undefined
  }
}

/**
 * Whether NAT64 can run here and with what: synchronous and without side effects (it reads $PATH, the tayga
 * binary, the TUN device node and, for nat64Prefix "auto", the WAN MAC in sysfs; it runs nothing).
 */
export function nat64Status(config: Nat64Config, probe: Partial<Nat64Probe> = {}): Nat64Status {
  const p = { ...defaultProbe(), ...probe }
  const problems: string[] = []
  const binary = findTayga(p.path)
  if (!binary) problems.push('tayga is not installed (package tayga)')
  if (!existsSync(p.tunDevice)) problems.push(`${p.tunDevice} is missing (the TUN driver: kmod-tun on OpenWrt)`)
  let prefix: string | undefined
  if (config.nat64Prefix === 'auto') {
    const mac = readMac(p.sysNet, config.wanIf)
    if (mac && isDeviceMac(mac)) prefix = ulaPrefix(mac)
    else problems.push(`nat64Prefix auto: ${config.wanIf} has no MAC to derive a prefix from; set nat64Prefix`)
  } else {
    const why = nat64PrefixError(config.nat64Prefix)
    if (why) problems.push(`nat64Prefix ${config.nat64Prefix}: ${why}`)
    else prefix = canonicalPrefix6(config.nat64Prefix)
  }
  const poolWhy = nat64PoolError(config.nat64Pool)
  if (poolWhy) problems.push(`nat64Pool ${config.nat64Pool}: ${poolWhy}`)
  else if (overlaps4(config.nat64Pool, config.lanAddr)) problems.push(`nat64Pool ${config.nat64Pool} overlaps the LAN ${config.lanAddr}`)
  // tayga's config format splits on white space.
  if (/\s/.test(config.runDir)) problems.push(`runDir ${JSON.stringify(config.runDir)} contains white space, which tayga's config file cannot hold`)
  return {
    enabled: config.nat64,
    available: problems.length === 0,
    binary,
    version: binary ? taygaVersion(binary) : undefined,
    prefix,
    pool: config.nat64Pool,
    tun: TUN,
    problems,
  }
}

export interface TaygaSettings { prefix: string; pool: string; dataDir: string }

/** tayga's config file. Its own IPv4 address, the source of the ICMP errors it sends, is the pool's first. */
export function taygaConfig(s: TaygaSettings): string {
  const pool = parseCidr4(s.pool)
  return [
    '# Written by dualgate (lib/nat64/plan.ts) when its runner starts tayga; edits are overwritten.',
    `tun-device ${TUN}`,
    `ipv4-addr ${formatIpv4(pool.network + 1)}`,
    `prefix ${s.prefix}`,
    `dynamic-pool ${s.pool}`,
    `data-dir ${s.dataDir}`,
    '',
  ].join('\n')
}

/** Up, the routes into it, and the rule that keeps replies to the pool out of the per-device tables. */
export async function configureTun(sh: Sh, s: { prefix: string; pool: string }): Promise<void> {
  await sh.apply('ip', ['link', 'set', 'dev', TUN, 'up'])
  await sh.apply('ip', ['-6', 'route', 'replace', s.prefix, 'dev', TUN])
  await sh.apply('ip', ['-4', 'route', 'replace', s.pool, 'dev', TUN])
  await ensureMainRule(sh, s.pool)
}

/** Stops NAT64's tayga and, given the pool, the rule that kept replies to it in the main table. */
export async function stopNat64(sh: Sh, runDir: string, pool: string | undefined): Promise<number | undefined> {
  const pid = await stopTayga(sh, runDir, INSTANCE)
  if (pool) await removeMainRule(sh, pool)
  return pid
}
