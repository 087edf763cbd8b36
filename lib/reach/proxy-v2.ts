// The PROXY protocol version 2 header (HAProxy's proxy-protocol.txt, section 2.2): what a relay writes first on
// its connection to a server so that the server learns the client's address and the address the client
// connected to. Binary: a 12-byte signature, version 2 with command PROXY, the family and transport, the
// length of the address block, then source address, destination address, source port, destination port.
// Pure.
import net from 'node:net'
import { parseIpv4 } from '../addr/ipv4.ts'
import { parseIpv6 } from '../addr/ipv6.ts'

export const PROXY_V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a])

export interface ProxyAddress {
  host: string
  port: number
}

/** Version 2 (high nibble) and command PROXY (low nibble, 0x1): the connection was relayed on behalf of another. */
const VERSION_PROXY = 0x21
const AF_INET = 0x10
const AF_INET6 = 0x20
const STREAM = 0x01
const DGRAM = 0x02

/** `::ffff:a.b.c.d` (a dual-stack socket's IPv4 peer) as a.b.c.d. */
function unmapped(host: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(host)
  return m ? m[1]! : host
}

function ipv4Bytes(host: string): Buffer {
  const n = parseIpv4(host)
  if (n === undefined) throw new Error(`not an IPv4 address: ${host}`)
  const b = Buffer.alloc(4)
  b.writeUInt32BE(n >>> 0)
  return b
}

function ipv6Bytes(host: string): Buffer {
  // An IPv4 address next to an IPv6 one goes as IPv4-mapped, so both fit one family.
  const bytes = net.isIPv4(host) ? parseIpv6(`::ffff:${host}`) : parseIpv6(host)
  if (!bytes) throw new Error(`not an IPv6 address: ${host}`)
  return Buffer.from(bytes)
}

function checkPort(port: number): void {
  if (!Number.isInteger(port) || port < 0 || port > 65_535) throw new Error(`bad port: ${port}`)
}

/**
 * The header for a connection (stream) or datagram flow from `source` (the client) to `destination` (the
 * address and port the client reached). Both IPv4: an AF_INET block of 12 bytes; otherwise AF_INET6 of 36,
 * with an IPv4 address mapped. Throws on an address that is neither.
 */
export function proxyV2Header(source: ProxyAddress, destination: ProxyAddress, transport: 'tcp' | 'udp' = 'tcp'): Buffer {
  const src = unmapped(source.host)
  const dst = unmapped(destination.host)
  checkPort(source.port)
  checkPort(destination.port)
  const v4 = net.isIPv4(src) && net.isIPv4(dst)
  const addrs = v4 ? [ipv4Bytes(src), ipv4Bytes(dst)] : [ipv6Bytes(src), ipv6Bytes(dst)]
  const ports = Buffer.alloc(4)
  ports.writeUInt16BE(source.port, 0)
  ports.writeUInt16BE(destination.port, 2)
  const block = Buffer.concat([...addrs, ports])
  const head = Buffer.alloc(4)
  head[0] = VERSION_PROXY
  head[1] = (v4 ? AF_INET : AF_INET6) | (transport === 'tcp' ? STREAM : DGRAM)
  head.writeUInt16BE(block.length, 2)
  return Buffer.concat([PROXY_V2_SIGNATURE, head, block])
}
