#!/usr/bin/env node
// The forwarder's kernel mode, both ends: on a VPS (role forwarder) the tunnels, routes and DNAT of kernel-mode
// forwards; on a home router (role gateway) the forwarder peers' tunnels, policy routing and firewall
// (lib/forwarder/kernel-apply.ts). `list` shows every forward, relay ones with the runner's counts (its relay
// serves them: lib/forwarder/supervisor.ts), and the peers.
import { apiGet } from '../lib/core/api-client.ts'
import { defineJob, runMain, UsageError, type JobContext } from '../lib/core/job.ts'
import { liveRunner } from '../lib/core/runner-state.ts'
import { ago, formatTable } from '../lib/core/table.ts'
import { configuredForwards, configuredPeers, type Forward } from '../lib/forwarder/config.ts'
import { reconcileKernel, type KernelResult } from '../lib/forwarder/kernel-apply.ts'
import { forwardCounter, FWD_NFT_TABLE } from '../lib/forwarder/kernel-plan.ts'
import { getIp6tnlLink } from '../lib/net/ip6tnl.ts'
import { readCounters } from '../lib/net/nft.ts'

export interface ForwardRow {
  name: string
  mode: Forward['mode']
  enabled: boolean
  listen: string
  ports: string
  proto: string
  target: string
  /** The target's address in use (kernel: the tunnel's far end; relay: the runner's). */
  address?: string
  /** The last resolution: when its outcome last changed (kernel) or when it was made (relay), and its error. */
  resolvedAt?: string
  resolveError?: string
  /** Kernel: the tunnel's link; relay: whether the runner listens. */
  state: string
  /** Relay: TCP connections open now. */
  connections?: number
  /** Connections opened: relay since the runner started, kernel since the nftables table was last written. */
  opened?: number
  bytes?: number
}

export interface PeerRow {
  name: string
  enabled: boolean
  iface: string
  transport: string
  remote: string
  address?: string
  resolveError?: string
  link: 'up' | 'down' | 'missing'
  servers: string[]
  ports: string
}

export type ForwarderResult = ({ action: 'reconcile' } & KernelResult) | { action: 'list'; forwards: ForwardRow[]; peers: PeerRow[]; runner: string }

/** What the runner says of one relay forward (GET /forwarder); every field optional, since it is another process's. */
interface LiveForward { name?: unknown; address?: unknown; resolvedAt?: unknown; resolveError?: unknown; listening?: unknown; connections?: unknown; connectionsTotal?: unknown; bytes?: unknown; bytesTotal?: unknown }

const num = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v : undefined)
const text = (v: unknown) => (typeof v === 'string' ? v : undefined)

async function runnerForwards(ctx: JobContext): Promise<{ runner: string; live: LiveForward[] }> {
  if (!liveRunner(ctx.config.dataDir)) return { runner: 'not running', live: [] }
  const r = await apiGet(ctx.config, '/forwarder')
  if (typeof r === 'string') return { runner: `GET /forwarder failed (${r})`, live: [] }
  const list = (r.body as { forwards?: unknown } | undefined)?.forwards
  if (r.status !== 200 || !Array.isArray(list)) return { runner: `GET /forwarder: HTTP ${r.status}`, live: [] }
  return { runner: 'up', live: list as LiveForward[] }
}

async function list(ctx: JobContext): Promise<ForwarderResult> {
  const records = (await ctx.store.read()).forwarderTunnels
  const forwards = configuredForwards(ctx.config)
  const { runner, live } = forwards.some((f) => f.mode === 'relay') ? await runnerForwards(ctx) : { runner: 'not asked', live: [] }
  const counters = forwards.some((f) => f.mode === 'kernel') ? await readCounters(ctx.sh, FWD_NFT_TABLE) : new Map()
  const rows: ForwardRow[] = []
  for (const f of forwards) {
    const base = {
      name: f.name,
      mode: f.mode,
      enabled: f.enabled,
      listen: f.listen,
      ports: f.ports ? (f.ports[0] === f.ports[1] ? String(f.ports[0]) : `${f.ports[0]}-${f.ports[1]}`) : 'all',
      proto: f.protos.join(','),
      target: f.mode === 'kernel' ? `${f.target} -> ${f.targetAddress}${f.targetPort && f.targetPort !== f.ports?.[0] ? `:${f.targetPort}` : ''}` : `${f.target}:${f.targetPort}`,
    }
    if (f.mode === 'kernel') {
      const record = records[f.tunnel.iface]
      const link = await getIp6tnlLink(ctx.sh, f.tunnel.iface)
      const made = record?.names.includes(f.name)
      rows.push({
        ...base,
        address: record?.remote,
        resolvedAt: record?.changedAt,
        resolveError: record?.resolveError,
        state: `${f.tunnel.iface} ${!link ? 'missing' : link.up ? 'up' : 'down'}${made || !f.enabled ? '' : ', not made'}`,
        opened: counters.get(forwardCounter(f.name))?.packets,
      })
    } else {
      const l = live.find((x) => x.name === f.name)
      rows.push({
        ...base,
        address: text(l?.address),
        resolvedAt: text(l?.resolvedAt),
        resolveError: text(l?.resolveError),
        state: !l ? (runner === 'up' ? 'not served' : `runner ${runner}`) : l.listening === false ? 'not listening' : 'listening',
        connections: num(l?.connections),
        opened: num(l?.connectionsTotal),
        bytes: num(l?.bytesTotal) ?? num(l?.bytes),
      })
    }
  }
  const peers: PeerRow[] = []
  for (const p of configuredPeers(ctx.config)) {
    const link = await getIp6tnlLink(ctx.sh, p.iface)
    const record = records[p.iface]
    peers.push({ name: p.name, enabled: p.enabled, iface: p.iface, transport: p.transport, remote: p.remote, address: record?.remote, resolveError: record?.resolveError, link: !link ? 'missing' : link.up ? 'up' : 'down', servers: p.servers, ports: p.ports })
  }
  return { action: 'list', forwards: rows, peers, runner }
}

const job = defineJob({
  name: 'forwarder',
  description: 'Reconcile the forwarder\'s kernel mode (VPS tunnels and DNAT, home peers and policy routing) with config: [list]',
  usage: '[list]',
  exclusive: true,
  async run({ ctx }): Promise<ForwarderResult> {
    const [action, ...rest] = ctx.args
    if (rest.length > 0) throw new UsageError('too many arguments')
    if (action === 'list') return list(ctx)
    if (action !== undefined) throw new UsageError(`unknown action "${action}"`)
    return { action: 'reconcile', ...(await reconcileKernel(ctx)) }
  },
  format: (r: ForwarderResult) => {
    if (r.action === 'list') {
      const parts: string[] = []
      if (r.forwards.length === 0 && r.peers.length === 0) return 'no forwards or forwarder peers configured'
      if (r.forwards.length > 0) {
        parts.push(formatTable(['NAME', 'MODE', 'LISTEN', 'PORTS', 'PROTO', 'TARGET', 'ADDRESS', 'RESOLVED', 'STATE', 'CONNS', 'OPENED', 'BYTES'], r.forwards.map((f) => [
          f.name, f.mode, f.listen, f.ports, f.proto, f.target, f.address,
          f.resolveError ? `failed: ${f.resolveError}` : ago(f.resolvedAt), f.enabled ? f.state : 'disabled', f.connections, f.opened, f.bytes,
        ])))
      }
      if (r.peers.length > 0) {
        parts.push(formatTable(['PEER', 'IFACE', 'TRANSPORT', 'REMOTE', 'ADDRESS', 'LINK', 'SERVERS', 'PORTS'], r.peers.map((p) => [
          p.name, p.iface, p.transport, p.remote, p.resolveError ? `${p.address ?? '-'} (resolving failed: ${p.resolveError})` : p.address, p.enabled ? p.link : 'disabled', p.servers.join(','), p.ports,
        ])))
      }
      return parts.join('\n\n')
    }
    if (r.tunnels.length === 0) return r.changes === 0 ? 'no kernel forwards or forwarder peers configured' : `${r.changes} changes (everything removed)`
    const table = formatTable(['SIDE', 'NAME', 'IFACE', 'TRANSPORT', 'REMOTE', 'ACTION', 'DETAIL'], r.tunnels.map((t) => [t.side, t.name, t.iface, t.transport, t.remote, t.action, t.detail]))
    return `${table}\n${r.changes} change${r.changes === 1 ? '' : 's'}; nftables table ${r.nft}`
  },
  exitCode: (r: ForwarderResult) => (r.action === 'reconcile' && r.tunnels.some((t) => t.action === 'failed') ? 1 : 0),
})

export default job
await runMain(job, import.meta.url)
