// NAT64 inside the runner: keeps one tayga running while config.nat64 is on and tayga is available,
// restarts it when it dies (with backoff when it keeps dying), follows SIGHUP (settings changed: restart;
// turned off: stop), and stops it when the runner stops. tayga is detached, so a runner that crashed leaves
// NAT64 working and its successor adopts the process when its config file still matches.
import type { ApiRoute } from '../core/api.ts'
import { retryDelaySeconds } from '../core/backoff.ts'
import type { Config } from '../core/config.ts'
import type { Sh } from '../core/exec.ts'
import { isIpv4 } from '../addr/ipv4.ts'
import type { Logger } from '../core/log.ts'
import { mappedAddress, overlaps4 } from './prefix.ts'
import { syncNat } from '../reach/nat.ts'
import { listLinks } from '../net/ip.ts'
import {
  configureTun, nat64Status, runningConfig, startTayga, stopTayga, taygaConfig, taygaFiles, taygaPid, TUN, waitForTun, type Nat64Status,
} from '../net/tayga.ts'
import type { Store } from '../core/store.ts'

const CHECK_MS = 1000
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

export interface Nat64 {
  /** One supervision pass now (the runner also runs one every second). */
  reconcile(): Promise<void>
  state(): Promise<Nat64State>
  close(): Promise<void>
}

export function startNat64(o: { store: Store; config: () => Config; sh: Sh; log: () => Logger }): Nat64 {
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
  let busy: Promise<void> | undefined
  let closed = false

  const problem = (message: string) => {
    lastError = message
    if (message !== reported) o.log().error(`nat64: ${message}`)
    reported = message
  }

  /**
   * Our table carries the NAT64 rules while nat64 is on (lib/net/nft.ts): added when it is turned on, removed
   * when it is turned off under us. Off from the start is refresh-proxies' business, as before NAT64.
   */
  async function table(config: Config): Promise<void> {
    if (config.nat64 ? tableFor === true : tableFor !== true) return
    await syncNat({ sh: o.sh, config }, await o.store.read())
    tableFor = config.nat64
  }

  async function stop(config: Config, why: string): Promise<void> {
    const pool = configured?.pool ?? /^dynamic-pool (\S+)$/m.exec(runningConfig(config.runDir) ?? '')?.[1]
    const stopped = await stopTayga(o.sh, config.runDir, pool)
    if (stopped) o.log().info(`nat64: tayga (pid ${stopped}) stopped: ${why}`)
    pid = undefined
    configured = undefined
  }

  async function start(config: Config, status: Nat64Status, text: string): Promise<void> {
    const links = await listLinks(o.sh)
    const clash = links.flatMap((l) => (l.ifname === TUN ? [] : l.addresses))
      .find((a) => a.family === 4 && overlaps4(config.nat64Pool, `${a.address}/${a.prefixlen}`))
    if (clash) return problem(`nat64Pool ${config.nat64Pool} overlaps ${clash.address}/${clash.prefixlen} on this router; choose another pool`)
    const started = await startTayga(o.sh, status.binary!, config.runDir, text)
    if (started === undefined) return
    pid = started
    startedAt = Date.now()
    // Exited at once: the next pass counts the failure and backs off.
    if (!(await waitForTun(started, TUN_WAIT_MS))) return problem(`tayga (pid ${started}) did not create ${TUN}; see ${taygaFiles(config.runDir).logFile}`)
    o.log().info(`nat64: tayga${status.version ? ` ${status.version}` : ''} (pid ${started}) translating ${status.prefix} <-> ${config.nat64Pool} on ${TUN}`)
  }

  async function once(): Promise<void> {
    const config = o.config()
    const running = taygaPid(config.runDir)
    const status = config.nat64 ? nat64Status(config) : undefined
    if (!status?.available) {
      if (status) problem(`not available: ${status.problems.join('; ')}`)
      else lastError = undefined
      if (running) await stop(config, status ? 'not available' : 'nat64 is off')
      await table(config)
      return
    }
    await table(config)
    const text = taygaConfig({ prefix: status.prefix!, pool: config.nat64Pool, dataDir: taygaFiles(config.runDir).dataDir })
    if (running && runningConfig(config.runDir) !== text) await stop(config, 'settings changed')
    else if (running) {
      if (pid !== running) {
        o.log().info(`nat64: adopted the running tayga (pid ${running})`)
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
      await start(config, status, text)
    }
    if (pid !== undefined && configured?.pid !== pid && taygaPid(config.runDir) === pid) {
      await configureTun(o.sh, { prefix: status.prefix!, pool: config.nat64Pool })
      configured = { pid, pool: config.nat64Pool }
      lastError = undefined
      reported = ''
    }
  }

  function pass(): Promise<void> {
    if (closed) return Promise.resolve()
    busy ??= once()
      .catch((err) => problem((err as Error).message))
      .finally(() => { busy = undefined })
    return busy
  }

  const timer = setInterval(() => void pass(), CHECK_MS)
  timer.unref()
  void pass()

  return {
    reconcile: pass,
    async state() {
      const config = o.config()
      const status = nat64Status(config)
      const running = taygaPid(config.runDir)
      const data = await o.store.read()
      const devices = status.prefix
        ? Object.values(data.devices).filter((d) => d.status === 'active' && d.lanIpv4 && isIpv4(d.lanIpv4))
          .map((d) => ({ mac: d.mac, lanIpv4: d.lanIpv4!, address: mappedAddress(status.prefix!, d.lanIpv4!) }))
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
    },
    async close() {
      closed = true
      clearInterval(timer)
      await busy
      const config = o.config()
      if (taygaPid(config.runDir)) await stop(config, 'the runner is stopping')
    },
  }
}

/** GET /nat64: whether NAT64 is on and can run, the tayga process, the prefix and pool, each device's address. */
export function nat64Routes(nat64: Nat64): ApiRoute[] {
  return [{ method: 'GET', path: '/nat64', handler: () => nat64.state() }]
}
