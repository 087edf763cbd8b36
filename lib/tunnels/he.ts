// The Hurricane Electric endpoint updater's rules (jobs/he-update.ts does the I/O): which answers the broker
// gives, when to send, and what to remember. Pure: no clock, no files, no network.
import { createHash } from 'node:crypto'
import type { HeUpdate } from '../core/schema.ts'
import { parseIpv4 } from '../addr/ipv4.ts'

export const HE_CODES = ['good', 'nochg', 'badauth', '!donator', 'notfqdn', 'nohost', 'abuse', '911', 'unknown'] as const
export type HeCode = (typeof HE_CODES)[number]

/** Answers that no retry can fix: the tunnel's HE settings (or the account) must change first. */
export const FATAL_CODES: readonly HeCode[] = ['badauth', '!donator', 'notfqdn', 'nohost']

/** How long nothing is sent after `abuse`: HE blocks clients that keep updating, and unblocks after hours. */
export const ABUSE_BACKOFF_MS = 6 * 3600_000

export interface HeAnswer {
  code: HeCode
  /** The address the broker names in `good <ip>` / `nochg <ip>`. */
  address?: string
  /** The answer's first line, printable ASCII only and at most 64 characters: safe to log and show. */
  text: string
}

/** A broker's answer is untrusted text: keep what is printable, bounded. */
export function printable(text: string, max = 64): string {
  return text.replace(/[^\x20-\x7e]/g, '?').slice(0, max)
}

export function parseAnswer(body: string): HeAnswer {
  const line = body.split(/\r?\n/, 1)[0].trim()
  const text = printable(line)
  const [word, arg, extra] = line.split(/\s+/)
  if ((word === 'good' || word === 'nochg') && extra === undefined) {
    if (arg === undefined) return { code: word, text }
    if (parseIpv4(arg) !== undefined) return { code: word, address: arg, text }
    return { code: 'unknown', text }
  }
  const known = HE_CODES.find((c) => c === word && c !== 'good' && c !== 'nochg' && c !== 'unknown')
  return { code: known && arg === undefined ? known : 'unknown', text }
}

export interface HeSettings {
  tunnelId: string
  username: string
  keyFile: string
  url: string
}

/** What a fatal answer is tied to: the HE settings (never the key itself), as a short hash. */
export function settingsFingerprint(s: HeSettings): string {
  return createHash('sha256').update(JSON.stringify([s.tunnelId, s.username, s.keyFile, s.url])).digest('hex').slice(0, 16)
}

export type Decision =
  | { send: true; reason: 'first update' | 'address changed' | 'settings changed' }
  | { send: false; reason: 'unchanged' | 'stopped' | 'backing off'; until?: string; answer?: string }

/**
 * Whether to send now. `address` is the WAN IPv4 we see; the record's address is the WAN IPv4 the broker
 * last accepted (answered good or nochg) for this tunnel.
 */
export function shouldSend(record: HeUpdate | undefined, o: { address: string; settings: string; now: Date }): Decision {
  if (!record) return { send: true, reason: 'first update' }
  if (record.stopped) {
    if (record.stopped.settings === o.settings) return { send: false, reason: 'stopped', answer: record.stopped.answer }
    return { send: true, reason: 'settings changed' }
  }
  if (record.backoffUntil && Date.parse(record.backoffUntil) > o.now.getTime()) return { send: false, reason: 'backing off', until: record.backoffUntil }
  if (record.settings !== undefined && record.settings !== o.settings) return { send: true, reason: 'settings changed' }
  if (record.address === o.address) return { send: false, reason: 'unchanged' }
  return { send: true, reason: record.address ? 'address changed' : 'first update' }
}

/** What a sent update ended in: the broker's answer, or no answer (a network error, a timeout). */
export type Outcome = { answer: HeAnswer } | { error: true }

/**
 * The record after an update: good/nochg remember the address and the settings and clear any stop or back-off; a fatal
 * answer stops the tunnel for these settings; abuse backs off; 911, unknown answers and errors change only
 * answer and at, so the next run tries again.
 */
export function nextRecord(prev: HeUpdate | undefined, outcome: Outcome, o: { address: string; settings: string; now: Date }): HeUpdate {
  const at = o.now.toISOString()
  if ('error' in outcome) return { ...prev, answer: 'error', at }
  const { code, text } = outcome.answer
  if (code === 'good' || code === 'nochg') return { address: o.address, settings: o.settings, answer: text, at }
  const { stopped: _stopped, backoffUntil: _backoff, ...rest } = prev ?? {}
  if (FATAL_CODES.includes(code)) return { ...rest, answer: code, at, stopped: { answer: code, settings: o.settings } }
  if (code === 'abuse') return { ...rest, answer: code, at, backoffUntil: new Date(o.now.getTime() + ABUSE_BACKOFF_MS).toISOString() }
  return { ...prev, answer: code, at }
}

/** The update URL for a tunnel: hostname=<tunnel id>, and myip only when the broker should not use our source address. */
export function updateUrl(base: string, tunnelId: string, myip?: string): URL {
  const url = new URL(base)
  // Credentials go in the Authorization header only; fetch refuses a URL that carries them anyway.
  url.username = ''
  url.password = ''
  url.searchParams.delete('hostname')
  url.searchParams.delete('myip')
  url.searchParams.set('hostname', tunnelId)
  if (myip) url.searchParams.set('myip', myip)
  return url
}

/** HTTP Basic credentials. The user name cannot hold ':' (the config allows none); the key may. */
export function basicAuth(username: string, key: string): string {
  return `Basic ${Buffer.from(`${username}:${key}`, 'utf8').toString('base64')}`
}

/** A key file's text as the key: its first line, trimmed; undefined when empty or not printable ASCII. */
export function keyFromText(text: string): string | undefined {
  const key = text.split(/\r?\n/, 1)[0].trim()
  return key !== '' && /^[\x21-\x7e]+$/.test(key) ? key : undefined
}
