// What the relay should listen on, as a pure function of the store: every active device with a WAN IPv6 and
// a LAN IPv4 gets the configured relay ports on each of its WAN IPv6 addresses; IPv6 port forwards listen on
// the router's own WAN IPv6 addresses. The runner applies this whenever the store changes.
import type { Config } from '../core/config.ts'
import type { RelayRule } from './relay.ts'
import type { Data } from '../core/schema.ts'

export function relayRules(data: Data, config: Pick<Config, 'relayPorts' | 'relayUdpPorts'>, routerWanIpv6: string[]): RelayRule[] {
  const rules: RelayRule[] = []
  for (const d of Object.values(data.devices)) {
    if (d.status !== 'active' || !d.lanIpv4) continue
    for (const host of d.wanIpv6) {
      for (const port of config.relayPorts) rules.push({ listen: { host, port }, target: { host: d.lanIpv4, port }, proto: 'tcp' })
      for (const port of config.relayUdpPorts) rules.push({ listen: { host, port }, target: { host: d.lanIpv4, port }, proto: 'udp' })
    }
  }
  for (const f of data.forwards) {
    if (f.family === '4') continue
    for (const host of routerWanIpv6) rules.push({ listen: { host, port: f.gatewayPort }, target: { host: f.deviceIp, port: f.devicePort }, proto: f.proto })
  }
  return rules
}
