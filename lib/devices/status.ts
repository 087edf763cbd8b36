// The gateway summary shared by `jobs/status.ts` and `GET /status`: read from the store and the kernel only,
// so it answers on a console when the runner and the API are down.
import type { Config } from '../core/config.ts'
import type { LinkInfo } from '../net/ip.ts'
import { runnerPid } from '../core/runner-state.ts'
import { DEVICE_STATUSES, type Data, type DeviceStatus, type Run } from '../core/schema.ts'

export interface GatewayStatus {
  interfaces: { role: 'wan' | 'lan'; ifname: string; present: boolean; up: boolean; mac?: string; addresses: string[] }[]
  devices: Record<DeviceStatus, number> & { total: number }
  upstream: Data['upstream']
  runner: { up: boolean; pid?: number }
  jobs: Record<string, { runs: number; failures: number; last?: Run }>
}

export function countDevices(data: Data): GatewayStatus['devices'] {
  const counts = Object.fromEntries(DEVICE_STATUSES.map((s) => [s, 0])) as Record<DeviceStatus, number>
  for (const d of Object.values(data.devices)) counts[d.status] += 1
  return { ...counts, total: Object.keys(data.devices).length }
}

function describe(role: 'wan' | 'lan', ifname: string, link: LinkInfo | undefined): GatewayStatus['interfaces'][number] {
  return {
    role,
    ifname,
    present: !!link,
    up: link?.up ?? false,
    mac: link?.mac,
    addresses: (link?.addresses ?? []).map((a) => `${a.address}/${a.prefixlen}`),
  }
}

/** The summary from the store and the router's links (`ip -j addr`, one listing for both interfaces). */
export function gatewayStatus(o: { config: Config; data: Data; links: LinkInfo[] }): GatewayStatus {
  const wan = o.links.find((l) => l.ifname === o.config.wanIf)
  const lan = o.links.find((l) => l.ifname === o.config.lanIf)
  const pid = runnerPid(o.config.dataDir)
  return {
    interfaces: [describe('wan', o.config.wanIf, wan), describe('lan', o.config.lanIf, lan)],
    devices: countDevices(o.data),
    upstream: o.data.upstream,
    runner: { up: pid !== undefined, pid },
    jobs: o.data.jobs,
  }
}
