// The forwarder's relay mode, pure parts: the PROXY v2 header byte by byte, the plan of relay rules, the
// target resolver (answers picked, last good kept, failures said once, TTL honoured) with an injected lookup and
// clock, and the change notifier (argv, once, bounded).
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { loadConfig } from '../../lib/core/config.ts'
import { configuredForwards, type RelayForward } from '../../lib/forwarder/config.ts'
import { createNotifier, OUTPUT_MAX, runBounded } from '../../lib/forwarder/notify.ts'
import { MAX_LISTENERS, relayPlan } from '../../lib/forwarder/relay-plan.ts'
import { createTargetTracker, MAX_ANSWERS, nextResolveMs, ON_DEMAND_GAP_MS, pickAddress, resolveTarget, type Answer, type Lookup } from '../../lib/forwarder/resolve.ts'
import { forwardFamilies, type ForwardStatus } from '../../lib/forwarder/supervisor.ts'
import { exposition } from '../../lib/core/prometheus.ts'
import { proxyV2Header } from '../../lib/reach/proxy-v2.ts'

const hex = (b: Buffer) => b.toString('hex')
const SIG = '0d0a0d0a000d0a515549540a'

describe('PROXY protocol v2 header (proxy-protocol.txt 2.2)', () => {
  it('TCP over IPv4: as HAProxy itself writes it', () => {
    // HAProxy 2.x sending to a server with `send-proxy-v2`, 172.19.0.1:42578 -> 172.19.0.3:80, captured on the wire.
    const h = proxyV2Header({ host: '172.19.0.1', port: 42578 }, { host: '172.19.0.3', port: 80 })
    expect(hex(h)).toBe(`${SIG}2111000cac130001ac130003a6520050`)
    expect(h.length).toBe(16 + 12)
  })

  it('TCP over IPv6: family 0x2, 36 address bytes', () => {
    const h = proxyV2Header({ host: '2001:db8::1', port: 1234 }, { host: '2001:db8:0:0::2', port: 443 })
    expect(hex(h)).toBe(`${SIG}21210024` + '20010db8000000000000000000000001' + '20010db8000000000000000000000002' + '04d2' + '01bb')
  })

  it('an IPv4-mapped client next to an IPv4 listener is IPv4; a mixed pair goes as IPv6 with the IPv4 mapped', () => {
    expect(hex(proxyV2Header({ host: '::ffff:198.18.101.2', port: 1 }, { host: '198.18.100.2', port: 2 }))).toBe(`${SIG}2111000cc6126502c612640200010002`)
    expect(hex(proxyV2Header({ host: '198.18.101.2', port: 1 }, { host: '2001:db8::2', port: 2 }))).toBe(
      `${SIG}21210024` + '00000000000000000000ffffc6126502' + '20010db8000000000000000000000002' + '00010002')
  })

  it('UDP is transport 0x2; bad input throws', () => {
    expect(hex(proxyV2Header({ host: '1.2.3.4', port: 53 }, { host: '5.6.7.8', port: 53 }, 'udp')).slice(24, 28)).toBe('2112')
    expect(() => proxyV2Header({ host: 'example.com', port: 1 }, { host: '1.2.3.4', port: 1 })).toThrow(/not an IPv6/)
    expect(() => proxyV2Header({ host: '1.2.3.4', port: 70000 }, { host: '1.2.3.4', port: 1 })).toThrow(/port/)
  })
})

function forwardsOf(list: Record<string, unknown>[]): RelayForward[] {
  const dir = mkdtempSync(path.join(tmpdir(), 'fwr-plan-'))
  try {
    const file = path.join(dir, 'c.json')
    writeFileSync(file, JSON.stringify({ role: 'forwarder', forwards: list }))
    return configuredForwards(loadConfig({ env: { DUALGATE_CONFIG: file }, uciFile: path.join(dir, 'none') }).config) as RelayForward[]
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

describe('relay plan of the relay-mode forwards', () => {
  const addr = new Map([['web', '2001:db8:250::10'], ['dns', '2001:db8:250::10'], ['ssh', '2001:db8:250::11'], ['big', '2001:db8::1']])

  it('listen 4, 6, both or an address; a range maps onto targetPort onwards; proto both is TCP and UDP', () => {
    const f = forwardsOf([
      { name: 'web', listen: 'both', port: 80, target: 'home.lab.test', proxyProtocol: true },
      { name: 'dns', listen: '4', port: '5300-5301', targetPort: 53, proto: 'both', target: 'home.lab.test' },
      { name: 'ssh', listen: '198.18.100.2', port: 2222, targetPort: 22, target: 'home.lab.test' },
      { name: 'off', enabled: false, port: 9, target: 'x.lab.test' },
    ])
    const { rules, errors } = relayPlan(f, addr, 5000)
    expect(errors.size).toBe(0)
    const brief = rules.map((r) => `${r.proto} ${r.listen.host}:${r.listen.port} > ${r.target.host}:${r.target.port} ${r.tag}${r.proxyProtocol ? ' proxy' : ''} ${r.graceMs}`)
    expect(brief).toEqual([
      'tcp 0.0.0.0:80 > 2001:db8:250::10:80 web proxy 5000',
      'tcp :::80 > 2001:db8:250::10:80 web proxy 5000',
      'tcp 0.0.0.0:5300 > 2001:db8:250::10:53 dns 5000',
      'udp 0.0.0.0:5300 > 2001:db8:250::10:53 dns 5000',
      'tcp 0.0.0.0:5301 > 2001:db8:250::10:54 dns 5000',
      'udp 0.0.0.0:5301 > 2001:db8:250::10:54 dns 5000',
      'tcp 198.18.100.2:2222 > 2001:db8:250::11:22 ssh 5000',
    ])
  })

  it('a forward without an address gets no rules; PROXY v2 never on UDP', () => {
    const f = forwardsOf([{ name: 'web', port: 80, proto: 'both', listen: '6', target: 'home.lab.test', proxyProtocol: true }, { name: 'late', port: 81, target: 'late.lab.test' }])
    const { rules } = relayPlan(f, addr, 0)
    expect(rules.map((r) => [r.tag, r.proto, !!r.proxyProtocol])).toEqual([['web', 'tcp', true], ['web', 'udp', false]])
  })

  it(`a forward that would pass ${MAX_LISTENERS} listeners gets none, with an error naming it; the others keep theirs`, () => {
    const f = forwardsOf([
      { name: 'web', port: 80, listen: 'both', target: 'home.lab.test' },
      { name: 'big', port: '10000-12999', listen: 'both', target: 'home.lab.test' },
      { name: 'ssh', port: 22, listen: '4', target: 'home.lab.test' },
    ])
    const { rules, errors } = relayPlan(f, addr, 0)
    expect(errors.get('big')).toMatch(/^forwards\.big\.port 10000-12999: 6000 listeners .* past 4096/)
    expect(new Set(rules.map((r) => r.tag))).toEqual(new Set(['web', 'ssh']))
  })
})

describe('target resolution', () => {
  const a = (address: string, ttl = 60): Answer => ({ address, ttl })

  it('picks a valid address of the family, the lowest, or the one in use while the answer holds it', () => {
    expect(pickAddress([a('2001:db8::b'), a('2001:db8::a')], 6)).toEqual(a('2001:db8::a'))
    expect(pickAddress([a('2001:db8::b'), a('2001:db8::a')], 6, '2001:db8::b')).toEqual(a('2001:db8::b'))
    expect(pickAddress([a('2001:DB8:0::B')], 6)?.address).toBe('2001:db8::b')
    expect(pickAddress([a('198.18.0.1'), a('nonsense'), { address: 7 }, null], 6)).toBeUndefined()
    expect(pickAddress([a('2001:db8::1')], 4)).toBeUndefined()
    expect(pickAddress('not a list', 6)).toBeUndefined()
    // Only the first MAX_ANSWERS are looked at.
    const many = [...Array.from({ length: MAX_ANSWERS }, () => a('junk')), a('2001:db8::1')]
    expect(pickAddress(many, 6)).toBeUndefined()
  })

  it('re-resolves after the interval, or the TTL when shorter, never under 5 s', () => {
    expect(nextResolveMs(60, 300)).toBe(60_000)
    expect(nextResolveMs(60, 20)).toBe(20_000)
    expect(nextResolveMs(60, 0)).toBe(5_000)
    expect(nextResolveMs(60, Infinity)).toBe(60_000)
  })

  const err = (code: string) => Object.assign(new Error(`query ${code}`), { code })
  const table = (records: Record<string, Answer[] | Error>): Lookup => async (name, family) => {
    const r = records[`${family} ${name}`] ?? err('ENOTFOUND')
    if (r instanceof Error) throw r
    return r
  }

  it('AAAA first; A only with ipv4Fallback and only when the name has no AAAA; an IPv6 literal needs no DNS', async () => {
    const lookup = table({ '6 both.test': [a('2001:db8::1')], '4 both.test': [a('198.18.0.1')], '6 v4.test': err('ENODATA'), '4 v4.test': [a('198.18.0.2', 30)], '6 slow.test': err('ETIMEOUT'), '4 slow.test': [a('198.18.0.3')] })
    expect(await resolveTarget('both.test', true, lookup)).toEqual({ address: '2001:db8::1', family: 6, ttl: 60 })
    expect(await resolveTarget('v4.test', true, lookup)).toEqual({ address: '198.18.0.2', family: 4, ttl: 30 })
    await expect(resolveTarget('v4.test', false, lookup)).rejects.toThrow(/no AAAA/)
    // A failed AAAA query is a failure, not a reason to switch families.
    await expect(resolveTarget('slow.test', true, lookup)).rejects.toThrow(/ETIMEOUT/)
    await expect(resolveTarget('2001:DB8::5', false, async () => { throw new Error('asked DNS') })).resolves.toEqual({ address: '2001:db8::5', family: 6, ttl: Infinity })
  })

  it('keeps the last good address through failures, says so once and the recovery once, and notifies each change once', async () => {
    let clock = 0
    let answer: Answer[] | Error = [a('2001:db8::10', 30)]
    const lines: string[] = []
    const changes: string[] = []
    const asked: number[] = []
    const t = createTargetTracker({
      target: 'home.lab.test', ipv4Fallback: false, intervalS: 60, now: () => clock,
      lookup: async () => { asked.push(clock); if (answer instanceof Error) throw answer; return answer },
      log: (level, msg) => lines.push(`${level} ${msg}`),
      onChange: (c) => changes.push(`${c.old} ${c.new}`),
    })
    expect(t.due()).toBe(true)
    await t.refresh()
    expect(t.status()).toMatchObject({ address: '2001:db8::10', family: 6, failures: 0, changes: 0 })
    expect(changes).toEqual([]) // the first resolution is no change
    // TTL 30 is shorter than the interval.
    clock = 29_999
    expect(t.due()).toBe(false)
    clock = 30_000
    expect(t.due()).toBe(true)

    for (const failure of [err('ETIMEOUT'), err('ESERVFAIL'), [] as Answer[], err('ENOTFOUND')]) {
      answer = failure
      await t.refresh()
      clock += 60_000
    }
    expect(t.status()).toMatchObject({ address: '2001:db8::10', failures: 4, changes: 0 })
    expect(t.status().error).toMatch(/ENOTFOUND/)
    expect(lines.filter((l) => l.startsWith('warn'))).toEqual([expect.stringMatching(/^warn cannot resolve home\.lab\.test: .*ETIMEOUT.*; keeping 2001:db8::10$/)])
    expect(changes).toEqual([])

    answer = [a('2001:db8::10')]
    await t.refresh()
    expect(t.status().error).toBeUndefined()
    expect(lines.filter((l) => /resolves again/.test(l))).toHaveLength(1)

    answer = [a('2001:db8::11')]
    await t.refresh()
    await t.refresh()
    expect(changes).toEqual(['2001:db8::10 2001:db8::11'])
    expect(t.status()).toMatchObject({ address: '2001:db8::11', changes: 1 })
  })

  it('a connection failure asks again soon, at most every 5 s', async () => {
    let clock = 1_000_000
    let n = 0
    const t = createTargetTracker({ target: 'h.test', ipv4Fallback: false, intervalS: 3600, now: () => clock, lookup: async () => { n++; return [a('2001:db8::1', 3600)] } })
    await t.refresh()
    clock += 1000
    expect(t.due()).toBe(false)
    t.soon()
    expect(t.due()).toBe(false) // the last attempt was 1 s ago
    clock += ON_DEMAND_GAP_MS - 1000
    expect(t.due()).toBe(true)
    await t.refresh()
    t.soon()
    t.soon()
    expect(t.due()).toBe(false)
    expect(n).toBe(2)
  })

  it('a target that never resolved is asked again within 5 s, and has no address', async () => {
    let clock = 0
    const t = createTargetTracker({ target: 'nowhere.test', ipv4Fallback: false, intervalS: 60, now: () => clock, lookup: async () => { throw err('ENOTFOUND') } })
    await t.refresh()
    expect(t.status().address).toBeUndefined()
    expect(t.status().failures).toBe(1)
    clock = 5_000
    expect(t.due()).toBe(true)
  })
})

describe('change notifications', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'fwr-notify-'))
  afterAll(() => rmSync(dir, { recursive: true, force: true }))
  const script = (name: string, body: string) => {
    const file = path.join(dir, name)
    writeFileSync(file, `#!/bin/sh\n${body}\n`)
    chmodSync(file, 0o755)
    return file
  }

  it('runs the command once per change with forward, old and new as separate arguments (no shell)', async () => {
    const out = path.join(dir, 'args')
    const cmd = script('record', `for a in "$@"; do printf '<%s>' "$a" >> ${out}; done; echo >> ${out}; echo said-something`)
    const logs: string[] = []
    const n = createNotifier({ command: cmd, url: '', log: (level, msg) => logs.push(`${level} ${msg}`) })
    n.notify({ forward: 'nas', target: 'home.lab.test', old: '2001:db8::10', new: '2001:db8::11; touch /tmp/x', at: 'now' })
    n.notify({ forward: 'nas', target: 'home.lab.test', old: '2001:db8::11', new: '2001:db8::12', at: 'now' })
    await n.idle()
    expect(readFileSync(out, 'utf8')).toBe('<nas><2001:db8::10><2001:db8::11; touch /tmp/x>\n<nas><2001:db8::11><2001:db8::12>\n')
    expect(logs.filter((l) => l.startsWith('debug'))).toHaveLength(2)
    expect(logs.some((l) => l.startsWith('warn'))).toBe(false)
  })

  it('bounds the command in time and its output in size', async () => {
    const slow = await runBounded(script('slow', 'echo started; exec sleep 30'), [], 300)
    expect(slow.error).toMatch(/timed out/)
    const loud = await runBounded(script('loud', 'head -c 100000 /dev/zero | tr "\\0" x'), [], 5000)
    expect(loud.code).toBe(0)
    expect(loud.output.length).toBe(OUTPUT_MAX)
  })

  it('POSTs { forward, target, old, new, at } as JSON, and a failing URL is a warning', async () => {
    const bodies: unknown[] = []
    const logs: string[] = []
    const n = createNotifier({
      command: '', url: 'http://198.18.0.9/hook', log: (level, msg) => logs.push(`${level} ${msg}`),
      fetch: (async (_url: string, init: RequestInit) => { bodies.push(JSON.parse(String(init.body))); return new Response(null, { status: bodies.length === 1 ? 204 : 500 }) }) as typeof fetch,
    })
    n.notify({ forward: 'nas', target: 't', old: '2001:db8::1', new: '2001:db8::2', at: '2030-01-01T00:00:00.000Z' })
    n.notify({ forward: 'nas', target: 't', old: '2001:db8::2', new: '2001:db8::3', at: '2030-01-01T00:00:01.000Z' })
    await n.idle()
    expect(bodies).toEqual([
      { forward: 'nas', target: 't', old: '2001:db8::1', new: '2001:db8::2', at: '2030-01-01T00:00:00.000Z' },
      { forward: 'nas', target: 't', old: '2001:db8::2', new: '2001:db8::3', at: '2030-01-01T00:00:01.000Z' },
    ])
    expect(logs).toEqual(['warn notify URL for nas answered HTTP 500'])
  })
})

describe('forward metrics', () => {
  it('one sample per forward in each family, counters named _total', () => {
    const f = { name: 'nas', connections: 2, bytes: 300, resolveFailures: 1, targetChanges: 4 } as ForwardStatus
    const text = exposition(forwardFamilies([f]))
    expect(text).toContain('# TYPE dualgate_forward_connections gauge\ndualgate_forward_connections{forward="nas"} 2\n')
    expect(text).toContain('dualgate_forward_bytes_total{forward="nas"} 300\n')
    expect(text).toContain('dualgate_forward_resolve_failures_total{forward="nas"} 1\n')
    expect(text).toContain('# TYPE dualgate_forward_target_changes_total counter\ndualgate_forward_target_changes_total{forward="nas"} 4\n')
  })
})
