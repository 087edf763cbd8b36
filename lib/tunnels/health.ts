// A tunnel's health from its checks (each check: echo probes to every target through the tunnel only).
//
// States follow OpenWrt's mwan3: a check fails at failure loss or latency and is good at or below the
// recovery values (in between: neutral). An up tunnel has `down` credits: a failed check takes one, any
// other gives one back, and at none it is down; a down tunnel comes up after `up` good checks more than
// failed ones (neutral ones count neither way). So a steady 20 % loss (mostly checks that do not fail)
// does not take a tunnel down, while a dead path does after `down` checks, and a path must be clearly
// good to come back. `degraded`: up, but with credits spent or the last check not good.
//
// The score is v6-gatewayd's published formula, over the window of recent checks: 100, less 50 when the
// last check had no reply, less 0/10/25/40/50 for a mean round trip under 50/100/200/500 ms/above. Two
// changes, both documented in the README: with no reply at all in the window the latency term counts as the
// worst (the reference skipped it, scoring a dead tunnel 50), and loss costs half its percentage.
export type HealthState = 'unknown' | 'up' | 'degraded' | 'down'

export interface Thresholds {
  down: number
  up: number
  failureLoss: number
  recoveryLoss: number
  failureLatency: number
  recoveryLatency: number
  /** Checks kept for the score. */
  window: number
}

export interface Check {
  at: number
  sent: number
  received: number
  /** Mean round trip of the replies (ms); undefined without replies. */
  latencyMs?: number
  /** A failure that is not about probes (no link, a stale WireGuard handshake). */
  fault?: string
}

export interface Health {
  state: HealthState
  credits: number
  progress: number
  checks: Check[]
  /** When the state last changed. */
  since: number
}

export type Verdict = 'good' | 'fail' | 'neutral'

export function newHealth(now: number): Health {
  return { state: 'unknown', credits: 0, progress: 0, checks: [], since: now }
}

export function lossPct(c: Pick<Check, 'sent' | 'received'>): number {
  return c.sent === 0 ? 100 : Math.round((100 * (c.sent - c.received)) / c.sent)
}

export function verdict(c: Check, t: Thresholds): Verdict {
  if (c.fault) return 'fail'
  const loss = lossPct(c)
  const latency = c.latencyMs ?? Number.POSITIVE_INFINITY
  if (loss >= t.failureLoss || latency >= t.failureLatency) return 'fail'
  if (loss <= t.recoveryLoss && latency <= t.recoveryLatency) return 'good'
  return 'neutral'
}

export function nextHealth(h: Health, check: Check, t: Thresholds): Health {
  const v = verdict(check, t)
  const checks = [...h.checks, check].slice(-t.window)
  let { state, credits, progress } = h
  if (state === 'unknown') {
    // The first check decides: a runner that restarts does not hold a working tunnel down for `up` checks.
    state = v === 'fail' ? 'down' : 'up'
    credits = v === 'fail' ? 0 : t.down
    progress = 0
  } else if (state === 'down') {
    progress = Math.max(0, progress + (v === 'good' ? 1 : v === 'fail' ? -1 : 0))
    if (progress >= t.up) {
      state = 'up'
      credits = t.down
      progress = 0
    }
  } else {
    credits = Math.min(t.down, credits + (v === 'fail' ? -1 : 1))
    if (credits <= 0) {
      state = 'down'
      credits = 0
      progress = 0
    } else state = credits < t.down || v !== 'good' ? 'degraded' : 'up'
  }
  const changed = (state === 'down') !== (h.state === 'down') || h.state === 'unknown'
  return { state, credits, progress, checks, since: changed ? check.at : h.since }
}

export interface HealthStats {
  lossPct: number
  latencyMs?: number
  score: number
}

const LATENCY_TIERS: [number, number][] = [[50, 0], [100, 10], [200, 25], [500, 40]]

export function latencyPenalty(ms: number | undefined): number {
  if (ms === undefined) return 50
  return LATENCY_TIERS.find(([below]) => ms < below)?.[1] ?? 50
}

export function stats(h: Pick<Health, 'checks'>): HealthStats {
  const sent = h.checks.reduce((n, c) => n + c.sent, 0)
  const received = h.checks.reduce((n, c) => n + c.received, 0)
  const weighted = h.checks.filter((c) => c.latencyMs !== undefined)
  const latencyMs = received > 0 ? weighted.reduce((n, c) => n + c.latencyMs! * c.received, 0) / received : undefined
  const loss = lossPct({ sent, received })
  const last = h.checks.at(-1)
  const unreachable = !last || last.received === 0 || !!last.fault
  const score = 100 - (unreachable ? 50 : 0) - latencyPenalty(latencyMs) - Math.round(loss / 2)
  return { lossPct: loss, latencyMs: latencyMs === undefined ? undefined : Math.round(latencyMs * 10) / 10, score: Math.max(0, Math.min(100, score)) }
}

/** v6-gatewayd's priority bonus when choosing among tunnels: priority 0 +25, 1 +20, ..., 5 and above +0. */
export function priorityBonus(priority: number): number {
  return Math.max(0, (5 - priority) * 5)
}
