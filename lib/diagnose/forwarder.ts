// The forwarder's check, on a VPS (role forwarder) and on a home router with forwarder peers: each relay
// forward's listeners and target as the runner reports them (GET /forwarder), each kernel tunnel's link, and
// the nftables table of kernel mode. A kernel tunnel or the table missing is repaired by the forwarder job; the
// runner retries a relay forward's listeners and resolution itself, so those failures are only reported.
import { apiGet } from '../core/api-client.ts'
import type { Config } from '../core/config.ts'
import { liveRunner } from '../core/runner-state.ts'
import { requestRun } from '../core/trigger.ts'
import { configuredForwards } from '../forwarder/config.ts'
import { ForwarderConfigError, kernelTunnels } from '../forwarder/kernel-apply.ts'
import { FWD_NFT_TABLE } from '../forwarder/kernel-plan.ts'
import type { ForwardStatus } from '../forwarder/supervisor.ts'
import { getLink } from '../net/ip.ts'
import { tableComment } from '../net/nft.ts'
import { waitUntil, type CheckFn } from './env.ts'
import { fail, pass, warn, type Check } from './report.ts'

export type LiveForward = Pick<ForwardStatus, 'name' | 'enabled' | 'address' | 'listening' | 'error'>

export interface ForwarderSeen {
  /** Enabled relay forwards in config. */
  relay: string[]
  /** The runner's view of them (GET /forwarder), or why it could not be had; undefined: the runner is not running. */
  live: LiveForward[] | string | undefined
  /** Kernel tunnels config asks for, and their link. */
  tunnels: { names: string[]; iface: string; link: 'up' | 'down' | 'missing' }[]
  /** Whether the kernel-mode nftables table exists (asked only when there are kernel tunnels). */
  table?: boolean
}

export const FIX = 'run the forwarder job'

export function checkForwarder(seen: ForwarderSeen): Check {
  const total = seen.relay.length + seen.tunnels.length
  if (total === 0) return pass('forwarder', 'no forwards or forwarder peers configured')
  const failures: string[] = []
  const warnings: string[] = []
  if (seen.relay.length > 0) {
    if (seen.live === undefined) failures.push(`relay forwards ${seen.relay.join(', ')} not served: the runner is not running`)
    else if (typeof seen.live === 'string') warnings.push(`relay forwards unknown: ${seen.live}`)
    else {
      for (const name of seen.relay) {
        const f = seen.live.find((x) => x.name === name)
        if (!f) failures.push(`forwards.${name}: not served by the runner (restart it, or send SIGHUP, after changing config)`)
        else if (f.error) failures.push(f.error)
        else if (!f.address) failures.push(`forwards.${name}: target not resolved yet`)
        else if (!f.listening) failures.push(`forwards.${name}: not listening`)
      }
    }
  }
  const kernelBroken = seen.tunnels.filter((t) => t.link !== 'up')
  for (const t of kernelBroken) failures.push(`${t.names.join(', ')}: tunnel ${t.iface} ${t.link === 'missing' ? 'missing' : 'down'}`)
  if (seen.tunnels.length > 0 && seen.table === false) failures.push(`nftables table inet ${FWD_NFT_TABLE} missing: no DNAT, firewall or MSS clamp for kernel forwarding`)
  const fixable = kernelBroken.length > 0 || (seen.tunnels.length > 0 && seen.table === false)
  const ok = total - failures.length
  const reason = [`${seen.relay.length} relay forwards, ${seen.tunnels.length} kernel tunnels`, ...failures, ...warnings].join('; ')
  if (failures.length > 0) return fail('forwarder', reason, fixable ? FIX : undefined)
  if (warnings.length > 0) return warn('forwarder', reason)
  return pass('forwarder', `${reason}; ${ok} working`)
}

async function runnerForwards(config: Config): Promise<LiveForward[] | string> {
  const r = await apiGet(config, '/forwarder')
  if (typeof r === 'string') return `GET /forwarder failed (${r})`
  const list = (r.body as { forwards?: unknown } | undefined)?.forwards
  return r.status === 200 && Array.isArray(list) ? (list as LiveForward[]) : `GET /forwarder: HTTP ${r.status}`
}

const REPAIR_WAIT_MS = 20_000

export const forwarder: CheckFn = async (env) => {
  const { config, sh } = env.ctx
  let tunnels
  try {
    tunnels = kernelTunnels(config)
  } catch (err) {
    if (err instanceof ForwarderConfigError) return { check: fail('forwarder', err.message) }
    throw err
  }
  const relay = configuredForwards(config).filter((f) => f.enabled && f.mode === 'relay').map((f) => f.name)
  const seenTunnels = await Promise.all(tunnels.map(async (t) => {
    const link = await getLink(sh, t.iface)
    return { names: t.names, iface: t.iface, link: !link ? 'missing' as const : link.up ? 'up' as const : 'down' as const }
  }))
  const table = tunnels.length > 0 ? (await tableComment(sh, FWD_NFT_TABLE)) !== undefined : undefined
  const live = relay.length > 0 && liveRunner(config.dataDir) ? await runnerForwards(config) : undefined
  const check = checkForwarder({ relay, live, tunnels: seenTunnels, table })
  if (check.fix !== FIX) return { check }
  return {
    check,
    // Through the spool: the runner runs the job soon, or when it starts.
    async apply() {
      await requestRun(config, 'forwarder', 'diagnose', 'fix')
      if (!liveRunner(config.dataDir)) return
      await waitUntil(REPAIR_WAIT_MS, async () => (await Promise.all(tunnels.map((t) => getLink(sh, t.iface)))).every((l) => l?.up) && (await tableComment(sh, FWD_NFT_TABLE)) !== undefined)
    },
  }
}
