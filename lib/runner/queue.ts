// A job never overlaps itself: a request while it runs becomes ONE follow-up run that collects the payloads
// and triggers that arrived meanwhile. Different jobs run side by side. What waits for a job is bounded.
import { createHash } from 'node:crypto'
import type { HookEvent } from '../core/event.ts'

/** One event on its way to a job; `file` is its spool file, removed once a run has handled it. */
export interface Item { event: HookEvent; file?: string; key?: string }

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
  /** Events waiting in follow-up runs, across jobs. */
  pending(): number
  /** Stops starting runs; returns the follow-ups that will not run now. */
  close(): Map<string, Batch>
  /** Resolves when no run is in progress. */
  idle(): Promise<void>
}

/**
 * Events waiting for one job, in a burst or in its follow-up run. Events are hints (a job reconciles from the
 * system and the store, not from its events), so past this the oldest are dropped, and an event identical
 * to one already waiting is dropped at once: a flood cannot grow the runner's memory.
 */
export const MAX_PENDING = 512

/** What makes two events the same (not their time), hashed once per event so comparing stays cheap. */
function keyOf(item: Item): string {
  const e = item.event
  return (item.key ??= createHash('sha1').update(JSON.stringify([e.job, e.source, e.event, e.args, e.env])).digest('base64'))
}

/** Adds `item` to `items` in place within `max`; returns the items dropped (to be released). */
export function addBounded(items: Item[], item: Item, max = MAX_PENDING): Item[] {
  const key = keyOf(item)
  if (items.some((i) => keyOf(i) === key)) return [item]
  items.push(item)
  return items.length > max ? items.splice(0, items.length - max) : []
}

export function mergeBatch(into: Batch, from: Batch, add = addBounded): Item[] {
  const dropped = from.items.flatMap((item) => add(into.items, item))
  for (const t of from.triggers) if (!into.triggers.includes(t)) into.triggers.push(t)
  return dropped
}

export function createQueue(run: (job: string, batch: Batch) => Promise<void>, onDrop: (job: string, dropped: Item[]) => void): JobQueue {
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
        if (!follow) next.set(job, { items: [...batch.items], triggers: [...batch.triggers] })
        else {
          const dropped = mergeBatch(follow, batch)
          if (dropped.length > 0) onDrop(job, dropped)
        }
        return 'queued'
      }
      start(job, { items: [...batch.items], triggers: [...batch.triggers] })
      return 'started'
    },
    running: (job) => active.has(job),
    queued: (job) => next.has(job),
    pending: () => [...next.values()].reduce((n, b) => n + b.items.length, 0),
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
