// The relay shared fairly, against real sockets: one client (an IPv6 /64) cannot keep another out with
// connections or UDP sessions, half-closed connections give their slots back, and read buffers stay within
// the relay's budget. Namespaces as in relay.test.ts: a client with addresses in two /64s, the router
// hosting the relay, an IPv4-only device. Needs root for the namespaces.
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLab, type Agent, type Lab } from '../../bench/netns.ts'
import { fairShare, sourceKey } from '../../lib/core/fair-share.ts'
import type { RelayOptions, RelayRule, RelayStats } from '../../lib/reach/relay.ts'
import { rssKiB, until } from './wait.ts'

const AGENT = path.join(path.dirname(fileURLToPath(import.meta.url)), '../fixtures/relay-agent.ts')
const R6 = '2001:db8:98:1::1'
const A = '2001:db8:98:1::10'
const A2 = '2001:db8:98:1::11'
const B = '2001:db8:98:2::10'
const DEV = '198.18.98.2'
const MiB = 1024 * 1024

const tcp = (port: number, tport: number): RelayRule => ({ proto: 'tcp', listen: { host: R6, port }, target: { host: DEV, port: tport } })
const RULES: RelayRule[] = [tcp(7000, 7000), tcp(7004, 7004), tcp(7005, 7005), { proto: 'udp', listen: { host: R6, port: 53 }, target: { host: DEV, port: 5353 } }]


describe('fair shares (no network)', () => {
  it('an IPv6 client is its /64, however it spells its address; an IPv4 client its address', () => {
    expect(sourceKey('2001:db8:98:1::10')).toBe(sourceKey('2001:DB8:98:1:ffff::1'))
    expect(sourceKey('2001:db8:98:1::10')).not.toBe(sourceKey('2001:db8:98:2::10'))
    expect(sourceKey('198.18.0.1')).toBe('198.18.0.1')
    expect(sourceKey('not an address')).toBe('not an address')
  })

  it('a source gets a sixteenth of the total by default, at least one', () => {
    expect(fairShare(1024)).toBe(64)
    expect(fairShare(6)).toBe(1)
    expect(fairShare(0)).toBe(1)
  })
})

describe.skipIf(process.getuid?.() !== 0)('the relay shared fairly', () => {
  let lab: Lab
  let router: Agent
  let device: Agent
  let client: Agent
  const stats = () => router.call<RelayStats>('relay.stats')
  const restart = async (opts: RelayOptions) => {
    await router.call('relay.close')
    const r = await router.call<{ failed: unknown[] }>('relay.start', { opts, rules: RULES })
    expect(r.failed).toEqual([])
  }

  beforeAll(async () => {
    lab = createLab('dgfair')
    try {
      await lab.addNs('client', 'router', 'device')
      await lab.veth('client', 'c0', 'router', 'r0')
      await lab.veth('router', 'r1', 'device', 'd0')
      for (const a of [A, A2, B]) await lab.ip('client', ['addr', 'add', `${a}/64`, 'dev', 'c0', 'nodad'])
      for (const a of [R6, '2001:db8:98:2::1']) await lab.ip('router', ['addr', 'add', `${a}/64`, 'dev', 'r0', 'nodad'])
      await lab.ip('router', ['addr', 'add', '198.18.98.1/24', 'dev', 'r1'])
      await lab.ip('device', ['addr', 'add', `${DEV}/24`, 'dev', 'd0'])
      await lab.ip('device', ['route', 'add', 'default', 'via', '198.18.98.1'])
      // The device's sockets (its listeners' included) receive into small buffers: see the linger test.
      await lab.exec('device', 'sysctl', ['-qw', 'net.ipv4.tcp_rmem=4096 8192 8192'])
      ;[router, device, client] = await Promise.all([lab.agent('router', AGENT), lab.agent('device', AGENT), lab.agent('client', AGENT)])
      await device.call('device.start', { host: DEV })
      await router.call('relay.start', { opts: {}, rules: [] })
    } catch (err) {
      await lab.teardown()
      throw err
    }
  })

  afterAll(async () => {
    await lab?.teardown()
  })

  it('one client holding its share of connections cannot keep a second client out', async () => {
    await restart({ maxConnections: 8, maxConnectionsPerSource: 3 })
    const open = (from: string) => client.call<{ id: number }>('tcp.open', { host: R6, port: 7000, from })
    const echo = async (id: number, msg: string) => (await client.call<{ outcome: string }>('tcp.echo', { id, msg, timeoutMs: 2000 })).outcome
    for (let i = 0; i < 3; i++) expect(await echo((await open(A)).id, `a${i}`)).toBe('echo')
    // Beyond its share, from the same address or another in its /64.
    for (const from of [A, A2]) {
      const extra = await client.call<{ outcome: string }>('tcp.probe', { host: R6, port: 7000, msg: 'x', timeoutMs: 2000, from })
      expect(['reset', 'end', 'closed', 'EPIPE']).toContain(extra.outcome)
    }
    for (let i = 0; i < 3; i++) expect(await echo((await open(B)).id, `b${i}`)).toBe('echo')
    const s = await stats()
    expect(s.tcpActive).toBe(6)
    expect(s.refused.connectionsPerSource).toBe(2)
    expect(s.refused.connections).toBe(0)
    await client.call('tcp.closeAll')
  })

  it('frees the slots of connections a client ended while the device reads nothing, after the linger', async () => {
    await restart({ idleTimeoutMs: 60_000, lingerMs: 3000 })
    // Small send buffers towards the device (which receives into small buffers too), so a few kilobytes fill
    // them and the relay's write waits: the client's data and its FIN then sit unread in the relay's receive
    // queue, where no 'end' comes.
    const wmem = (await lab.exec('router', 'sysctl', ['-n', 'net.ipv4.tcp_wmem'])).trim().replace(/\s+/g, ' ')
    await lab.exec('router', 'sysctl', ['-qw', 'net.ipv4.tcp_wmem=4096 8192 8192'])
    try {
      const started = Date.now()
      await client.call('tcp.hold', { host: R6, port: 7004, count: 20, send: 96 * 1024, end: true })
      await until('20 connections relayed', stats, (s) => s.tcpActive === 20, 5000)
      // Seen from the kernel: CLOSE_WAIT with data still queued, on the relay's side of each client connection.
      const finBehindData = async () => (await lab.exec('router', 'ss', ['-tnH', 'state', 'close-wait', 'sport', '= :7004'])).split('\n').filter((l) => /^\s*[1-9]\d*\s/.test(l)).length
      await until('FINs queued behind unread data', finBehindData, (n) => n === 20, 5000)
      await until('half-closed connections released', stats, (s) => s.tcpActive === 0, 15_000)
      expect(Date.now() - started).toBeGreaterThanOrEqual(2500)
    } finally {
      await lab.exec('router', 'sysctl', ['-qw', `net.ipv4.tcp_wmem=${wmem}`])
      await client.call('tcp.closeAll')
    }
  })

  it('1,100 UDP sources from one host leave room for another client', async () => {
    await restart({})
    const fromA = await client.call<string[]>('udp.echo', { host: R6, port: 53, msgs: Array.from({ length: 1100 }, (_, i) => `a${i}`), timeoutMs: 3000, from: A })
    const answered = fromA.filter((r) => !r.startsWith('timeout') && !r.startsWith('error')).length
    expect(answered).toBe(fairShare(1024))
    const fromB = await client.call<string[]>('udp.echo', { host: R6, port: 53, msgs: ['b'], timeoutMs: 3000, from: B })
    expect(fromB[0]).toMatch(/ b$/)
    const s = await stats()
    // The rest were refused, or dropped by the kernel before the relay saw them.
    expect(s.refused.udpSessionsPerSource).toBeGreaterThan(0)
    expect(s.refused.udpSessions).toBe(0)
  }, 30_000)

  it('300 stalled downloads hold no more read buffer than the budget, and quiet connections give theirs back', async () => {
    const budget = 8 * MiB
    await restart({ maxConnectionsPerSource: 400, bufferBudget: budget })
    const before = rssKiB(router.pid)
    // The device sends without end; the client reads nothing.
    await client.call('tcp.hold', { host: R6, port: 7005, count: 300 })
    await until('300 stalled connections', stats, (s) => s.tcpActive === 300, 10_000)
    await new Promise((r) => setTimeout(r, 2000))
    const s = await stats()
    const growthMiB = (rssKiB(router.pid) - before) / 1024
    expect(s.bufferBytes).toBeGreaterThan(0)
    expect(s.bufferBytes).toBeLessThanOrEqual(budget)
    // 300 connections x 2 directions x 16 KiB, the budget, and sockets; unbounded, 256 KiB each is 75 MiB.
    expect(growthMiB, `router RSS grew ${growthMiB.toFixed(1)} MiB`).toBeLessThan(40)
    await client.call('tcp.closeAll')
    // This caught a leak: a connection reset while our end() was pending never closed (see abortConnection).
    await until('released with their connections', stats, (v) => v.tcpActive === 0 && v.bufferBytes === 0, 10_000)

    // A burst on a connection that then stays open and quiet.
    const { id } = await client.call<{ id: number }>('tcp.open', { host: R6, port: 7000, from: A })
    await client.call('tcp.burst', { id, bytes: 8 * MiB })
    expect((await stats()).bufferBytes).toBeGreaterThan(0)
    await until('buffers of a quiet connection shrunk', stats, (v) => v.bufferBytes === 0, 15_000)
    expect((await stats()).tcpActive).toBe(1)
    await client.call('tcp.closeAll')
  }, 60_000)
})
