// IPv4 address checks for input from the network: strict dotted quads, subnet membership.

export function parseIpv4(text: string): number | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text)
  if (!m) return undefined
  const octets = m.slice(1).map(Number)
  if (octets.some((o, i) => o > 255 || (m[i + 1].length > 1 && m[i + 1].startsWith('0')))) return undefined
  return ((octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3]) >>> 0
}

export function isIpv4(text: string): boolean {
  return parseIpv4(text) !== undefined
}

export interface Subnet4 { address: string; network: number; prefix: number; mask: number }

export function parseCidr4(cidr: string): Subnet4 {
  const [address, p] = cidr.split('/')
  const ip = parseIpv4(address)
  const prefix = Number(p)
  if (ip === undefined || !Number.isInteger(prefix) || prefix < 0 || prefix > 32) throw new Error(`not an IPv4 prefix: ${cidr}`)
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0
  return { address, network: (ip & mask) >>> 0, prefix, mask }
}

/** A host address inside the subnet: not the network or broadcast address. */
export function isHostIn(subnet: Subnet4, text: string): boolean {
  const ip = parseIpv4(text)
  if (ip === undefined || ((ip & subnet.mask) >>> 0) !== subnet.network) return false
  const host = (ip & ~subnet.mask) >>> 0
  return host !== 0 && host !== (~subnet.mask >>> 0)
}

export function formatIpv4(n: number): string {
  return [24, 16, 8, 0].map((s) => (n >>> s) & 255).join('.')
}

/** Every host address of the subnet, for an ARP sweep (bounded by the caller's prefix). */
export function hostsOf(subnet: Subnet4): string[] {
  const size = 2 ** (32 - subnet.prefix)
  return Array.from({ length: Math.max(0, size - 2) }, (_, i) => formatIpv4(subnet.network + i + 1))
}

const MASKS = new Map(Array.from({ length: 33 }, (_, p) => [formatIpv4(p === 0 ? 0 : (0xffffffff << (32 - p)) >>> 0), p]))

/** Prefix length of a dotted netmask such as 255.255.252.0 (udhcpc reports masks this way). */
export function maskToPrefix(mask: string): number | undefined {
  return /^\d+$/.test(mask) && Number(mask) <= 32 ? Number(mask) : MASKS.get(mask)
}

/**
 * Addresses that are not reachable on the public internet: this network, RFC 1918, shared (CGNAT)
 * 100.64/10, loopback, link-local, IETF protocol assignments, benchmarking 198.18/15, the three
 * documentation nets, multicast and the reserved 240/4 (with the broadcast address).
 */
const NOT_PUBLIC = [
  '0.0.0.0/8', '10.0.0.0/8', '100.64.0.0/10', '127.0.0.0/8', '169.254.0.0/16', '172.16.0.0/12',
  '192.0.0.0/24', '192.0.2.0/24', '192.168.0.0/16', '198.18.0.0/15', '198.51.100.0/24', '203.0.113.0/24',
  '224.0.0.0/4', '240.0.0.0/4',
].map(parseCidr4)

/** A unicast address the internet routes to this host (a WAN address not behind NAT). */
export function isPublicIpv4(text: string): boolean {
  const ip = parseIpv4(text)
  return ip !== undefined && !NOT_PUBLIC.some((s) => ((ip & s.mask) >>> 0) === s.network)
}
