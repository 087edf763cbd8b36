// The forwarder's kernel mode as a plan (lib/forwarder/kernel-plan.ts): config, resolved addresses and the
// system as read in, commands out. Each case reads a system as it would be after the first plan ran and
// checks that the second plan is empty.
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { loadConfig, type Config } from '../../lib/core/config.ts'
import type { ForwarderTunnelRecord } from '../../lib/core/schema.ts'
import { configuredForwards, forwardsProblem, type KernelForward } from '../../lib/forwarder/config.ts'
import { kernelTunnels } from '../../lib/forwarder/kernel-apply.ts'
import { dnatRule, FWD_NFT_TABLE, nftBody, peerMark, pickLocal, planKernel, type ForwarderSystem, type PlanInput, type Step } from '../../lib/forwarder/kernel-plan.ts'
import { parseIp6tnlLinks, type Ip6tnlLink } from '../../lib/net/ip6tnl.ts'
import { wgPublicKey } from '../../lib/net/wireguard.ts'

const dir = mkdtempSync(path.join(tmpdir(), 'dg-fwk-'))
let n = 0
const load = (json: unknown): Config => {
  const file = path.join(dir, `c${n++}.json`)
  writeFileSync(file, JSON.stringify(json))
  return loadConfig({ uciFile: path.join(dir, 'no-uci'), env: { DUALGATE_CONFIG: file } }).config
}

const VPS4 = '198.18.100.2'
const VPS6 = '2001:db8:100::2'
const HOME6 = '2001:db8:200::2'
const SERVER = '198.19.50.10'
const NOW = '2030-01-01T00:00:00.000Z'
const HOME_KEY = 'yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk='
const VPS_KEY = 'xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg='

const nas = { name: 'nas', mode: 'kernel', listen: '4', port: '8080', target: 'router.lab.test', targetPort: 80, targetAddress: SERVER, iface: 'dgf-home' }
const vpsConfig = (forwards: unknown[] = [nas]) => load({ role: ['forwarder'], wanIf: 'eth0', forwards })
const peer = { name: 'vps', remote: 'vps.lab.test', servers: [SERVER], ports: '23,80', iface: 'dgp-vps', transport: 'wireguard', privateKeyFile: '/etc/dualgate/fwd.key', peerPublicKey: wgPublicKey(VPS_KEY) }
const homeConfig = (peers: unknown[] = [peer]) => load({ role: ['gateway'], wanIf: 'eth0', forwarderPeers: peers })

const emptySystem = (over: Partial<ForwarderSystem> = {}): ForwarderSystem => ({
  links: {}, wg: {}, wanIpv4: VPS4, wanIpv6: [VPS6], routes: [], rules: [], nftComment: undefined, sysctls: { 'net.ipv4.ip_forward': '0' }, kernelWireguard: true, listeners: [], ...over,
})

function input(config: Config, over: Partial<PlanInput> = {}): PlanInput {
  const tunnels = kernelTunnels(config)
  return {
    tunnels,
    resolved: Object.fromEntries(tunnels.map((t) => [t.iface, { address: t.side === 'forward' ? HOME6 : VPS6 }])),
    keys: Object.fromEntries(tunnels.filter((t) => t.wireguard).map((t) => [t.iface, { key: t.side === 'peer' ? HOME_KEY : VPS_KEY }])),
    records: {},
    system: emptySystem(),
    wanIf: 'eth0',
    now: NOW,
    ...over,
  }
}

const argv = (s: Step) => (s.kind === 'run' ? [s.cmd, ...s.args].join(' ') : s.kind === 'wg-set' ? `wg-set ${s.iface}` : `${s.kind} ${s.iface}`)
const nftInput = (steps: Step[]) => steps.flatMap((s) => (s.kind === 'run' && s.cmd === 'nft' && s.input ? [s.input] : []))[0] ?? ''
const stampOf = (text: string) => /comment "(.*)"/.exec(text)?.[1]

const ipip6Link = (o: Partial<Ip6tnlLink> & { ifname: string }): Ip6tnlLink => ({ kind: 'ip6tnl', proto: 'ipip6', up: true, mtu: 1452, encaplimit: true, rxBytes: 0, txBytes: 0, ...o })

describe('the VPS end (kernel forwards)', () => {
  const config = vpsConfig()

  it('makes a 4in6 tunnel to the resolved target, a route for the target address into it, DNAT and forwarding', () => {
    const plan = planKernel(input(config))
    expect(plan.steps.map(argv)).toEqual([
      `ip link add name dgf-home type ip6tnl mode ipip6 local ${VPS6} remote ${HOME6} encaplimit 4 hoplimit 64`,
      'ip link set dev dgf-home mtu 1452',
      'ip link set dev dgf-home up',
      `ip -4 route replace ${SERVER}/32 dev dgf-home proto 79`,
      'nft -f -',
      'sysctl -q -w net.ipv4.ip_forward=1',
    ])
    const nft = nftInput(plan.steps)
    expect(nft).toContain(`ip daddr ${VPS4} meta l4proto tcp th dport 8080 counter name "fwd_nas" dnat ip to ${SERVER}:80`)
    expect(nft).toContain('counter fwd_nas {')
    expect(nft).toContain('oifname "dgf-home" tcp flags syn / syn,rst tcp option maxseg size > 1412 tcp option maxseg size set 1412')
    expect(nft).toContain('oifname "dgf-home" ct status dnat accept')
    expect(nft).not.toMatch(/snat|masquerade/)
    expect(plan.outcomes).toEqual([{ side: 'forward', name: 'nas', iface: 'dgf-home', transport: 'ipip6', action: 'created', remote: HOME6, detail: undefined }])
    expect(plan.records['dgf-home']).toMatchObject({ side: 'forward', names: ['nas'], remote: HOME6, routes: [`${SERVER}/32`], changedAt: NOW })
  })

  it('finds nothing to do on the system the first plan made', () => {
    const first = planKernel(input(config))
    const system = emptySystem({
      links: { 'dgf-home': ipip6Link({ ifname: 'dgf-home', local: VPS6, remote: HOME6 }) },
      routes: [{ dst: SERVER, dev: 'dgf-home', protocol: '79' }],
      nftComment: stampOf(nftInput(first.steps)),
      sysctls: { 'net.ipv4.ip_forward': '1' },
    })
    const second = planKernel(input(config, { records: first.records, system }))
    expect(second.steps.map(argv)).toEqual([])
    expect(second.outcomes.map((o) => o.action)).toEqual(['unchanged'])
    expect(second.nft).toBe('unchanged')
    expect(second.records).toEqual(first.records)
  })

  it('follows a new address of the target in place, and says the tunnel changed', () => {
    const first = planKernel(input(config))
    const system = emptySystem({ links: { 'dgf-home': ipip6Link({ ifname: 'dgf-home', local: VPS6, remote: HOME6 }) }, routes: [{ dst: SERVER, dev: 'dgf-home' }], nftComment: stampOf(nftInput(first.steps)), sysctls: { 'net.ipv4.ip_forward': '1' } })
    const moved = planKernel(input(config, { records: first.records, system, resolved: { 'dgf-home': { address: '2001:db8:200::99' } }, now: '2030-01-01T00:05:00.000Z' }))
    expect(moved.steps.map(argv)).toEqual([`ip -6 tunnel change dgf-home mode ipip6 local ${VPS6} remote 2001:db8:200::99 encaplimit 4 hoplimit 64`])
    expect(moved.outcomes[0]).toMatchObject({ action: 'changed', remote: '2001:db8:200::99' })
    expect(moved.records['dgf-home'].changedAt).toBe('2030-01-01T00:05:00.000Z')
  })

  it('keeps the last good address when the name does not resolve, and changes nothing', () => {
    const first = planKernel(input(config))
    const system = emptySystem({ links: { 'dgf-home': ipip6Link({ ifname: 'dgf-home', local: VPS6, remote: HOME6 }) }, routes: [{ dst: SERVER, dev: 'dgf-home' }], nftComment: stampOf(nftInput(first.steps)), sysctls: { 'net.ipv4.ip_forward': '1' } })
    const plan = planKernel(input(config, { records: first.records, system, resolved: { 'dgf-home': { error: 'ETIMEOUT' } } }))
    expect(plan.steps).toEqual([])
    expect(plan.outcomes[0]).toMatchObject({ action: 'unchanged', remote: HOME6, detail: `target router.lab.test did not resolve (ETIMEOUT): kept ${HOME6}` })
    expect(plan.records['dgf-home']).toMatchObject({ remote: HOME6, resolveError: 'ETIMEOUT' })
  })

  it('makes nothing for a target that never resolved', () => {
    const plan = planKernel(input(config, { resolved: { 'dgf-home': { error: 'ENOTFOUND' } } }))
    expect(plan.steps).toEqual([])
    expect(plan.outcomes).toEqual([expect.objectContaining({ action: 'failed', detail: 'target router.lab.test does not resolve (ENOTFOUND): nothing made' })])
    expect(plan.records).toEqual({})
  })

  it('without the encapsulation limit option: encaplimit none and MTU 1460', () => {
    const plan = planKernel(input(vpsConfig([{ ...nas, encaplimit: false }])))
    expect(plan.steps.map(argv).slice(0, 2)).toEqual([
      `ip link add name dgf-home type ip6tnl mode ipip6 local ${VPS6} remote ${HOME6} encaplimit none hoplimit 64`,
      'ip link set dev dgf-home mtu 1460',
    ])
    expect(nftInput(plan.steps)).toContain('maxseg size set 1420')
  })

  it('refuses a new forward on a port a local service listens on, naming it; a forward made before is not checked again', () => {
    const ssh = vpsConfig([{ ...nas, name: 'ssh', port: '22', targetPort: 0 }])
    const listeners = [{ proto: 'tcp' as const, address: '0.0.0.0', port: 22 }]
    const plan = planKernel(input(ssh, { system: emptySystem({ listeners }) }))
    expect(plan.outcomes).toContainEqual(expect.objectContaining({ name: 'ssh', action: 'failed', detail: 'port 22/tcp is in use on this host (a service listens on 0.0.0.0:22): choose another port' }))
    expect(plan.steps).toEqual([])
    const record: ForwarderTunnelRecord = { side: 'forward', transport: 'ipip6', names: ['ssh'], remote: HOME6, routes: [`${SERVER}/32`], since: NOW }
    const made = planKernel(input(ssh, { records: { 'dgf-home': record }, system: emptySystem({ listeners }) }))
    expect(nftInput(made.steps)).toContain(`ip daddr ${VPS4} meta l4proto tcp th dport 22 counter name "fwd_ssh" dnat ip to ${SERVER}`)
  })

  it('fails a forward on 4 when the WAN has no IPv4, and never touches a link of the name it did not make', () => {
    expect(planKernel(input(config, { system: emptySystem({ wanIpv4: undefined }) })).outcomes).toContainEqual(expect.objectContaining({ name: 'nas', action: 'failed', detail: 'listen 4: eth0 has no IPv4 address' }))
    const veth = planKernel(input(config, { system: emptySystem({ links: { 'dgf-home': { ifname: 'dgf-home', kind: 'veth', up: true, mtu: 1500, rxBytes: 0, txBytes: 0 } } }) }))
    expect(veth.steps).toEqual([])
    expect(veth.outcomes[0]).toMatchObject({ action: 'failed', detail: 'interface dgf-home exists and is veth, not ip6tnl: not touching it' })
  })

  it('WireGuard: allowed IPs are the target addresses; the endpoint follows the resolved target, not the roaming one', () => {
    const wg = vpsConfig([{ ...nas, transport: 'wireguard', privateKeyFile: '/k', peerPublicKey: wgPublicKey(HOME_KEY) }])
    const first = planKernel(input(wg))
    expect(first.steps.map(argv).slice(0, 4)).toEqual(['ip link add dev dgf-home type wireguard', 'wg-set dgf-home', 'ip link set dev dgf-home mtu 1420', 'ip link set dev dgf-home up'])
    const set = first.steps[1] as Extract<Step, { kind: 'wg-set' }>
    expect(set.text).toBe(`[Interface]\nPrivateKey = ${VPS_KEY}\nListenPort = 51830\n\n[Peer]\nPublicKey = ${wgPublicKey(HOME_KEY)}\nEndpoint = [${HOME6}]:51830\nAllowedIPs = ${SERVER}/32\n`)
    const state = (endpoint: string) => ({ publicKey: wgPublicKey(VPS_KEY), listenPort: 51830, peers: [{ publicKey: wgPublicKey(HOME_KEY), endpoint, allowedIps: [`${SERVER}/32`], latestHandshake: 1, rxBytes: 0, txBytes: 0, persistentKeepalive: 0 }] })
    const system = (endpoint: string) => emptySystem({ links: { 'dgf-home': { ifname: 'dgf-home', kind: 'wireguard', up: true, mtu: 1420, rxBytes: 0, txBytes: 0 } }, wg: { 'dgf-home': state(endpoint) }, routes: [{ dst: SERVER, dev: 'dgf-home' }], nftComment: stampOf(nftInput(first.steps)), sysctls: { 'net.ipv4.ip_forward': '1' } })
    // The home's packets came from another of its addresses: WireGuard roamed there, and it stays.
    expect(planKernel(input(wg, { records: first.records, system: system('[2001:db8:200::7]:51830') })).steps).toEqual([])
    // The name moved: the endpoint goes to the new address.
    const moved = planKernel(input(wg, { records: first.records, system: system('[2001:db8:200::7]:51830'), resolved: { 'dgf-home': { address: '2001:db8:200::99' } } }))
    expect(moved.steps.map(argv)).toEqual(['wg-set dgf-home'])
    expect((moved.steps[0] as Extract<Step, { kind: 'wg-set' }>).text).toContain('Endpoint = [2001:db8:200::99]:51830')
  })

  it('removes every route, the link and the table when the forward leaves config', () => {
    const first = planKernel(input(config))
    const system = emptySystem({ links: { 'dgf-home': ipip6Link({ ifname: 'dgf-home', local: VPS6, remote: HOME6 }) }, routes: [{ dst: SERVER, dev: 'dgf-home' }], nftComment: stampOf(nftInput(first.steps)), sysctls: { 'net.ipv4.ip_forward': '1' } })
    const gone = planKernel(input(vpsConfig([]), { records: first.records, system }))
    expect(gone.steps.map(argv)).toEqual(['ip link del dev dgf-home', `nft delete table inet ${FWD_NFT_TABLE}`])
    expect(gone.outcomes).toEqual([expect.objectContaining({ action: 'removed', iface: 'dgf-home' })])
    expect(gone.records).toEqual({})
    // A route of ours on a link that stays (made by hand, or left over) goes too.
    const stray = planKernel(input(vpsConfig([]), { system: emptySystem({ routes: [{ dst: '198.19.9.9', dev: 'eth0' }] }) }))
    expect(stray.steps.map(argv)).toEqual(['ip -4 route del 198.19.9.9 dev eth0 proto 79'])
  })
})

describe('DNAT rules', () => {
  const f = (o: Partial<KernelForward>): KernelForward => ({ ...(configuredForwards(vpsConfig())[0] as KernelForward), ...o })
  it.each([
    [{ ports: [8080, 8080], targetPort: 80 }, `ip daddr ${VPS4} meta l4proto tcp th dport 8080 counter name "fwd_nas" dnat ip to ${SERVER}:80`],
    [{ ports: [8000, 8100], targetPort: 8000, protos: ['tcp', 'udp'] }, `ip daddr ${VPS4} meta l4proto { tcp, udp } th dport 8000-8100 counter name "fwd_nas" dnat ip to ${SERVER}`],
    [{ ports: [9000, 9002], targetPort: 7000 }, `ip daddr ${VPS4} meta l4proto tcp th dport 9000-9002 counter name "fwd_nas" dnat ip to th dport map { 9000 : ${SERVER} . 7000, 9001 : ${SERVER} . 7001, 9002 : ${SERVER} . 7002 }`],
    [{ ports: undefined, targetPort: undefined }, `ip daddr ${VPS4} meta l4proto tcp counter name "fwd_nas" dnat ip to ${SERVER}`],
  ] as [Partial<KernelForward>, string][])('%j', (o, rule) => {
    expect(dnatRule({ forward: f(o), listen: VPS4 })).toBe(rule)
  })

  it('an empty table holds nothing', () => {
    expect(nftBody([], [])).toBe('')
  })
})

describe('the home end (forwarder peers)', () => {
  const config = homeConfig()
  const home = (over: Partial<PlanInput> = {}) => input(config, { system: emptySystem({ wanIpv4: undefined, wanIpv6: [HOME6] }), ...over })

  it('makes its tunnel to the VPS, a table with a default route into it, mark rules, firewall and clamp', () => {
    const plan = planKernel(home())
    expect(plan.steps.map(argv)).toEqual([
      'ip link add dev dgp-vps type wireguard',
      'wg-set dgp-vps',
      'ip link set dev dgp-vps mtu 1420',
      'ip link set dev dgp-vps up',
      'ip -4 route replace default dev dgp-vps table 800 proto 79',
      'ip -4 rule add fwmark 0x10000/0xff0000 lookup main suppress_prefixlength 0 pref 1050',
      'ip -4 rule add fwmark 0x10000/0xff0000 lookup 800 pref 1051',
      'nft -f -',
      'sysctl -q -w net.ipv4.conf.dgp-vps.src_valid_mark=1',
      'sysctl -q -w net.ipv4.ip_forward=1',
    ])
    expect((plan.steps[1] as Extract<Step, { kind: 'wg-set' }>).text).toBe(`[Interface]\nPrivateKey = ${HOME_KEY}\nListenPort = 51830\n\n[Peer]\nPublicKey = ${wgPublicKey(VPS_KEY)}\nEndpoint = [${VPS6}]:51830\nAllowedIPs = 0.0.0.0/0\nPersistentKeepalive = 25\n`)
    const nft = nftInput(plan.steps)
    expect(nft).toContain('iifname "dgp-vps" ct state new ct mark set ct mark & 0xff00ffff | 0x00010000')
    expect(nft).toContain('ct mark & 0x00ff0000 == 0x00010000 meta mark set meta mark & 0xff00ffff | 0x00010000')
    expect(nft).toContain(`iifname "dgp-vps" ip daddr { ${SERVER} } meta l4proto { tcp, udp } th dport { 23, 80 } accept`)
    expect(nft).toContain('iifname "dgp-vps" drop')
    expect(plan.records['dgp-vps']).toMatchObject({ side: 'peer', table: 800, remote: VPS6 })
  })

  it('a second plan on what the first made is empty', () => {
    const first = planKernel(home())
    const system = emptySystem({
      wanIpv4: undefined,
      wanIpv6: [HOME6],
      links: { 'dgp-vps': { ifname: 'dgp-vps', kind: 'wireguard', up: true, mtu: 1420, rxBytes: 0, txBytes: 0 } },
      wg: { 'dgp-vps': { publicKey: wgPublicKey(HOME_KEY), listenPort: 51830, peers: [{ publicKey: wgPublicKey(VPS_KEY), endpoint: `[${VPS6}]:51830`, allowedIps: ['0.0.0.0/0'], latestHandshake: 0, rxBytes: 0, txBytes: 0, persistentKeepalive: 25 }] } },
      routes: [{ dst: 'default', dev: 'dgp-vps', table: '800', protocol: '79' }],
      rules: [
        { priority: 1050, src: 'all', fwmark: '0x10000', fwmask: '0xff0000', table: 'main', suppress_prefixlen: 0 },
        { priority: 1051, src: 'all', fwmark: '0x10000', fwmask: '0xff0000', table: '800' },
      ],
      nftComment: stampOf(nftInput(first.steps)),
      sysctls: { 'net.ipv4.ip_forward': '1', 'net.ipv4.conf.dgp-vps.src_valid_mark': '1' },
    })
    const second = planKernel(home({ records: first.records, system }))
    expect(second.steps.map(argv)).toEqual([])
    expect(second.outcomes.map((o) => o.action)).toEqual(['unchanged'])

    // Taken out of config: the link, both rules and the table go (the table's route with its link).
    const gone = planKernel(input(homeConfig([]), { records: first.records, system }))
    expect(gone.steps.map(argv)).toEqual([
      'ip link del dev dgp-vps',
      'ip -4 rule del fwmark 0x10000/0xff0000 lookup main pref 1050',
      'ip -4 rule del fwmark 0x10000/0xff0000 lookup 800 pref 1051',
      `nft delete table inet ${FWD_NFT_TABLE}`,
    ])
  })

  it('ipip6: local follows the WAN address (keeping the one in use while the WAN has it)', () => {
    const ipip6 = homeConfig([{ name: 'vps', remote: VPS6, servers: [SERVER], iface: 'dgp-vps' }])
    const first = planKernel(input(ipip6, { system: emptySystem({ wanIpv6: [HOME6] }) }))
    expect(first.steps.map(argv)[0]).toBe(`ip link add name dgp-vps type ip6tnl mode ipip6 local ${HOME6} remote ${VPS6} encaplimit 4 hoplimit 64`)
    expect(nftInput(first.steps)).toContain(`iifname "dgp-vps" ip daddr { ${SERVER} } accept`)
    const link = ipip6Link({ ifname: 'dgp-vps', local: HOME6, remote: VPS6 })
    const renumbered = planKernel(input(ipip6, { records: first.records, system: emptySystem({ wanIpv6: ['2001:db8:300::2'], links: { 'dgp-vps': link } }) }))
    expect(renumbered.steps.map(argv)).toContain(`ip -6 tunnel change dgp-vps mode ipip6 local 2001:db8:300::2 remote ${VPS6} encaplimit 4 hoplimit 64`)
    expect(pickLocal('auto', ['2001:db8:300::2', HOME6], HOME6)).toBe(HOME6)
    expect(pickLocal('2001:DB8::0:1', [], undefined)).toBe('2001:db8::1')
  })

  it('two peers take two tables and two marks', () => {
    const two = planKernel(input(homeConfig([peer, { ...peer, name: 'vps2', iface: 'dgp-vps2' }]), { system: emptySystem({ wanIpv6: [HOME6] }) }))
    expect([two.records['dgp-vps'].table, two.records['dgp-vps2'].table]).toEqual([800, 801])
    expect(peerMark(801)).toBe(0x00020000)
    expect(two.steps.map(argv)).toContain('ip -4 rule add fwmark 0x20000/0xff0000 lookup 801 pref 1051')
  })

  it('a key file that cannot be used fails its peer with the reason, making nothing', () => {
    const plan = planKernel(home({ keys: { 'dgp-vps': { error: 'private_key_file /etc/dualgate/fwd.key does not exist' } } }))
    expect(plan.steps).toEqual([])
    expect(plan.outcomes[0]).toMatchObject({ action: 'failed', detail: 'private_key_file /etc/dualgate/fwd.key does not exist' })
  })
})

describe('config rules across forwards and the link as read', () => {
  it('refuses one target address through two tunnels', () => {
    const forwards = configuredForwards(vpsConfig([nas, { ...nas, name: 'nas2', port: '8081', target: 'other.lab.test', iface: 'dgf-other' }]))
    expect(forwardsProblem(forwards)).toBe(`forwards nas and nas2 send target_address ${SERVER} through different tunnels (dgf-home, dgf-other); the VPS routes an address into one tunnel only`)
  })

  it('refuses a peer port out of range, naming the key', () => {
    expect(() => homeConfig([{ ...peer, ports: '22,70000' }])).toThrow(/ports 70000/)
  })

  it('reads an ipip6 link back from ip -d -j', () => {
    const json = JSON.stringify([{ ifname: 'dgf-home', mtu: 1460, flags: ['POINTOPOINT', 'NOARP', 'UP', 'LOWER_UP'], linkinfo: { info_kind: 'ip6tnl', info_data: { proto: 'ipip6', remote: HOME6, local: VPS6, ttl: 64, ip6_tnl_f_ign_encap_limit: true, tclass: '0x00', flowlabel: '0x00000' } } }])
    expect(parseIp6tnlLinks(json)).toEqual([{ ifname: 'dgf-home', kind: 'ip6tnl', proto: 'ipip6', up: true, mtu: 1460, local: VPS6, remote: HOME6, encaplimit: false, rxBytes: 0, txBytes: 0 }])
  })
})
