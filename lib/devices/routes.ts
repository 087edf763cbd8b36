// The devices' API: the gateway summary and the device table (read-only; devices change through jobs).
import { getQuery, getRouterParam } from 'h3'
import { badRequest, notFound, safeDecode, type ApiRoute } from '../core/api.ts'
import type { Sh } from '../core/exec.ts'
import { lastMatching, parseEntry, readLogLines } from '../core/log-view.ts'
import type { DeviceStatus } from '../core/schema.ts'
import { listLinks, type LinkInfo } from '../net/ip.ts'
import { normalizeMac } from '../addr/mac.ts'
import { listDevices, statusFilterError } from './state.ts'
import { gatewayStatus } from './status.ts'

/** The most log lines GET /devices/:mac/log returns. */
export const MAX_LOG_LINES = 1000

/** The MAC of the route's :mac, in any spelling, or a 400. */
function macParam(event: Parameters<ApiRoute['handler']>[0]): string {
  const raw = safeDecode(getRouterParam(event, 'mac') ?? '')
  const mac = normalizeMac(raw)
  if (!mac) throw badRequest(`not a MAC address: ${JSON.stringify(raw)}`)
  return mac
}

/** How long one `ip` listing serves /status: a burst of requests starts one process, not one each. */
const LINKS_FOR_MS = 2000
let links: { at: number; list: Promise<LinkInfo[]> } | undefined

function recentLinks(sh: Sh): Promise<LinkInfo[]> {
  if (!links || Date.now() - links.at > LINKS_FOR_MS) {
    const list = listLinks(sh)
    links = { at: Date.now(), list }
    // A failed listing is not kept for the next request.
    list.catch(() => { if (links?.list === list) links = undefined })
  }
  return links.list
}

export const deviceRoutes: ApiRoute[] = [
  {
    method: 'GET',
    path: '/status',
    handler: async (_e, api) => gatewayStatus({ config: api.config(), data: await api.store.snapshot(), links: await recentLinks(api.sh) }),
  },
  {
    method: 'GET',
    path: '/devices',
    async handler(event, api) {
      const { status } = getQuery(event) as { status?: unknown }
      const why = statusFilterError(status)
      if (why) throw badRequest(why)
      return listDevices(await api.store.snapshot(), status as DeviceStatus | undefined)
    },
  },
  {
    method: 'GET',
    path: '/devices/:mac',
    async handler(event, api) {
      const mac = macParam(event)
      const device = (await api.store.snapshot()).devices[mac]
      if (!device) throw notFound(`no device ${mac}`)
      return device
    },
  },
  {
    method: 'GET',
    path: '/devices/:mac/log',
    // The last log lines that name the device (the log of a device the store forgot is still its log).
    async handler(event, api) {
      const mac = macParam(event)
      const { lines = '50' } = getQuery(event) as { lines?: unknown }
      if (typeof lines !== 'string' || !/^\d{1,4}$/.test(lines) || Number(lines) > MAX_LOG_LINES) throw badRequest(`lines takes a number from 0 to ${MAX_LOG_LINES}`)
      const c = api.config()
      return { mac, lines: lastMatching(await readLogLines(c.dataDir, c.logFiles), { mac }, Number(lines)).map(parseEntry) }
    },
  },
]
