#!/usr/bin/env node
// IPv6 tunnels from config (`config tunnel` sections): reconciles links, addresses and routing tables
// (lib/tunnels/reconcile.ts); `list` shows them; `up NAME` and `down NAME` let a person take one out of
// service and back. Health and failover are the runner's (lib/tunnels/supervisor.ts).
import { defineJob, runMain, UsageError, type JobContext } from '../lib/core/job.ts'
import { formatTable } from '../lib/core/table.ts'
import { getLink } from '../lib/net/ip.ts'
import { tunnelDefaultRoute } from '../lib/net/tunnel.ts'
import { configuredTunnels } from '../lib/tunnels/config.ts'
import { reconcileTunnels, type TunnelOutcome } from '../lib/tunnels/reconcile.ts'

export interface TunnelRow {
  name: string
  type: string
  iface: string
  enabled: boolean
  adminDown: boolean
  link: 'up' | 'down' | 'missing'
  addresses: string[]
  primary: boolean
}

export type TunnelsResult = { action: 'reconcile' | 'up' | 'down'; tunnels: TunnelOutcome[] } | { action: 'list'; rows: TunnelRow[] }

async function list(ctx: JobContext): Promise<TunnelRow[]> {
  const data = await ctx.store.read()
  const primary = await tunnelDefaultRoute(ctx.sh)
  const rows: TunnelRow[] = []
  for (const t of configuredTunnels(ctx.config)) {
    const link = await getLink(ctx.sh, t.iface)
    rows.push({
      name: t.name,
      type: t.type,
      iface: t.iface,
      enabled: t.enabled,
      adminDown: data.tunnels[t.name]?.adminDown ?? false,
      link: !link ? 'missing' : link.up ? 'up' : 'down',
      addresses: (link?.addresses ?? []).filter((a) => a.scope === 'global').map((a) => `${a.address}/${a.prefixlen}`),
      primary: primary === t.iface,
    })
  }
  return rows
}

async function setAdminDown(ctx: JobContext, name: string | undefined, down: boolean): Promise<void> {
  if (!name) throw new UsageError(`${down ? 'down' : 'up'} takes a tunnel name`)
  if (!configuredTunnels(ctx.config).some((t) => t.name === name)) throw new UsageError(`no tunnel "${name}" in config`)
  if (ctx.dryRun) return
  // A tunnel never made has no record yet: make it, then set it down.
  if (!(await ctx.store.read()).tunnels[name]) await reconcileTunnels(ctx)
  await ctx.store.update((d) => {
    const record = d.tunnels[name]
    if (record) record.adminDown = down
  })
}

const job = defineJob({
  name: 'tunnels',
  description: 'Reconcile IPv6 tunnels with config: [list | up NAME | down NAME]',
  usage: '[list | up NAME | down NAME]',
  exclusive: true,
  async run({ ctx }): Promise<TunnelsResult> {
    const [action, name, ...rest] = ctx.args
    if (rest.length > 0) throw new UsageError('too many arguments')
    switch (action) {
      case 'list':
        return { action: 'list', rows: await list(ctx) }
      case 'up':
      case 'down':
        await setAdminDown(ctx, name, action === 'down')
        return { action, tunnels: await reconcileTunnels(ctx) }
      case undefined:
        return { action: 'reconcile', tunnels: await reconcileTunnels(ctx) }
      default:
        throw new UsageError(`unknown action "${action}"`)
    }
  },
  format: (r: TunnelsResult) => {
    if (r.action === 'list') {
      if (r.rows.length === 0) return 'no tunnels configured'
      return formatTable(['NAME', 'TYPE', 'IFACE', 'LINK', 'PRIMARY', 'ADDRESSES'], r.rows.map((t) => [
        t.name, t.type, t.iface, !t.enabled ? 'disabled' : t.adminDown ? 'set down' : t.link, t.primary ? 'yes' : '', t.addresses.join(' '),
      ]))
    }
    if (r.tunnels.length === 0) return 'no tunnels configured'
    return formatTable(['NAME', 'TYPE', 'IFACE', 'ACTION', 'DETAIL'], r.tunnels.map((t) => [t.name, t.type, t.iface, t.action, [t.backend, t.detail].filter(Boolean).join('; ')]))
  },
  exitCode: (r: TunnelsResult) => (r.action !== 'list' && r.tunnels.some((t) => t.action === 'failed') ? 1 : 0),
})

export default job
await runMain(job, import.meta.url)
