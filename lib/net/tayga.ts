// NAT64 through tayga: one process for all devices, a TUN device `dgnat64`. Device 198.19.0.x on the LAN is
// reachable from IPv6 at <prefix>::198.19.0.x (RFC 6052); each IPv6 client is mapped to an address of the
// dynamic pool, and our nft table masquerades what leaves tayga toward the LAN to the router's LAN address.
// tayga (0.9.2, Debian 12 and OpenWrt) creates its TUN without `persist` and brings it up only when told:
// when tayga exits, the device and its routes go with it. Supervision is in lib/runner/nat64.ts.
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs'
import { mkdir, rm, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Config } from '../core/config.ts'
import type { Sh } from '../core/exec.ts'
import { formatIpv4, parseCidr4 } from '../addr/ipv4.ts'
import { canonicalPrefix6 } from '../addr/ipv6.ts'
import { isDeviceMac, normalizeMac } from '../addr/mac.ts'
import { nat64PoolError, nat64PrefixError, overlaps4, ulaPrefix } from '../nat64/prefix.ts'
import { ensureMainRule, removeMainRule } from './route.ts'

export const TUN = 'dgnat64'
const SEARCH = ['/usr/sbin', '/sbin', '/usr/local/sbin', '/usr/bin', '/bin']
const STOP_GRACE_MS = 2000

export type Nat64Config = Pick<Config, 'nat64' | 'nat64Prefix' | 'nat64Pool' | 'lanAddr' | 'wanIf' | 'runDir'>

export interface Nat64Probe {
  /** Directories searched for tayga; by default $PATH, then the usual sbin directories. */
  path: string
  /** The TUN clone device tayga opens. */
  tunDevice: string
  /** Where the WAN MAC is read for nat64Prefix "auto". */
  sysNet: string
}

/** Where tayga is looked for: $PATH, then the usual sbin directories (procd and cron give a short PATH). */
export const taygaSearchPath = (): string => [process.env.PATH ?? '', ...SEARCH].join(':')

const defaultProbe = (): Nat64Probe => ({ path: taygaSearchPath(), tunDevice: '/dev/net/tun', sysNet: '/sys/class/net' })

export function findTayga(searchPath: string): string | undefined {
  for (const dir of searchPath.split(':').filter(Boolean)) {
    const file = path.join(dir, 'tayga')
    if (existsSync(file)) return file
  }
  return undefined
}

const versions = new Map<string, string | undefined>()

/**
 * tayga 0.9.2 prints no version: it is read from the binary ("starting TAYGA 0.9.2", first 8 MiB), once per
 * binary file (path, size and mtime), since the runner asks every second.
 */
export function taygaVersion(binary: string): string | undefined {
  let fd: number | undefined
  try {
    fd = openSync(binary, 'r')
    const st = fstatSync(fd)
    const key = `${binary} ${st.size} ${st.mtimeMs}`
    if (versions.has(key)) return versions.get(key)
    const buf = Buffer.alloc(Math.min(st.size, 8 << 20))
    const n = readSync(fd, buf, 0, buf.length, 0)
    const version = /TAYGA v?(\d+\.\d+(?:\.\d+)?)/.exec(buf.subarray(0, n).toString('latin1'))?.[1]
    versions.set(key, version)
    return version
  } catch {
    return undefined
  } finally {
    if (fd !== undefined) closeSync(fd)
  }
}

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

export interface TaygaFiles { conf: string; dataDir: string; pidFile: string; logFile: string }

/** The files of one tayga instance: `tayga` (NAT64) or `clat` (lib/runner/clat.ts). */
export function taygaFiles(runDir: string, name = 'tayga'): TaygaFiles {
  return {
    conf: path.join(runDir, `${name}.conf`),
    // dynamic.map: the pool assignments, kept across restarts so that clients keep their address.
    dataDir: path.join(runDir, name),
    pidFile: path.join(runDir, `${name}.pid`),
    logFile: path.join(runDir, `${name}.log`),
  }
}

export interface TaygaSettings { prefix: string; pool: string; dataDir: string }

/** tayga's config file. Its own IPv4 address, the source of the ICMP errors it sends, is the pool's first. */
export function taygaConfig(s: TaygaSettings): string {
  const pool = parseCidr4(s.pool)
  return [
    '# Written by dualgate (lib/net/tayga.ts) when its runner starts tayga; edits are overwritten.',
    `tun-device ${TUN}`,
    `ipv4-addr ${formatIpv4(pool.network + 1)}`,
    `prefix ${s.prefix}`,
    `dynamic-pool ${s.pool}`,
    `data-dir ${s.dataDir}`,
    '',
  ].join('\n')
}

/** The running tayga of this run directory: the PID file's process, checked to be tayga on our config file. */
export function taygaPid(runDir: string, name = 'tayga'): number | undefined {
  const files = taygaFiles(runDir, name)
  try {
    const pid = Number(readFileSync(files.pidFile, 'utf8').trim())
    if (!Number.isInteger(pid) || pid <= 1) return undefined
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    if (/^[ZX]/.test(stat.slice(stat.lastIndexOf(')') + 2))) return undefined
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
    return path.basename(cmdline[0]) === 'tayga' && cmdline.includes(files.conf) ? pid : undefined
  } catch {
    return undefined
  }
}

/** The config file tayga runs with now, to tell whether a running tayga matches the settings. */
export function runningConfig(runDir: string, name = 'tayga'): string | undefined {
  try {
    return readFileSync(taygaFiles(runDir, name).conf, 'utf8')
  } catch {
    return undefined
  }
}

/**
 * Writes the config and starts tayga detached (it outlives a crashed runner, which adopts it again); -d keeps
 * it in the foreground and sends its messages to the log file instead of syslog.
 */
export async function startTayga(sh: Sh, binary: string, runDir: string, text: string, name = 'tayga'): Promise<number | undefined> {
  const files = taygaFiles(runDir, name)
  if (!sh.dryRun) {
    await mkdir(files.dataDir, { recursive: true })
    await writeFile(files.conf, text)
  }
  const pid = await sh.daemon(binary, ['--config', files.conf, '-d'], { logFile: files.logFile })
  if (pid !== undefined) await writeFile(files.pidFile, `${pid}\n`)
  return pid
}

/** Waits (bounded) for tayga's TUN device; false when tayga exits first or the time runs out. */
export async function waitForTun(pid: number, ms: number, tun = TUN, sysNet = '/sys/class/net'): Promise<boolean> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (existsSync(path.join(sysNet, tun))) return true
    if (!existsSync(`/proc/${pid}`)) return false
    await sleep(50)
  }
  return existsSync(path.join(sysNet, tun))
}

/** Up, the routes into it, and the rule that keeps replies to the pool out of the per-device tables. */
export async function configureTun(sh: Sh, s: { prefix: string; pool: string }): Promise<void> {
  await sh.apply('ip', ['link', 'set', 'dev', TUN, 'up'])
  await sh.apply('ip', ['-6', 'route', 'replace', s.prefix, 'dev', TUN])
  await sh.apply('ip', ['-4', 'route', 'replace', s.pool, 'dev', TUN])
  await ensureMainRule(sh, s.pool)
}

/** Stops this run directory's tayga `name` (its TUN and routes go with it) and, given the pool, removes the pool rule. */
export async function stopTayga(sh: Sh, runDir: string, pool?: string, name = 'tayga'): Promise<number | undefined> {
  const pid = taygaPid(runDir, name)
  if (pid) {
    await sh.apply('kill', ['-TERM', String(pid)], { nothrow: true })
    for (let i = 0; i < STOP_GRACE_MS / 50 && !sh.dryRun && taygaPid(runDir, name) === pid; i++) await sleep(50)
    if (!sh.dryRun && taygaPid(runDir, name) === pid) await sh.apply('kill', ['-KILL', String(pid)], { nothrow: true })
  }
  if (!sh.dryRun) await rm(taygaFiles(runDir, name).pidFile, { force: true })
  if (pool) await removeMainRule(sh, pool)
  return pid
}
