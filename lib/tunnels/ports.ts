// The `proxy` exposure mode: ports of this host's own IPv4 services (127.0.0.1:targetPort) offered on each
// tunnel's own IPv6 address through the relay, for applications that cannot listen on IPv6 themselves.
// (`kernel` mode needs nothing: an application that binds the tunnel's address is reached directly.)
import { randomBytes } from 'node:crypto'
import type { Config } from '../core/config.ts'
import type { Data, Port } from '../core/schema.ts'
import type { Store } from '../core/store.ts'
import type { RelayRule } from '../reach/relay.ts'

export const PORT_TARGET = '127.0.0.1'

export class PortError extends Error {
  /** 400: the request is wrong; 409: the port is taken; 404: nothing to remove. */
  readonly status: number
  constructor(message: string, status = 400) {
    super(message)
    this.status = status
  }
}

export interface PortRequest { port?: unknown; targetPort?: unknown; proto?: unknown }

function portNumber(value: unknown, name: string): number {
  const n = typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 65535) throw new PortError(`${name} must be a port number from 1 to 65535, not ${JSON.stringify(value)}`)
  return n
}

/** A new port map, or a PortError saying why not. Does not change `data`. */
export function checkPort(data: Data, config: Pick<Config, 'apiPort'>, req: PortRequest, now = new Date()): Port {
  const port = portNumber(req.port, 'port')
  const targetPort = req.targetPort === undefined ? port : portNumber(req.targetPort, 'targetPort')
  const proto = req.proto ?? 'tcp'
  if (proto !== 'tcp' && proto !== 'udp') throw new PortError(`proto must be tcp or udp, not ${JSON.stringify(proto)}`)
  const same = data.ports.find((p) => p.port === port && p.proto === proto)
  if (same) throw new PortError(`${proto}/${port} is already offered (port ${same.id} to ${PORT_TARGET}:${same.targetPort})`, 409)
  const forward = data.forwards.find((f) => f.gatewayPort === port && f.proto === proto && f.family !== '4')
  if (forward) throw new PortError(`${proto}/${port} is an IPv6 port forward to ${forward.deviceIp}:${forward.devicePort} (forward ${forward.id})`, 409)
  if (proto === 'tcp' && port === config.apiPort) throw new PortError(`tcp/${port} is the dualgate API's port (apiPort)`, 409)
  return { id: randomBytes(4).toString('hex'), port, proto, targetPort, createdAt: now.toISOString() }
}

export function addPort(store: Store, config: Config, req: PortRequest): Promise<Port> {
  return store.update((d) => {
    const p = checkPort(d, config, req)
    d.ports.push(p)
    return p
  })
}

export function removePort(store: Store, id: string): Promise<Port> {
  return store.update((d) => {
    const i = d.ports.findIndex((p) => p.id === id)
    if (i < 0) throw new PortError(`no port ${JSON.stringify(id)}`, 404)
    return d.ports.splice(i, 1)[0]
  })
}

/** The relay's listeners for the port maps: each on every tunnel address given. */
export function portRules(ports: Port[], tunnelIpv6: string[]): RelayRule[] {
  return ports.flatMap((p) => tunnelIpv6.map((host) => ({ listen: { host, port: p.port }, target: { host: PORT_TARGET, port: p.targetPort }, proto: p.proto })))
}
