// What every check gets (the job context, the platform, the store and links read once) and the helpers
import { setTimeout as sleep } from 'node:timers/promises'
import type { JobContext } from '../core/job.ts'
import type { Platform } from '../core/platform.ts'
import { readStoreView, type StoreView } from '../core/store.ts'
import { listLinks, type LinkInfo } from '../net/ip.ts'
import { warn, type Check } from './report.ts'

// the checks share: polling with a bound, starting a service, re-acquiring devices.
export interface DiagEnv {
  ctx: JobContext
  platform: Platform
  store(): Promise<StoreView>
  links(): Promise<LinkInfo[]>
  /** Runs acquire-leases in this process (diagnose imports the job; lib/ does not). */
  acquire(): Promise<void>
  progress(message: string): void
}

export interface Probe {
  check: Check
  apply?: () => Promise<void>
}

export type CheckFn = (env: DiagEnv) => Promise<Probe>

const WAIT_STEP_MS = 250

function once<T>(fn: () => Promise<T>): () => Promise<T> {
  let p: Promise<T> | undefined
  return () => (p ??= fn())
}

/** Polls `probe` until true or `ms` pass. */
export async function waitUntil(ms: number, probe: () => Promise<boolean> | boolean): Promise<boolean> {
  for (let waited = 0; waited <= ms; waited += WAIT_STEP_MS) {
    if (await probe()) return true
    await sleep(WAIT_STEP_MS)
  }
  return false
}

export function createEnv(ctx: JobContext, platform: Platform, acquire: () => Promise<void>): DiagEnv {
  return {
    ctx,
    platform,
    store: once(() => readStoreView(ctx.config.dataDir)),
    links: once(() => listLinks(ctx.sh)),
    acquire,
    progress: (m) => { if (ctx.interactive) process.stderr.write(`${m}\n`) },
  }
}

export async function service(env: DiagEnv, argv: string[]): Promise<void> {
  await env.ctx.sh.apply(argv[0], argv.slice(1), { timeoutMs: 60_000 })
}

export const noStore = (id: string, view: StoreView): Probe => ({ check: warn(id, `not compared: the store is unreadable (${view.error}) and no valid backup exists`) })

export async function markReacquire(env: DiagEnv, macs: string[]): Promise<void> {
  await env.ctx.store.update((d) => {
    for (const mac of macs) if (d.devices[mac]?.status === 'active') d.devices[mac].reacquire = true
  })
  env.progress(`acquiring again: ${macs.join(', ')}`)
  await env.acquire()
}
