// The per-device DHCP clients: udhcpc for DHCPv4; odhcp6c (OpenWrt) or `dhclient -6 -D LL` (Debian) for
// DHCPv6, both of which use a DUID-LL made from the interface's MAC, so each device is its own client
// upstream. Clients run detached and keep renewing; their event scripts write lease records that are
// parsed here, strictly, because they carry what the upstream server sent.
import { findInPath } from '../core/paths.ts'
import { existsSync, readFileSync } from 'node:fs'
import { readdir, rm } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Sh } from '../core/exec.ts'
import { readOwnedFile, trustedOwners } from '../core/safe-file.ts'
import { isIpv4, maskToPrefix } from '../addr/ipv4.ts'
import { HOOKS_DIR } from '../core/paths.ts'

export interface Lease4 { ip: string; prefix: number; router?: string; lease: number; at: number }
export interface Lease6 { ip6: string; prefixlen: number; valid: number; at: number }

const IPV6 = /^[0-9a-f:]{2,39}$/i

/** key=value lines; a record with an unknown or repeated key is refused (a value smuggling a newline). */
function readRecord(text: string, keys: string[]): Record<string, string> | string {
  const record: Record<string, string> = {}
  for (const line of text.split('\n')) {
    if (line === '') continue
    const eq = line.indexOf('=')
    const key = line.slice(0, eq)
    if (eq < 0 || !keys.includes(key)) return `unexpected line ${JSON.stringify(line.slice(0, 60))}`
    if (key in record) return `repeated key ${key}`
    record[key] = line.slice(eq + 1)
  }
  return record
}

const int = (v: string | undefined) => (v !== undefined && /^\d{1,10}$/.test(v) ? Number(v) : undefined)

export function parseLease4(text: string): Lease4 | string {
  const r = readRecord(text, ['event', 'ip', 'subnet', 'router', 'lease', 'serverid', 'at'])
  if (typeof r === 'string') return r
  const prefix = maskToPrefix(r.subnet ?? '')
  if (!isIpv4(r.ip ?? '')) return `bad ip ${JSON.stringify(r.ip)}`
  if (prefix === undefined || prefix < 1 || prefix > 32) return `bad subnet ${JSON.stringify(r.subnet)}`
  if (r.router && !isIpv4(r.router)) return `bad router ${JSON.stringify(r.router)}`
  const lease = int(r.lease)
  const at = int(r.at)
  if (lease === undefined || at === undefined) return 'bad lease time'
  return { ip: r.ip, prefix, router: r.router || undefined, lease, at }
}

export function parseLease6(text: string): Lease6 | string {
  const r = readRecord(text, ['event', 'ip6', 'prefixlen', 'preferred', 'valid', 'at'])
  if (typeof r === 'string') return r
  if (!IPV6.test(r.ip6 ?? '') || !(r.ip6 ?? '').includes(':')) return `bad address ${JSON.stringify(r.ip6)}`
  const prefixlen = int(r.prefixlen)
  const valid = int(r.valid)
  const at = int(r.at)
  if (prefixlen === undefined || prefixlen > 128) return `bad prefix length ${JSON.stringify(r.prefixlen)}`
  if (valid === undefined || at === undefined) return 'bad lifetime'
  return { ip6: r.ip6.toLowerCase(), prefixlen, valid, at }
}

export function leaseFile(runDir: string, ifname: string, family: 4 | 6): string {
  return path.join(runDir, `${ifname}.v${family}`)
}

/** A record is a handful of short lines. */
const MAX_RECORD = 16 * 1024

/**
 * A record our client scripts wrote (as root) into runDir, parsed; a file that is not a plain file of ours is
 * refused, with the reason, like a malformed record. Undefined: none yet (or unreadable).
 */
async function readLease<T>(file: string, parse: (text: string) => T | string): Promise<T | string | undefined> {
  const read = await readOwnedFile(file, { owners: trustedOwners(), maxBytes: MAX_RECORD }).catch(() => undefined)
  if (!read || 'missing' in read) return undefined
  return 'refused' in read ? `${file} refused: ${read.refused}` : parse(read.text)
}

export function readLease4(runDir: string, ifname: string): Promise<Lease4 | string | undefined> {
  return readLease(leaseFile(runDir, ifname, 4), parseLease4)
}

export function readLease6(runDir: string, ifname: string): Promise<Lease6 | string | undefined> {
  return readLease(leaseFile(runDir, ifname, 6), parseLease6)
}

export type ClientKind = 'udhcpc' | 'dhclient6' | 'odhcp6c'

export function pidFile(runDir: string, ifname: string, kind: ClientKind): string {
  return path.join(runDir, `${ifname}.${kind}.pid`)
}

/** The client's PID, if it is alive and really is that client for that interface (never signal a stranger). */
export function clientPid(runDir: string, ifname: string, kind: ClientKind): number | undefined {
  try {
    const pid = Number(readFileSync(pidFile(runDir, ifname, kind), 'utf8').trim())
    if (!Number.isInteger(pid) || pid <= 1) return undefined
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
    const binary = kind === 'dhclient6' ? 'dhclient' : kind
    return path.basename(cmdline[0]) === binary && cmdline.includes(ifname) ? pid : undefined
  } catch {
    return undefined
  }
}

const CLIENT_KINDS: ClientKind[] = ['udhcpc', 'dhclient6', 'odhcp6c']

/** The interfaces that have a DHCP client's PID file in `runDir` (dead or alive). */
export async function interfacesWithClients(runDir: string): Promise<string[]> {
  const names = await readdir(runDir).catch(() => [] as string[])
  const ifnames = names.map((n) => /^(.+)\.([a-z0-9]+)\.pid$/.exec(n)).filter((m) => m && CLIENT_KINDS.includes(m[2] as ClientKind)).map((m) => m![1])
  return [...new Set(ifnames)]
}

export function dhcp6Kind(): ClientKind {
  return findInPath('odhcp6c') ? 'odhcp6c' : 'dhclient6'
}

export interface ClientOptions {
  ifname: string
  runDir: string
  hostname?: string
  retries: number
  timeout: number
  env: NodeJS.ProcessEnv
}

/** udhcpc stays in the foreground of its own detached process, renews, and releases on SIGTERM (-R). */
export async function startDhcp4(sh: Sh, o: ClientOptions): Promise<number | undefined> {
  await rm(leaseFile(o.runDir, o.ifname, 4), { force: true })
  await rm(`${leaseFile(o.runDir, o.ifname, 4)}.event`, { force: true })
  const args = ['-f', '-n', '-R', '-i', o.ifname, '-s', path.join(HOOKS_DIR, 'udhcpc.script'), '-p', pidFile(o.runDir, o.ifname, 'udhcpc'),
    '-t', String(o.retries + 1), '-T', String(o.timeout), '-A', String(o.timeout)]
  if (o.hostname) args.push('-x', `hostname:${o.hostname}`)
  return sh.daemon('udhcpc', args, { env: o.env, logFile: path.join(o.runDir, `${o.ifname}.log`) })
}

export async function startDhcp6(sh: Sh, o: ClientOptions): Promise<number | undefined> {
  await rm(leaseFile(o.runDir, o.ifname, 6), { force: true })
  const logFile = path.join(o.runDir, `${o.ifname}.log`)
  if (dhcp6Kind() === 'odhcp6c') {
    // No -P: a device wants an address (IA_NA), not a delegated prefix. odhcp6c writes its pidfile only when
    // it daemonizes (-d), and releases on SIGTERM.
    return sh.daemon('odhcp6c', ['-d', '-s', path.join(HOOKS_DIR, 'odhcp6c.script'), '-p', pidFile(o.runDir, o.ifname, 'odhcp6c'), '-N', 'try', '-t', String(o.timeout), o.ifname], { env: o.env, logFile })
  }
  // -d keeps dhclient in the foreground of its detached process, so the PID we get is the client's. dhclient
  // gives its script a fresh environment: -e passes the run directory on.
  return sh.daemon('dhclient', ['-6', '-d', '-D', 'LL', '-e', `DUALGATE_RUN_DIR=${o.runDir}`, '-e', `DUALGATE_DATA_DIR=${o.env.DUALGATE_DATA_DIR ?? ''}`, '-lf', path.join(o.runDir, `${o.ifname}.dhclient6.leases`), '-pf', pidFile(o.runDir, o.ifname, 'dhclient6'),
    '-sf', path.join(HOOKS_DIR, 'dhclient6.script'), o.ifname], { env: o.env, logFile })
}

/**
 * Stops a device's clients; udhcpc (-R) and odhcp6c release their leases on SIGTERM, dhclient is asked to.
 * `dataDir` goes to dhclient's script like at start, so the release event reaches this gateway's spool.
 */
export async function stopClients(sh: Sh, runDir: string, ifname: string, dataDir: string): Promise<void> {
  const dhclient = clientPid(runDir, ifname, 'dhclient6')
  if (dhclient) {
    await sh.apply('dhclient', ['-6', '-r', '-D', 'LL', '-e', `DUALGATE_RUN_DIR=${runDir}`, '-e', `DUALGATE_DATA_DIR=${dataDir}`, '-lf', path.join(runDir, `${ifname}.dhclient6.leases`), '-pf', pidFile(runDir, ifname, 'dhclient6'),
      '-sf', path.join(HOOKS_DIR, 'dhclient6.script'), ifname], { nothrow: true, timeoutMs: 5000 })
  }
  for (const kind of ['udhcpc', 'odhcp6c', 'dhclient6'] as const) {
    const pid = clientPid(runDir, ifname, kind)
    if (!pid) continue
    await sh.apply('kill', ['-TERM', String(pid)], { nothrow: true })
    // Let it send its release and run its script before the records are removed.
    for (let i = 0; i < 30 && !sh.dryRun && existsSync(`/proc/${pid}`); i++) await sleep(100)
  }
  if (!sh.dryRun) {
    for (const name of [`${ifname}.v4`, `${ifname}.v4.event`, `${ifname}.v6`, `${ifname}.dhclient6.leases`, `${ifname}.log`, ...CLIENT_KINDS.map((k) => `${ifname}.${k}.pid`)]) {
      await rm(path.join(runDir, name), { force: true })
    }
  }
}
