// Reaching the devices: IPv6-only clients through the relay on each device's WAN IPv6, IPv4 clients through
// kernel port forwards (and LAN clients through the same forward: hairpin), listeners that come back with
// the runner, nothing left after a prune, and bad requests that change nothing.
import { readFileSync } from 'node:fs'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { ForwardResult } from '../../jobs/port-forward.ts'
import type { PruneResult } from '../../jobs/prune-stale.ts'
import { macvlanName } from '../../lib/addr/mac.ts'
import type { Device, Forward } from '../../lib/core/schema.ts'
import type { RelayRule } from '../../lib/reach/relay.ts'
import { api, runJob, startRunner, until, type LabRunner } from './gateway.ts'
import { createLab, isRoot, type Lab } from './lab.ts'

const UDP_PROBE = `const s = require('node:dgram').createSocket('udp6');
const [host, port] = process.argv.slice(1);
const t = setTimeout(() => { console.error('no answer'); process.exit(1) }, 3000);
s.on('message', (m) => { console.log(String(m)); clearTimeout(t); s.close() });
s.send('ping-' + process.pid, Number(port), host);`

interface RelayState { rules: RelayRule[]; failed: unknown[] }

describe.skipIf(!isRoot())('reaching the devices (lab, dual-stack)', () => {
  let lab: Lab
  let runner: LabRunner
  let table: Record<string, Device>
  // The runner's own scan-arp would see the unplugged device's live LAN lease and keep it from going stale.
  const env = { DUALGATE_RELAY_UDP_PORTS: '7', DUALGATE_SCHEDULE_SCAN_ARP: '' }

  const devices = async () => Object.fromEntries((await runJob<Device[]>(lab, 'devices', [], env)).result.map((d) => [d.mac, d]))
  const relay = async () => (await api<RelayState>(lab, 'GET', '/relay')).body

  beforeAll(async () => {
    lab = await createLab({ mode: 'dual', devices: 2 })
    expect((await runJob(lab, 'scan-arp', [], env)).code).toBe(0)
    expect((await runJob(lab, 'acquire-leases', [], env)).code).toBe(0)
    runner = startRunner(lab, env)
    // Two devices x (each WAN IPv6) x (TCP 80, 23 and UDP 7), against the table as it is when the relay has
    // caught up (a SLAAC address may join after the first acquisition).
    table = await until('relay listeners for every device address', 20_000, async () => {
      const now = Object.fromEntries((await api<Device[]>(lab, 'GET', '/devices')).body.map((d) => [d.mac, d]))
      const want = Object.values(now).reduce((n, d) => n + d.wanIpv6.length * 3, 0)
      return want > 0 && (await relay()).rules.length === want ? now : undefined
    })
  })
  afterAll(async () => {
    await runner?.stop()
    await lab?.teardown()
  })

  it("serves an IPv6-only client a device's page on the device's WAN IPv6, the device seeing the router as peer", async () => {
    for (const dev of lab.devices) {
      const d = table[dev.mac]
      for (const address of d.wanIpv6) {
        const page = await lab.fetch(lab.client6.ns, `http://[${address}]:80/`)
        expect(page).toContain(`device ${dev.name}`)
        expect(page).toContain(`peer ${lab.router.lanIp}`)
      }
      const peers = readFileSync(dev.peerLog, 'utf8').trim().split('\n')
      expect(peers.every((line) => line.endsWith(lab.router.lanIp))).toBe(true)
    }
  })

  it('relays UDP: the device echoes to an IPv6-only client', async () => {
    const d = table[lab.devices[0].mac]
    const { stdout, code, stderr } = await lab.exec(lab.client6.ns, process.execPath, ['-e', UDP_PROBE, d.wanIpv6[0], '7'], { nothrow: true, timeoutMs: 10_000 })
    expect(code, stderr).toBe(0)
    expect(stdout).toContain('ping-')
    expect(readFileSync(lab.devices[0].peerLog, 'utf8')).toContain(`udp ${lab.router.lanIp}`)
  })

  it('forwards gateway:8080 to a device for IPv4 clients, and for LAN clients through the WAN address (hairpin)', async () => {
    const dev = lab.devices[0]
    const add = await runJob<ForwardResult>(lab, 'port-forward', ['add', '8080', dev.lanIpv4, '80'], env)
    expect(add.code, add.stderr).toBe(0)
    const page = await lab.fetch(lab.client4.ns, `http://${lab.router.wanIpv4}:8080/`)
    expect(page).toContain(`device ${dev.name}`)
    expect(page).toContain(`peer ${lab.client4.ip}`)
    const hairpin = await lab.fetch(lab.devices[1].ns, `http://${lab.router.wanIpv4}:8080/`)
    expect(hairpin).toContain(`device ${dev.name}`)
    // The router's own outbound traffic is untouched by the forward.
    expect(await lab.fetch(lab.router.ns, `http://${lab.upstream.ipv4}/`)).toContain(lab.router.wanIpv4)
  })

  it('refuses bad forward requests from the CLI and the API, leaving the existing forwards untouched', async () => {
    const before = (await api<Forward[]>(lab, 'GET', '/forwards')).body
    expect(before).toHaveLength(1)
    const dev = lab.devices[1]
    for (const [args, message] of [
      [['add', '70000', dev.lanIpv4, '80'], /gateway port must be a port number/],
      [['add', '8081', '198.18.0.99', '80'], /not a host on the LAN/],
      [['add', '8081', '198.19.0.99', '80'], /no known device/],
      [['add', '8080', dev.lanIpv4, '80'], /already forwarded/],
      [['add', '8081', dev.lanIpv4], /add takes/],
      [['remove', 'nosuch'], /no forward nosuch/],
      [['launch'], /unknown action/],
    ] as const) {
      const run = await runJob(lab, 'port-forward', [...args], env)
      expect(run.code, run.stderr).toBe(2)
      expect(run.stderr).toMatch(message)
    }
    const post = (body: unknown, token?: string) => api<{ error: string }>(lab, 'POST', '/forwards', body, token)
    expect((await post({ gatewayPort: 8082, deviceIp: dev.lanIpv4, devicePort: 80 }, '')).status).toBe(401)
    expect((await post({ gatewayPort: 8082, deviceIp: dev.lanIpv4, devicePort: 80 }, 'wrong')).status).toBe(401)
    expect((await post({ gatewayPort: 0, deviceIp: dev.lanIpv4, devicePort: 80 })).status).toBe(400)
    expect((await post({ gatewayPort: 8080, deviceIp: dev.lanIpv4, devicePort: 80 })).status).toBe(409)
    expect((await post({ gatewayPort: 8082, deviceIp: '1.2.3.4', devicePort: 80 })).status).toBe(400)
    expect((await post('not an object')).status).toBe(400)
    expect((await api(lab, 'DELETE', '/forwards/nosuch')).status).toBe(404)
    expect((await api<Forward[]>(lab, 'GET', '/forwards')).body).toEqual(before)
    const nft = (await lab.exec(lab.router.ns, 'nft', ['list', 'map', 'inet', 'dualgate', 'fwd4'])).stdout
    expect(nft).toContain('tcp . 8080')
    expect(nft).not.toContain('8082')
  })

  it('adds and removes a forward through the API', async () => {
    const dev = lab.devices[1]
    const created = await api<Forward>(lab, 'POST', '/forwards', { gatewayPort: 2323, deviceIp: dev.lanIpv4, devicePort: 23, family: '4' })
    expect(created.status).toBe(201)
    await until('the forward in nftables', 10_000, async () => ((await lab.exec(lab.router.ns, 'nft', ['list', 'map', 'inet', 'dualgate', 'fwd4'])).stdout.includes('2323') ? true : undefined))
    expect((await api(lab, 'DELETE', `/forwards/${created.body.id}`)).status).toBe(200)
    await until('the forward gone from nftables', 10_000, async () => ((await lab.exec(lab.router.ns, 'nft', ['list', 'map', 'inet', 'dualgate', 'fwd4'])).stdout.includes('2323') ? undefined : true))
  })

  it('brings every listener back within 5 s of a runner killed with SIGKILL', async () => {
    const before = (await relay()).rules.length
    await runner.kill()
    runner = startRunner(lab, env)
    await until('listeners back', 5000, async () => ((await relay()).rules.length === before ? true : undefined))
    const d = table[lab.devices[1].mac]
    expect(await lab.fetch(lab.client6.ns, `http://[${d.wanIpv6[0]}]:80/`)).toContain(`device ${lab.devices[1].name}`)
    expect(await lab.fetch(lab.client4.ns, `http://${lab.router.wanIpv4}:8080/`)).toContain(`device ${lab.devices[0].name}`)
  })

  it('leaves no listener, nft rule or set element of a pruned device', async () => {
    const dev = lab.devices[1]
    const d = table[dev.mac]
    await lab.unplug(dev)
    await lab.exec(lab.router.ns, 'ip', ['neigh', 'flush', 'dev', lab.router.lanIf, 'to', dev.lanIpv4], { nothrow: true })
    await new Promise((r) => setTimeout(r, 10_500))
    // An acquire-leases at the same moment, as the device's DHCP clients' events start one when the prune
    // stops them: it must not find the clients dead and acquire the leaving device again.
    const [prune, acquire] = await Promise.all([
      runJob<PruneResult>(lab, 'prune-stale', [], { ...env, DUALGATE_STALE_AFTER: '10', DUALGATE_DNSMASQ_LEASES: '/nonexistent' }),
      runJob(lab, 'acquire-leases', [], env),
    ])
    expect(prune.code, prune.stderr).toBe(0)
    expect(prune.result.gone).toEqual([dev.mac])
    expect(acquire.code, acquire.stderr).toBe(0)
    await until('its listeners closed', 10_000, async () => ((await relay()).rules.some((r) => d.wanIpv6.includes(r.listen.host)) ? undefined : true))
    const nft = (await lab.exec(lab.router.ns, 'nft', ['list', 'table', 'inet', 'dualgate'])).stdout
    expect(nft).not.toContain(d.wanIpv4!)
    expect(nft).not.toContain(`${dev.lanIpv4} `)
    const ss = (await lab.exec(lab.router.ns, 'ss', ['-lntu'])).stdout
    for (const a of d.wanIpv6) expect(ss).not.toContain(a)
    const links = (await lab.exec(lab.router.ns, 'ip', ['-br', 'link'])).stdout
    expect(links).not.toContain(macvlanName(dev.mac))
    expect((await devices())[dev.mac].status).toBe('gone')
  })
})
