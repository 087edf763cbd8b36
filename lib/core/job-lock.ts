// A job that changes the data plane runs once at a time on the router, whoever starts it. The runner keeps
// its own runs of a job apart; this lock also keeps a run by hand, or a hook calling the build directly,
// apart from the runner's. It is a proper-lockfile lock (a directory whose mtime the holder refreshes), so a
// holder killed with SIGKILL leaves a lock that goes stale within seconds instead of blocking the job.
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import path from 'node:path'
import lockfile from 'proper-lockfile'

export interface JobLockOptions {
  /** How long to wait for the other run before giving up. */
  waitMs: number
  /** Who holds the lock, for messages (default: "another NAME run"); the holder's PID is added when known. */
  holder?: string
  /** Called once when the lock is held by another run, with who that is. */
  onWait?: (holder: string) => void
  /** The lock was lost while held (its directory removed, or not refreshed for too long). */
  onCompromised?: (err: Error) => void
}

const STALE_MS = 10_000
const POLL_MS = 200

/** Waits for and takes the lock `name` (a job's name, or a lock that jobs share); resolves to its release. */
export async function lockJob(runDir: string, name: string, opts: JobLockOptions): Promise<() => Promise<void>> {
  const dir = path.join(runDir, 'jobs')
  await mkdir(dir, { recursive: true })
  const file = path.join(dir, name)
  const deadline = Date.now() + opts.waitMs
  let told = false
  const holder = async () => {
    const pid = await holderPid(file)
    return `${opts.holder ?? `another ${name} run`}${pid ? ` (pid ${pid})` : ''}`
  }
  for (;;) {
    try {
      const release = await lockfile.lock(file, {
        realpath: false,
        stale: STALE_MS,
        update: STALE_MS / 4,
        onCompromised: opts.onCompromised ?? (() => {}),
      })
      await writeFile(file, `${process.pid}\n`)
      return release
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ELOCKED') throw err
    }
    if (!told) {
      told = true
      opts.onWait?.(await holder())
    }
    if (Date.now() >= deadline) throw new Error(`${await holder()} still holds ${file}.lock after ${Math.round(opts.waitMs / 1000)} s`)
    await new Promise((r) => setTimeout(r, POLL_MS))
  }
}

async function holderPid(file: string): Promise<number | undefined> {
  const text = await readFile(file, 'utf8').catch(() => '')
  const pid = Number(text.trim())
  return Number.isInteger(pid) && pid > 0 ? pid : undefined
}
