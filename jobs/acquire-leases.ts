#!/usr/bin/env node
// Gives each device its own WAN identity (macvlan with its MAC, its own DHCPv4/DHCPv6/SLAAC addresses,
// traffic leaving from them) and keeps it: supervises the clients, follows renewals, retries failures with
// backoff, and re-acquires once when the upstream changes.
import { mkdir } from 'node:fs/promises'
import pLimit from 'p-limit'
import { retryDelaySeconds } from '../lib/core/backoff.ts'
import { freeRouteTable, logTransitions, setStatus, type Transition } from '../lib/devices/state.ts'
import { setSysctls } from '../lib/net/sysctl.ts'
import { acquireIdentity, ensureForwarding, IDENTITY_LOCK, pathProblem, refreshIdentity, releaseIdentity, wanSysctls, type IdentityEnv } from '../lib/devices/identity.ts'
import { defineJob, runMain, type Payload } from '../lib/core/job.ts'
import { requireInterfaces } from '../lib/devices/lan.ts'
import { addDeviceNat, syncNat } from '../lib/reach/nat.ts'
import { getLink, listLinks } from '../lib/net/ip.ts'
import { discoverPref64 } from '../lib/net/pref64.ts'
import { ensureLanRule } from '../lib/net/route.ts'
import { probeUpstream, type Offer } from '../lib/net/upstream.ts'
import type { Data, Device } from '../lib/core/schema.ts'

export interface AcquireResult { wanUp: boolean; offer?: Offer; attempted: number; active: string[]; failed: string[]; refreshed: number; reacquired: string[] }

/** What hotplug iface events (`iface ifup wan eth0`) say of our WAN: the last one about it wins. */
function wanEvent(payload: Payload[], wanIf: string): 'up' | 'down' | undefined {
  let state: 'up' | 'down' | undefined
  for (const p of payload) {
    if (p.source !== 'iface' || (p.arg2 !== wanIf && p.arg1 !== 'wan' && p.arg1 !== 'wan6')) continue
    if (p.event === 'ifdown') state = 'down'
    if (p.event === 'ifup' || p.event === 'ifupdate') state = 'up'
  }
  return state
}

function due(d: Device, now: number, staleAcquiring: number): boolean {
  if (d.status === 'discovered') return true
  if (d.status === 'failed') return !d.nextRetry || Date.parse(d.nextRetry) <= now
  if (d.status === 'acquiring') return now - Date.parse(d.statusChangedAt) > staleAcquiring
  return d.status === 'active' && !!d.reacquire
}

const job = defineJob({
  name: 'acquire-leases',
  role: 'gateway',
  description: 'Give devices their own WAN identity and keep their leases renewed.',
  exclusive: IDENTITY_LOCK,
  async run({ payload, ctx }): Promise<AcquireResult> {
    const { config, log, sh, store } = ctx
    const env: IdentityEnv = { sh, config, log }
    const wan = wanEvent(payload, config.wanIf)
    const before = await store.read()
    // The WAN link decides whether devices are held, looked at on every run: a run that a DHCP client's event
    // starts a moment after the cable is pulled must not re-acquire every device into failure. An iface event
    // is a claim (anyone who can hand one over could say the WAN went down); it only says when to look.
    await requireInterfaces(sh, config)
    const link = await getLink(sh, config.wanIf)
    const wanUp = !!link?.up && link.carrier
    if (wan && (wan === 'up') !== wanUp) log.warn(`an event says the WAN is ${wan}, but ${config.wanIf} is ${wanUp ? 'up' : 'down or without a carrier'}: going by the interface`)
    if (wanUp !== before.upstream.wanUp) {
      await store.update((d) => { d.upstream.wanUp = wanUp })
      log.info(`WAN ${config.wanIf} is ${wanUp ? 'up' : 'down'}`)
    }
    const result: AcquireResult = { wanUp, attempted: 0, active: [], failed: [], refreshed: 0, reacquired: [] }
    if (!wanUp) {
      log.info('WAN down: holding every device as it is until it comes back')
      return result
    }

    await ensureForwarding(env)
    if (!ctx.dryRun) await mkdir(config.runDir, { recursive: true })
    await setSysctls(sh, wanSysctls(config.wanIf))
    await ensureLanRule(sh, config.lanAddr)
    await syncNat(ctx, () => store.read())
    const offer = await probeUpstream(sh, config.wanIf)
    result.offer = offer
    // Where the devices' IPv4 must go through the upstream's NAT64 (lib/clat.ts), ask its DNS64 where that is.
    const pref64 = !offer.dhcpv4 && offer.ra ? await discoverPref64(offer.dns6) : undefined
    if (pref64 && pref64 !== before.upstream.pref64) log.info(`upstream NAT64 prefix ${pref64} (from its DNS64, RFC 7050)`)
    const now = new Date()
    const prefixChanged = before.upstream.prefixes.length > 0 && offer.prefixes.join() !== before.upstream.prefixes.join()
    await store.update((d) => {
      Object.assign(d.upstream, { checkedAt: now.toISOString(), dhcpv4: offer.dhcpv4, ra: offer.ra, dhcpv6: offer.dhcpv6, prefixes: offer.prefixes, pref64 })
      // Once per change: the prefixes are recorded in the same write, so the next run sees no change.
      if (prefixChanged) for (const dev of Object.values(d.devices)) if (dev.status === 'active' && dev.wanIpv6.length > 0) dev.reacquire = true
    })
    if (prefixChanged) log.warn(`upstream IPv6 prefix changed (${before.upstream.prefixes.join(' ')} -> ${offer.prefixes.join(' ')}): devices re-acquire once`)

    // Active devices: follow renewals, notice dead clients.
    const data = await store.read()
    const refresh = Object.values(data.devices).filter((d) => d.status === 'active' && !d.reacquire)
    const lost: Record<string, string> = {}
    const refreshed: Record<string, Awaited<ReturnType<typeof refreshIdentity>>> = {}
    const limit = pLimit(config.maxParallel)
    // One look at every link, not one per device: this runs every few minutes for hundreds of devices.
    const links = new Map((await listLinks(sh)).map((l) => [l.ifname, l]))
    await Promise.all(refresh.map((d) => limit(async () => { refreshed[d.mac] = await refreshIdentity(env, d, offer, links) })))
    for (const [mac, r] of Object.entries(refreshed)) if (typeof r === 'string') lost[mac] = r
    result.refreshed = refresh.length - Object.keys(lost).length

    // Who needs an identity now, with a routing table each, marked acquiring in one write.
    const staleAcquiring = (config.jobTimeout + 60) * 1000
    const transitions: (Transition | undefined)[] = []
    const work = await store.update((d) => {
      const stamp = now.toISOString()
      for (const [mac, r] of Object.entries(refreshed)) {
        const dev = d.devices[mac]
        if (!dev || dev.status !== 'active') continue
        if (typeof r === 'string') { dev.reacquire = true; log.warn(`${mac}: ${r}: acquiring again`, { mac }) }
        else Object.assign(dev, { wanIpv4: r.wanIpv4, wanIpv4Expires: r.wanIpv4Expires, wanIpv6: r.wanIpv6, reason: r.note })
      }
      const chosen = Object.values(d.devices).filter((dev) => due(dev, now.getTime(), staleAcquiring))
      for (const dev of chosen) {
        dev.routeTable ??= freeRouteTable(d)
        transitions.push(setStatus(dev, 'acquiring', stamp))
      }
      return chosen.map((dev) => structuredClone(dev))
    })
    logTransitions(log, transitions)
    result.attempted = work.length

    const progress = ctx.interactive && work.length > 1 ? (n: number) => process.stderr.write(`\racquiring: ${n}/${work.length}`) : undefined
    let done = 0
    await Promise.all(work.map((device) => limit(async () => {
      if (device.reacquire) {
        result.reacquired.push(device.mac)
        await releaseIdentity(env, device)
      }
      const identity = await acquireIdentity(env, device, offer, device.routeTable!)
      // Traffic works the moment the store says active: checked, not assumed.
      if (!identity.failure && identity.wanIpv4 && device.lanIpv4) await addDeviceNat(ctx, device.lanIpv4, identity.wanIpv4)
      if (!identity.failure && !ctx.dryRun) {
        const problem = await pathProblem(env, device, identity, device.routeTable!)
        if (problem) {
          identity.failure = `no working path: ${problem}`
          await releaseIdentity(env, { ...device, ifname: identity.ifname })
        }
      }
      progress?.(++done)
      const stamp = new Date().toISOString()
      const t = await store.update((d: Data) => {
        const dev = d.devices[device.mac]
        if (!dev || dev.status !== 'acquiring') return undefined // pruned meanwhile
        dev.ifname = identity.ifname
        dev.reacquire = undefined
        if (identity.failure) {
          dev.attempts += 1
          const delay = retryDelaySeconds(dev.attempts, config.retryBase, config.retryMax)
          dev.nextRetry = new Date(Date.now() + delay * 1000).toISOString()
          Object.assign(dev, { wanIpv4: undefined, wanIpv4Expires: undefined, wanIpv6: [] })
          result.failed.push(dev.mac)
          return setStatus(dev, 'failed', stamp, identity.failure)
        }
        Object.assign(dev, { wanIpv4: identity.wanIpv4, wanIpv4Expires: identity.wanIpv4Expires, wanIpv6: identity.wanIpv6, attempts: 0, nextRetry: undefined })
        result.active.push(dev.mac)
        return setStatus(dev, 'active', stamp, identity.note)
      })
      logTransitions(log, [t])
    })))
    if (progress) process.stderr.write('\n')

    await syncNat(ctx, () => store.read())
    return result
  },
  format: (r: AcquireResult) => r.wanUp
    ? `attempted ${r.attempted}: active ${r.active.length}, failed ${r.failed.length}; refreshed ${r.refreshed}${r.reacquired.length ? `; re-acquired ${r.reacquired.length}` : ''}`
    : 'WAN is down: nothing done',
})

export default job
await runMain(job, import.meta.url)
