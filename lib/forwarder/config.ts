// The forwards and forwarder peers as config declares them (`config forward`, `config forwarder_peer`, checked
// one at a time in lib/core/config.ts), typed, with the rules across sections. Pure.
import { forwardPorts, type Config, type Section } from '../core/config.ts'

export type ForwardProto = 'tcp' | 'udp'

interface ForwardCommon {
  name: string
  enabled: boolean
  /** '4', '6', 'both', or one address of this host. */
  listen: string
  /** [first, last]; undefined: every port (kernel mode on an address of its own). */
  ports?: [number, number]
  protos: ForwardProto[]
  /** A host name or an IPv6 literal. */
  target: string
  /** Where ports[0] lands on the target; the range follows. */
  targetPort?: number
}

export interface RelayForward extends ForwardCommon {
  mode: 'relay'
  ports: [number, number]
  targetPort: number
  ipv4Fallback: boolean
  proxyProtocol: boolean
}

/** How a kernel-mode forward's tunnel is made: forwards that name the same iface share it. */
export interface ForwardTunnel {
  transport: 'ipip6' | 'wireguard'
  iface: string
  mtu: number
  encaplimit: boolean
  wireguard?: { privateKeyFile: string; peerPublicKey: string; listenPort: number }
}

export interface KernelForward extends ForwardCommon {
  mode: 'kernel'
  /** The home server's IPv4 on the home LAN. */
  targetAddress: string
  tunnel: ForwardTunnel
}

export type Forward = RelayForward | KernelForward

export interface ForwarderPeer {
  name: string
  enabled: boolean
  remote: string
  /** An IPv6, or "auto": the WAN's global address. */
  local: string
  transport: 'ipip6' | 'wireguard'
  iface: string
  servers: string[]
  /** "all", or ports such as 22,80,8000-8100. */
  ports: string
  mtu: number
  encaplimit: boolean
  wireguard?: { privateKeyFile: string; peerPublicKey: string; endpointPort: number }
}

/** ipip6 with its encapsulation limit option (8 bytes) and without; WireGuard over IPv6. */
export const IPIP6_MTU = 1452
export const IPIP6_MTU_NO_ENCAPLIMIT = 1460
export const WG6_MTU = 1420

export function tunnelMtu(t: Pick<ForwardTunnel, 'transport' | 'mtu' | 'encaplimit'>): number {
  if (t.mtu) return t.mtu
  if (t.transport === 'wireguard') return WG6_MTU
  return t.encaplimit ? IPIP6_MTU : IPIP6_MTU_NO_ENCAPLIMIT
}

const str = (v: unknown) => (typeof v === 'string' ? v : '')

export function forwardFromSection(s: Section): Forward {
  const ports = forwardPorts(str(s.port))
  const common: ForwardCommon = {
    name: s.name,
    enabled: s.enabled as boolean,
    listen: str(s.listen),
    ports,
    protos: s.proto === 'both' ? ['tcp', 'udp'] : [s.proto as ForwardProto],
    target: str(s.target),
    targetPort: ports ? (s.targetPort as number) || ports[0] : undefined,
  }
  if (s.mode === 'relay') {
    return { ...common, mode: 'relay', ports: ports!, targetPort: common.targetPort!, ipv4Fallback: s.ipv4Fallback as boolean, proxyProtocol: s.proxyProtocol as boolean }
  }
  const transport = s.transport as ForwardTunnel['transport']
  return {
    ...common,
    mode: 'kernel',
    targetAddress: str(s.targetAddress),
    tunnel: {
      transport,
      iface: str(s.iface) || `dgf-${s.name}`.slice(0, 15),
      mtu: s.mtu as number,
      encaplimit: s.encaplimit as boolean,
      wireguard: transport === 'wireguard' ? { privateKeyFile: str(s.privateKeyFile), peerPublicKey: str(s.peerPublicKey), listenPort: s.listenPort as number } : undefined,
    },
  }
}

export function peerFromSection(s: Section): ForwarderPeer {
  const transport = s.transport as ForwarderPeer['transport']
  return {
    name: s.name,
    enabled: s.enabled as boolean,
    remote: str(s.remote),
    local: str(s.local),
    transport,
    iface: str(s.iface) || `dgp-${s.name}`.slice(0, 15),
    servers: s.servers as string[],
    ports: str(s.ports),
    mtu: s.mtu as number,
    encaplimit: s.encaplimit as boolean,
    wireguard: transport === 'wireguard' ? { privateKeyFile: str(s.privateKeyFile), peerPublicKey: str(s.peerPublicKey), endpointPort: s.endpointPort as number } : undefined,
  }
}

export function configuredForwards(config: Pick<Config, 'sections'>): Forward[] {
  return (config.sections.forwards ?? []).map(forwardFromSection)
}

export function configuredPeers(config: Pick<Config, 'sections'>): ForwarderPeer[] {
  return (config.sections.forwarderPeers ?? []).map(peerFromSection)
}

/** Whether the forwarder job has anything to keep on this host: kernel-mode forwards, or forwarder peers. */
export function hasKernelForwarding(config: Pick<Config, 'sections'>): boolean {
  return configuredForwards(config).some((f) => f.mode === 'kernel') || configuredPeers(config).length > 0
}

/** The listening sockets a forward asks for, as `proto family port` keys (for clashes between forwards). */
function listenKeys(f: Forward): string[] {
  const families = f.listen === 'both' ? ['4', '6'] : [f.listen]
  const ports = f.ports ? [`${f.ports[0]}-${f.ports[1]}`] : ['all']
  return f.protos.flatMap((p) => families.flatMap((fam) => ports.map((r) => `${p} ${fam} ${r}`)))
}

const overlaps = (a: string, b: string) => {
  const [pa, fa, ra] = a.split(' ')
  const [pb, fb, rb] = b.split(' ')
  if (pa !== pb) return false
  // "4" and "6" cover every address of their family: they meet an address of the same family.
  const family = (x: string) => (x === '4' || x === '6' ? x : x.includes(':') ? '6' : '4')
  if (fa !== fb && (family(fa) !== family(fb) || (fa !== '4' && fa !== '6' && fb !== '4' && fb !== '6'))) return false
  if (ra === 'all' || rb === 'all') return true
  const [a0, a1] = ra.split('-').map(Number)
  const [b0, b1] = rb.split('-').map(Number)
  return a0 <= b1 && b0 <= a1
}

/** Rules across forwards: no two take the same port, and forwards sharing a tunnel agree on how it is made. */
export function forwardsProblem(forwards: Forward[]): string | undefined {
  const enabled = forwards.filter((f) => f.enabled)
  for (const [i, a] of enabled.entries()) {
    for (const b of enabled.slice(i + 1)) {
      const clash = listenKeys(a).find((ka) => listenKeys(b).some((kb) => overlaps(ka, kb)))
      if (clash) return `forwards ${a.name} and ${b.name} both take ${clash.split(' ')[0]} port ${clash.split(' ')[2]}`
    }
  }
  const tunnels = new Map<string, KernelForward>()
  for (const [i, f] of enabled.entries()) {
    if (f.mode !== 'kernel') continue
    // The VPS routes a target address into one tunnel: two homes' servers at the same LAN address cannot share it.
    const sameAddress = enabled.slice(i + 1).find((g): g is KernelForward => g.mode === 'kernel' && g.targetAddress === f.targetAddress && g.tunnel.iface !== f.tunnel.iface)
    if (sameAddress) return `forwards ${f.name} and ${sameAddress.name} send target_address ${f.targetAddress} through different tunnels (${f.tunnel.iface}, ${sameAddress.tunnel.iface}); the VPS routes an address into one tunnel only`
    const first = tunnels.get(f.tunnel.iface)
    if (!first) { tunnels.set(f.tunnel.iface, f); continue }
    if (first.target !== f.target || JSON.stringify(first.tunnel) !== JSON.stringify(f.tunnel)) {
      return `forwards ${first.name} and ${f.name} share tunnel ${f.tunnel.iface} but differ in target or its settings`
    }
  }
  return undefined
}

export function peersProblem(peers: ForwarderPeer[]): string | undefined {
  const seen = new Map<string, string>()
  for (const p of peers) {
    const other = seen.get(p.iface)
    if (other) return `forwarder peers ${other} and ${p.name} both use interface ${p.iface}`
    seen.set(p.iface, p.name)
  }
  return undefined
}
