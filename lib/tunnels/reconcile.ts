// Makes the system's tunnels what config says (jobs/tunnels.ts): creates what is missing, adopts a link of
// the configured name that is already right, changes what differs, removes what dualgate made and config
// no longer has. An external tunnel's link is watched and routed, never created or removed. Every change
// goes through `sh.apply`, so a dry run prints the plan; a run that finds everything right changes nothing.
import { mkdir } from 'node:fs/promises'
import path from 'node:path'
import { WG_KEY, type Config } from '../core/config.ts'
import type { Sh } from '../core/exec.ts'
import type { Logger } from '../core/log.ts'
import { readOwnedFile, trustedOwners } from '../core/safe-file.ts'
import type { TunnelRecord } from '../core/schema.ts'
import type { Store } from '../core/store.ts'
import { deleteLink, getLink, globalIpv4, setLinkUp } from '../net/ip.ts'
import {
  addAddresses,
  addSit,
  applyTunnelRouting,
  changeSit,
  FIRST_TUNNEL_TABLE,
  getTunnelLink,
  LAST_TUNNEL_TABLE,
  pinHostRoute4,
  removeAddressesIn,
  removeTunnelDefault,
  removeTunnelRouting,
  setLinkDown,
  setMtu,
  tunnelDefaultRoute,
  unpinHostRoute4,
  type TunnelLink,
} from '../net/tunnel.ts'
import { addKernelWg, ensureTun, isWireguardGo, kernelHasWireguard, startWireguardGo, waitForWireguardGo, wireguardGoNameTaken, wgPublicKey, wgState, wgSyncconf, type WgState } from '../net/wireguard.ts'
import { configuredTunnels, deviceSubnet, parseWgQuick, sitSettings, WgConfigError, tunnelsProblem, wgSetconfText, type SitTunnel, type Tunnel, type WgSettings, type WgTunnel } from './config.ts'

export interface TunnelsEnv {
  sh: Sh
  config: Config
  store: Store
  log: Logger
}

export type TunnelAction = 'created' | 'adopted' | 'changed' | 'unchanged' | 'down' | 'missing' | 'removed' | 'failed'

export interface TunnelOutcome {
  name: string
  iface: string
  type: Tunnel['type']
  action: TunnelAction
  backend?: 'kernel' | 'wireguard-go'
  detail?: string
}

export class TunnelConfigError extends Error {}

const SECRET_MAX_BYTES = 16 * 1024

/** A file of keys: root's, a regular file, readable by nobody else (lib/core/safe-file.ts). */
async function readSecretFile(file: string, what: string): Promise<string> {
  const read = await readOwnedFile(file, { owners: trustedOwners(), maxBytes: SECRET_MAX_BYTES, secret: true })
  if ('missing' in read) throw new TunnelConfigError(`${what} ${file} does not exist`)
  if ('refused' in read) throw new TunnelConfigError(`${what} ${file} refused: ${read.refused}`)
  return read.text
}

/** A key file's key; what it holds otherwise is never repeated. */
async function readKey(file: string, what: string): Promise<string> {
  const key = (await readSecretFile(file, what)).trim()
  if (!WG_KEY.test(key)) throw new TunnelConfigError(`${what} ${file} does not hold a WireGuard key (44 characters of base64, as wg genkey writes)`)
  return key
}

/** WireGuard keys and peers, and the addresses and MTU, from the section or its wg-quick file. */
async function wgSettings(t: WgTunnel): Promise<{ settings: WgSettings; address: string[]; mtu: number; ignored: string[] }> {
  if ('wgConfig' in t.source) {
    const file = parseWgQuick(await readSecretFile(t.source.wgConfig, 'wg_config'))
    return { settings: file.settings, address: t.address.length > 0 ? t.address : file.address, mtu: file.mtu ?? t.mtu, ignored: file.ignored }
  }
  const s = t.source
  const privateKey = await readKey(s.privateKeyFile, 'private_key_file')
  const presharedKey = s.presharedKeyFile ? await readKey(s.presharedKeyFile, 'preshared_key_file') : undefined
  return { settings: { privateKey, listenPort: s.listenPort, peers: [{ ...s.peer, presharedKey }] }, address: t.address, mtu: t.mtu, ignored: [] }
}

const sortedSet = (v: string[]) => [...new Set(v)].sort().join(',')

/** Whether the link's WireGuard state is what the settings say (endpoints by name cannot be compared: wg resolved them). */
export function wgMatches(state: WgState | undefined, want: WgSettings): boolean {
  if (!state) return false
  if (state.publicKey !== wgPublicKey(want.privateKey)) return false
  if (want.listenPort && state.listenPort !== want.listenPort) return false
  if (state.peers.length !== want.peers.length) return false
  return want.peers.every((p) => {
    const have = state.peers.find((x) => x.publicKey === p.publicKey)
    if (!have) return false
    const literal = p.endpoint && /^(\[[0-9a-fA-F:.]+\]|[\d.]+):\d+$/.test(p.endpoint)
    return (
      have.presharedKey === p.presharedKey &&
      (!literal || have.endpoint === p.endpoint) &&
      sortedSet(have.allowedIps) === sortedSet(p.allowedIps) &&
      have.persistentKeepalive === p.persistentKeepalive
    )
  })
}

export function freeTunnelTable(records: Record<string, TunnelRecord>): number {
  const used = new Set(Object.values(records).map((r) => r.table))
  for (let t = FIRST_TUNNEL_TABLE; t <= LAST_TUNNEL_TABLE; t++) if (!used.has(t)) return t
  throw new TunnelConfigError(`more than ${LAST_TUNNEL_TABLE - FIRST_TUNNEL_TABLE + 1} tunnels`)
}

interface Built {
  action: TunnelAction
  backend?: 'kernel' | 'wireguard-go'
  pid?: number
  detail?: string
  /** The addresses the routing rules follow. */
  addresses: string[]
}

async function ensureSit(env: TunnelsEnv, t: SitTunnel, link: TunnelLink | undefined, wan: string | undefined): Promise<Built> {
  const want = sitSettings(t, wan)
  if (!want) throw new TunnelConfigError(`local is auto and ${env.config.wanIf} has no IPv4 address`)
  let action: TunnelAction = 'unchanged'
  if (!link) {
    await addSit(env.sh, want)
    action = 'created'
  } else if (link.kind !== 'sit') {
    throw new TunnelConfigError(`interface ${t.iface} exists and is ${link.kind ?? 'not a tunnel'}, not sit: not touching it`)
  } else if (link.local !== want.local || link.remote !== want.remote || link.ttl !== want.ttl) {
    await changeSit(env.sh, want)
    action = 'changed'
  }
  if (!link || link.mtu !== t.mtu) {
    await setMtu(env.sh, t.iface, t.mtu)
    if (action === 'unchanged') action = 'changed'
  }
  if (await pinHostRoute4(env.sh, t.remote, tunnelIfaces(env.config)) && action === 'unchanged') action = 'changed'
  return { action, addresses: t.address }
}

async function ensureWg(env: TunnelsEnv, t: WgTunnel, link: TunnelLink | undefined, record: TunnelRecord | undefined): Promise<Built> {
  const want = await wgSettings(t)
  if (want.ignored.length > 0) env.log.debug(`tunnel ${t.name}: not acting on ${want.ignored.join(', ')} of its wg-quick file`)
  let action: TunnelAction = 'unchanged'
  let backend: Built['backend']
  let pid = record?.pid
  if (!link) {
    const kernel = t.backend !== 'wireguard-go' && (await kernelHasWireguard(env.sh))
    if (kernel && (await addKernelWg(env.sh, t.iface))) backend = 'kernel'
    else if (t.backend === 'kernel') throw new TunnelConfigError('backend is kernel, and this kernel has no WireGuard')
    else {
      if (!(await ensureTun(env.sh))) throw new TunnelConfigError('/dev/net/tun is missing (the TUN driver wireguard-go needs: kmod-tun on OpenWrt)')
      if (await wireguardGoNameTaken(t.iface)) throw new TunnelConfigError(`a wireguard-go named ${t.iface} runs already (in another network namespace?): choose another iface`)
      if (!env.sh.dryRun) await mkdir(env.config.runDir, { recursive: true })
      pid = await startWireguardGo(env.sh, t.iface, path.join(env.config.runDir, `wireguard-go-${t.name}.log`))
      if (!env.sh.dryRun && !(await waitForWireguardGo(env.sh, t.iface))) throw new TunnelConfigError(`wireguard-go (pid ${pid}) did not bring up ${t.iface}; see ${env.config.runDir}/wireguard-go-${t.name}.log`)
      backend = 'wireguard-go'
    }
    action = 'created'
  } else if (link.kind === 'wireguard') backend = 'kernel'
  else if (link.kind === 'tun') backend = 'wireguard-go'
  else throw new TunnelConfigError(`interface ${t.iface} exists and is ${link.kind ?? 'not a tunnel'}, not WireGuard: not touching it`)
  if (env.sh.dryRun && action === 'created') {
    await wgSyncconf(env.sh, t.iface, wgSetconfText(want.settings), path.join(env.config.runDir, 'wireguard'))
  } else if (!wgMatches(await wgState(env.sh, t.iface), want.settings)) {
    await wgSyncconf(env.sh, t.iface, wgSetconfText(want.settings), path.join(env.config.runDir, 'wireguard'))
    if (action === 'unchanged') action = 'changed'
  }
  if (!link || link.mtu !== want.mtu) {
    await setMtu(env.sh, t.iface, want.mtu)
    if (action === 'unchanged') action = 'changed'
  }
  return { action, backend, pid: backend === 'wireguard-go' ? pid : undefined, addresses: want.address }
}

function tunnelIfaces(config: Config): string[] {
  return configuredTunnels(config).map((t) => t.iface)
}

/** Takes down what dualgate made for a tunnel: its link (unless external), its routing, its broker route. */
async function removeTunnel(env: TunnelsEnv, name: string, record: TunnelRecord): Promise<void> {
  await removeTunnelRouting(env.sh, record.table)
  if (record.owned) {
    await deleteLink(env.sh, record.iface)
    // wireguard-go exits when its TUN goes; one that did not is ours (its pid is in the store) to stop.
    if (record.pid && !env.sh.dryRun) {
      await new Promise((r) => setTimeout(r, 200))
      if (await isWireguardGo(record.pid, record.iface)) process.kill(record.pid, 'SIGTERM')
    }
  }
  if (record.remote) await unpinHostRoute4(env.sh, record.remote)
  // An external link stays: the device addresses the relay put on it in the prefix go.
  const devices = deviceSubnet(record.prefix)
  if (!record.owned && devices) await removeAddressesIn(env.sh, record.iface, devices)
  env.log.info(`tunnel ${name}: removed${record.owned ? ` (${record.iface} deleted)` : ` (routing only; ${record.iface} is external)`}`)
}

export async function reconcileTunnels(env: TunnelsEnv): Promise<TunnelOutcome[]> {
  const tunnels = configuredTunnels(env.config)
  const problem = tunnelsProblem(tunnels)
  if (problem) throw new TunnelConfigError(problem)
  const data = await env.store.read()
  const records: Record<string, TunnelRecord> = { ...data.tunnels }
  const wan = globalIpv4(await getLink(env.sh, env.config.wanIf))
  const outcomes: TunnelOutcome[] = []
  const now = new Date().toISOString()
  const primary = await tunnelDefaultRoute(env.sh)

  for (const [name, record] of Object.entries(records)) {
    const t = tunnels.find((x) => x.name === name)
    if (t && t.enabled && t.iface === record.iface && t.type === record.type) continue
    await removeTunnel(env, name, record)
    if (primary === record.iface) await removeTunnelDefault(env.sh)
    delete records[name]
    outcomes.push({ name, iface: record.iface, type: record.type, action: 'removed' })
  }

  for (const t of tunnels.filter((x) => x.enabled)) {
    const record = records[t.name]
    const link = await getTunnelLink(env.sh, t.iface)
    try {
      let built: Built
      if (t.type === 'external') {
        if (!link) {
          outcomes.push({ name: t.name, iface: t.iface, type: t.type, action: 'missing', detail: `${t.iface} does not exist (an external tunnel is brought up by something else)` })
          continue
        }
        built = { action: 'unchanged', addresses: [] }
      } else if (t.type === '6in4') built = await ensureSit(env, t, link, wan)
      else built = await ensureWg(env, t, link, record)
      if (!record && link && built.action === 'unchanged' && t.type !== 'external') built.action = 'adopted'
      if (record?.remote && t.type === '6in4' && record.remote !== t.remote) await unpinHostRoute4(env.sh, record.remote)
      const table = record?.table ?? freeTunnelTable(records)
      records[t.name] = { type: t.type, iface: t.iface, table, owned: t.type !== 'external', prefix: t.prefix, remote: t.type === '6in4' ? t.remote : undefined, pid: built.pid, adminDown: record?.adminDown ?? false, since: record?.since ?? now }
      const current = link ? await getLink(env.sh, t.iface) : undefined
      const have = (current?.addresses ?? []).map((a) => `${a.address}/${a.prefixlen}`)
      if ((await addAddresses(env.sh, t.iface, built.addresses, have)).length > 0 && built.action === 'unchanged') built.action = 'changed'
      if (records[t.name].adminDown) {
        if (t.type !== 'external' && (!link || link.up)) await setLinkDown(env.sh, t.iface)
        if (primary === t.iface) await removeTunnelDefault(env.sh)
        outcomes.push({ name: t.name, iface: t.iface, type: t.type, action: 'down', backend: built.backend, detail: 'set down by tunnels down' })
        continue
      }
      if (t.type !== 'external' && (!link || !link.up)) {
        await setLinkUp(env.sh, t.iface)
        if (built.action === 'unchanged') built.action = 'changed'
      }
      const sources = [...built.addresses.filter((a) => a.includes(':')).map((a) => `${a.split('/')[0]}/128`), ...(t.prefix ? [t.prefix] : [])]
      if (!(t.type === 'external' && !link?.up)) {
        if ((await applyTunnelRouting(env.sh, { ifname: t.iface, table, sources })) > 0 && built.action === 'unchanged') built.action = 'changed'
      }
      outcomes.push({ name: t.name, iface: t.iface, type: t.type, action: built.action, backend: built.backend, detail: built.detail })
    } catch (err) {
      if (!(err instanceof TunnelConfigError) && !(err instanceof WgConfigError)) throw err
      outcomes.push({ name: t.name, iface: t.iface, type: t.type, action: 'failed', detail: err.message })
    }
  }

  if (!env.sh.dryRun && JSON.stringify(records) !== JSON.stringify(data.tunnels)) {
    await env.store.update((d) => {
      d.tunnels = records
    })
  }
  for (const o of outcomes) if (o.action !== 'unchanged') (o.action === 'failed' || o.action === 'missing' ? env.log.warn : env.log.info)(`tunnel ${o.name} (${o.iface}): ${o.action}${o.detail ? `: ${o.detail}` : ''}`)
  return outcomes
}
