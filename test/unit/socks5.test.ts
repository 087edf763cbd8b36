// The SOCKS5 server: its wire format as pure functions (and fuzzed), then the server itself in a namespace
// lab with a real client (curl): a "gw" namespace hosting the server, a "net" namespace with web and TCP
// services on IPv6 and IPv4 and a dnsmasq answering test names. Needs root for the namespaces.
import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLab, type Agent, type Lab } from '../../bench/netns.ts'
import {
  encodeReply, isLocalTarget, parseGreeting, parseRequest, parseUserPass, REPLY, replyForError, type Parsed, type Socks5Stats,
} from '../../lib/tunnels/socks5.ts'
import { rssKiB, until } from './wait.ts'

const AGENT = path.join(path.dirname(fileURLToPath(import.meta.url)), '../fixtures/socks5-agent.ts')

/** A small seeded generator, so a failing fuzz case can be replayed from its seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex')

describe('socks5 wire format (no network)', () => {
  it('greeting: needs its whole method list, rejects other versions and an empty list', () => {
    expect(parseGreeting(hex(''))).toEqual({ kind: 'more' })
    expect(parseGreeting(hex('05'))).toEqual({ kind: 'more' })
    expect(parseGreeting(hex('0502 00'))).toEqual({ kind: 'more' })
    expect(parseGreeting(hex('0502 0002 ff'))).toEqual({ kind: 'ok', value: [0, 2], used: 4 })
    expect(parseGreeting(hex('0401 00')).kind).toBe('bad')
    expect(parseGreeting(hex('0500')).kind).toBe('bad')
  })

  it('username/password (RFC 1929)', () => {
    const p = parseUserPass(hex('01 03 616263 02 7879'))
    expect(p.kind).toBe('ok')
    if (p.kind !== 'ok') return
    expect(p.value.username.toString()).toBe('abc')
    expect(p.value.password.toString()).toBe('xy')
    expect(p.used).toBe(8)
    expect(parseUserPass(hex('01 03 6162'))).toEqual({ kind: 'more' })
    expect(parseUserPass(hex('01 03 616263'))).toEqual({ kind: 'more' })
    expect(parseUserPass(hex('05 00')).kind).toBe('bad')
  })

  it('request with an IPv4, an IPv6 and a name target', () => {
    expect(parseRequest(hex('05010001 c6120502 0050 ee'))).toEqual({ kind: 'ok', value: { type: 'ipv4', host: '198.18.5.2', port: 80 }, used: 10 })
    expect(parseRequest(hex('05010004 20010db8000500000000000000000002 01bb'))).toEqual({ kind: 'ok', value: { type: 'ipv6', host: '2001:db8:5::2', port: 443 }, used: 22 })
    expect(parseRequest(Buffer.concat([hex('05010003 0a'), Buffer.from('Dual.Test.'), hex('1f90')]))).toEqual({ kind: 'ok', value: { type: 'name', host: 'dual.test', port: 8080 }, used: 17 })
    // Literals sent as names are addresses.
    expect(parseRequest(Buffer.concat([hex('05010003 0f'), Buffer.from('[2001:db8:5::2]'), hex('0050')]))).toMatchObject({ kind: 'ok', value: { type: 'ipv6', host: '2001:db8:5::2' } })
    expect(parseRequest(Buffer.concat([hex('05010003 0a'), Buffer.from('198.18.5.2'), hex('0050')]))).toMatchObject({ kind: 'ok', value: { type: 'ipv4', host: '198.18.5.2' } })
  })

  it('request: incomplete, unsupported commands and address types, bad names and ports', () => {
    const full = hex('05010004 20010db8000500000000000000000002 01bb')
    for (let n = 0; n < full.length; n++) expect(parseRequest(full.subarray(0, n))).toEqual({ kind: 'more' })
    // BIND and UDP ASSOCIATE: command not supported, answered once the whole request is in.
    expect(parseRequest(hex('05030001 00000000 0000'))).toMatchObject({ kind: 'bad', reply: REPLY.commandNotSupported })
    expect(parseRequest(hex('05030001 00000000'))).toEqual({ kind: 'more' })
    expect(parseRequest(hex('05020001 c6120502 0050'))).toMatchObject({ kind: 'bad', reply: REPLY.commandNotSupported })
    expect(parseRequest(hex('05010009 00'))).toMatchObject({ kind: 'bad', reply: REPLY.addressTypeNotSupported })
    expect(parseRequest(hex('05010001 c6120502 0000'))).toMatchObject({ kind: 'bad', reply: REPLY.generalFailure })
    expect(parseRequest(hex('04010001 c6120502 0050'))).toEqual({ kind: 'bad', why: expect.any(String) })
    for (const name of ['a b', 'x..y', '-x.test', 'x/y', 'a\u0000b', '']) {
      const req = Buffer.concat([hex('05010003'), Buffer.from([name.length]), Buffer.from(name, 'latin1'), hex('0050')])
      expect(parseRequest(req), name).toMatchObject({ kind: 'bad', reply: REPLY.hostUnreachable })
    }
  })

  it('reply encoding, with the bound address of either family', () => {
    expect(encodeReply(REPLY.succeeded, { address: '198.18.5.1', port: 40_000 }).toString('hex')).toBe('05000001c61205019c40')
    expect(encodeReply(REPLY.succeeded, { address: '2001:db8:5::1', port: 1 }).toString('hex')).toBe('0500000420010db80005000000000000000000010001')
    expect(encodeReply(REPLY.hostUnreachable).toString('hex')).toBe('05040001000000000000')
  })

  it('maps connect errors to reply codes', () => {
    expect(replyForError('ECONNREFUSED')).toBe(0x05)
    expect(replyForError('ENETUNREACH')).toBe(0x03)
    expect(replyForError('EHOSTUNREACH')).toBe(0x04)
    expect(replyForError('ETIMEDOUT')).toBe(0x06)
    expect(replyForError('EWHATEVER')).toBe(0x01)
    expect(replyForError(undefined)).toBe(0x01)
  })

  it('knows which targets are this host', () => {
    for (const a of ['127.0.0.1', '127.9.9.9', '0.0.0.0', '::1', '::', '::ffff:127.0.0.1']) expect(isLocalTarget(a), a).toBe(true)
    for (const a of ['198.18.5.2', '2001:db8::1', '::2', 'fe80::1']) expect(isLocalTarget(a), a).toBe(false)
  })

  it('fuzz: random bytes never throw, and every parse is "more", "bad" or takes bytes it has', () => {
    const seed = Date.now() >>> 0
    const rnd = prng(seed)
    const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => Math.floor(rnd() * 256)))
    const check = <T>(what: string, p: Parsed<T>, len: number) => {
      expect(['more', 'bad', 'ok'], `${what} seed ${seed}`).toContain(p.kind)
      if (p.kind === 'ok') expect(p.used, `${what} seed ${seed}`).toBeLessThanOrEqual(len)
    }
    for (let i = 0; i < 4000; i++) {
      // Random bytes, and random bytes behind a valid version byte so that the parsers get past it.
      const raw = bytes(Math.floor(rnd() * (i % 10 === 0 ? 600 : 30)))
      for (const buf of [raw, Buffer.concat([Buffer.from([5]), raw]), Buffer.concat([Buffer.from([5, 1, 0]), raw]), Buffer.concat([Buffer.from([1]), raw])]) {
        check('greeting', parseGreeting(buf), buf.length)
        check('request', parseRequest(buf), buf.length)
        check('userpass', parseUserPass(buf), buf.length)
        // A parse that needs more never gets finished by fewer bytes: a prefix of it needs more too.
        if (parseRequest(buf).kind === 'more') expect(parseRequest(buf.subarray(0, buf.length >> 1)).kind, `seed ${seed}`).toBe('more')
      }
    }
  })
})

const GW6 = '2001:db8:5::1'
const GW4 = '198.18.5.1'
const NET6 = '2001:db8:5::2'
const NET4 = '198.18.5.2'
/** Routed from gw to net, which does not forward: SYNs vanish. */
const SWALLOWED = '198.18.7.9'
/** An `unreachable` route in gw: EHOSTUNREACH. */
const UNREACHABLE = '198.18.66.1'
/** No route at all: ENETUNREACH. */
const NOROUTE = '2001:db8:77::1'
const PROXY = { host: '127.0.0.1', port: 1080 }
const MAX_CONN = 4
const IDLE_MS = 1500
const HANDSHAKE_MS = 1000
const HANDSHAKE_BYTES = 200



describe.skipIf(process.getuid?.() !== 0)('socks5 in a namespace lab (needs root for network namespaces; skipped otherwise)', () => {
  let lab: Lab
  let server: Agent
  let client: Agent
  let dir: string
  const stats = (name = 'main') => server.call<Socks5Stats>('socks5.stats', { name })

  /** curl inside gw, bounded; its exit code, output and error text. */
  function curl(args: string[], timeoutS = 8): Promise<{ code: number; out: string; err: string }> {
    return new Promise((resolve) => {
      execFile('ip', ['netns', 'exec', lab.ns('gw'), 'curl', '-sS', '--max-time', String(timeoutS), ...args], { timeout: (timeoutS + 5) * 1000, encoding: 'utf8' }, (err, out, errText) => {
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, out, err: errText })
      })
    })
  }
  const viaProxy = (url: string, extra: string[] = []) => curl(['--socks5-hostname', `${PROXY.host}:${PROXY.port}`, ...extra, url])
  const json = (r: { code: number; out: string; err: string }) => {
    expect(r.code, r.err).toBe(0)
    return JSON.parse(r.out) as { peer: string; path: string }
  }
  const raw = (hexBytes: string, timeoutMs: number, end = false, proxy = PROXY, trickleMs?: number) =>
    client.call<{ reply: string; outcome: string; ms: number }>('socks.raw', { proxy, hex: hexBytes.replace(/\s+/g, ''), end, timeoutMs, trickleMs })

  beforeAll(async () => {
    lab = createLab('dgsx')
    dir = mkdtempSync(path.join(tmpdir(), 'dgsx-'))
    try {
      await lab.addNs('gw', 'net')
      await lab.veth('gw', 'g0', 'net', 'n0')
      await lab.ip('gw', ['addr', 'add', `${GW6}/64`, 'dev', 'g0', 'nodad'])
      await lab.ip('gw', ['addr', 'add', `${GW4}/24`, 'dev', 'g0'])
      await lab.ip('net', ['addr', 'add', `${NET6}/64`, 'dev', 'n0', 'nodad'])
      await lab.ip('net', ['addr', 'add', `${NET4}/24`, 'dev', 'n0'])
      await lab.ip('gw', ['route', 'add', `${SWALLOWED}/32`, 'via', NET4])
      await lab.ip('gw', ['route', 'add', 'unreachable', `${UNREACHABLE}/32`])
      await lab.exec('net', 'sysctl', ['-qw', 'net.ipv4.ip_forward=0'])
      lab.spawn('net', 'dnsmasq', [
        '--keep-in-foreground', '--conf-file=/dev/null', `--pid-file=${path.join(dir, 'dnsmasq.pid')}`,
        '--no-resolv', '--no-hosts', '--bind-interfaces', `--listen-address=${NET6}`, '--port=53',
        // Authoritative for test.: unknown names are NXDOMAIN, a name without an AAAA has no data for it.
        '--local=/test/',
        `--host-record=dual.test,${NET4},${NET6}`,
        `--host-record=four.test,${NET4}`,
      ], true)
      let net: Agent
      ;[server, client, net] = await Promise.all([lab.agent('gw', AGENT), lab.agent('gw', AGENT), lab.agent('net', AGENT)])
      await net.call('net.start', { hosts: [NET6, NET4] })
      await until('dnsmasq listening', () => lab.exec('net', 'ss', ['-Hlun', 'sport = :53']), (out) => out.includes(NET6))
      await server.call('socks5.start', {
        opts: { ...PROXY, dns: [NET6], maxConnections: MAX_CONN, handshakeTimeoutMs: HANDSHAKE_MS, maxHandshakeBytes: HANDSHAKE_BYTES, idleTimeoutMs: IDLE_MS, connectTimeoutMs: 1000, resolveTimeoutMs: 2000 },
      })
    } catch (err) {
      await lab.teardown()
      rmSync(dir, { recursive: true, force: true })
      throw err
    }
  })

  afterAll(async () => {
    await lab?.teardown()
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  it('a name with an AAAA is reached over IPv6: the server sees the gateway\'s IPv6 address', async () => {
    expect(json(await viaProxy('http://dual.test/hello'))).toEqual({ peer: GW6, local: NET6, path: '/hello' })
  })

  it('a name with only an A record is reached over IPv4', async () => {
    expect(json(await viaProxy('http://four.test/four'))).toMatchObject({ peer: GW4, path: '/four' })
  })

  it('IPv4 and IPv6 address targets (curl resolving nothing itself)', async () => {
    expect(json(await curl(['--socks5', `${PROXY.host}:${PROXY.port}`, `http://${NET4}/v4`]))).toMatchObject({ peer: GW4 })
    expect(json(await curl(['--socks5', `${PROXY.host}:${PROXY.port}`, `http://[${NET6}]/v6`]))).toMatchObject({ peer: GW6 })
  })

  it('failures get their reply codes: unknown name 0x04, refused 0x05, no route 0x03, unreachable 0x04, timeout 0x06', async () => {
    const cases: [string, number][] = [
      ['http://nosuch.test/', 4],
      ['http://dual.test:8081/', 5],
      ['http://four.test:8081/', 5],
      [`http://[${NOROUTE}]/`, 3],
      [`http://${UNREACHABLE}/`, 4],
      [`http://${SWALLOWED}/`, 6],
    ]
    for (const [url, code] of cases) {
      const started = Date.now()
      const r = await viaProxy(url)
      // curl 7.88: exit 97 (proxy handshake error) with "... (code)".
      expect(r.code, `${url}: ${r.err}`).toBe(97)
      expect(r.err, url).toMatch(new RegExp(`\\(${code}\\)`))
      expect(Date.now() - started, url).toBeLessThan(4000)
    }
    expect((await stats()).replies).toMatchObject({ hostUnreachable: 2, connectionRefused: 2, networkUnreachable: 1, ttlExpired: 1 })
  })

  it('UDP ASSOCIATE and BIND are "command not supported", an unknown address type 0x08, then the connection ends', async () => {
    for (const [req, code] of [['05030001 00000000 0000', '07'], ['05020001 c6120502 0050', '07'], ['05010009 00000000 0000', '08']]) {
      const r = await raw(`050100 ${req}`, 3000)
      expect(r.reply).toBe(`050005${code}0001000000000000`)
      expect(r.outcome).toBe('end')
    }
  })

  it('bytes sent right behind the request reach the target once it is connected', async () => {
    const r = await raw(`050100 05010001 c6120502 1b58 ${Buffer.from('early').toString('hex')}`, 800)
    expect(r.reply.slice(0, 8)).toBe('05000500')
    expect(r.reply.endsWith(Buffer.from('early').toString('hex'))).toBe(true)
    expect(r.outcome).toBe('open')
  })

  it('half-close: the target answers after the client has finished sending, over IPv6', async () => {
    const r = await client.call<{ code: number; reply: string; sent: string }>('socks.halfclose', { proxy: PROXY, target: { host: 'dual.test', port: 7001 }, bytes: 300_000 })
    expect(r.code).toBe(0)
    expect(r.reply).toBe(r.sent)
  })

  it('RFC 1929: the right password passes, a wrong one is refused', async () => {
    await server.call('socks5.start', { name: 'auth', opts: { host: '127.0.0.1', port: 1082, dns: [NET6], credentials: { username: 'app', password: 's3cret' } } })
    try {
      expect(json(await curl(['-x', 'socks5h://app:s3cret@127.0.0.1:1082', 'http://dual.test/auth']))).toMatchObject({ peer: GW6 })
      const bad = await curl(['-x', 'socks5h://app:wrong@127.0.0.1:1082', 'http://dual.test/auth'])
      expect(bad.code).toBe(97)
      expect((await stats('auth')).authFailures).toBe(1)
      // No method we accept: 0xff.
      expect((await raw('050100', 2000, false, { host: '127.0.0.1', port: 1082 })).reply).toBe('05ff')
    } finally {
      await server.call('socks5.close', { name: 'auth' })
    }
  })

  it('a client that is not on this host may not reach this host\'s own services through us', async () => {
    await server.call('socks5.start', { name: 'lan', opts: { host: GW4, port: 1083, dns: [NET6] } })
    try {
      // From gw to its own 198.18.5.1: not loopback, so treated as a remote client.
      const r = await raw(`050100 05010001 7f000001 0438`, 2000, false, { host: GW4, port: 1083 })
      expect(r.reply).toBe('050005020001000000000000')
      const ok = await raw(`050100 05010001 c6120502 1b58`, 800, false, { host: GW4, port: 1083 })
      expect(ok.reply.slice(0, 8)).toBe('05000500')
    } finally {
      await server.call('socks5.close', { name: 'lan' })
    }
  })

  it('a silent client is closed at the handshake deadline, a trickling one too; malformed and oversized at once', async () => {
    const silent = await raw('', 4000)
    expect(['end', 'closed', 'reset']).toContain(silent.outcome)
    expect(silent.ms).toBeGreaterThanOrEqual(HANDSHAKE_MS - 100)
    expect(silent.ms).toBeLessThan(HANDSHAKE_MS + 1500)
    // A valid handshake, one byte every 300 ms: each byte would reset an idle timer, not the deadline.
    const before = (await stats()).handshakeTimeouts
    const trickle = await raw('050100 05010001 c6120502 1b58', 6000, false, PROXY, 300)
    expect(trickle.reply).toBe('0500')
    expect(trickle.ms).toBeLessThan(HANDSHAKE_MS + 1500)
    expect((await stats()).handshakeTimeouts).toBe(before + 1)
    for (const bytes of ['04010000', '0500', 'ffffffff']) {
      const r = await raw(bytes, 3000)
      expect(['closed', 'reset', 'end'], bytes).toContain(r.outcome)
      expect(r.reply, bytes).toBe('')
      expect(r.ms, bytes).toBeLessThan(500)
    }
    // A greeting of 255 methods (257 bytes) is valid, but more than this server takes before a request.
    const big = await raw(`05ff ${Array.from({ length: 255 }, (_, i) => i.toString(16).padStart(2, '0')).join('')}`, 3000)
    expect(big.reply).toBe('0500')
    expect(['closed', 'reset', 'end']).toContain(big.outcome)
    expect(big.ms).toBeLessThan(500)
  })

  it('fuzz: hundreds of random handshakes leave the server serving and no connection behind', async () => {
    const outcomes = await client.call<Record<string, number>>('socks.fuzz', { proxy: PROXY, count: 400, parallel: MAX_CONN - 1 }, 120_000)
    expect(outcomes.open ?? 0, JSON.stringify(outcomes)).toBe(0)
    await until('no connection left', stats, (s) => s.active === 0)
    expect(json(await viaProxy('http://dual.test/after-fuzz'))).toMatchObject({ peer: GW6 })
    expect((await stats()).malformed).toBeGreaterThan(100)
  }, 150_000)

  it('the connection limit: the next connection is refused while the limit is held, accepted once one closes', async () => {
    await until('idle server', stats, (s) => s.active === 0)
    const held = await client.call<{ id: number; code: number }[]>('socks.hold', { proxy: PROXY, target: { host: NET6, port: 7000 }, count: MAX_CONN })
    expect(held.map((h) => h.code)).toEqual(Array(MAX_CONN).fill(0))
    expect(await client.call('held.echo', { id: held[0].id, msg: 'ping', timeoutMs: 1000 })).toEqual({ outcome: 'echo', reply: 'ping' })
    const refusedBefore = (await stats()).refused.connections
    const over = await viaProxy('http://dual.test/over')
    expect(over.code).not.toBe(0)
    expect((await stats()).refused.connections).toBe(refusedBefore + 1)
    await client.call('held.closeAll')
    await until('slots free', stats, (s) => s.active === 0)
    expect(json(await viaProxy('http://dual.test/again'))).toMatchObject({ peer: GW6 })
  })

  it('an idle connection is closed after the idle timeout, and a busy one is not', async () => {
    const [idle, busy] = await client.call<{ id: number; code: number }[]>('socks.hold', { proxy: PROXY, target: { host: NET4, port: 7000 }, count: 2 })
    const idleBefore = (await stats()).idleTimeouts
    const end = Date.now() + IDLE_MS + 1000
    while (Date.now() < end) {
      expect(await client.call('held.echo', { id: busy.id, msg: 'x', timeoutMs: 1000 })).toMatchObject({ outcome: 'echo' })
      await new Promise((r) => setTimeout(r, IDLE_MS / 4))
    }
    // The server ended it (the client allows half-open sockets, so it stays half-closed on its side).
    expect(await client.call('held.state', { id: idle.id })).toMatchObject({ ended: true })
    expect(await client.call('held.state', { id: busy.id })).toEqual({ closed: false, ended: false })
    expect((await stats()).idleTimeouts).toBe(idleBefore + 1)
    await client.call('held.closeAll')
  })

  it('the supervisor starts the server when turned on, restarts it on a change, stops it when turned off', async () => {
    const base = { socks5: false, socks5Host: '127.0.0.1', socks5Port: 1090, socks5Dns: [NET6], socks5MaxConnections: 8 }
    type State = { route: { enabled: boolean; listening: boolean; port: number; stats?: Socks5Stats; lastError?: string }; log: string[] }
    await server.call('sup.start', { config: base })
    expect((await server.call<State>('sup.state')).route).toMatchObject({ enabled: false, listening: false })
    await server.call('sup.set', { config: { socks5: true } })
    expect((await server.call<State>('sup.state')).route).toMatchObject({ enabled: true, listening: true, port: 1090, stats: { active: 0 } })
    expect(json(await curl(['--socks5-hostname', '127.0.0.1:1090', 'http://dual.test/sup']))).toMatchObject({ peer: GW6 })
    await server.call('sup.set', { config: { socks5Port: 1091 } })
    expect((await server.call<State>('sup.state')).route).toMatchObject({ listening: true, port: 1091 })
    expect((await curl(['--socks5-hostname', '127.0.0.1:1090', 'http://dual.test/sup'])).code).not.toBe(0)
    expect(json(await curl(['--socks5-hostname', '127.0.0.1:1091', 'http://dual.test/sup']))).toMatchObject({ peer: GW6 })
    // A port already taken (the main server's): reported, retried, not thrown.
    await server.call('sup.set', { config: { socks5Port: PROXY.port } })
    expect((await server.call<State>('sup.state')).route).toMatchObject({ listening: false, lastError: expect.stringMatching(/EADDRINUSE/) })
    await server.call('sup.set', { config: { socks5: false } })
    const off = await server.call<State>('sup.state')
    expect(off.route).toMatchObject({ enabled: false, listening: false })
    expect(off.log.filter((l) => l.includes('EADDRINUSE'))).toHaveLength(1)
    await server.call('sup.close')
    expect((await curl(['--socks5-hostname', '127.0.0.1:1091', 'http://dual.test/sup'])).code).not.toBe(0)
  })

  it('256 idle connections: the server\'s memory growth', async () => {
    await server.call('socks5.close')
    await server.call('socks5.start', { opts: { ...PROXY, dns: [NET6], maxConnections: 300 } })
    await new Promise((r) => setTimeout(r, 300))
    const before = rssKiB(server.pid)
    const held = await client.call<{ code: number }[]>('socks.hold', { proxy: PROXY, target: { host: NET6, port: 7000 }, count: 256 }, 60_000)
    expect(held.filter((h) => h.code === 0)).toHaveLength(256)
    expect((await stats()).active).toBe(256)
    const after = rssKiB(server.pid)
    console.log(`socks5: RSS ${before} KiB before, ${after} KiB with 256 idle connections (+${after - before} KiB, ${((after - before) / 256).toFixed(1)} KiB each)`)
    expect(after - before).toBeLessThan(32 * 1024)
    await client.call('held.closeAll')
    await until('all closed', stats, (s) => s.active === 0)
  }, 90_000)

  it('close() shuts the listener', async () => {
    await server.call('socks5.close')
    expect((await viaProxy('http://dual.test/closed')).code).toBe(7)
  })
})
