// The upstream's NAT64 prefix, found the way RFC 7050 says: ask the network's DNS64 for the AAAA records of
// ipv4only.arpa, whose only A records are 192.0.0.170 and 192.0.0.171; the prefix is what precedes them.
// Only /96 prefixes are taken (the form tayga and lib/clat.ts use); others are reported as unusable.
import { Resolver } from 'node:dns/promises'
import { formatIpv6, parseIpv6 } from '../addr/ipv6.ts'

const WELL_KNOWN_V4 = [[192, 0, 0, 170], [192, 0, 0, 171]]

/** The /96 prefix under which the ipv4only.arpa AAAA answers carry its well-known IPv4 addresses. */
export function pref64From(addresses: string[]): string | undefined {
  for (const address of addresses) {
    const bytes = parseIpv6(address)
    if (!bytes) continue
    const tail = [...bytes.subarray(12)]
    if (!WELL_KNOWN_V4.some((v4) => v4.every((b, i) => b === tail[i]))) continue
    bytes.fill(0, 12)
    return `${formatIpv6(bytes)}/96`
  }
  return undefined
}

/**
 * Asks each server in turn (bounded by `timeoutMs` each); undefined when none answers with a /96. Link-local
 * servers are skipped: Node's resolver drops the zone an fe80:: address needs.
 */
export async function discoverPref64(servers: string[], timeoutMs = 1500): Promise<string | undefined> {
  for (const server of servers.filter((s) => !/^fe[89ab]/i.test(s))) {
    const resolver = new Resolver({ timeout: timeoutMs, tries: 1 })
    try {
      resolver.setServers([server])
      const found = pref64From(await resolver.resolve6('ipv4only.arpa'))
      if (found) return found
    } catch {
      // No DNS64 there, or no answer in time: the next server, then the configured prefix.
    }
  }
  return undefined
}
