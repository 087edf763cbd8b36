// 464XLAT inside the runner (lib/clat.ts): while config.clat is on and the upstream is IPv6-only, one tayga
// translates every active device's IPv4 with a map line each, and each device gets the plumbing around it:
// proxy NDP for its CLAT address on its macvlan (so replies reach the router under the device's MAC), a
// route from that address into the TUN, its LAN IPv4 routed into the TUN from its own table, and the CLAT
// address routed out through its own table (so the translated packets leave from its macvlan). tayga cannot
// reload, so a change in the set of devices restarts it; its TUN and the routes through it go and come back.
import { existsSync } from 'node:fs'
import type { ApiRoute } from '../core/api.ts'
import { clatConfig, clatPlan, CLAT_MTU, CLAT_TUN, type ClatDevice, type ClatPlan } from './plan.ts'
import type { Config } from '../core/config.ts'
import type { Sh } from '../core/exec.ts'
import type { Logger } from '../core/log.ts'
import { getLink } from '../net/ip.ts'
import { listRules, PREF_CLAT } from '../net/route.ts'
import { findTayga, runningConfig, startTayga, stopTayga, taygaFiles, taygaPid, taygaSearchPath, waitForTun } from '../net/tayga.ts'
import type { Store } from '../core/store.ts'
import { watchStore } from '../core/store-watch.ts'

const NAME = 'clat'
const CHECK_MS = 5000
const TUN_WAIT_MS = 3000

export interface ClatState {
  enabled: boolean
  /** Why it is not translating now (off, not an IPv6-only upstream, tayga missing, ...). */
  idle?: string
  prefix: string
  /** tayga runs and every device below is plumbed. */
  running: boolean
  pid?: number
  /** The address tayga answers and sends ICMPv6 errors from (proxied on the WAN port). */
  routerAddress?: string
  lastError?: string
  /** The devices translated now. */
  devices: ClatDevice[]
}

export interface Clat {
  reconcile(): Promise<void>
  state(): Promise<ClatState>
  close(): Promise<void>
}

export function startClat(o: { store: Store; config: () => Config; sh: Sh; log: () => Logger }): Clat {
  /** The tayga and config the plumbing was last laid for, and what it was laid for. */
  let applied: { key: string; devices: ClatDevice[]; routerAddress: string } | undefined
  let lastError: string | undefined
  let busy: Promise<void> | undefined
  let again = false
  let closed = false

  const problem = (message: string) => {
    if (message !== lastError) o.log().error(`clat: ${message}`)
    lastError = message
  }

  async function plan(config: Config): Promise<ClatPlan> {
    const wan = await getLink(o.sh, config.wanIf)
    return clatPlan(await o.store.read(), config, { wanMac: wan?.mac, tayga: findTayga(taygaSearchPath()) !== undefined, tun: existsSync('/dev/net/tun') })
  }

  async function stop(config: Config, why: string): Promise<void> {
    const stopped = await stopTayga(o.sh, config.runDir, undefined, NAME)
    if (applied) {
      await unplumb(config, applied.devices)
      await o.sh.apply('ip', ['-6', 'neigh', 'del', 'proxy', applied.routerAddress, 'dev', config.wanIf], { nothrow: true })
    }
    applied = undefined
    if (stopped) o.log().info(`clat: tayga (pid ${stopped}) stopped: ${why}`)
  }

  /** The rules and proxy entries outlive the TUN; the routes through it went with it. */
  async function unplumb(config: Config, devices: ClatDevice[]): Promise<void> {
    for (const d of devices) {
      await o.sh.apply('ip', ['-6', 'rule', 'del', 'from', d.clatIpv6, 'lookup', String(d.table), 'pref', String(PREF_CLAT)], { nothrow: true })
      await o.sh.apply('ip', ['-4', 'rule', 'del', 'from', d.lanIpv4, 'iif', config.lanIf, 'lookup', String(d.table), 'pref', String(PREF_CLAT)], { nothrow: true })
      await o.sh.apply('ip', ['-6', 'neigh', 'del', 'proxy', d.clatIpv6, 'dev', d.ifname], { nothrow: true })
    }
  }

  async function plumb(config: Config, p: ClatPlan): Promise<void> {
    const v6 = await listRules(o.sh, 6)
    const v4 = await listRules(o.sh, 4)
    const has = (rules: typeof v6, src: string, table: number) => rules.some((r) => r.priority === PREF_CLAT && r.src === src && r.table === String(table))
    const ifnames = [config.wanIf, ...p.devices.map((d) => d.ifname)]
    await o.sh.apply('sysctl', ['-q', '-w', `net.ipv4.conf.${CLAT_TUN}.rp_filter=0`, ...ifnames.map((i) => `net.ipv6.conf.${i}.proxy_ndp=1`)])
    await o.sh.apply('ip', ['link', 'set', 'dev', CLAT_TUN, 'up'])
    const six = [`neigh replace proxy ${p.routerAddress} dev ${config.wanIf}`, `route replace ${p.routerAddress}/128 dev ${CLAT_TUN}`]
    const four: string[] = []
    for (const d of p.devices) {
      six.push(`neigh replace proxy ${d.clatIpv6} dev ${d.ifname}`, `route replace ${d.clatIpv6}/128 dev ${CLAT_TUN}`)
      if (!has(v6, d.clatIpv6, d.table)) six.push(`rule add from ${d.clatIpv6} lookup ${d.table} pref ${PREF_CLAT}`)
      four.push(`route replace default dev ${CLAT_TUN} table ${d.table} mtu lock ${CLAT_MTU}`)
      if (!has(v4, d.lanIpv4, d.table)) four.push(`rule add from ${d.lanIpv4} iif ${config.lanIf} lookup ${d.table} pref ${PREF_CLAT}`)
    }
    await o.sh.apply('ip', ['-6', '-batch', '-'], { input: `${six.join('\n')}\n` })
    if (four.length > 0) await o.sh.apply('ip', ['-4', '-batch', '-'], { input: `${four.join('\n')}\n` })
  }

  async function once(): Promise<void> {
    const config = o.config()
    const running = taygaPid(config.runDir, NAME)
    // Off (the default) costs no more than this look at the PID file: no `ip` every pass, no store read.
    if (!config.clat) {
      lastError = undefined
      if (running || applied) await stop(config, 'clat is off')
      return
    }
    const p = await plan(config)
    if (p.devices.length === 0 || !p.routerAddress) {
      lastError = undefined
      if (running || applied) await stop(config, p.idle ?? 'nothing to translate')
      return
    }
    const text = clatConfig({ prefix: p.prefix, ipv6Addr: p.routerAddress, dataDir: taygaFiles(config.runDir, NAME).dataDir, maps: p.devices })
    let pid = running
    if (pid && runningConfig(config.runDir, NAME) !== text) {
      await stop(config, 'devices or settings changed')
      pid = undefined
    }
    if (!pid) {
      pid = await startTayga(o.sh, findTayga(taygaSearchPath())!, config.runDir, text, NAME)
      if (pid === undefined) return
      if (!(await waitForTun(pid, TUN_WAIT_MS, CLAT_TUN))) return problem(`tayga (pid ${pid}) did not create ${CLAT_TUN}; see ${taygaFiles(config.runDir, NAME).logFile}`)
      o.log().info(`clat: tayga (pid ${pid}) translating ${p.devices.length} devices toward ${p.prefix} on ${CLAT_TUN}`)
    }
    const key = `${pid}\n${text}`
    if (applied?.key === key) return
    const gone = (applied?.devices ?? []).filter((d) => !p.devices.some((x) => x.mac === d.mac && x.clatIpv6 === d.clatIpv6))
    await unplumb(config, gone)
    await plumb(config, p)
    applied = { key, devices: p.devices, routerAddress: p.routerAddress }
    lastError = undefined
  }

  async function reconcile(): Promise<void> {
    if (closed) return
    if (busy) {
      again = true
      return busy
    }
    busy = once().catch((err) => problem((err as Error).message)).finally(() => { busy = undefined })
    await busy
    if (again) {
      again = false
      return reconcile()
    }
  }

  const unwatch = watchStore(o.store.file, () => void reconcile())
  const periodic = setInterval(() => void reconcile(), CHECK_MS)
  periodic.unref()
  void reconcile()

  return {
    reconcile,
    async state() {
      const config = o.config()
      const pid = taygaPid(config.runDir, NAME)
      const now = pid !== undefined && applied?.key.startsWith(`${pid}\n`) ? applied : undefined
      const p = await plan(config)
      return { enabled: config.clat, idle: p.idle, prefix: p.prefix, running: now !== undefined, pid, routerAddress: now?.routerAddress, lastError, devices: now?.devices ?? [] }
    },
    async close() {
      closed = true
      unwatch()
      clearInterval(periodic)
      await busy
      const config = o.config()
      if (taygaPid(config.runDir, NAME) || applied) await stop(config, 'the runner is stopping')
    },
  }
}

/** GET /clat: whether 464XLAT is translating, why not, and each device's CLAT address. */
export function clatRoutes(clat: Clat): ApiRoute[] {
  return [{ method: 'GET', path: '/clat', handler: () => clat.state() }]
}
