// IPv6 addresses as bytes and text. Strict parsing: these come from configuration and end up in config
// files and `ip` arguments.
import { formatIpv4, parseIpv4 } from './ipv4.ts'

/** The 16 bytes of an IPv6 address (`::`, an embedded dotted IPv4 tail), or undefined. No zone, no prefix. */
export function parseIpv6(text: string): Uint8Array | undefined {
  if (!/^[0-9A-Fa-f:.]{2,45}$/.test(text)) return undefined
  let head = text
  const tail: number[] = []
  if (text.includes('.')) {
    const cut = text.lastIndexOf(':')
    const v4 = parseIpv4(text.slice(cut + 1))
    if (cut < 0 || v4 === undefined) return undefined
    tail.push(v4 >>> 16, v4 & 0xffff)
    head = text.endsWith('::', cut + 1) ? text.slice(0, cut + 1) : text.slice(0, cut)
  }
  const halves = head.split('::')
  if (halves.length > 2) return undefined
  const groups = (s: string) => (s === '' ? [] : s.split(':'))
  const left = groups(halves[0])
  const right = halves.length === 2 ? groups(halves[1]) : []
  if ([...left, ...right].some((g) => !/^[0-9A-Fa-f]{1,4}$/.test(g))) return undefined
  const total = left.length + right.length + tail.length
  if (halves.length === 1 ? total !== 8 : total > 7) return undefined
  const hex = (gs: string[]) => gs.map((g) => Number.parseInt(g, 16))
  const all = [...hex(left), ...new Array<number>(8 - total).fill(0), ...hex(right), ...tail]
  const bytes = new Uint8Array(16)
  all.forEach((w, i) => { bytes[2 * i] = w >> 8; bytes[2 * i + 1] = w & 0xff })
  return bytes
}

/** RFC 5952 text; with `ipv4Tail`, the last 32 bits as a dotted quad (RFC 6052 section 2.4). */
export function formatIpv6(bytes: Uint8Array, ipv4Tail = false): string {
  const count = ipv4Tail ? 6 : 8
  const words = Array.from({ length: count }, (_, i) => (bytes[2 * i] << 8) | bytes[2 * i + 1])
  let best = -1
  let bestLen = 1
  for (let i = 0; i < count;) {
    let j = i
    while (j < count && words[j] === 0) j++
    if (j - i > bestLen) { best = i; bestLen = j - i }
    i = j === i ? i + 1 : j
  }
  const hex = (ws: number[]) => ws.map((w) => w.toString(16))
  const tail = ipv4Tail ? [formatIpv4(((bytes[12] << 24) | (bytes[13] << 16) | (bytes[14] << 8) | bytes[15]) >>> 0)] : []
  if (best < 0) return [...hex(words), ...tail].join(':')
  const left = hex(words.slice(0, best)).join(':')
  const right = [...hex(words.slice(best + bestLen)), ...tail].join(':')
  return `${left}::${right}`
}

/** The address of IPv4 `ipv4` under a /96 prefix (already checked), written `<prefix>::a.b.c.d`. */
export function embedIpv4(prefix96: string, ipv4: string): string {
  const bytes = parseIpv6(prefix96.split('/')[0])
  const v4 = parseIpv4(ipv4)
  if (!bytes || v4 === undefined) throw new Error(`cannot embed ${ipv4} in ${prefix96}`)
  bytes.set([v4 >>> 24, (v4 >>> 16) & 255, (v4 >>> 8) & 255, v4 & 255], 12)
  return formatIpv6(bytes, true)
}

/** A prefix in canonical text: `2001:DB8:0::/96` becomes `2001:db8::/96`. */
export function canonicalPrefix6(text: string): string {
  const [address, length] = text.split('/')
  const bytes = parseIpv6(address)
  if (!bytes) throw new Error(`not an IPv6 prefix: ${text}`)
  return `${formatIpv6(bytes)}/${length}`
}

/** Whether `address` lies inside `prefix` (`2001:db8:1::/64`); false for anything that does not parse. */
export function inPrefix6(address: string, prefix: string): boolean {
  const [net, len] = prefix.split('/')
  const a = parseIpv6(address)
  const p = parseIpv6(net)
  const bits = Number(len)
  if (!a || !p || !Number.isInteger(bits) || bits < 0 || bits > 128) return false
  for (let i = 0; i < 16; i++) {
    const take = Math.max(0, Math.min(8, bits - i * 8))
    const mask = take === 0 ? 0 : (0xff << (8 - take)) & 0xff
    if ((a[i] & mask) !== (p[i] & mask)) return false
  }
  return true
}

/**
 * The address of a MAC in the first /64 of `prefix` (a /64 or shorter): the modified EUI-64 interface
 * identifier of RFC 4291 (ff:fe in the middle, the universal/local bit flipped), as SLAAC would form it.
 */
export function eui64Address(prefix: string, mac: string): string {
  const [net, len] = prefix.split('/')
  const bytes = parseIpv6(net)
  const m = mac.split(':').map((h) => Number.parseInt(h, 16))
  if (!bytes || Number(len) > 64 || m.length !== 6 || m.some((b) => !(b >= 0 && b <= 255))) throw new Error(`no EUI-64 address for ${mac} in ${prefix}`)
  bytes.set([m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]], 8)
  return formatIpv6(bytes)
}
