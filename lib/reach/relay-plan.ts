// What the relay should listen on, as a pure function of the store: every active device with a LAN IPv4 gets
// the configured relay ports on each of its WAN IPv6 addresses and on its address in each tunnel's routed
// prefix (so an IPv4-only upstream with a tunnel still makes it reachable over IPv6); IPv6 port forwards
// listen on the router's own global IPv6 addresses (WAN and tunnels). The runner applies this whenever the
// store changes.
import { eui64Address } from '../addr/ipv6.ts'
import type { Config } from '../core/config.ts'
import type { RelayRule } from './relay.ts'
import type { Data } from '../core/schema.ts'

/** A tunnel's routed prefix, and the link its device addresses go on. */
export interface TunnelPrefix { iface: string; prefix: string }

export interface DeviceTunnelAddress { mac: string; iface: string; address: string }

/** Each active device's address in the first /64 of each tunnel prefix (EUI-64 of its MAC: stable and unique). */
export function deviceTunnelAddresses(data: Data, prefixes: TunnelPrefix[]): DeviceTunnelAddress[] {
  return Object.values(data.devices)
    .filter((d) => d.status === 'active' && d.lanIpv4)
    .flatMap((d) => prefixes.map((p) => ({ mac: d.mac, iface: p.iface, address: eui64Address(p.prefix, d.mac) })))
}

export function relayRules(data: Data, config: Pick<Config, 'relayPorts' | 'relayUdpPorts'>, routerIpv6: string[], tunnelAddresses: DeviceTunnelAddress[] = []): RelayRule[] {
  const rules: RelayRule[] = []
  for (const d of Object.values(data.devices)) {
    if (d.status !== 'active' || !d.lanIpv4) continue
    for (const host of [...d.wanIpv6, ...tunnelAddresses.filter((a) => a.mac === d.mac).map((a) => a.address)]) {
      for (const port of config.relayPorts) rules.push({ listen: { host, port }, target: { host: d.lanIpv4, port }, proto: 'tcp' })
      for (const port of config.relayUdpPorts) rules.push({ listen: { host, port }, target: { host: d.lanIpv4, port }, proto: 'udp' })
    }
  }
  for (const f of data.forwards) {
    if (f.family === '4') continue
    for (const host of routerIpv6) rules.push({ listen: { host, port: f.gatewayPort }, target: { host: f.deviceIp, port: f.devicePort }, proto: f.proto })
  }
  return rules
}
