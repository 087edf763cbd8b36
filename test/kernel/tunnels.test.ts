// Kernel-lab proofs (runs in the VM, see test/vm/README.md): the tunnels dualgate is to configure,
// between the lab's router and its upstream, carry ICMP and TCP; netem delays what ping measures.
// Each tunnel's first test creates it, so a kernel without the module fails there (and the tests
// after it fail for want of the tunnel). The HTTP server on the upstream answers with the peer
// address it saw: the router's address on the tunnel, which exists nowhere else.
import { generateKeyPairSync } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLab, type Lab } from '../lab/lab.ts'

// The router's WAN IPv6 in every lab with IPv6 (lab.ts).
const ROUTER_V6 = '2001:db8:1::2'

let lab: Lab

beforeAll(async () => {
  lab = await createLab({ mode: 'dual', devices: 0 })
})

afterAll(async () => {
  await lab?.teardown()
})

/** Sets up the router's end of a tunnel, then the upstream's. */
async function eachEnd(f: (ns: string, self: 'router' | 'upstream') => Promise<unknown>): Promise<void> {
  await f(lab.router.ns, 'router')
  await f(lab.upstream.ns, 'upstream')
}

async function removeLink(name: string): Promise<void> {
  for (const ns of [lab.router.ns, lab.upstream.ns]) await lab.exec(ns, 'ip', ['link', 'del', name], { nothrow: true })
}

/** Pings from the router; returns the round-trip times in ms. Fails unless every reply came back. */
async function ping(dst: string, count = 3, timeoutSecs = 10): Promise<number[]> {
  const r = await lab.exec(lab.router.ns, 'ping', ['-n', '-c', String(count), '-i', '0.2', '-w', String(timeoutSecs), dst], {
    nothrow: true,
    timeoutMs: (timeoutSecs + 5) * 1000,
  })
  const rtts = [...r.stdout.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]))
  if (r.code !== 0 || rtts.length !== count) throw new Error(`ping ${dst}: ${rtts.length} of ${count} replies (exit ${r.code})\n${r.stdout}${r.stderr}`)
  return rtts
}

/** The upstream's HTTP server, fetched from the router: it names the peer address it saw. */
async function peerSeenUpstream(host: string): Promise<string> {
  const url = host.includes(':') ? `http://[${host}]/` : `http://${host}/`
  return (await lab.fetch(lab.router.ns, url, 10_000)).trim()
}

describe('sit (6in4): IPv6 in IPv4', () => {
  const addr = { router: '2001:db8:100::2', upstream: '2001:db8:100::1' }
  afterAll(() => removeLink('tun6in4'))

  it('is created at both ends over the IPv4 link', async () => {
    await eachEnd(async (ns, self) => {
      const [local, remote] = self === 'router' ? [lab.router.wanIpv4, lab.upstream.ipv4] : [lab.upstream.ipv4, lab.router.wanIpv4]
      await lab.exec(ns, 'ip', ['link', 'add', 'tun6in4', 'type', 'sit', 'local', local, 'remote', remote, 'ttl', '64'])
      await lab.exec(ns, 'ip', ['addr', 'add', `${addr[self]}/64`, 'dev', 'tun6in4', 'nodad'])
      await lab.exec(ns, 'ip', ['link', 'set', 'tun6in4', 'up'])
    })
  })

  it('carries ICMPv6', async () => {
    await ping(addr.upstream)
  })

  it('carries TCP: the upstream sees the router tunnel address', async () => {
    expect(await peerSeenUpstream(addr.upstream)).toBe(`you are ${addr.router}`)
  })
})

describe('ip6tnl mode ipip6 (4in6): IPv4 in IPv6', () => {
  const addr = { router: '198.18.100.2', upstream: '198.18.100.1' }
  afterAll(() => removeLink('tun4in6'))

  it('is created at both ends over the IPv6 link', async () => {
    await eachEnd(async (ns, self) => {
      const [local, remote] = self === 'router' ? [ROUTER_V6, lab.upstream.ipv6] : [lab.upstream.ipv6, ROUTER_V6]
      await lab.exec(ns, 'ip', ['link', 'add', 'tun4in6', 'type', 'ip6tnl', 'mode', 'ipip6', 'local', local, 'remote', remote])
      const peer = self === 'router' ? addr.upstream : addr.router
      await lab.exec(ns, 'ip', ['addr', 'add', addr[self], 'peer', `${peer}/32`, 'dev', 'tun4in6'])
      await lab.exec(ns, 'ip', ['link', 'set', 'tun4in6', 'up'])
    })
  })

  it('carries ICMP', async () => {
    await ping(addr.upstream)
  })

  it('carries TCP: the upstream sees the router tunnel address', async () => {
    expect(await peerSeenUpstream(addr.upstream)).toBe(`you are ${addr.router}`)
  })
})

describe('kernel WireGuard over IPv6, IPv4 and IPv6 inside', () => {
  const addr = {
    router: { v4: '198.18.101.2', v6: '2001:db8:101::2' },
    upstream: { v4: '198.18.101.1', v6: '2001:db8:101::1' },
  }
  const port = { router: 51821, upstream: 51820 }

  function keyPair(): { priv: string; pub: string } {
    const { privateKey, publicKey } = generateKeyPairSync('x25519')
    const raw = (k: typeof privateKey, field: 'd' | 'x') => Buffer.from(k.export({ format: 'jwk' })[field] ?? '', 'base64url').toString('base64')
    return { priv: raw(privateKey, 'd'), pub: raw(publicKey, 'x') }
  }

  afterAll(() => removeLink('wg0'))

  it('is created at both ends with wg', async () => {
    const keys = { router: keyPair(), upstream: keyPair() }
    const outer = { router: ROUTER_V6, upstream: lab.upstream.ipv6 }
    await eachEnd(async (ns, self) => {
      const other = self === 'router' ? 'upstream' : 'router'
      const keyFile = join(lab.dir, `wg-${self}.key`)
      writeFileSync(keyFile, `${keys[self].priv}\n`, { mode: 0o600 })
      await lab.exec(ns, 'ip', ['link', 'add', 'wg0', 'type', 'wireguard'])
      await lab.exec(ns, 'wg', [
        'set', 'wg0', 'private-key', keyFile, 'listen-port', String(port[self]),
        'peer', keys[other].pub, 'endpoint', `[${outer[other]}]:${port[other]}`,
        'allowed-ips', `${addr[other].v4}/32,${addr[other].v6}/128`,
      ])
      await lab.exec(ns, 'ip', ['addr', 'add', `${addr[self].v4}/24`, 'dev', 'wg0'])
      await lab.exec(ns, 'ip', ['addr', 'add', `${addr[self].v6}/64`, 'dev', 'wg0', 'nodad'])
      await lab.exec(ns, 'ip', ['link', 'set', 'wg0', 'up'])
    })
  })

  it('carries ICMP and ICMPv6, after a handshake', async () => {
    await ping(addr.upstream.v4)
    await ping(addr.upstream.v6)
    const r = await lab.exec(lab.router.ns, 'wg', ['show', 'wg0', 'latest-handshakes'])
    expect(Number(r.stdout.trim().split(/\s+/)[1])).toBeGreaterThan(0)
  })

  it('carries TCP: the upstream sees the router tunnel addresses', async () => {
    expect(await peerSeenUpstream(addr.upstream.v4)).toBe(`you are ${addr.router.v4}`)
    expect(await peerSeenUpstream(addr.upstream.v6)).toBe(`you are ${addr.router.v6}`)
  })
})

describe('netem', () => {
  const delayMs = 150
  afterAll(() => lab.exec(lab.router.ns, 'tc', ['qdisc', 'del', 'dev', 'eth0', 'root'], { nothrow: true }))

  it('adds a delay on the router WAN that ping measures, and none once removed', async () => {
    const before = await ping(lab.upstream.ipv4)
    expect(Math.max(...before)).toBeLessThan(delayMs)
    await lab.exec(lab.router.ns, 'tc', ['qdisc', 'add', 'dev', 'eth0', 'root', 'netem', 'delay', `${delayMs}ms`])
    const delayed = await ping(lab.upstream.ipv4)
    expect(Math.min(...delayed)).toBeGreaterThanOrEqual(delayMs)
    expect(Math.max(...delayed)).toBeLessThan(delayMs * 4)
    await lab.exec(lab.router.ns, 'tc', ['qdisc', 'del', 'dev', 'eth0', 'root'])
    expect(Math.max(...(await ping(lab.upstream.ipv4)))).toBeLessThan(delayMs)
  })
})
