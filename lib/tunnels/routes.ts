// The proxy mode's port maps over the API (lib/tunnels/ports.ts). A change is written to the store, which the
// relay follows; a refused change writes nothing.
import { getRouterParam, HTTPError } from 'h3'
import { badRequest, readJson, safeDecode, type ApiRoute } from '../core/api.ts'
import { addPort, PortError, removePort, type PortRequest } from './ports.ts'

async function changePorts<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work()
  } catch (err) {
    if (err instanceof PortError) throw new HTTPError({ status: err.status, message: err.message })
    throw err
  }
}

export const portRoutes: ApiRoute[] = [
  { method: 'GET', path: '/ports', handler: async (_e, api) => (await api.store.snapshot()).ports },
  {
    method: 'POST',
    path: '/ports',
    async handler(event, api) {
      const body = await readJson(event)
      if (typeof body !== 'object' || body === null || Array.isArray(body)) throw badRequest('expected a JSON object { port, targetPort?, proto? }')
      const port = await changePorts(() => addPort(api.store, api.config(), body as PortRequest))
      return new Response(JSON.stringify(port), { status: 201, headers: { 'content-type': 'application/json' } })
    },
  },
  {
    method: 'DELETE',
    path: '/ports/:id',
    handler: (event, api) => changePorts(() => removePort(api.store, safeDecode(getRouterParam(event, 'id') ?? ''))),
  },
]
