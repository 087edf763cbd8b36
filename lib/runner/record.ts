// Writing a finished run into the store: data.runs keeps the most recent runs, data.jobs the totals per job.
import type { Run } from '../core/schema.ts'
import type { Store } from '../core/store.ts'

export const KEEP_RUNS = 200
const MAX_RESULT = 16 * 1024
const MAX_ERROR = 2000

/** A large result (a whole device list) would bloat the store that every process reads: keep its size only. */
export function storedResult(result: unknown): unknown {
  if (result === undefined) return undefined
  const text = JSON.stringify(result)
  return text.length > MAX_RESULT ? { truncated: true, bytes: text.length } : result
}

export function recordRun(store: Store, run: Run): Promise<void> {
  const stored: Run = { ...run, error: run.error?.slice(0, MAX_ERROR), result: storedResult(run.result) }
  if (stored.error === undefined) delete stored.error
  if (stored.result === undefined) delete stored.result
  return store.update((data) => {
    data.runs.push(stored)
    if (data.runs.length > KEEP_RUNS) data.runs.splice(0, data.runs.length - KEEP_RUNS)
    const totals = data.jobs[run.job] ?? { runs: 0, failures: 0 }
    data.jobs[run.job] = { runs: totals.runs + 1, failures: totals.failures + (run.ok ? 0 : 1), last: stored }
  })
}
