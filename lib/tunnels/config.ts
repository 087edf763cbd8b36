// The tunnels as config declares them (`config tunnel` sections, checked in lib/core/config.ts), typed per
// kind, and the WireGuard settings from a wg-quick style file. Pure: files are read by the caller.
import { WG_KEY, type Config, type Section } from '../core/config.ts'

interface Common {
  name: string
  iface: string
  enabled: boolean
  priority: number
  probe: string[]
  /** A routed prefix: traffic from it always leaves through this tunnel. */
  prefix?: string
}

export interface SitTunnel extends Common {
  type: '6in4'
  remote: string
  /** An IPv4, or "auto": the WAN's. */
  local: string
  address: string[]
  mtu: number
  ttl: number
  he?: { tunnelId: string; username: string; keyFile: string }
}

export interface WgPeer {
  publicKey: string
  presharedKey?: string
  endpoint?: string
  allowedIps: string[]
  persistentKeepalive: number
}

/** What `wg setconf` takes (no addresses, MTU or scripts: those are wg-quick's, and ours). */
export interface WgSettings {
  privateKey: string
  listenPort: number
  peers: WgPeer[]
}

export interface WgTunnel extends Common {
  type: 'wireguard'
  backend: 'auto' | 'kernel' | 'wireguard-go'
  address: string[]
  mtu: number
  /** Where the keys come from: a wg-quick file, or the section's own options with key files. */
  source: { wgConfig: string } | { privateKeyFile: string; presharedKeyFile?: string; peer: Omit<WgPeer, 'presharedKey'>; listenPort: number }
}

export interface ExternalTunnel extends Common {
  type: 'external'
}

export type Tunnel = SitTunnel | WgTunnel | ExternalTunnel

export const SIT_MTU = 1480
export const WG_MTU = 1420

const str = (v: unknown) => (typeof v === 'string' ? v : '')

export function tunnelFromSection(s: Section): Tunnel {
  const common: Common = {
    name: s.name,
    iface: str(s.iface),
    enabled: s.enabled as boolean,
    priority: s.priority as number,
    probe: s.probe as string[],
    prefix: str(s.prefix) || undefined,
  }
  if (s.type === '6in4') {
    const he = s.heTunnelId ? { tunnelId: str(s.heTunnelId), username: str(s.heUsername), keyFile: str(s.heKeyFile) } : undefined
    return { ...common, type: '6in4', remote: str(s.remote), local: str(s.local), address: s.address as string[], mtu: (s.mtu as number) || SIT_MTU, ttl: s.ttl as number, he }
  }
  if (s.type === 'wireguard') {
    const source: WgTunnel['source'] = s.wgConfig
      ? { wgConfig: str(s.wgConfig) }
      : {
          privateKeyFile: str(s.privateKeyFile),
          presharedKeyFile: str(s.presharedKeyFile) || undefined,
          peer: { publicKey: str(s.peerPublicKey), endpoint: str(s.endpoint), allowedIps: s.allowedIps as string[], persistentKeepalive: s.persistentKeepalive as number },
          listenPort: s.listenPort as number,
        }
    return { ...common, type: 'wireguard', backend: s.backend as WgTunnel['backend'], address: s.address as string[], mtu: (s.mtu as number) || WG_MTU, source }
  }
  return { ...common, type: 'external' }
}

/**
 * Where devices get their addresses in a tunnel's routed prefix (a /64 or shorter): its first /64. These are
 * the devices' (lib/reach/relay-view.ts), not this host's: never a source for the host's own traffic.
 */
export function deviceSubnet(prefix: string | undefined): string | undefined {
  return prefix && Number(prefix.split('/')[1]) <= 64 ? `${prefix.split('/')[0]}/64` : undefined
}

/** A sit tunnel's outer settings: `local auto` is the WAN's IPv4 (undefined while the WAN has none). */
export function sitSettings(t: SitTunnel, wanIpv4: string | undefined): { ifname: string; local: string; remote: string; ttl: number } | undefined {
  const local = t.local === 'auto' ? wanIpv4 : t.local
  return local ? { ifname: t.iface, local, remote: t.remote, ttl: t.ttl } : undefined
}

/** Whether config has any tunnel (the tunnels job and the HE updater have nothing to do without one). */
export function hasTunnels(config: Pick<Config, 'sections'>): boolean {
  return (config.sections.tunnels?.length ?? 0) > 0
}

export function configuredTunnels(config: Pick<Config, 'sections'>): Tunnel[] {
  return (config.sections.tunnels ?? []).map(tunnelFromSection)
}

/** An enabled 6in4 tunnel with Hurricane Electric settings (the config checks they come together). */
export type HeTunnel = SitTunnel & { he: NonNullable<SitTunnel['he']> }

/** The tunnels jobs/he-update.ts keeps the broker told about. */
export function heTunnels(config: Pick<Config, 'sections'>): HeTunnel[] {
  return configuredTunnels(config).filter((t): t is HeTunnel => t.type === '6in4' && t.enabled && t.he !== undefined)
}

/** Two tunnels may not share an interface; checked here since sections are checked one at a time. */
export function tunnelsProblem(tunnels: Tunnel[]): string | undefined {
  const seen = new Map<string, string>()
  for (const t of tunnels) {
    const other = seen.get(t.iface)
    if (other) return `tunnels ${other} and ${t.name} both use interface ${t.iface}`
    seen.set(t.iface, t.name)
  }
  return undefined
}

/** The parts of a wg-quick file dualgate uses, and what it leaves alone. */
export interface WgQuickFile {
  settings: WgSettings
  address: string[]
  mtu?: number
  /** Keys dualgate does not act on (DNS, Table, PreUp, PostUp, ...): never run, reported once. */
  ignored: string[]
}

export class WgConfigError extends Error {}

const splitList = (v: string) => v.split(',').map((x) => x.trim()).filter(Boolean)

/**
 * Parses a wg-quick file. Errors name the line, never its value (the file holds the private key).
 */
export function parseWgQuick(text: string): WgQuickFile {
  const out: WgQuickFile = { settings: { privateKey: '', listenPort: 0, peers: [] }, address: [], ignored: [] }
  let section: 'interface' | 'peer' | undefined
  let peer: WgPeer | undefined
  const lines = text.split('\n')
  for (const [i, raw] of lines.entries()) {
    const line = raw.replace(/#.*/, '').trim()
    if (!line) continue
    const where = `line ${i + 1}`
    const header = /^\[(\w+)\]$/.exec(line)
    if (header) {
      const name = header[1].toLowerCase()
      if (name === 'interface') section = 'interface'
      else if (name === 'peer') {
        section = 'peer'
        peer = { publicKey: '', allowedIps: [], persistentKeepalive: 0 }
        out.settings.peers.push(peer)
      } else throw new WgConfigError(`${where}: unknown section [${header[1]}]`)
      continue
    }
    const kv = /^(\w+)\s*=\s*(.*)$/.exec(line)
    if (!kv || !section) throw new WgConfigError(`${where}: expected "Key = value" inside [Interface] or [Peer]`)
    const key = kv[1].toLowerCase()
    const value = kv[2].trim()
    const number = (max: number) => {
      if (!/^\d{1,5}$/.test(value) || Number(value) > max) throw new WgConfigError(`${where}: ${kv[1]} must be a number up to ${max}`)
      return Number(value)
    }
    const wgKey = () => {
      if (!WG_KEY.test(value)) throw new WgConfigError(`${where}: ${kv[1]} is not a WireGuard key`)
      return value
    }
    if (section === 'interface') {
      if (key === 'privatekey') out.settings.privateKey = wgKey()
      else if (key === 'listenport') out.settings.listenPort = number(65_535)
      else if (key === 'address') out.address.push(...splitList(value))
      else if (key === 'mtu') out.mtu = number(9000)
      else out.ignored.push(kv[1])
    } else if (peer) {
      if (key === 'publickey') peer.publicKey = wgKey()
      else if (key === 'presharedkey') peer.presharedKey = wgKey()
      else if (key === 'endpoint') peer.endpoint = value
      else if (key === 'allowedips') peer.allowedIps.push(...splitList(value))
      else if (key === 'persistentkeepalive') peer.persistentKeepalive = value === 'off' ? 0 : number(65_535)
      else throw new WgConfigError(`${where}: unknown [Peer] key ${kv[1]}`)
    }
  }
  if (!out.settings.privateKey) throw new WgConfigError('no PrivateKey in [Interface]')
  const keyless = out.settings.peers.findIndex((p) => !p.publicKey)
  if (keyless >= 0) throw new WgConfigError(`[Peer] ${keyless + 1} has no PublicKey`)
  return out
}

/** The text `wg setconf` reads. It holds the private key: pass it on stdin, never as an argument or a file left behind. */
export function wgSetconfText(s: WgSettings): string {
  const lines = ['[Interface]', `PrivateKey = ${s.privateKey}`]
  if (s.listenPort) lines.push(`ListenPort = ${s.listenPort}`)
  for (const p of s.peers) {
    lines.push('', '[Peer]', `PublicKey = ${p.publicKey}`)
    if (p.presharedKey) lines.push(`PresharedKey = ${p.presharedKey}`)
    if (p.endpoint) lines.push(`Endpoint = ${p.endpoint}`)
    if (p.allowedIps.length > 0) lines.push(`AllowedIPs = ${p.allowedIps.join(', ')}`)
    if (p.persistentKeepalive) lines.push(`PersistentKeepalive = ${p.persistentKeepalive}`)
  }
  return `${lines.join('\n')}\n`
}
