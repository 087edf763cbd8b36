// Which tunnel carries the default IPv6 route. Pure: the supervisor feeds it health and applies the answer.
//
// The primary stays while it is up and scores at least failoverScore. When it goes down or below, the
// best other tunnel that is up and scores at least healthyScore takes over at once (best: score plus
// v6-gatewayd's priority bonus). A tunnel of a more preferred priority (a lower number) than the
// primary's takes over only after it has been eligible for holdMs without a break, so a path that
// recovers for a moment does not pull traffic back and forth.
import { priorityBonus, type HealthState } from './health.ts'

export interface Candidate {
  name: string
  priority: number
  state: HealthState
  score: number
  /** Enabled in config, present, and not set down by a person. */
  usable: boolean
  /** Since when it has been eligible without a break (undefined: it is not). */
  eligibleSince?: number
}

export interface FailoverOptions {
  failoverScore: number
  healthyScore: number
  holdMs: number
}

export interface Decision {
  primary?: string
  /** Why it changed; undefined when it did not. */
  reason?: string
}

export function isEligible(c: Pick<Candidate, 'usable' | 'state' | 'score'>, o: Pick<FailoverOptions, 'healthyScore'>): boolean {
  return c.usable && (c.state === 'up' || c.state === 'degraded') && c.score >= o.healthyScore
}

const rank = (c: Candidate) => c.score + priorityBonus(c.priority)

function best(cands: Candidate[]): Candidate | undefined {
  return [...cands].sort((a, b) => rank(b) - rank(a) || a.priority - b.priority || a.name.localeCompare(b.name))[0]
}

export function choosePrimary(cands: Candidate[], current: string | undefined, now: number, o: FailoverOptions): Decision {
  const eligible = cands.filter((c) => c.eligibleSince !== undefined && isEligible(c, o))
  const primary = cands.find((c) => c.name === current)
  if (!primary || !primary.usable) {
    const next = best(eligible)
    if (!next) return { primary: undefined, reason: primary ? `${primary.name} is no longer usable and no tunnel is healthy` : undefined }
    return { primary: next.name, reason: primary ? `${primary.name} is no longer usable` : `${next.name} is healthy (score ${next.score})` }
  }
  const failing = primary.state === 'down' ? 'down' : primary.score < o.failoverScore ? `scoring ${primary.score} (< ${o.failoverScore})` : undefined
  if (failing) {
    const next = best(eligible.filter((c) => c.name !== primary.name))
    if (next) return { primary: next.name, reason: `${primary.name} is ${failing}; ${next.name} scores ${next.score}` }
    return { primary: primary.name }
  }
  const preferred = best(eligible.filter((c) => c.priority < primary.priority && now - c.eligibleSince! >= o.holdMs))
  if (preferred) return { primary: preferred.name, reason: `${preferred.name} (priority ${preferred.priority}) has been healthy for ${Math.round((now - preferred.eligibleSince!) / 1000)} s` }
  return { primary: primary.name }
}
