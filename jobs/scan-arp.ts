#!/usr/bin/env node
// Discovers LAN devices from the neighbour table, dnsmasq's leases, hook events and (optionally) an ARP
// sweep; records what it saw; asks acquire-leases to give new devices their WAN identity.
import pLimit from 'p-limit'
import { logTransitions, newDevice, setStatus, type Transition } from '../lib/devices/state.ts'
import { cleanHostname } from '../lib/addr/hostname.ts'
import { hostsOf } from '../lib/addr/ipv4.ts'
import { defineJob, runMain, type JobContext, type Payload } from '../lib/core/job.ts'
import { lanView } from '../lib/devices/lan.ts'
import { checkSighting, readLeases, readNeighbours, type LanView, type Rejected, type Sighting } from '../lib/net/neigh.ts'
import { requestRun } from '../lib/core/trigger.ts'

export interface ScanResult { seen: number; added: string[]; returned: string[]; moved: string[]; rejected: number; overLimit: string[] }

/** dnsmasq (dhcp-script, or OpenWrt's hotplug dhcp/neigh) events: `<action> <mac> <ip> [hostname]`. */
function fromEvents(view: LanView, payload: Payload[]): { seen: Sighting[]; rejected: Rejected[] } {
  const seen: Sighting[] = []
  const rejected: Rejected[] = []
  for (const p of payload) {
    if (!['add', 'old', 'arp-add'].includes(p.event)) continue
    const ok = checkSighting(view, p.arg1, p.arg2)
    if (typeof ok === 'string') rejected.push({ input: `${p.source} ${p.event}`, why: ok })
    else seen.push({ ...ok, source: 'event', hostname: p.arg3 })
  }
  return { seen, rejected }
}

async function sweep(ctx: JobContext, view: LanView): Promise<void> {
  if (view.subnet.prefix < 22) {
    ctx.log.warn(`ARP sweep skipped: ${ctx.config.lanAddr} is larger than a /22`)
    return
  }
  const limit = pLimit(32)
  await Promise.all(hostsOf(view.subnet).filter((ip) => !view.routerIps.includes(ip)).map((ip) =>
    limit(() => ctx.sh.query('arping', ['-q', '-c', '1', '-w', '1', '-I', ctx.config.lanIf, ip], { nothrow: true, timeoutMs: 3000 }))))
}

const job = defineJob({
  name: 'scan-arp',
  role: 'gateway',
  description: 'Discover LAN devices (neighbour table, dnsmasq leases, hook events, optional ARP sweep).',
  async run({ payload, ctx }): Promise<ScanResult> {
    const { config, log } = ctx
    const view = lanView(config)
    if (config.arpSweep) await sweep(ctx, view)
    const sources = [await readNeighbours(ctx.sh, view, config.lanIf), await readLeases(view, config.dnsmasqLeases), fromEvents(view, payload)]
    const rejected = sources.flatMap((s) => s.rejected)
    for (const r of rejected.slice(0, 20)) log.warn(`ignored ${r.input}: ${r.why}`)
    if (rejected.length > 20) log.warn(`ignored ${rejected.length - 20} more entries`)

    // One sighting per MAC; a hostname from any source fills in.
    const byMac = new Map<string, Sighting>()
    for (const s of sources.flatMap((x) => x.seen)) {
      const known = byMac.get(s.mac)
      byMac.set(s.mac, { ...known, ...s, hostname: s.hostname ?? known?.hostname })
    }

    const now = new Date().toISOString()
    const result: ScanResult = { seen: byMac.size, added: [], returned: [], moved: [], rejected: rejected.length, overLimit: [] }
    const transitions: (Transition | undefined)[] = []
    await ctx.store.update((data) => {
      let count = Object.values(data.devices).filter((d) => d.status !== 'gone').length
      for (const s of byMac.values()) {
        const name = cleanHostname(s.hostname)
        if (name.changed && name.hostname !== undefined) log.warn(`hostname of ${s.mac} sanitised to "${name.hostname}"`, { mac: s.mac })
        let device = data.devices[s.mac]
        if (!device || device.status === 'gone') {
          if (count >= config.maxDevices) { result.overLimit.push(s.mac); continue }
          count++
          if (device) {
            result.returned.push(s.mac)
            transitions.push(setStatus(device, 'discovered', now))
            Object.assign(device, { attempts: 0, nextRetry: undefined, wanIpv4: undefined, wanIpv6: [], reacquire: undefined })
          } else {
            device = data.devices[s.mac] = newDevice(s.mac, now)
            result.added.push(s.mac)
            transitions.push({ mac: s.mac, to: 'discovered' })
          }
        }
        if (device.lanIpv4 && device.lanIpv4 !== s.ip && device.status === 'active') {
          device.reacquire = true
          result.moved.push(s.mac)
        }
        device.lanIpv4 = s.ip
        device.lastSeen = now
        if (name.hostname) device.hostname = name.hostname
      }
    })
    logTransitions(log, transitions)
    if (result.overLimit.length > 0) log.error(`maxDevices (${config.maxDevices}) reached: ${result.overLimit.length} devices not added (${result.overLimit.slice(0, 5).join(', ')}...)`)
    if (result.added.length + result.returned.length + result.moved.length > 0 && !ctx.dryRun) {
      await requestRun(config, 'acquire-leases', 'scan-arp', 'discovered')
    }
    return result
  },
  format: (r: ScanResult) => `seen ${r.seen}, new ${r.added.length}, returned ${r.returned.length}, moved ${r.moved.length}, rejected ${r.rejected}${r.overLimit.length ? `, over the limit ${r.overLimit.length}` : ''}`,
})

export default job
await runMain(job, import.meta.url)
