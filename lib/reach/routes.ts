// Port forwards over the API. A change is written to the store and refresh-proxies applies it; a refused
// change writes nothing.
import { getRouterParam, HTTPError } from 'h3'
import { badRequest, readJson, safeDecode, type ApiContext, type ApiRoute } from '../core/api.ts'
import { addForwards, ForwardError, removeForward, type ForwardRequest } from './forwards.ts'

async function changeForwards<T>(api: ApiContext, work: () => Promise<T>): Promise<T> {
  let result: T
  try {
    result = await work()
  } catch (err) {
    if (err instanceof ForwardError) throw new HTTPError({ status: err.status, message: err.message })
    throw err
  }
  api.runner?.trigger('refresh-proxies', 'api')
  return result
}

export const forwardRoutes: ApiRoute[] = [
  { method: 'GET', path: '/forwards', handler: async (_e, api) => (await api.store.snapshot()).forwards },
  {
    method: 'POST',
    path: '/forwards',
    async handler(event, api) {
      const body = await readJson(event)
      if (typeof body !== 'object' || body === null || Array.isArray(body)) throw badRequest('expected a JSON object { gatewayPort, deviceIp, devicePort, proto?, family? }')
      const [forward] = await changeForwards(api, () => addForwards(api.store, api.config(), [body as ForwardRequest]))
      return new Response(JSON.stringify(forward), { status: 201, headers: { 'content-type': 'application/json' } })
    },
  },
  {
    method: 'DELETE',
    path: '/forwards/:id',
    handler: (event, api) => changeForwards(api, () => removeForward(api.store, { id: safeDecode(getRouterParam(event, 'id') ?? '') })),
  },
]
