// Asking the runner's API from another process (diagnose): bounded in time, never throwing.
import type { Config } from './config.ts'

export function apiUrl(config: Pick<Config, 'apiHost' | 'apiPort'>, pathname: string): string {
  const { apiHost, apiPort } = config
  return `http://${apiHost.includes(':') ? `[${apiHost}]` : apiHost}:${apiPort}${pathname}`
}

/** The status and parsed body of GET `pathname`, or why there was none (ECONNREFUSED, a timeout). */
export async function apiGet(config: Pick<Config, 'apiHost' | 'apiPort' | 'apiToken'>, pathname: string): Promise<{ status: number; body: unknown } | string> {
  const headers: Record<string, string> = config.apiToken ? { authorization: `Bearer ${config.apiToken}` } : {}
  try {
    const res = await fetch(apiUrl(config, pathname), { headers, signal: AbortSignal.timeout(3000) })
    const text = await res.text()
    let body: unknown
    try { body = JSON.parse(text) } catch { body = text }
    return { status: res.status, body }
  } catch (err) {
    // fetch says only "fetch failed": the reason is its cause's (ECONNREFUSED, or a message).
    const cause = (err as { cause?: { code?: string; message?: string } }).cause
    return cause?.code ?? cause?.message ?? (err as Error).message
  }
}

export async function apiHealthy(config: Pick<Config, 'apiHost' | 'apiPort' | 'apiToken'>): Promise<boolean> {
  const r = await apiGet(config, '/health')
  return typeof r === 'object' && r.status === 200
}
