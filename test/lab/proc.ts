// What the namespace labs (./lab.ts, ./forwarder-lab.ts) share: running commands with argument vectors and a
// bound in time, polling with a bound, and finding and ending the processes of a lab's namespaces (async for
// teardown, sync for the exit handler). Nothing here creates a namespace or sends a packet.
import { execFile, execFileSync } from 'node:child_process'
import { readFileSync, statSync } from 'node:fs'

export interface ExecResult {
  stdout: string
  stderr: string
  code: number
}

export interface RunOptions {
  timeoutMs?: number
  env?: Record<string, string>
  nothrow?: boolean
  input?: string
}

export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0
}

/** Runs cmd (no shell), killed after timeoutMs (exit 124); throws on a non-zero exit unless nothrow. */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const env = opts.env ? { ...process.env, ...opts.env } : process.env
    const child = execFile(
      cmd,
      args,
      { timeout: opts.timeoutMs ?? 30_000, killSignal: 'SIGKILL', maxBuffer: 64 << 20, encoding: 'utf8', env },
      (err, stdout, stderr) => {
        const e = err as (Error & { code?: number | string; killed?: boolean }) | null
        const code = e ? (typeof e.code === 'number' ? e.code : e.killed ? 124 : 127) : 0
        const result = { stdout, stderr: e && !stderr ? e.message : stderr, code }
        if (code !== 0 && !opts.nothrow) {
          const what = [cmd, ...args].join(' ')
          reject(new Error(`${what} exited ${code}${e?.killed ? ' (timed out)' : ''}: ${(result.stderr || stdout).trim()}`))
        } else resolve(result)
      },
    )
    // A command that exits before reading its input must not take the test down with EPIPE.
    child.stdin?.on('error', () => {})
    if (opts.input !== undefined) child.stdin?.end(opts.input)
  })
}

export function ip(args: string[], opts?: RunOptions): Promise<ExecResult> {
  return run('ip', args, opts)
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** Polls check() every intervalMs until it returns a value other than undefined/false, or throws after timeoutMs. */
export async function waitFor<T>(what: string, timeoutMs: number, check: () => Promise<T | undefined | false> | T | undefined | false, intervalMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let lastErr: unknown
  for (let i = 0; i < 100_000; i++) {
    try {
      const v = await check()
      if (v !== undefined && v !== false) return v
    } catch (err) {
      lastErr = err
    }
    if (Date.now() >= deadline) break
    await sleep(intervalMs)
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? `: ${String(lastErr)}` : ''}`)
}

export function readText(file: string): string {
  try {
    return readFileSync(file, 'utf8')
  } catch {
    return ''
  }
}

export function fileSize(file: string): number {
  try {
    return statSync(file).size
  } catch {
    return 0
  }
}

export function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
    return state !== 'Z' && state !== 'X'
  } catch {
    return false
  }
}

export function kill(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig)
  } catch {
    // already gone
  }
}

function parsePids(stdout: string): number[] {
  return stdout
    .split('\n')
    .map((l) => Number.parseInt(l.trim(), 10))
    .filter((n) => Number.isInteger(n) && n > 1 && n !== process.pid)
}

function syncOutput(args: string[]): string {
  try {
    return execFileSync('ip', args, { encoding: 'utf8', timeout: 5_000, stdio: ['ignore', 'pipe', 'ignore'] })
  } catch {
    return ''
  }
}

const netnsNames = (stdout: string) => stdout.split('\n').map((l) => l.trim().split(/\s+/)[0] ?? '').filter(Boolean)

export async function nsPids(ns: string): Promise<number[]> {
  const r = await ip(['netns', 'pids', ns], { nothrow: true, timeoutMs: 5_000 })
  return r.code === 0 ? parsePids(r.stdout) : []
}

export const nsPidsSync = (ns: string): number[] => parsePids(syncOutput(['netns', 'pids', ns]))

export async function listNetns(): Promise<string[]> {
  return netnsNames((await ip(['netns', 'list'], { nothrow: true, timeoutMs: 5_000 })).stdout)
}

export const listNetnsSync = (): string[] => netnsNames(syncOutput(['netns', 'list']))

/** Kills every process in the given namespaces: SIGCONT (a stopped one) and SIGTERM, then SIGKILL after a bound. */
export async function killNamespaces(namespaces: string[]): Promise<void> {
  let pids = (await Promise.all(namespaces.map(nsPids))).flat()
  if (pids.length === 0) return
  for (const pid of pids) {
    kill(pid, 'SIGCONT')
    kill(pid, 'SIGTERM')
  }
  const deadline = Date.now() + 1_500
  while (Date.now() < deadline && pids.some(isAlive)) await sleep(50)
  pids = (await Promise.all(namespaces.map(nsPids))).flat().concat(pids.filter(isAlive))
  for (const pid of pids) kill(pid, 'SIGKILL')
  const hardDeadline = Date.now() + 2_000
  while (Date.now() < hardDeadline && pids.some(isAlive)) await sleep(50)
}

/** Ends every process in the namespaces, then deletes them. */
export async function removeNamespaces(namespaces: string[]): Promise<void> {
  await killNamespaces(namespaces)
  await Promise.all(namespaces.map((ns) => ip(['netns', 'del', ns], { nothrow: true })))
}
