// What the runner keeps running beside the jobs (the relay, NAT64's and the CLAT's tayga, later the tunnels'
// health) is a supervisor: a pass that makes the system match the store and the config, run one at a time,
// every few seconds, when the store file changes, and when asked. A request during a pass gives exactly one
// more pass after it (never a pile of them, never none); a pass that throws is logged and the next one runs;
// close stops the schedule, waits for the pass under way and then lets the supervisor clean up.
import type { ApiRoute } from './api.ts'
import type { Config } from './config.ts'
import type { Sh } from './exec.ts'
import type { Logger } from './log.ts'
import type { Store } from './store.ts'
import { watchStore } from './store-watch.ts'

/** What every supervisor gets from the runner. */
export interface SupervisorContext {
  store: Store
  /** The current config (the runner reloads it on SIGHUP). */
  config(): Config
  sh: Sh
  log(): Logger
}

/** What a supervisor's setup hands back: its pass, and what it adds to the runner. */
export interface SupervisorParts {
  pass(): Promise<void>
  /** After the last pass, when the runner stops: stop what the passes started, if it should not outlive us. */
  close?(): Promise<void>
  /** Its API routes (GET /relay, GET /nat64, ...). */
  routes?: ApiRoute[]
  /**
   * Prometheus text exposition lines, each family with its HELP and TYPE, appended to GET /metrics ('' for none);
   * lib/core/prometheus.ts writes them.
   */
  metrics?(): string | Promise<string>
  /** What it adds to GET /health under its name; undefined when it has nothing to report now. */
  health?(): Record<string, unknown> | undefined
}

export interface SupervisorDefinition {
  name: string
  /** A pass this often, besides those on request and on store change. */
  everyMs: number
  /** Also a pass when the store file is replaced. */
  followStore?: boolean
  setup(ctx: SupervisorContext): SupervisorParts
}

export interface Supervisor {
  name: string
  /** Resolves when a pass that started after this call has finished. */
  request(): Promise<void>
  routes: ApiRoute[]
  metrics?(): string | Promise<string>
  health?(): Record<string, unknown> | undefined
  close(): Promise<void>
}

export function defineSupervisor(def: SupervisorDefinition): SupervisorDefinition {
  return def
}

export function startSupervisor(def: SupervisorDefinition, ctx: SupervisorContext): Supervisor {
  const parts = def.setup(ctx)
  let current: Promise<void> | undefined
  let next: Promise<void> | undefined
  let closed = false

  const run = (): Promise<void> => {
    const pass = parts.pass()
      .catch((err: unknown) => ctx.log().error(`${def.name}: ${err instanceof Error ? err.message : String(err)}`))
      .finally(() => { current = undefined })
    current = pass
    return pass
  }

  function request(): Promise<void> {
    if (closed) return Promise.resolve()
    if (!current) return run()
    next ??= current.then(() => {
      next = undefined
      return closed ? undefined : run()
    })
    return next
  }

  const timer = setInterval(() => void request(), def.everyMs)
  timer.unref()
  const unwatch = def.followStore ? watchStore(ctx.store.file, () => void request()) : undefined
  void request()

  return {
    name: def.name,
    request,
    routes: parts.routes ?? [],
    metrics: parts.metrics,
    health: parts.health,
    async close() {
      if (closed) return
      closed = true
      clearInterval(timer)
      unwatch?.()
      await next
      await current
      await parts.close?.()
    },
  }
}
