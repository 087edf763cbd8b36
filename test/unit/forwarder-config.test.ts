// The forwarder's config: `config forward` and `config forwarder_peer` sections, checked one at a time with
// errors that name the key, and the rules across sections.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { loadConfig } from '../../lib/core/config.ts'
import { configuredForwards, configuredPeers, forwardsProblem, peersProblem, tunnelMtu } from '../../lib/forwarder/config.ts'

const dir = mkdtempSync(path.join(tmpdir(), 'dg-fwd-config-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))
const KEY = 'YFqN4uR0ohHkSyHE9MStrq2pH/SYjWVkWWQLWGc9M0A='

function load(json: Record<string, unknown>) {
  const file = path.join(dir, `c${Math.random().toString(36).slice(2)}.json`)
  writeFileSync(file, JSON.stringify(json))
  return loadConfig({ env: { DUALGATE_CONFIG: file }, uciFile: path.join(dir, 'absent') }).config
}
const forwards = (...list: Record<string, unknown>[]) => configuredForwards(load({ forwards: list }))

describe('forward sections', () => {
  it('a relay forward by name with its defaults', () => {
    expect(forwards({ name: 'nas', port: 443, target: 'home.example.net' })).toEqual([{
      name: 'nas', enabled: true, mode: 'relay', listen: 'both', ports: [443, 443], protos: ['tcp'], target: 'home.example.net', targetPort: 443, ipv4Fallback: false, proxyProtocol: false,
    }])
  })

  it('a range maps onto a range, proto both is tcp and udp', () => {
    const [f] = forwards({ name: 'game', port: '27015-27020', proto: 'both', target: '2001:db8::5', targetPort: 37015 })
    expect(f).toMatchObject({ ports: [27015, 27020], protos: ['tcp', 'udp'], targetPort: 37015 })
  })

  it('a kernel forward over WireGuard shares its tunnel by iface', () => {
    const [f] = forwards({ name: 'web', mode: 'kernel', port: 80, target: 'router.example.net', targetAddress: '192.168.1.10', transport: 'wireguard', privateKeyFile: '/etc/dualgate/wg.key', peerPublicKey: KEY })
    expect(f).toMatchObject({ mode: 'kernel', targetAddress: '192.168.1.10', tunnel: { transport: 'wireguard', iface: 'dgf-web', wireguard: { listenPort: 51830 } } })
    expect(f.mode === 'kernel' && tunnelMtu(f.tunnel)).toBe(1420)
    expect(tunnelMtu({ transport: 'ipip6', mtu: 0, encaplimit: true })).toBe(1452)
    expect(tunnelMtu({ transport: 'ipip6', mtu: 0, encaplimit: false })).toBe(1460)
  })

  it.each([
    [{ port: 0 }, /forwards\.f\.port = 0 .*ports are 1-65535/],
    [{ port: 70000 }, /forwards\.f\.port/],
    [{ port: '90-80' }, /low to high/],
    [{ mode: 'socat' }, /forwards\.f\.mode = "socat".*expected relay or kernel/],
    [{ proto: 'sctp' }, /forwards\.f\.proto/],
    [{ target: 'bad name!' }, /forwards\.f\.target.*host name or an IPv6/],
    [{ target: undefined }, /option "target" is required/],
    [{ listen: 'eth0' }, /forwards\.f\.listen/],
    [{ port: 'all' }, /mode kernel only/],
    [{ targetAddress: '10.0.0.1' }, /apply to mode kernel only/],
    [{ mode: 'kernel' }, /needs target_address/],
    [{ mode: 'kernel', targetAddress: '10.0.0.1', listen: '6' }, /lends IPv4/],
    [{ mode: 'kernel', targetAddress: '10.0.0.1', proxyProtocol: true }, /proxy_protocol is for mode relay/],
    [{ mode: 'kernel', targetAddress: '10.0.0.1', transport: 'wireguard' }, /needs private_key_file and peer_public_key/],
    [{ mode: 'kernel', targetAddress: '10.0.0.1', port: 'all', listen: 'both' }, /extra IPv4 address/],
    [{ unknownThing: 1 }, /unknown option "unknownThing"/],
  ])('refuses %j with an error naming the key', (bad, message) => {
    expect(() => forwards({ name: 'f', port: 443, target: 'home.example.net', ...bad })).toThrow(message)
  })

  it('two forwards may not take the same port; forwards on one tunnel must agree', () => {
    const two = forwards({ name: 'a', port: '8000-8010', target: 'x.example' }, { name: 'b', port: 8005, listen: '4', target: 'y.example' })
    expect(forwardsProblem(two)).toMatch(/forwards a and b both take tcp port/)
    expect(forwardsProblem(forwards({ name: 'a', port: 53, proto: 'udp', target: 'x.example' }, { name: 'b', port: 53, target: 'y.example' }))).toBeUndefined()
    expect(forwardsProblem(forwards({ name: 'a', port: 80, listen: '198.18.0.5', target: 'x.example' }, { name: 'b', port: 80, listen: '198.18.0.6', target: 'y.example' }))).toBeUndefined()
    expect(forwardsProblem(forwards({ name: 'a', port: 80, listen: '6', target: 'x.example' }, { name: 'b', port: 80, listen: '4', target: 'y.example' }))).toBeUndefined()
    const shared = forwards(
      { name: 'a', mode: 'kernel', port: 80, target: 'r.example', targetAddress: '10.0.0.1', iface: 'home' },
      { name: 'b', mode: 'kernel', port: 443, target: 'other.example', targetAddress: '10.0.0.1', iface: 'home' },
    )
    expect(forwardsProblem(shared)).toMatch(/share tunnel home but differ/)
  })
})

describe('forwarder_peer sections', () => {
  it('the home end with its defaults, and the rules', () => {
    const peers = configuredPeers(load({ forwarderPeers: [{ name: 'vps', remote: 'vps.example.net', servers: '192.168.1.10' }] }))
    expect(peers).toEqual([{ name: 'vps', enabled: true, remote: 'vps.example.net', local: 'auto', transport: 'ipip6', iface: 'dgp-vps', servers: ['192.168.1.10'], ports: 'all', mtu: 0, encaplimit: true, wireguard: undefined }])
    expect(() => load({ forwarderPeers: [{ name: 'vps', remote: 'vps.example.net', servers: [] }] })).toThrow(/forwarderPeers\.vps\.servers.*at least one server/)
    expect(() => load({ forwarderPeers: [{ name: 'vps', remote: 'vps.example.net', servers: '192.168.1.10', transport: 'wireguard' }] })).toThrow(/needs private_key_file/)
    const two = configuredPeers(load({ forwarderPeers: [{ name: 'a', remote: 'x.example', servers: '10.0.0.1', iface: 'fw0' }, { name: 'b', remote: 'y.example', servers: '10.0.0.2', iface: 'fw0' }] }))
    expect(peersProblem(two)).toMatch(/both use interface fw0/)
  })
})
