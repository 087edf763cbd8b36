// IPv4-only and IPv6-only upstreams get only the requests that can succeed, leases renew, and a renumbered
// upstream IPv6 prefix moves every device (and its relay listeners) to the new prefix.
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { AcquireResult } from '../../jobs/acquire-leases.ts'
import { macvlanName } from '../../lib/addr/mac.ts'
import { inPrefix6 } from '../../lib/addr/ipv6.ts'
import type { RelayRule } from '../../lib/reach/relay.ts'
import type { Device } from '../../lib/core/schema.ts'
import { api, gatewayEnv, runJob, startRunner, until, type LabRunner } from './gateway.ts'
import { createLab, isRoot, type Lab } from './lab.ts'

async function onlyDevice(lab: Lab): Promise<Device> {
  const run = await runJob<Device[]>(lab, 'devices')
  expect(run.code, run.stderr).toBe(0)
  return run.result[0]
}

async function clients(lab: Lab): Promise<string> {
  return (await lab.exec(lab.router.ns, 'ps', ['-eo', 'args'])).stdout.split('\n').filter((l) => l.includes(macvlanName(lab.devices[0].mac))).join('\n')
}

describe.skipIf(!isRoot())('IPv4-only upstream (lab)', () => {
  let lab: Lab
  beforeAll(async () => { lab = await createLab({ mode: 'ipv4', devices: 1, leaseTime: 120 }) })
  afterAll(async () => { await lab?.teardown() })

  it('requests DHCPv4 only and becomes active', async () => {
    expect((await runJob(lab, 'scan-arp')).code).toBe(0)
    const acquire = await runJob<AcquireResult>(lab, 'acquire-leases')
    expect(acquire.code, acquire.stderr).toBe(0)
    expect(acquire.result.offer).toMatchObject({ dhcpv4: true, ra: false, dhcpv6: false })
    const d = await onlyDevice(lab)
    expect(d.status).toBe('active')
    expect(d.wanIpv4).toMatch(/^198\.18\./)
    expect(d.wanIpv6).toEqual([])
    const running = await clients(lab)
    expect(running).toContain('udhcpc')
    expect(running).not.toContain('dhclient')
  })

  it('keeps the address and connectivity past the lease time (120 s lease, renewed by udhcpc)', async () => {
    const d = await onlyDevice(lab)
    const first = (await lab.upstream.leases()).v4.find((l) => l.mac === d.mac)!
    expect(first.ip).toBe(d.wanIpv4)
    // Past the first lease's end: the lease must have been renewed for the same address.
    const until = first.expires * 1000 + 5000
    while (Date.now() < until) await new Promise((r) => setTimeout(r, 5000))
    const later = (await lab.upstream.leases()).v4.find((l) => l.mac === d.mac)!
    expect(later.ip).toBe(d.wanIpv4)
    expect(later.expires).toBeGreaterThan(first.expires)
    expect(await lab.fetch(lab.devices[0].ns, `http://${lab.upstream.ipv4}/`)).toContain(d.wanIpv4)
    const acquire = await runJob<AcquireResult>(lab, 'acquire-leases')
    expect(acquire.result.attempted).toBe(0)
    expect((await onlyDevice(lab)).status).toBe('active')
  }, 200_000)
})

describe.skipIf(!isRoot())('IPv6-only upstream (lab)', () => {
  let lab: Lab
  beforeAll(async () => { lab = await createLab({ mode: 'ipv6', devices: 1 }) })
  afterAll(async () => { await lab?.teardown() })

  it('requests IPv6 only (RA, DHCPv6 under the DUID-LL of the device) and becomes active', async () => {
    expect((await runJob(lab, 'scan-arp')).code).toBe(0)
    const acquire = await runJob<AcquireResult>(lab, 'acquire-leases')
    expect(acquire.code, acquire.stderr).toBe(0)
    expect(acquire.result.offer).toMatchObject({ dhcpv4: false, ra: true, dhcpv6: true, slaac: true })
    const d = await onlyDevice(lab)
    expect(d.status, d.reason).toBe('active')
    expect(d.wanIpv4).toBeUndefined()
    expect(d.wanIpv6.length).toBeGreaterThanOrEqual(2) // DHCPv6 and SLAAC
    const leases = (await lab.upstream.leases()).v6
    const mine = leases.find((l) => d.wanIpv6.includes(l.ip))
    expect(mine?.duid).toBe(`00:03:00:01:${d.mac}`)
    const running = await clients(lab)
    expect(running).toContain('dhclient')
    expect(running).not.toContain('udhcpc')
  })
})

describe.skipIf(!isRoot())('dual-stack upstream renumbered (lab)', () => {
  let lab: Lab
  let runner: LabRunner
  const relayHosts = async () => new Set((await api<{ rules: RelayRule[] }>(lab, 'GET', '/relay')).body.rules.map((r) => r.listen.host))
  beforeAll(async () => { lab = await createLab({ mode: 'dual', devices: 1 }) })
  afterAll(async () => {
    await runner?.stop()
    await lab?.teardown()
  })

  it('re-acquires the device once in the new prefix; the relay follows and the old addresses are gone', async () => {
    expect((await runJob(lab, 'scan-arp')).code).toBe(0)
    expect((await runJob(lab, 'acquire-leases')).code).toBe(0)
    const before = await onlyDevice(lab)
    expect(before.status, before.reason).toBe('active')
    expect(before.wanIpv6.length).toBeGreaterThan(0)
    expect(before.wanIpv6.every((a) => inPrefix6(a, lab.upstream.prefix6))).toBe(true)
    // The runner follows the relay; acquire-leases is run by hand here, so its cron must not race it.
    runner = startRunner(lab, { DUALGATE_SCHEDULE_ACQUIRE_LEASES: '' })
    await until('relay listeners on the old addresses', 20_000, async () => ((await relayHosts()).has(before.wanIpv6[0]) ? true : undefined))

    const prefix = await lab.upstream.renumber6()
    // The device's DHCPv6 client may notice first and its hook event start the runner's acquire-leases; this
    // run then waits for that one (the job lock) and finds the work done. Either way: exactly one re-acquire.
    const acquire = await runJob<AcquireResult>(lab, 'acquire-leases')
    expect(acquire.code, acquire.stderr).toBe(0)
    expect(acquire.result.offer?.prefixes).toEqual([prefix])
    const log = readFileSync(path.join(gatewayEnv(lab).DUALGATE_DATA_DIR, 'logs', 'dualgate.log'), 'utf8')
    expect(log.split('\n').filter((l) => l.includes('upstream IPv6 prefix changed'))).toHaveLength(1)
    expect(log.split('\n').filter((l) => l.includes(`${before.mac} active -> acquiring`))).toHaveLength(1)

    const after = await onlyDevice(lab)
    expect(after.status, after.reason).toBe('active')
    expect(after.wanIpv4).toBe(before.wanIpv4)
    expect(after.wanIpv6.length).toBeGreaterThan(0)
    expect(after.wanIpv6.every((a) => inPrefix6(a, prefix)), after.wanIpv6.join(' ')).toBe(true)
    const onLink = (await lab.exec(lab.router.ns, 'ip', ['-6', '-o', 'addr', 'show', 'dev', macvlanName(before.mac), 'scope', 'global'])).stdout
    for (const old of before.wanIpv6) expect(onLink).not.toContain(old)
    // A DHCPv6 lease upstream in the new prefix, under the device's DUID.
    expect((await lab.upstream.leases()).v6.find((l) => after.wanIpv6.includes(l.ip))).toMatchObject({ duid: `00:03:00:01:${before.mac}` })

    const hosts = await until('relay listeners on the new addresses only', 20_000, async () => {
      const h = await relayHosts()
      return after.wanIpv6.every((a) => h.has(a)) && before.wanIpv6.every((a) => !h.has(a)) ? h : undefined
    })
    expect(hosts.size).toBe(after.wanIpv6.length)
    expect(await lab.fetch(lab.client6.ns, `http://[${after.wanIpv6[0]}]:80/`)).toContain(`device ${lab.devices[0].name}`)

    // Once per change: the next run sees the prefix it recorded and leaves the device alone.
    const again = await runJob<AcquireResult>(lab, 'acquire-leases')
    expect(again.result.reacquired).toEqual([])
    expect(again.result.attempted).toBe(0)
  }, 120_000)
})
