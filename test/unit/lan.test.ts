import { describe, expect, it } from 'vitest'
import { retryDelaySeconds } from '../../lib/core/backoff.ts'
import { cleanHostname } from '../../lib/addr/hostname.ts'
import { isHostIn, maskToPrefix, parseCidr4, parseIpv4 } from '../../lib/addr/ipv4.ts'
import { parseLeases, parseNeighbours } from '../../lib/net/neigh.ts'

const view = { subnet: parseCidr4('198.19.0.1/24'), routerIps: ['198.19.0.1'] }

describe('ipv4', () => {
  it('parses strict dotted quads only', () => {
    expect(parseIpv4('198.19.0.7')).toBe(0xc6130007)
    for (const bad of ['198.19.0', '198.19.0.256', '198.19.0.07', '1.2.3.4 ', '$(x)']) expect(parseIpv4(bad)).toBeUndefined()
  })
  it('knows hosts of a subnet', () => {
    const s = parseCidr4('198.19.0.1/24')
    expect(isHostIn(s, '198.19.0.9')).toBe(true)
    expect(isHostIn(s, '198.19.0.0')).toBe(false)
    expect(isHostIn(s, '198.19.0.255')).toBe(false)
    expect(isHostIn(s, '198.18.0.9')).toBe(false)
  })
  it('reads netmasks', () => {
    expect(maskToPrefix('255.255.252.0')).toBe(22)
    expect(maskToPrefix('24')).toBe(24)
    expect(maskToPrefix('255.0.255.0')).toBeUndefined()
  })
})

describe('cleanHostname', () => {
  it('strips what a DNS label does not allow and says so', () => {
    expect(cleanHostname('$(reboot);x')).toEqual({ hostname: 'rebootx', changed: true })
    expect(cleanHostname('printer-2')).toEqual({ hostname: 'printer-2', changed: false })
    expect(cleanHostname('a'.repeat(300)).hostname).toHaveLength(63)
    expect(cleanHostname('*').hostname).toBeUndefined()
    expect(cleanHostname(';;;').hostname).toBeUndefined()
  })
})

describe('parseNeighbours', () => {
  it('keeps live IPv4 entries of LAN devices and says why others are dropped', () => {
    const json = JSON.stringify([
      { dst: '198.19.0.20', lladdr: '02:00:00:00:00:01', state: ['REACHABLE'] },
      { dst: '198.19.0.21', lladdr: '02:00:00:00:00:02', state: ['STALE'] },
      { dst: '198.19.0.22', state: ['INCOMPLETE'] },
      { dst: '198.19.0.23', lladdr: '02:00:00:00:00:03', state: ['FAILED'] },
      { dst: 'fe80::1', lladdr: '02:00:00:00:00:04', state: ['REACHABLE'] },
      { dst: '10.9.9.9', lladdr: '02:00:00:00:00:05', state: ['REACHABLE'] },
      { dst: '198.19.0.24', lladdr: 'ff:ff:ff:ff:ff:ff', state: ['REACHABLE'] },
      { dst: '198.19.0.25', lladdr: '00:00:00:00:00:00', state: ['REACHABLE'] },
      { dst: '198.19.0.1', lladdr: '02:00:00:00:00:06', state: ['REACHABLE'] },
    ])
    const { seen, rejected } = parseNeighbours(view, json)
    expect(seen.map((s) => s.ip)).toEqual(['198.19.0.20', '198.19.0.21'])
    expect(rejected.map((r) => r.why)).toEqual([
      '10.9.9.9 is outside the LAN',
      'not a device MAC ff:ff:ff:ff:ff:ff',
      'not a device MAC 00:00:00:00:00:00',
      "198.19.0.1 is the router's own address",
    ])
  })
})

describe('parseLeases', () => {
  it('reads live IPv4 leases and sanitises hostnames', () => {
    const text = [
      '2000000000 02:00:00:00:00:01 198.19.0.20 printer 01:02:00:00:00:00:01',
      '0 02:00:00:00:00:02 198.19.0.21 * *',
      '100 02:00:00:00:00:03 198.19.0.22 expired *',
      '2000000000 02:00:00:00:00:04 198.19.0.23 $(reboot);x *',
      '2000000000 nonsense 198.19.0.24 x *',
      'duid 00:01:00:01',
      '2000000000 1234 2001:db8::5 x 00:01',
    ].join('\n')
    const { seen, rejected } = parseLeases(view, text, 1_000_000_000)
    expect(seen).toEqual([
      { mac: '02:00:00:00:00:01', ip: '198.19.0.20', source: 'lease', hostname: 'printer', expires: 2000000000 },
      { mac: '02:00:00:00:00:02', ip: '198.19.0.21', source: 'lease', hostname: undefined, expires: 0 },
      { mac: '02:00:00:00:00:04', ip: '198.19.0.23', source: 'lease', hostname: 'rebootx', expires: 2000000000 },
    ])
    expect(rejected).toHaveLength(1)
    expect(rejected[0].why).toMatch(/malformed MAC/)
  })
})

describe('retryDelaySeconds', () => {
  it('grows exponentially, is capped, and jitters within half', () => {
    expect(retryDelaySeconds(1, 30, 3600, 1)).toBe(30)
    expect(retryDelaySeconds(3, 30, 3600, 1)).toBe(120)
    expect(retryDelaySeconds(20, 30, 3600, 1)).toBe(3600)
    expect(retryDelaySeconds(3, 30, 3600, 0)).toBe(60)
  })
})

describe('parseRdisc6', async () => {
  const { parseRdisc6 } = await import('../../lib/net/upstream.ts')
  it('reads flags, prefixes and the router', () => {
    const text = `Soliciting ff02::2 (ff02::2) on eth0...

Hop limit                 :           64 (      0x40)
Stateful address conf.    :          Yes
Stateful other conf.      :          Yes
Router lifetime           :         1800 (0x00000708) seconds
 Prefix                   : 2001:db8:7::/64
  On-link                 :          Yes
  Autonomous address conf.:          Yes
  Valid time              :         3600 (0x00000e10) seconds
 MTU                      :         1500 bytes (valid)
 Recursive DNS server     : 2001:DB8:7::1
  DNS server lifetime     :          600 (0x00000258) seconds
 from fe80::7001:1ff:fe70:bfc5
`
    expect(parseRdisc6(text)).toEqual({ ra: true, dhcpv6: true, slaac: true, prefixes: ['2001:db8:7::/64'], gateway6: 'fe80::7001:1ff:fe70:bfc5', dns6: ['2001:db8:7::1'] })
    expect(parseRdisc6('Soliciting ff02::2 (ff02::2) on eth0...\nTimed out.\n')).toEqual({ ra: false, dhcpv6: false, slaac: false, prefixes: [], gateway6: undefined, dns6: [] })
  })
})
