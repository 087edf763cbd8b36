// The relay inside the runner: one process for every IPv6-to-IPv4 listener. Its rules are a pure function of
// the store (lib/relay-plan.ts); it reconciles when the store file is replaced, and every few seconds so
// that a listener whose address was not configured yet (EADDRNOTAVAIL) is retried.
import type { ApiRoute } from '../core/api.ts'
import type { Config } from '../core/config.ts'
import type { Sh } from '../core/exec.ts'
import type { Logger } from '../core/log.ts'
import { getLink } from '../net/ip.ts'
import { relayRules } from './relay-plan.ts'
import { createRelay, ruleKey, type ApplyResult, type RelayRule, type RelayStats } from './relay.ts'
import type { Store } from '../core/store.ts'
import { watchStore } from '../core/store-watch.ts'

const RETRY_MS = 5000

export interface Exposure {
  reconcile(): Promise<ApplyResult>
  state(): { rules: RelayRule[]; failed: { rule: RelayRule; error: string }[]; stats: RelayStats }
  close(): Promise<void>
}

export function startExposure(o: { store: Store; config: () => Config; sh: Sh; log: () => Logger }): Exposure {
  const relay = createRelay({ log: (level, msg, fields) => o.log()[level](`relay: ${msg}`, fields ?? {}) })
  let failed: ApplyResult['failed'] = []
  let reported = new Set<string>()
  let busy: Promise<ApplyResult> | undefined
  let again = false

  async function once(): Promise<ApplyResult> {
    const config = o.config()
    const wan = await getLink(o.sh, config.wanIf)
    const wan6 = (wan?.addresses ?? []).filter((a) => a.family === 6 && a.scope === 'global').map((a) => a.address)
    const result = await relay.apply(relayRules(await o.store.read(), config, wan6))
    failed = result.failed
    // Say each failing listener once, not every retry.
    const now = new Set(failed.map((f) => ruleKey(f.rule)))
    for (const f of failed) if (!reported.has(ruleKey(f.rule))) o.log().warn(`relay: cannot listen on [${f.rule.listen.host}]:${f.rule.listen.port}: ${f.error}`)
    reported = now
    if (result.added + result.removed > 0) o.log().info(`relay: ${result.added} listeners added, ${result.removed} removed, ${relay.list().length} open`)
    return result
  }

  async function reconcile(): Promise<ApplyResult> {
    if (busy) {
      again = true
      return busy
    }
    busy = once().finally(() => { busy = undefined })
    const result = await busy
    if (again) {
      again = false
      return reconcile()
    }
    return result
  }

  const kick = () => void reconcile().catch((err) => o.log().error(`relay: ${(err as Error).message}`))
  const unwatch = watchStore(o.store.file, kick)
  const periodic = setInterval(kick, RETRY_MS)
  periodic.unref()
  kick()

  return {
    reconcile,
    state: () => ({ rules: relay.list(), failed, stats: relay.stats() }),
    async close() {
      unwatch()
      clearInterval(periodic)
      await relay.close()
    },
  }
}

/** GET /relay: the listeners open now, those that failed and why, and traffic counters. */
export function exposureRoutes(exposure: Exposure): ApiRoute[] {
  return [{ method: 'GET', path: '/relay', handler: () => exposure.state() }]
}
