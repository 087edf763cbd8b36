// The runner's API: its own routes (health, jobs, events, metrics) and those of the capabilities, in one
// table for lib/core/api.ts. Supervisors add theirs when the runner starts them (GET /relay, /nat64, /clat),
// and may add to GET /health (under their name) and GET /metrics (after the runner's own families).
import { getRouterParam, HTTPError } from 'h3'
import { badRequest, createApi, notFound, readJson, type ApiContext, type ApiOptions, type ApiRoute, type RunnerControl } from '../core/api.ts'
import { EventError, parseEvent, type HookEvent } from '../core/event.ts'
import { labelValue } from '../core/prometheus.ts'
import { DEVICE_STATUSES, type Data } from '../core/schema.ts'
import type { Supervisor } from '../core/supervisor.ts'
import { deviceRoutes } from '../devices/routes.ts'
import { countDevices } from '../devices/status.ts'
import { forwardRoutes } from '../reach/routes.ts'
import { portRoutes } from '../tunnels/routes.ts'

/** Prometheus text exposition format 0.0.4. */
export function metrics(data: Data, jobNames: string[]): string {
  const lines: string[] = []
  const family = (name: string, type: 'gauge' | 'counter', help: string, samples: [string, number][]) => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`)
    for (const [labels, value] of samples) lines.push(`${name}${labels} ${value}`)
  }
  const counts = countDevices(data)
  family('dualgate_devices', 'gauge', 'Devices in the store, by status.', DEVICE_STATUSES.map((s) => [`{status="${s}"}`, counts[s]]))
  family('dualgate_forwards', 'gauge', 'Port forwards in the store.', [['', data.forwards.length]])
  const jobs = [...new Set([...jobNames, ...Object.keys(data.jobs)])].sort()
  const label = (job: string) => `{job="${labelValue(job)}"}`
  family('dualgate_job_runs_total', 'counter', 'Job runs recorded.', jobs.map((j) => [label(j), data.jobs[j]?.runs ?? 0]))
  family('dualgate_job_failures_total', 'counter', 'Job runs that failed.', jobs.map((j) => [label(j), data.jobs[j]?.failures ?? 0]))
  family('dualgate_job_last_run_timestamp_seconds', 'gauge', 'Start of the last run of each job (Unix time).',
    jobs.filter((j) => data.jobs[j]?.last).map((j) => [label(j), Date.parse(data.jobs[j].last!.startedAt) / 1000]))
  family('dualgate_store_writes_total', 'counter', 'Writes of the store file.', [['', data.meta.writes]])
  return `${lines.join('\n')}\n`
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

/** The supervisors' metric families, after the runner's own; each ends with a newline. */
function supervisorMetrics(supervisors: SupervisorReports[]): string {
  return supervisors.map((s) => s.metrics?.() ?? '').filter(Boolean).map((t) => (t.endsWith('\n') ? t : `${t}\n`)).join('')
}

const runnerRoutes = (supervisors: SupervisorReports[]): ApiRoute[] => [
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
      const text = metrics(await api.store.snapshot(), api.runner?.jobs().map((j) => j.name) ?? []) + supervisorMetrics(supervisors)
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
 * The runner's API: its own routes, the devices' and the forwards', and `routes` (the supervisors'); the
 * `supervisors` add to /health and /metrics.
 */
export function createRunnerApi(opts: Omit<ApiOptions, 'routes'> & { routes?: ApiRoute[]; supervisors?: SupervisorReports[] }) {
  const { supervisors = [], routes = [], ...rest } = opts
  return createApi({ ...rest, routes: [...runnerRoutes(supervisors), ...deviceRoutes, ...forwardRoutes, ...portRoutes, ...routes] })
}
