#!/usr/bin/env node
// Tears down devices that left: absent from the neighbour table, without a live LAN lease, and not seen for
// `staleAfter` seconds. Their leases are released and every trace removed; the record is kept as `gone` for
// `goneRetention` seconds, then deleted.
import { logTransitions, setStatus, type Transition } from '../lib/devices/state.ts'
import { IDENTITY_LOCK, releaseIdentity } from '../lib/devices/identity.ts'
import { defineJob, runMain } from '../lib/core/job.ts'
import { lanView, requireInterfaces } from '../lib/devices/lan.ts'
import { syncNat } from '../lib/reach/nat.ts'
import { readLeases, readNeighbours } from '../lib/net/neigh.ts'
import type { Device } from '../lib/core/schema.ts'

export interface PruneResult { gone: string[]; deleted: string[]; kept: number }

const job = defineJob({
  name: 'prune-stale',
  role: 'gateway',
  description: 'Release and remove devices that left the LAN; forget old records.',
  exclusive: IDENTITY_LOCK,
  async run({ ctx }): Promise<PruneResult> {
    const { config, log, sh, store } = ctx
    await requireInterfaces(sh, config)
    const view = lanView(config)
    const leases = await readLeases(view, config.dnsmasqLeases)
    // A lease file that is not what it claims to be is refused as a whole: said here too, as scan-arp says it.
    for (const r of leases.rejected.filter((x) => x.input.startsWith('lease file '))) log.warn(`ignored ${r.input}: ${r.why}`)
    const present = new Set([...(await readNeighbours(sh, view, config.lanIf)).seen, ...leases.seen].map((s) => s.mac))
    const now = Date.now()
    const isStale = (d: Device) => d.status !== 'gone' && !present.has(d.mac) && now - Date.parse(d.lastSeen) > config.staleAfter * 1000
    // The store decides first, then the identities go: a device that scan-arp sees again meanwhile either
    // stays as it is or returns as discovered and is acquired afresh, never left active without its identity.
    const transitions: (Transition | undefined)[] = []
    const released: Device[] = []
    const result = await store.update((d): PruneResult => {
      const stamp = new Date(now).toISOString()
      const gone: string[] = []
      for (const dev of Object.values(d.devices).filter(isStale)) {
        released.push(structuredClone(dev))
        transitions.push(setStatus(dev, 'gone', stamp, `not seen for ${Math.round((now - Date.parse(dev.lastSeen)) / 1000)} s`))
        Object.assign(dev, { wanIpv4: undefined, wanIpv4Expires: undefined, wanIpv6: [], routeTable: undefined, ifname: undefined, reacquire: undefined, nextRetry: undefined })
        gone.push(dev.mac)
      }
      const deleted = Object.values(d.devices).filter((dev) => dev.status === 'gone' && now - Date.parse(dev.statusChangedAt) > config.goneRetention * 1000).map((dev) => dev.mac)
      for (const mac of deleted) delete d.devices[mac]
      return { gone, deleted, kept: Object.keys(d.devices).length }
    })
    for (const device of released) {
      // One device's trouble does not keep the others' identities up; diagnose removes what is left of it.
      await releaseIdentity({ sh, config, log }, device).catch((err: Error) => log.error(`${device.mac}: releasing its identity failed: ${err.message}`, { mac: device.mac }))
    }
    logTransitions(log, transitions)
    if (result.deleted.length > 0) log.info(`forgot ${result.deleted.length} devices gone for more than ${config.goneRetention} s`)
    await syncNat(ctx, () => store.read())
    return result
  },
  format: (r: PruneResult) => `gone ${r.gone.length}${r.gone.length ? ` (${r.gone.join(', ')})` : ''}, forgotten ${r.deleted.length}, records kept ${r.kept}`,
})

export default job
await runMain(job, import.meta.url)
