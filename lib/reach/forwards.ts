// Port forwards as people ask for them (CLI and API): validated against the LAN, the other forwards and the
// router's own ports before anything is written, so a refused request changes nothing.
import { randomBytes } from 'node:crypto'
import type { Config } from '../core/config.ts'
import { isHostIn, parseCidr4 } from '../addr/ipv4.ts'
import { formatIpv6, parseIpv6 } from '../addr/ipv6.ts'
import { listeningSockets, type ListeningSocket } from '../net/sockets.ts'
import type { Data, Forward } from '../core/schema.ts'
import type { Store } from '../core/store.ts'

export interface ForwardRequest { gatewayPort: unknown; deviceIp: unknown; devicePort: unknown; proto?: unknown; family?: unknown }

export class ForwardError extends Error {
  /** 400: the request is wrong; 409: it clashes with an existing forward; 404: nothing to remove. */
  readonly status: number
  constructor(message: string, status = 400) {
    super(message)
    this.status = status
  }
}

/** The original gateway's per-device defaults: gateway port -> device port. */
export const QUICK_DEVICE_PORTS: [number, number][] = [[8080, 80], [2323, 23], [8443, 443], [2222, 22]]

function port(value: unknown, name: string): number {
  const n = typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 65535) throw new ForwardError(`${name} must be a port number from 1 to 65535, not ${JSON.stringify(value)}`)
  return n
}

const families = (f: Forward['family']) => (f === 'both' ? ['4', '6'] : [f])

const canonical = (address: string) => { const b = parseIpv6(address); return b ? formatIpv6(b) : address }
const WILDCARD = ['0.0.0.0', '::']

/**
 * Why `proto/port` belongs to the router itself, or undefined. The API's port is refused even while the runner
 * is down; otherwise every serving socket counts except the relay's own (a forward there would not shadow a
 * service of the router): those on a device's WAN address, and those on one of the router's addresses at the
 * port of an IPv6 forward, which the relay listens on for it.
 */
export function routerPortProblem(data: Data, config: Pick<Config, 'apiPort'>, proto: ListeningSocket['proto'], port: number, listening: ListeningSocket[]): string | undefined {
  const taken = "forwards cannot take the router's own ports"
  if (proto === 'tcp' && port === config.apiPort) return `gateway port tcp/${port} is the dualgate API's port (apiPort); ${taken}`
  const deviceAddresses = new Set(Object.values(data.devices).flatMap((d) => [...(d.wanIpv4 ? [d.wanIpv4] : []), ...d.wanIpv6.map(canonical)]))
  const relayed = data.forwards.some((f) => f.proto === proto && f.gatewayPort === port && f.family !== '4')
  const relays = (s: ListeningSocket) => deviceAddresses.has(s.address) || (relayed && !WILDCARD.includes(s.address))
  const held = listening.find((s) => s.proto === proto && s.port === port && !relays(s))
  if (held) return `gateway port ${proto}/${port} is in use on this router (a ${proto === 'tcp' ? 'listening' : 'bound'} socket on ${held.address}); ${taken}`
  return undefined
}

/**
 * A new forward, or a ForwardError saying why not. `listening`: the router's serving sockets (net/sockets.ts).
 * Does not change `data`.
 */
export function checkForward(data: Data, config: Config, req: ForwardRequest, listening: ListeningSocket[], now = new Date()): Forward {
  const gatewayPort = port(req.gatewayPort, 'gateway port')
  const devicePort = port(req.devicePort, 'device port')
  const proto = req.proto ?? 'tcp'
  if (proto !== 'tcp' && proto !== 'udp') throw new ForwardError(`protocol must be tcp or udp, not ${JSON.stringify(proto)}`)
  const family = String(req.family ?? 'both')
  if (family !== '4' && family !== '6' && family !== 'both') throw new ForwardError(`family must be 4, 6 or both, not ${JSON.stringify(req.family)}`)
  const deviceIp = typeof req.deviceIp === 'string' ? req.deviceIp : ''
  if (!isHostIn(parseCidr4(config.lanAddr), deviceIp)) throw new ForwardError(`device address ${JSON.stringify(req.deviceIp)} is not a host on the LAN ${config.lanAddr}`)
  if (!Object.values(data.devices).some((d) => d.lanIpv4 === deviceIp && d.status !== 'gone')) throw new ForwardError(`no known device has the address ${deviceIp}`)
  const clash = data.forwards.find((f) => f.gatewayPort === gatewayPort && f.proto === proto && families(f.family).some((x) => families(family as Forward['family']).includes(x)))
  if (clash) throw new ForwardError(`gateway port ${proto}/${gatewayPort} is already forwarded to ${clash.deviceIp}:${clash.devicePort} (forward ${clash.id})`, 409)
  const offered = family !== '4' && data.ports.find((p) => p.port === gatewayPort && p.proto === proto)
  if (offered) throw new ForwardError(`gateway port ${proto}/${gatewayPort} offers a local service on the tunnels' IPv6 (port ${offered.id}); an IPv6 forward would listen there too`, 409)
  const own = routerPortProblem(data, config, proto, gatewayPort, listening)
  if (own) throw new ForwardError(own, 409)
  return { id: randomBytes(4).toString('hex'), gatewayPort, deviceIp, devicePort, proto, family: family as Forward['family'], createdAt: now.toISOString() }
}

/** Finds a forward by id, or by its gateway port, device address and device port. */
export function findForward(data: Data, key: { id?: string; gatewayPort?: unknown; deviceIp?: unknown; devicePort?: unknown }): Forward | undefined {
  if (key.id !== undefined) return data.forwards.find((f) => f.id === key.id)
  return data.forwards.find((f) => String(f.gatewayPort) === String(key.gatewayPort) && f.deviceIp === key.deviceIp && String(f.devicePort) === String(key.devicePort))
}

/** Checks and adds forwards in one store write: all of them, or (ForwardError) none. */
export async function addForwards(store: Store, config: Config, requests: ForwardRequest[]): Promise<Forward[]> {
  const listening = [...await listeningSockets('tcp'), ...await listeningSockets('udp')]
  return store.update((data) => {
    const added: Forward[] = []
    for (const req of requests) {
      const f = checkForward({ ...data, forwards: [...data.forwards, ...added] }, config, req, listening)
      added.push(f)
    }
    data.forwards.push(...added)
    return added
  })
}

/** Removes the forward `key` finds; a ForwardError (404) when there is none. */
export function removeForward(store: Store, key: Parameters<typeof findForward>[1]): Promise<Forward> {
  return store.update((data) => {
    const f = findForward(data, key)
    if (!f) throw new ForwardError(`no forward ${key.id ?? `${key.gatewayPort} ${key.deviceIp} ${key.devicePort}`}`, 404)
    data.forwards = data.forwards.filter((x) => x !== f)
    return f
  })
}
