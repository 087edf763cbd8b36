// 464XLAT inside the runner (./plan.ts): while config.clat is on and the upstream is IPv6-only, one tayga
// translates every active device's IPv4 with a map line each, and each device gets the plumbing around it:
// proxy NDP for its CLAT address on its macvlan (so replies reach the router under the device's MAC), a
// route from that address into the TUN, its LAN IPv4 routed into the TUN from its own table, and the CLAT
// address routed out through its own table (so the translated packets leave from its macvlan). tayga cannot
// reload, so a change in the set of devices restarts it; its TUN and the routes through it go and come back.
import { existsSync } from 'node:fs'
import { clatConfig, clatPlan, CLAT_INSTANCE as INSTANCE, CLAT_MTU, CLAT_TUN, type ClatDevice, type ClatPlan } from './plan.ts'
import { hasRole, type Config } from '../core/config.ts'
import { exposition, flag, single } from '../core/prometheus.ts'
import { defineSupervisor } from '../core/supervisor.ts'
import { getLink } from '../net/ip.ts'
import { listRules, PREF_CLAT } from '../net/route.ts'
import { findTayga, runningConfig, startTayga, stopTayga, taygaFiles, taygaPid, waitForTun } from '../net/tayga.ts'
import { confKey, setSysctls } from '../net/sysctl.ts'

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

export const clatSupervisor = defineSupervisor({
  name: 'clat',
  everyMs: 5000,
  followStore: true,
  setup({ store, config, sh, log }) {
    /** The tayga and config the plumbing was last laid for, and what it was laid for. */
    let applied: { key: string; devices: ClatDevice[]; routerAddress: string } | undefined
    let lastError: string | undefined

    const problem = (message: string) => {
      if (message !== lastError) log().error(`clat: ${message}`)
      lastError = message
    }

    async function plan(c: Config): Promise<ClatPlan> {
      const wan = await getLink(sh, c.wanIf)
      return clatPlan(await store.snapshot(), c, { wanMac: wan?.mac, tayga: findTayga() !== undefined, tun: existsSync('/dev/net/tun') })
    }

    async function stop(c: Config, why: string): Promise<void> {
      const stopped = await stopTayga(sh, c.runDir, INSTANCE)
      if (applied) {
        await unplumb(c, applied.devices)
        await sh.apply('ip', ['-6', 'neigh', 'del', 'proxy', applied.routerAddress, 'dev', c.wanIf], { nothrow: true })
      }
      applied = undefined
      if (stopped) log().info(`clat: tayga (pid ${stopped}) stopped: ${why}`)
    }

    /** The rules and proxy entries outlive the TUN; the routes through it went with it. */
    async function unplumb(c: Config, devices: ClatDevice[]): Promise<void> {
      for (const d of devices) {
        await sh.apply('ip', ['-6', 'rule', 'del', 'from', d.clatIpv6, 'lookup', String(d.table), 'pref', String(PREF_CLAT)], { nothrow: true })
        await sh.apply('ip', ['-4', 'rule', 'del', 'from', d.lanIpv4, 'iif', c.lanIf, 'lookup', String(d.table), 'pref', String(PREF_CLAT)], { nothrow: true })
        await sh.apply('ip', ['-6', 'neigh', 'del', 'proxy', d.clatIpv6, 'dev', d.ifname], { nothrow: true })
      }
    }

    async function plumb(c: Config, p: ClatPlan): Promise<void> {
      const v6 = await listRules(sh, 6)
      const v4 = await listRules(sh, 4)
      const has = (rules: typeof v6, src: string, table: number) => rules.some((r) => r.priority === PREF_CLAT && r.src === src && r.table === String(table))
      const ifnames = [c.wanIf, ...p.devices.map((d) => d.ifname)]
      await setSysctls(sh, { [confKey(CLAT_TUN, 'rp_filter')]: '0', ...Object.fromEntries(ifnames.map((i) => [confKey(i, 'proxy_ndp', 6), '1'])) })
      await sh.apply('ip', ['link', 'set', 'dev', CLAT_TUN, 'up'])
      const six = [`neigh replace proxy ${p.routerAddress} dev ${c.wanIf}`, `route replace ${p.routerAddress}/128 dev ${CLAT_TUN}`]
      const four: string[] = []
      for (const d of p.devices) {
        six.push(`neigh replace proxy ${d.clatIpv6} dev ${d.ifname}`, `route replace ${d.clatIpv6}/128 dev ${CLAT_TUN}`)
        if (!has(v6, d.clatIpv6, d.table)) six.push(`rule add from ${d.clatIpv6} lookup ${d.table} pref ${PREF_CLAT}`)
        four.push(`route replace default dev ${CLAT_TUN} table ${d.table} mtu lock ${CLAT_MTU}`)
        if (!has(v4, d.lanIpv4, d.table)) four.push(`rule add from ${d.lanIpv4} iif ${c.lanIf} lookup ${d.table} pref ${PREF_CLAT}`)
      }
      await sh.apply('ip', ['-6', '-batch', '-'], { input: `${six.join('\n')}\n` })
      if (four.length > 0) await sh.apply('ip', ['-4', '-batch', '-'], { input: `${four.join('\n')}\n` })
    }

    async function pass(): Promise<void> {
      const c = config()
      const running = taygaPid(c.runDir, INSTANCE)
      // Off (the default) costs no more than this look at the PID file: no `ip` every pass, no store read.
      if (!c.clat || !hasRole(c, 'gateway')) {
        lastError = undefined
        if (running || applied) await stop(c, c.clat ? 'this host is not a gateway' : 'clat is off')
        return
      }
      const p = await plan(c)
      if (p.devices.length === 0 || !p.routerAddress) {
        lastError = undefined
        if (running || applied) await stop(c, p.idle ?? 'nothing to translate')
        return
      }
      const text = clatConfig({ prefix: p.prefix, ipv6Addr: p.routerAddress, dataDir: taygaFiles(c.runDir, INSTANCE).dataDir, maps: p.devices })
      let pid = running
      if (pid && runningConfig(c.runDir, INSTANCE) !== text) {
        await stop(c, 'devices or settings changed')
        pid = undefined
      }
      if (!pid) {
        pid = await startTayga(sh, findTayga()!, c.runDir, text, INSTANCE)
        if (pid === undefined) return
        if (!(await waitForTun(pid, TUN_WAIT_MS, CLAT_TUN))) return problem(`tayga (pid ${pid}) did not create ${CLAT_TUN}; see ${taygaFiles(c.runDir, INSTANCE).logFile}`)
        log().info(`clat: tayga (pid ${pid}) translating ${p.devices.length} devices toward ${p.prefix} on ${CLAT_TUN}`)
      }
      const key = `${pid}\n${text}`
      if (applied?.key === key) return
      const gone = (applied?.devices ?? []).filter((d) => !p.devices.some((x) => x.mac === d.mac && x.clatIpv6 === d.clatIpv6))
      await unplumb(c, gone)
      await plumb(c, p)
      applied = { key, devices: p.devices, routerAddress: p.routerAddress }
      lastError = undefined
    }

    /** What the running tayga was plumbed for; undefined when none runs. */
    function current(c: Config): { pid?: number; now?: typeof applied } {
      const pid = taygaPid(c.runDir, INSTANCE)
      return { pid, now: pid !== undefined && applied?.key.startsWith(`${pid}\n`) ? applied : undefined }
    }

    async function state(): Promise<ClatState> {
      const c = config()
      const { pid, now } = current(c)
      const p = await plan(c)
      return { enabled: c.clat, idle: p.idle, prefix: p.prefix, running: now !== undefined, pid, routerAddress: now?.routerAddress, lastError, devices: now?.devices ?? [] }
    }

    return {
      pass: () => pass().catch((err) => problem((err as Error).message)),
      async close() {
        const c = config()
        if (taygaPid(c.runDir, INSTANCE) || applied) await stop(c, 'the runner is stopping')
      },
      // GET /clat: whether 464XLAT is translating, why not, and each device's CLAT address.
      routes: [{ method: 'GET', path: '/clat', handler: () => state() }],
      // From memory and tayga's pid file: no `ip` per scrape.
      metrics() {
        const c = config()
        const { now } = current(c)
        return exposition([
          single('dualgate_clat_enabled', 'gauge', 'Whether 464XLAT is turned on (clat) on this gateway.', flag(c.clat && hasRole(c, 'gateway'))),
          single('dualgate_clat_running', 'gauge', 'Whether the CLAT tayga runs with every translated device plumbed.', flag(now !== undefined)),
          single('dualgate_clat_mapped_devices', 'gauge', 'Devices whose IPv4 the CLAT translates now.', now?.devices.length ?? 0),
        ])
      },
    }
  },
})
