// The maps of our nftables table follow the store, all of them in every sync (a table recreated after an
// upgrade comes back whole). An active device with a WAN IPv4 gets 1:1 source NAT out of its macvlan and
// destination NAT back in; an IPv4 port forward gets its DNAT element. Anything else has no element, so a
// pruned device or a removed forward leaves nothing behind.
import type { Config } from '../core/config.ts'
import type { Sh } from '../core/exec.ts'
import { formatIpv4, isIpv4, parseCidr4 } from '../addr/ipv4.ts'
import { addElements, ensureTable, syncMap, type TableOptions } from '../net/nft.ts'
import { CLAT_MTU, CLAT_TUN } from '../clat/plan.ts'
import { TUN as NAT64_TUN } from '../nat64/plan.ts'
import type { Data } from '../core/schema.ts'
import { lockJob } from '../core/job-lock.ts'

const NAT_LOCK = 'nat'

export interface NatSync { table: 'present' | 'created'; added: number; removed: number }

export function tableOptions(config: Config): TableOptions {
  const lan = parseCidr4(config.lanAddr)
  return {
    dnatPorts: config.dnatPorts,
    lanIf: config.lanIf,
    lanNet: `${formatIpv4(lan.network)}/${lan.prefix}`,
    nat64: config.nat64 ? NAT64_TUN : undefined,
    // 464XLAT carries IPv4 at CLAT_MTU: a device's TCP connections through it are held to that from their SYN
    // (the server answers with no more), since many small devices never do path MTU discovery.
    clat: { tun: CLAT_TUN, mss: CLAT_MTU - 40 },
  }
}

export function natMaps(data: Data): Record<'dev_snat4' | 'dev_dnat4' | 'fwd4', Map<string, string>> {
  const maps = { dev_snat4: new Map<string, string>(), dev_dnat4: new Map<string, string>(), fwd4: new Map<string, string>() }
  for (const d of Object.values(data.devices)) {
    if (d.status !== 'active' || !d.wanIpv4 || !d.lanIpv4 || !isIpv4(d.wanIpv4) || !isIpv4(d.lanIpv4)) continue
    maps.dev_snat4.set(d.lanIpv4, d.wanIpv4)
    maps.dev_dnat4.set(d.wanIpv4, d.lanIpv4)
  }
  for (const f of data.forwards) {
    if (f.family !== '6' && isIpv4(f.deviceIp)) maps.fwd4.set(`${f.proto} . ${f.gatewayPort}`, `${f.deviceIp} . ${f.devicePort}`)
  }
  return maps
}

/**
 * Reads the store through `read` and brings the maps to it, under a lock that every syncing process shares:
 * a sync that started from an older store (a refresh-proxies while prune-stale removes a device) cannot
 * apply it after a newer one, because whoever writes the store syncs after writing and reads inside the lock.
 */
export async function syncNat(ctx: { sh: Sh; config: Config }, read: () => Promise<Data>): Promise<NatSync> {
  if (ctx.sh.dryRun) return applyMaps(ctx, await read())
  const release = await lockJob(ctx.config.runDir, NAT_LOCK, { waitMs: ctx.config.jobTimeout * 1000, holder: 'the process syncing the nftables maps' })
  try {
    return await applyMaps(ctx, await read())
  } finally {
    await release().catch(() => {})
  }
}

async function applyMaps(ctx: { sh: Sh; config: Config }, data: Data): Promise<NatSync> {
  const maps = natMaps(data)
  const table = await ensureTable(ctx.sh, tableOptions(ctx.config), maps)
  if (table === 'created') return { table, added: Object.values(maps).reduce((n, m) => n + m.size, 0), removed: 0 }
  let added = 0
  let removed = 0
  for (const [name, want] of Object.entries(maps)) {
    const r = await syncMap(ctx.sh, name, want)
    added += r.added
    removed += r.removed
  }
  return { table, added, removed }
}

/**
 * One device's 1:1 NAT, added as soon as its identity is up; the table exists (the caller ran syncNat first)
 * and the next syncNat reconciles everything.
 */
export async function addDeviceNat(ctx: { sh: Sh }, lanIpv4: string, wanIpv4: string): Promise<void> {
  if (!isIpv4(lanIpv4) || !isIpv4(wanIpv4)) return
  await ctx.sh.apply('nft', ['-f', '-'], { input: `${addElements('dev_snat4', [[lanIpv4, wanIpv4]])}\n${addElements('dev_dnat4', [[wanIpv4, lanIpv4]])}\n` })
}
