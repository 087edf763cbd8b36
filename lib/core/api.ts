// The HTTP API in front of the store (h3 v2), as a frame: the routes come from the runner and the
// capabilities (lib/runner/api.ts), each naming its method, path, who may call it, and a handler that gets
// the event and the API context. Reading is open to whoever can reach the
// socket (it binds to loopback by default); anything that changes state needs `Authorization: Bearer
// <apiToken>`, and with no token configured it is refused. Errors are `{ "error": message }`.
import { createHash, timingSafeEqual } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { H3, HTTPError, type H3Event, type HTTPMethod } from 'h3'
import type { Config } from './config.ts'
import { createSh, type Sh } from './exec.ts'
import type { Logger } from './log.ts'
import type { HookEvent } from './event.ts'
import type { Store } from './store.ts'

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
 * public: anyone who can connect. token: a valid bearer token, from anywhere (loopback too: any local user
 * can connect there, and hooks deliver through the root-only spool instead).
 */
export type Access = 'public' | 'token'

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
  /** The routes: the runner's, each capability's (lib/runner/api.ts puts them together). */
  routes: ApiRoute[]
}

export const MAX_BODY = 64 * 1024

export function badRequest(message: string): HTTPError {
  return new HTTPError({ status: 400, message })
}

export function notFound(message: string): HTTPError {
  return new HTTPError({ status: 404, message })
}

/** The request body as JSON, at most MAX_BODY bytes: counted while it streams in, so a larger one is never held. */
export async function readJson(event: H3Event): Promise<unknown> {
  const tooLarge = () => new HTTPError({ status: 413, message: `body larger than ${MAX_BODY} bytes` })
  if (Number(event.req.headers.get('content-length') ?? 0) > MAX_BODY) throw tooLarge()
  const chunks: Uint8Array[] = []
  let size = 0
  const reader = event.req.body?.getReader()
  for (;;) {
    const next = await reader?.read()
    if (!next || next.done) break
    size += next.value.byteLength
    if (size > MAX_BODY) {
      await reader!.cancel().catch(() => {})
      throw tooLarge()
    }
    chunks.push(next.value)
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'))
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

function authorize(event: H3Event, access: Access, config: Config): void {
  if (access === 'public') return
  if (!config.apiToken) {
    throw new HTTPError({ status: 403, message: 'no API token is configured (option api_token, or DUALGATE_API_TOKEN): requests that change state are refused' })
  }
  const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(event.req.headers.get('authorization') ?? '')
  if (!m) throw new HTTPError({ status: 401, message: 'missing Authorization: Bearer <token>', headers: { 'www-authenticate': 'Bearer' } })
  if (!sameToken(m[1], config.apiToken)) throw new HTTPError({ status: 401, message: 'wrong API token', headers: { 'www-authenticate': 'Bearer' } })
}

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
  const routes = [...opts.routes]
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
