import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { ConfigError, loadConfig } from '../../lib/core/config.ts'
import { embedIpv4, formatIpv6, parseIpv6 } from '../../lib/addr/ipv6.ts'
import { mappedAddress, nat64PoolError, nat64PrefixError, overlaps4, ulaPrefix } from '../../lib/addr/nat64.ts'
import { tableDefinition } from '../../lib/net/nft.ts'
import { nat64Status, taygaConfig, type Nat64Config } from '../../lib/nat64/plan.ts'
import { taygaVersion } from '../../lib/net/tayga.ts'

const dir = mkdtempSync(path.join(tmpdir(), 'dg-nat64-'))
const noUci = path.join(dir, 'absent')
afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe('IPv6 text', () => {
  it.each([
    ['::', '::'],
    ['2001:DB8:0:0:0:0:0:1', '2001:db8::1'],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
    ['2001:db8:6464::198.19.0.21', '2001:db8:6464::c613:15'],
    ['::ffff:1.2.3.4', '::ffff:102:304'],
    ['1:2:3:4:5:6:7:8', '1:2:3:4:5:6:7:8'],
  ])('reads %s as %s', (text, canonical) => {
    expect(formatIpv6(parseIpv6(text)!)).toBe(canonical)
  })

  it.each(['', '1::2::3', '1.2.3.4', ':1::', 'gg::', '1:2:3:4:5:6:7:8:9', '1:2:3:4:5:6:7:8::', '::1.2.3.256', 'fe80::1%eth0', '::1/128'])('rejects %j', (text) => {
    expect(parseIpv6(text)).toBeUndefined()
  })

  it('embeds an IPv4 address in a /96 (RFC 6052), written with a dotted tail', () => {
    expect(embedIpv4('2001:db8:6464::/96', '198.19.0.21')).toBe('2001:db8:6464::198.19.0.21')
    expect(embedIpv4('2001:db8:1:2:3:4::/96', '10.0.0.1')).toBe('2001:db8:1:2:3:4:10.0.0.1')
    expect(formatIpv6(parseIpv6(mappedAddress('2001:db8:6464::/96', '198.19.0.21'))!)).toBe('2001:db8:6464::c613:15')
    expect(() => embedIpv4('2001:db8:6464::/96', '198.19.0.256')).toThrow()
  })
})

describe('NAT64 prefix and pool', () => {
  it.each(['2001:db8:6464::/96', 'fd12:3456:789a:64::/96', '2001:db8:1:2:0:1::/96'])('accepts the prefix %s', (p) => {
    expect(nat64PrefixError(p)).toBeUndefined()
  })

  it.each([
    ['64:ff9b::/96', /Well-Known Prefix/],
    ['64:ff9b:1::/96', /::\/8 are reserved/],
    ['2001:db8:6464::/64', /must be a \/96/],
    ['2001:db8:6464::1/96', /last 32 bits/],
    ['2001:db8:0:0:100::/96', /bits 64-71/],
    ['ff0e::/96', /multicast/],
    ['fe80::/96', /link-local/],
    ['2001:db8::', /expected an IPv6 prefix/],
    ['$(reboot)/96', /expected an IPv6 prefix/],
  ])('refuses the prefix %s', (p, why) => {
    expect(nat64PrefixError(p)).toMatch(why)
  })

  it.each(['192.168.255.0/24', '198.18.255.0/24', '10.64.0.0/16', '172.16.0.4/30'])('accepts the pool %s', (p) => {
    expect(nat64PoolError(p)).toBeUndefined()
  })

  it.each([
    ['192.168.255.1/24', /host bits set: the network is 192.168.255.0\/24/],
    ['10.0.0.0/8', /\/16 to a \/30/],
    ['10.0.0.0/31', /\/16 to a \/30/],
    ['127.0.0.0/24', /reserved/],
    ['169.254.0.0/16', /reserved/],
    ['224.0.0.0/24', /reserved/],
    ['0.0.0.0/16', /reserved/],
    ['300.0.0.0/24', /expected an IPv4 network/],
  ])('refuses the pool %s', (p, why) => {
    expect(nat64PoolError(p)).toMatch(why)
  })

  it('tells overlapping IPv4 networks', () => {
    expect(overlaps4('192.168.255.0/24', '192.168.0.1/16')).toBe(true)
    expect(overlaps4('192.168.255.0/24', '192.168.1.1/24')).toBe(false)
  })

  it('derives a stable ULA /96 per WAN MAC', () => {
    const a = ulaPrefix('02:00:00:00:00:01')
    expect(a).toMatch(/^fd[0-9a-f]{2}:[0-9a-f]{1,4}:[0-9a-f]{1,4}:64::\/96$/)
    expect(ulaPrefix('02-00-00-00-00-01')).toBe(a)
    expect(ulaPrefix('02:00:00:00:00:02')).not.toBe(a)
    expect(nat64PrefixError(a)).toBeUndefined()
    expect(() => ulaPrefix('nope')).toThrow()
  })
})

describe('NAT64 config keys', () => {
  it('is off by default, with a derived prefix and a private pool', () => {
    const { config } = loadConfig({ env: {}, uciFile: noUci })
    expect(config).toMatchObject({ nat64: false, nat64Prefix: 'auto', nat64Pool: '192.168.255.0/24' })
  })

  it('takes them from the environment and validates them', () => {
    const env = { DUALGATE_NAT64: '1', DUALGATE_NAT64_PREFIX: '2001:db8:6464::/96', DUALGATE_NAT64_POOL: '198.18.255.0/24' }
    expect(loadConfig({ env, uciFile: noUci }).config).toMatchObject({ nat64: true, nat64Prefix: '2001:db8:6464::/96', nat64Pool: '198.18.255.0/24' })
    expect(() => loadConfig({ env: { DUALGATE_NAT64_PREFIX: '64:ff9b::/96' }, uciFile: noUci })).toThrow(ConfigError)
    expect(() => loadConfig({ env: { DUALGATE_NAT64_PREFIX: '64:ff9b::/96' }, uciFile: noUci })).toThrow(/nat64Prefix = "64:ff9b::\/96" from env DUALGATE_NAT64_PREFIX: the Well-Known Prefix/)
    expect(() => loadConfig({ env: { DUALGATE_NAT64_POOL: '192.168.255.7/24' }, uciFile: noUci })).toThrow(/nat64Pool .*host bits set/)
  })
})

describe('tayga', () => {
  it('writes its config file', () => {
    expect(taygaConfig({ prefix: '2001:db8:6464::/96', pool: '198.18.255.0/24', dataDir: '/run/dg/tayga' })).toBe([
      '# Written by dualgate (lib/nat64/plan.ts) when its runner starts tayga; edits are overwritten.',
      'tun-device dgnat64',
      'ipv4-addr 198.18.255.1',
      'prefix 2001:db8:6464::/96',
      'dynamic-pool 198.18.255.0/24',
      'data-dir /run/dg/tayga',
      '',
    ].join('\n'))
  })

  /** A fake system: a tayga binary on PATH, the TUN node, the WAN's MAC in sysfs. */
  function system(o: { binary?: boolean; tun?: boolean; mac?: string } = {}) {
    const root = mkdtempSync(path.join(dir, 'sys-'))
    mkdirSync(path.join(root, 'bin'))
    mkdirSync(path.join(root, 'net', 'eth0'), { recursive: true })
    if (o.binary ?? true) writeFileSync(path.join(root, 'bin', 'tayga'), Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0, 1]), Buffer.from('usage\0starting TAYGA 0.9.2\0')]))
    if (o.tun ?? true) writeFileSync(path.join(root, 'tun'), '')
    if (o.mac) writeFileSync(path.join(root, 'net', 'eth0', 'address'), `${o.mac}\n`)
    return { path: path.join(root, 'bin'), tunDevice: path.join(root, 'tun'), sysNet: path.join(root, 'net') }
  }
  const config: Nat64Config = { nat64: true, nat64Prefix: '2001:db8:6464::/96', nat64Pool: '198.18.255.0/24', lanAddr: '198.19.0.1/24', wanIf: 'eth0', runDir: '/run/dualgate' }

  it('reads the version from the binary', () => {
    expect(taygaVersion(path.join(system().path, 'tayga'))).toBe('0.9.2')
    expect(taygaVersion(path.join(dir, 'none'))).toBeUndefined()
  })

  it('reports NAT64 available with the binary, its version, the TUN driver and usable settings', () => {
    const probe = system()
    expect(nat64Status(config, probe)).toEqual({
      enabled: true, available: true, binary: path.join(probe.path, 'tayga'), version: '0.9.2',
      prefix: '2001:db8:6464::/96', pool: '198.18.255.0/24', tun: 'dgnat64', problems: [],
    })
    expect(nat64Status({ ...config, nat64: false }, probe)).toMatchObject({ enabled: false, available: true })
  })

  it('says why it is not available', () => {
    const s = nat64Status({ ...config, nat64Pool: '198.19.0.0/16', runDir: '/run/dual gate' }, system({ tun: false }))
    expect(s.available).toBe(false)
    expect(s.problems.join('\n')).toMatch(/tun is missing/)
    expect(s.problems.join('\n')).toMatch(/overlaps the LAN 198.19.0.1\/24/)
    expect(s.problems.join('\n')).toMatch(/white space/)
    expect(nat64Status(config, system({ binary: false })).problems).toEqual(['tayga is not installed (package tayga)'])
  })

  it('derives the prefix from the WAN MAC for "auto", and needs that MAC', () => {
    const mac = '02:00:00:00:00:01'
    expect(nat64Status({ ...config, nat64Prefix: 'auto' }, system({ mac }))).toMatchObject({ available: true, prefix: ulaPrefix(mac) })
    const none = nat64Status({ ...config, nat64Prefix: 'auto' }, system())
    expect(none.available).toBe(false)
    expect(none.prefix).toBeUndefined()
    expect(none.problems).toEqual(['nat64Prefix auto: eth0 has no MAC to derive a prefix from; set nat64Prefix'])
  })
})

describe('the nft table with NAT64', () => {
  const base = { dnatPorts: 'all', lanIf: 'eth1', lanNet: '198.19.0.0/24', clat: { tun: 'dgclat', mss: 1440 } }

  it('is unchanged while NAT64 is off', () => {
    const text = tableDefinition(base)
    expect(text).toContain('comment "dualgate v2 dnat=all lan=eth1,198.19.0.0/24"')
    expect(text).not.toContain('dgnat64')
    expect(text).not.toContain('chain forward')
  })

  it('masquerades toward the LAN and keeps tayga to the LAN, under a stamp of its own', () => {
    const text = tableDefinition({ ...base, nat64: 'dgnat64' })
    expect(text).toContain('comment "dualgate v2 dnat=all lan=eth1,198.19.0.0/24 nat64=dgnat64"')
    expect(text).toContain('iifname "dgnat64" oifname "eth1" masquerade')
    expect(text).toContain('iifname "dgnat64" meta nfproto ipv4 oifname != "eth1" drop')
    expect(text).toContain('oifname "dgnat64" meta nfproto ipv4 iifname != "eth1" drop')
    expect(text).toMatch(/chain input \{[^}]*iifname "dgnat64" ct state established,related accept\n\s*iifname "dgnat64" drop/)
  })
})

describe('inPrefix6', async () => {
  const { inPrefix6 } = await import('../../lib/addr/ipv6.ts')
  it('compares bits, not text', () => {
    expect(inPrefix6('2001:db8:1:0:9893:c3ff:fe37:d240', '2001:db8:1::/64')).toBe(true)
    expect(inPrefix6('2001:db8:10::1', '2001:db8:1::/64')).toBe(false)
    expect(inPrefix6('2001:db8:1:1::1', '2001:db8:1::/64')).toBe(false)
    expect(inPrefix6('2001:db8:1:1::1', '2001:db8:1::/48')).toBe(true)
    expect(inPrefix6('2001:db8::7', '2001:db8::/127')).toBe(false)
    expect(inPrefix6('2001:db8::1', '2001:db8::/127')).toBe(true)
    expect(inPrefix6('not an address', '2001:db8::/32')).toBe(false)
  })
})
