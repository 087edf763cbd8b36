// The one user-space relay for every IPv6-to-IPv4 listener: the kernel cannot translate families statefully,
// so each rule is a listener on a device's WAN IPv6 address that connects on to the device's LAN IPv4
// address. Outgoing sockets are never bound: the kernel picks the router's LAN address by routing, so the
// device sees the router as its peer and its replies come back through us. The forwarder (lib/forwarder) uses
// the same relay from IPv4 and IPv6 listeners to a home's IPv6: a rule whose target moves keeps its listener,
// new connections go to the new target and those to the old one close after the rule's grace.
import dgram from 'node:dgram'
import net from 'node:net'
import { fairShare, sourceKey } from '../core/fair-share.ts'
import { abortConnection, closeWaitConnections, connectionKey } from '../net/sockets.ts'
import { proxyV2Header } from './proxy-v2.ts'

export interface Endpoint {
  host: string
  port: number
}

/**
 * Listen on listen.host:listen.port (an IPv4 address, or an IPv6 one with v6only) and relay to target (any
 * family, an IP literal). Rules with the same proto and listen address and port are one listener: applying
 * one with another target (or tag, grace, proxyProtocol) changes that listener in place.
 */
export interface RelayRule {
  listen: Endpoint
  target: Endpoint
  proto: 'tcp' | 'udp'
  /** What the rule belongs to (a forward's name), to add up its listeners' counters. */
  tag?: string
  /** TCP: a PROXY protocol v2 header toward the target, with the client's address and the one it reached. */
  proxyProtocol?: boolean
  /** When the target changes: connections and UDP sessions to the old one are closed after this long. Default 0: at once. */
  graceMs?: number
}

export type RelayLogLevel = 'debug' | 'info' | 'warn' | 'error'

export interface RelayOptions {
  /** Upstream TCP connect timeout; the client is reset when it expires. Default 10 s. */
  connectTimeoutMs?: number
  /** A TCP connection with no traffic either way for this long is closed. Default 1 h. */
  idleTimeoutMs?: number
  /** Relayed TCP connections across all listeners; a client beyond it is reset at once. Default 1024. */
  maxConnections?: number
  /** Of those, what one source (an IPv6 /64, or an IPv4 address) may hold. Default fairShare(maxConnections). */
  maxConnectionsPerSource?: number
  /** A connection one side has ended is closed after this long without traffic. Default 30 s. */
  lingerMs?: number
  /** A UDP session (one client address:port) with no traffic either way for this long is closed. Default 60 s. */
  udpIdleMs?: number
  /** UDP sessions across all listeners; datagrams that would open one more are dropped. Default 1024. */
  maxUdpSessions?: number
  /** Of those, what one source may hold. Default fairShare(maxUdpSessions). */
  maxUdpSessionsPerSource?: number
  /** The largest read buffer of one direction of a connection (each starts at 16 KiB). Default 256 KiB. */
  highWaterMark?: number
  /** Bytes that read buffers beyond their first 16 KiB may take across the relay. Default 16 MiB. */
  bufferBudget?: number
  log?: (level: RelayLogLevel, msg: string, fields?: Record<string, unknown>) => void
  /** A TCP connection to a rule's target failed before it was established (refused, unreachable, timed out). */
  onConnectFailure?: (rule: RelayRule, error: string) => void
}

export interface ApplyResult {
  added: number
  removed: number
  failed: { rule: RelayRule; error: string }[]
  /** Listeners kept open whose target changed (only when there were any). */
  retargeted?: number
}

/** One open listener's rule and its own counters. */
export interface ListenerStats {
  rule: RelayRule
  tcpActive: number
  tcpTotal: number
  udpSessions: number
  /** Payload bytes received from either side, since the listener opened. */
  bytes: number
  /** TCP connections whose target did not answer or refused. */
  connectFailures: number
}

export interface RelayStats {
  listeners: number
  tcpActive: number
  tcpTotal: number
  udpSessions: number
  /** Payload bytes received from either side, TCP and UDP, since the relay was created. */
  bytes: number
  /** Read-buffer bytes beyond the first 16 KiB of each, across the relay (at most bufferBudget). */
  bufferBytes: number
  /** Connections reset and new UDP sessions dropped, by the limit that refused them. */
  refused: Record<Refusal, number>
}

type Refusal = 'connections' | 'connectionsPerSource' | 'udpSessions' | 'udpSessionsPerSource'

export interface Relay {
  /** Reconciles listeners with `rules`: opens new ones, closes those not wanted, leaves the rest untouched. */
  apply(rules: RelayRule[]): Promise<ApplyResult>
  /** Rules that have an open listener. */
  list(): RelayRule[]
  /** Each open listener with its counters. */
  listeners(): ListenerStats[]
  stats(): RelayStats
  close(): Promise<void>
}

interface Listener {
  rule: RelayRule
  close(): Promise<void>
  /** Takes the new rule (same listen address); what went to another target is closed after its grace. */
  retarget(rule: RelayRule): void
  stats(): ListenerStats
}

/** A listener's own counters, beside its live connections or sessions. */
interface Counters { total: number; closedBytes: number; connectFailures: number }

interface TcpConn {
  /** targetKey of where it goes. */
  target: string
  graceTimer?: NodeJS.Timeout
  client: net.Socket
  upstream: net.Socket
  up: Forwarder
  down: Forwarder
  /** A side has ended: the connection only lingers. */
  ended: boolean
  /** Called when a side is known to have ended, by its 'end' or from the kernel's table. */
  onEnd(): void
}

interface UdpSession {
  key: string
  target: string
  graceTimer?: NodeJS.Timeout
  up: dgram.Socket
  last: number
  /** Datagrams that arrived before the upstream socket was connected; null once it is. */
  queue: Buffer[] | null
  closed: boolean
  source: string
}

const UDP_QUEUE_MAX = 64
const READ_MIN = 16 * 1024
/** A direction with no read for this long gives its large buffer back. */
const QUIET_MS = 5000

export function createRelay(opts: RelayOptions = {}): Relay {
  const connectTimeoutMs = opts.connectTimeoutMs ?? 10_000
  const idleTimeoutMs = opts.idleTimeoutMs ?? 3_600_000
  const maxConnections = opts.maxConnections ?? 1024
  const maxConnectionsPerSource = opts.maxConnectionsPerSource ?? fairShare(maxConnections)
  const lingerMs = opts.lingerMs ?? 30_000
  const udpIdleMs = opts.udpIdleMs ?? 60_000
  const maxUdpSessions = opts.maxUdpSessions ?? 1024
  const maxUdpSessionsPerSource = opts.maxUdpSessionsPerSource ?? fairShare(maxUdpSessions)
  const highWaterMark = Math.max(opts.highWaterMark ?? 256 * 1024, READ_MIN)
  const budget: BufferBudget = { left: opts.bufferBudget ?? 16 * 1024 * 1024 }
  const budgetTotal = budget.left
  const log = opts.log ?? (() => {})

  const listeners = new Map<string, Listener>()
  const conns = new Set<TcpConn>()
  const connsBySource = new Map<string, number>()
  const udpBySource = new Map<string, number>()
  let tcpTotal = 0
  let closedBytes = 0
  let udpSessions = 0
  let closed = false
  let adoptFailedLogged = false
  let quietSweeper: NodeJS.Timeout | undefined
  const refused: Record<Refusal, number> = { connections: 0, connectionsPerSource: 0, udpSessions: 0, udpSessionsPerSource: 0 }
  const refusalLoggedAt = new Map<Refusal, number>()
  // A flood must not become a flood of log lines: one warning per limit per 10 s at most.
  const refuse = (why: Refusal, rule: RelayRule, source: string, max: number) => {
    refused[why]++
    if (Date.now() - (refusalLoggedAt.get(why) ?? 0) < 10_000) return
    refusalLoggedAt.set(why, Date.now())
    const what = why.startsWith('udp') ? 'udp session' : 'connection'
    log('warn', `relay ${what} limit${why.endsWith('PerSource') ? ' for one source' : ''} reached, refusing`, { rule: ruleKey(rule), source, max, refusedSoFar: refused[why] })
  }
  const count = (m: Map<string, number>, key: string, by: number) => {
    const n = (m.get(key) ?? 0) + by
    if (n > 0) m.set(key, n)
    else m.delete(key)
  }
  // apply() and close() run one at a time, in call order.
  let queue: Promise<unknown> = Promise.resolve()
  const serial = <T>(fn: () => Promise<T>): Promise<T> => {
    const next = queue.then(fn)
    queue = next.catch(() => {})
    return next
  }

  /** Ends what still goes to another target than the listener's, after the grace (0: now). */
  function expireStale<T extends { target: string; graceTimer?: NodeJS.Timeout }>(listener: Listener, items: Iterable<T>, end: (item: T) => void): number {
    const current = targetKey(listener.rule)
    const graceMs = listener.rule.graceMs ?? 0
    let n = 0
    for (const item of items) {
      if (item.target === current) continue
      n++
      if (graceMs <= 0) { end(item); continue }
      // The target may come back within the grace: only what still goes elsewhere then is ended.
      item.graceTimer ??= setTimeout(() => {
        item.graceTimer = undefined
        if (item.target !== targetKey(listener.rule)) end(item)
      }, graceMs)
    }
    return n
  }

  function retargetLog(listener: Listener, before: RelayRule, stale: number): void {
    if (targetKey(before) === targetKey(listener.rule)) return
    log('info', 'relay listener retargeted', { rule: ruleKey(listener.rule), from: targetKey(before), open: stale, graceMs: listener.rule.graceMs ?? 0 })
  }

  function openTcp(rule: RelayRule): Promise<Listener> {
    const own = new Set<TcpConn>()
    const counters: Counters = { total: 0, closedBytes: 0, connectFailures: 0 }
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true })
    const listener: Listener = {
      rule,
      async close() {
        const done = new Promise<void>((resolve) => server.close(() => resolve()))
        for (const c of own) { c.client.destroy(); c.upstream.destroy() }
        await done
      },
      retarget(next) {
        const before = listener.rule
        listener.rule = next
        retargetLog(listener, before, expireStale(listener, own, (c) => {
          log('debug', 'relay connection to an old target closed', { rule: ruleKey(listener.rule), target: c.target })
          c.client.destroy()
          c.upstream.destroy()
        }))
      },
      stats() {
        let bytes = counters.closedBytes
        for (const c of own) bytes += c.client.bytesRead + c.upstream.bytesRead
        return { rule: listener.rule, tcpActive: own.size, tcpTotal: counters.total, udpSessions: 0, bytes, connectFailures: counters.connectFailures }
      },
    }
    server.on('connection', (client) => relayTcp(listener.rule, client, own, counters))
    return new Promise((resolve, reject) => {
      server.once('error', reject)
      server.listen({ host: rule.listen.host, port: rule.listen.port, ipv6Only: net.isIPv6(rule.listen.host), backlog: 511 }, () => {
        server.off('error', reject)
        // Accept errors (EMFILE) surface here; an unhandled 'error' would end the whole process.
        server.on('error', (err) => log('warn', 'relay listener error', { rule: ruleKey(rule), error: err.message }))
        resolve(listener)
      })
    })
  }

  function relayTcp(rule: RelayRule, accepted: net.Socket, own: Set<TcpConn>, counters: Counters): void {
    const source = sourceKey(accepted.remoteAddress ?? '')
    const full = conns.size >= maxConnections ? 'connections' : (connsBySource.get(source) ?? 0) >= maxConnectionsPerSource ? 'connectionsPerSource' : undefined
    if (full) {
      refuse(full, rule, source, full === 'connections' ? maxConnections : maxConnectionsPerSource)
      accepted.on('error', () => {})
      accepted.resetAndDestroy()
      return
    }
    const up = forwarder(highWaterMark, budget)
    const down = forwarder(highWaterMark, budget)
    const header = rule.proxyProtocol ? proxyHeaderOf(accepted) : undefined
    const client = adopt(accepted, up.onread)
    if (!client) {
      // Only a Node whose net.Socket internals changed gets here; the relay tests would fail on it first.
      if (!adoptFailedLogged) log('error', 'relay cannot take over accepted connections (net.Socket has no _handle); refusing them', { rule: ruleKey(rule) })
      adoptFailedLogged = true
      return
    }
    const upstream = net.connect({ host: rule.target.host, port: rule.target.port, allowHalfOpen: true, noDelay: true, onread: down.onread })
    // Queued before anything of the client's: the client is only read once the upstream is connected.
    if (header) upstream.write(header)
    up.join(client, upstream)
    down.join(upstream, client)
    const connectTimer = setTimeout(() => fail('upstream', new Error(`connect timeout after ${connectTimeoutMs} ms`)), connectTimeoutMs)
    const conn: TcpConn = { target: targetKey(rule), client, upstream, up, down, ended: false, onEnd: () => {} }
    conns.add(conn)
    own.add(conn)
    count(connsBySource, source, 1)
    tcpTotal++
    counters.total++
    quietSweeper ??= setInterval(() => void sweepQuiet(), Math.min(QUIET_MS, Math.max(100, lingerMs / 3))).unref()
    let open = 2
    const onClose = () => {
      if (--open > 0) return
      clearTimeout(connectTimer)
      clearTimeout(conn.graceTimer)
      conns.delete(conn)
      own.delete(conn)
      count(connsBySource, source, -1)
      up.release()
      down.release()
      closedBytes += client.bytesRead + upstream.bytesRead
      counters.closedBytes += client.bytesRead + upstream.bytesRead
      if (conns.size === 0 && quietSweeper) { clearInterval(quietSweeper); quietSweeper = undefined }
    }
    client.on('close', onClose)
    upstream.on('close', onClose)

    // An error on either side ends both, with a reset so the other peer learns it was not a clean end.
    let connected = false
    const fail = (side: string, err: Error) => {
      clearTimeout(connectTimer)
      log('debug', 'relay connection failed', { rule: ruleKey(rule), side, error: err.message })
      if (side === 'upstream' && !connected) {
        counters.connectFailures++
        opts.onConnectFailure?.(rule, err.message)
      }
      abortConnection(client)
      abortConnection(upstream)
    }
    client.on('error', (err) => fail('client', err))
    upstream.on('error', (err) => fail('upstream', err))

    // The client socket counts reads and writes in both directions, so one timer covers the connection. Once
    // either side has ended, the connection only lingers: a peer that stopped reading must not hold a slot
    // for the idle timeout.
    client.on('timeout', () => {
      log('debug', `relay connection ${conn.ended ? 'half-closed' : 'idle'}, closing`, { rule: ruleKey(rule) })
      client.destroy()
      upstream.destroy()
    })
    conn.onEnd = () => {
      if (conn.ended) return
      conn.ended = true
      if (connected) client.setTimeout(Math.min(lingerMs, idleTimeoutMs))
    }
    client.once('end', conn.onEnd)
    upstream.once('end', conn.onEnd)
    upstream.once('connect', () => {
      clearTimeout(connectTimer)
      connected = true
      client.setTimeout(conn.ended ? Math.min(lingerMs, idleTimeoutMs) : idleTimeoutMs)
      client.resume()
    })
  }

  let sweeping = false
  async function sweepQuiet(): Promise<void> {
    if (sweeping) return
    sweeping = true
    try {
      const before = Date.now() - QUIET_MS
      for (const c of conns) { c.up.shrinkIfQuiet(before); c.down.shrinkIfQuiet(before) }
      // A peer that sent its FIN behind data the other side does not take: the FIN waits unread behind that
      // data, so no 'end' comes, but the kernel's table shows the socket in CLOSE_WAIT.
      const stalled = [...conns].filter((c) => !c.ended && (c.up.stalled() || c.down.stalled()))
      if (stalled.length === 0) return
      const closeWait = await closeWaitConnections()
      for (const c of stalled) if ([c.client, c.upstream].some((sock) => closeWait.has(keyOf(sock)))) c.onEnd()
    } catch (err) {
      log('debug', 'relay cannot read the kernel\'s connection table', { error: err instanceof Error ? err.message : String(err) })
    } finally {
      sweeping = false
    }
  }

  function openUdp(rule: RelayRule): Promise<Listener> {
    const sessions = new Map<string, UdpSession>()
    const counters: Counters = { total: 0, closedBytes: 0, connectFailures: 0 }
    const sock = net.isIPv6(rule.listen.host) ? dgram.createSocket({ type: 'udp6', ipv6Only: true }) : dgram.createSocket('udp4')
    let sweeper: NodeJS.Timeout | undefined

    const endSession = (key: string, s: UdpSession) => {
      if (s.closed) return
      s.closed = true
      clearTimeout(s.graceTimer)
      sessions.delete(key)
      udpSessions--
      count(udpBySource, s.source, -1)
      try { s.up.close() } catch { /* already closed by an error */ }
      if (sessions.size === 0 && sweeper) { clearInterval(sweeper); sweeper = undefined }
    }
    const sweep = () => {
      const cutoff = Date.now() - udpIdleMs
      for (const [key, s] of sessions) if (s.last <= cutoff) endSession(key, s)
    }

    const startSession = (key: string, source: string, address: string, port: number): UdpSession => {
      const rule = listener.rule
      const family = net.isIPv6(rule.target.host) ? 'udp6' : 'udp4'
      const up = dgram.createSocket(family)
      const s: UdpSession = { key, target: targetKey(rule), up, last: Date.now(), queue: [], closed: false, source }
      sessions.set(key, s)
      counters.total++
      udpSessions++
      count(udpBySource, source, 1)
      sweeper ??= setInterval(sweep, Math.max(100, Math.min(udpIdleMs / 2, 5000))).unref()
      up.on('message', (msg) => {
        s.last = Date.now()
        closedBytes += msg.length
        counters.closedBytes += msg.length
        sock.send(msg, port, address, dropped)
      })
      // Port unreachable from the device arrives here on a connected socket: drop the session, the client may retry.
      up.on('error', (err) => {
        log('debug', 'relay udp session failed', { rule: ruleKey(rule), client: `[${address}]:${port}`, error: err.message })
        endSession(key, s)
      })
      // Connected, so the kernel only hands us datagrams from the target.
      up.connect(rule.target.port, rule.target.host, () => {
        const queued = s.queue ?? []
        s.queue = null
        if (!s.closed) for (const m of queued) up.send(m, dropped)
      })
      return s
    }

    sock.on('message', (msg, rinfo) => {
      const key = `${rinfo.address}|${rinfo.port}`
      let s = sessions.get(key)
      if (!s) {
        const source = sourceKey(rinfo.address)
        if (udpSessions >= maxUdpSessions) return refuse('udpSessions', listener.rule, source, maxUdpSessions)
        if ((udpBySource.get(source) ?? 0) >= maxUdpSessionsPerSource) return refuse('udpSessionsPerSource', listener.rule, source, maxUdpSessionsPerSource)
        s = startSession(key, source, rinfo.address, rinfo.port)
      }
      s.last = Date.now()
      closedBytes += msg.length
      counters.closedBytes += msg.length
      if (s.queue) { if (s.queue.length < UDP_QUEUE_MAX) s.queue.push(msg) } else s.up.send(msg, dropped)
    })

    const listener: Listener = {
      rule,
      async close() {
        if (sweeper) clearInterval(sweeper)
        for (const [key, s] of sessions) endSession(key, s)
        await new Promise<void>((resolve) => sock.close(() => resolve()))
      },
      retarget(next) {
        const before = listener.rule
        listener.rule = next
        retargetLog(listener, before, expireStale(listener, [...sessions.values()], (s) => endSession(s.key, s)))
      },
      stats: () => ({ rule: listener.rule, tcpActive: 0, tcpTotal: 0, udpSessions: sessions.size, bytes: counters.closedBytes, connectFailures: 0 }),
    }
    return new Promise((resolve, reject) => {
      sock.once('error', reject)
      sock.bind({ address: rule.listen.host, port: rule.listen.port, exclusive: true }, () => {
        sock.off('error', reject)
        sock.on('error', (err) => log('warn', 'relay udp listener error', { rule: ruleKey(rule), error: err.message }))
        resolve(listener)
      })
    })
  }

  async function reconcile(rules: RelayRule[]): Promise<ApplyResult> {
    if (closed) throw new Error('relay is closed')
    const failed: ApplyResult['failed'] = []
    // By listen key: one listener per proto, address and port, whatever its target.
    const wanted = new Map<string, RelayRule>()
    for (const rule of rules) {
      const problem = invalid(rule)
      if (problem) { failed.push({ rule, error: problem }); continue }
      const lk = listenKey(rule)
      const first = wanted.get(lk)
      if (first && ruleKey(first) !== ruleKey(rule)) failed.push({ rule, error: `another rule already listens on ${lk}` })
      if (!first) wanted.set(lk, rule)
    }

    const gone = [...listeners].filter(([key]) => !wanted.has(key))
    await Promise.all(gone.map(async ([key, l]) => {
      listeners.delete(key)
      await l.close()
      log('info', 'relay listener closed', { rule: ruleKey(l.rule) })
    }))

    // Same listener, something else changed: in place, so the listener and what goes to a kept target stay.
    let retargeted = 0
    for (const [key, rule] of wanted) {
      const l = listeners.get(key)
      if (!l || sameRule(l.rule, rule)) continue
      if (targetKey(l.rule) !== targetKey(rule)) retargeted++
      l.retarget(rule)
    }

    let added = 0
    await Promise.all([...wanted].filter(([key]) => !listeners.has(key)).map(async ([key, rule]) => {
      try {
        listeners.set(key, await (rule.proto === 'tcp' ? openTcp(rule) : openUdp(rule)))
        added++
        log('info', 'relay listener open', { rule: ruleKey(rule) })
      } catch (err) {
        // EADDRNOTAVAIL: the WAN address is not (yet) configured, or still tentative during DAD. The next
        // reconcile retries.
        const error = err instanceof Error ? err.message : String(err)
        failed.push({ rule, error })
        log('warn', 'relay listener failed', { rule: ruleKey(rule), error })
      }
    }))
    return { added, removed: gone.length, failed, ...(retargeted > 0 ? { retargeted } : {}) }
  }

  return {
    apply: (rules) => serial(() => reconcile(rules)),
    list: () => [...listeners.values()].map((l) => l.rule),
    listeners: () => [...listeners.values()].map((l) => l.stats()),
    stats() {
      let bytes = closedBytes
      for (const c of conns) bytes += c.client.bytesRead + c.upstream.bytesRead
      return { listeners: listeners.size, tcpActive: conns.size, tcpTotal, udpSessions, bytes, bufferBytes: budgetTotal - budget.left, refused: { ...refused } }
    },
    close: () => serial(async () => {
      closed = true
      if (quietSweeper) { clearInterval(quietSweeper); quietSweeper = undefined }
      const all = [...listeners.values()]
      listeners.clear()
      await Promise.all(all.map((l) => l.close()))
    }),
  }
}

/** One direction of a TCP connection: what `from` reads is written to `to`. */
interface Forwarder {
  /** For the reading socket's constructor. */
  onread: net.OnReadOpts
  /** Starts the direction; the end of `from` ends `to` (half-close, since both allow half-open). */
  join(from: net.Socket, to: net.Socket): void
  /** Back to the first 16 KiB when nothing was read since `before` and no write holds the buffer. */
  shrinkIfQuiet(before: number): void
  /** Gives the buffer's share back to the budget; the direction reads no more. */
  release(): void
  /** A write waits for the receiving side to take it. */
  stalled(): boolean
}

/** Bytes that read buffers may take beyond their first READ_MIN, shared by every direction of the relay. */
interface BufferBudget { left: number }

// Reads go into the direction's own buffer, and each chunk is written on from there: no allocation per read
// and no stream machinery (about a third less CPU per byte than pipe(), see bench/relay.ts). While a write
// is pending it still references the buffer, so reading pauses until it completes (that is also the
// backpressure). The buffer grows while reads fill it, up to `max` and as far as the relay's budget allows,
// and shrinks back when reads are small or stop: bulk transfers get big reads, quiet connections hold 16 KiB,
// and a thousand stalled ones cannot take more than the budget.
function forwarder(max: number, budget: BufferBudget): Forwarder {
  let from: net.Socket | undefined
  let to: net.Socket | undefined
  let buf = Buffer.allocUnsafe(READ_MIN)
  let lastRead = 0
  let lastReadAt = Date.now()
  let writing = false
  let released = false
  const resize = (size: number) => {
    budget.left += buf.length - size
    buf = Buffer.allocUnsafe(size)
  }
  return {
    onread: {
      buffer: () => {
        const grown = Math.min(buf.length * 4, max)
        if (lastRead === buf.length && grown > buf.length && budget.left >= grown - buf.length) resize(grown)
        else if (lastRead <= READ_MIN / 2 && buf.length > READ_MIN) resize(READ_MIN)
        return buf
      },
      callback: (n, chunk) => {
        lastRead = n
        lastReadAt = Date.now()
        const src = from!
        const dst = to!
        let waiting = false
        writing = true
        dst.write(chunk.subarray(0, n), () => {
          writing = false
          if (waiting) src.resume()
        })
        if (dst.writableLength === 0) return true
        waiting = true
        return false
      },
    },
    join(src, dst) {
      from = src
      to = dst
      src.on('end', () => dst.end())
    },
    shrinkIfQuiet(before) {
      if (!released && !writing && lastReadAt < before && buf.length > READ_MIN) resize(READ_MIN)
    },
    stalled: () => writing && !released,
    release() {
      if (released) return
      released = true
      budget.left += buf.length - READ_MIN
    },
  }
}

// net.Server in Node 20 cannot give accepted sockets the onread option, so the accepted connection's handle
// moves to a socket that has it, paused until resumed. The accepted socket is then destroyed without its
// handle, which only releases the server's count of it.
function adopt(accepted: net.Socket, onread: net.OnReadOpts): net.Socket | undefined {
  const inner = accepted as unknown as { _handle: object | null }
  const handle = inner._handle
  inner._handle = null
  accepted.destroy()
  if (!handle) return undefined
  return new net.Socket({ handle, allowHalfOpen: true, pauseOnCreate: true, onread } as net.SocketConstructorOpts)
}

function keyOf(sock: net.Socket): string {
  return connectionKey(sock.localAddress ?? '', sock.localPort ?? 0, sock.remoteAddress ?? '', sock.remotePort ?? 0)
}

/** UDP is lossy: a datagram that cannot be sent (ENOBUFS, unreachable) is dropped, not an 'error' event. */
function dropped(): void {}

/** Resets a connected TCP socket (RST instead of FIN); one still connecting is simply dropped. */

function invalid(rule: RelayRule): string | undefined {
  if (rule?.proto !== 'tcp' && rule?.proto !== 'udp') return `proto must be tcp or udp`
  if (!net.isIP(rule.listen?.host ?? '')) return `listen host must be an IP address: ${rule.listen?.host}`
  if (!net.isIP(rule.target?.host ?? '')) return `target host must be an IP address: ${rule.target?.host}`
  for (const p of [rule.listen.port, rule.target.port]) if (!Number.isInteger(p) || p < 1 || p > 65_535) return `bad port: ${p}`
  if (rule.graceMs !== undefined && !(Number.isFinite(rule.graceMs) && rule.graceMs >= 0 && rule.graceMs <= 2 ** 31 - 1)) return `bad graceMs: ${rule.graceMs}`
  return undefined
}

const sameRule = (a: RelayRule, b: RelayRule) =>
  ruleKey(a) === ruleKey(b) && a.tag === b.tag && !!a.proxyProtocol === !!b.proxyProtocol && (a.graceMs ?? 0) === (b.graceMs ?? 0)

/** The PROXY v2 header for an accepted connection: its client, and the address and port it reached. */
function proxyHeaderOf(accepted: net.Socket): Buffer | undefined {
  try {
    return proxyV2Header({ host: accepted.remoteAddress ?? '', port: accepted.remotePort ?? 0 }, { host: accepted.localAddress ?? '', port: accepted.localPort ?? 0 })
  } catch {
    // The client is already gone (no address): the connection fails on its own.
    return undefined
  }
}

/** One spelling per address, so `2001:DB8:0::1` and `2001:db8::1` are the same listener. */
function canonical(host: string): string {
  if (!net.isIPv6(host) || host.includes('%')) return host.toLowerCase()
  return new URL(`http://[${host}]/`).hostname.slice(1, -1)
}

function hostPort(host: string, port: number): string {
  const h = canonical(host)
  return `${net.isIPv6(h) ? `[${h}]` : h}:${port}`
}

function listenKey(rule: RelayRule): string {
  return `${rule.proto} ${hostPort(rule.listen.host, rule.listen.port)}`
}

function targetKey(rule: RelayRule): string {
  return hostPort(rule.target.host, rule.target.port)
}

export function ruleKey(rule: RelayRule): string {
  return `${listenKey(rule)} > ${targetKey(rule)}`
}
