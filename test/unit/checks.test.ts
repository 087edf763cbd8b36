// The rules of gateway-diagnose, without a system: fix selection, versions, thresholds, kernel settings,
// differences between the store and the kernel, and the readable report.
import { describe, expect, it } from 'vitest'
import {
  CHECK_IDS, checkClock, checkDisk, checkForwarding, checkNode, checkWanSysctls, failed, formatReport, macvlanDiff, mapDifferences, relayDiff,
  selectFixes, versionAtLeast,
} from '../../lib/diagnose/report.ts'
import { relayFilesNeeded } from '../../lib/diagnose/runner.ts'

describe('selectFixes', () => {
  it('takes repeated options and comma lists, in running order', () => {
    expect(selectFixes(['runner,store', 'nft'], false)).toEqual(['store', 'nft', 'runner'])
    expect(selectFixes([' dnsmasq , dnsmasq '], false)).toEqual(['dnsmasq'])
    expect(selectFixes([], false)).toEqual([])
  })
  it('--fix-all is every check', () => { expect(selectFixes([], true)).toEqual([...CHECK_IDS]) })
  it('names an unknown check', () => { expect(selectFixes(['store,bogus'], false)).toMatch(/unknown check "bogus"/) })
})

describe('versions, clock, disk', () => {
  it('compares versions numerically', () => {
    expect(versionAtLeast('20.19.0', '20.19.0')).toBe(true)
    expect(versionAtLeast('v20.20.2', '20.19.0')).toBe(true)
    expect(versionAtLeast('20.9.0', '20.19.0')).toBe(false)
    expect(versionAtLeast('22.0', '20.19.0')).toBe(true)
  })
  it('wants Node 20.19 or later', () => {
    expect(checkNode('20.19.1').status).toBe('pass')
    expect(checkNode('20.18.3')).toMatchObject({ status: 'fail', reason: expect.stringContaining('20.19.0') })
  })
  it('fails a clock before 2025', () => {
    expect(checkClock(Date.parse('2024-12-31T23:59:59Z')).status).toBe('fail')
    expect(checkClock(Date.parse('2025-06-01T00:00:00Z')).status).toBe('pass')
  })
  it('fails under 1 MiB free, warns when low', () => {
    const MiB = 1 << 20
    expect(checkDisk('/d', 512 * 1024, 100 * MiB).status).toBe('fail')
    expect(checkDisk('/d', 4 * MiB, 1000 * MiB).status).toBe('warn')
    expect(checkDisk('/d', 40 * MiB, 4000 * MiB).status).toBe('warn')
    expect(checkDisk('/d', 400 * MiB, 1000 * MiB)).toMatchObject({ status: 'pass', reason: '400.0 MiB free (40%) at /d' })
  })
})

describe('kernel settings', () => {
  it('needs IPv4 forwarding and only reports IPv6 forwarding', () => {
    expect(checkForwarding('0', '1')).toMatchObject({ status: 'fail', fix: expect.stringContaining('ip_forward=1') })
    expect(checkForwarding('1', '0')).toMatchObject({ status: 'pass', reason: expect.stringContaining('IPv6 forwarding off') })
  })
  it('loosens a strict rp_filter and sets ARP behaviour on the WAN', () => {
    const ok = checkWanSysctls('eth0', { allRp: '0', wanRp: '2', allArpIgnore: '0', wanArpIgnore: '1', allArpAnnounce: '0', wanArpAnnounce: '2' })
    expect(ok.check.status).toBe('pass')
    expect(ok.set).toEqual({})
    const strict = checkWanSysctls('eth0', { allRp: '1', wanRp: '1', allArpIgnore: '0', wanArpIgnore: '0', allArpAnnounce: '0', wanArpAnnounce: '0' })
    expect(strict.check.status).toBe('fail')
    expect(strict.check.reason).toMatch(/strict rp_filter drops inbound traffic/)
    expect(strict.set).toEqual({
      'net.ipv4.conf.all.rp_filter': '2', 'net.ipv4.conf.eth0.rp_filter': '2', 'net.ipv4.conf.eth0.arp_ignore': '1', 'net.ipv4.conf.eth0.arp_announce': '2',
    })
  })
  it('counts the larger of all and the interface, as the kernel does', () => {
    expect(checkWanSysctls('eth0', { allRp: '0', wanRp: '0', allArpIgnore: '1', wanArpIgnore: '0', allArpAnnounce: '2', wanArpAnnounce: '0' }).check.status).toBe('pass')
  })
})

describe('store against the system', () => {
  it('tells missing, wrong and extra map elements apart', () => {
    const want = { dev_snat4: new Map([['198.19.0.5', '198.18.1.7'], ['198.19.0.6', '198.18.1.8']]), fwd4: new Map<string, string>() }
    const have = { dev_snat4: new Map([['198.19.0.5', '198.18.1.9'], ['198.19.0.9', '198.18.1.1']]), fwd4: new Map<string, string>() }
    expect(mapDifferences(want, have)).toEqual(['dev_snat4: 1 missing, 1 wrong, 1 extra'])
    expect(mapDifferences(want, { dev_snat4: new Map(want.dev_snat4), fwd4: new Map() })).toEqual([])
  })
  it('finds orphan macvlans and active devices without theirs', () => {
    const devices = [
      { mac: '02:00:00:00:00:01', status: 'active', ifname: 'dg020000000001' },
      { mac: '02:00:00:00:00:02', status: 'active', ifname: 'dg020000000002' },
      { mac: '02:00:00:00:00:03', status: 'acquiring', ifname: 'dg020000000003' },
      { mac: '02:00:00:00:00:04', status: 'failed', ifname: 'dg020000000004' },
    ]
    const links = ['eth0', 'dg020000000001', 'dg020000000003', 'dg020000000004', 'dg0200000000ff', 'dgsomething']
    expect(macvlanDiff(links, devices)).toEqual({ orphans: ['dg020000000004', 'dg0200000000ff'], missing: ['02:00:00:00:00:02'] })
  })
  it('compares relay listeners by protocol, listen address and target', () => {
    const r = (port: number, target = '198.19.0.5') => ({ listen: { host: '2001:db8:1::1000', port }, target: { host: target, port }, proto: 'tcp' as const })
    expect(relayDiff([r(80), r(23)], [r(23), r(80)])).toEqual({ missing: [], extra: [] })
    expect(relayDiff([r(80)], [r(80, '198.19.0.6'), r(22)])).toEqual({
      missing: ['tcp [2001:db8:1::1000]:80 > 198.19.0.5:80'],
      extra: ['tcp [2001:db8:1::1000]:22 > 198.19.0.5:22', 'tcp [2001:db8:1::1000]:80 > 198.19.0.6:80'],
    })
  })

  it('wants open files for the relay at its limits: two per connection, one per UDP session, and room', () => {
    expect(relayFilesNeeded(1024)).toBe(4096)
    expect(relayFilesNeeded(16_384)).toBeGreaterThan(2 * 16_384 + 16_384)
  })
})

describe('report', () => {
  it('is a table with the fixes and a verdict', () => {
    const checks = [
      { id: 'lan-link', status: 'fail' as const, reason: 'eth1 is down', fix: 'ip link set dev eth1 up' },
      { id: 'store', status: 'pass' as const, reason: 'valid', fix: 'never shown' },
      { id: 'relay', status: 'warn' as const, reason: 'not checked' },
    ]
    const text = formatReport(checks, [])
    expect(text.split('\n')[0]).toMatch(/^CHECK\s+STATUS\s+REASON\s+FIX/)
    expect(text).toMatch(/lan-link\s+FAIL\s+eth1 is down\s+ip link set dev eth1 up/)
    expect(text).not.toContain('never shown')
    expect(text).toMatch(/1 ok, 1 warnings, 1 failing \(run with --fix CHECK or --fix-all\)/)
    expect(failed(checks)).toBe(true)
    const fixed = formatReport(checks.slice(1), [{ id: 'lan-link', action: 'ip link set dev eth1 up', status: 'applied' }])
    expect(fixed).toMatch(/FIXED\s+RESULT\s+ACTION\nlan-link\s+applied\s+ip link set dev eth1 up/)
  })
})

describe('checkNat64', async () => {
  const { checkNat64 } = await import('../../lib/diagnose/report.ts')
  const base = { enabled: false, available: true, version: '0.9.2', prefix: 'fd00:1:2:64::/96', pool: '192.168.255.0/24', problems: [] as string[] }
  it('passes when off, saying whether it could be turned on', () => {
    expect(checkNat64(base, undefined, true)).toMatchObject({ status: 'pass', reason: expect.stringMatching(/off \(tayga 0.9.2 available/) })
    expect(checkNat64({ ...base, available: false, problems: ['tayga not installed'] }, undefined, true)).toMatchObject({ status: 'pass', reason: expect.stringMatching(/not available: tayga not installed/) })
  })
  it('fails when enabled but unavailable or not running under a live runner', () => {
    expect(checkNat64({ ...base, enabled: true, available: false, problems: ['no /dev/net/tun'] }, undefined, true).status).toBe('fail')
    expect(checkNat64({ ...base, enabled: true }, undefined, true)).toMatchObject({ status: 'fail', fix: expect.stringMatching(/restart the runner/) })
    expect(checkNat64({ ...base, enabled: true }, undefined, false).status).toBe('warn')
    expect(checkNat64({ ...base, enabled: true }, 4242, true)).toMatchObject({ status: 'pass', reason: expect.stringMatching(/pid 4242/) })
  })
})

describe('tunnels', async () => {
  const { checkHeUpdate, checkTunnels } = await import('../../lib/diagnose/tunnels.ts')
  const seen = (name: string, exists = true, type: 'wireguard' | 'external' = 'wireguard') => ({ name, iface: name, type, exists })
  const live = (name: string, state: 'unknown' | 'up' | 'degraded' | 'down', primary = false, more: { adminDown?: boolean; lastFault?: string } = {}) => ({ name, state, primary, adminDown: false, ...more })

  it('passes with the links there and a healthy primary', () => {
    expect(checkTunnels([], undefined)).toMatchObject({ status: 'pass', reason: 'no tunnel enabled' })
    expect(checkTunnels([seen('wga'), seen('wgb')], [live('wga', 'up', true), live('wgb', 'degraded')])).toEqual({ id: 'tunnels', status: 'pass', reason: '2 enabled; primary wga' })
    expect(checkTunnels([seen('wga'), seen('wgb')], [live('wga', 'up', true), live('wgb', 'down', false, { adminDown: true })]))
      .toMatchObject({ status: 'pass', reason: expect.stringContaining('wgb set down by tunnels down') })
  })

  it('fails a missing link: ours with the tunnels job as the fix, an external one without a fix', () => {
    expect(checkTunnels([seen('wga', false), seen('wgb')], [live('wga', 'down', false, { lastFault: 'wga does not exist' }), live('wgb', 'up', true)]))
      .toEqual({ id: 'tunnels', status: 'fail', reason: '2 enabled; wga: wga does not exist; primary wgb', fix: 'run the tunnels job' })
    const ext = checkTunnels([seen('ext', false, 'external')], undefined)
    expect(ext).toMatchObject({ status: 'fail', reason: expect.stringContaining('ext: ext does not exist (an external tunnel is brought up by something else)') })
    expect(ext.fix).toBeUndefined()
  })

  it('warns about a tunnel down while another carries IPv6, and fails when none is up', () => {
    expect(checkTunnels([seen('wga'), seen('wgb')], [live('wga', 'up', true), live('wgb', 'down', false, { lastFault: 'no WireGuard handshake for 200 s' })]))
      .toMatchObject({ status: 'warn', reason: '2 enabled; wgb down (no WireGuard handshake for 200 s); primary wga' })
    expect(checkTunnels([seen('wga'), seen('wgb')], [live('wga', 'down'), live('wgb', 'down')]))
      .toMatchObject({ status: 'fail', reason: expect.stringContaining('no tunnel is up') })
  })

  it('fails "no primary" when a tunnel is up but none carries the default route', () => {
    const c = checkTunnels([seen('wga'), seen('wgb')], [live('wga', 'up'), live('wgb', 'down')])
    expect(c).toMatchObject({ status: 'fail', reason: expect.stringMatching(/no primary: wga up, but not carrying the default IPv6 route/) })
    expect(c.fix).toBeUndefined()
    expect(checkTunnels([seen('wga'), seen('wgb')], [live('wga', 'down', true), live('wgb', 'up')]).reason).toMatch(/primary wga is down: wgb up/)
  })

  it('warns when the runner cannot say, or has not measured yet', () => {
    expect(checkTunnels([seen('wga')], undefined)).toMatchObject({ status: 'warn', reason: '1 enabled; health not measured: the runner is not running' })
    expect(checkTunnels([seen('wga')], 'GET /tunnels failed (ECONNREFUSED)')).toMatchObject({ status: 'warn', reason: expect.stringContaining('ECONNREFUSED') })
    expect(checkTunnels([seen('wga')], [live('wga', 'unknown')])).toMatchObject({ status: 'warn', reason: expect.stringContaining('not measured yet') })
  })

  it('he-update: fails a stopped tunnel until its settings change, warns during an abuse back-off', () => {
    const now = Date.parse('2025-06-01T12:00:00Z')
    const he = [{ name: 'he', settings: 'f1' }]
    expect(checkHeUpdate([], {}, now)).toMatchObject({ status: 'pass', reason: 'no 6in4 tunnel with Hurricane Electric settings' })
    expect(checkHeUpdate(he, {}, now)).toMatchObject({ status: 'pass', reason: 'he: no update yet' })
    expect(checkHeUpdate(he, { he: { answer: 'nochg 198.18.0.2', at: '2025-06-01T11:00:00.000Z' } }, now)).toMatchObject({ status: 'pass', reason: 'he: last answer "nochg 198.18.0.2" at 2025-06-01T11:00:00.000Z' })
    const stopped = checkHeUpdate(he, { he: { answer: 'badauth', stopped: { answer: 'badauth', settings: 'f1' } } }, now)
    expect(stopped).toMatchObject({ status: 'fail', reason: expect.stringMatching(/he: the broker answered "badauth" \(wrong user name or update key\); no update is sent until the tunnel's HE settings .* change/) })
    expect(checkHeUpdate(he, { he: { answer: 'badauth', stopped: { answer: 'badauth', settings: 'f0' } } }, now)).toMatchObject({ status: 'pass', reason: expect.stringContaining('the next he-update sends again') })
    expect(checkHeUpdate(he, { he: { answer: 'abuse', backoffUntil: '2025-06-01T15:00:00.000Z' } }, now)).toMatchObject({ status: 'warn', reason: 'he: the broker answered "abuse"; nothing is sent before 2025-06-01T15:00:00.000Z' })
    expect(checkHeUpdate(he, { he: { answer: 'abuse', backoffUntil: '2025-06-01T11:00:00.000Z' } }, now).status).toBe('pass')
  })

  it('are checks diagnose runs, after the runner', () => {
    expect(CHECK_IDS.indexOf('tunnels')).toBeGreaterThan(CHECK_IDS.indexOf('api'))
    expect(selectFixes(['tunnels,he-update'], false)).toEqual(['tunnels', 'he-update'])
  })
})
