// LAN devices as the router sees them: the kernel's neighbour table and dnsmasq's lease file.
// Everything here comes from devices we don't control, so each entry is validated and the reason for
// dropping it is kept for the log.
import type { Sh } from '../core/exec.ts'
import { readOwnedFile, trustedOwners, userId } from '../core/safe-file.ts'
import { cleanHostname } from '../addr/hostname.ts'
import { isHostIn, isIpv4, type Subnet4 } from '../addr/ipv4.ts'
import { isDeviceMac, normalizeMac } from '../addr/mac.ts'

export interface Sighting {
  mac: string
  ip: string
  source: 'neigh' | 'lease' | 'event'
  hostname?: string
  /** dnsmasq lease expiry (epoch seconds); 0 means infinite. */
  expires?: number
}

export interface Rejected { input: string; why: string }

export interface LanView { subnet: Subnet4; routerIps: string[] }

/** The one gate every sighting passes, whatever its source. */
export function checkSighting(view: LanView, mac: string | undefined, ip: string | undefined): { mac: string; ip: string } | string {
  const m = normalizeMac(mac ?? '')
  if (!m) return `malformed MAC ${JSON.stringify(mac)}`
  if (!isDeviceMac(m)) return `not a device MAC ${m}`
  if (!ip || !isIpv4(ip)) return `not an IPv4 address ${JSON.stringify(ip)}`
  if (!isHostIn(view.subnet, ip)) return `${ip} is outside the LAN`
  if (view.routerIps.includes(ip)) return `${ip} is the router's own address`
  return { mac: m, ip }
}

interface NeighJson { dst: string; lladdr?: string; state?: string[] }

const DEAD_STATES = ['INCOMPLETE', 'FAILED', 'NOARP', 'PERMANENT']

export function parseNeighbours(view: LanView, json: string): { seen: Sighting[]; rejected: Rejected[] } {
  const seen: Sighting[] = []
  const rejected: Rejected[] = []
  for (const entry of JSON.parse(json || '[]') as NeighJson[]) {
    if (!isIpv4(entry.dst ?? '')) continue // IPv6 neighbours: our devices are IPv4-only
    if ((entry.state ?? []).some((s) => DEAD_STATES.includes(s)) || !entry.lladdr) continue
    const ok = checkSighting(view, entry.lladdr, entry.dst)
    if (typeof ok === 'string') rejected.push({ input: `neigh ${entry.dst} ${entry.lladdr}`, why: ok })
    else seen.push({ ...ok, source: 'neigh' })
  }
  return { seen, rejected }
}

export async function readNeighbours(sh: Sh, view: LanView, lanIf: string): Promise<{ seen: Sighting[]; rejected: Rejected[] }> {
  const { stdout } = await sh.query('ip', ['-j', '-4', 'neigh', 'show', 'dev', lanIf])
  return parseNeighbours(view, stdout)
}

/** dnsmasq's lease file: `<expiry> <mac> <ip> <hostname|*> <client-id|*>` per line. */
export function parseLeases(view: LanView, text: string, now = Date.now() / 1000): { seen: Sighting[]; rejected: Rejected[] } {
  const seen: Sighting[] = []
  const rejected: Rejected[] = []
  for (const line of text.split('\n')) {
    const fields = line.trim().split(/\s+/)
    if (fields.length < 4 || fields[0] === 'duid') continue
    const [expiry, mac, ip, name] = fields
    if (!isIpv4(ip)) continue // DHCPv6 lines
    const expires = Number(expiry)
    if (!Number.isInteger(expires)) { rejected.push({ input: `lease ${line.slice(0, 80)}`, why: 'malformed expiry' }); continue }
    if (expires !== 0 && expires < now) continue
    const ok = checkSighting(view, mac, ip)
    if (typeof ok === 'string') rejected.push({ input: `lease ${line.slice(0, 80)}`, why: ok })
    else seen.push({ ...ok, source: 'lease', hostname: cleanHostname(name).hostname, expires })
  }
  return { seen, rejected }
}

/** 1000 devices of about 100 bytes a line, many times over. */
const MAX_LEASE_FILE = 4 << 20

/**
 * dnsmasq's lease file, read only when it is dnsmasq's: a regular file owned by root or by the `dnsmasq` user
 * and writable by nobody else (the default path is in /tmp). A refused file is one rejected entry saying
 * why, and nothing is seen from it.
 */
export async function readLeases(view: LanView, file: string): Promise<{ seen: Sighting[]; rejected: Rejected[] }> {
  const dnsmasq = await userId('dnsmasq')
  const read = await readOwnedFile(file, { owners: trustedOwners(dnsmasq === undefined ? [] : [dnsmasq]), maxBytes: MAX_LEASE_FILE })
  if ('refused' in read) return { seen: [], rejected: [{ input: `lease file ${file}`, why: `refused: ${read.refused}` }] }
  return 'missing' in read ? { seen: [], rejected: [] } : parseLeases(view, read.text)
}
