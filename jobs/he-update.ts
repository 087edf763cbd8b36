#!/usr/bin/env node
// Tells Hurricane Electric's tunnel broker the WAN IPv4 of each 6in4 tunnel that has HE settings, only when
// it changed since the broker last accepted it; stops a tunnel on a fatal answer until its HE settings
// change, and backs off for hours on `abuse`. The tunnel's update key is read from its key file for each
// request and goes nowhere but the Authorization header. Runs on a WAN IPv4 change and on a slow schedule.
import { defineJob, runMain, type JobContext } from '../lib/core/job.ts'
import { readOwnedFile, trustedOwners } from '../lib/core/safe-file.ts'
import { isPublicIpv4 } from '../lib/addr/ipv4.ts'
import { getLink, globalIpv4 } from '../lib/net/ip.ts'
import { changeSit, getTunnelLink } from '../lib/net/tunnel.ts'
import { heTunnels, sitSettings, type HeTunnel } from '../lib/tunnels/config.ts'
import {
  basicAuth, FATAL_CODES, keyFromText, nextRecord, parseAnswer, printable, settingsFingerprint, shouldSend, updateUrl,
  type HeAnswer, type HeSettings, type Outcome,
} from '../lib/tunnels/he.ts'

const TIMEOUT_MS = 15_000
/** HE answers one short line; more than this is not an answer. */
const MAX_ANSWER_BYTES = 4096
const MAX_KEY_BYTES = 1024

export interface HeTunnelResult {
  tunnel: string
  /** sent: the broker answered; would-send: a dry run; skipped: nothing due; refused: the key file; failed: no answer. */
  action: 'sent' | 'would-send' | 'skipped' | 'refused' | 'failed'
  /** Why it was sent or skipped, what was refused, or what failed. */
  reason: string
  /** The request without credentials. */
  url?: string
  answer?: string
  /** No more updates for this tunnel until its HE settings change (a fatal answer). */
  stopped?: true
  /** The sit interface's local address: moved to the WAN address, already there, or no such interface. */
  local?: 'changed' | 'unchanged' | 'absent'
}

export interface HeUpdateResult {
  wanIpv4?: string
  /** Whether the WAN IPv4 was sent as myip (a public address), or left to the broker (behind NAT). */
  myip: boolean
  tunnels: HeTunnelResult[]
}

const heSettings = (t: HeTunnel, url: string): HeSettings => ({ ...t.he, url })

/** The update key, or why its file is refused (lib/core/safe-file.ts: root's, a regular file, private). */
export async function readKeyFile(file: string): Promise<{ key: string } | { refused: string }> {
  const read = await readOwnedFile(file, { owners: trustedOwners(), maxBytes: MAX_KEY_BYTES, secret: true })
  if ('missing' in read) return { refused: `${file} does not exist` }
  if ('refused' in read) return { refused: `${file} is ${read.refused}` }
  const key = keyFromText(read.text)
  return key ? { key } : { refused: `${file} holds no key (one line of printable characters)` }
}

/** The response's first bytes, at most `max`: a hostile or broken server cannot make us read more. */
async function readBounded(res: Response, max: number): Promise<string> {
  if (!res.body) return ''
  const reader = res.body.getReader()
  const chunks: Uint8Array[] = []
  let total = 0
  try {
    while (total < max) {
      const { done, value } = await reader.read()
      if (done) break
      chunks.push(value)
      total += value.byteLength
    }
  } finally {
    await reader.cancel().catch(() => {})
  }
  return Buffer.concat(chunks).subarray(0, max).toString('utf8')
}

export type Fetch = typeof fetch

/** One update request. Errors are described without the request's headers (so without the key). */
export async function sendUpdate(url: URL, authorization: string, fetchImpl: Fetch = fetch): Promise<{ answer: HeAnswer } | { error: string }> {
  try {
    const res = await fetchImpl(url, {
      headers: { authorization, 'user-agent': 'dualgate-he-update' },
      // A redirect would carry the credentials elsewhere: the answer is what this URL says.
      redirect: 'manual',
      signal: AbortSignal.timeout(TIMEOUT_MS),
    })
    return { answer: parseAnswer(await readBounded(res, MAX_ANSWER_BYTES)) }
  } catch (err) {
    const e = err as Error & { cause?: { code?: string; message?: string } }
    return { error: printable(e.name === 'TimeoutError' ? `no answer in ${TIMEOUT_MS / 1000} s` : [e.message, e.cause?.code ?? e.cause?.message].filter(Boolean).join(': '), 200) }
  }
}

/** With `local auto`, the sit interface's outer local address follows the WAN address (the tunnels job's rule). */
async function followWan(ctx: JobContext, t: HeTunnel, wan: string): Promise<HeTunnelResult['local']> {
  if (t.local !== 'auto') return undefined
  const link = await getTunnelLink(ctx.sh, t.iface)
  if (!link || link.kind !== 'sit') return 'absent'
  const want = sitSettings(t, wan)!
  if (link.local === want.local) return 'unchanged'
  await changeSit(ctx.sh, want)
  ctx.log.info(`${t.name}: ${t.iface} local ${link.local ?? 'any'} -> ${wan}`)
  return 'changed'
}

interface RunOptions { fetch?: Fetch; now?: () => Date }

async function updateTunnel(ctx: JobContext, t: HeTunnel, wan: string, myip: boolean, o: RunOptions): Promise<HeTunnelResult> {
  const now = o.now ?? (() => new Date())
  const he = heSettings(t, ctx.config.heUpdateUrl)
  const settings = settingsFingerprint(he)
  const record = (await ctx.store.read()).heUpdates[t.name]
  const decision = shouldSend(record, { address: wan, settings, now: now() })
  if (!decision.send) {
    const reason = decision.reason === 'stopped' ? `stopped after "${decision.answer}" until its HE settings change`
      : decision.reason === 'backing off' ? `backing off after "abuse" until ${decision.until}`
        : `the broker already has ${wan}`
    const local = decision.reason === 'unchanged' ? await followWan(ctx, t, wan) : undefined
    return { tunnel: t.name, action: 'skipped', reason, local, ...(decision.reason === 'stopped' ? { stopped: true as const } : {}) }
  }
  const url = updateUrl(he.url, he.tunnelId, myip ? wan : undefined)
  const read = await readKeyFile(he.keyFile)
  if ('refused' in read) {
    ctx.log.error(`${t.name}: not updating: key file ${read.refused}`)
    return { tunnel: t.name, action: 'refused', reason: `key file ${read.refused}`, url: url.href }
  }
  if (ctx.dryRun) return { tunnel: t.name, action: 'would-send', reason: decision.reason, url: url.href }

  const sent = await sendUpdate(url, basicAuth(he.username, read.key), o.fetch)
  const outcome: Outcome = 'error' in sent ? { error: true } : sent
  await ctx.store.update((d) => { d.heUpdates[t.name] = nextRecord(d.heUpdates[t.name], outcome, { address: wan, settings, now: now() }) })
  if ('error' in sent) {
    const error = sent.error.replaceAll(read.key, '***')
    ctx.log.warn(`${t.name}: update failed, retrying at the next run: ${error}`)
    return { tunnel: t.name, action: 'failed', reason: error, url: url.href }
  }
  const answer = sent.answer.text.replaceAll(read.key, '***')
  const result: HeTunnelResult = { tunnel: t.name, action: 'sent', reason: decision.reason, url: url.href, answer }
  const { code } = sent.answer
  if (code === 'good' || code === 'nochg') {
    ctx.log.info(`${t.name}: broker answered "${answer}" for ${wan}`)
    result.local = await followWan(ctx, t, wan)
  } else if (FATAL_CODES.includes(code)) {
    result.stopped = true
    ctx.log.error(`${t.name}: broker answered "${code}": no more updates until the tunnel's HE settings change`)
  } else if (code === 'abuse') {
    ctx.log.warn(`${t.name}: broker answered "abuse": backing off for hours`)
  } else {
    ctx.log.warn(`${t.name}: broker answered "${answer}", retrying at the next run`)
  }
  return result
}

/** The job's work, with the network and the clock replaceable for tests. */
export async function updateAll(ctx: JobContext, o: RunOptions = {}): Promise<HeUpdateResult> {
  const tunnels = heTunnels(ctx.config)
  if (tunnels.length === 0) return { myip: false, tunnels: [] }
  const wan = globalIpv4(await getLink(ctx.sh, ctx.config.wanIf))
  if (!wan) {
    ctx.log.warn(`no global IPv4 on ${ctx.config.wanIf}: no Hurricane Electric update`)
    return { myip: false, tunnels: tunnels.map((t) => ({ tunnel: t.name, action: 'skipped', reason: `no IPv4 on ${ctx.config.wanIf}` })) }
  }
  const myip = isPublicIpv4(wan)
  const results: HeTunnelResult[] = []
  for (const t of tunnels) results.push(await updateTunnel(ctx, t, wan, myip, o))
  return { wanIpv4: wan, myip, tunnels: results }
}

/** A refused key file, a fatal answer (now or before) or no answer: the run fails, so a person looks. */
function needsAttention(t: HeTunnelResult): boolean {
  return t.action === 'refused' || t.action === 'failed' || t.stopped === true || FATAL_CODES.some((c) => c === t.answer)
}

function format(r: HeUpdateResult): string {
  if (r.tunnels.length === 0) return 'no 6in4 tunnel with Hurricane Electric settings'
  const head = r.wanIpv4 ? `WAN IPv4 ${r.wanIpv4}${r.myip ? '' : ' (not public: the broker uses the source address)'}` : 'no WAN IPv4'
  const lines = r.tunnels.map((t) => {
    const what = t.action === 'would-send' ? `would send GET ${t.url}` : t.action === 'sent' ? `sent (${t.reason}): ${t.answer}` : `${t.action}: ${t.reason}`
    return `  ${t.tunnel}: ${what}${t.local === 'changed' ? '; tunnel local address moved to the WAN address' : ''}`
  })
  return [head, ...lines].join('\n')
}

const job = defineJob({
  name: 'he-update',
  description: 'Tell Hurricane Electric\'s tunnel broker the WAN IPv4 of each 6in4 tunnel when it changed.',
  exclusive: true,
  run: ({ ctx }) => updateAll(ctx),
  format,
  exitCode: (r: HeUpdateResult) => (r.tunnels.some(needsAttention) ? 1 : 0),
})

export default job
await runMain(job, import.meta.url)
