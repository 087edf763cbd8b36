// Waiting in the unit tests: poll until a value passes, or until a check holds, bounded in time; and a process's RSS.
import { readFileSync } from 'node:fs'

export async function until<T>(what: string, fn: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = 5000): Promise<T> {
  const end = Date.now() + timeoutMs
  for (;;) {
    const v = await fn()
    if (ok(v)) return v
    if (Date.now() > end) throw new Error(`${what}: still ${JSON.stringify(v)} after ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

export function rssKiB(pid: number): number {
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1])
}

/** Polls check every 100 ms until it holds (a throw is "not yet"); fails with what() after timeoutMs. */
export async function waitFor(check: () => Promise<boolean> | boolean, timeoutMs: number, what: () => string): Promise<void> {
  const until = Date.now() + timeoutMs
  for (;;) {
    try {
      if (await check()) return
    } catch { /* not yet */ }
    if (Date.now() > until) throw new Error(`timed out: ${what()}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}
