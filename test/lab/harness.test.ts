// Proves the network lab itself: what a test of dualgate may rely on. Needs root (network
// namespaces); skipped otherwise. Everything happens inside the lab's namespaces.
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { until } from '../unit/wait.ts'
import { createLab, isRoot, macFromDuid, watchRouterAdverts, type Lab } from './lab.ts'

const execFileP = promisify(execFile)
const root = isRoot()
const why = root ? '' : ' (skipped: needs root for network namespaces)'

/** dhclient -1 exits once bound, and its daemon writes the pid file a moment later. */
async function stopDhclient(lab: Lab, pidFile: string): Promise<void> {
  const read = async () => { try { return readFileSync(pidFile, 'utf8').trim() } catch { return '' } }
  const pid = await until(`pid in ${pidFile}`, read, (p) => /^\d+$/.test(p), 3000)
  await lab.exec(lab.router.ns, 'kill', [pid])
}

async function rootNamespaces(): Promise<string[]> {
  const { stdout } = await execFileP('ip', ['netns', 'list'])
  return stdout.split('\n').map((l) => l.split(' ')[0] ?? '').filter(Boolean)
}

async function pidsOf(lab: Lab): Promise<number[]> {
  const pids: number[] = []
  for (const ns of (await rootNamespaces()).filter((n) => n.startsWith(`dg${lab.id}-`))) {
    const { stdout } = await execFileP('ip', ['netns', 'pids', ns])
    pids.push(...stdout.split('\n').filter(Boolean).map(Number))
  }
  return pids
}

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return !/^\S+ \(.*\) [ZX]/.test(stat)
  } catch {
    return false
  }
}

/** A macvlan on the router's WAN carrying mac, as dualgate makes them (accept_ra=2: the router forwards). */
async function wanMacvlan(lab: Lab, name: string, mac: string): Promise<void> {
  await lab.exec(lab.router.ns, 'ip', ['link', 'add', name, 'link', 'eth0', 'address', mac, 'type', 'macvlan', 'mode', 'private'])
  await lab.exec(lab.router.ns, 'sysctl', ['-q', '-w', `net.ipv6.conf.${name}.accept_dad=0`, `net.ipv6.conf.${name}.accept_ra=2`])
  await lab.exec(lab.router.ns, 'ip', ['link', 'set', name, 'up'])
}

async function udhcpcOnce(lab: Lab, ifname: string, tries = 2) {
  return lab.exec(lab.router.ns, 'udhcpc', ['-q', '-n', '-i', ifname, '-s', '/bin/true', '-t', String(tries), '-T', '1'], { nothrow: true, timeoutMs: 15_000 })
}

function upstreamLog(lab: Lab): string {
  return readFileSync(join(lab.dir, 'upstream-dnsmasq.log'), 'utf8')
}

describe.skipIf(!root)(`lab in dual mode, 3 devices, dev2 unregistered${why}`, () => {
  let lab: Lab
  let scriptDir: string
  let createMs = 0
  let pids: number[] = []
  let labNamespaces: string[] = []

  beforeAll(async () => {
    // A dhcp-script that records its arguments and the environment dnsmasq hands it.
    scriptDir = mkdtempSync(join(tmpdir(), 'dualgate-labtest-'))
    const script = join(scriptDir, 'hook.sh')
    writeFileSync(script, '#!/bin/sh\necho "$1 $2 $3 $4 data=$DUALGATE_DATA_DIR iface=$DNSMASQ_INTERFACE" >> "$DUALGATE_DATA_DIR/events"\n')
    chmodSync(script, 0o755)
    const t0 = Date.now()
    lab = await createLab({ mode: 'dual', devices: 3, unregistered: [2], dhcpScript: script, dhcpScriptEnv: { DUALGATE_DATA_DIR: scriptDir } })
    createMs = Date.now() - t0
  })

  afterAll(async () => {
    await lab?.teardown()
    if (scriptDir) rmSync(scriptDir, { recursive: true, force: true })
  })

  it('builds in a few seconds, with every namespace named after the lab id', async () => {
    expect(lab.id).toMatch(/^[0-9a-f]{4}$/)
    expect(createMs).toBeLessThan(15_000)
    const mine = (await rootNamespaces()).filter((n) => n.startsWith(`dg${lab.id}-`))
    expect(mine.sort()).toEqual([lab.router.ns, lab.upstream.ns, `dg${lab.id}-sw`, lab.client4.ns, lab.client6.ns, ...lab.devices.map((d) => d.ns)].sort())
  })

  it('gives every device a LAN lease, and each answers HTTP from the router', async () => {
    expect(lab.devices.map((d) => d.name)).toEqual(['dev0', 'dev1', 'dev2'])
    const leases = readFileSync(lab.router.leasesFile, 'utf8')
    for (const d of lab.devices) {
      expect(d.lanIpv4).toMatch(/^198\.19\.0\.\d+$/)
      expect(leases).toMatch(new RegExp(`^\\d+ ${d.mac} ${d.lanIpv4.replaceAll('.', '\\.')} ${d.hostname} `, 'm'))
      expect(await lab.fetch(lab.router.ns, `http://${d.lanIpv4}/`)).toBe(`device ${d.name} peer ${lab.router.lanIp}\n`)
      expect(readFileSync(d.peerLog, 'utf8')).toContain(`http ${lab.router.lanIp}`)
    }
    // Devices are IPv4 only.
    const v6 = await lab.exec(lab.devices[0]!.ns, 'ip', ['-6', 'addr'])
    expect(v6.stdout.trim()).toBe('')
  })

  it('hands the router dnsmasq environment on to its dhcp-script', async () => {
    const events = readFileSync(join(scriptDir, 'events'), 'utf8')
    for (const d of lab.devices) expect(events).toContain(`add ${d.mac} ${d.lanIpv4} ${d.hostname} data=${scriptDir} iface=eth1`)
  })

  it('upstream DHCPv4 leases a registered device MAC on a WAN macvlan', async () => {
    const dev = lab.devices[0]!
    await wanMacvlan(lab, 'mv0', dev.mac)
    const r = await udhcpcOnce(lab, 'mv0')
    expect(r.code, r.stderr).toBe(0)
    const ip = /lease of (198\.18\.\d+\.\d+) obtained/.exec(r.stderr)?.[1]
    expect(ip).toBeDefined()
    const { v4 } = await lab.upstream.leases()
    expect(v4).toContainEqual(expect.objectContaining({ mac: dev.mac, ip }))
  })

  it('upstream DHCPv4 ignores an unregistered MAC, until it is registered', async () => {
    const dev = lab.devices[2]!
    await wanMacvlan(lab, 'mv2', dev.mac)
    const r = await udhcpcOnce(lab, 'mv2')
    expect(r.code).not.toBe(0)
    expect(r.stderr).toContain('no lease')
    expect((await lab.upstream.leases()).v4.map((l) => l.mac)).not.toContain(dev.mac)
    expect(upstreamLog(lab)).toContain(`DHCPDISCOVER(br0) ${dev.mac} ignored`)

    await lab.upstream.register(dev.mac)
    const ok = await udhcpcOnce(lab, 'mv2')
    expect(ok.code, ok.stderr).toBe(0)
    expect((await lab.upstream.leases()).v4.map((l) => l.mac)).toContain(dev.mac)

    await lab.upstream.unregister(dev.mac)
    expect((await udhcpcOnce(lab, 'mv2', 1)).code).not.toBe(0)
  })

  it('upstream DHCPv6 leases a registered MAC (dhclient -6 -D LL) and ignores an unregistered one', async () => {
    const reg = lab.devices[0]!
    const unreg = lab.devices[2]!
    const args = (ifname: string) => ['-6', '-D', 'LL', '-1', '-v', '-lf', join(lab.dir, `${ifname}.lease6`), '-pf', join(lab.dir, `${ifname}.pid6`), '-sf', '/bin/true', ifname]
    const r = await lab.exec(lab.router.ns, 'timeout', ['10', 'dhclient', ...args('mv0')], { nothrow: true, timeoutMs: 15_000 })
    expect(r.code, r.stderr).toBe(0)
    const ip = /IAADDR (2001:db8:1::[0-9a-f:]+)/.exec(r.stderr)?.[1]
    expect(ip).toBeDefined()
    const { v6 } = await lab.upstream.leases()
    const lease = v6.find((l) => l.ip === ip)
    expect(lease).toBeDefined()
    expect(macFromDuid(lease!.duid)).toBe(reg.mac)

    // dnsmasq goes by the link-layer MAC, not the DUID: a DUID-LL naming the unregistered MAC, sent
    // from the registered MAC's interface, is served.
    await stopDhclient(lab, join(lab.dir, 'mv0.pid6'))
    const foreign = [0, 3, 0, 1, ...unreg.mac.split(':').map((h) => Number.parseInt(h, 16))]
    writeFileSync(join(lab.dir, 'duid.lease6'), `default-duid "${foreign.map((b) => `\\${b.toString(8).padStart(3, '0')}`).join('')}";\n`)
    const d = await lab.exec(lab.router.ns, 'timeout', ['10', 'dhclient', '-6', '-1', '-v', '-lf', join(lab.dir, 'duid.lease6'), '-pf', join(lab.dir, 'duid.pid6'), '-sf', '/bin/true', 'mv0'], { nothrow: true, timeoutMs: 15_000 })
    expect(d.code, d.stderr).toBe(0)
    expect((await lab.upstream.leases()).v6.map((l) => macFromDuid(l.duid))).toContain(unreg.mac)
    await stopDhclient(lab, join(lab.dir, 'duid.pid6'))

    const u = await lab.exec(lab.router.ns, 'timeout', ['4', 'dhclient', ...args('mv2')], { nothrow: true, timeoutMs: 10_000 })
    expect(u.code).toBe(124) // still soliciting when cut off
    expect(u.stderr).not.toContain('Bound to lease')
    const fromUnreg = (await lab.upstream.leases()).v6.filter((l) => macFromDuid(l.duid) === unreg.mac)
    expect(fromUnreg).toHaveLength(1) // only the one leased through mv0 above
    expect(upstreamLog(lab)).toMatch(new RegExp(`DHCPSOLICIT\\(br0\\) 00:03:00:01:${unreg.mac} ignored`))
  })

  it('upstream advertises 2001:db8:1::/64 with M (and O) flags and an autonomous prefix', async () => {
    const dev = lab.devices[1]!
    const ras = await watchRouterAdverts(lab, lab.router.ns, 2_500, () => wanMacvlan(lab, 'mv1', dev.mac))
    expect(ras.length).toBeGreaterThan(0)
    for (const ra of ras) {
      expect(ra.managed).toBe(true)
      expect(ra.other).toBe(true)
      expect(ra.routerLifetime).toBeGreaterThan(0)
      expect(ra.prefixes).toContainEqual({ prefix: '2001:db8:1::', length: 64, onLink: true, autonomous: true })
    }
    // SLAAC on the macvlan: an address from the prefix with the device MAC's EUI-64.
    const addr = await lab.exec(lab.router.ns, 'ip', ['-6', '-o', 'addr', 'show', 'dev', 'mv1', 'scope', 'global'])
    expect(addr.stdout).toMatch(/inet6 2001:db8:1:0:[0-9a-f:]+\/64/)
  })

  it('drops every other frame from unregistered MACs at the upstream firewall', async () => {
    // ARP to the upstream gateway: answered for a registered source MAC, dropped for an unregistered one.
    const arp = (ifname: string, src: string) =>
      lab.exec(lab.router.ns, 'arping', ['-i', ifname, '-S', src, '-c', '2', '-C', '1', '-w', '2', lab.upstream.ipv4], { nothrow: true, timeoutMs: 10_000 })
    const ok = await arp('mv0', '198.18.0.50')
    expect(ok.code, ok.stdout + ok.stderr).toBe(0)
    const counter = async () => Number(/counter packets (\d+)/.exec((await lab.exec(lab.upstream.ns, 'nft', ['list', 'chain', 'bridge', 'dgfw', 'pre'])).stdout)?.[1])
    const before = await counter()
    const blocked = await arp('mv2', '198.18.0.51')
    expect(blocked.code).not.toBe(0)
    expect(await counter()).toBeGreaterThan(before)
  })

  it('lets client4 and client6 fetch the upstream page from their own addresses', async () => {
    expect(await lab.fetch(lab.client4.ns, `http://${lab.upstream.ipv4}/`)).toBe(`you are ${lab.client4.ip}\n`)
    expect(await lab.fetch(lab.client6.ns, `http://[${lab.upstream.ipv6}]/`)).toBe(`you are ${lab.client6.ip}\n`)
    // client6 has no IPv4 at all
    await expect(lab.fetch(lab.client6.ns, `http://${lab.upstream.ipv4}/`, 1_000)).rejects.toThrow()
    expect(readFileSync(join(lab.dir, 'upstream-http.peers'), 'utf8')).toContain(`http ${lab.client6.ip}`)
  })

  it('adds and unplugs a device', async () => {
    const dev = await lab.addDevice({ hostname: 'late-comer' })
    expect(dev.name).toBe('dev3')
    expect(lab.devices).toContain(dev)
    expect(await lab.fetch(lab.router.ns, `http://${dev.lanIpv4}/`)).toContain('device dev3 ')
    await lab.unplug(dev)
    expect(lab.devices).not.toContain(dev)
    expect(await rootNamespaces()).not.toContain(dev.ns)
    await expect(lab.fetch(lab.router.ns, `http://${dev.lanIpv4}/`, 1_000)).rejects.toThrow()
    await expect(lab.exec(dev.ns, 'true', [])).rejects.toThrow(/not a namespace of lab/)
  })

  it('adds a crowd of 200 devices in one namespace, each with its own LAN lease', async () => {
    const t0 = Date.now()
    const crowd = await lab.addCrowd(200)
    const ms = Date.now() - t0
    expect(ms).toBeLessThan(60_000)
    expect(crowd.macs).toHaveLength(200)
    expect(new Set(crowd.macs).size).toBe(200)
    const leases = readFileSync(lab.router.leasesFile, 'utf8')
    for (const mac of crowd.macs) expect(leases).toContain(` ${mac} 198.19.0.`)
    const addrs = await lab.exec(crowd.ns, 'ip', ['-4', '-o', 'addr', 'show', 'scope', 'global'])
    expect(new Set(addrs.stdout.match(/198\.19\.0\.\d+/g)).size).toBe(200)
    // registered upstream (both in dnsmasq's hosts file and the firewall's set)
    const set = (await lab.exec(lab.upstream.ns, 'nft', ['list', 'set', 'bridge', 'dgfw', 'registered'])).stdout
    for (const mac of crowd.macs) expect(set).toContain(mac)
  })

  it('tears down completely, and a second teardown is a no-op', async () => {
    pids = await pidsOf(lab)
    labNamespaces = (await rootNamespaces()).filter((n) => n.startsWith(`dg${lab.id}-`))
    expect(pids.length).toBeGreaterThanOrEqual(2 + 2 * lab.devices.length) // dnsmasq x2, http, per device udhcpc + services
    expect(labNamespaces.length).toBeGreaterThan(0)
    await lab.teardown()
    await lab.teardown()
    expect((await rootNamespaces()).filter((n) => n.startsWith(`dg${lab.id}-`))).toEqual([])
    expect(pids.filter(alive)).toEqual([])
    expect(() => readFileSync(join(lab.dir, 'owner'))).toThrow()
  })
})

describe.skipIf(!root)(`lab in ipv4 mode${why}`, () => {
  let lab: Lab
  beforeAll(async () => {
    lab = await createLab({ mode: 'ipv4', devices: 1, leaseTime: 120 })
  })
  afterAll(async () => lab?.teardown())

  it('offers DHCPv4 and no RA or DHCPv6 upstream', async () => {
    const dev = lab.devices[0]!
    const ras = await watchRouterAdverts(lab, lab.router.ns, 2_000, () => wanMacvlan(lab, 'mv0', dev.mac))
    expect(ras).toEqual([])
    const r = await udhcpcOnce(lab, 'mv0')
    expect(r.code, r.stderr).toBe(0)
    expect(r.stderr).toContain('lease time 120')
    const sockets = (await lab.exec(lab.upstream.ns, 'ss', ['-u', '-a', '-n'])).stdout
    expect(sockets).toMatch(/:67\b/)
    expect(sockets).not.toMatch(/:547\b/)
    const global6 = await lab.exec(lab.upstream.ns, 'ip', ['-6', 'addr', 'show', 'scope', 'global'])
    expect(global6.stdout.trim()).toBe('')
    expect(await lab.fetch(lab.client4.ns, `http://${lab.upstream.ipv4}/`)).toBe(`you are ${lab.client4.ip}\n`)
  })
})

describe.skipIf(!root)(`lab in ipv6 mode${why}`, () => {
  let lab: Lab
  beforeAll(async () => {
    lab = await createLab({ mode: 'ipv6', devices: 1 })
  })
  afterAll(async () => lab?.teardown())

  it('offers RA and DHCPv6 and no IPv4 at all upstream', async () => {
    const dev = lab.devices[0]!
    const ras = await watchRouterAdverts(lab, lab.router.ns, 2_000, () => wanMacvlan(lab, 'mv0', dev.mac))
    expect(ras.length).toBeGreaterThan(0)
    expect(ras[0]).toMatchObject({ managed: true, prefixes: [{ prefix: '2001:db8:1::', length: 64, autonomous: true }] })
    const r = await udhcpcOnce(lab, 'mv0')
    expect(r.code).not.toBe(0)
    const sockets = (await lab.exec(lab.upstream.ns, 'ss', ['-u', '-a', '-n'])).stdout
    expect(sockets).not.toMatch(/:67\b/)
    expect(sockets).toMatch(/:547\b/)
    for (const ns of [lab.upstream.ns, lab.router.ns]) {
      const v4 = await lab.exec(ns, 'ip', ['-4', 'addr', 'show', 'dev', ns === lab.router.ns ? 'eth0' : 'br0'])
      expect(v4.stdout.trim()).toBe('')
    }
    // The LAN side stays IPv4: the device still has its lease.
    expect(dev.lanIpv4).toMatch(/^198\.19\.0\./)
    expect(await lab.fetch(lab.client6.ns, `http://[${lab.upstream.ipv6}]/`)).toBe(`you are ${lab.client6.ip}\n`)
  })
})
