// 464XLAT's pure parts: CLAT addresses, tayga's config, the translation prefix check, and the plan the
// runner derives from the store (who is translated, and why nobody is).
import { describe, expect, it } from 'vitest'
import { clatAddress, clatConfig, clatPlan } from '../../lib/clat/plan.ts'
import { ConfigError, loadConfig } from '../../lib/core/config.ts'
import { inPrefix6 } from '../../lib/addr/ipv6.ts'
import { nat64PrefixError, prefix96Error } from '../../lib/addr/nat64.ts'
import { checkClat } from '../../lib/diagnose/report.ts'
import { pref64From } from '../../lib/net/pref64.ts'
import { parseData, type Data } from '../../lib/core/schema.ts'

const PREFIX = '2001:db8:1::/64'
const A = '02:aa:bb:cc:dd:01'
const B = '02:aa:bb:cc:dd:02'
const config = (env: Record<string, string> = {}) => loadConfig({ env: { DUALGATE_CLAT: '1', ...env }, uciFile: '/nonexistent' }).config

function data(o: { dhcpv4?: boolean; devices?: [string, Partial<Data['devices'][string]>][] } = {}): Data {
  const now = new Date().toISOString()
  const d = parseData('{}')
  Object.assign(d.upstream, { dhcpv4: o.dhcpv4 ?? false, ra: true, dhcpv6: true, prefixes: [PREFIX] })
  for (const [mac, extra] of o.devices ?? [[A, {}], [B, {}]]) {
    d.devices[mac] = { mac, status: 'active', statusChangedAt: now, firstSeen: now, lastSeen: now, lanIpv4: `192.168.1.${mac.endsWith('1') ? 20 : 21}`, wanIpv6: ['2001:db8:1::1000'], attempts: 0, routeTable: mac.endsWith('1') ? 1000 : 1001, ...extra }
  }
  return d
}

describe('CLAT addresses', () => {
  it('are stable per MAC, inside the prefix, apart from each other and from the EUI-64 address', () => {
    const a = clatAddress(PREFIX, A)
    expect(clatAddress(PREFIX, A.toUpperCase())).toBe(a)
    expect(inPrefix6(a, PREFIX)).toBe(true)
    expect(clatAddress(PREFIX, B)).not.toBe(a)
    expect(a).not.toBe('2001:db8:1:0:aa:bbff:fecc:dd01')
    expect(clatAddress('2001:db8:2::/64', A).split(':').slice(-4)).toEqual(a.split(':').slice(-4))
  })

  it.each([['2001:db8:1::/48', A], ['nonsense', A], [PREFIX, 'not-a-mac']])('refuses %s for %s', (prefix, mac) => {
    expect(() => clatAddress(prefix, mac)).toThrow(/no CLAT address/)
  })
})

describe("tayga's CLAT config", () => {
  it('has its own addresses, the PLAT prefix and one map per device, in a stable order', () => {
    const text = clatConfig({ prefix: '64:ff9b::/96', ipv6Addr: '2001:db8:1::c1a7', dataDir: '/run/dg/clat', maps: [{ lanIpv4: '192.168.1.21', clatIpv6: '2001:db8:1::b' }, { lanIpv4: '192.168.1.20', clatIpv6: '2001:db8:1::a' }] })
    expect(text.split('\n').filter((l) => !l.startsWith('#'))).toEqual([
      'tun-device dgclat', 'ipv4-addr 192.0.0.1', 'ipv6-addr 2001:db8:1::c1a7', 'prefix 64:ff9b::/96', 'data-dir /run/dg/clat',
      'map 192.168.1.20 2001:db8:1::a', 'map 192.168.1.21 2001:db8:1::b', '',
    ])
  })
})

describe('translation prefixes', () => {
  it('lets the CLAT use the Well-Known Prefix, which NAT64 toward private devices may not', () => {
    expect(prefix96Error('64:ff9b::/96')).toBeUndefined()
    expect(nat64PrefixError('64:ff9b::/96')).toMatch(/Well-Known Prefix/)
    expect(nat64PrefixError('64:FF9B:0::/96')).toMatch(/Well-Known Prefix/)
    expect(prefix96Error('64:ff9b::/64')).toMatch(/must be a \/96/)
    expect(prefix96Error('64:ff9b:1::/96')).toMatch(/::\/8 are reserved/)
  })

  it('is checked in the config, with the key and the reason', () => {
    expect(config({ DUALGATE_CLAT_PREFIX: '2001:db8:64::/96' }).clatPrefix).toBe('2001:db8:64::/96')
    expect(config().clatPrefix).toBe('auto')
    expect(() => config({ DUALGATE_CLAT_PREFIX: '2001:db8::/64' })).toThrow(ConfigError)
    expect(() => config({ DUALGATE_CLAT_PREFIX: '2001:db8::/64' })).toThrow(/clatPrefix.*\/96/)
  })
})

describe('the NAT64 prefix from DNS64 (RFC 7050)', () => {
  it('is what precedes 192.0.0.170 or .171 in the AAAA answers for ipv4only.arpa', () => {
    expect(pref64From(['64:ff9b::c000:aa', '64:ff9b::c000:ab'])).toBe('64:ff9b::/96')
    expect(pref64From(['2001:db8:64::192.0.0.171'])).toBe('2001:db8:64::/96')
  })
  it('is nothing when the answers carry no well-known address at a /96', () => {
    expect(pref64From([])).toBeUndefined()
    expect(pref64From(['2001:db8::1', 'not an address'])).toBeUndefined()
    // RFC 6052 /64: the IPv4 address straddles the u octet; not a form tayga is given here.
    expect(pref64From(['2001:db8:64:0:c0:0:aa00:0'])).toBeUndefined()
  })
  it('is used for "auto", with the Well-Known Prefix when the upstream reported none; a set prefix wins', () => {
    const has = { wanMac: '02:00:00:00:00:01', tayga: true, tun: true }
    const found = data()
    found.upstream.pref64 = '2001:db8:64::/96'
    expect(clatPlan(found, config(), has).prefix).toBe('2001:db8:64::/96')
    expect(clatPlan(data(), config(), has).prefix).toBe('64:ff9b::/96')
    expect(clatPlan(found, config({ DUALGATE_CLAT_PREFIX: '2001:db8:99::/96' }), has).prefix).toBe('2001:db8:99::/96')
  })
})

describe('the CLAT plan', () => {
  it('translates every active device with a LAN IPv4, a table and a WAN IPv6, with its own address', () => {
    const p = clatPlan(data({ devices: [[A, {}], [B, {}], ['02:aa:bb:cc:dd:03', { status: 'failed' }], ['02:aa:bb:cc:dd:04', { wanIpv6: [] }]] }), config(), { wanMac: '02:00:00:00:00:01', tayga: true, tun: true })
    expect(p.idle).toBeUndefined()
    expect(p.devices.map((d) => [d.mac, d.lanIpv4, d.clatIpv6, d.table, d.ifname])).toEqual([
      [A, '192.168.1.20', clatAddress(PREFIX, A), 1000, 'dg02aabbccdd01'],
      [B, '192.168.1.21', clatAddress(PREFIX, B), 1001, 'dg02aabbccdd02'],
    ])
    expect(p.routerAddress).toBe(clatAddress(PREFIX, '02:00:00:00:00:01'))
  })

  it.each([
    ['clat is off', data(), { DUALGATE_CLAT: '0' }, true],
    ['the upstream is not IPv6-only', data({ dhcpv4: true }), {}, true],
    ['tayga is not installed (package tayga)', data(), {}, false],
    ['no active device', data({ devices: [] }), {}, true],
  ] as const)('translates nobody when %s', (why, d, env, tayga) => {
    const p = clatPlan(d, config(env), { wanMac: '02:00:00:00:00:01', tayga, tun: true })
    expect(p).toMatchObject({ devices: [], idle: why })
    expect(p.missing ?? false).toBe(!tayga)
  })
})

describe('the clat check', () => {
  const s = (o: Partial<Parameters<typeof checkClat>[0]> = {}) => ({ enabled: true, prefix: '64:ff9b::/96', devices: 2, ...o })
  it('passes when off, idle for a reason, or translating with tayga running', () => {
    expect(checkClat(s({ enabled: false }), undefined, true)).toMatchObject({ status: 'pass', reason: 'off' })
    expect(checkClat(s({ idle: 'the upstream is not IPv6-only', devices: 0 }), undefined, true)).toMatchObject({ status: 'pass', reason: 'on, idle: the upstream is not IPv6-only' })
    expect(checkClat(s(), 1234, true)).toMatchObject({ status: 'pass', reason: expect.stringContaining('pid 1234') })
  })
  it('fails without tayga, or when the runner is up and tayga is not; warns while the runner is down', () => {
    expect(checkClat(s({ idle: 'tayga is not installed (package tayga)', missing: true, devices: 0 }), undefined, true).status).toBe('fail')
    expect(checkClat(s(), undefined, true)).toMatchObject({ status: 'fail', fix: expect.stringContaining('restart the runner') })
    expect(checkClat(s(), undefined, false).status).toBe('warn')
  })
})
