// A job never overlaps itself: a request while it runs becomes ONE follow-up run that collects every
// payload and trigger that arrived meanwhile. Different jobs run side by side.
import type { HookEvent } from '../core/event.ts'

/** One event on its way to a job; `file` is its spool file, removed once a run has handled it. */
export interface Item { event: HookEvent; file?: string }

export interface Batch {
  items: Item[]
  /** cron, event, start, api; a follow-up run may have several. */
  triggers: string[]
}

export interface JobQueue {
  /** 'closed' once close() was called: the caller keeps the batch (main.ts spools it). */
  request(job: string, batch: Batch): 'started' | 'queued' | 'closed'
  running(job: string): boolean
  queued(job: string): boolean
  /** Stops starting runs; returns the follow-ups that will not run now. */
  close(): Map<string, Batch>
  /** Resolves when no run is in progress. */
  idle(): Promise<void>
}

export function mergeBatch(into: Batch, from: Batch): Batch {
  into.items.push(...from.items)
  for (const t of from.triggers) if (!into.triggers.includes(t)) into.triggers.push(t)
  return into
}

export function createQueue(run: (job: string, batch: Batch) => Promise<void>): JobQueue {
  const active = new Map<string, Promise<void>>()
  const next = new Map<string, Batch>()
  let closed = false
  let waiters: (() => void)[] = []

  function start(job: string, batch: Batch): void {
    const p = run(job, batch)
      .catch(() => { /* run() records its own failures */ })
      .finally(() => {
        active.delete(job)
        const follow = next.get(job)
        if (follow && !closed) {
          next.delete(job)
          start(job, follow)
        } else if (active.size === 0) {
          waiters.forEach((w) => w())
          waiters = []
        }
      })
    active.set(job, p)
  }

  return {
    request(job, batch) {
      if (closed) return 'closed'
      if (active.has(job)) {
        const follow = next.get(job)
        if (follow) mergeBatch(follow, batch)
        else next.set(job, { items: [...batch.items], triggers: [...batch.triggers] })
        return 'queued'
      }
      start(job, { items: [...batch.items], triggers: [...batch.triggers] })
      return 'started'
    },
    running: (job) => active.has(job),
    queued: (job) => next.has(job),
    close() {
      closed = true
      const left = new Map(next)
      next.clear()
      return left
    },
    idle() {
      if (active.size === 0) return Promise.resolve()
      return new Promise((resolve) => waiters.push(resolve))
    },
  }
}
