// The diagnose tool: jobs/diagnose run as the runner runs a job (lib/runner/child.ts, in its own process
// group, with a timeout), with no options, so its checks only read. The child's stdout goes to our stderr:
// in `gateway-mcp` our stdout carries the protocol and nothing else may write there.
import { fork } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import type { Config } from '../core/config.ts'
import type { ResultMessage, RunMessage } from '../runner/child.ts'
import { discoverJobs, jobsDir, MODULE_EXT } from '../runner/jobs.ts'
import { ToolError } from './backend.ts'

const CHILD = fileURLToPath(new URL(`../runner/child${MODULE_EXT}`, import.meta.url))
export const DIAGNOSE_TIMEOUT_MS = 120_000
const KILL_GRACE_MS = 2000

export function runDiagnose(config: Config, signal: AbortSignal): Promise<unknown> {
  const file = discoverJobs(jobsDir()).get('diagnose')
  if (!file) return Promise.reject(new ToolError(`no diagnose job in ${jobsDir()}`))
  const child = fork(CHILD, [], {
    execArgv: process.execArgv.filter((a) => !/^--(inspect|debug|watch)/.test(a)),
    detached: true,
    stdio: ['ignore', 2, 2, 'ipc'],
    serialization: 'json',
  })
  const kill = (sig: NodeJS.Signals) => {
    if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return
    try { process.kill(-child.pid, sig) } catch { /* already gone */ }
  }
  return new Promise((resolve, reject) => {
    let reply: ResultMessage | undefined
    let why: string | undefined
    const stop = (reason: string) => {
      why ??= reason
      kill('SIGTERM')
      setTimeout(() => kill('SIGKILL'), KILL_GRACE_MS).unref()
    }
    const timer = setTimeout(() => stop(`diagnose did not finish within ${DIAGNOSE_TIMEOUT_MS / 1000} s`), DIAGNOSE_TIMEOUT_MS)
    const onAbort = () => stop('cancelled')
    signal.addEventListener('abort', onAbort, { once: true })
    child.on('message', (m) => { reply = m as ResultMessage })
    child.on('error', (err) => stop(err.message))
    child.on('exit', () => {
      clearTimeout(timer)
      signal.removeEventListener('abort', onAbort)
      if (why) reject(new ToolError(why))
      else if (!reply) reject(new ToolError('diagnose ended without a result'))
      else if (!reply.ok) reject(new ToolError(`diagnose failed: ${reply.error}`))
      else resolve(reply.result)
    })
    const run: RunMessage = { type: 'run', job: 'diagnose', file, payload: [], trigger: 'mcp', config }
    child.send(run)
  })
}
