// This network namespace's own sockets, from /proc/net/{tcp,tcp6,udp,udp6}: the ports its servers hold (TCP
// sockets in LISTEN, UDP sockets bound and unconnected), and the TCP connections whose peer has ended.
// Parsing is pure; the async functions read.
import { readFile } from 'node:fs/promises'
import net from 'node:net'
import { endianness } from 'node:os'
import { formatIpv4 } from '../addr/ipv4.ts'
import { formatIpv6, parseIpv6 } from '../addr/ipv6.ts'

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

interface Row { local: { address: string; port: number }; remote: { address: string; port: number }; state: string }

function endpoint(text: string | undefined, order: 'LE' | 'BE'): Row['local'] | undefined {
  const [hex, portHex] = (text ?? '').split(':')
  const addr = address(hex, order)
  const port = Number.parseInt(portHex ?? '', 16)
  return addr !== undefined && port >= 0 && port <= 65535 ? { address: addr, port } : undefined
}

function rows(text: string, order: 'LE' | 'BE'): Row[] {
  const out: Row[] = []
  for (const line of text.split('\n').slice(1)) {
    const [, localText, remoteText, state] = line.trim().split(/\s+/)
    const local = endpoint(localText, order)
    const remote = endpoint(remoteText, order)
    if (local && remote && state) out.push({ local, remote, state })
  }
  return out
}

/** The serving sockets in one /proc/net/<proto>[6] table. */
export function parseProcNet(text: string, proto: Proto, order: 'LE' | 'BE' = endianness()): ListeningSocket[] {
  return rows(text, order).filter((r) => r.state === SERVING[proto] && r.local.port > 0).map((r) => ({ proto, address: r.local.address, port: r.local.port }))
}

/** One spelling of a TCP connection, `[local]:port [remote]:port`, from addresses in any spelling. */
export function connectionKey(local: string, localPort: number, remote: string, remotePort: number): string {
  const canon = (a: string) => (net.isIPv6(a) ? formatIpv6(parseIpv6(a) ?? new Uint8Array(16)) : a)
  return `[${canon(local)}]:${localPort} [${canon(remote)}]:${remotePort}`
}

/** TCP_CLOSE_WAIT: the peer has sent its FIN, whether or not the socket's owner has read up to it. */
const CLOSE_WAIT = '08'

/** The connections (connectionKey) of this namespace whose peer has ended, in one /proc/net/tcp[6] table. */
export function parseCloseWait(text: string, order: 'LE' | 'BE' = endianness()): string[] {
  return rows(text, order).filter((r) => r.state === CLOSE_WAIT).map((r) => connectionKey(r.local.address, r.local.port, r.remote.address, r.remote.port))
}

/** Every TCP connection of this namespace, IPv4 and IPv6, whose peer has sent its FIN. */
export async function closeWaitConnections(): Promise<Set<string>> {
  const tables = await Promise.all(['tcp', 'tcp6'].map((t) => readProcNet(t)))
  return new Set(tables.flatMap((text) => parseCloseWait(text)))
}

/** What the router itself listens on for `proto`, IPv4 and IPv6 (a kernel without IPv6 has no <proto>6 table). */
export async function listeningSockets(proto: Proto): Promise<ListeningSocket[]> {
  const tables = await Promise.all([proto, `${proto}6`].map((t) => readProcNet(t)))
  return tables.flatMap((text) => parseProcNet(text, proto))
}

/** A kernel without IPv6 has no <proto>6 table. */
function readProcNet(table: string): Promise<string> {
  return readFile(`/proc/net/${table}`, 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return ''
    throw err
  })
}

/**
 * Ends a TCP connection with a reset (RST instead of FIN); one still connecting, or whose peer is gone, is
 * simply closed. libuv refuses a reset while a shutdown (an end()) is pending: Node then emits an error and
 * never closes the handle, so 'close' never comes and the descriptor leaks. Such a socket is closed too.
 */
export function abortConnection(sock: net.Socket): void {
  if (sock.destroyed) return
  if (sock.connecting || !sock.remoteAddress || sock.writableEnded) sock.destroy()
  else sock.resetAndDestroy()
}
