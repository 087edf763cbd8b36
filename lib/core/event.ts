// Hook events as they travel from a hook to the runner (the spool, POST /events), and what a job receives of
// them.
import { z } from 'zod'
import type { Payload } from './job.ts'

export const JOB_NAME = /^[a-z0-9][a-z0-9-]{0,63}$/

export const hookEventSchema = z.object({
  /** Names the job outright; otherwise the table in lib/runner/event-jobs.ts decides. */
  job: z.string().regex(JOB_NAME, 'not a job name').optional(),
  source: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'expected 1-64 of A-Z a-z 0-9 _ . -'),
  event: z.string().regex(/^[A-Za-z0-9_.:-]{1,64}$/, 'expected 1-64 of A-Z a-z 0-9 _ . : -'),
  args: z.array(z.string().max(1024)).max(64).default([]),
  env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/, 'not an environment variable name'), z.string().max(1024))
    .refine((env) => Object.keys(env).length <= 256, 'more than 256 variables')
    .default({}),
  /** When it happened (ISO); the runner fills it in when the sender did not. */
  time: z.iso.datetime().optional(),
})
export type HookEvent = z.output<typeof hookEventSchema>

export class EventError extends Error {}

/**
 * An event is a few arguments and variables (a lease, an interface; DHCP options are at most 255 bytes):
 * anything larger is not one of ours. Up to 512 of them wait per job (lib/runner/queue.ts).
 */
export const MAX_EVENT_BYTES = 4 * 1024

export function parseEvent(input: unknown): HookEvent {
  if (JSON.stringify(input ?? null).length > MAX_EVENT_BYTES) throw new EventError(`invalid event: larger than ${MAX_EVENT_BYTES} bytes`)
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
