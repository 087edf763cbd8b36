// The relay's forwarder features against real sockets (root, network namespaces fwrrelay*): IPv4 listeners
// beside v6only IPv6 ones on the same port, a target changed in place (the listener stays, new connections go
// to the new target, old ones close after the grace), per-listener counters with the rule's tag, the PROXY v2
// header as the server receives it, and the hook that reports a failed upstream connect.
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLab, type Agent, type Lab } from '../../bench/netns.ts'
import type { ApplyResult, ListenerStats, RelayRule } from '../../lib/reach/relay.ts'
import { until } from './wait.ts'

const AGENT = path.join(path.dirname(fileURLToPath(import.meta.url)), '../fixtures/relay-agent.ts')
const R4 = '198.18.97.1'
const R6 = '2001:db8:97::1'
const C4 = '198.18.97.10'
const DEV = '198.18.96.2'
const DEV2 = '198.18.96.3'
const GRACE_MS = 1500

const rule = (proto: 'tcp' | 'udp', host: string, port: number, target: string, tport: number, extra: Partial<RelayRule> = {}): RelayRule =>
  ({ proto, listen: { host, port }, target: { host: target, port: tport }, ...extra })

const rulesTo = (dev: string, graceMs = GRACE_MS): RelayRule[] => [
  rule('tcp', '0.0.0.0', 7000, dev, 7000, { tag: 'echo', graceMs }),
  rule('tcp', '::', 7000, dev, 7000, { tag: 'echo', graceMs }),
  rule('udp', '0.0.0.0', 53, dev, 5353, { tag: 'dns', graceMs: 0 }),
  rule('tcp', R4, 7006, DEV, 7006, { tag: 'raw', proxyProtocol: true }),
  rule('tcp', '::', 7006, DEV, 7006, { tag: 'raw', proxyProtocol: true }),
  rule('tcp', '0.0.0.0', 9, DEV, 9, { tag: 'closed' }),
]

const hexOf = (ip: string) => ip.split('.').map((o) => Number(o).toString(16).padStart(2, '0')).join('')
const SIG = '0d0a0d0a000d0a515549540a'

describe.skipIf(process.getuid?.() !== 0)('relay: IPv4 listeners, retarget in place, counters, PROXY v2 (root, namespaces)', () => {
  let lab: Lab
  let router: Agent
  let device: Agent
  let client: Agent
  const listeners = () => router.call<ListenerStats[]>('relay.listeners')
  const peers = () => device.call<{ service: string; address: string; local?: string }[]>('device.peers')

  beforeAll(async () => {
    lab = createLab('fwrrelay')
    try {
      await lab.addNs('client', 'router', 'device')
      await lab.veth('client', 'c0', 'router', 'r0')
      await lab.veth('router', 'r1', 'device', 'd0')
      await lab.ip('client', ['addr', 'add', `${C4}/24`, 'dev', 'c0'])
      await lab.ip('client', ['addr', 'add', '2001:db8:97::10/64', 'dev', 'c0', 'nodad'])
      await lab.ip('router', ['addr', 'add', `${R4}/24`, 'dev', 'r0'])
      await lab.ip('router', ['addr', 'add', `${R6}/64`, 'dev', 'r0', 'nodad'])
      await lab.ip('router', ['addr', 'add', '198.18.96.1/24', 'dev', 'r1'])
      for (const a of [DEV, DEV2]) await lab.ip('device', ['addr', 'add', `${a}/24`, 'dev', 'd0'])
      await lab.ip('device', ['route', 'add', 'default', 'via', '198.18.96.1'])
      ;[router, device, client] = await Promise.all([lab.agent('router', AGENT), lab.agent('device', AGENT), lab.agent('client', AGENT)])
      await device.call('device.start', { host: DEV })
      await device.call('device.start', { host: DEV2 })
      const first = await router.call<ApplyResult>('relay.start', { opts: { connectTimeoutMs: 1000 }, rules: rulesTo(DEV) })
      expect(first).toEqual({ added: 6, removed: 0, failed: [] })
    } catch (err) {
      await lab?.teardown()
      throw err
    }
  })

  afterAll(async () => {
    await lab?.teardown()
  })

  it('an IPv4 listener and a v6only IPv6 listener share a port, each for its own family', async () => {
    expect(await client.call('tcp.probe', { host: R4, port: 7000, msg: 'four', timeoutMs: 2000 })).toMatchObject({ outcome: 'echo', reply: 'four' })
    expect(await client.call('tcp.probe', { host: R6, port: 7000, msg: 'six', timeoutMs: 2000 })).toMatchObject({ outcome: 'echo', reply: 'six' })
    const udp = await client.call<string[]>('udp.echo', { host: `::ffff:${R4}`, port: 53, msgs: ['q'], timeoutMs: 2000 })
    expect(udp[0]).toMatch(/ q$/)
  })

  it('the server gets a PROXY v2 header with the client and the address it reached, before the data', async () => {
    const r4 = await client.call<{ outcome: string; reply: string }>('tcp.probe', { host: R4, port: 7006, msg: 'hi', timeoutMs: 3000 })
    expect(r4.outcome).toBe('echo')
    // signature, v2 PROXY, TCP over IPv4, 12 bytes: client, listener address, client port, 7006; then "hi".
    expect(r4.reply.slice(0, 48)).toBe(`${SIG}2111000c${hexOf(C4)}${hexOf(R4)}`)
    expect(r4.reply.slice(52)).toBe(`1b5e${Buffer.from('hi').toString('hex')}`)
    const r6 = await client.call<{ outcome: string; reply: string }>('tcp.probe', { host: R6, port: 7006, msg: 'hi', timeoutMs: 3000 })
    expect(r6.reply.slice(0, 32 + 64)).toBe(`${SIG}21210024` + '20010db8009700000000000000000010' + '20010db8009700000000000000000001')
    expect(r6.reply.slice(96 + 4)).toBe(`1b5e${Buffer.from('hi').toString('hex')}`)
  })

  it('reports a refused upstream connect through the hook and in the listener\'s counters', async () => {
    const r = await client.call<{ outcome: string }>('tcp.probe', { host: R4, port: 9, msg: 'x', timeoutMs: 3000 })
    expect(r.outcome).not.toBe('echo')
    const failures = await until('a connect failure', () => router.call<{ tag?: string; error: string }[]>('relay.connectFailures'), (f) => f.length > 0)
    expect(failures[0]).toMatchObject({ tag: 'closed', error: expect.stringMatching(/ECONNREFUSED/) })
    expect((await listeners()).find((l) => l.rule.tag === 'closed')).toMatchObject({ connectFailures: 1, tcpTotal: 1 })
  })

  it('a changed target keeps the listener: new connections go to it, old ones last the grace, then close', async () => {
    const held = await client.call<{ id: number }>('tcp.open', { host: R4, port: 7000 })
    expect(await client.call('tcp.echo', { id: held.id, msg: 'before', timeoutMs: 2000 })).toEqual({ outcome: 'echo', reply: 'before' })
    const udpBefore = await client.call<string[]>('udp.echo', { host: `::ffff:${R4}`, port: 53, msgs: ['u1'], timeoutMs: 2000 })
    expect(udpBefore[0]).toMatch(/ u1$/)
    const echoBefore = (await listeners()).filter((l) => l.rule.tag === 'echo')
    expect(echoBefore.reduce((n, l) => n + l.tcpTotal, 0)).toBe(3)

    const moved = await router.call<ApplyResult>('relay.apply', { rules: rulesTo(DEV2) })
    const movedAt = Date.now()
    expect(moved).toEqual({ added: 0, removed: 0, failed: [], retargeted: 3 })
    // UDP with grace 0: the session to the old target is gone at once.
    expect((await listeners()).find((l) => l.rule.tag === 'dns')?.udpSessions).toBe(0)

    const seen = (await peers()).length
    expect(await client.call('tcp.probe', { host: R4, port: 7000, msg: 'after', timeoutMs: 2000 })).toMatchObject({ outcome: 'echo', reply: 'after' })
    await client.call('udp.echo', { host: `::ffff:${R4}`, port: 53, msgs: ['u2'], timeoutMs: 2000 })
    const fresh = (await peers()).slice(seen)
    expect(fresh.map((p) => `${p.service} ${p.local}`).sort()).toEqual([`echo ${DEV2}`, `udp ${DEV2}`])

    // The old connection still works inside the grace...
    expect(await client.call('tcp.echo', { id: held.id, msg: 'grace', timeoutMs: 1000 })).toEqual({ outcome: 'echo', reply: 'grace' })
    expect(Date.now() - movedAt).toBeLessThan(GRACE_MS)
    // ...and is closed after it.
    await until('the old connection closed', () => router.call<ListenerStats[]>('relay.listeners'), (ls) => ls.filter((l) => l.rule.tag === 'echo').every((l) => l.tcpActive === 0), 5000)
    expect(Date.now() - movedAt).toBeGreaterThanOrEqual(GRACE_MS - 100)
    const gone = await client.call<{ outcome: string }>('tcp.echo', { id: held.id, msg: 'late', timeoutMs: 1000 })
    expect(gone.outcome).not.toBe('echo')

    // The same listeners, counting on: nothing was reopened.
    const echoAfter = (await listeners()).filter((l) => l.rule.tag === 'echo')
    expect(echoAfter.map((l) => l.rule.target.host)).toEqual([DEV2, DEV2])
    expect(echoAfter.reduce((n, l) => n + l.tcpTotal, 0)).toBe(4)
    expect(echoAfter.every((l) => l.bytes >= 0)).toBe(true)
    expect(echoAfter.reduce((n, l) => n + l.bytes, 0)).toBeGreaterThan(echoBefore.reduce((n, l) => n + l.bytes, 0))
    await client.call('tcp.closeAll')
  })

  it('a target that comes back within the grace keeps the connections that go to it', async () => {
    const held = await client.call<{ id: number }>('tcp.open', { host: R4, port: 7000 })
    expect(await client.call('tcp.echo', { id: held.id, msg: 'a', timeoutMs: 2000 })).toEqual({ outcome: 'echo', reply: 'a' })
    await router.call('relay.apply', { rules: rulesTo(DEV) })
    await router.call('relay.apply', { rules: rulesTo(DEV2) })
    await new Promise((r) => setTimeout(r, GRACE_MS + 500))
    expect(await client.call('tcp.echo', { id: held.id, msg: 'b', timeoutMs: 2000 })).toEqual({ outcome: 'echo', reply: 'b' })
    await client.call('tcp.closeAll')
  })
})
