// NAT64 inside the runner: keeps one tayga running while config.nat64 is on and tayga is available,
// restarts it when it dies (with backoff when it keeps dying), follows SIGHUP (settings changed: restart;
// turned off: stop), and stops it when the runner stops. tayga is detached, so a runner that crashed leaves
// NAT64 working and its successor adopts the process when its config file still matches.
import { retryDelaySeconds } from '../core/backoff.ts'
import { hasRole, type Config } from '../core/config.ts'
import { exposition, flag, single } from '../core/prometheus.ts'
import type { Data } from '../core/schema.ts'
import { defineSupervisor } from '../core/supervisor.ts'
import { isIpv4 } from '../addr/ipv4.ts'
import { mappedAddress, overlaps4 } from '../addr/nat64.ts'
import { listLinks } from '../net/ip.ts'
import { runningConfig, startTayga, taygaFiles, taygaPid, waitForTun } from '../net/tayga.ts'
import { syncNat } from '../reach/nat.ts'
import { configureTun, INSTANCE, nat64Status, stopNat64, taygaConfig, TUN, type Nat64Status } from './plan.ts'

const TUN_WAIT_MS = 3000
/** A tayga that ran this long was healthy: the next failure starts the backoff from scratch. */
const HEALTHY_MS = 30_000

export interface Nat64State extends Nat64Status {
  running: boolean
  pid?: number
  startedAt?: string
  restarts: number
  lastError?: string
  /** Where IPv6 clients reach each active device. */
  devices: { mac: string; lanIpv4: string; address: string }[]
}

/** Active devices with a LAN IPv4: those IPv6 clients reach through NAT64. */
const mappable = (data: Data) => Object.values(data.devices).filter((d) => d.status === 'active' && d.lanIpv4 && isIpv4(d.lanIpv4))

export const nat64Supervisor = defineSupervisor({
  name: 'nat64',
  everyMs: 1000,
  setup({ store, config, sh, log }) {
    let pid: number | undefined
    let startedAt: number | undefined
    /** The tayga whose TUN we set up, and the pool its rule is for. */
    let configured: { pid: number; pool: string } | undefined
    let restarts = 0
    let failures = 0
    let notBefore = 0
    let lastError: string | undefined
    let reported = ''
    let tableFor: boolean | undefined

    const problem = (message: string) => {
      lastError = message
      if (message !== reported) log().error(`nat64: ${message}`)
      reported = message
    }

    /**
     * Our table carries the NAT64 rules while nat64 is on (lib/net/nft.ts): added when it is turned on, removed
     * when it is turned off under us. Off from the start is refresh-proxies' business, as before NAT64.
     */
    async function table(c: Config): Promise<void> {
      if (c.nat64 ? tableFor === true : tableFor !== true) return
      await syncNat({ sh, config: c }, () => store.read())
      tableFor = c.nat64
    }

    async function stop(c: Config, why: string): Promise<void> {
      const pool = configured?.pool ?? /^dynamic-pool (\S+)$/m.exec(runningConfig(c.runDir, INSTANCE) ?? '')?.[1]
      const stopped = await stopNat64(sh, c.runDir, pool)
      if (stopped) log().info(`nat64: tayga (pid ${stopped}) stopped: ${why}`)
      pid = undefined
      configured = undefined
    }

    async function start(c: Config, status: Nat64Status, text: string): Promise<void> {
      const links = await listLinks(sh)
      const clash = links.flatMap((l) => (l.ifname === TUN ? [] : l.addresses))
        .find((a) => a.family === 4 && overlaps4(c.nat64Pool, `${a.address}/${a.prefixlen}`))
      if (clash) return problem(`nat64Pool ${c.nat64Pool} overlaps ${clash.address}/${clash.prefixlen} on this router; choose another pool`)
      const started = await startTayga(sh, status.binary!, c.runDir, text, INSTANCE)
      if (started === undefined) return
      pid = started
      startedAt = Date.now()
      // Exited at once: the next pass counts the failure and backs off.
      if (!(await waitForTun(started, TUN_WAIT_MS, TUN))) return problem(`tayga (pid ${started}) did not create ${TUN}; see ${taygaFiles(c.runDir, INSTANCE).logFile}`)
      log().info(`nat64: tayga${status.version ? ` ${status.version}` : ''} (pid ${started}) translating ${status.prefix} <-> ${c.nat64Pool} on ${TUN}`)
    }

    async function pass(): Promise<void> {
      const c = config()
      const running = taygaPid(c.runDir, INSTANCE)
      const on = c.nat64 && hasRole(c, 'gateway')
      const status = on ? nat64Status(c) : undefined
      if (!status?.available) {
        if (status) problem(`not available: ${status.problems.join('; ')}`)
        else lastError = undefined
        if (running) await stop(c, status ? 'not available' : c.nat64 ? 'this host is not a gateway' : 'nat64 is off')
        await table(c)
        return
      }
      await table(c)
      const text = taygaConfig({ prefix: status.prefix!, pool: c.nat64Pool, dataDir: taygaFiles(c.runDir, INSTANCE).dataDir })
      if (running && runningConfig(c.runDir, INSTANCE) !== text) await stop(c, 'settings changed')
      else if (running) {
        if (pid !== running) {
          log().info(`nat64: adopted the running tayga (pid ${running})`)
          pid = running
          startedAt ??= Date.now()
        }
      } else {
        if (pid !== undefined) {
          const ran = Date.now() - (startedAt ?? 0)
          failures = ran > HEALTHY_MS ? 1 : failures + 1
          restarts++
          notBefore = Date.now() + (failures > 1 ? retryDelaySeconds(failures - 1, 1, 60) * 1000 : 0)
          problem(`tayga (pid ${pid}) exited after ${Math.round(ran / 1000)} s; restarting${notBefore > Date.now() ? ` in ${Math.round((notBefore - Date.now()) / 1000)} s` : ''}`)
          pid = undefined
          configured = undefined
        }
        if (Date.now() < notBefore) return
        await start(c, status, text)
      }
      if (pid !== undefined && configured?.pid !== pid && taygaPid(c.runDir, INSTANCE) === pid) {
        await configureTun(sh, { prefix: status.prefix!, pool: c.nat64Pool })
        configured = { pid, pool: c.nat64Pool }
        lastError = undefined
        reported = ''
      }
    }

    async function state(): Promise<Nat64State> {
      const c = config()
      const status = nat64Status(c)
      const running = taygaPid(c.runDir, INSTANCE)
      const data = await store.snapshot()
      const devices = status.prefix
        ? mappable(data).map((d) => ({ mac: d.mac, lanIpv4: d.lanIpv4!, address: mappedAddress(status.prefix!, d.lanIpv4!) }))
        : []
      return {
        ...status,
        running: running !== undefined,
        pid: running,
        startedAt: running && startedAt ? new Date(startedAt).toISOString() : undefined,
        restarts,
        lastError,
        devices,
      }
    }

    return {
      pass: () => pass().catch((err) => problem((err as Error).message)),
      async close() {
        const c = config()
        if (taygaPid(c.runDir, INSTANCE)) await stop(c, 'the runner is stopping')
      },
      // GET /nat64: whether NAT64 is on and can run, the tayga process, the prefix and pool, each device's address.
      routes: [{ method: 'GET', path: '/nat64', handler: () => state() }],
      async metrics() {
        const c = config()
        const running = taygaPid(c.runDir, INSTANCE) !== undefined
        return exposition([
          single('dualgate_nat64_enabled', 'gauge', 'Whether NAT64 is turned on (nat64) on this gateway.', flag(c.nat64 && hasRole(c, 'gateway'))),
          single('dualgate_nat64_running', 'gauge', 'Whether the NAT64 tayga runs.', flag(running)),
          single('dualgate_nat64_mapped_devices', 'gauge', 'Devices IPv6 clients reach through NAT64 (0 while tayga does not run).', running ? mappable(await store.snapshot()).length : 0),
          single('dualgate_nat64_restarts_total', 'counter', 'Times the NAT64 tayga exited and was started again.', restarts),
        ])
      },
    }
  },
})
