// Runs one job in a child process (child.ts) with a timeout. The child leads its own process group, so a
// timeout or a shutdown also ends whatever commands the job started: SIGTERM to the group, SIGKILL after a grace.
import { fork } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import type { Config } from '../core/config.ts'
import type { Payload } from '../core/job.ts'
import type { ResultMessage, RunMessage } from './child.ts'
import { MODULE_EXT } from './jobs.ts'

const CHILD = fileURLToPath(new URL(`./child${MODULE_EXT}`, import.meta.url))

export interface Outcome {
  ok: boolean
  result?: unknown
  error?: string
  /** Set when the runner ended the run (timeout or shutdown), not the job. */
  stopped?: string
}

export interface ChildRun {
  pid: number | undefined
  done: Promise<Outcome>
  /** Ends the run: SIGTERM to the process group, SIGKILL after the grace period (or `graceMs`). */
  stop(reason: string, graceMs?: number): void
}

export interface SpawnOptions {
  job: string
  file: string
  payload: Payload[]
  trigger: string
  config: Config
  timeoutMs: number
  graceMs: number
}

/** The child needs the runner's loader (tsx) in a checkout, and must not fight over a debugger port. */
function childExecArgv(): string[] {
  return process.execArgv.filter((a) => !/^--(inspect|debug|watch)/.test(a))
}

export function spawnJob(o: SpawnOptions): ChildRun {
  const child = fork(CHILD, [], { execArgv: childExecArgv(), detached: true, stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'json' })
  let reply: ResultMessage | undefined
  let stopped: string | undefined
  let exited = false
  let killTimer: ReturnType<typeof setTimeout> | undefined

  function signal(sig: NodeJS.Signals): void {
    if (exited || child.pid === undefined) return
    try {
      process.kill(-child.pid, sig)
    } catch {
      try { child.kill(sig) } catch { /* already gone */ }
    }
  }

  function stop(reason: string, graceMs = o.graceMs): void {
    if (exited || stopped) return
    stopped = reason
    signal('SIGTERM')
    killTimer = setTimeout(() => signal('SIGKILL'), graceMs)
  }

  const timer = setTimeout(() => stop(`timed out after ${Math.round(o.timeoutMs / 1000)} s`), o.timeoutMs)

  const done = new Promise<Outcome>((resolve) => {
    child.on('message', (m) => { if ((m as ResultMessage)?.type === 'result') reply = m as ResultMessage })
    child.on('error', (err) => {
      if (child.pid !== undefined) return
      exited = true
      clearTimeout(timer)
      resolve({ ok: false, error: `could not start the job process: ${err.message}` })
    })
    // 'close', not 'exit': it comes after the IPC channel is drained, so the result message is never missed.
    child.on('close', (code, sig) => {
      exited = true
      clearTimeout(timer)
      clearTimeout(killTimer)
      if (stopped) return resolve({ ok: false, error: stopped, stopped })
      if (reply && !reply.ok) return resolve({ ok: false, error: reply.error })
      if (reply?.ok && code === 0) return resolve({ ok: true, result: reply.result })
      resolve({ ok: false, error: sig ? `killed by ${sig}` : `exited with code ${code}${reply ? '' : ' before returning a result'}` })
    })
  })

  const msg: RunMessage = { type: 'run', job: o.job, file: o.file, payload: o.payload, trigger: o.trigger, config: o.config }
  child.send(msg, (err) => { if (err) stop(`could not hand the payload to the job process: ${err.message}`) })
  return { pid: child.pid, done, stop }
}
