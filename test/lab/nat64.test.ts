// NAT64 (tayga in the runner): an IPv6-only client reaches every port and protocol of a LAN device at
// <prefix>::<its LAN IPv4>, the device seeing the router as its peer; nothing of it exists while nat64 is off;
// tayga is restarted when it dies and gone when the runner stops; the router itself and what lies beyond the
// LAN stay out of reach. The upstream routing the prefix to the router is the network's part: here a route on
// client6.
import { readFileSync, writeFileSync } from 'node:fs'
import { readdir } from 'node:fs/promises'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Nat64State } from '../../lib/nat64/supervisor.ts'
import { api, runJob, startRunner, until, type LabRunner } from './gateway.ts'
import { createLab, isRoot, type Lab } from './lab.ts'

const PREFIX = '2001:db8:6464::/96'
const POOL = '198.18.255.0/24'
const mapped = (ipv4: string) => `2001:db8:6464::${ipv4}`

const UDP_PROBE = `const s = require('node:dgram').createSocket('udp6');
const [host, port] = process.argv.slice(1);
const t = setTimeout(() => { console.error('no answer'); process.exit(1) }, 3000);
s.on('message', (m) => { console.log(String(m)); clearTimeout(t); s.close() });
s.send('ping-' + process.pid, Number(port), host);`

// One connection on a port neither services.mjs nor the relay knows, answered with the peer's address.
const EXTRA_SERVER = `const s = require('node:net').createServer((c) => { c.end('extra ' + c.remoteAddress + '\\n'); s.close() });
s.listen(Number(process.argv[1]), '0.0.0.0');`
const TCP_PROBE = `const [host, port] = process.argv.slice(1);
const c = require('node:net').connect(Number(port), host);
let out = '';
setTimeout(() => { console.error('no answer'); process.exit(1) }, 3000);
c.on('data', (d) => { out += d });
c.on('end', () => { console.log(out.trim()); process.exit(0) });
c.on('error', (e) => { console.error(e.message); process.exit(1) });`

describe.skipIf(!isRoot())('NAT64 through tayga (lab, dual-stack)', () => {
  let lab: Lab
  let runner: LabRunner | undefined
  const env = { DUALGATE_NAT64_PREFIX: PREFIX, DUALGATE_NAT64_POOL: POOL }
  const on = { ...env, DUALGATE_NAT64: '1' }

  const nat64 = async () => (await api<Nat64State>(lab, 'GET', '/nat64')).body
  const tun = async () => (await lab.exec(lab.router.ns, 'ip', ['-j', 'link', 'show', 'dev', 'dgnat64'], { nothrow: true })).code === 0
  /** tayga processes of this lab, wherever they are (their command line names the lab's run dir). */
  const taygas = async () => {
    const found: number[] = []
    for (const name of await readdir('/proc')) {
      if (!/^\d+$/.test(name)) continue
      try {
        const cmdline = readFileSync(`/proc/${name}/cmdline`, 'utf8')
        if (path.basename(cmdline.split('\0')[0]) === 'tayga' && cmdline.includes(lab.dir)) found.push(Number(name))
      } catch { /* gone */ }
    }
    return found
  }
  const rules = async () => (await lab.exec(lab.router.ns, 'ip', ['-4', 'rule', 'show'])).stdout

  beforeAll(async () => {
    lab = await createLab({ mode: 'dual', devices: 2 })
    expect((await runJob(lab, 'scan-arp', [], env)).code).toBe(0)
    const acquired = await runJob(lab, 'acquire-leases', [], env)
    expect(acquired.code, acquired.stderr).toBe(0)
    await lab.exec(lab.client6.ns, 'ip', ['-6', 'route', 'add', PREFIX, 'via', '2001:db8:1::2', 'dev', 'eth0'])
  })
  afterAll(async () => {
    await runner?.stop()
    await lab?.teardown()
  })

  it('is off by default: no tayga, no dgnat64, no NAT64 rules; /nat64 says whether it could run', async () => {
    runner = startRunner(lab, env)
    const state = await until('the API', 10_000, nat64)
    expect(state).toMatchObject({ enabled: false, available: true, running: false, prefix: PREFIX, pool: POOL, tun: 'dgnat64', problems: [] })
    expect(state.version).toMatch(/^\d+\.\d+/)
    // Two supervision passes.
    await new Promise((r) => setTimeout(r, 2100))
    expect(await taygas()).toEqual([])
    expect(await tun()).toBe(false)
    expect(await rules()).not.toContain(POOL)
    expect((await lab.exec(lab.router.ns, 'nft', ['list', 'table', 'inet', 'dualgate'])).stdout).not.toContain('dgnat64')
    expect(await runner.stop()).toBe(0)
    runner = undefined
  })

  it('runs one tayga when on: TUN up, routes, the pool rule, NAT64 rules in our table', async () => {
    runner = startRunner(lab, on)
    const state = await until('tayga running', 10_000, async () => {
      const s = await nat64()
      return s.running && (await rules()).includes(POOL) ? s : undefined
    })
    expect(state).toMatchObject({ enabled: true, available: true, prefix: PREFIX, restarts: 0 })
    expect(await taygas()).toEqual([state.pid])
    expect(state.devices.map((d) => d.address).sort()).toEqual(lab.devices.map((d) => mapped(d.lanIpv4)).sort())
    const link = JSON.parse((await lab.exec(lab.router.ns, 'ip', ['-j', 'link', 'show', 'dev', 'dgnat64'])).stdout)[0]
    expect(link.flags).toContain('UP')
    expect((await lab.exec(lab.router.ns, 'ip', ['-6', 'route', 'show', PREFIX])).stdout).toContain('dev dgnat64')
    expect((await lab.exec(lab.router.ns, 'ip', ['-4', 'route', 'show', POOL])).stdout).toContain('dev dgnat64')
    await until('NAT64 rules in inet dualgate', 10_000, async () =>
      ((await lab.exec(lab.router.ns, 'nft', ['list', 'table', 'inet', 'dualgate'])).stdout.includes('iifname "dgnat64" oifname "eth1" masquerade') ? true : undefined))
  })

  it("serves an IPv6-only client each device's page at <prefix>::<LAN IPv4>, the device seeing the router", async () => {
    for (const dev of lab.devices) {
      const page = await lab.fetch(lab.client6.ns, `http://[${mapped(dev.lanIpv4)}]/`)
      expect(page).toBe(`device ${dev.name} peer ${lab.router.lanIp}\n`)
      expect(readFileSync(dev.peerLog, 'utf8').trim().split('\n').at(-1)).toBe(`http ${lab.router.lanIp}`)
    }
  })

  it('carries UDP (the echo on port 7, which the relay does not serve) and ICMP echo', async () => {
    const dev = lab.devices[0]
    const udp = await lab.exec(lab.client6.ns, process.execPath, ['-e', UDP_PROBE, mapped(dev.lanIpv4), '7'], { nothrow: true, timeoutMs: 10_000 })
    expect(udp.code, udp.stderr).toBe(0)
    expect(udp.stdout).toContain('ping-')
    expect(readFileSync(dev.peerLog, 'utf8')).toContain(`udp ${lab.router.lanIp}`)
    const ping = await lab.exec(lab.client6.ns, 'busybox', ['ping', '-6', '-c', '1', '-W', '2', mapped(dev.lanIpv4)], { nothrow: true, timeoutMs: 5000 })
    expect(ping.code, ping.stdout + ping.stderr).toBe(0)
  })

  it('reaches a TCP port nothing relays', async () => {
    const dev = lab.devices[1]
    const server = lab.exec(dev.ns, process.execPath, ['-e', EXTRA_SERVER, '2345'], { nothrow: true, timeoutMs: 15_000 })
    await until('the extra listener', 5000, async () => ((await lab.exec(dev.ns, 'ss', ['-ltn'])).stdout.includes(':2345 ') ? true : undefined))
    const tcp = await lab.exec(lab.client6.ns, process.execPath, ['-e', TCP_PROBE, mapped(dev.lanIpv4), '2345'], { nothrow: true, timeoutMs: 10_000 })
    expect(tcp.code, tcp.stderr).toBe(0)
    expect(tcp.stdout.trim()).toBe(`extra ${lab.router.lanIp}`)
    expect((await server).code).toBe(0)
  })

  it('does not reach the router itself or anything beyond the LAN', async () => {
    // As fw4 does on OpenWrt: the WAN masqueraded (and fw4 accepts "dg*"). Without our rules, NAT64 would
    // then carry IPv6 clients out to the IPv4 WAN.
    const file = path.join(lab.dir, 'fw4like.nft')
    writeFileSync(file, 'table ip fw4like {\n  chain srcnat {\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname "eth0" masquerade\n  }\n}\n')
    await lab.exec(lab.router.ns, 'nft', ['-f', file])
    try {
      const ping = await lab.exec(lab.client6.ns, 'busybox', ['ping', '-6', '-c', '1', '-W', '1', mapped(lab.router.lanIp)], { nothrow: true, timeoutMs: 5000 })
      expect(ping.stdout).toContain('0 packets received')
      // The upstream's web server answers anyone who reaches it.
      await expect(lab.fetch(lab.client6.ns, `http://[${mapped(lab.upstream.ipv4)}]/`, 1500)).rejects.toThrow(/timed out/)
    } finally {
      await lab.exec(lab.router.ns, 'nft', ['delete', 'table', 'ip', 'fw4like'])
    }
  })

  it('restarts tayga when it dies', async () => {
    const before = await nat64()
    process.kill(before.pid!, 'SIGKILL')
    const after = await until('a new tayga', 10_000, async () => {
      const s = await nat64()
      return s.running && s.pid !== before.pid && (await tun()) ? s : undefined
    })
    expect(after.restarts).toBe(1)
    const dev = lab.devices[0]
    const page = await until('the page again', 10_000, () => lab.fetch(lab.client6.ns, `http://[${mapped(dev.lanIpv4)}]/`, 1000))
    expect(page).toContain(`device ${dev.name}`)
  })

  it('keeps translating when the runner is killed, and the next runner adopts that tayga', async () => {
    const before = await nat64()
    await runner!.kill()
    const dev = lab.devices[1]
    expect(await lab.fetch(lab.client6.ns, `http://[${mapped(dev.lanIpv4)}]/`)).toContain(`device ${dev.name}`)
    runner = startRunner(lab, on)
    await until('the adoption', 10_000, async () => (runner!.log().includes(`adopted the running tayga (pid ${before.pid})`) ? true : undefined))
    expect(await nat64()).toMatchObject({ running: true, pid: before.pid, restarts: 0 })
    expect(await taygas()).toEqual([before.pid])
  })

  it('leaves no tayga, TUN or pool rule when the runner stops', async () => {
    expect(await runner!.stop()).toBe(0)
    runner = undefined
    expect(await taygas()).toEqual([])
    expect(await tun()).toBe(false)
    expect(await rules()).not.toContain(POOL)
  })
})
