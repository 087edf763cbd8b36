// Hook events as they reach the runner (from the spool or POST /events), what a job receives of them, and
// the coalescing of bursts: events for one job that arrive close together become one run.
import { z } from 'zod'
import type { Payload } from '../core/job.ts'

export const JOB_NAME = /^[a-z0-9][a-z0-9-]{0,63}$/

export const hookEventSchema = z.object({
  /** Names the job outright; otherwise the routing table in routes.ts decides. */
  job: z.string().regex(JOB_NAME, 'not a job name').optional(),
  source: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'expected 1-64 of A-Z a-z 0-9 _ . -'),
  event: z.string().regex(/^[A-Za-z0-9_.:-]{1,64}$/, 'expected 1-64 of A-Z a-z 0-9 _ . : -'),
  args: z.array(z.string().max(4096)).max(64).default([]),
  env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/, 'not an environment variable name'), z.string().max(4096))
    .refine((env) => Object.keys(env).length <= 256, 'more than 256 variables')
    .default({}),
  /** When it happened (ISO); the runner fills it in when the sender did not. */
  time: z.iso.datetime().optional(),
})
export type HookEvent = z.output<typeof hookEventSchema>

export class EventError extends Error {}

export function parseEvent(input: unknown): HookEvent {
  const result = hookEventSchema.safeParse(input)
  if (result.success) return result.data
  const issue = result.error.issues[0]
  throw new EventError(`invalid event: ${issue.path.join('.') || '(root)'}: ${issue.message}`)
}

/**
 * What a job sees of one event: the captured environment, then `argN` for the positional arguments, then
 * `source`, `event` and `time` (these win over an environment variable of the same name).
 * `dualgate-event dnsmasq add aa:bb:.. 192.168.1.20 laptop` → { DNSMASQ_INTERFACE, arg1: mac, arg2: ip, arg3: name, source, event, time }.
 */
export function toPayload(e: HookEvent): Payload {
  const payload: Payload = { ...e.env }
  e.args.forEach((arg, i) => { payload[`arg${i + 1}`] = arg })
  payload.source = e.source
  payload.event = e.event
  payload.time = e.time ?? new Date().toISOString()
  return payload
}

export interface Coalescer<T> {
  add(key: string, item: T): void
  /** Items waiting, per key. */
  pending(): Map<string, T[]>
  /** Cancels the timers and hands back what was waiting (nothing is flushed). */
  takeAll(): Map<string, T[]>
}

export interface CoalesceOptions<T> {
  /** Quiet time (ms) that ends a burst. Read at every event, so a reloaded config applies at once. */
  window: () => number
  /** Longest a first event waits (ms), however long the burst goes on. */
  maxWait: () => number
  onFlush: (key: string, items: T[]) => void
}

interface Burst<T> { items: T[]; first: number; last: number; timer: ReturnType<typeof setTimeout> }

/** Debounce with a maximum wait, per key. One timer per burst, re-armed only when it fires early. */
export function createCoalescer<T>(o: CoalesceOptions<T>): Coalescer<T> {
  const bursts = new Map<string, Burst<T>>()

  function due(b: Burst<T>): number {
    return Math.min(b.last + o.window(), b.first + Math.max(o.maxWait(), o.window()))
  }

  function arm(key: string, b: Burst<T>): void {
    b.timer = setTimeout(() => {
      const now = Date.now()
      if (now < due(b)) return arm(key, b)
      bursts.delete(key)
      o.onFlush(key, b.items)
    }, Math.max(0, due(b) - Date.now()))
  }

  return {
    add(key, item) {
      const now = Date.now()
      const b = bursts.get(key)
      if (b) {
        b.items.push(item)
        b.last = now
        return
      }
      const burst: Burst<T> = { items: [item], first: now, last: now, timer: undefined as unknown as Burst<T>['timer'] }
      bursts.set(key, burst)
      arm(key, burst)
    },
    pending() {
      return new Map([...bursts].map(([k, b]) => [k, [...b.items]]))
    },
    takeAll() {
      const out = new Map<string, T[]>()
      for (const [k, b] of bursts) {
        clearTimeout(b.timer)
        out.set(k, b.items)
      }
      bursts.clear()
      return out
    },
  }
}
