// Checks of the devices' data plane against the store: the nft table, macvlans, DHCP clients.
import type { Data } from '../core/schema.ts'
import { readStoreView } from '../core/store.ts'
import { MACVLAN_NAME, macvlanName } from '../addr/mac.ts'
import { clientPid, dhcp6Kind, stopClients } from '../net/dhcp.ts'
import { deleteLink } from '../net/ip.ts'
import { readMap, TABLE, tableDefinition } from '../net/nft.ts'
import { deviceTables, removeDeviceRoutes } from '../net/route.ts'
import { natMaps, syncNat, tableOptions } from '../reach/nat.ts'
import { markReacquire, noStore, type CheckFn } from './env.ts'
import { fail, macvlanDiff, mapDifferences, pass, type DeviceView } from './report.ts'

const devicesOf = (data: Data | undefined): DeviceView[] =>
  Object.values(data?.devices ?? {}).map((d) => ({ mac: d.mac, status: d.status, ifname: d.ifname ?? macvlanName(d.mac) }))

export const nft: CheckFn = async (env) => {
  const { sh, config } = env.ctx
  const view = await env.store()
  // The text listing: nft 1.0.6 leaves the table's comment out of its JSON.
  const { stdout, code, stderr } = await sh.query('nft', ['list', 'table', 'inet', TABLE], { nothrow: true })
  const repair = view.data ? async () => { await syncNat(env.ctx, async () => (await readStoreView(config.dataDir)).data ?? view.data!) } : undefined
  if (code !== 0) {
    if (/No such file|does not exist/i.test(stderr)) {
      return { check: fail('nft', `table inet ${TABLE} is missing: no device NAT, no port forwards`, view.data ? 'create the table and load its maps from the store' : undefined), apply: repair }
    }
    return { check: fail('nft', `nft failed: ${stderr.trim()}`) }
  }
  const comment = /^\s*comment "([^"]*)"/m.exec(stdout)?.[1]
  const wanted = /comment "([^"]*)"/.exec(tableDefinition(tableOptions(config)))?.[1]
  if (comment !== wanted) return { check: fail('nft', `table inet ${TABLE} is from another version or settings (${comment ?? 'no comment'})`, 'recreate the table and load its maps'), apply: repair }
  if (!view.data) return noStore('nft', view)
  const want = natMaps(view.data)
  const have: Record<string, Map<string, string>> = {}
  for (const name of Object.keys(want)) have[name] = await readMap(sh, name)
  const diffs = mapDifferences(want, have)
  if (diffs.length > 0) return { check: fail('nft', `maps differ from the store: ${diffs.join('; ')}`, 'sync the maps with the store'), apply: repair }
  const n = Object.values(want).reduce((s, m) => s + m.size, 0)
  return { check: pass('nft', `table inet ${TABLE} present, ${n} map elements match the store`) }
}

export const macvlans: CheckFn = async (env) => {
  const { sh, config } = env.ctx
  const view = await env.store()
  if (!view.data) return noStore('macvlans', view)
  const links = (await env.links()).filter((l) => l.kind === 'macvlan').map((l) => l.ifname)
  const devices = devicesOf(view.data)
  const { orphans, missing } = macvlanDiff(links, devices)
  const count = links.filter((l) => MACVLAN_NAME.test(l)).length
  if (orphans.length === 0 && missing.length === 0) return { check: pass('macvlans', `${count} device macvlans, one per active device`) }
  const parts = [
    orphans.length && `orphan macvlans without a device: ${orphans.join(' ')}`,
    missing.length && `active devices without their macvlan: ${missing.join(' ')}`,
  ].filter(Boolean)
  const fixes = [orphans.length && 'remove the orphans (clients, routes, link)', missing.length && 'acquire the devices again'].filter(Boolean)
  return {
    check: fail('macvlans', parts.join('; '), fixes.join('; ')),
    async apply() {
      if (orphans.length > 0) {
        const data = (await readStoreView(config.dataDir)).data ?? view.data!
        const held = new Set(Object.values(data.devices).map((d) => d.routeTable))
        for (const ifname of orphans) await stopClients(sh, config.runDir, ifname, config.dataDir)
        // Routing tables of device rules that no device holds: what the orphans left behind.
        for (const table of await deviceTables(sh)) if (!held.has(table)) await removeDeviceRoutes(sh, table)
        for (const ifname of orphans) await deleteLink(sh, ifname)
      }
      if (missing.length > 0) await markReacquire(env, missing)
    },
  }
}

export const dhcpClients: CheckFn = async (env) => {
  const { config } = env.ctx
  const view = await env.store()
  if (!view.data) return noStore('dhcp-clients', view)
  const kind6 = dhcp6Kind()
  const active = Object.values(view.data.devices).filter((d) => d.status === 'active')
  const dead: string[] = []
  const macs: string[] = []
  for (const d of active) {
    const ifname = d.ifname ?? macvlanName(d.mac)
    const lost = [
      d.wanIpv4 && !clientPid(config.runDir, ifname, 'udhcpc') && 'udhcpc',
      view.data.upstream.dhcpv6 && !clientPid(config.runDir, ifname, kind6) && kind6,
    ].filter(Boolean)
    if (lost.length > 0) { dead.push(`${d.mac} (${lost.join(', ')})`); macs.push(d.mac) }
  }
  if (dead.length === 0) return { check: pass('dhcp-clients', `${active.length} active devices, every DHCP client alive`) }
  return {
    check: fail('dhcp-clients', `DHCP clients not running: ${dead.join(', ')}: their leases will lapse upstream`, 'acquire those devices again'),
    apply: () => markReacquire(env, macs),
  }
}
