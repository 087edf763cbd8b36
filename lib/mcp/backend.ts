// Where the MCP tools get their answers: the runner's own API, so that a tool answers exactly what the same
// route does and passes the same checks. Inside the runner (the socket) the request goes to the h3 app in
// process; in `gateway-mcp` (stdio) it goes over HTTP to the runner's API. Requests that change state carry
// the configured apiToken and the API checks it as it checks anyone's: with no token configured they are
// refused there, never waved through here.
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { apiUrl } from '../core/api-client.ts'
import type { Config } from '../core/config.ts'
import { emptyData, parseData, type Data } from '../core/schema.ts'
import type { Store } from '../core/store.ts'

/** A tool's failure, said to the client as a result with isError (not a protocol error). */
export class ToolError extends Error {}

export type ApiMethod = 'GET' | 'POST' | 'DELETE'
export interface ApiAnswer { status: number; body: unknown }

export interface Backend {
  config(): Config
  /** A route of the runner's API; methods other than GET carry the configured token. */
  api(method: ApiMethod, pathname: string, opts?: { body?: unknown; signal?: AbortSignal }): Promise<ApiAnswer>
  /** The store's document, for what no route serves (the recent runs of a job). */
  data(): Promise<Data>
}

/** The largest API answer a tool takes (a device table of thousands is a few MB). */
export const MAX_ANSWER_BYTES = 16 << 20
export const API_TIMEOUT_MS = 30_000

function request(base: string, config: Config, method: ApiMethod, pathname: string, body: unknown, signal: AbortSignal): Request {
  const headers = new Headers()
  if (method !== 'GET' && config.apiToken) headers.set('authorization', `Bearer ${config.apiToken}`)
  if (body !== undefined) headers.set('content-type', 'application/json')
  return new Request(`${base}${pathname}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal })
}

/** The body, read no further than MAX_ANSWER_BYTES; JSON when it parses, else the text. */
async function readAnswer(res: Response): Promise<ApiAnswer> {
  const chunks: Uint8Array[] = []
  let size = 0
  const reader = res.body?.getReader()
  for (;;) {
    const next = await reader?.read()
    if (!next || next.done) break
    size += next.value.byteLength
    if (size > MAX_ANSWER_BYTES) {
      await reader!.cancel().catch(() => {})
      throw new ToolError(`the API's answer is larger than ${MAX_ANSWER_BYTES} bytes`)
    }
    chunks.push(next.value)
  }
  const text = Buffer.concat(chunks).toString('utf8')
  try {
    return { status: res.status, body: JSON.parse(text) }
  } catch {
    return { status: res.status, body: text }
  }
}

/** `work`, or a rejection as soon as `signal` aborts (the in-process app does not watch the request's signal). */
function until<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason)
  return new Promise<T>((resolve, reject) => {
    const stop = () => reject(signal.reason)
    signal.addEventListener('abort', stop, { once: true })
    work.then(resolve, reject).finally(() => signal.removeEventListener('abort', stop))
  })
}

function timeoutSignal(signal?: AbortSignal): AbortSignal {
  const timeout = AbortSignal.timeout(API_TIMEOUT_MS)
  return signal ? AbortSignal.any([signal, timeout]) : timeout
}

function timedOut(err: unknown, what: string): never {
  if ((err as Error)?.name === 'TimeoutError') throw new ToolError(`${what} did not answer within ${API_TIMEOUT_MS / 1000} s`)
  throw err
}

/** Inside the runner: the h3 app itself, its routes and its checks, without a trip through the network. */
export function inProcessBackend(o: { config(): Config; store: Store; fetch(request: Request): Promise<Response> }): Backend {
  return {
    config: o.config,
    async api(method, pathname, opts = {}) {
      const signal = timeoutSignal(opts.signal)
      try {
        return await until(o.fetch(request('http://runner.invalid', o.config(), method, pathname, opts.body, signal)).then(readAnswer), signal)
      } catch (err) {
        return timedOut(err, `${method} ${pathname}`)
      }
    },
    data: () => o.store.snapshot(),
  }
}

/** Outside the runner (`gateway-mcp`): the runner's HTTP API at apiHost:apiPort, and the store file read directly. */
export function httpBackend(config: Config): Backend {
  const base = apiUrl(config, '')
  return {
    config: () => config,
    async api(method, pathname, opts = {}) {
      const signal = timeoutSignal(opts.signal)
      let res: Response
      try {
        res = await fetch(request(base, config, method, pathname, opts.body, signal))
      } catch (err) {
        if ((err as Error)?.name === 'TimeoutError' || (err as Error)?.name === 'AbortError') return timedOut(err, `the runner's API at ${base}`)
        const code = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message
        throw new ToolError(`the runner's API at ${base} is not answering (${code}): is the runner running?`)
      }
      return readAnswer(res)
    },
    // Read-only: a damaged store is the runner's to repair, not a reader's.
    async data() {
      const file = path.join(config.dataDir, 'dualgate.json')
      let text: string
      try {
        text = await readFile(file, 'utf8')
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code
        if (code === 'ENOENT') return emptyData()
        throw new ToolError(`cannot read the store ${file} (${code ?? (err as Error).message})${code === 'EACCES' ? ': it is root\'s; run gateway-mcp as root' : ''}`)
      }
      try {
        return parseData(text)
      } catch (err) {
        throw new ToolError(`the store ${file} is not valid (${(err as Error).message}); diagnose tells more`)
      }
    },
  }
}
