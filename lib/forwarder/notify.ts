// Telling someone that a forward's target moved: config forwarderNotifyCommand runs with the arguments forward,
// old address, new address (no shell; bounded in time; its output, bounded, goes to the debug log), and/or
// forwarderNotifyUrl gets a JSON POST { forward, target, old, new, at }. The resolver calls this once per
// change and never on a DNS failure. Notifications go one at a time, in order; a burst beyond MAX_PENDING is
// dropped and counted, so hostile DNS that flips an address cannot pile up processes.
import { spawn } from 'node:child_process'

export interface ChangeNotice {
  forward: string
  target: string
  old: string
  new: string
  /** ISO time of the change. */
  at: string
}

export type NotifyLog = (level: 'debug' | 'info' | 'warn', msg: string) => void

export interface NotifierOptions {
  command: string
  url: string
  log: NotifyLog
  timeoutMs?: number
  /** For tests. */
  fetch?: typeof fetch
}

export const NOTIFY_TIMEOUT_MS = 10_000
export const OUTPUT_MAX = 4096
export const MAX_PENDING = 32

export interface Notifier {
  notify(notice: ChangeNotice): void
  /** Resolves when every notification handed over so far has finished. */
  idle(): Promise<void>
  /** Notifications handed over, and those dropped because too many were waiting. */
  counts(): { sent: number; dropped: number }
}

/** Runs command with args, no shell, killed after timeoutMs; resolves with its exit and the first OUTPUT_MAX bytes of output. */
export function runBounded(command: string, args: string[], timeoutMs: number): Promise<{ code: number | null; signal: string | null; output: string; error?: string }> {
  return new Promise((resolve) => {
    let output = ''
    let settled = false
    const done = (r: { code: number | null; signal: string | null; error?: string }) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      resolve({ ...r, output })
    }
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], shell: false })
    const take = (b: Buffer) => { if (output.length < OUTPUT_MAX) output += b.toString('utf8').slice(0, OUTPUT_MAX - output.length) }
    child.stdout.on('data', take)
    child.stderr.on('data', take)
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      done({ code: null, signal: 'SIGKILL', error: `timed out after ${timeoutMs} ms` })
    }, timeoutMs)
    child.on('error', (err) => done({ code: null, signal: null, error: err.message }))
    child.on('close', (code, signal) => done({ code, signal }))
  })
}

export function createNotifier(opts: NotifierOptions): Notifier {
  const timeoutMs = opts.timeoutMs ?? NOTIFY_TIMEOUT_MS
  const post = opts.fetch ?? fetch
  let chain: Promise<void> = Promise.resolve()
  let pending = 0
  let sent = 0
  let dropped = 0

  async function runCommand(n: ChangeNotice): Promise<void> {
    const r = await runBounded(opts.command, [n.forward, n.old, n.new], timeoutMs)
    if (r.output.trim()) opts.log('debug', `notify command for ${n.forward} said: ${r.output.trim()}`)
    if (r.error || r.code !== 0) opts.log('warn', `notify command ${opts.command} for ${n.forward} failed: ${r.error ?? `exit ${r.code ?? r.signal}`}`)
  }

  async function postUrl(n: ChangeNotice): Promise<void> {
    try {
      const res = await post(opts.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(n),
        signal: AbortSignal.timeout(timeoutMs),
        redirect: 'manual',
      })
      await res.body?.cancel().catch(() => {})
      if (!res.ok) opts.log('warn', `notify URL for ${n.forward} answered HTTP ${res.status}`)
    } catch (err) {
      opts.log('warn', `notify URL for ${n.forward} failed: ${err instanceof Error ? err.message : String(err)}`)
    }
  }

  return {
    notify(n) {
      if (!opts.command && !opts.url) return
      if (pending >= MAX_PENDING) {
        dropped++
        opts.log('warn', `notification for ${n.forward} (${n.old} -> ${n.new}) dropped: ${pending} still waiting`)
        return
      }
      pending++
      sent++
      chain = chain.then(async () => {
        await Promise.all([opts.command ? runCommand(n) : undefined, opts.url ? postUrl(n) : undefined])
      }).finally(() => { pending-- })
    },
    idle: () => chain,
    counts: () => ({ sent, dropped }),
  }
}
