// Tunnel health and failover inside the runner: every tunnelProbeInterval each enabled tunnel is checked
// through itself only (lib/net/ping.ts), its health follows (lib/tunnels/health.ts), and the default IPv6
// route is moved to the best tunnel when the primary fails (lib/tunnels/failover.ts), with one atomic
// replace. Links, addresses and tables are the tunnels job's; this only measures and steers. Health lives
// in memory (no flash writes every few seconds); a restarted runner adopts the route it finds. The same view
// feeds GET /tunnels, GET /v6/address, the tunnels' metrics and the IPv6 part of GET /health.
import { stat } from 'node:fs/promises'
import { getRouterParam, HTTPError } from 'h3'
import { inPrefix6 } from '../addr/ipv6.ts'
import { notFound, type ApiRoute } from '../core/api.ts'
import type { Config } from '../core/config.ts'
import { defineSupervisor } from '../core/supervisor.ts'
import { getLink } from '../net/ip.ts'
import { pingVia } from '../net/ping.ts'
import { getTunnelLink, removeTunnelDefault, replaceTunnelDefault, tunnelDefaultRoute } from '../net/tunnel.ts'
import { wgState } from '../net/wireguard.ts'
import { configuredTunnels, deviceSubnet, type Tunnel } from './config.ts'
import { choosePrimary, isEligible, type Candidate } from './failover.ts'
import { lossPct, newHealth, nextHealth, stats, type Check, type Health, type HealthState, type Thresholds } from './health.ts'
import { tunnelMetrics } from './metrics.ts'

/** A WireGuard session without a handshake for this long is dead (rekeying happens every 120 s under traffic). */
export const WG_HANDSHAKE_STALE_S = 180
const SWITCHES_KEPT = 20
/** Checks kept per tunnel for its latency history (the status page): 10 minutes at the default interval. */
export const HISTORY_KEPT = 60

export interface TunnelStatus {
  name: string
  type: Tunnel['type']
  iface: string
  backend?: 'kernel' | 'wireguard-go'
  state: HealthState
  adminDown: boolean
  score: number
  latencyMs?: number
  lossPct: number
  primary: boolean
  rxBytes?: number
  txBytes?: number
  lastCheck?: string
  /** WireGuard: seconds since the latest handshake (undefined: none yet). */
  handshakeAgeS?: number
  lastFault?: string
  /** The last checks, oldest first, at most HISTORY_KEPT (latency undefined: no reply). */
  history?: { at: string; latencyMs?: number; lossPct: number }[]
}

export interface Switch { at: string; from?: string; to?: string; reason: string }

/** GET /v6/address: the global IPv6 addresses on each tunnel's link and each tunnel's routed prefix. */
export interface V6Addresses {
  addresses: { address: string; prefixlen: number; tunnel: string; primary: boolean; reachable: boolean }[]
  prefixes: { prefix: string; tunnel: string; reachable: boolean }[]
}

/** Up or degraded: it carries traffic. */
export const isReachable = (t: Pick<TunnelStatus, 'state'>) => t.state === 'up' || t.state === 'degraded'

/** The IPv6 part of GET /health: reachable when a primary tunnel exists and carries traffic. */
export function ipv6Health(list: TunnelStatus[]): { ipv6: { reachable: boolean; primary?: string; tunnels: { up: number; total: number } } } {
  const primary = list.find((t) => t.primary)
  return { ipv6: { reachable: !!primary && isReachable(primary), primary: primary?.name, tunnels: { up: list.filter(isReachable).length, total: list.length } } }
}

export function thresholds(c: Config): Thresholds {
  return {
    down: c.tunnelDown,
    up: c.tunnelUp,
    failureLoss: c.tunnelFailureLoss,
    recoveryLoss: c.tunnelRecoveryLoss,
    failureLatency: c.tunnelFailureLatency,
    recoveryLatency: c.tunnelRecoveryLatency,
    window: c.tunnelWindow,
  }
}

interface Observed {
  backend?: 'kernel' | 'wireguard-go'
  handshakeAgeS?: number
  rxBytes?: number
  txBytes?: number
}

export const tunnelSupervisor = defineSupervisor({
  name: 'tunnels',
  // Cheap when nothing is due (a stat of the store file); short, so checks keep to their interval.
  everyMs: 250,
  followStore: true,
  setup({ store, config, sh, log }) {
    const health = new Map<string, Health>()
    const history = new Map<string, Check[]>()
    const observed = new Map<string, Observed>()
    const eligibleSince = new Map<string, number>()
    const switches: Switch[] = []
    let failovers = 0
    let primaryIface: string | undefined
    let storeStamp = ''

    /** One check of `t`; what it sees of the link goes into `seen`. */
    async function measure(t: Tunnel, c: Config, seen: Observed): Promise<Check> {
      const at = Date.now()
      const link = await getTunnelLink(sh, t.iface)
      seen.backend = link?.kind === 'wireguard' ? 'kernel' : link?.kind === 'tun' && t.type === 'wireguard' ? 'wireguard-go' : undefined
      seen.rxBytes = link?.rxBytes
      seen.txBytes = link?.txBytes
      if (!link) return { at, sent: 0, received: 0, fault: `${t.iface} does not exist` }
      if (!link.up) return { at, sent: 0, received: 0, fault: `${t.iface} is down` }
      const results = await Promise.all(t.probe.map((target) => pingVia(sh, { ifname: t.iface, target, count: c.tunnelProbeCount, timeoutS: c.tunnelProbeTimeout })))
      const rtts = results.flatMap((r) => r.rttMs)
      const result: Check = { at, sent: results.reduce((n, r) => n + r.sent, 0), received: rtts.length }
      if (rtts.length > 0) result.latencyMs = rtts.reduce((a, b) => a + b, 0) / rtts.length
      if (t.type === 'wireguard') {
        const latest = Math.max(0, ...((await wgState(sh, t.iface))?.peers ?? []).map((p) => p.latestHandshake))
        seen.handshakeAgeS = latest > 0 ? Math.max(0, Math.round(Date.now() / 1000 - latest)) : undefined
        if (seen.handshakeAgeS === undefined || seen.handshakeAgeS > WG_HANDSHAKE_STALE_S) {
          result.fault = seen.handshakeAgeS === undefined ? 'no WireGuard handshake yet' : `no WireGuard handshake for ${seen.handshakeAgeS} s`
        }
      }
      return result
    }

    // What a check sees is published when it ends: a reader during a check (GET /tunnels, /metrics) gets the
    // last complete view, not one without counters and handshake.
    async function check(t: Tunnel, c: Config): Promise<Check> {
      const seen: Observed = {}
      const result = await measure(t, c, seen)
      observed.set(t.name, seen)
      return result
    }

    async function steer(c: Config, tunnels: Tunnel[], adminDown: (name: string) => boolean, known: (name: string) => boolean): Promise<void> {
      const now = Date.now()
      const routed = await tunnelDefaultRoute(sh)
      const candidates: Candidate[] = tunnels.map((t) => {
        const h = health.get(t.name)
        const s = h ? stats(h) : { score: 0 }
        const c0: Candidate = { name: t.name, priority: t.priority, state: h?.state ?? 'unknown', score: s.score, usable: known(t.name) && !adminDown(t.name) && h?.state !== undefined }
        if (isEligible(c0, { healthyScore: c.tunnelHealthyScore })) {
          if (!eligibleSince.has(t.name)) eligibleSince.set(t.name, now)
        } else eligibleSince.delete(t.name)
        return { ...c0, eligibleSince: eligibleSince.get(t.name) }
      })
      const current = tunnels.find((t) => t.iface === routed)?.name
      const decision = choosePrimary(candidates, current, now, { failoverScore: c.tunnelFailoverScore, healthyScore: c.tunnelHealthyScore, holdMs: c.tunnelHoldTime * 1000 })
      const next = tunnels.find((t) => t.name === decision.primary)
      if (next && next.iface !== routed) await replaceTunnelDefault(sh, next.iface, c.tunnelRouteMetric)
      else if (!next && routed) await removeTunnelDefault(sh)
      primaryIface = next?.iface
      if (decision.primary !== current) {
        const reason = decision.reason ?? 'no tunnel is healthy'
        if (current && decision.primary) failovers++
        switches.push({ at: new Date(now).toISOString(), from: current, to: decision.primary, reason })
        switches.splice(0, switches.length - SWITCHES_KEPT)
        const line = `tunnels: primary ${current ?? 'none'} -> ${decision.primary ?? 'none'}: ${reason}`
        if (current) log().warn(line)
        else log().info(line)
      }
    }

    async function pass(): Promise<void> {
      const c = config()
      const tunnels = configuredTunnels(c).filter((t) => t.enabled)
      for (const name of health.keys()) {
        if (!tunnels.some((t) => t.name === name)) {
          health.delete(name)
          history.delete(name)
        }
      }
      if (tunnels.length === 0) return
      const now = Date.now()
      const due = tunnels.filter((t) => now - (health.get(t.name)?.checks.at(-1)?.at ?? 0) >= c.tunnelProbeInterval * 1000 - 100)
      const stamp = await stat(store.file).then((s) => `${s.mtimeMs}:${s.size}`, () => '')
      if (due.length === 0 && stamp === storeStamp) return
      storeStamp = stamp
      const data = await store.read()
      const t0 = thresholds(c)
      await Promise.all(due.map(async (t) => {
        const result = await check(t, c)
        const before = health.get(t.name) ?? newHealth(now)
        const after = nextHealth(before, result, t0)
        health.set(t.name, after)
        history.set(t.name, [...(history.get(t.name) ?? []), result].slice(-HISTORY_KEPT))
        if (after.state !== before.state && (after.state === 'down' || before.state === 'down')) {
          const s = stats(after)
          log().info(`tunnel ${t.name}: ${before.state} -> ${after.state} (loss ${lossPct(result)} %, score ${s.score}${result.fault ? `; ${result.fault}` : ''})`)
        }
      }))
      await steer(c, tunnels, (name) => data.tunnels[name]?.adminDown ?? false, (name) => name in data.tunnels)
    }

    function status(): TunnelStatus[] {
      return configuredTunnels(config()).map((t) => {
        const h = health.get(t.name)
        const s = h ? stats(h) : undefined
        const seen = observed.get(t.name) ?? {}
        const last = h?.checks.at(-1)
        return {
          name: t.name,
          type: t.type,
          iface: t.iface,
          backend: seen.backend,
          state: t.enabled ? (h?.state ?? 'unknown') : 'down',
          adminDown: false,
          score: s?.score ?? 0,
          latencyMs: s?.latencyMs,
          lossPct: s?.lossPct ?? 100,
          primary: primaryIface === t.iface,
          rxBytes: seen.rxBytes,
          txBytes: seen.txBytes,
          lastCheck: last ? new Date(last.at).toISOString() : undefined,
          handshakeAgeS: seen.handshakeAgeS,
          lastFault: [...(h?.checks ?? [])].reverse().find((x) => x.fault)?.fault,
          history: (history.get(t.name) ?? []).map((c) => ({
            at: new Date(c.at).toISOString(),
            latencyMs: c.latencyMs === undefined ? undefined : Math.round(c.latencyMs * 10) / 10,
            lossPct: lossPct(c),
          })),
        }
      })
    }

    async function withAdmin(list: TunnelStatus[]): Promise<TunnelStatus[]> {
      const data = await store.read()
      return list.map((t) => ({ ...t, adminDown: data.tunnels[t.name]?.adminDown ?? false }))
    }

    async function v6Addresses(): Promise<V6Addresses> {
      const list = status()
      const links = await Promise.all(list.map((t) => getLink(sh, t.iface)))
      const prefixes = configuredTunnels(config()).flatMap((t) => {
        const s = list.find((x) => x.name === t.name)
        return t.prefix && s ? [{ prefix: t.prefix, tunnel: t.name, reachable: isReachable(s) }] : []
      })
      const tunnels = configuredTunnels(config())
      const addresses = list.flatMap((t, i) => (links[i]?.addresses ?? [])
        .filter((a) => {
          const devices = deviceSubnet(tunnels.find((x) => x.name === t.name)?.prefix)
          return a.family === 6 && a.scope === 'global' && a.usable && !(devices && a.prefixlen === 128 && inPrefix6(a.address, devices))
        })
        .map((a) => ({ address: a.address, prefixlen: a.prefixlen, tunnel: t.name, primary: t.primary, reachable: isReachable(t) })))
      return { addresses, prefixes }
    }

    const routes: ApiRoute[] = [
      { method: 'GET', path: '/tunnels', handler: async () => ({ tunnels: await withAdmin(status()), failovers, switches }) },
      { method: 'GET', path: '/v6/address', handler: () => v6Addresses() },
      ...(['up', 'down'] as const).map((action): ApiRoute => ({
        method: 'POST',
        path: `/tunnels/:name/${action}`,
        async handler(event, api) {
          const name = getRouterParam(event, 'name') ?? ''
          if (!configuredTunnels(api.config()).some((t) => t.name === name)) throw notFound(`no tunnel ${JSON.stringify(name)} in config`)
          const known = await api.store.update((d) => {
            const record = d.tunnels[name]
            if (record) record.adminDown = action === 'down'
            return !!record
          })
          if (!known) throw new HTTPError({ status: 409, message: `tunnel ${name} has not been set up yet: the tunnels job makes it first` })
          const job = api.runner?.trigger('tunnels', 'api')
          return new Response(JSON.stringify({ tunnel: name, adminDown: action === 'down', job: job ?? 'not run (no runner)' }), { status: 202, headers: { 'content-type': 'application/json' } })
        },
      })),
    ]

    const configured = () => configuredTunnels(config()).length > 0
    return {
      pass,
      routes,
      metrics: () => (configured() ? tunnelMetrics(status(), failovers) : ''),
      health: () => (configured() ? ipv6Health(status()) : undefined),
    }
  },
})
