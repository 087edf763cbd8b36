// The router's LAN as configured: its subnet and its own address, for validating what devices report.
import type { Config } from '../core/config.ts'
import type { Sh } from '../core/exec.ts'
import { parseCidr4 } from '../addr/ipv4.ts'
import { getLink } from '../net/ip.ts'
import type { LanView } from '../net/neigh.ts'

export function lanView(config: Config): LanView {
  const subnet = parseCidr4(config.lanAddr)
  return { subnet, routerIps: [subnet.address] }
}

/** Jobs that change the data plane refuse to run against interfaces that are not there (a wrong config,
 * or the wrong network namespace): nothing half-applied, one clear error. */
export async function requireInterfaces(sh: Sh, config: Config): Promise<void> {
  const missing = []
  for (const ifname of [config.wanIf, config.lanIf]) if (!(await getLink(sh, ifname))) missing.push(ifname)
  if (missing.length > 0) throw new Error(`interface ${missing.join(' and ')} not found: check wanIf/lanIf in the config (\`config\` job shows them)`)
}
