// Whether the resident runner is up, from its PID file: readable by any job, even when the API is down.
import { readFileSync } from 'node:fs'
import path from 'node:path'

export function runnerPidFile(dataDir: string): string {
  return path.join(dataDir, 'runner.pid')
}

export function runnerPid(dataDir: string): number | undefined {
  let pid: number
  try {
    pid = Number(readFileSync(runnerPidFile(dataDir), 'utf8').trim())
  } catch {
    return undefined
  }
  if (!Number.isInteger(pid) || pid <= 1) return undefined
  try {
    process.kill(pid, 0)
    return pid
  } catch {
    return undefined
  }
}

/** The runner's PID when the PID file names a live runner, not an unrelated process that took a recycled PID. */
export function liveRunner(dataDir: string): number | undefined {
  const pid = runnerPid(dataDir)
  if (pid === undefined) return undefined
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('runner/main') ? pid : undefined
  } catch {
    return undefined
  }
}
