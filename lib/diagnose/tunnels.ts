// Checks of the IPv6 tunnels (any role): each enabled tunnel's link, the runner's view of their health and
// of the primary, and the Hurricane Electric updater's state. The rules are the pure functions here.
import { apiGet } from '../core/api-client.ts'
import type { Config } from '../core/config.ts'
import { liveRunner } from '../core/runner-state.ts'
import type { HeUpdate } from '../core/schema.ts'
import { requestRun } from '../core/trigger.ts'
import { getLink } from '../net/ip.ts'
import { configuredTunnels, type Tunnel } from '../tunnels/config.ts'
import { settingsFingerprint } from '../tunnels/he.ts'
import type { TunnelStatus } from '../tunnels/supervisor.ts'
import { noStore, waitUntil, type CheckFn } from './env.ts'
import { fail, pass, warn, type Check, type CheckStatus } from './report.ts'

/** An enabled tunnel from config, and whether its link exists. */
export interface TunnelSeen { name: string; iface: string; type: Tunnel['type']; exists: boolean }

export type LiveTunnel = Pick<TunnelStatus, 'name' | 'state' | 'primary' | 'adminDown' | 'lastFault'>

const WORSE: Record<CheckStatus, number> = { pass: 0, warn: 1, fail: 2 }
const carries = (t: LiveTunnel) => t.state === 'up' || t.state === 'degraded'

/**
 * The tunnels: `live` is the runner's view (GET /tunnels), undefined when the runner is not running, or why
 * it could not be had. A missing link of ours is repaired by the tunnels job; an external one is not ours.
 */
export function checkTunnels(seen: TunnelSeen[], live: LiveTunnel[] | string | undefined): Check {
  if (seen.length === 0) return pass('tunnels', 'no tunnel enabled')
  const found: { status: CheckStatus; text: string }[] = []
  const missing = seen.filter((t) => !t.exists)
  for (const t of missing) {
    found.push({ status: 'fail', text: `${t.name}: ${t.iface} does not exist${t.type === 'external' ? ' (an external tunnel is brought up by something else)' : ''}` })
  }
  if (live === undefined) found.push({ status: 'warn', text: 'health not measured: the runner is not running' })
  else if (typeof live === 'string') found.push({ status: 'warn', text: `health unknown: ${live}` })
  else {
    const mine = seen.flatMap((t) => live.filter((l) => l.name === t.name))
    const inService = mine.filter((t) => !t.adminDown)
    const healthy = inService.filter(carries)
    for (const t of mine.filter((x) => x.adminDown)) found.push({ status: 'pass', text: `${t.name} set down by tunnels down` })
    for (const t of inService.filter((x) => x.state === 'down' && !missing.some((m) => m.name === x.name))) {
      found.push({ status: healthy.length > 0 ? 'warn' : 'fail', text: `${t.name} down${t.lastFault ? ` (${t.lastFault})` : ''}` })
    }
    const primary = mine.find((t) => t.primary)
    if (primary && carries(primary)) found.push({ status: 'pass', text: `primary ${primary.name}` })
    else if (healthy.length > 0) {
      const none = primary ? `primary ${primary.name} is ${primary.state}` : 'no primary'
      found.push({ status: 'fail', text: `${none}: ${healthy.map((t) => t.name).join(', ')} up, but not carrying the default IPv6 route (a tunnel takes it when it scores at least tunnelHealthyScore)` })
    } else if (inService.length > 0 && inService.every((t) => t.state === 'unknown')) found.push({ status: 'warn', text: 'not measured yet' })
    else if (inService.length > 0) found.push({ status: 'fail', text: 'no tunnel is up: no IPv6 through tunnels' })
  }
  const status = found.reduce<CheckStatus>((worst, f) => (WORSE[f.status] > WORSE[worst] ? f.status : worst), 'pass')
  const reason = `${seen.length} enabled; ${found.map((f) => f.text).join('; ')}`
  if (status === 'pass') return pass('tunnels', reason)
  const fix = missing.some((t) => t.type !== 'external') ? 'run the tunnels job' : undefined
  return status === 'fail' ? fail('tunnels', reason, fix) : warn('tunnels', reason, fix)
}

/** What Hurricane Electric's fatal answers mean. */
const HE_MEANING: Record<string, string> = {
  badauth: 'wrong user name or update key',
  nohost: 'no such tunnel id for this account',
  notfqdn: 'not a valid tunnel id',
  '!donator': 'a feature for donors only',
}

/** 6in4 tunnels with HE settings (`settings`: their fingerprint, as he-update keeps it) against the updater's records. */
export function checkHeUpdate(tunnels: { name: string; settings: string }[], records: Record<string, HeUpdate>, now: number): Check {
  if (tunnels.length === 0) return pass('he-update', 'no 6in4 tunnel with Hurricane Electric settings')
  const found = tunnels.map(({ name, settings }): { status: CheckStatus; text: string } => {
    const r = records[name]
    if (r?.stopped && r.stopped.settings === settings) {
      const meaning = HE_MEANING[r.stopped.answer]
      return { status: 'fail', text: `${name}: the broker answered "${r.stopped.answer}"${meaning ? ` (${meaning})` : ''}; no update is sent until the tunnel's HE settings (he_tunnel_id, he_username, he_key_file) change` }
    }
    if (r?.stopped) return { status: 'pass', text: `${name}: stopped after "${r.stopped.answer}", but the HE settings changed since: the next he-update sends again` }
    if (r?.backoffUntil && Date.parse(r.backoffUntil) > now) return { status: 'warn', text: `${name}: the broker answered "abuse"; nothing is sent before ${r.backoffUntil}` }
    return { status: 'pass', text: r?.answer ? `${name}: last answer "${r.answer}"${r.at ? ` at ${r.at}` : ''}` : `${name}: no update yet` }
  })
  const reason = found.map((f) => f.text).join('; ')
  if (found.some((f) => f.status === 'fail')) return fail('he-update', reason)
  if (found.some((f) => f.status === 'warn')) return warn('he-update', reason)
  return pass('he-update', reason)
}

async function runnerTunnels(config: Config): Promise<LiveTunnel[] | string> {
  const r = await apiGet(config, '/tunnels')
  if (typeof r === 'string') return `GET /tunnels failed (${r})`
  const list = (r.body as { tunnels?: LiveTunnel[] } | undefined)?.tunnels
  return r.status === 200 && Array.isArray(list) ? list : `GET /tunnels: HTTP ${r.status}`
}

const LINK_WAIT_MS = 15_000

export const tunnels: CheckFn = async (env) => {
  const { config, sh } = env.ctx
  const configured = configuredTunnels(config)
  if (configured.length === 0) return { check: pass('tunnels', 'no tunnels configured') }
  const links = await env.links()
  const seen = configured.filter((t) => t.enabled).map((t) => ({ name: t.name, iface: t.iface, type: t.type, exists: links.some((l) => l.ifname === t.iface) }))
  const live = liveRunner(config.dataDir) ? await runnerTunnels(config) : undefined
  const check = checkTunnels(seen, live)
  if (!check.fix) return { check }
  const ours = seen.filter((t) => !t.exists && t.type !== 'external')
  return {
    check,
    // Through the spool: the runner runs the job soon, or when it starts.
    async apply() {
      await requestRun(config, 'tunnels', 'diagnose', 'fix')
      if (liveRunner(config.dataDir)) await waitUntil(LINK_WAIT_MS, async () => (await Promise.all(ours.map((t) => getLink(sh, t.iface)))).every(Boolean))
    },
  }
}

export const heUpdate: CheckFn = async (env) => {
  const { config } = env.ctx
  const he = configuredTunnels(config).flatMap((t) => (t.type === '6in4' && t.enabled && t.he ? [{ name: t.name, settings: settingsFingerprint({ ...t.he, url: config.heUpdateUrl }) }] : []))
  if (he.length === 0) return { check: checkHeUpdate([], {}, Date.now()) }
  const view = await env.store()
  if (!view.data) return noStore('he-update', view)
  return { check: checkHeUpdate(he, view.data.heUpdates, Date.now()) }
}
