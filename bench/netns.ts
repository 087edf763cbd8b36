// Throwaway network namespaces for the relay bench and tests, and a JSON-lines RPC to Node agents running
// inside them (a process can only be in one namespace, so each side of a topology is its own process).
// Nothing here touches the root namespace: veth pairs are created inside a namespace with the peer placed
// straight into another one. Teardown kills only the processes started here, by PID, then deletes the
// namespaces; it also runs on exit and on SIGINT/SIGTERM.
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'

export interface Lab {
  /** Full namespace name for a short role name (`router` -> `dgrelay1a2b-router`). */
  ns(role: string): string
  addNs(...roles: string[]): Promise<void>
  /** `ip -n <ns> ...` */
  ip(role: string, args: string[]): Promise<string>
  /** A veth pair between two namespaces: `aName` in `a`, `bName` in `b`, both up. */
  veth(a: string, aName: string, b: string, bName: string): Promise<void>
  /** Runs a command inside a namespace and waits for it. */
  exec(role: string, cmd: string, args: string[], timeoutMs?: number): Promise<string>
  /** Starts a long-running process inside a namespace; killed at teardown. `quiet`: no pipes. */
  spawn(role: string, cmd: string, args: string[], quiet?: boolean): ChildProcess
  /** A Node agent speaking the protocol of serveAgent(); `nodeFlags` default to the tsx loader. */
  agent(role: string, file: string, args?: string[], nodeFlags?: string[]): Promise<Agent>
  teardown(): Promise<void>
}

export interface Agent {
  pid: number
  call<T = unknown>(op: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<T>
  stop(): Promise<void>
}

export function run(cmd: string, args: string[], timeoutMs = 20_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 16 << 20, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')}: ${stderr.trim() || err.message}`))
      else resolve(stdout)
    })
  })
}

export function createLab(prefix = 'dgrelay'): Lab {
  const tag = `${prefix}${randomBytes(2).toString('hex')}`
  const made: string[] = []
  const children = new Set<ChildProcess>()
  const ns = (role: string) => `${tag}-${role}`

  // Last resort when the process is leaving: synchronous, no awaiting.
  const syncTeardown = () => {
    for (const c of children) if (c.pid && c.exitCode === null && c.signalCode === null) try { process.kill(c.pid, 'SIGKILL') } catch { /* gone */ }
    for (const n of made.splice(0)) try { execFileSync('ip', ['netns', 'del', n], { stdio: 'ignore', timeout: 5000 }) } catch { /* gone */ }
  }
  const onSignal = (sig: NodeJS.Signals) => { syncTeardown(); process.exit(sig === 'SIGINT' ? 130 : 143) }
  process.on('exit', syncTeardown)
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)

  const lab: Lab = {
    ns,
    async addNs(...roles) {
      for (const r of roles) {
        await run('ip', ['netns', 'add', ns(r)])
        made.push(ns(r))
        await run('ip', ['-n', ns(r), 'link', 'set', 'lo', 'up'])
      }
    },
    ip: (role, args) => run('ip', ['-n', ns(role), ...args]),
    async veth(a, aName, b, bName) {
      await run('ip', ['-n', ns(a), 'link', 'add', aName, 'type', 'veth', 'peer', 'name', bName, 'netns', ns(b)])
      await run('ip', ['-n', ns(a), 'link', 'set', aName, 'up'])
      await run('ip', ['-n', ns(b), 'link', 'set', bName, 'up'])
    },
    exec: (role, cmd, args, timeoutMs) => run('ip', ['netns', 'exec', ns(role), cmd, ...args], timeoutMs),
    spawn(role, cmd, args, quiet = false) {
      const child = spawn('ip', ['netns', 'exec', ns(role), cmd, ...args], { stdio: quiet ? 'ignore' : 'pipe' })
      children.add(child)
      child.on('exit', () => children.delete(child))
      child.on('error', () => {})
      return child
    },
    async agent(role, file, args = [], nodeFlags = ['--import=tsx']) {
      // `ip netns exec` execs in place, so the PID is the agent's own.
      const child = lab.spawn(role, process.execPath, [...nodeFlags, file, ...args])
      return connectAgent(child, `${role} agent`)
    },
    async teardown() {
      process.off('exit', syncTeardown)
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
      await Promise.all([...children].map((c) => stopChild(c)))
      for (const n of made.splice(0)) await run('ip', ['netns', 'del', n]).catch(() => {})
    },
  }
  return lab
}

/** SIGTERM, then SIGKILL if it has not exited within `graceMs`. */
export function stopChild(child: ChildProcess, graceMs = 3000): Promise<void> {
  if (!child.pid || child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    const timer = setTimeout(() => { try { process.kill(child.pid!, 'SIGKILL') } catch { /* gone */ } }, graceMs)
    child.once('exit', () => { clearTimeout(timer); resolve() })
    try { process.kill(child.pid!, 'SIGTERM') } catch { clearTimeout(timer); resolve() }
  })
}

/** Speaks serveAgent()'s protocol with a child started by other means (another lab's namespace). */
export function connectAgent(child: ChildProcess, name: string, readyMs = 15_000): Promise<Agent> {
  let seq = 0
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>()
  let stderr = ''
  child.stderr!.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-4000); if (process.env.DG_AGENT_DEBUG) process.stderr.write(d) })
  const failAll = (why: string) => {
    for (const [, p] of pending) { clearTimeout(p.timer); p.reject(new Error(`${name}: ${why}\n${stderr}`)) }
    pending.clear()
  }
  child.on('exit', (code, sig) => failAll(`exited (${code ?? sig})`))
  const ready = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name}: not ready in ${readyMs / 1000} s\n${stderr}`)), readyMs)
    child.once('exit', () => { clearTimeout(timer); reject(new Error(`${name}: exited before ready\n${stderr}`)) })
    createInterface({ input: child.stdout! }).on('line', (line) => {
      let m: { id?: number; ready?: boolean; ok?: boolean; result?: unknown; error?: string }
      try { m = JSON.parse(line) } catch { return }
      if (m.ready) { clearTimeout(timer); resolve(); return }
      const p = pending.get(m.id!)
      if (!p) return
      pending.delete(m.id!)
      clearTimeout(p.timer)
      if (m.ok) p.resolve(m.result)
      else p.reject(new Error(`${name}: ${m.error}`))
    })
  })
  const agent: Agent = {
    pid: child.pid!,
    call<T>(op: string, args: Record<string, unknown> = {}, timeoutMs = 30_000) {
      const id = ++seq
      return new Promise<T>((resolve, reject) => {
        const timer = setTimeout(() => { pending.delete(id); reject(new Error(`${name}: ${op} timed out after ${timeoutMs} ms`)) }, timeoutMs)
        pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer })
        child.stdin!.write(`${JSON.stringify({ id, op, args })}\n`)
      })
    },
    stop: () => stopChild(child),
  }
  return ready.then(() => agent)
}

export type Handlers = Record<string, (args: any) => unknown>

/** The agent side: answers one JSON line per request on stdout; exits when stdin closes. */
export function serveAgent(handlers: Handlers): void {
  const out = (m: unknown) => process.stdout.write(`${JSON.stringify(m)}\n`)
  createInterface({ input: process.stdin }).on('line', async (line) => {
    let req: { id: number; op: string; args: unknown }
    try { req = JSON.parse(line) } catch { return }
    try {
      const h = handlers[req.op]
      if (!h) throw new Error(`unknown op ${req.op}`)
      out({ id: req.id, ok: true, result: (await h(req.args)) ?? null })
    } catch (err) {
      out({ id: req.id, ok: false, error: err instanceof Error ? err.message : String(err) })
    }
  }).on('close', () => process.exit(0))
  process.on('SIGTERM', () => process.exit(0))
  out({ ready: true })
}

/** Resident and proportional set size of a process, in KiB, from /proc (PSS needs smaps_rollup). */
export function memoryOf(pid: number): { rss: number; pss: number } {
  const text = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8')
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN)
  return { rss: field('Rss'), pss: field('Pss') }
}
