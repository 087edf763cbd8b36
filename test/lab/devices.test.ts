// The device lifecycle against a real network: registered devices get their own identity upstream, an
// unregistered one fails with a reason and recovers once registered, hostile input changes nothing, and a
// pruned device leaves no trace.
import { readdirSync, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { AcquireResult } from '../../jobs/acquire-leases.ts'
import type { PruneResult } from '../../jobs/prune-stale.ts'
import type { ScanResult } from '../../jobs/scan-arp.ts'
import { macvlanName } from '../../lib/addr/mac.ts'
import type { Device } from '../../lib/core/schema.ts'
import { gatewayEnv, runJob } from './gateway.ts'
import { createLab, isRoot, type Lab } from './lab.ts'

async function routerWan(lab: Lab): Promise<string> {
  const { stdout } = await lab.exec(lab.router.ns, 'ip', ['-j', 'addr', 'show', 'dev', lab.router.wanIf])
  const [link] = JSON.parse(stdout) as { address: string; addr_info: { local: string }[] }[]
  return JSON.stringify({ mac: link.address, addrs: link.addr_info.map((a) => a.local).sort() })
}

async function devices(lab: Lab): Promise<Record<string, Device>> {
  const run = await runJob<Device[]>(lab, 'devices')
  expect(run.code, run.stderr).toBe(0)
  return Object.fromEntries(run.result.map((d) => [d.mac, d]))
}

describe.skipIf(!isRoot())('device lifecycle, dual-stack upstream (lab)', () => {
  let lab: Lab
  let wanBefore: string

  beforeAll(async () => {
    lab = await createLab({ mode: 'dual', devices: 4, unregistered: [3] })
    wanBefore = await routerWan(lab)
  })
  afterAll(async () => { await lab?.teardown() })

  it('gives each registered device its own MAC, DHCPv4 and DHCPv6 leases and source address upstream', async () => {
    const scan = await runJob<ScanResult>(lab, 'scan-arp')
    expect(scan.code, scan.stderr).toBe(0)
    expect(scan.result.added.sort()).toEqual(lab.devices.map((d) => d.mac).sort())

    const acquire = await runJob<AcquireResult>(lab, 'acquire-leases', [], { DUALGATE_RETRY_BASE: '1', DUALGATE_RETRY_MAX: '1' })
    expect(acquire.code, acquire.stderr).toBe(0)
    expect(acquire.result.offer).toMatchObject({ dhcpv4: true, ra: true, dhcpv6: true })

    const table = await devices(lab)
    const leases = await lab.upstream.leases()
    for (const dev of lab.devices.slice(0, 3)) {
      const d = table[dev.mac]
      expect(d.status, `${dev.name}: ${d.reason}`).toBe('active')
      expect(d.lanIpv4).toBe(dev.lanIpv4)
      expect(d.wanIpv4).toMatch(/^198\.18\.[1-3]\.\d+$/)
      expect(d.wanIpv6.some((a) => a.startsWith('2001:db8:1:'))).toBe(true)
      expect(leases.v4.find((l) => l.mac === dev.mac)?.ip).toBe(d.wanIpv4)
      expect(leases.v6.some((l) => d.wanIpv6.includes(l.ip))).toBe(true)
      // The upstream web server reports the source address it saw.
      const answer = await lab.fetch(dev.ns, `http://${lab.upstream.ipv4}/`)
      expect(answer).toContain(d.wanIpv4)
    }
    expect(leases.v4.map((l) => l.mac)).not.toContain(lab.router.wanMac)

    const unregistered = table[lab.devices[3].mac]
    expect(unregistered.status).toBe('failed')
    expect(unregistered.reason).toMatch(/no DHCPv4 offer: MAC not registered upstream/)
    expect(unregistered.nextRetry).toBeDefined()
    const links = await lab.exec(lab.router.ns, 'ip', ['-o', 'link', 'show'])
    expect(links.stdout).not.toContain(macvlanName(lab.devices[3].mac))
  })

  it('makes a MAC registered upstream later active on a retry, with nobody touching the gateway', async () => {
    const dev = lab.devices[3]
    await lab.upstream.register(dev.mac)
    await new Promise((r) => setTimeout(r, 1500)) // past nextRetry (retry base 1 s)
    const acquire = await runJob<AcquireResult>(lab, 'acquire-leases')
    expect(acquire.code, acquire.stderr).toBe(0)
    expect(acquire.result.active).toContain(dev.mac)
    const d = (await devices(lab))[dev.mac]
    expect(d.status).toBe('active')
    expect(await lab.fetch(dev.ns, `http://${lab.upstream.ipv4}/`)).toContain(d.wanIpv4)
  })

  it('is idempotent: a second run acquires nothing and keeps every device active', async () => {
    const acquire = await runJob<AcquireResult>(lab, 'acquire-leases')
    expect(acquire.code, acquire.stderr).toBe(0)
    expect(acquire.result.attempted).toBe(0)
    expect(acquire.result.refreshed).toBe(4)
  })

  it('rejects or sanitises hostile input from leases and the neighbour table, changing nothing else', async () => {
    const before = await devices(lab)
    const hostile = path.join(lab.dir, 'hostile.leases')
    const far = Math.floor(Date.now() / 1000) + 3600
    writeFileSync(hostile, [
      `${far} 02:aa:00:00:00:01 198.19.0.201 $(reboot);x *`,
      `${far} 02:aa:00:00:00:02 198.19.0.202 ${'h'.repeat(300)} *`,
      `${far} 02:aa:00:00:00:0g 198.19.0.203 badmac *`,
      `${far} 02:aa:00:00:00:04 198.18.200.9 outside *`,
      `${far} ff:ff:ff:ff:ff:ff 198.19.0.205 broadcast *`,
    ].join('\n'))
    await lab.exec(lab.router.ns, 'ip', ['neigh', 'replace', '198.18.200.10', 'lladdr', '02:aa:00:00:00:05', 'dev', lab.router.lanIf, 'nud', 'stale'])
    const scan = await runJob<ScanResult>(lab, 'scan-arp', [], { DUALGATE_DNSMASQ_LEASES: hostile })
    expect(scan.code, scan.stderr).toBe(0)
    expect(scan.result.added.sort()).toEqual(['02:aa:00:00:00:01', '02:aa:00:00:00:02'])
    expect(scan.result.rejected).toBe(4)
    expect(scan.stderr).toMatch(/malformed MAC/)
    expect(scan.stderr).toMatch(/198\.18\.200\.9 is outside the LAN/)
    expect(scan.stderr).toMatch(/neigh 198\.18\.200\.10 .*outside the LAN/)
    const after = await devices(lab)
    expect(after['02:aa:00:00:00:01'].hostname).toBe('rebootx')
    expect(after['02:aa:00:00:00:02'].hostname).toBe('h'.repeat(63))
    for (const mac of Object.keys(before)) expect(after[mac]).toMatchObject({ status: before[mac].status, wanIpv4: before[mac].wanIpv4 })
    await lab.exec(lab.router.ns, 'ip', ['neigh', 'del', '198.18.200.10', 'dev', lab.router.lanIf], { nothrow: true })
  })

  it('past maxDevices logs clearly and adds no more', async () => {
    const known = Object.values(await devices(lab)).filter((d) => d.status !== 'gone').length
    const leases = path.join(lab.dir, 'crowd.leases')
    const far = Math.floor(Date.now() / 1000) + 3600
    writeFileSync(leases, [1, 2, 3].map((i) => `${far} 02:cc:00:00:00:0${i} 198.19.0.21${i} crowd${i} *`).join('\n'))
    const scan = await runJob<ScanResult>(lab, 'scan-arp', [], { DUALGATE_DNSMASQ_LEASES: leases, DUALGATE_MAX_DEVICES: String(known + 1) })
    expect(scan.code, scan.stderr).toBe(0)
    expect(scan.result.added).toHaveLength(1)
    expect(scan.result.overLimit).toHaveLength(2)
    expect(scan.stderr).toMatch(/maxDevices \(\d+\) reached: 2 devices not added/)
    const table = await devices(lab)
    expect(scan.result.overLimit.filter((mac) => table[mac])).toEqual([])
  })

  it('prunes an unplugged device: no macvlan, rule, route, nft element or client process remains', async () => {
    const dev = lab.devices[0]
    const d = (await devices(lab))[dev.mac]
    const ifname = macvlanName(dev.mac)
    await lab.unplug(dev)
    // The unplugged device's LAN lease is still live in dnsmasq; a device that left releases it or it expires.
    await lab.exec(lab.router.ns, 'ip', ['neigh', 'flush', 'dev', lab.router.lanIf, 'to', dev.lanIpv4], { nothrow: true })
    const leases = path.join(lab.dir, 'no-leases')
    writeFileSync(leases, '')
    await new Promise((r) => setTimeout(r, 11_000)) // past staleAfter since the last scan saw it
    const prune = await runJob<PruneResult>(lab, 'prune-stale', [], { DUALGATE_STALE_AFTER: '10', DUALGATE_DNSMASQ_LEASES: leases })
    expect(prune.code, prune.stderr).toBe(0)
    expect(prune.result.gone).toContain(dev.mac)
    for (const other of lab.devices.slice(1)) expect(prune.result.gone).not.toContain(other.mac)
    expect((await devices(lab))[dev.mac].status).toBe('gone')
    const ns = lab.router.ns
    expect((await lab.exec(ns, 'ip', ['-o', 'link', 'show'])).stdout).not.toContain(ifname)
    const rules = (await lab.exec(ns, 'ip', ['rule', 'show'])).stdout + (await lab.exec(ns, 'ip', ['-6', 'rule', 'show'])).stdout
    expect(rules).not.toContain(`lookup ${d.routeTable}`)
    expect((await lab.exec(ns, 'ip', ['route', 'show', 'table', String(d.routeTable)], { nothrow: true })).stdout.trim()).toBe('')
    const nft = (await lab.exec(ns, 'nft', ['list', 'table', 'inet', 'dualgate'])).stdout
    expect(nft).not.toContain(d.wanIpv4!)
    expect(nft).not.toContain(`${dev.lanIpv4} :`)
    const ps = (await lab.exec(ns, 'ps', ['-eo', 'args'])).stdout
    expect(ps).not.toContain(ifname)
    // The clients' release events reached this gateway's own spool (the DHCPv6 release included).
    const spool = path.join(gatewayEnv(lab).DUALGATE_DATA_DIR, 'spool')
    const events = readdirSync(spool).map((f) => readFileSync(path.join(spool, f), 'utf8')).filter((e) => e.includes(ifname))
    expect(events.some((e) => e.includes('"RELEASE6"'))).toBe(true)
    // The other devices are untouched.
    expect(nft).toContain((await devices(lab))[lab.devices[1].mac].wanIpv4!)
  })

  it("never changes the router's own WAN MAC or addresses", async () => {
    expect(await routerWan(lab)).toBe(wanBefore)
  })
})
