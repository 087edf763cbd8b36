// The addresses of NAT64, as pure rules: the /96 prefix IPv6 clients use (RFC 6052), the IPv4 pool their
// traffic is mapped into, and the address a LAN device has under the prefix. Config validation and
// lib/net/tayga.ts share them.
import { createHash } from 'node:crypto'
import { formatIpv4, parseCidr4, parseIpv4 } from './ipv4.ts'
import { canonicalPrefix6, embedIpv4, formatIpv6, parseIpv6 } from './ipv6.ts'
import { normalizeMac } from './mac.ts'

export const WELL_KNOWN_PREFIX = '64:ff9b::/96'

/**
 * Why `text` cannot be a /96 translation prefix, or undefined when it can. RFC 6052: the low 32 bits carry
 * the IPv4 address and bits 64-71 must be zero. tayga 0.9.2 refuses ::/8 (so also RFC 8215's
 * 64:ff9b:1::/48), multicast and link-local prefixes.
 */
export function prefix96Error(text: string): string | undefined {
  const m = /^([^/]+)\/(\d{1,3})$/.exec(text)
  const bytes = m ? parseIpv6(m[1]) : undefined
  if (!m || !bytes) return 'expected an IPv6 prefix such as fd12:3456:789a:64::/96'
  if (m[2] !== '96') return 'the prefix must be a /96'
  if (bytes.subarray(12).some((b) => b !== 0)) return 'the last 32 bits of a /96 prefix must be zero (they carry the IPv4 address)'
  if (bytes[8] !== 0) return 'bits 64-71 of a translation prefix must be zero (RFC 6052)'
  if (`${formatIpv6(bytes)}/96` === WELL_KNOWN_PREFIX) return undefined
  if (bytes[0] === 0) return 'prefixes in ::/8 are reserved (tayga refuses them, 64:ff9b:1::/48 included)'
  if (bytes[0] === 0xff) return 'a multicast prefix cannot be a translation prefix'
  if (bytes[0] === 0xfe && (bytes[1] & 0xc0) === 0x80) return 'a link-local prefix cannot be a translation prefix'
  return undefined
}

/** Why `text` cannot be the NAT64 prefix for a LAN of private IPv4 devices: also not the Well-Known Prefix. */
export function nat64PrefixError(text: string): string | undefined {
  const why = prefix96Error(text)
  if (why) return why
  if (canonicalPrefix6(text) === WELL_KNOWN_PREFIX) return 'the Well-Known Prefix 64:ff9b::/96 must not represent private IPv4 addresses (RFC 6052); use a prefix of your own network or a ULA'
  return undefined
}

/** Why `text` cannot be the pool of IPv4 addresses tayga gives IPv6 clients, or undefined. */
export function nat64PoolError(text: string): string | undefined {
  const m = /^([^/]+)\/(\d{1,2})$/.exec(text)
  const ip = m ? parseIpv4(m[1]) : undefined
  if (!m || ip === undefined) return 'expected an IPv4 network such as 192.168.255.0/24'
  const prefix = Number(m[2])
  if (prefix < 16 || prefix > 30) return 'the pool must be a /16 to a /30'
  const { network } = parseCidr4(text)
  if (network !== ip) return `host bits set: the network is ${formatIpv4(network)}/${prefix}`
  const first = ip >>> 24
  if (first === 0 || first === 127 || first >= 224 || (ip >>> 16) === 0xa9fe) return 'a reserved, loopback, link-local or multicast range cannot be the pool'
  return undefined
}

/** Whether two IPv4 networks share an address. */
export function overlaps4(a: string, b: string): boolean {
  const x = parseCidr4(a)
  const y = parseCidr4(b)
  const mask = x.prefix < y.prefix ? x.mask : y.mask
  return ((x.network & mask) >>> 0) === ((y.network & mask) >>> 0)
}

/** A stable ULA /96 from the router's WAN MAC (the RFC 4193 hash of its EUI-64, without the time). */
export function ulaPrefix(wanMac: string): string {
  const mac = normalizeMac(wanMac)
  if (!mac) throw new Error(`not a MAC address: ${wanMac}`)
  const b = mac.split(':').map((h) => Number.parseInt(h, 16))
  const eui64 = Buffer.from([b[0] ^ 2, b[1], b[2], 0xff, 0xfe, b[3], b[4], b[5]])
  const id = createHash('sha1').update(eui64).digest().subarray(15, 20)
  const bytes = new Uint8Array(16)
  bytes.set([0xfd, ...id, 0x00, 0x64])
  return `${formatIpv6(bytes)}/96`
}

/** The address an IPv6 client uses for a LAN device: `<prefix>::a.b.c.d`. */
export function mappedAddress(prefix96: string, lanIpv4: string): string {
  return embedIpv4(prefix96, lanIpv4)
}
