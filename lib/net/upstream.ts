// What the upstream network offers, so each device gets only the requests that can succeed. IPv4: the
// router's own WAN holds a global IPv4 address (netifd or the admin put it there; probing DHCPv4 with a
// MAC of ours would register a lease upstream in the router's name). IPv6: a router solicitation on the
// WAN (rdisc6) and the flags of the advertisement that answers.
import type { Sh } from '../core/exec.ts'
import { getLink } from './ip.ts'

export interface Offer {
  dhcpv4: boolean
  ra: boolean
  dhcpv6: boolean
  slaac: boolean
  prefixes: string[]
  gateway6?: string
  /** Recursive DNS servers the RA names (RFC 8106): where the NAT64 prefix is asked for (lib/net/pref64.ts). */
  dns6: string[]
}

export function parseRdisc6(text: string): Omit<Offer, 'dhcpv4'> {
  const flag = (label: string) => new RegExp(`${label}\\s*:\\s*Yes`).test(text)
  const prefixes: string[] = []
  let slaac = false
  for (const block of text.split(/\n (?=Prefix)/).slice(1)) {
    const prefix = /^Prefix\s*:\s*([0-9a-f:]+\/\d+)/i.exec(block)?.[1]
    if (!prefix) continue
    prefixes.push(prefix.toLowerCase())
    if (/Autonomous address conf\.\s*:\s*Yes/.test(block)) slaac = true
  }
  const gateway6 = /^ from ([0-9a-f:]+)/im.exec(text)?.[1]
  const ra = gateway6 !== undefined
  const dns6 = [...text.matchAll(/^ Recursive DNS server\s*:\s*([0-9a-f:]+)\s*$/gim)].map((m) => m[1].toLowerCase())
  return { ra, dhcpv6: ra && flag('Stateful address conf\\.'), slaac, prefixes, gateway6, dns6 }
}

export async function probeUpstream(sh: Sh, wanIf: string): Promise<Offer> {
  const wan = await getLink(sh, wanIf)
  const dhcpv4 = (wan?.addresses ?? []).some((a) => a.family === 4 && a.scope === 'global')
  const { stdout } = await sh.query('rdisc6', ['-1', '-r', '2', '-w', '1000', wanIf], { nothrow: true, timeoutMs: 5000 })
  return { dhcpv4, ...parseRdisc6(stdout) }
}
