// The whole chain as it runs on a router: devices take LAN leases, dnsmasq's dhcp-script hands the events to
// the runner through the spool, scan-arp and acquire-leases follow, and nobody runs a job by hand. WAN
// events from hotplug hold and resume the devices when the interface agrees; a hostile event changes nothing.
import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Device } from '../../lib/core/schema.ts'
import { api, gatewayEnv, ROOT, startRunner, until, type LabRunner } from './gateway.ts'
import { createLab, isRoot, type Lab } from './lab.ts'

const run = promisify(execFile)

describe.skipIf(!isRoot())('hooks to runner to jobs (lab, dual-stack)', () => {
  let lab: Lab
  let runner: LabRunner
  let started: number

  // Known before the lab exists: dnsmasq's script needs it in its environment.
  const dataDir = mkdtempSync(path.join(tmpdir(), 'dg-hooks-'))
  const env = { DUALGATE_DATA_DIR: dataDir, DUALGATE_RETRY_BASE: '600' }
  /** The event shim, as a hotplug handler would call it. */
  const event = (...args: string[]) => run(path.join(ROOT, 'hooks/dualgate-event'), args, { env: gatewayEnv(lab, env) })
  const devices = async () => (await api<Device[]>(lab, 'GET', '/devices')).body

  beforeAll(async () => {
    started = Date.now()
    lab = await createLab({ mode: 'dual', devices: 3, unregistered: [2], dhcpScript: path.join(ROOT, 'hooks/dnsmasq-script'), dhcpScriptEnv: { DUALGATE_DATA_DIR: dataDir } })
    runner = startRunner(lab, env)
  })
  afterAll(async () => {
    await runner?.stop()
    await lab?.teardown()
    rmSync(dataDir, { recursive: true, force: true })
  })

  it('makes registered devices active within 30 s of their LAN leases, through dnsmasq events alone', async () => {
    const active = await until('registered devices active', 30_000 - (Date.now() - started), async () => {
      const list = await devices()
      const ok = lab.devices.slice(0, 2).every((dev) => list.find((d) => d.mac === dev.mac)?.status === 'active')
      return ok && list.find((d) => d.mac === lab.devices[2].mac)?.status === 'failed' ? list : undefined
    })
    for (const dev of lab.devices.slice(0, 2)) {
      const d = active.find((x) => x.mac === dev.mac)!
      expect(await lab.fetch(dev.ns, `http://${lab.upstream.ipv4}/`)).toContain(d.wanIpv4)
    }
    const jobs = (await api<{ name: string; runs: number }[]>(lab, 'GET', '/jobs')).body
    expect(jobs.find((j) => j.name === 'scan-arp')?.runs).toBeGreaterThan(0)
    expect(jobs.find((j) => j.name === 'acquire-leases')?.runs).toBeGreaterThan(0)
  })

  const wanUp = async () => (await api<{ upstream: { wanUp: boolean } }>(lab, 'GET', '/status')).body.upstream.wanUp

  it('does not believe a WAN event that the interface contradicts', async () => {
    // A forged `ifdown` while the WAN is up: the devices must not be held.
    await event('iface', 'ifdown', 'wan', lab.router.wanIf)
    await until('the forged event handled', 15_000, async () => (/an event says the WAN is down, but eth0 is up/.test(runner.log()) ? true : undefined))
    expect(await wanUp()).toBe(true)
    // The run goes on after that line (it refreshes every device): the next test pulls the cable only when it
    // has ended, or the run would see devices fail under it.
    await until('the acquire-leases run over', 60_000, async () => {
      const job = (await api<{ name: string; running: boolean; queued: boolean }[]>(lab, 'GET', '/jobs')).body.find((j) => j.name === 'acquire-leases')
      return job && !job.running && !job.queued ? true : undefined
    })
  })

  it('holds devices while the WAN is down and resumes when it comes back, without re-acquiring', async () => {
    const before = await devices()
    // The cable pulled: the upstream's end of the WAN link goes down, so the router's WAN loses its carrier.
    await lab.exec(lab.upstream.ns, 'ip', ['link', 'set', 'rtr', 'down'])
    try {
      await event('iface', 'ifdown', 'wan', lab.router.wanIf)
      await until('WAN down recorded', 15_000, async () => (await wanUp() ? undefined : true))
      expect((await devices()).map((d) => d.status)).toEqual(before.map((d) => d.status))
    } finally {
      await lab.exec(lab.upstream.ns, 'ip', ['link', 'set', 'rtr', 'up'])
    }
    await event('iface', 'ifup', 'wan', lab.router.wanIf)
    await until('WAN up recorded', 15_000, async () => (await wanUp() ? true : undefined))
    const after = await devices()
    for (const d of before.filter((x) => x.status === 'active')) {
      expect(after.find((x) => x.mac === d.mac)).toMatchObject({ status: 'active', wanIpv4: d.wanIpv4, statusChangedAt: d.statusChangedAt })
    }
  })

  it('rejects a hostile dnsmasq event with a log line and changes nothing', async () => {
    const before = await devices()
    await event('dnsmasq', 'add', 'zz:zz:zz:zz:zz:zz', '198.19.0.77', '$(reboot)')
    await event('dnsmasq', 'add', '02:bb:00:00:00:01', '10.0.0.1; reboot', 'x')
    await until('both events handled', 10_000, async () => (runner.log().match(/ignored dnsmasq add/g)?.length === 2 ? true : undefined))
    expect(runner.log()).toMatch(/ignored dnsmasq add: malformed MAC/)
    expect(runner.log()).toMatch(/ignored dnsmasq add: not an IPv4 address/)
    expect((await devices()).map((d) => d.mac)).toEqual(before.map((d) => d.mac))
  })
})
