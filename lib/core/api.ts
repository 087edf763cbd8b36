// The HTTP API in front of the store (h3 v2). Routes are one table: each names its method, path, who may
// call it, and a handler that gets the event and the API context. Reading is open to whoever can reach the
// socket (it binds to loopback by default); anything that changes state needs `Authorization: Bearer
// <apiToken>`, and with no token configured it is refused. Errors are `{ "error": message }`.
import { createHash, timingSafeEqual } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { H3, HTTPError, getQuery, getRouterParam, type H3Event, type HTTPMethod } from 'h3'
import type { Config } from './config.ts'
import { createSh, type Sh } from './exec.ts'
import type { Logger } from './log.ts'
import { normalizeMac } from '../addr/mac.ts'
import { EventError, parseEvent, type HookEvent } from '../runner/events.ts'
import { DEVICE_STATUSES, type Data, type DeviceStatus } from './schema.ts'
import { countDevices, gatewayStatus } from '../devices/status.ts'
import type { Store } from './store.ts'
import { checkForward, findForward, ForwardError, type ForwardRequest } from '../reach/forwards.ts'

/** What the API needs from the runner; absent when the API runs without one (tests, tools). */
export interface RunnerControl {
  /** The jobs the runner knows (files in jobs/) and whether each is running or has a follow-up queued. */
  jobs(): { name: string; running: boolean; queued: boolean }[]
  /** Asks for a run now; `undefined` when there is no such job, 'stopping' during shutdown. */
  trigger(job: string, trigger: string): 'started' | 'queued' | 'stopping' | undefined
  /** Hands over a hook event; returns the jobs it will reach. */
  submit(event: HookEvent): string[]
}

export interface ApiContext {
  store: Store
  config(): Config
  runner?: RunnerControl
  sh: Sh
  version: string
}

/**
 * public: anyone who can connect. token: a valid bearer token. loopback: from 127.0.0.0/8 or ::1 without a
 * token (the hook shims), from elsewhere with one.
 */
export type Access = 'public' | 'token' | 'loopback'

export interface ApiRoute {
  method: HTTPMethod
  /** rou3 syntax: `/devices/:mac`. */
  path: string
  /** Default: public for GET and HEAD, token for every other method. */
  access?: Access
  handler(event: H3Event, api: ApiContext): unknown
}

export interface ApiOptions {
  store: Store
  /** The config, or a getter for the current one (the runner reloads it on SIGHUP). */
  config: Config | (() => Config)
  runner?: RunnerControl
  /** Runs the read-only commands of GET /status (`ip`); by default a dry-run shell, so nothing can change. */
  sh?: Sh
  version?: string
  log?: Logger
  /** More routes, for instance from a module that owns forwards. */
  routes?: ApiRoute[]
}

export const MAX_BODY = 64 * 1024

export function badRequest(message: string): HTTPError {
  return new HTTPError({ status: 400, message })
}

export function notFound(message: string): HTTPError {
  return new HTTPError({ status: 404, message })
}

/** The request body as JSON, at most MAX_BODY bytes. */
export async function readJson(event: H3Event): Promise<unknown> {
  const length = Number(event.req.headers.get('content-length') ?? 0)
  if (length > MAX_BODY) throw new HTTPError({ status: 413, message: `body larger than ${MAX_BODY} bytes` })
  const text = await event.req.text()
  if (Buffer.byteLength(text) > MAX_BODY) throw new HTTPError({ status: 413, message: `body larger than ${MAX_BODY} bytes` })
  try {
    return JSON.parse(text)
  } catch {
    throw badRequest('body is not JSON')
  }
}

/** h3 leaves some escapes in route parameters (`%20`); a stray `%` must be a 400, not a thrown URIError. */
export function safeDecode(param: string): string {
  try {
    return decodeURIComponent(param)
  } catch {
    return param
  }
}

function sameToken(given: string, expected: string): boolean {
  // Hashing first makes both sides the same length, so the comparison time does not reveal the token's length.
  const a = createHash('sha256').update(given).digest()
  const b = createHash('sha256').update(expected).digest()
  return timingSafeEqual(a, b)
}

export function isLoopback(ip: string | undefined): boolean {
  if (!ip) return false
  const v4 = ip.startsWith('::ffff:') ? ip.slice(7) : ip
  return v4.startsWith('127.') || ip === '::1'
}

function authorize(event: H3Event, access: Access, config: Config): void {
  if (access === 'public') return
  if (access === 'loopback' && isLoopback(event.req.ip)) return
  if (!config.apiToken) {
    throw new HTTPError({ status: 403, message: 'no API token is configured (option api_token, or DUALGATE_API_TOKEN): requests that change state are refused' })
  }
  const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(event.req.headers.get('authorization') ?? '')
  if (!m) throw new HTTPError({ status: 401, message: 'missing Authorization: Bearer <token>', headers: { 'www-authenticate': 'Bearer' } })
  if (!sameToken(m[1], config.apiToken)) throw new HTTPError({ status: 401, message: 'wrong API token', headers: { 'www-authenticate': 'Bearer' } })
}

function escapeLabel(v: string): string {
  return v.replaceAll('\\', '\\\\').replaceAll('"', '\\"').replaceAll('\n', '\\n')
}

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
  const label = (job: string) => `{job="${escapeLabel(job)}"}`
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

/** A forward change in the store, then refresh-proxies to apply it; a refused change writes nothing. */
async function changeForwards<T>(api: ApiContext, change: (data: Data) => T): Promise<T> {
  let result: T
  try {
    result = await api.store.update(change)
  } catch (err) {
    if (err instanceof ForwardError) throw new HTTPError({ status: err.status, message: err.message })
    throw err
  }
  api.runner?.trigger('refresh-proxies', 'api')
  return result
}

export const ROUTES: ApiRoute[] = [
  { method: 'GET', path: '/health', handler: (_e, api) => ({ ok: true, version: api.version }) },
  {
    method: 'GET',
    path: '/status',
    handler: async (_e, api) => gatewayStatus({ config: api.config(), data: await api.store.read(), sh: api.sh }),
  },
  {
    method: 'GET',
    path: '/devices',
    async handler(event, api) {
      const { status } = getQuery(event) as { status?: string | string[] }
      if (status !== undefined && (typeof status !== 'string' || !DEVICE_STATUSES.includes(status as DeviceStatus))) {
        throw badRequest(`unknown status ${JSON.stringify(status)}; one of ${DEVICE_STATUSES.join(', ')}`)
      }
      const devices = Object.values((await api.store.read()).devices)
      return devices.filter((d) => !status || d.status === status).sort((a, b) => a.firstSeen.localeCompare(b.firstSeen))
    },
  },
  {
    method: 'GET',
    path: '/devices/:mac',
    async handler(event, api) {
      const raw = safeDecode(getRouterParam(event, 'mac') ?? '')
      const mac = normalizeMac(raw)
      if (!mac) throw badRequest(`not a MAC address: ${JSON.stringify(raw)}`)
      const device = (await api.store.read()).devices[mac]
      if (!device) throw notFound(`no device ${mac}`)
      return device
    },
  },
  { method: 'GET', path: '/jobs', handler: async (_e, api) => jobList(api, await api.store.read()) },
  {
    method: 'GET',
    path: '/metrics',
    async handler(_e, api) {
      const text = metrics(await api.store.read(), api.runner?.jobs().map((j) => j.name) ?? [])
      return new Response(text, { headers: { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' } })
    },
  },
  { method: 'GET', path: '/forwards', handler: async (_e, api) => (await api.store.read()).forwards },
  {
    method: 'POST',
    path: '/forwards',
    async handler(event, api) {
      const body = await readJson(event)
      if (typeof body !== 'object' || body === null || Array.isArray(body)) throw badRequest('expected a JSON object { gatewayPort, deviceIp, devicePort, proto?, family? }')
      const forward = await changeForwards(api, (data) => {
        const f = checkForward(data, api.config(), body as ForwardRequest)
        data.forwards.push(f)
        return f
      })
      return new Response(JSON.stringify(forward), { status: 201, headers: { 'content-type': 'application/json' } })
    },
  },
  {
    method: 'DELETE',
    path: '/forwards/:id',
    async handler(event, api) {
      const id = safeDecode(getRouterParam(event, 'id') ?? '')
      return changeForwards(api, (data) => {
        const f = findForward(data, { id })
        if (!f) throw new ForwardError(`no forward ${JSON.stringify(id)}`, 404)
        data.forwards = data.forwards.filter((x) => x !== f)
        return f
      })
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
    access: 'loopback',
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

/** The version in the package.json above this module (lib/ in a checkout, dist/lib/ when built). */
export function packageVersion(): string {
  for (const rel of ['../../package.json', '../../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version?: string }
      if (pkg.name === 'dualgate' && pkg.version) return pkg.version
    } catch { /* not there */ }
  }
  return '0.0.0'
}

function errorResponse(status: number, message: string, headers?: Headers): Response {
  const h = new Headers(headers)
  h.set('content-type', 'application/json')
  return new Response(JSON.stringify({ error: message }), { status, headers: h })
}

export function createApi(opts: ApiOptions): H3 {
  const config = typeof opts.config === 'function' ? opts.config : () => opts.config as Config
  const api: ApiContext = {
    store: opts.store,
    config,
    runner: opts.runner,
    sh: opts.sh ?? createSh({ dryRun: true, print: () => {} }),
    version: opts.version ?? packageVersion(),
  }
  const app = new H3({
    silent: true,
    onError(error) {
      if (error.unhandled || error.status >= 500 && !error.message) {
        opts.log?.error('api:', error.cause ?? error)
        return errorResponse(error.status, 'internal error')
      }
      return errorResponse(error.status, error.message, error.headers)
    },
  })
  const routes = [...ROUTES, ...(opts.routes ?? [])]
  routes.push(...routes.filter((r) => r.method === 'GET' && !routes.some((o) => o.method === 'HEAD' && o.path === r.path)).map((r): ApiRoute => ({ ...r, method: 'HEAD' })))
  for (const r of routes) {
    const access = r.access ?? (r.method === 'GET' || r.method === 'HEAD' ? 'public' : 'token')
    app.on(r.method, r.path, (event) => {
      authorize(event, access, api.config())
      return r.handler(event, api)
    })
  }
  // A known path with another method: 405 with the methods it has, rather than a 404.
  for (const p of new Set(routes.map((r) => r.path))) {
    const allow = routes.filter((r) => r.path === p).map((r) => r.method).join(', ')
    app.all(p, () => {
      throw new HTTPError({ status: 405, message: `method not allowed; this path takes ${allow}`, headers: { allow } })
    })
  }
  return app
}
