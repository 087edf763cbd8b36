// A SOCKS5 server (RFC 1928, with RFC 1929 username/password when asked for) through which applications on
// this host reach the IPv6 internet over the tunnel: CONNECT to IPv4, IPv6 and name targets, names resolved
// here preferring AAAA. BIND and UDP ASSOCIATE are answered "command not supported". Bounded like the relay
// (lib/reach/relay.ts): a connection limit (shared per source for clients that are not on this host), an
// absolute handshake deadline and size, a connect deadline per address, an idle timeout and a linger after a
// half-close. Logs carry reply codes and error names, never targets or credentials.
import { timingSafeEqual } from 'node:crypto'
import { Resolver } from 'node:dns/promises'
import net from 'node:net'
import { formatIpv6, parseIpv6 } from '../addr/ipv6.ts'
import { fairShare, sourceKey } from '../core/fair-share.ts'
import { abortConnection } from '../net/sockets.ts'

// ---------------------------------------------------------------------------------------------------------
// The wire format, as pure functions.

export const REPLY = {
  succeeded: 0x00,
  generalFailure: 0x01,
  notAllowed: 0x02,
  networkUnreachable: 0x03,
  hostUnreachable: 0x04,
  connectionRefused: 0x05,
  ttlExpired: 0x06,
  commandNotSupported: 0x07,
  addressTypeNotSupported: 0x08,
} as const
export type ReplyName = keyof typeof REPLY

const METHOD_NONE = 0x00
const METHOD_USERPASS = 0x02
const NO_ACCEPTABLE = 0xff

export type Target = { type: 'ipv4' | 'ipv6' | 'name'; host: string; port: number }

/** A parse of bytes at the start of a buffer: needs more bytes, is malformed, or took `used` bytes. */
export type Parsed<T> =
  | { kind: 'more' }
  | { kind: 'bad'; why: string; /** Answer this reply code before closing (requests only). */ reply?: number }
  | { kind: 'ok'; value: T; used: number }

const more = { kind: 'more' } as const

/** VER NMETHODS METHODS[NMETHODS]. */
export function parseGreeting(buf: Uint8Array): Parsed<number[]> {
  if (buf.length < 1) return more
  if (buf[0] !== 5) return { kind: 'bad', why: 'not SOCKS version 5' }
  if (buf.length < 2) return more
  const n = buf[1]
  if (n === 0) return { kind: 'bad', why: 'no methods offered' }
  if (buf.length < 2 + n) return more
  return { kind: 'ok', value: [...buf.subarray(2, 2 + n)], used: 2 + n }
}

/** RFC 1929: VER(1) ULEN UNAME PLEN PASSWD. */
export function parseUserPass(buf: Uint8Array): Parsed<{ username: Buffer; password: Buffer }> {
  if (buf.length < 1) return more
  if (buf[0] !== 1) return { kind: 'bad', why: 'not username/password version 1' }
  if (buf.length < 2) return more
  const ulen = buf[1]
  if (buf.length < 3 + ulen) return more
  const plen = buf[2 + ulen]
  if (buf.length < 3 + ulen + plen) return more
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.length)
  return { kind: 'ok', value: { username: b.subarray(2, 2 + ulen), password: b.subarray(3 + ulen, 3 + ulen + plen) }, used: 3 + ulen + plen }
}

/** VER CMD RSV ATYP DST.ADDR DST.PORT. Only CONNECT (1) is accepted; other commands answer 0x07. */
export function parseRequest(buf: Uint8Array): Parsed<Target> {
  if (buf.length < 1) return more
  if (buf[0] !== 5) return { kind: 'bad', why: 'not SOCKS version 5' }
  if (buf.length < 4) return more
  const cmd = buf[1]
  const atyp = buf[3]
  let addrEnd: number
  if (atyp === 1) addrEnd = 8
  else if (atyp === 4) addrEnd = 20
  else if (atyp === 3) {
    if (buf.length < 5) return more
    addrEnd = 5 + buf[4]
  } else return { kind: 'bad', why: `address type ${atyp}`, reply: REPLY.addressTypeNotSupported }
  if (buf.length < addrEnd + 2) return more
  const used = addrEnd + 2
  // The whole request is read before answering, so the reply never races bytes still arriving.
  if (cmd !== 1) return { kind: 'bad', why: `command ${cmd}`, reply: REPLY.commandNotSupported }
  const port = (buf[addrEnd] << 8) | buf[addrEnd + 1]
  if (port === 0) return { kind: 'bad', why: 'port 0', reply: REPLY.generalFailure }
  if (atyp === 1) return { kind: 'ok', value: { type: 'ipv4', host: buf.subarray(4, 8).join('.'), port }, used }
  if (atyp === 4) return { kind: 'ok', value: { type: 'ipv6', host: formatIpv6(buf.subarray(4, 20)), port }, used }
  const name = Buffer.from(buf.subarray(5, addrEnd)).toString('latin1')
  if (name.length === 0) return { kind: 'bad', why: 'empty name', reply: REPLY.hostUnreachable }
  // Some clients send address literals as names.
  const literal = name.startsWith('[') && name.endsWith(']') ? name.slice(1, -1) : name
  const family = net.isIP(literal)
  if (family !== 0) return { kind: 'ok', value: { type: family === 4 ? 'ipv4' : 'ipv6', host: literal, port }, used }
  if (!validName(name)) return { kind: 'bad', why: 'not a host name', reply: REPLY.hostUnreachable }
  return { kind: 'ok', value: { type: 'name', host: name.replace(/\.$/, '').toLowerCase(), port }, used }
}

/** LDH labels with underscores (seen in the wild), at most 63 each, 253 in all, an optional final dot. */
function validName(name: string): boolean {
  const bare = name.endsWith('.') ? name.slice(0, -1) : name
  if (bare.length === 0 || bare.length > 253) return false
  return bare.split('.').every((l) => /^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$/.test(l))
}

/** VER REP RSV ATYP BND.ADDR BND.PORT; without a bound address, 0.0.0.0:0. */
export function encodeReply(code: number, bound?: { address: string; port: number }): Buffer {
  const v6 = bound && net.isIPv6(bound.address) ? parseIpv6(bound.address.replace(/%.*$/, '')) : undefined
  const v4 = bound && net.isIPv4(bound.address) ? bound.address.split('.').map(Number) : undefined
  const addr = v6 ?? v4 ?? [0, 0, 0, 0]
  const port = v6 || v4 ? bound!.port : 0
  return Buffer.from([5, code, 0, v6 ? 4 : 1, ...addr, port >> 8, port & 0xff])
}

/** The reply for a failed connect (`code` of a Node system error, or 'ETIMEDOUT' for our own deadline). */
export function replyForError(code: string | undefined): number {
  switch (code) {
    case 'ECONNREFUSED': return REPLY.connectionRefused
    case 'ENETUNREACH': case 'EADDRNOTAVAIL': case 'EAFNOSUPPORT': return REPLY.networkUnreachable
    case 'EHOSTUNREACH': case 'EHOSTDOWN': return REPLY.hostUnreachable
    case 'ETIMEDOUT': return REPLY.ttlExpired
    case 'EACCES': case 'EPERM': return REPLY.notAllowed
    default: return REPLY.generalFailure
  }
}

/** Loopback and unspecified addresses: this host itself, which a client from elsewhere may not reach through us. */
export function isLocalTarget(address: string): boolean {
  const a = address.replace(/^::ffff:(?=\d+\.)/i, '')
  if (net.isIPv4(a)) return a.startsWith('127.') || a === '0.0.0.0'
  const b = parseIpv6(a.replace(/%.*$/, ''))
  return !!b && b.subarray(0, 15).every((x) => x === 0) && b[15] <= 1
}

// ---------------------------------------------------------------------------------------------------------
// Names.

export type Lookup = (name: string) => { v6: Promise<string[]>; v4: Promise<string[]> }

/**
 * AAAA and A queries at once through c-ares, on `servers` or those of /etc/resolv.conf (read again every
 * 30 s, as DHCP clients rewrite it). c-ares rather than getaddrinfo: slow answers cannot fill libuv's
 * thread pool, which the runner needs for its files. /etc/hosts is not read; `localhost` is answered here.
 */
export function dnsLookup(servers: string[], timeoutMs: number): Lookup {
  let resolver: Resolver | undefined
  let madeAt = 0
  const current = () => {
    if (!resolver || (servers.length === 0 && Date.now() - madeAt > 30_000)) {
      // c-ares' timeout is per try and grows; two tries stay within about three times timeoutMs/3.
      resolver = new Resolver({ timeout: Math.max(100, Math.floor(timeoutMs / 3)), tries: 2 })
      if (servers.length > 0) resolver.setServers(servers)
      madeAt = Date.now()
    }
    return resolver
  }
  return (name) => {
    if (name === 'localhost' || name.endsWith('.localhost')) return { v6: Promise.resolve(['::1']), v4: Promise.resolve(['127.0.0.1']) }
    const r = current()
    return { v6: bounded(r.resolve6(name), timeoutMs), v4: bounded(r.resolve4(name), timeoutMs) }
  }
}

function bounded(p: Promise<string[]>, ms: number): Promise<string[]> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<string[]>((_, reject) => {
    timer = setTimeout(() => reject(Object.assign(new Error('DNS timeout'), { code: 'ETIMEOUT' })), ms)
  })
  return Promise.race([p, late]).finally(() => clearTimeout(timer))
}

// ---------------------------------------------------------------------------------------------------------
// The server.

export type Socks5LogLevel = 'debug' | 'info' | 'warn' | 'error'

export interface Socks5Options {
  host: string
  port: number
  /** DNS servers to ask; empty or absent: those of /etc/resolv.conf. */
  dns?: string[]
  /** Connections, from accept to close; one beyond it is reset at once. Default 256. */
  maxConnections?: number
  /** What one source that is not this host (an IPv6 /64, an IPv4 address) may hold. Default fairShare(maxConnections). */
  maxConnectionsPerSource?: number
  /** From accept until the request is read, whatever trickles in. Default 10 s. */
  handshakeTimeoutMs?: number
  /**
   * Bytes a client may send before its request is complete. The formats bound themselves (greeting 257,
   * username/password 513, request 262 bytes) and the parser holds one message at a time; this cuts a client
   * earlier. Default 1040, enough for the largest. Bytes behind a complete request are not counted: they wait,
   * one read at most, until the upstream is connected.
   */
  maxHandshakeBytes?: number
  /** Both DNS queries of a name. Default 5 s. */
  resolveTimeoutMs?: number
  /** Each address tried. Default 5 s. */
  connectTimeoutMs?: number
  /** Addresses tried for one request. Default 4. */
  maxAttempts?: number
  /** An established connection with no traffic either way for this long is closed. Default 1 h. */
  idleTimeoutMs?: number
  /** A connection one side has ended is closed after this long without traffic. Default 30 s. */
  lingerMs?: number
  /** RFC 1929: when given, clients must authenticate with these; otherwise no authentication. */
  credentials?: { username: string; password: string }
  /** Replaces DNS (tests). */
  lookup?: Lookup
  log?: (level: Socks5LogLevel, msg: string, fields?: Record<string, unknown>) => void
}

export interface Socks5Stats {
  address: { host: string; port: number }
  /** Connections open now, and those of them still in the handshake or connecting. */
  active: number
  handshaking: number
  total: number
  /** Payload bytes carried either way, since the server started. */
  bytes: number
  /** Replies sent, by name. */
  replies: Partial<Record<ReplyName, number>>
  /** Connections closed for breaking the protocol, its deadline or its size. */
  malformed: number
  handshakeTimeouts: number
  idleTimeouts: number
  authFailures: number
  refused: { connections: number; connectionsPerSource: number }
}

export interface Socks5Server {
  stats(): Socks5Stats
  close(): Promise<void>
}

interface Conn {
  client: net.Socket
  /** Being connected, or connected. */
  upstream?: net.Socket
  handshaking: boolean
  /** The upstream is connected: the connection's slot now waits for its close too. */
  established?(upstream: net.Socket): void
}

const REPLY_NAMES = Object.fromEntries(Object.entries(REPLY).map(([k, v]) => [v, k])) as Record<number, ReplyName>

export function startSocks5(opts: Socks5Options): Promise<Socks5Server> {
  const maxConnections = opts.maxConnections ?? 256
  const maxPerSource = opts.maxConnectionsPerSource ?? fairShare(maxConnections)
  const handshakeTimeoutMs = opts.handshakeTimeoutMs ?? 10_000
  const maxHandshakeBytes = opts.maxHandshakeBytes ?? 1040
  const resolveTimeoutMs = opts.resolveTimeoutMs ?? 5000
  const connectTimeoutMs = opts.connectTimeoutMs ?? 5000
  const maxAttempts = opts.maxAttempts ?? 4
  const idleTimeoutMs = opts.idleTimeoutMs ?? 3_600_000
  const lingerMs = Math.min(opts.lingerMs ?? 30_000, idleTimeoutMs)
  const lookup = opts.lookup ?? dnsLookup(opts.dns ?? [], resolveTimeoutMs)
  const log = opts.log ?? (() => {})
  const creds = opts.credentials && { username: Buffer.from(opts.credentials.username), password: Buffer.from(opts.credentials.password) }

  const conns = new Set<Conn>()
  const bySource = new Map<string, number>()
  let total = 0
  let closedBytes = 0
  let malformed = 0
  let handshakeTimeouts = 0
  let idleTimeouts = 0
  let authFailures = 0
  const replies: Partial<Record<ReplyName, number>> = {}
  const refused = { connections: 0, connectionsPerSource: 0 }
  const refusalLoggedAt = { connections: 0, connectionsPerSource: 0 }

  const server = net.createServer({ allowHalfOpen: true, noDelay: true })
  server.on('connection', accept)

  function accept(client: net.Socket): void {
    client.on('error', () => {})
    const remote = client.remoteAddress ?? ''
    // Loopback clients are this host's own applications: they share the whole limit, not a slice of it.
    const source = isLocalTarget(remote) ? undefined : sourceKey(remote)
    const full = conns.size >= maxConnections ? 'connections' : source && (bySource.get(source) ?? 0) >= maxPerSource ? 'connectionsPerSource' : undefined
    if (full) {
      refused[full]++
      // A flood must not become a flood of log lines: one warning per limit per 10 s at most.
      if (Date.now() - refusalLoggedAt[full] >= 10_000) {
        refusalLoggedAt[full] = Date.now()
        log('warn', `socks5 connection limit${full === 'connectionsPerSource' ? ' for one source' : ''} reached, refusing`, { max: full === 'connections' ? maxConnections : maxPerSource, refusedSoFar: refused[full] })
      }
      client.resetAndDestroy()
      return
    }
    const conn: Conn = { client, handshaking: true }
    conns.add(conn)
    if (source) bySource.set(source, (bySource.get(source) ?? 0) + 1)
    total++
    // The slot is held until both sockets are closed: an upstream may still be flushing after the client left.
    let open = 1
    const release = () => {
      if (--open > 0) return
      conns.delete(conn)
      if (source) {
        const n = (bySource.get(source) ?? 1) - 1
        if (n > 0) bySource.set(source, n)
        else bySource.delete(source)
      }
      if (conn.upstream) closedBytes += conn.upstream.bytesRead + conn.upstream.bytesWritten
    }
    conn.established = (upstream) => {
      open++
      upstream.once('close', release)
    }
    client.once('close', () => {
      if (conn.handshaking) conn.upstream?.destroy()
      release()
    })
    void handshake(conn, source !== undefined)
  }

  const reply = (client: net.Socket, code: number, bound?: { address: string; port: number }) => {
    const name = REPLY_NAMES[code] ?? 'generalFailure'
    replies[name] = (replies[name] ?? 0) + 1
    if (code === REPLY.succeeded) client.write(encodeReply(code, bound))
    else closeWith(client, encodeReply(code))
  }

  async function handshake(conn: Conn, remote: boolean): Promise<void> {
    const { client } = conn
    let buf: Buffer = Buffer.alloc(0)
    let received = 0
    let stage: 'greeting' | 'auth' | 'request' = 'greeting'
    let done = false
    const deadline = setTimeout(() => {
      handshakeTimeouts++
      log('debug', 'socks5 handshake timed out')
      client.destroy()
      conn.upstream?.destroy()
    }, handshakeTimeoutMs)
    const drop = (why: string) => {
      malformed++
      log('debug', 'socks5 handshake malformed, closing', { why })
      client.destroy()
    }
    client.once('close', () => clearTimeout(deadline))

    const request = await new Promise<{ target: Target; early: Buffer } | undefined>((resolve) => {
      const finish = (v: { target: Target; early: Buffer } | undefined) => {
        done = true
        client.off('data', onData)
        client.off('end', onEnd)
        resolve(v)
      }
      const onEnd = () => { if (!done) { drop('client ended during the handshake'); finish(undefined) } }
      const onData = (chunk: Buffer) => {
        if (done) return
        buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk])
        received += chunk.length
        for (;;) {
          if (stage === 'greeting') {
            const p = parseGreeting(buf)
            if (p.kind === 'more') break
            if (p.kind === 'bad') { drop(p.why); return finish(undefined) }
            buf = buf.subarray(p.used)
            const method = creds ? METHOD_USERPASS : METHOD_NONE
            if (!p.value.includes(method)) {
              malformed++
              closeWith(client, Buffer.from([5, NO_ACCEPTABLE]))
              return finish(undefined)
            }
            client.write(Buffer.from([5, method]))
            stage = creds ? 'auth' : 'request'
          } else if (stage === 'auth') {
            const p = parseUserPass(buf)
            if (p.kind === 'more') break
            if (p.kind === 'bad') { drop(p.why); return finish(undefined) }
            buf = buf.subarray(p.used)
            if (!same(p.value.username, creds!.username) || !same(p.value.password, creds!.password)) {
              authFailures++
              log('debug', 'socks5 authentication failed')
              closeWith(client, Buffer.from([1, 1]))
              return finish(undefined)
            }
            client.write(Buffer.from([1, 0]))
            stage = 'request'
          } else {
            const p = parseRequest(buf)
            if (p.kind === 'more') break
            if (p.kind === 'bad') {
              if (p.reply === undefined) { drop(p.why); return finish(undefined) }
              log('debug', 'socks5 request refused', { why: p.why, reply: REPLY_NAMES[p.reply] })
              reply(client, p.reply)
              return finish(undefined)
            }
            // Bytes after the request are the client's first data: held until the upstream is connected.
            client.pause()
            return finish({ target: p.value, early: Buffer.from(buf.subarray(p.used)) })
          }
        }
        if (received > maxHandshakeBytes) { drop(`more than ${maxHandshakeBytes} bytes`); finish(undefined) }
      }
      client.on('data', onData)
      client.on('end', onEnd)
      client.once('close', () => { if (!done) finish(undefined) })
    })
    if (!request || client.destroyed) { clearTimeout(deadline); return }
    clearTimeout(deadline)

    const result = await connectTarget(conn, request.target, remote)
    if (client.destroyed) { result.socket?.destroy(); return }
    if (!result.socket) {
      log('debug', 'socks5 connect failed', { reply: REPLY_NAMES[result.code], error: result.error })
      reply(client, result.code)
      return
    }
    conn.handshaking = false
    relay(conn, result.socket, request.early)
  }

  type Outcome = { socket: net.Socket; code: 0; error?: undefined } | { socket?: undefined; code: number; error: string }

  async function connectTarget(conn: Conn, target: Target, remote: boolean): Promise<Outcome> {
    const allowed = (a: string) => !remote || !isLocalTarget(a)
    if (target.type !== 'name') {
      if (!allowed(target.host)) return { code: REPLY.notAllowed, error: 'local target from a remote client' }
      return attempt(conn, [target.host], target.port)
    }
    const { v6, v4 } = lookup(target.host)
    // Either may be left unawaited (connected on the first family, client gone): never an unhandled rejection.
    v6.catch(() => {})
    v4.catch(() => {})
    let lastError = 'no address'
    let code: number = REPLY.hostUnreachable
    let tried = 0
    for (const family of [v6, v4]) {
      let addrs: string[]
      try {
        addrs = (await family).filter((a) => net.isIP(a) !== 0)
      } catch (err) {
        const c = (err as NodeJS.ErrnoException).code
        lastError = c ?? 'DNS error'
        // NXDOMAIN for AAAA is NXDOMAIN for A as well.
        if (c === 'ENOTFOUND') break
        continue
      }
      if (conn.client.destroyed) return { code: REPLY.generalFailure, error: 'client gone' }
      const usable = addrs.filter(allowed).slice(0, maxAttempts - tried)
      if (addrs.length > 0 && usable.length === 0 && tried === 0) { code = REPLY.notAllowed; lastError = 'local target from a remote client' }
      if (usable.length === 0) continue
      tried += usable.length
      const r = await attempt(conn, usable, target.port)
      if (r.socket) return r
      code = r.code
      lastError = r.error
      if (tried >= maxAttempts || conn.client.destroyed) break
    }
    return { code, error: lastError }
  }

  /** Tries each address in turn, each within connectTimeoutMs; the last failure decides the reply. */
  async function attempt(conn: Conn, addrs: string[], port: number): Promise<Outcome> {
    let last: Outcome = { code: REPLY.generalFailure, error: 'no address' }
    for (const host of addrs) {
      if (conn.client.destroyed) break
      last = await new Promise<Outcome>((resolve) => {
        const sock = net.connect({ host, port, allowHalfOpen: true, noDelay: true })
        conn.upstream = sock
        sock.on('error', () => {})
        const settle = (o: Outcome) => {
          clearTimeout(timer)
          conn.client.off('close', gone)
          if (!o.socket) sock.destroy()
          resolve(o)
        }
        const timer = setTimeout(() => settle({ code: replyForError('ETIMEDOUT'), error: 'ETIMEDOUT' }), connectTimeoutMs)
        const gone = () => settle({ code: REPLY.generalFailure, error: 'client gone' })
        conn.client.once('close', gone)
        sock.once('error', (err: NodeJS.ErrnoException) => settle({ code: replyForError(err.code), error: err.code ?? err.message }))
        sock.once('connect', () => settle({ socket: sock, code: 0 }))
      })
      if (last.socket) return last
      conn.upstream = undefined
    }
    return last
  }

  /** The established connection: both directions piped, ends passed on (half-close), errors reset both. */
  function relay(conn: Conn, upstream: net.Socket, early: Buffer): void {
    const { client } = conn
    conn.established!(upstream)
    const fail = () => { abortConnection(client); abortConnection(upstream) }
    client.removeAllListeners('error')
    upstream.removeAllListeners('error')
    client.on('error', fail)
    upstream.on('error', fail)
    let ended = false
    const onEnd = () => { if (!ended) { ended = true; client.setTimeout(lingerMs) } }
    client.once('end', onEnd)
    upstream.once('end', onEnd)
    // The client socket sees every byte either way, so its timer is the connection's.
    client.setTimeout(idleTimeoutMs)
    client.on('timeout', () => {
      if (!ended) idleTimeouts++
      log('debug', `socks5 connection ${ended ? 'half-closed' : 'idle'}, closing`)
      client.destroy()
      upstream.destroy()
    })
    // A client that closed cleanly has had everything; the upstream may still be flushing what the client
    // sent before its end, but only for as long as it keeps taking it.
    client.once('close', () => {
      if (upstream.destroyed) return
      upstream.setTimeout(lingerMs, () => upstream.destroy())
    })
    reply(client, REPLY.succeeded, { address: upstream.localAddress ?? '', port: upstream.localPort ?? 0 })
    if (early.length > 0) upstream.write(early)
    client.pipe(upstream)
    upstream.pipe(client)
    client.resume()
  }

  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen({ host: opts.host, port: opts.port, ipv6Only: net.isIPv6(opts.host), backlog: 511 }, () => {
      server.off('error', reject)
      server.on('error', (err) => log('warn', 'socks5 listener error', { error: err.message }))
      const bound = server.address() as net.AddressInfo
      log('info', 'socks5 listening', { host: bound.address, port: bound.port })
      resolve({
        stats() {
          let bytes = closedBytes
          let handshaking = 0
          for (const c of conns) {
            if (c.handshaking) handshaking++
            else if (c.upstream) bytes += c.upstream.bytesRead + c.upstream.bytesWritten
          }
          return {
            address: { host: bound.address, port: bound.port },
            active: conns.size, handshaking, total, bytes, replies: { ...replies },
            malformed, handshakeTimeouts, idleTimeouts, authFailures, refused: { ...refused },
          }
        },
        async close() {
          const done = new Promise<void>((r) => server.close(() => r()))
          for (const c of conns) { c.client.destroy(); c.upstream?.destroy() }
          await done
        },
      })
    })
  })
}

/**
 * Ends with a last message, reading and discarding what still comes (closing with unread bytes would send a
 * reset, which can overtake the message), and closes for good after a grace period.
 */
function closeWith(sock: net.Socket, last: Buffer): void {
  sock.on('data', () => {})
  sock.resume()
  sock.end(last)
  const timer = setTimeout(() => sock.destroy(), 2000)
  sock.once('close', () => clearTimeout(timer))
}

function same(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b)
}

