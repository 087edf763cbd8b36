// What the relay plan needs from the system besides the store, read one way for the relay, refresh-proxies
// and diagnose: the router's global IPv6 addresses (WAN, and the tunnels' own), and the tunnels' routed
// prefixes, in which each active device gets an address of its own on the tunnel's link. The port maps of
// the tunnels' proxy mode listen on the tunnels' own addresses.
import { inPrefix6 } from '../addr/ipv6.ts'
import type { Config } from '../core/config.ts'
import type { Sh } from '../core/exec.ts'
import type { Data } from '../core/schema.ts'
import { getLink, globalIpv6 } from '../net/ip.ts'
import { configuredTunnels, deviceSubnet } from '../tunnels/config.ts'
import { portRules } from '../tunnels/ports.ts'
import { deviceTunnelAddresses, relayRules, type DeviceTunnelAddress, type TunnelPrefix } from './relay-plan.ts'
import type { RelayRule } from './relay.ts'

export interface RelayView {
  rules: RelayRule[]
  prefixes: TunnelPrefix[]
  tunnelAddresses: DeviceTunnelAddress[]
}

export async function relayView(sh: Sh, config: Config, data: Data): Promise<RelayView> {
  const tunnels = configuredTunnels(config).filter((t) => t.enabled)
  const prefixes = tunnels.filter((t) => deviceSubnet(t.prefix)).map((t) => ({ iface: t.iface, prefix: t.prefix! }))
  const tunnelIpv6: string[] = []
  for (const t of tunnels) {
    tunnelIpv6.push(...globalIpv6(await getLink(sh, t.iface)).filter((a) => !prefixes.some((p) => inPrefix6(a, deviceSubnet(p.prefix)!))))
  }
  const routerIpv6 = [...globalIpv6(await getLink(sh, config.wanIf)), ...tunnelIpv6]
  const tunnelAddresses = deviceTunnelAddresses(data, prefixes)
  const rules = [...relayRules(data, config, routerIpv6, tunnelAddresses), ...portRules(data.ports, tunnelIpv6)]
  return { rules, prefixes, tunnelAddresses }
}

/**
 * Puts each device's tunnel address on its tunnel's link and takes off those in the device /64 that no active
 * device has any more. A /128 without DAD (the prefix is routed to us), and deprecated from the start
 * (preferred_lft 0): the relay binds it, but this host never picks it as the source of its own traffic.
 */
export async function syncTunnelAddresses(sh: Sh, view: RelayView): Promise<number> {
  let changes = 0
  for (const p of view.prefixes) {
    const link = await getLink(sh, p.iface)
    if (!link) continue
    const want = view.tunnelAddresses.filter((a) => a.iface === p.iface).map((a) => a.address)
    const have = link.addresses.filter((a) => a.family === 6 && a.prefixlen === 128 && inPrefix6(a.address, deviceSubnet(p.prefix)!)).map((a) => a.address)
    const lines = [
      ...want.filter((a) => !have.includes(a)).map((a) => `addr add ${a}/128 dev ${p.iface} nodad preferred_lft 0`),
      ...have.filter((a) => !want.includes(a)).map((a) => `addr del ${a}/128 dev ${p.iface}`),
    ]
    if (lines.length > 0) await sh.apply('ip', ['-6', '-batch', '-'], { input: `${lines.join('\n')}\n` })
    changes += lines.length
  }
  return changes
}
