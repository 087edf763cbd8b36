// The relay rules of the relay-mode forwards, as a pure function of the forwards and their targets' current
// addresses: listen '4' is 0.0.0.0, '6' is :: (v6only), 'both' is both, an address is itself; a port range is
// one listener per port, mapped onto targetPort onwards; proto both is TCP and UDP. A forward whose target has
// no address yet gets no rules (it is reported, not guessed). The total is bounded: a forward that would take
// the relay past MAX_LISTENERS gets none, with an error naming it.
import type { RelayRule } from '../reach/relay.ts'
import type { RelayForward } from './config.ts'

export const MAX_LISTENERS = 4096

export interface RelayPlan {
  rules: RelayRule[]
  /** Forwards that got no rules, and why (their target unresolved is not one: see the resolver). */
  errors: Map<string, string>
}

export function listenHosts(listen: string): string[] {
  if (listen === '4') return ['0.0.0.0']
  if (listen === '6') return ['::']
  if (listen === 'both') return ['0.0.0.0', '::']
  return [listen]
}

/** How many listeners a forward takes. */
export function listenerCount(f: Pick<RelayForward, 'listen' | 'ports' | 'protos'>): number {
  return listenHosts(f.listen).length * (f.ports[1] - f.ports[0] + 1) * f.protos.length
}

export function relayPlan(forwards: RelayForward[], addresses: ReadonlyMap<string, string>, graceMs: number): RelayPlan {
  const rules: RelayRule[] = []
  const errors = new Map<string, string>()
  let total = 0
  for (const f of forwards) {
    if (!f.enabled) continue
    const n = listenerCount(f)
    if (total + n > MAX_LISTENERS) {
      errors.set(f.name, `forwards.${f.name}.port ${f.ports[0]}-${f.ports[1]}: ${n} listeners (ports x protocols x address families) would take the relay past ${MAX_LISTENERS}`)
      continue
    }
    total += n
    const address = addresses.get(f.name)
    if (!address) continue
    for (const host of listenHosts(f.listen)) {
      for (let port = f.ports[0]; port <= f.ports[1]; port++) {
        const target = { host: address, port: f.targetPort + port - f.ports[0] }
        for (const proto of f.protos) {
          rules.push({ listen: { host, port }, target, proto, tag: f.name, graceMs, ...(proto === 'tcp' && f.proxyProtocol ? { proxyProtocol: true } : {}) })
        }
      }
    }
  }
  return { rules, errors }
}
