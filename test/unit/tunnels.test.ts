// Tunnels' pure parts: the config section, wg-quick files and `wg` output, ping output, health with its
// hysteresis and score, and the failover decision.
import { execFileSync } from 'node:child_process'
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { eui64Address } from '../../lib/addr/ipv6.ts'
import { ConfigError, DEFAULT_PROBES, loadConfig } from '../../lib/core/config.ts'
import type { Sh } from '../../lib/core/exec.ts'
import { createLogger } from '../../lib/core/log.ts'
import { emptyData } from '../../lib/core/schema.ts'
import { openStore } from '../../lib/core/store.ts'
import { parsePing } from '../../lib/net/ping.ts'
import { parseWgDump, wgPublicKey } from '../../lib/net/wireguard.ts'
import { deviceTunnelAddresses, relayRules } from '../../lib/reach/relay-plan.ts'
import { configuredTunnels, parseWgQuick, tunnelsProblem, WgConfigError, wgSetconfText } from '../../lib/tunnels/config.ts'
import { choosePrimary, type Candidate } from '../../lib/tunnels/failover.ts'
import { checkPort, PortError, portRules } from '../../lib/tunnels/ports.ts'
import { reconcileTunnels } from '../../lib/tunnels/reconcile.ts'
import { latencyPenalty, newHealth, nextHealth, stats, verdict, type Check, type Health, type Thresholds } from '../../lib/tunnels/health.ts'

const dir = mkdtempSync(path.join(tmpdir(), 'dg-tunnels-'))
const noUci = path.join(dir, 'no-uci')
const file = (name: string, text: string) => {
  const p = path.join(dir, name)
  writeFileSync(p, text)
  return p
}
const loadUci = (uci: string) => loadConfig({ uciFile: file(`u${Math.random()}`, uci), env: {} }).config
const loadJson = (json: unknown) => loadConfig({ uciFile: noUci, env: { DUALGATE_CONFIG: file(`j${Math.random()}.json`, JSON.stringify(json)) } }).config

const KEY_A = 'yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk='
const KEY_B = 'xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg='

describe('tunnel sections', () => {
  it('reads a 6in4 tunnel from UCI with its defaults', () => {
    const [t] = configuredTunnels(loadUci("config tunnel 'he'\n option type '6in4'\n option iface 'hetun'\n option remote '198.18.0.1'\n list address '2001:db8:100::2/64'\n option prefix '2001:db8:200::/48'\n"))
    expect(t).toEqual({
      name: 'he', type: '6in4', iface: 'hetun', enabled: true, priority: 0, probe: DEFAULT_PROBES, prefix: '2001:db8:200::/48',
      remote: '198.18.0.1', local: 'auto', address: ['2001:db8:100::2/64'], mtu: 1480, ttl: 64, he: undefined,
    })
  })

  it('reads a WireGuard tunnel from JSON, with key files and one peer', () => {
    const [t] = configuredTunnels(loadJson({ tunnels: [{ name: 'wg', type: 'wireguard', iface: 'wg0', privateKeyFile: '/etc/dualgate/wg.key', peerPublicKey: KEY_A, endpoint: '[2001:db8::1]:51820', address: ['2001:db8:a::2/64'], priority: 1, probe: ['2001:db8:ff::10'] }] }))
    expect(t).toMatchObject({ type: 'wireguard', mtu: 1420, backend: 'auto', priority: 1, source: { privateKeyFile: '/etc/dualgate/wg.key', peer: { publicKey: KEY_A, endpoint: '[2001:db8::1]:51820', allowedIps: ['::/0'], persistentKeepalive: 25 }, listenPort: 0 } })
  })

  it.each([
    ["config tunnel 'he'\n option type '6in4'\n option iface 'he'\n list address '2001:db8::2/64'\n", /needs remote/],
    ["config tunnel 'he'\n option type '6in4'\n option iface 'he'\n option remote '198.18.0.1'\n", /needs address/],
    ["config tunnel 'he'\n option type '6in4'\n option iface 'he'\n option remote '198.18.0.1'\n list address '10.0.0.2/30'\n", /IPv6 only/],
    ["config tunnel 'he'\n option type '6in4'\n option iface 'he'\n option remote '198.18.0.1'\n list address '2001:db8::2/64'\n option he_tunnel_id '123'\n", /he_tunnel_id, he_username and he_key_file together/],
    ["config tunnel 'he'\n option type '6in4'\n option iface 'he'\n option remote '198.18.0.1'\n list address '2001:db8::2/64'\n option endpoint '[2001:db8::1]:51820'\n", /endpoint does not apply to a 6in4 tunnel/],
    ["config tunnel 'he'\n option type '6in4'\n option iface 'he'\n option remote '198.18.0.300'\n list address '2001:db8::2/64'\n", /tunnels\.he\.remote/],
    ["config tunnel 'he'\n option type '6in4'\n option iface 'he'\n option remote '198.18.0.1'\n list address '2001:db8::2/64'\n option mtu '1000'\n", /tunnels\.he\.mtu/],
    ["config tunnel 'x'\n option type 'external'\n option iface 'x'\n list probe 'example.com'\n", /tunnels\.x\.probe/],
    ["config tunnel 'x'\n option type 'gre'\n option iface 'x'\n", /tunnels\.x\.type/],
    ["config tunnel 'x'\n option type 'external'\n option iface 'a b'\n", /tunnels\.x\.iface/],
    ["config tunnel 'w'\n option type 'wireguard'\n option iface 'wg0'\n", /needs wg_config, or private_key_file/],
    ["config tunnel 'w'\n option type 'wireguard'\n option iface 'wg0'\n option wg_config '/etc/wg.conf'\n option endpoint 'vpn:51820'\n", /either wg_config or/],
    ["config tunnel 'w'\n option type 'wireguard'\n option iface 'wg0'\n option private_key_file '/k'\n option endpoint 'vpn:51820'\n option peer_public_key 'short'\n", /not a WireGuard key/],
  ])('refuses a bad section with a message naming it: %#', (uci, message) => {
    expect(() => loadUci(uci)).toThrow(ConfigError)
    expect(() => loadUci(uci)).toThrow(message)
  })

  it('refuses two tunnels on one interface', () => {
    const tunnels = configuredTunnels(loadJson({ tunnels: [{ name: 'a', type: 'external', iface: 'wg0' }, { name: 'b', type: 'external', iface: 'wg0' }] }))
    expect(tunnelsProblem(tunnels)).toBe('tunnels a and b both use interface wg0')
    expect(tunnelsProblem(tunnels.slice(0, 1))).toBeUndefined()
  })
})

describe('WireGuard', () => {
  it('computes the public key as wg pubkey does', () => {
    const priv = execFileSync('wg', ['genkey'], { encoding: 'utf8' }).trim()
    expect(wgPublicKey(priv)).toBe(execFileSync('wg', ['pubkey'], { input: `${priv}\n`, encoding: 'utf8' }).trim())
  })

  it('reads a wg-quick file: what wg takes, the addresses and MTU, and what it leaves alone', () => {
    const f = parseWgQuick(`# a comment
[Interface]
PrivateKey = ${KEY_A}
Address = 2001:db8:a::2/64, 198.18.50.2/32
ListenPort = 51000
MTU = 1400
DNS = 2001:db8::53
PostUp = rm -rf /

[Peer]
PublicKey = ${KEY_B}
Endpoint = vpn.example.net:51820
AllowedIPs = ::/0, 0.0.0.0/0
PersistentKeepalive = 15
`)
    expect(f.address).toEqual(['2001:db8:a::2/64', '198.18.50.2/32'])
    expect(f.mtu).toBe(1400)
    expect(f.ignored).toEqual(['DNS', 'PostUp'])
    expect(f.settings).toEqual({ privateKey: KEY_A, listenPort: 51000, peers: [{ publicKey: KEY_B, endpoint: 'vpn.example.net:51820', allowedIps: ['::/0', '0.0.0.0/0'], persistentKeepalive: 15 }] })
    const text = wgSetconfText(f.settings)
    expect(text).toContain(`PrivateKey = ${KEY_A}`)
    expect(text).not.toMatch(/PostUp|Address|DNS|MTU/)
    expect(parseWgQuick(text).settings).toEqual(f.settings)
  })

  it('names the line of a bad wg-quick file, never its value', () => {
    expect(() => parseWgQuick(`[Interface]\nPrivateKey = ${KEY_A.slice(0, 40)}\n`)).toThrow(WgConfigError)
    try {
      parseWgQuick(`[Interface]\nPrivateKey = ${KEY_A.slice(0, 40)}\n`)
    } catch (err) {
      expect((err as Error).message).toBe('line 2: PrivateKey is not a WireGuard key')
    }
    expect(() => parseWgQuick('[Peer]\nPublicKey = x\n')).toThrow(/line 2/)
    expect(() => parseWgQuick(`[Interface]\nPrivateKey = ${KEY_A}\n[Peer]\nEndpoint = a:1\n`)).toThrow(/\[Peer\] 1 has no PublicKey/)
    expect(() => parseWgQuick('[Interface]\nListenPort = 1\n')).toThrow(/no PrivateKey/)
  })

  it('reads wg show dump, dropping the private key', () => {
    const state = parseWgDump(`${KEY_A}\tPUBLIC\t51820\toff\n${KEY_B}\t(none)\t198.18.0.1:51820\t::/0,0.0.0.0/0\t1764633600\t1200\t3400\t25\n`)
    expect(state).toEqual({ publicKey: 'PUBLIC', listenPort: 51820, peers: [{ publicKey: KEY_B, presharedKey: undefined, endpoint: '198.18.0.1:51820', allowedIps: ['::/0', '0.0.0.0/0'], latestHandshake: 1764633600, rxBytes: 1200, txBytes: 3400, persistentKeepalive: 25 }] })
    expect(JSON.stringify(state)).not.toContain(KEY_A)
    expect(parseWgDump('')).toBeUndefined()
  })
})

describe('ping output', () => {
  it('counts one reply per sequence number, ignores duplicates, and counts ICMP errors as no reply', () => {
    const out = `PING 2001:db8:78::10(2001:db8:78::10) from 2001:db8:77::1 e0: 56 data bytes
64 bytes from 2001:db8:78::10: icmp_seq=1 ttl=64 time=0.120 ms
64 bytes from 2001:db8:78::10: icmp_seq=1 ttl=64 time=0.300 ms (DUP!)
64 bytes from 2001:db8:78::10: icmp_seq=3 ttl=64 time=10.5 ms
`
    expect(parsePing(out, 3)).toEqual({ sent: 3, rttMs: [0.12, 10.5], errors: 0 })
  })

  it('takes Destination Unreachable for a failure (v6-gatewayd counted it as success)', () => {
    const out = `PING 2001:db8:78::10(2001:db8:78::10) from 2001:db8:77::1 e0: 56 data bytes
From 2001:db8:78::10 icmp_seq=1 Destination unreachable: Address unreachable

--- 2001:db8:78::10 ping statistics ---
1 packets transmitted, 0 received, +1 errors, 100% packet loss, time 0ms
`
    expect(parsePing(out, 3)).toEqual({ sent: 3, rttMs: [], errors: 1 })
  })
})

const T: Thresholds = { down: 3, up: 3, failureLoss: 50, recoveryLoss: 10, failureLatency: 1000, recoveryLatency: 500, window: 6 }
let clock = 0
const good = (latencyMs = 20): Check => ({ at: (clock += 1000), sent: 3, received: 3, latencyMs })
const lost = (n: number, latencyMs = 20): Check => ({ at: (clock += 1000), sent: 3, received: 3 - n, latencyMs: n === 3 ? undefined : latencyMs })
const run = (h: Health, checks: Check[]) => checks.reduce((x, c) => nextHealth(x, c, T), h)

describe('health', () => {
  it('judges a check by loss and latency, with a neutral band between failure and recovery', () => {
    expect(verdict(good(), T)).toBe('good')
    expect(verdict(lost(1), T)).toBe('neutral')
    expect(verdict(lost(2), T)).toBe('fail')
    expect(verdict({ at: 0, sent: 10, received: 6, latencyMs: 20 }, T)).toBe('neutral')
    expect(verdict({ at: 0, sent: 10, received: 5, latencyMs: 20 }, T)).toBe('fail')
    expect(verdict(good(700), T)).toBe('neutral')
    expect(verdict(good(1000), T)).toBe('fail')
    expect(verdict({ ...good(), fault: 'wg0 is down' }, T)).toBe('fail')
  })

  it('goes down after `down` failed checks and comes back after `up` good ones', () => {
    let h = run(newHealth(0), [good()])
    expect(h.state).toBe('up')
    h = run(h, [lost(3)])
    expect(h.state).toBe('degraded')
    h = run(h, [lost(3)])
    expect(h.state).toBe('degraded')
    h = run(h, [lost(3)])
    expect(h.state).toBe('down')
    h = run(h, [good(), good()])
    expect(h.state).toBe('down')
    h = run(h, [good()])
    expect(h.state).toBe('up')
  })

  it('starts from the first check: up when it is good, down when it fails', () => {
    expect(run(newHealth(0), [lost(3)]).state).toBe('down')
    expect(run(newHealth(0), [lost(1)]).state).toBe('up')
  })

  it('does not flap under 20 % loss with the default thresholds (3 targets, 3 probes each; a fixed pseudo-random run of 2,000 checks)', () => {
    let seed = 42
    const random = () => ((seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31)
    let h = run(newHealth(0), [good()])
    let downs = 0
    for (let i = 0; i < 2000; i++) {
      const received = Array.from({ length: 9 }, random).filter((r) => r >= 0.2).length
      const next = nextHealth(h, { at: (clock += 1000), sent: 9, received, latencyMs: received > 0 ? 20 : undefined }, T)
      if (next.state === 'down' && h.state !== 'down') downs++
      h = next
    }
    expect(downs).toBe(0)
    // The same loss with strict consecutive counting would not be enough to stay up at 60 %.
    let dead = run(newHealth(0), [good()])
    for (let i = 0; i < 20; i++) dead = nextHealth(dead, lost(i % 5 === 0 ? 0 : 3), T)
    expect(dead.state).toBe('down')
  })

  it('scores by v6-gatewayd\'s formula: latency tiers, unreachable, and the loss term', () => {
    expect([10, 50, 99, 150, 400, 600, undefined].map(latencyPenalty)).toEqual([0, 10, 10, 25, 40, 50, 50])
    expect(stats({ checks: [good(20)] }).score).toBe(100)
    expect(stats({ checks: [good(150)] }).score).toBe(75)
    expect(stats({ checks: [good(120), good(180)] })).toEqual({ lossPct: 0, latencyMs: 150, score: 75 })
    expect(stats({ checks: [good(20), lost(3)] })).toEqual({ lossPct: 50, latencyMs: 20, score: 25 })
    expect(stats({ checks: [lost(3)] }).score).toBe(0)
    expect(stats({ checks: [] }).score).toBe(0)
  })
})

describe('failover', () => {
  const O = { failoverScore: 30, healthyScore: 50, holdMs: 60_000 }
  const cand = (name: string, priority: number, over: Partial<Candidate> = {}): Candidate => ({ name, priority, state: 'up', score: 100, usable: true, eligibleSince: 0, ...over })

  it('picks the best healthy tunnel when there is no primary: score plus the priority bonus', () => {
    expect(choosePrimary([cand('a', 1, { score: 80 }), cand('b', 0, { score: 76 })], undefined, 0, O).primary).toBe('b')
    expect(choosePrimary([cand('a', 1, { score: 100 }), cand('b', 0, { score: 76 })], undefined, 0, O).primary).toBe('a')
    expect(choosePrimary([cand('a', 0, { state: 'down' })], undefined, 0, O)).toEqual({ primary: undefined, reason: undefined })
  })

  it('fails over at once when the primary goes down or scores below the threshold, to a tunnel scoring at least 50', () => {
    const down = choosePrimary([cand('a', 0, { state: 'down', score: 0 }), cand('b', 1)], 'a', 0, O)
    expect(down).toEqual({ primary: 'b', reason: 'a is down; b scores 100' })
    expect(choosePrimary([cand('a', 0, { score: 25 }), cand('b', 1, { score: 60 })], 'a', 0, O).primary).toBe('b')
    expect(choosePrimary([cand('a', 0, { score: 25 }), cand('b', 1, { score: 45 })], 'a', 0, O)).toEqual({ primary: 'a' })
    expect(choosePrimary([cand('a', 0, { score: 35 }), cand('b', 1)], 'a', 0, O)).toEqual({ primary: 'a' })
  })

  it('fails back to a preferred tunnel only after it has been healthy for the hold time', () => {
    const back = (since: number, now: number) => choosePrimary([cand('a', 0, { eligibleSince: since }), cand('b', 1)], 'b', now, O).primary
    expect(back(1000, 60_999)).toBe('b')
    expect(back(1000, 61_000)).toBe('a')
    expect(choosePrimary([cand('a', 0, { eligibleSince: undefined }), cand('b', 1)], 'b', 100_000, O).primary).toBe('b')
  })

  it('leaves a tunnel set down by a person, even when no other is healthy', () => {
    expect(choosePrimary([cand('a', 0, { usable: false }), cand('b', 1)], 'a', 0, O).primary).toBe('b')
    expect(choosePrimary([cand('a', 0, { usable: false }), cand('b', 1, { state: 'down' })], 'a', 0, O)).toEqual({ primary: undefined, reason: 'a is no longer usable and no tunnel is healthy' })
  })
})

describe('devices in a tunnel prefix', () => {
  it('gives a MAC its modified EUI-64 address in the first /64 of the prefix', () => {
    expect(eui64Address('2001:db8:200::/48', '02:00:5e:10:00:01')).toBe('2001:db8:200::5eff:fe10:1')
    expect(eui64Address('2001:db8:200:7::/64', 'a0:b1:c2:d3:e4:f5')).toBe('2001:db8:200:7:a2b1:c2ff:fed3:e4f5')
    expect(() => eui64Address('2001:db8:200::/80', 'a0:b1:c2:d3:e4:f5')).toThrow(/no EUI-64/)
  })

  it('relays each active device on its tunnel address, and IPv6 forwards on the router addresses given', () => {
    const data = emptyData()
    const at = new Date().toISOString()
    const device = (mac: string, status: 'active' | 'gone', lanIpv4: string) => ({ mac, status, statusChangedAt: at, firstSeen: at, lastSeen: at, lanIpv4, wanIpv6: [], attempts: 0 })
    data.devices['02:00:5e:10:00:01'] = device('02:00:5e:10:00:01', 'active', '198.19.0.50')
    data.devices['02:00:5e:10:00:02'] = device('02:00:5e:10:00:02', 'gone', '198.19.0.51')
    const addresses = deviceTunnelAddresses(data, [{ iface: 'he0', prefix: '2001:db8:200::/48' }])
    expect(addresses).toEqual([{ mac: '02:00:5e:10:00:01', iface: 'he0', address: '2001:db8:200::5eff:fe10:1' }])
    const rules = relayRules(data, { relayPorts: [80], relayUdpPorts: [] }, ['2001:db8:100::2'], addresses)
    expect(rules).toEqual([{ listen: { host: '2001:db8:200::5eff:fe10:1', port: 80 }, target: { host: '198.19.0.50', port: 80 }, proto: 'tcp' }])
  })
})

describe('port maps (proxy mode)', () => {
  const config = { apiPort: 5050 }
  it('checks a request: ports, protocol, and what is taken', () => {
    const data = emptyData()
    const p = checkPort(data, config, { port: '2222', targetPort: 22 })
    expect(p).toMatchObject({ port: 2222, targetPort: 22, proto: 'tcp' })
    expect(checkPort(data, config, { port: 53, proto: 'udp' })).toMatchObject({ port: 53, targetPort: 53, proto: 'udp' })
    data.ports.push(p)
    expect(() => checkPort(data, config, { port: 2222 })).toThrow(/already offered/)
    expect(checkPort(data, config, { port: 2222, proto: 'udp' }).proto).toBe('udp')
    expect(() => checkPort(data, config, { port: 5050 })).toThrow(/API's port/)
    expect(() => checkPort(data, config, { port: 0 })).toThrow(PortError)
    expect(() => checkPort(data, config, { port: 80, targetPort: 'x' })).toThrow(/targetPort must be/)
    expect(() => checkPort(data, config, { port: 80, proto: 'sctp' })).toThrow(/proto must be/)
    data.forwards.push({ id: 'f1', gatewayPort: 8443, deviceIp: '198.19.0.5', devicePort: 443, proto: 'tcp', family: 'both', createdAt: new Date().toISOString() })
    expect(() => checkPort(data, config, { port: 8443 })).toThrow(/IPv6 port forward/)
  })

  it('listens on every tunnel address, to the local service', () => {
    const rules = portRules([{ id: 'a', port: 2222, targetPort: 22, proto: 'tcp', createdAt: new Date().toISOString() }], ['2001:db8:100::2', '2001:db8:101::2'])
    expect(rules.map((r) => `${r.proto} [${r.listen.host}]:${r.listen.port} -> ${r.target.host}:${r.target.port}`)).toEqual([
      'tcp [2001:db8:100::2]:2222 -> 127.0.0.1:22',
      'tcp [2001:db8:101::2]:2222 -> 127.0.0.1:22',
    ])
  })
})

describe('reconcile with hostile key files', () => {
  it('fails the tunnel with a clear error, never the key file\'s content, and changes nothing', async () => {
    const applied: string[][] = []
    const sh: Sh = {
      dryRun: false,
      query: async () => ({ stdout: '[]', stderr: '', code: 1 }),
      apply: async (cmd, args) => {
        applied.push([cmd, ...args])
        return { stdout: '', stderr: '', code: 0 }
      },
      daemon: async () => undefined,
    }
    const secret = 'this is not a key but a secret line'
    const keyFile = file('not-a-key', `${secret}\n`)
    chmodSync(keyFile, 0o600)
    const config = loadJson({ tunnels: [{ name: 'wg', type: 'wireguard', iface: 'wg0', privateKeyFile: keyFile, peerPublicKey: KEY_A, endpoint: '198.18.0.1:51820' }] })
    const store = openStore({ dataDir: mkdtempSync(path.join(dir, 'store-')), backupCount: 0, backupInterval: 0 })
    const log = createLogger({ tag: 'test', level: 'error' })
    const [out] = await reconcileTunnels({ sh, config, store, log })
    expect(out).toMatchObject({ name: 'wg', action: 'failed' })
    expect(out.detail).toMatch(/does not hold a WireGuard key/)
    expect(out.detail).not.toContain(secret)
    expect(applied).toEqual([])
    expect((await store.read()).tunnels).toEqual({})
  })
})
