// The device NAT maps in our nftables table follow the store: an active device with a WAN IPv4 gets
// 1:1 source NAT out of its macvlan and destination NAT back in; everything else has no element.
import type { JobContext } from './job.ts'
import { isIpv4 } from './ipv4.ts'
import { ensureTable, syncMap } from './net/nft.ts'
import type { Data } from './schema.ts'

export async function syncDeviceNat(ctx: Pick<JobContext, 'sh' | 'config'>, data: Data): Promise<void> {
  await ensureTable(ctx.sh, { dnatPorts: ctx.config.dnatPorts })
  const snat = new Map<string, string>()
  const dnat = new Map<string, string>()
  for (const d of Object.values(data.devices)) {
    if (d.status !== 'active' || !d.wanIpv4 || !d.lanIpv4 || !isIpv4(d.wanIpv4) || !isIpv4(d.lanIpv4)) continue
    snat.set(d.lanIpv4, d.wanIpv4)
    dnat.set(d.wanIpv4, d.lanIpv4)
  }
  await syncMap(ctx.sh, 'dev_snat4', snat)
  await syncMap(ctx.sh, 'dev_dnat4', dnat)
}
