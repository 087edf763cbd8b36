// The router's LAN as configured: its subnet and its own address, for validating what devices report.
import type { Config } from './config.ts'
import { parseCidr4 } from './ipv4.ts'
import type { LanView } from './net/neigh.ts'

export function lanView(config: Config): LanView {
  const subnet = parseCidr4(config.lanAddr)
  return { subnet, routerIps: [subnet.address] }
}
