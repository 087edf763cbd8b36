// --dry-run of every job prints the system commands it would run and changes nothing: not the links,
// addresses, rules, routes, nftables ruleset or processes of the router, not the store.
import { createHash } from 'node:crypto'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { macvlanName } from '../../lib/addr/mac.ts'
import { openStore } from '../../lib/core/store.ts'
import { gatewayEnv, runJob, until } from './gateway.ts'
import { createLab, isRoot, type Lab } from './lab.ts'

async function snapshot(lab: Lab): Promise<string> {
  const ns = lab.router.ns
  const parts: string[] = []
  for (const args of [['-d', 'addr'], ['rule'], ['-6', 'rule'], ['route', 'show', 'table', 'all'], ['-6', 'route', 'show', 'table', 'all']]) {
    parts.push((await lab.exec(ns, 'ip', args)).stdout.replace(/valid_lft \S+ preferred_lft \S+|expires \d+sec/g, ''))
  }
  parts.push((await lab.exec(ns, 'nft', ['list', 'ruleset'])).stdout)
  // Processes of this namespace only: other labs on the machine run clients of their own.
  const pids = (await lab.exec(ns, 'ip', ['netns', 'pids', ns])).stdout.split('\n').filter(Boolean)
  parts.push(pids.map((pid) => { try { return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ') } catch { return '' } }).filter((c) => !c.includes('ip netns pids')).sort().join('\n'))
  const dataDir = gatewayEnv(lab).DUALGATE_DATA_DIR
  const store = path.join(dataDir, 'dualgate.json')
  parts.push(existsSync(store) ? createHash('sha256').update(readFileSync(store)).digest('hex') : 'no store')
  parts.push(readdirSync(dataDir).filter((n) => n !== 'logs' && n !== 'spool').sort().join(' '))
  return parts.join('\n----\n')
}

/** A device that left the LAN long ago, still holding the traces of its identity in the store. */
const LEFT = '02:00:5e:00:00:99'

describe.skipIf(!isRoot())('--dry-run (lab)', () => {
  let lab: Lab

  beforeAll(async () => {
    lab = await createLab({ mode: 'dual', devices: 2 })
    // Devices known to the store, but no identity yet: every data-plane job has work to plan. The second
    // device is forgotten again, so scan-arp has one to discover; a device that left two hours ago, with
    // the traces of an identity, gives prune-stale one to tear down.
    expect((await runJob(lab, 'scan-arp')).code).toBe(0)
    const stamp = new Date(Date.now() - 2 * 3600_000).toISOString()
    await openStore({ dataDir: gatewayEnv(lab).DUALGATE_DATA_DIR }).update((d) => {
      delete d.devices[lab.devices[1].mac]
      d.devices[LEFT] = { mac: LEFT, status: 'active', statusChangedAt: stamp, firstSeen: stamp, lastSeen: stamp, lanIpv4: '198.19.0.99', wanIpv4: '198.18.3.99', wanIpv6: [], routeTable: 1099, ifname: macvlanName(LEFT), attempts: 0 }
    })
    // The kernel is still finishing duplicate address detection on fresh links: let it settle first.
    await until('IPv6 DAD done on the router', 10_000, async () => ((await lab.exec(lab.router.ns, 'ip', ['-6', 'addr', 'show', 'tentative'])).stdout.trim() === '' ? true : undefined))
  })
  afterAll(async () => { await lab?.teardown() })

  /** Each job, its arguments, lines its plan must print, and what its result must say it would do. */
  const plans: [string, string[], RegExp[], (result: any, lab: Lab) => void][] = [
    ['acquire-leases', [], [/ip link add link eth0 name dg[0-9a-f]{12} address [0-9a-f:]{17} type macvlan/, /udhcpc -f -n -R -i dg[0-9a-f]{12} .* &/, /dhclient -6 -d -D LL .* &/, /nft -f -/], () => {}],
    ['refresh-proxies', [], [/nft -f -/], () => {}],
    ['prune-stale', [], [new RegExp(`ip link del dev ${macvlanName(LEFT)}`), /ip -4 route flush table 1099/], (r) => expect(r.gone).toEqual([LEFT])],
    ['port-forward', ['add', '8080', 'DEVICE_IP', '80'], [/nft -f -/], () => {}],
    ['scan-arp', [], [], (r, l) => expect(r.added).toEqual([l.devices[1].mac])],
  ]

  for (const [job, args, printed, says] of plans) {
    it(`${job} ${args.join(' ')} prints its plan and changes nothing`, async () => {
      const before = await snapshot(lab)
      const run = await runJob(lab, job, ['--dry-run', ...args.map((a) => a.replace('DEVICE_IP', lab.devices[0].lanIpv4))])
      expect(run.code, run.stderr).toBe(0)
      // Under --json the plan goes to stderr and stdout stays one JSON document.
      expect(run.result).toBeDefined()
      for (const line of printed) expect(run.stderr).toMatch(line)
      says(run.result, lab)
      expect(await snapshot(lab)).toBe(before)
    })
  }
})
