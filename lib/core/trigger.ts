// A job asking for another job to run: the same spool the hooks use, so it works whether the runner is up
// (it runs soon, coalesced with other requests) or down (it runs when the runner starts).
import type { Config } from './config.ts'
import { spoolDir, writeSpool } from './spool.ts'

export async function requestRun(config: Config, job: string, source: string, event: string, args: string[] = []): Promise<void> {
  await writeSpool(spoolDir(config.dataDir), { job, source, event, args, env: {} })
}
