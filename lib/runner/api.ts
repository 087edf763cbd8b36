// The runner's API: its own routes (health, jobs, events, metrics) and those of the capabilities, in one
// table for lib/core/api.ts. Supervisors add theirs when the runner starts them (GET /relay, /nat64, /clat),
// and may add to GET /health (under their name) and GET /metrics (after the runner's own families).
import { getRouterParam, HTTPError } from 'h3'
import { badRequest, createApi, notFound, readJson, type ApiContext, type ApiOptions, type ApiRoute, type RunnerControl } from '../core/api.ts'
import { EventError, parseEvent, type HookEvent } from '../core/event.ts'
import { exposition, flag, single, type Family, type Sample } from '../core/prometheus.ts'
import { DEVICE_STATUSES, type Data } from '../core/schema.ts'
import type { Supervisor } from '../core/supervisor.ts'
import { deviceRoutes } from '../devices/routes.ts'
import { countDevices } from '../devices/status.ts'
import { forwardRoutes } from '../reach/routes.ts'
import { statusPageRoutes } from '../status-page/routes.ts'
import { portRoutes } from '../tunnels/routes.ts'

/** What the runner itself reports to GET /metrics (lib/runner/main.ts hands over a function that reads it). */
export interface RunnerStats {
  residentMemoryBytes: number
  startTimeSeconds: number
  /** Events waiting for a run: in bursts being coalesced, and in follow-up runs. */
  eventQueueLength: number
  /** Spool files whose events not every run they went to has handled yet. */
  spoolBacklog: number
  eventsDropped: number
}

/** The runner's own families (Prometheus text exposition format 0.0.4): the store's, the jobs', the process's. */
export function runnerFamilies(data: Data, live: { name: string; running: boolean }[], stats?: RunnerStats): Family[] {
  const counts = countDevices(data)
  const forwards = (['tcp', 'udp'] as const).flatMap((proto) => (['4', '6', 'both'] as const).map((family) => ({
    labels: { proto, family },
    value: data.forwards.filter((f) => f.proto === proto && f.family === family).length,
  })))
  // `job` is the label Prometheus gives every target: a job's name goes in `job_name`.
  const jobs = [...new Set([...live.map((j) => j.name), ...Object.keys(data.jobs)])].sort()
  const perJob = (value: (job: string) => number | undefined): Sample[] => jobs.flatMap((j) => {
    const v = value(j)
    return v === undefined ? [] : [{ labels: { job_name: j }, value: v }]
  })
  const last = (j: string) => data.jobs[j]?.last
  const families: Family[] = [
    { name: 'dualgate_devices', type: 'gauge', help: 'Devices in the store, by status.', samples: DEVICE_STATUSES.map((s) => ({ labels: { status: s }, value: counts[s] })) },
    { name: 'dualgate_forwards', type: 'gauge', help: 'Port forwards in the store, by protocol and by the IP family clients use (4, 6 or both).', samples: forwards },
    { name: 'dualgate_job_runs_total', type: 'counter', help: 'Job runs recorded.', samples: perJob((j) => data.jobs[j]?.runs ?? 0) },
    { name: 'dualgate_job_failures_total', type: 'counter', help: 'Job runs that failed.', samples: perJob((j) => data.jobs[j]?.failures ?? 0) },
    { name: 'dualgate_job_last_run_timestamp_seconds', type: 'gauge', help: 'Start of the last run of each job (Unix time).', samples: perJob((j) => (last(j) ? Date.parse(last(j)!.startedAt) / 1000 : undefined)) },
    { name: 'dualgate_job_last_run_duration_seconds', type: 'gauge', help: 'How long the last run of each job took.', samples: perJob((j) => (last(j) ? last(j)!.durationMs / 1000 : undefined)) },
    { name: 'dualgate_job_last_run_success', type: 'gauge', help: 'Whether the last run of each job succeeded (1) or failed (0).', samples: perJob((j) => (last(j) ? flag(last(j)!.ok) : undefined)) },
    { name: 'dualgate_job_running', type: 'gauge', help: 'Whether a run of the job is in progress.', samples: live.map((j) => ({ labels: { job_name: j.name }, value: flag(j.running) })).sort((a, b) => a.labels.job_name.localeCompare(b.labels.job_name)) },
    single('dualgate_store_writes_total', 'counter', 'Writes of the store file.', data.meta.writes),
  ]
  if (stats) {
    families.push(
      single('process_resident_memory_bytes', 'gauge', 'Resident memory size of the runner.', stats.residentMemoryBytes),
      single('process_start_time_seconds', 'gauge', 'Start time of the runner since the Unix epoch.', stats.startTimeSeconds),
      single('dualgate_runner_event_queue_length', 'gauge', 'Hook events waiting for a job run (coalescing, or waiting for the run in progress to end).', stats.eventQueueLength),
      single('dualgate_runner_spool_backlog_files', 'gauge', 'Spool files whose events are not handled yet.', stats.spoolBacklog),
      single('dualgate_runner_events_dropped_total', 'counter', 'Hook events dropped: the same as one already waiting, or past the bound of events waiting for one job.', stats.eventsDropped),
    )
  }
  return families
}

function jobList(api: ApiContext, data: Data) {
  const live = new Map((api.runner?.jobs() ?? []).map((j) => [j.name, j]))
  const schedules = api.config().schedules
  const names = [...new Set([...live.keys(), ...Object.keys(schedules), ...Object.keys(data.jobs)])].sort()
  return names.map((name) => ({
    name,
    available: api.runner ? live.has(name) : undefined,
    schedule: schedules[name] ?? '',
    running: live.get(name)?.running ?? false,
    queued: live.get(name)?.queued ?? false,
    runs: data.jobs[name]?.runs ?? 0,
    failures: data.jobs[name]?.failures ?? 0,
    last: data.jobs[name]?.last,
  }))
}

function needRunner(api: ApiContext): RunnerControl {
  if (!api.runner) throw new HTTPError({ status: 503, message: 'the runner is not running in this process' })
  return api.runner
}

/** What GET /health and GET /metrics take from each supervisor. */
export type SupervisorReports = Pick<Supervisor, 'name' | 'health' | 'metrics'>

/** Each supervisor's health under its name, for those that have something to say. */
function supervisorHealth(supervisors: SupervisorReports[]): Record<string, unknown> {
  return Object.fromEntries(supervisors.flatMap((s) => {
    const h = s.health?.()
    return h ? [[s.name, h]] : []
  }))
}

/** The supervisors' metric families, after the runner's own, in the supervisors' order; each ends with a newline. */
async function supervisorMetrics(supervisors: SupervisorReports[]): Promise<string> {
  const texts = await Promise.all(supervisors.map((s) => s.metrics?.() ?? ''))
  return texts.filter(Boolean).map((t) => (t.endsWith('\n') ? t : `${t}\n`)).join('')
}

const runnerRoutes = (supervisors: SupervisorReports[], stats?: () => RunnerStats): ApiRoute[] => [
  {
    method: 'GET',
    path: '/health',
    // The store is what every answer comes from: a runner that cannot read it is not healthy.
    async handler(_e, api) {
      try {
        const data = await api.store.snapshot()
        return { ok: true, version: api.version, store: { ok: true, devices: Object.keys(data.devices).length }, ...supervisorHealth(supervisors) }
      } catch (err) {
        const body = { ok: false, version: api.version, store: { ok: false, error: (err as Error).message }, ...supervisorHealth(supervisors) }
        return new Response(JSON.stringify(body), { status: 503, headers: { 'content-type': 'application/json' } })
      }
    },
  },
  { method: 'GET', path: '/jobs', handler: async (_e, api) => jobList(api, await api.store.snapshot()) },
  {
    method: 'GET',
    path: '/metrics',
    async handler(_e, api) {
      const text = exposition(runnerFamilies(await api.store.snapshot(), api.runner?.jobs() ?? [], stats?.())) + await supervisorMetrics(supervisors)
      return new Response(text, { headers: { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' } })
    },
  },
  {
    method: 'POST',
    path: '/jobs/:name/run',
    handler(event, api) {
      const runner = needRunner(api)
      const name = getRouterParam(event, 'name') ?? ''
      const state = runner.trigger(name, 'api')
      if (!state) throw notFound(`no job ${JSON.stringify(name)}`)
      if (state === 'stopping') throw new HTTPError({ status: 503, message: 'the runner is shutting down' })
      return new Response(JSON.stringify({ job: name, state }), { status: 202, headers: { 'content-type': 'application/json' } })
    },
  },
  {
    method: 'POST',
    path: '/events',
    async handler(event, api) {
      const runner = needRunner(api)
      let hook: HookEvent
      try {
        hook = parseEvent(await readJson(event))
      } catch (err) {
        if (err instanceof EventError) throw badRequest(err.message)
        throw err
      }
      const jobs = runner.submit(hook)
      return new Response(JSON.stringify({ jobs }), { status: 202, headers: { 'content-type': 'application/json' } })
    },
  },
]

/**
 * The runner's API: its own routes, the devices', the forwards', the status page's, and `routes` (the supervisors'); the
 * `supervisors` add to /health and /metrics, and `stats` (the runner's own numbers) to /metrics.
 */
export function createRunnerApi(opts: Omit<ApiOptions, 'routes'> & { routes?: ApiRoute[]; supervisors?: SupervisorReports[]; stats?: () => RunnerStats }) {
  const { supervisors = [], routes = [], stats, ...rest } = opts
  return createApi({ ...rest, routes: [...runnerRoutes(supervisors, stats), ...deviceRoutes, ...forwardRoutes, ...portRoutes, ...statusPageRoutes, ...routes] })
}
