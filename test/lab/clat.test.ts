// 464XLAT on an IPv6-only upstream: with clat on, each device's own IPv4 traffic reaches an IPv4 host behind
// the upstream's NAT64, leaving from a CLAT address of the device's own under its own MAC; a pruned device
// loses its mapping and the others keep theirs; nothing is left when the runner stops.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { DiagnoseResult } from '../../jobs/diagnose.ts'
import type { PruneResult } from '../../jobs/prune-stale.ts'
import { clatAddress } from '../../lib/clat/plan.ts'
import { inPrefix6 } from '../../lib/addr/ipv6.ts'
import type { ClatState } from '../../lib/clat/supervisor.ts'
import type { Device } from '../../lib/core/schema.ts'
import { api, runJob, startRunner, until, type LabRunner } from './gateway.ts'
import { createLab, isRoot, type Lab } from './lab.ts'

describe.skipIf(!isRoot())('464XLAT (CLAT) on an IPv6-only upstream with NAT64 (lab)', () => {
  let lab: Lab
  let runner: LabRunner | undefined
  let plat: NonNullable<Lab['upstream']['plat']>
  let env: Record<string, string>

  const clat = async () => (await api<ClatState>(lab, 'GET', '/clat')).body
  const devices = async () => Object.fromEntries((await runJob<Device[]>(lab, 'devices', [], env)).result.map((d) => [d.mac, d]))
  const page = (i: number) => lab.fetch(lab.devices[i].ns, `http://${plat.ipv4Host}/`, 5000)

  beforeAll(async () => {
    lab = await createLab({ mode: 'ipv6', devices: 2, plat: true })
    plat = lab.upstream.plat!
    // clatPrefix stays "auto": the upstream's DNS64 tells where its NAT64 is (RFC 7050). The runner's own
    // scan-arp would see the unplugged device's live LAN lease and keep it from going stale.
    env = { DUALGATE_SCHEDULE_SCAN_ARP: '' }
    expect((await runJob(lab, 'scan-arp', [], env)).code).toBe(0)
    const acquired = await runJob(lab, 'acquire-leases', [], env)
    expect(acquired.code, acquired.stderr).toBe(0)
  })
  afterAll(async () => {
    await runner?.stop()
    await lab?.teardown()
  })

  it('is off by default: devices have no IPv4 path, and /clat says why', async () => {
    runner = startRunner(lab, env)
    await until('the API', 10_000, async () => ((await clat()).idle ? true : undefined))
    const state = await clat()
    expect(state).toMatchObject({ enabled: false, running: false, idle: 'clat is off', devices: [] })
    await expect(page(0)).rejects.toThrow()
    await runner.stop()
    runner = undefined
  })

  it("gives each device IPv4 through the upstream's NAT64, from a CLAT address of its own, under its own MAC", async () => {
    env = { ...env, DUALGATE_CLAT: '1' }
    runner = startRunner(lab, env)
    const table = await devices()
    const state = await until('CLAT translating for both devices', 20_000, async () => {
      const s = await clat()
      return s.running && s.devices.length === 2 ? s : undefined
    })
    const prefix = lab.upstream.prefix6
    expect(state.prefix).toBe(plat.prefix)
    const pools: string[] = []
    for (const [i, dev] of lab.devices.entries()) {
      const d = state.devices.find((x) => x.mac === dev.mac)!
      expect(d.clatIpv6).toBe(clatAddress(prefix, dev.mac))
      expect(inPrefix6(d.clatIpv6, prefix)).toBe(true)
      expect(table[dev.mac].wanIpv6).not.toContain(d.clatIpv6)
      const answer = await until(`device ${i} through the CLAT`, 10_000, async () => page(i).catch(() => undefined))
      const pool = /you are (\S+)/.exec(answer)?.[1]
      expect(pool, answer).toBeDefined()
      // The upstream answered the device's own CLAT address, which it found under the device's MAC.
      const neigh = (await lab.exec(lab.upstream.ns, 'ip', ['-6', 'neigh', 'show', d.clatIpv6])).stdout
      expect(neigh).toContain(`lladdr ${dev.mac}`)
      pools.push(pool!)
    }
    expect(new Set(pools).size).toBe(2)
    // TCP through the CLAT is held to its MTU from the devices' SYNs on.
    const mss = (await lab.exec(lab.router.ns, 'nft', ['list', 'chain', 'inet', 'dualgate', 'clat_mss'])).stdout
    expect(Number(/oifname "dgclat" .* counter packets (\d+)/.exec(mss)?.[1]), mss).toBeGreaterThanOrEqual(2)
    const diag = await runJob<DiagnoseResult>(lab, 'diagnose', [], env)
    expect(diag.result.checks.find((c) => c.id === 'clat')).toMatchObject({ status: 'pass', reason: expect.stringContaining(`pid ${state.pid}`) })
  })

  it('restarts its tayga when it dies, and diagnose fails while it is gone', async () => {
    const before = await clat()
    process.kill(before.pid!, 'SIGKILL')
    const diag = await runJob<DiagnoseResult>(lab, 'diagnose', [], env)
    const check = diag.result.checks.find((c) => c.id === 'clat')!
    // Either caught in the gap, or already restarted by the runner's 5 s pass: never a pass for the dead PID.
    expect(check.reason).not.toContain(`pid ${before.pid}`)
    const after = await until('CLAT back with a new tayga', 15_000, async () => {
      const s = await clat()
      return s.running && s.pid !== before.pid && s.devices.length === 2 ? s : undefined
    })
    expect(after.devices.map((d) => d.clatIpv6).sort()).toEqual(before.devices.map((d) => d.clatIpv6).sort())
    expect(await until('device 0 through the new tayga', 10_000, async () => page(0).catch(() => undefined))).toMatch(/you are /)
  }, 40_000)

  it('after a prune only the remaining device is translated, and it keeps working', async () => {
    const gone = lab.devices[1]
    const kept = lab.devices[0]
    const before = await clat()
    const goneClat = before.devices.find((d) => d.mac === gone.mac)!.clatIpv6
    await lab.unplug(gone)
    await lab.exec(lab.router.ns, 'ip', ['neigh', 'flush', 'dev', lab.router.lanIf, 'to', gone.lanIpv4], { nothrow: true })
    await new Promise((r) => setTimeout(r, 11_000)) // past staleAfter since the last scan saw it
    const pruned = await runJob<PruneResult>(lab, 'prune-stale', [], { ...env, DUALGATE_STALE_AFTER: '10', DUALGATE_DNSMASQ_LEASES: '/nonexistent' })
    expect(pruned.code, pruned.stderr).toBe(0)
    expect(pruned.result.gone).toEqual([gone.mac])
    const after = await until('CLAT without the pruned device', 20_000, async () => {
      const s = await clat()
      return s.running && s.devices.length === 1 ? s : undefined
    })
    expect(after.devices[0].mac).toBe(kept.mac)
    const conf = readFileSync(join(lab.dir, 'dualgate-run', 'clat.conf'), 'utf8')
    expect(conf).not.toContain(goneClat)
    const rules = (await lab.exec(lab.router.ns, 'ip', ['-6', 'rule', 'show'])).stdout
    expect(rules).not.toContain(goneClat)
    expect(await until('the kept device through the restarted CLAT', 10_000, async () => page(0).catch(() => undefined))).toMatch(/you are /)
  }, 60_000)

  it('leaves no tayga, TUN, rule or proxy entry when the runner stops', async () => {
    const state = await clat()
    await runner!.stop()
    runner = undefined
    const link = await lab.exec(lab.router.ns, 'ip', ['link', 'show', 'dev', 'dgclat'], { nothrow: true })
    expect(link.code).not.toBe(0)
    const rules = (await lab.exec(lab.router.ns, 'ip', ['-6', 'rule', 'show'])).stdout
    for (const d of state.devices) expect(rules).not.toContain(d.clatIpv6)
    const proxies = (await lab.exec(lab.router.ns, 'ip', ['-6', 'neigh', 'show', 'proxy'])).stdout
    expect(proxies.trim()).toBe('')
    await expect(page(0)).rejects.toThrow()
  })

  it('uninstall --network after a runner killed with SIGKILL stops its tayga and leaves no CLAT state', async () => {
    runner = startRunner(lab, env)
    const state = await until('CLAT translating again', 20_000, async () => {
      const s = await clat()
      return s.running && s.devices.length === 1 ? s : undefined
    })
    await runner.kill()
    runner = undefined
    // The translator is detached: it outlives the runner, and so does its plumbing.
    expect(await until('device 0 still translated', 10_000, async () => page(0).catch(() => undefined))).toMatch(/you are /)
    const root = mkdtempSync(join(tmpdir(), 'dualgate-clat-root-'))
    try {
      const un = await runJob(lab, 'install', ['uninstall', '--root', root, '--platform', 'debian', '--network'], env)
      expect(un.code, un.stderr).toBe(0)
    } finally {
      rmSync(root, { recursive: true, force: true })
    }
    const ns = lab.router.ns
    expect((await lab.exec(ns, 'ip', ['link', 'show', 'dev', 'dgclat'], { nothrow: true })).code).not.toBe(0)
    expect((await lab.exec(ns, 'ps', ['-eo', 'args'])).stdout).not.toMatch(/tayga .*clat\.conf/)
    expect((await lab.exec(ns, 'ip', ['-6', 'neigh', 'show', 'proxy'])).stdout.trim()).toBe('')
    const rules = (await lab.exec(ns, 'ip', ['-4', 'rule', 'show'])).stdout + (await lab.exec(ns, 'ip', ['-6', 'rule', 'show'])).stdout
    expect(rules).not.toMatch(/^1101:/m)
    expect(rules).not.toContain(state.devices[0].clatIpv6)
    await expect(page(0)).rejects.toThrow()
  }, 60_000)
})
