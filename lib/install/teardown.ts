// What dualgate leaves running in the network namespace it runs in, found and removed for uninstall: the
// runner, the per-device DHCP clients (by their PID files, each checked to really be that client), tayga, the device
// macvlans, policy rules and routing tables, the nftables table, and the system files gateway-diagnose --fix
// may have written (put back from their backups). Each step finds nothing the second time.
import { readdir, readFile, rm, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { MACVLAN_NAME } from '../addr/mac.ts'
import { clatAddress, CLAT_INSTANCE, CLAT_TUN } from '../clat/plan.ts'
import type { Config } from '../core/config.ts'
import type { Sh } from '../core/exec.ts'
import { systemPath } from '../core/platform.ts'
import { liveRunner } from '../core/runner-state.ts'
import { readStoreView } from '../core/store.ts'
import { backupName, systemBackupDir } from '../core/system-files.ts'
import { stopNat64, TUN } from '../nat64/plan.ts'
import { interfacesWithClients, stopClients } from '../net/dhcp.ts'
import { deleteLink, getLink, listLinks } from '../net/ip.ts'
import { TABLE, deleteTable } from '../net/nft.ts'
import { deviceTables, listRules, PREF_LAN, removeDeviceRoutes } from '../net/route.ts'
import { stopTayga } from '../net/tayga.ts'

export interface TeardownReport {
  runner?: number
  clients: string[]
  macvlans: string[]
  tables: number[]
  nft: boolean
  files: string[]
}

/** Files gateway-diagnose --fix writes outside the install manifest. */
export const DIAGNOSE_FILES = ['/etc/sysctl.d/90-dualgate.conf', '/etc/dnsmasq.d/dualgate.conf', '/etc/hotplug.d/dhcp/50-dualgate', '/etc/hotplug.d/neigh/50-dualgate', '/etc/hotplug.d/iface/50-dualgate']

const alive = (pid: number) => { try { process.kill(pid, 0); return true } catch { return false } }

async function stopRunner(sh: Sh, dataDir: string): Promise<number | undefined> {
  const pid = liveRunner(dataDir)
  if (!pid) return undefined
  await sh.apply('kill', ['-TERM', String(pid)], { nothrow: true })
  // The runner stops its jobs within a few seconds (lib/runner/main.ts); then it is made to.
  for (let i = 0; i < 100 && !sh.dryRun && alive(pid); i++) await sleep(200)
  if (!sh.dryRun && alive(pid)) await sh.apply('kill', ['-KILL', String(pid)], { nothrow: true })
  return pid
}

export async function teardownNetwork(sh: Sh, config: Config): Promise<TeardownReport> {
  const report: TeardownReport = { clients: [], macvlans: [], tables: [], nft: false, files: [] }
  report.runner = await stopRunner(sh, config.dataDir)
  // The runner stops tayga; one it left behind (killed) goes here. Its pool rule goes with the PREF_LAN ones.
  if (await stopNat64(sh, config.runDir, undefined)) report.clients.push(TUN)
  if (await stopTayga(sh, config.runDir, CLAT_INSTANCE)) report.clients.push(CLAT_TUN)

  for (const ifname of (await interfacesWithClients(config.runDir)).filter((i) => MACVLAN_NAME.test(i))) {
    await stopClients(sh, config.runDir, ifname, config.dataDir)
    report.clients.push(ifname)
  }

  const data = (await readStoreView(config.dataDir)).data
  const tables = await deviceTables(sh)
  for (const d of Object.values(data?.devices ?? {})) if (d.routeTable !== undefined) tables.add(d.routeTable)
  for (const table of [...tables].sort()) await removeDeviceRoutes(sh, table)
  report.tables = [...tables].sort()
  // The rule that keeps LAN traffic in the main table (lib/net/route.ts ensureLanRule).
  for (const rule of await listRules(sh, 4)) {
    if (rule.priority !== PREF_LAN || rule.table !== 'main' || !rule.dst) continue
    await sh.apply('ip', ['-4', 'rule', 'del', 'pref', String(PREF_LAN), 'to', `${rule.dst}/${(rule as { dstlen?: number }).dstlen ?? 32}`, 'lookup', 'main'], { nothrow: true })
  }

  // The CLAT's own address is proxied on the WAN port (lib/clat/supervisor.ts); a killed runner leaves it.
  const wan = await getLink(sh, config.wanIf)
  const prefix64 = data?.upstream.prefixes.find((p) => p.endsWith('/64'))
  if (wan?.mac && prefix64) await sh.apply('ip', ['-6', 'neigh', 'del', 'proxy', clatAddress(prefix64, wan.mac), 'dev', config.wanIf], { nothrow: true })

  for (const link of await listLinks(sh)) {
    if (link.kind !== 'macvlan' || !MACVLAN_NAME.test(link.ifname)) continue
    await deleteLink(sh, link.ifname)
    report.macvlans.push(link.ifname)
  }
  const { code } = await sh.query('nft', ['list', 'table', 'inet', TABLE], { nothrow: true })
  if (code === 0) { await deleteTable(sh); report.nft = true }
  return report
}

/** Files diagnose wrote: the newest backup that is not ours goes back, else the file goes. */
export async function removeDiagnoseFiles(sh: Sh, config: Config, skip: Set<string>, print: (line: string) => void): Promise<string[]> {
  const done: string[] = []
  const backups = systemBackupDir(config.dataDir)
  const names = await readdir(backups).catch(() => [] as string[])
  for (const file of DIAGNOSE_FILES) {
    if (skip.has(file)) continue
    const target = systemPath(config.rootDir, file)
    const text = await readFile(target, 'utf8').catch(() => undefined)
    if (text === undefined || !text.includes('dualgate')) continue
    const prefix = backupName(target).replace(/\.[^.]*$/, '')
    const candidates = names.filter((n) => n.startsWith(`${prefix}.`)).sort().reverse()
    let original: string | undefined
    for (const n of candidates) {
      const old = await readFile(path.join(backups, n), 'utf8').catch(() => '')
      if (!old.includes('dualgate')) { original = old; break }
    }
    if (sh.dryRun) { print(original !== undefined ? `restore ${target} from ${backups}` : `rm ${target}`); continue }
    if (original !== undefined) await writeFile(target, original)
    else await rm(target, { force: true })
    done.push(file)
  }
  return done
}
