// The far ends of kernel tunnels given by name (a VPS's forward target, a home router's peer remote) are the
// forwarder job's to follow; the runner only watches the names, so no process starts every minute for a name
// that did not move. Each name's AAAA is asked every forwarderResolveInterval (c-ares, as for relay targets);
// when the job's record holds an address the answer no longer has, the watch says so, once per answer: a run
// that cannot follow is not asked for again until the answer changes (the job's schedule catches up). A
// failed or empty answer says nothing: the job keeps the last good address anyway.
import { parseIpv6 } from '../addr/ipv6.ts'
import type { Data } from '../core/schema.ts'
import { validAnswers, type Lookup } from './resolve.ts'

export interface WatchedName { iface: string; name: string }

/** A name whose answer no longer holds the tunnel's far end (`from`: undefined when the job never resolved it). */
export interface Moved { iface: string; name: string; from?: string; to: string[] }

export interface KernelWatch {
  /** Asks the names that are due; resolves to those that moved off their tunnel's recorded far end. */
  pass(names: WatchedName[], records: Data['forwarderTunnels'], lookup: Lookup, intervalS: number): Promise<Moved[]>
}

/** The tunnels whose far end is a name (an IPv6 literal needs no watching). */
export const namedFarEnds = (tunnels: { iface: string; far: string }[]): WatchedName[] =>
  tunnels.filter((t) => !parseIpv6(t.far)).map((t) => ({ iface: t.iface, name: t.far }))

export function createKernelWatch(now: () => number = Date.now): KernelWatch {
  const state = new Map<string, { nextAt: number; told?: string }>()
  return {
    async pass(names, records, lookup, intervalS) {
      const keys = new Set(names.map((n) => `${n.iface} ${n.name}`))
      for (const key of state.keys()) if (!keys.has(key)) state.delete(key)
      const moved: Moved[] = []
      await Promise.all(names.map(async ({ iface, name }) => {
        const key = `${iface} ${name}`
        const s = state.get(key) ?? { nextAt: 0 }
        state.set(key, s)
        if (now() < s.nextAt) return
        s.nextAt = now() + intervalS * 1000
        const answer: string[] = await lookup(name, 6).then((a) => validAnswers(a, 6).map((x) => x.address).sort(), () => [])
        if (answer.length === 0) return
        const from = records[iface]?.remote
        if (from && answer.includes(from)) {
          s.told = undefined
          return
        }
        if (s.told === answer.join(' ')) return
        s.told = answer.join(' ')
        moved.push({ iface, name, from, to: answer })
      }))
      return moved
    },
  }
}
