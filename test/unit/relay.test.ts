// The relay against real sockets: an IPv6-only client namespace, a router namespace hosting the relay, and
// an IPv4-only device namespace with a few services. Needs root for the namespaces.
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLab, type Agent, type Lab } from '../../bench/netns.ts'
import { createRelay, ruleKey, type ApplyResult, type RelayRule, type RelayStats } from '../../lib/reach/relay.ts'
import { rssKiB, until } from './wait.ts'

const AGENT = path.join(path.dirname(fileURLToPath(import.meta.url)), '../fixtures/relay-agent.ts')
const R6 = '2001:db8:99::1'
const R6_LATE = '2001:db8:99::5'
const DEV = '198.18.99.2'
const HOLE = '198.18.99.77'

const tcp = (port: number, target: string, tport: number, host = R6): RelayRule => ({ proto: 'tcp', listen: { host, port }, target: { host: target, port: tport } })
const RULES: RelayRule[] = [
  tcp(80, DEV, 8080),
  tcp(7000, DEV, 7000),
  tcp(7001, DEV, 7001),
  tcp(7002, DEV, 7002),
  tcp(7003, DEV, 7003),
  tcp(7100, DEV, 7000),
  tcp(81, HOLE, 80),
  tcp(80, DEV, 8080, R6_LATE),
  { proto: 'udp', listen: { host: R6, port: 53 }, target: { host: DEV, port: 5353 } },
]
const MAX_CONN = 6



describe('relay rules (no network)', () => {
  it('rejects malformed rules without opening anything', async () => {
    const relay = createRelay()
    const bad = [
      { proto: 'sctp', listen: { host: R6, port: 1 }, target: { host: DEV, port: 1 } },
      { proto: 'tcp', listen: { host: 'router.lan', port: 1 }, target: { host: DEV, port: 1 } },
      { proto: 'tcp', listen: { host: R6, port: 1 }, target: { host: 'device.lan', port: 1 } },
      { proto: 'tcp', listen: { host: R6, port: 0 }, target: { host: DEV, port: 1 } },
      { proto: 'tcp', listen: { host: R6, port: 1 }, target: { host: DEV, port: 70000 } },
    ] as RelayRule[]
    const r = await relay.apply(bad)
    expect(r.added).toBe(0)
    expect(r.failed.map((f) => f.rule)).toEqual(bad)
    expect(relay.list()).toEqual([])
    await relay.close()
    await expect(relay.apply([])).rejects.toThrow(/closed/)
  })

  it('names a listener once however its address is spelled', () => {
    expect(ruleKey(tcp(80, DEV, 8080, '2001:DB8:99:0::1'))).toBe(ruleKey(tcp(80, DEV, 8080)))
  })
})

describe.skipIf(process.getuid?.() !== 0)('relay in a namespace lab (needs root for network namespaces; skipped otherwise)', () => {
  let lab: Lab
  let router: Agent
  let device: Agent
  let client: Agent
  let first: ApplyResult
  const stats = () => router.call<RelayStats>('relay.stats')

  beforeAll(async () => {
    lab = createLab('dgrelay')
    try {
      await lab.addNs('client', 'router', 'device')
      await lab.veth('router', 'r0', 'client', 'c0')
      await lab.veth('router', 'r1', 'device', 'd0')
      await lab.ip('client', ['addr', 'add', '2001:db8:99::10/64', 'dev', 'c0', 'nodad'])
      await lab.ip('router', ['addr', 'add', `${R6}/64`, 'dev', 'r0', 'nodad'])
      await lab.ip('router', ['addr', 'add', '198.18.99.1/24', 'dev', 'r1'])
      await lab.ip('device', ['addr', 'add', `${DEV}/24`, 'dev', 'd0'])
      await lab.ip('device', ['route', 'add', 'default', 'via', '198.18.99.1'])
      // A target that swallows SYNs: routed to the device, which does not forward, so they vanish silently.
      await lab.exec('device', 'sysctl', ['-qw', 'net.ipv4.ip_forward=0'])
      await lab.ip('router', ['route', 'add', `${HOLE}/32`, 'via', DEV])
      ;[router, device, client] = await Promise.all([lab.agent('router', AGENT), lab.agent('device', AGENT), lab.agent('client', AGENT)])
      await device.call('device.start', { host: DEV })
      first = await router.call<ApplyResult>('relay.start', {
        opts: { connectTimeoutMs: 1000, idleTimeoutMs: 30_000, maxConnections: MAX_CONN, maxConnectionsPerSource: MAX_CONN, udpIdleMs: 800 },
        rules: RULES,
      })
    } catch (err) {
      await lab.teardown()
      throw err
    }
  })

  afterAll(async () => {
    await lab?.teardown()
  })

  it('reports a listener on an address not configured yet, and opens it on a later apply', async () => {
    expect(first.added).toBe(RULES.length - 1)
    expect(first.failed).toHaveLength(1)
    expect(first.failed[0].rule.listen.host).toBe(R6_LATE)
    expect(first.failed[0].error).toMatch(/EADDRNOTAVAIL/)

    await lab.ip('router', ['addr', 'add', `${R6_LATE}/64`, 'dev', 'r0', 'nodad'])
    const again = await router.call<ApplyResult>('relay.apply', { rules: RULES })
    expect(again).toEqual({ added: 1, removed: 0, failed: [] })
    expect(await router.call<RelayRule[]>('relay.list')).toHaveLength(RULES.length)
    const res = await client.call<{ status: number; body: string }>('http.get', { host: R6_LATE, port: 80, path: '/late' })
    expect(JSON.parse(res.body)).toMatchObject({ device: true, path: '/late' })
  })

  it("relays HTTP from an IPv6 client, and the device sees the router's LAN address", async () => {
    const res = await client.call<{ status: number; body: string }>('http.get', { host: R6, port: 80, path: '/hello' })
    expect(res.status).toBe(200)
    expect(JSON.parse(res.body)).toEqual({ device: true, peer: '198.18.99.1', path: '/hello' })
    const peers = await device.call<{ service: string; address: string }[]>('device.peers')
    expect(peers.length).toBeGreaterThan(0)
    expect(new Set(peers.map((p) => p.address))).toEqual(new Set(['198.18.99.1']))
  })

  it('half-close: the device answers after the client has finished sending, and the answer arrives', async () => {
    const r = await client.call<{ reply: string; sent: string }>('tcp.halfclose', { host: R6, port: 7001, bytes: 300_000 })
    expect(r.reply).toBe(r.sent)
  })

  // While the reader stalls the relay holds about one high-water mark per direction (measured: +0.3 MB);
  // without backpressure it takes in the whole 64 MB within 200 ms. While streaming, RSS grows by read
  // buffers awaiting GC (measured: about +10 MB): bounded, not proportional to the transfer.
  const STALL_MS = 2000
  async function rssWhile<T>(work: () => Promise<T>): Promise<{ result: T; stalled: number; peak: number; growth: string }> {
    await until('idle relay', stats, (s) => s.tcpActive === 0)
    const before = rssKiB(router.pid)
    const started = Date.now()
    let stalled = before
    let peak = before
    const sampler = setInterval(() => {
      const now = rssKiB(router.pid)
      peak = Math.max(peak, now)
      if (Date.now() - started < STALL_MS - 200) stalled = Math.max(stalled, now)
    }, 50)
    try {
      const result = await work()
      return { result, stalled: stalled - before, peak: peak - before, growth: `relay RSS ${before} KiB, +${stalled - before} while the reader stalled, +${peak - before} at peak` }
    } finally {
      clearInterval(sampler)
    }
  }

  it('carries 64 MB intact to a slow client without buffering it', async () => {
    const bytes = 64 << 20
    // Not reading at all for 2 s, then at most 40 MB/s: the device could send far faster.
    const { result: got, stalled, peak, growth } = await rssWhile(() =>
      client.call<{ bytes: number; sha256: string }>('tcp.pull', { host: R6, port: 7002, bytes, tag: 'slow', stallMs: STALL_MS, mbPerSec: 40, timeoutMs: 20_000 }, 25_000))
    const sent = await device.call<{ bytes: number; sha256: string }>('device.source', { tag: 'slow' })
    expect(got.bytes).toBe(bytes)
    expect(got.sha256).toBe(sent.sha256)
    expect(stalled, growth).toBeLessThan(16 * 1024)
    expect(peak, growth).toBeLessThan(48 * 1024)
  }, 30_000)

  it('carries 64 MB intact to a slow device without buffering it', async () => {
    // The device's sink reads nothing for 2 s, then at most 40 MB/s; the client sends as fast as it can.
    const { result: r, stalled, peak, growth } = await rssWhile(() =>
      client.call<{ reply: string; sent: string }>('tcp.halfclose', { host: R6, port: 7003, bytes: 64 << 20 }, 20_000))
    expect(r.reply).toBe(r.sent)
    expect(stalled, growth).toBeLessThan(16 * 1024)
    expect(peak, growth).toBeLessThan(48 * 1024)
  }, 30_000)

  it('keeps concurrent transfers in both directions apart and intact', async () => {
    await until('idle relay', stats, (s) => s.tcpActive === 0)
    const size = 8 << 20
    const tags = ['d1', 'd2', 'd3', 'd4']
    const [downs, ups] = await Promise.all([
      Promise.all(tags.map((tag) => client.call<{ bytes: number; sha256: string }>('tcp.pull', { host: R6, port: 7002, bytes: size, tag, stallMs: 0, mbPerSec: 1e6, timeoutMs: 15_000 }, 20_000))),
      Promise.all([1, 2].map(() => client.call<{ reply: string; sent: string }>('tcp.halfclose', { host: R6, port: 7001, bytes: size }))),
    ])
    for (const [i, tag] of tags.entries()) {
      const { bytes, sha256 } = downs[i]
      expect({ bytes, sha256 }).toEqual(await device.call('device.source', { tag }))
    }
    for (const u of ups) expect(u.reply).toBe(u.sent)
  }, 30_000)

  it('UDP: two clients at once get separate sessions, which expire when idle', async () => {
    const replies = await client.call<string[]>('udp.echo', { host: R6, port: 53, msgs: ['one', 'two'], timeoutMs: 2000 })
    const parsed = replies.map((r) => r.split(' '))
    expect(parsed.map((p) => p[0])).toEqual(['198.18.99.1', '198.18.99.1'])
    expect(parsed.map((p) => p[2])).toEqual(['one', 'two'])
    expect(parsed[0][1]).not.toBe(parsed[1][1])
    expect((await stats()).udpSessions).toBe(2)
    await until('UDP sessions expired', stats, (s) => s.udpSessions === 0, 4000)
    const again = await client.call<string[]>('udp.echo', { host: R6, port: 53, msgs: ['three'], timeoutMs: 2000 })
    expect(again[0]).toMatch(/ three$/)
  })

  it('apply() closes a removed listener and its connections, and leaves the others alone', async () => {
    const kept = await client.call<{ id: number }>('tcp.open', { host: R6, port: 7000 })
    const doomed = await client.call<{ id: number }>('tcp.open', { host: R6, port: 7100 })
    expect(await client.call('tcp.echo', { id: kept.id, msg: 'a', timeoutMs: 2000 })).toEqual({ outcome: 'echo', reply: 'a' })
    expect(await client.call('tcp.echo', { id: doomed.id, msg: 'b', timeoutMs: 2000 })).toEqual({ outcome: 'echo', reply: 'b' })

    const without = RULES.filter((r) => r.listen.port !== 7100)
    expect(await router.call<ApplyResult>('relay.apply', { rules: without })).toEqual({ added: 0, removed: 1, failed: [] })

    expect(await client.call('tcp.echo', { id: kept.id, msg: 'c', timeoutMs: 2000 })).toEqual({ outcome: 'echo', reply: 'c' })
    const gone = await client.call<{ outcome: string }>('tcp.echo', { id: doomed.id, msg: 'd', timeoutMs: 2000 })
    expect(gone.outcome).not.toBe('echo')
    expect(gone.outcome).not.toBe('timeout')
    expect((await client.call<{ outcome: string }>('tcp.probe', { host: R6, port: 7100, msg: 'e', timeoutMs: 2000 })).outcome).toBe('refused')
    expect((await client.call<{ outcome: string }>('tcp.probe', { host: R6, port: 7000, msg: 'f', timeoutMs: 2000 })).outcome).toBe('echo')
    await client.call('tcp.closeAll')
  })

  it('refuses connections beyond the limit, and accepts again once one closes', async () => {
    await until('idle relay', stats, (s) => s.tcpActive === 0)
    const ids: number[] = []
    for (let i = 0; i < MAX_CONN; i++) {
      const { id } = await client.call<{ id: number }>('tcp.open', { host: R6, port: 7000 })
      expect(await client.call('tcp.echo', { id, msg: `m${i}`, timeoutMs: 2000 })).toEqual({ outcome: 'echo', reply: `m${i}` })
      ids.push(id)
    }
    expect((await stats()).tcpActive).toBe(MAX_CONN)
    const extra = await client.call<{ outcome: string }>('tcp.probe', { host: R6, port: 7000, msg: 'x', timeoutMs: 2000 })
    expect(['reset', 'end', 'closed', 'EPIPE']).toContain(extra.outcome)
    await client.call('tcp.close', { id: ids.pop() })
    await until('one slot free', stats, (s) => s.tcpActive < MAX_CONN)
    expect((await client.call<{ outcome: string }>('tcp.probe', { host: R6, port: 7000, msg: 'y', timeoutMs: 2000 })).outcome).toBe('echo')
    await client.call('tcp.closeAll')
  })

  it('resets the client when the target does not answer within the connect timeout', async () => {
    await until('idle relay', stats, (s) => s.tcpActive === 0)
    const r = await client.call<{ outcome: string; ms: number }>('tcp.probe', { host: R6, port: 81, msg: 'hello?', timeoutMs: 5000 })
    expect(r.outcome).toBe('reset')
    expect(r.ms).toBeGreaterThanOrEqual(900)
    expect(r.ms).toBeLessThan(3000)
    await until('connection released', stats, (s) => s.tcpActive === 0)
  })

  it('close() shuts every listener', async () => {
    await router.call('relay.close')
    expect(await stats()).toMatchObject({ listeners: 0, tcpActive: 0, udpSessions: 0 })
    expect((await client.call<{ outcome: string }>('tcp.probe', { host: R6, port: 7000, msg: 'z', timeoutMs: 2000 })).outcome).toBe('refused')
  })
})
