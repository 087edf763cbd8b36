// Which jobs a hook event wakes up. One declarative table: add a row to send a new kind of event to a job.
// An event may name its job instead (`dualgate-event --job NAME ...`: fw4's reload asks for refresh-proxies,
// jobs ask for each other through the spool), but only one of the reconcilers below: an event never starts
// install, diagnose --fix, port-forward or any job that takes arguments.
import type { Config } from '../core/config.ts'
import type { HookEvent } from '../core/event.ts'
import { hasKernelForwarding } from '../forwarder/config.ts'
import { hasTunnels } from '../tunnels/config.ts'

export interface EventRule {
  /** Hook sources this row matches (the first argument of dualgate-event). */
  sources: string[]
  /** Event names it matches; omitted: any. */
  events?: string[]
  /** A further condition on the event. */
  when?: (e: HookEvent, config: Config) => boolean
  jobs: string[]
}

/**
 * OpenWrt hotplug names the logical interface (wan, wan6) in INTERFACE and the device in DEVICE;
 * hooks/openwrt/hotplug-iface also passes them as arguments: `iface ifup wan eth0`.
 */
function isWan(e: HookEvent, config: Config): boolean {
  const names = [e.env.INTERFACE, e.env.DEVICE, e.args[0], e.args[1]]
  return names.some((n) => n === config.wanIf || n === 'wan' || n === 'wan6')
}

export const EVENT_RULES: EventRule[] = [
  // dnsmasq --dhcp-script (lease changes) and its ARP tracking (--script-arp); on OpenWrt the same through
  // hotplug.d/dhcp (ACTION=add|old|del|update) and hotplug.d/neigh.
  { sources: ['dnsmasq'], events: ['add', 'old', 'del', 'update', 'arp-add', 'arp-del'], jobs: ['scan-arp'] },
  // OpenWrt /etc/hotplug.d/iface, ifupdown hooks: the WAN came, went or changed address.
  { sources: ['iface'], events: ['ifup', 'ifdown', 'ifupdate'], when: isWan, jobs: ['acquire-leases'] },
  // With tunnels, a 6in4 tunnel's local address follows the WAN's, and Hurricane Electric hears of it.
  { sources: ['iface'], events: ['ifup', 'ifupdate'], when: (e, c) => isWan(e, c) && hasTunnels(c), jobs: ['tunnels', 'he-update'] },
  // A home router's 4in6 tunnel to its VPS starts at the WAN's IPv6, which just came or changed.
  { sources: ['iface'], events: ['ifup', 'ifupdate'], when: (e, c) => isWan(e, c) && hasKernelForwarding(c), jobs: ['forwarder'] },
  // The DHCP clients of the per-device macvlans report bound, renew, expiry and loss.
  { sources: ['udhcpc', 'udhcpc6', 'dhclient', 'dhclient6', 'odhcpc', 'odhcp6c', 'dhcp'], jobs: ['acquire-leases'] },
]

/** The jobs an event may name: idempotent reconcilers that read what to do from the system and the store. */
export const EVENT_JOBS = ['scan-arp', 'acquire-leases', 'prune-stale', 'refresh-proxies', 'tunnels', 'he-update', 'forwarder']

export function jobsFor(e: HookEvent, config: Config, rules: EventRule[] = EVENT_RULES): string[] {
  if (e.job) return EVENT_JOBS.includes(e.job) ? [e.job] : []
  const jobs = new Set<string>()
  for (const r of rules) {
    if (!r.sources.includes(e.source)) continue
    if (r.events && !r.events.includes(e.event)) continue
    if (r.when && !r.when(e, config)) continue
    r.jobs.forEach((j) => jobs.add(j))
  }
  return [...jobs]
}
