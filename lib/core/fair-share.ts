// The share of a bounded resource (connections, sessions) that one client may hold, and who counts as one
// client: the relay's and the SOCKS5 server's rule.
import net from 'node:net'
import { parseIpv6 } from '../addr/ipv6.ts'

/** The default share of one source: a sixteenth of the total, at least one. */
export function fairShare(total: number): number {
  return Math.max(1, Math.ceil(total / 16))
}

/**
 * Who a client is, for its share: an IPv6 client owns its whole /64 (its addresses are free to pick within
 * it), an IPv4 client its address.
 */
export function sourceKey(address: string): string {
  const bytes = net.isIPv6(address) ? parseIpv6(address) : undefined
  if (!bytes) return address
  return `${Buffer.from(bytes.subarray(0, 8)).toString('hex')}/64`
}
