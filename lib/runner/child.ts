// Entry of the child process that runs one job: receives the job, its payload and the runner's config over
// IPC, runs it, sends back the result, exits. The job's own crash, exit or hang stays in this process.
import { pathToFileURL } from 'node:url'
import type { Config } from '../core/config.ts'
import { createContext, execute, type Job, type Payload } from '../core/job.ts'

export interface RunMessage {
  type: 'run'
  job: string
  file: string
  payload: Payload[]
  trigger: string
  config: Config
}

export type ResultMessage = { type: 'result'; ok: true; result: unknown } | { type: 'result'; ok: false; error: string }

function reply(msg: ResultMessage): Promise<void> {
  return new Promise((resolve) => {
    if (!process.send) return resolve()
    process.send(msg, undefined, {}, () => resolve())
  })
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

async function main(msg: RunMessage): Promise<void> {
  let outcome: ResultMessage
  try {
    const mod = await import(pathToFileURL(msg.file).href) as { default?: Job }
    const job = mod.default
    if (!job || typeof job.run !== 'function') throw new Error(`${msg.file} does not export a job (export default defineJob({...}))`)
    const ctx = createContext({ config: msg.config, tag: msg.job, trigger: msg.trigger })
    try {
      const result = await execute(job, msg.payload, ctx)
      // Checked here so that a result IPC cannot carry (cycles, BigInt) fails the run with a reason.
      outcome = { type: 'result', ok: true, result: result === undefined ? null : JSON.parse(JSON.stringify(result)) }
    } catch (err) {
      ctx.log.debug(err instanceof Error ? err.stack : String(err))
      outcome = { type: 'result', ok: false, error: message(err) }
    }
  } catch (err) {
    outcome = { type: 'result', ok: false, error: message(err) }
  }
  await reply(outcome)
  process.exit(outcome.ok ? process.exitCode ?? 0 : 1)
}

// The runner is gone (crashed or killed): nobody is left to record this run, so stop.
process.on('disconnect', () => process.exit(1))
process.once('message', (msg) => { void main(msg as RunMessage) })
