// Cron triggers from config.schedules (an empty expression disables a job's schedule). A trigger only asks
// the queue for a run; the queue keeps a job from overlapping itself.
import { createTask, type ScheduledTask } from 'node-cron'
import type { Config } from '../core/config.ts'
import { hasKernelForwarding } from '../forwarder/config.ts'
import { hasTunnels, heTunnels } from '../tunnels/config.ts'

/** Jobs that have nothing to keep on a host without what they serve: their schedule starts no process there. */
const NEEDED: Record<string, (c: Config) => boolean> = {
  tunnels: hasTunnels,
  'he-update': (c) => heTunnels(c).length > 0,
  forwarder: hasKernelForwarding,
}

/** config.schedules without the jobs this host has no use for (SIGHUP rebuilds the schedule). */
export function wantedSchedules(config: Pick<Config, 'schedules' | 'sections'>): Record<string, string> {
  return Object.fromEntries(Object.entries(config.schedules).filter(([job]) => NEEDED[job]?.(config as Config) ?? true))
}

export interface Schedule { stop(): void }

export function scheduleJobs(schedules: Record<string, string>, exists: (job: string) => boolean, fire: (job: string) => void, warn: (m: string) => void): Schedule {
  const tasks: ScheduledTask[] = []
  for (const [job, expr] of Object.entries(schedules)) {
    if (!expr) continue
    if (!exists(job)) {
      warn(`schedule for ${job} ignored: no such job`)
      continue
    }
    const task = createTask(expr, () => fire(job), { name: `dualgate-${job}` })
    task.start()
    tasks.push(task)
  }
  return {
    stop() {
      for (const t of tasks) void t.destroy()
    },
  }
}
