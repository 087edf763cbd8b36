// Where a relay forward's target name points: resolved by us (never the system's getaddrinfo, which caches and
// cannot say a TTL), AAAA first, A only when the forward allows it and the name has no AAAA. Re-resolved on a
// schedule (the interval, or the answer's TTL when shorter, at least MIN_TTL_S) and soon after a connection to
// it failed (at most every ON_DEMAND_GAP_MS). A failed, timed-out or empty answer keeps the last good address:
// forwarding goes on, the failure is counted and said once, and its recovery once. DNS answers are untrusted:
// only the first MAX_ANSWERS are looked at, each must be an address of the family asked, and the address in use
// is kept while the answer still holds it (round-robin records do not move connections around).
import { Resolver } from 'node:dns/promises'
import net from 'node:net'
import { formatIpv6, parseIpv6 } from '../addr/ipv6.ts'

export interface Answer { address: string; ttl: number }

/** Asks for one record type of name; throws with the resolver's code (ENODATA: the name has none of that type). */
export type Lookup = (name: string, family: 4 | 6) => Promise<Answer[]>

export interface Resolution { address: string; family: 4 | 6; ttl: number }

export const MIN_TTL_S = 5
export const MAX_ANSWERS = 64
export const ON_DEMAND_GAP_MS = 5_000
/** A target never resolved yet is asked again this soon (it may be a DNS server that starts after us). */
export const UNRESOLVED_RETRY_MS = 5_000
const QUERY_TIMEOUT_MS = 2_000
const QUERY_TRIES = 2

/** A lookup through node:dns's Resolver (c-ares) at `servers` (IP, IP:port or [IPv6]:port), or the system's servers. */
export function dnsLookup(servers: string[]): Lookup {
  const resolver = new Resolver({ timeout: QUERY_TIMEOUT_MS, tries: QUERY_TRIES })
  if (servers.length > 0) resolver.setServers(servers)
  return async (name, family) => (family === 6 ? resolver.resolve6(name, { ttl: true }) : resolver.resolve4(name, { ttl: true }))
}

const canonical = (address: string, family: 4 | 6): string | undefined => {
  if (family === 4) return net.isIPv4(address) ? address : undefined
  const bytes = net.isIPv6(address) ? parseIpv6(address) : undefined
  return bytes ? formatIpv6(bytes) : undefined
}

/** The valid addresses of an answer of `family`, canonical, among its first MAX_ANSWERS records. */
export function validAnswers(answers: unknown, family: 4 | 6): Answer[] {
  if (!Array.isArray(answers)) return []
  const valid: Answer[] = []
  for (const a of answers.slice(0, MAX_ANSWERS) as { address?: unknown; ttl?: unknown }[]) {
    const address = typeof a?.address === 'string' ? canonical(a.address, family) : undefined
    if (!address) continue
    const ttl = typeof a.ttl === 'number' && Number.isFinite(a.ttl) && a.ttl >= 0 ? a.ttl : Infinity
    valid.push({ address, ttl })
  }
  return valid
}

/** The address to use from an answer: `current` while the answer holds it, else the lowest; undefined when none is valid. */
export function pickAddress(answers: unknown, family: 4 | 6, current?: string): Answer | undefined {
  const valid = validAnswers(answers, family)
  if (valid.length === 0) return undefined
  return valid.find((a) => a.address === current) ?? valid.sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0))[0]
}

/** Milliseconds until the next resolution: the interval, or the TTL when shorter, never under MIN_TTL_S. */
export function nextResolveMs(intervalS: number, ttlS: number): number {
  return Math.max(MIN_TTL_S, Math.min(intervalS, ttlS)) * 1000
}

const codeOf = (err: unknown) => (err as { code?: unknown })?.code

/** One resolution of `target`: an IPv6 literal as it is; else AAAA, then A when allowed and the name has no AAAA. */
export async function resolveTarget(target: string, ipv4Fallback: boolean, lookup: Lookup, current?: string): Promise<Resolution> {
  const literal = canonical(target, 6)
  if (literal) return { address: literal, family: 6, ttl: Infinity }
  const ask = async (family: 4 | 6): Promise<Resolution | undefined> => {
    let answers: Answer[]
    try {
      answers = await lookup(target, family)
    } catch (err) {
      if (codeOf(err) === 'ENODATA') return undefined
      throw err
    }
    const picked = pickAddress(answers, family, current)
    if (!picked && Array.isArray(answers) && answers.length > 0) throw new Error(`the ${family === 6 ? 'AAAA' : 'A'} answer for ${target} holds no valid address`)
    return picked && { ...picked, family }
  }
  const six = await ask(6)
  if (six) return six
  if (!ipv4Fallback) throw new Error(`${target} has no AAAA record`)
  const four = await ask(4)
  if (four) return four
  throw new Error(`${target} has neither an AAAA nor an A record`)
}

/** What a tracker knows of its target, for GET /forwarder and the metrics. */
export interface TargetStatus {
  target: string
  address?: string
  family?: 4 | 6
  /** When the last resolution was made (successful or not), and when one last succeeded. */
  resolvedAt?: number
  goodAt?: number
  /** The error of the last resolution, while it fails. */
  error?: string
  failures: number
  changes: number
}

export interface AddressChange { target: string; old: string; new: string }

export interface TrackerOptions {
  target: string
  ipv4Fallback: boolean
  intervalS: number
  lookup: Lookup
  now?: () => number
  /** Said once when resolution starts failing, once when it recovers, and on each change. */
  log?: (level: 'info' | 'warn', msg: string) => void
  /** An address replaced by another (never on a failure; not the first resolution). */
  onChange?: (change: AddressChange) => void
}

export interface TargetTracker {
  status(): TargetStatus
  /** Whether a resolution is due now (and none is under way). */
  due(): boolean
  /** Resolves now (unless one is under way) and applies the outcome. */
  refresh(): Promise<void>
  /** A connection to the address failed: resolve again soon, at most every ON_DEMAND_GAP_MS. */
  soon(): void
}

export function createTargetTracker(opts: TrackerOptions): TargetTracker {
  const now = opts.now ?? Date.now
  const log = opts.log ?? (() => {})
  const state: TargetStatus = { target: opts.target, failures: 0, changes: 0 }
  let nextAt = 0
  let lastAttemptAt = -Infinity
  let running: Promise<void> | undefined

  async function refresh(): Promise<void> {
    if (running) return running
    lastAttemptAt = now()
    running = resolveTarget(opts.target, opts.ipv4Fallback, opts.lookup, state.address)
      .then((r) => {
        const old = state.address
        if (state.error !== undefined && old) log('info', `${opts.target} resolves again (${r.address})`)
        state.address = r.address
        state.family = r.family
        state.error = undefined
        state.resolvedAt = state.goodAt = now()
        nextAt = now() + nextResolveMs(opts.intervalS, r.ttl)
        if (old && old !== r.address) {
          state.changes++
          log('info', `${opts.target} moved from ${old} to ${r.address}`)
          opts.onChange?.({ target: opts.target, old, new: r.address })
        }
      }, (err: unknown) => {
        const error = err instanceof Error ? err.message : String(err)
        const code = codeOf(err)
        const message = typeof code === 'string' && !error.includes(code) ? `${error} (${code})` : error
        if (state.error === undefined) {
          log('warn', state.address ? `cannot resolve ${opts.target}: ${message}; keeping ${state.address}` : `cannot resolve ${opts.target}: ${message}`)
        }
        state.error = message
        state.failures++
        state.resolvedAt = now()
        nextAt = now() + (state.address ? opts.intervalS * 1000 : Math.min(opts.intervalS * 1000, UNRESOLVED_RETRY_MS))
      })
      .finally(() => { running = undefined })
    return running
  }

  return {
    status: () => ({ ...state }),
    due: () => !running && now() >= nextAt,
    refresh,
    soon() {
      nextAt = Math.min(nextAt, Math.max(now(), lastAttemptAt + ON_DEMAND_GAP_MS))
    },
  }
}
