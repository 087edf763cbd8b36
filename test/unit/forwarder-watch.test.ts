// The runner's watch over the kernel tunnels' names: it asks each name when due, says a name moved only when
// the answer no longer holds the tunnel's recorded far end, and only once per answer; failures say nothing.
import { describe, expect, it } from 'vitest'
import type { ForwarderTunnelRecord } from '../../lib/core/schema.ts'
import { createKernelWatch, namedFarEnds } from '../../lib/forwarder/kernel-watch.ts'
import type { Answer, Lookup } from '../../lib/forwarder/resolve.ts'

const HOME = 'home.example.test'
const OLD = '2001:db8:200::2'
const NEW = '2001:db8:200::3'

function fakeDns(): { lookup: Lookup; set(answer: string[] | Error): void; asked: number } {
  let answer: string[] | Error = [OLD]
  const dns = {
    asked: 0,
    set: (a: string[] | Error) => { answer = a },
    lookup: async (_name: string, family: 4 | 6): Promise<Answer[]> => {
      dns.asked++
      if (family !== 6) throw Object.assign(new Error('no A'), { code: 'ENODATA' })
      if (answer instanceof Error) throw answer
      return answer.map((address) => ({ address, ttl: 60 }))
    },
  }
  return dns
}

const record = (remote: string | undefined) => ({ 'dgf-home': { side: 'forward', names: ['nas'], transport: 'ipip6', remote, routes: [], changedAt: '2026-12-01T00:00:00.000Z' } as unknown as ForwarderTunnelRecord })

describe('kernel tunnel name watch', () => {
  it('watches names only, not IPv6 literals', () => {
    expect(namedFarEnds([{ iface: 'dgf-home', far: HOME }, { iface: 'dgp-vps', far: '2001:db8:100::2' }])).toEqual([{ iface: 'dgf-home', name: HOME }])
  })

  it('says nothing while the answer holds the far end, once when it no longer does, and again only for a new answer', async () => {
    let t = 0
    const dns = fakeDns()
    const watch = createKernelWatch(() => t)
    const names = [{ iface: 'dgf-home', name: HOME }]
    expect(await watch.pass(names, record(OLD), dns.lookup, 60)).toEqual([])
    // Not due again before the interval.
    t += 30_000
    expect(await watch.pass(names, record(OLD), dns.lookup, 60)).toEqual([])
    expect(dns.asked).toBe(1)
    dns.set([NEW, OLD.replace('::2', '::9')])
    t += 30_000
    expect(await watch.pass(names, record(OLD), dns.lookup, 60)).toEqual([{ iface: 'dgf-home', name: HOME, from: OLD, to: [NEW, '2001:db8:200::9'] }])
    // The job did not follow (yet): the same answer is not said twice.
    t += 60_000
    expect(await watch.pass(names, record(OLD), dns.lookup, 60)).toEqual([])
    // It followed: quiet, and a later move back is said again.
    t += 60_000
    expect(await watch.pass(names, record(NEW), dns.lookup, 60)).toEqual([])
    dns.set([OLD])
    t += 60_000
    expect(await watch.pass(names, record(NEW), dns.lookup, 60)).toEqual([{ iface: 'dgf-home', name: HOME, from: NEW, to: [OLD] }])
  })

  it('says nothing on a failed, empty or invalid answer; a tunnel never resolved is said once its name answers', async () => {
    let t = 0
    const dns = fakeDns()
    const watch = createKernelWatch(() => t)
    const names = [{ iface: 'dgf-home', name: HOME }]
    for (const bad of [Object.assign(new Error('timeout'), { code: 'ETIMEOUT' }), [], ['not an address', '198.18.0.1']]) {
      dns.set(bad)
      expect(await watch.pass(names, record(OLD), dns.lookup, 60)).toEqual([])
      t += 60_000
    }
    dns.set([NEW])
    expect(await watch.pass(names, {}, dns.lookup, 60)).toEqual([{ iface: 'dgf-home', name: HOME, from: undefined, to: [NEW] }])
  })
})
