// Checks of what the runner holds: the runner itself, the API, the relay, NAT64 and the CLAT.
import { existsSync } from 'node:fs'
import { apiGet, apiHealthy, apiUrl } from '../core/api-client.ts'
import { runnerServiceCommand } from '../core/platform.ts'
import { liveRunner } from '../core/runner-state.ts'
import type { Data } from '../core/schema.ts'
import { readStoreView } from '../core/store.ts'
import { requestRun } from '../core/trigger.ts'
import { CLAT_INSTANCE, clatPlan } from '../clat/plan.ts'
import { INSTANCE as NAT64_INSTANCE, nat64Status } from '../nat64/plan.ts'
import { getLink } from '../net/ip.ts'
import { findTayga, taygaPid } from '../net/tayga.ts'
import { relayView } from '../reach/relay-view.ts'
import { ruleKey, type RelayRule } from '../reach/relay.ts'
import { service, waitUntil, noStore, type CheckFn, type DiagEnv } from './env.ts'
import { checkClat, checkNat64, fail, pass, relayDiff, warn, type Check } from './report.ts'

async function startRunner(env: DiagEnv, action: 'start' | 'restart'): Promise<void> {
  await service(env, runnerServiceCommand(env.ctx.config, env.platform, action))
  if (env.ctx.sh.dryRun) return
  if (!(await waitUntil(20_000, async () => liveRunner(env.ctx.config.dataDir) !== undefined && (await apiHealthy(env.ctx.config))))) {
    throw new Error(`the runner did not come up within 20 s after ${action}`)
  }
}

export const runner: CheckFn = async (env) => {
  const pid = liveRunner(env.ctx.config.dataDir)
  if (pid) return { check: pass('runner', `running (pid ${pid})`) }
  const cmd = runnerServiceCommand(env.ctx.config, env.platform, 'start')
  return {
    check: fail('runner', 'the runner is not running: no schedules, hook events wait in the spool, no API, no relay', cmd.join(' ')),
    apply: () => startRunner(env, 'start'),
  }
}

export const api: CheckFn = async (env) => {
  const url = apiUrl(env.ctx.config, '/health')
  if (!liveRunner(env.ctx.config.dataDir)) return { check: warn('api', `not checked: the runner is not running (${url})`) }
  const r = await apiGet(env.ctx.config, '/health')
  if (typeof r === 'object' && r.status === 200) return { check: pass('api', `${url} answers (version ${(r.body as { version?: string })?.version ?? '?'})`) }
  const why = typeof r === 'string' ? r : `HTTP ${r.status}`
  const cmd = runnerServiceCommand(env.ctx.config, env.platform, 'restart')
  return { check: fail('api', `${url} does not answer (${why})`, cmd.join(' ')), apply: () => startRunner(env, 'restart') }
}

/**
 * The open files the relay needs at its limits: two per TCP connection, one per UDP session, and room for
 * its listeners, the API and the jobs.
 */
export function relayFilesNeeded(maxConnections: number): number {
  return 3 * maxConnections + 1024
}

const RELAY_SETTLE_MS = 5000

async function relayState(env: DiagEnv, data: Data): Promise<{ check: Check; retry: boolean }> {
  const r = await apiGet(env.ctx.config, '/relay')
  if (typeof r === 'string') return { check: warn('relay', `GET /relay failed (${r})`), retry: false }
  if (r.status === 404 || r.status === 405) return { check: warn('relay', 'this runner does not report its relay listeners (no GET /relay)'), retry: false }
  const body = r.body as { rules?: RelayRule[]; openFileLimit?: number | null }
  const have = body?.rules
  if (r.status !== 200 || !Array.isArray(have)) return { check: warn('relay', `GET /relay: HTTP ${r.status}`), retry: false }
  const limit = body.openFileLimit
  const needed = relayFilesNeeded(env.ctx.config.relayMaxConnections)
  if (typeof limit === 'number' && limit < needed) {
    return { check: warn('relay', `the runner may open only ${limit} files, and relayMaxConnections=${env.ctx.config.relayMaxConnections} needs ${needed}`, 'raise it in the service (systemd LimitNOFILE, procd limits nofile; the units dualgate installs set 65536), or lower relayMaxConnections'), retry: false }
  }
  const want = (await relayView(env.ctx.sh, env.ctx.config, data)).rules
  const { missing, extra } = relayDiff(want, have)
  if (missing.length === 0 && extra.length === 0) return { check: pass('relay', `${have.length} relay listeners match the store; open-file limit ${limit ?? 'unknown'}`), retry: false }
  const parts = [missing.length && `${missing.length} missing (${missing.slice(0, 3).join('; ')})`, extra.length && `${extra.length} not wanted (${extra.slice(0, 3).join('; ')})`].filter(Boolean)
  return { check: fail('relay', `relay listeners differ from the store: ${parts.join(', ')}`, 'ask the runner to re-apply them (refresh-proxies)'), retry: true }
}

export const relay: CheckFn = async (env) => {
  if (!liveRunner(env.ctx.config.dataDir)) return { check: warn('relay', 'not checked: the runner (which holds the relay) is not running') }
  const view = await env.store()
  if (!view.data) return noStore('relay', view)
  let state = await relayState(env, view.data)
  // The runner follows a store written a moment ago (by acquire-leases, or by a fix before this check) within
  // a pass or two: only a difference that lasts is a failure.
  if (state.retry) await waitUntil(RELAY_SETTLE_MS, async () => !(state = await relayState(env, (await readStoreView(env.ctx.config.dataDir)).data ?? view.data!)).retry)
  const { check, retry } = state
  if (!retry) return { check }
  return {
    check,
    async apply() {
      await requestRun(env.ctx.config, 'refresh-proxies', 'diagnose', 'fix')
      const data = (await readStoreView(env.ctx.config.dataDir)).data ?? view.data!
      await waitUntil(15_000, async () => (await relayState(env, data)).check.status === 'pass')
    },
  }
}

export const nat64: CheckFn = async (env) => {
  const { config } = env.ctx
  return { check: checkNat64(nat64Status(config), taygaPid(config.runDir, NAT64_INSTANCE), liveRunner(config.dataDir) !== undefined) }
}

export const clat: CheckFn = async (env) => {
  const { config, sh } = env.ctx
  const data = (await env.store()).data
  const has = { wanMac: (await getLink(sh, config.wanIf))?.mac, tayga: findTayga() !== undefined, tun: existsSync('/dev/net/tun') }
  const plan = data ? clatPlan(data, config, has) : { prefix: config.clatPrefix, idle: 'no readable store', devices: [] }
  return { check: checkClat({ enabled: config.clat, ...plan, devices: plan.devices.length }, taygaPid(config.runDir, CLAT_INSTANCE), liveRunner(config.dataDir) !== undefined) }
}
