// The ports this network namespace's own sockets hold, from /proc/net/{tcp,tcp6,udp,udp6}: TCP sockets
// in LISTEN, UDP sockets bound and unconnected (a server's). Parsing is pure; `listeningSockets` reads.
import { readFile } from 'node:fs/promises'
import { endianness } from 'node:os'
import { formatIpv4 } from '../addr/ipv4.ts'
import { formatIpv6 } from '../addr/ipv6.ts'

export type Proto = 'tcp' | 'udp'

export interface ListeningSocket { proto: Proto; address: string; port: number }

/** /proc/net's `st` column: TCP_LISTEN for TCP, TCP_CLOSE (what an unconnected UDP socket shows) for UDP. */
const SERVING: Record<Proto, string> = { tcp: '0A', udp: '07' }

/**
 * The kernel prints each 32-bit word of an address as the number it is in host byte order, so the bytes
 * come back by writing those numbers in the same order (big-endian MIPS routers differ from x86 and ARM).
 */
function address(hex: string, order: 'LE' | 'BE'): string | undefined {
  if (!/^([0-9A-F]{8}|[0-9A-F]{32})$/i.test(hex)) return undefined
  const bytes = Buffer.alloc(hex.length / 2)
  for (let i = 0; i < hex.length / 8; i++) {
    const word = Number.parseInt(hex.slice(8 * i, 8 * i + 8), 16)
    if (order === 'LE') bytes.writeUInt32LE(word, 4 * i)
    else bytes.writeUInt32BE(word, 4 * i)
  }
  return bytes.length === 4 ? formatIpv4(bytes.readUInt32BE(0)) : formatIpv6(bytes)
}

/** The serving sockets in one /proc/net/<proto>[6] table. */
export function parseProcNet(text: string, proto: Proto, order: 'LE' | 'BE' = endianness()): ListeningSocket[] {
  const out: ListeningSocket[] = []
  for (const line of text.split('\n').slice(1)) {
    const [, local, , state] = line.trim().split(/\s+/)
    if (state !== SERVING[proto]) continue
    const [hex, portHex] = (local ?? '').split(':')
    const addr = address(hex, order)
    const port = Number.parseInt(portHex ?? '', 16)
    if (addr !== undefined && port > 0 && port <= 65535) out.push({ proto, address: addr, port })
  }
  return out
}

/** What the router itself listens on for `proto`, IPv4 and IPv6 (a kernel without IPv6 has no <proto>6 table). */
export async function listeningSockets(proto: Proto): Promise<ListeningSocket[]> {
  const tables = await Promise.all([proto, `${proto}6`].map((t) => readFile(`/proc/net/${t}`, 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return ''
    throw err
  })))
  return tables.flatMap((text) => parseProcNet(text, proto))
}
