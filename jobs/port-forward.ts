#!/usr/bin/env node
// Port forwards from the command line: add, remove, list, and the original gateway's per-device defaults.
import { addForwards, ForwardError, QUICK_DEVICE_PORTS, removeForward } from '../lib/reach/forwards.ts'
import { defineJob, runMain, UsageError, type JobContext } from '../lib/core/job.ts'
import { requireInterfaces } from '../lib/devices/lan.ts'
import { syncNat } from '../lib/reach/nat.ts'
import type { Forward } from '../lib/core/schema.ts'
import { formatTable } from '../lib/core/table.ts'
import { requestRun } from '../lib/core/trigger.ts'

export interface ForwardResult { action: 'add' | 'remove' | 'list' | 'quick-device'; forwards: Forward[] }

async function applied(ctx: JobContext): Promise<void> {
  await syncNat(ctx, () => ctx.store.read())
  if (!ctx.dryRun) await requestRun(ctx.config, 'refresh-proxies', 'port-forward', 'changed')
}

/** A refused change (ForwardError) becomes a usage error; nothing was written. */
async function change<T>(work: Promise<T>): Promise<T> {
  try {
    return await work
  } catch (err) {
    if (err instanceof ForwardError) throw new UsageError(err.message)
    throw err
  }
}

const job = defineJob({
  name: 'port-forward',
  role: 'gateway',
  description: 'Manage port forwards: add <gatewayPort> <deviceIp> <devicePort> | remove <id>|<gatewayPort> <deviceIp> <devicePort> | list | quick-device <deviceIp>',
  usage: 'add|remove|list|quick-device ...',
  options: { proto: { type: 'string' }, family: { type: 'string' } },
  async run({ ctx }): Promise<ForwardResult> {
    const [action, ...args] = ctx.args
    const opts = { proto: ctx.options.proto, family: ctx.options.family }
    if (!['list', 'add', 'remove', 'quick-device', undefined].includes(action)) throw new UsageError(`unknown action "${action}"`)
    if (action !== 'list' && action !== undefined) await requireInterfaces(ctx.sh, ctx.config)
    switch (action) {
      case 'list':
      case undefined:
        return { action: 'list', forwards: (await ctx.store.read()).forwards }
      case 'add': {
        if (args.length !== 3) throw new UsageError('add takes <gatewayPort> <deviceIp> <devicePort>')
        const [gatewayPort, deviceIp, devicePort] = args
        const added = await change(addForwards(ctx.store, ctx.config, [{ gatewayPort, deviceIp, devicePort, ...opts }]))
        await applied(ctx)
        ctx.log.info(`forward ${added[0].id}: ${added[0].proto}/${gatewayPort} -> ${deviceIp}:${devicePort} (IPv${added[0].family})`)
        return { action: 'add', forwards: added }
      }
      case 'remove': {
        if (args.length !== 1 && args.length !== 3) throw new UsageError('remove takes <id> or <gatewayPort> <deviceIp> <devicePort>')
        const key = args.length === 1 ? { id: args[0] } : { gatewayPort: args[0], deviceIp: args[1], devicePort: args[2] }
        const removed = await change(removeForward(ctx.store, key))
        await applied(ctx)
        ctx.log.info(`forward ${removed.id} removed`)
        return { action: 'remove', forwards: [removed] }
      }
      case 'quick-device': {
        if (args.length !== 1) throw new UsageError('quick-device takes <deviceIp>')
        const added = await change(addForwards(ctx.store, ctx.config, QUICK_DEVICE_PORTS.map(([gatewayPort, devicePort]) => ({ gatewayPort, deviceIp: args[0], devicePort, ...opts }))))
        await applied(ctx)
        return { action: 'quick-device', forwards: added }
      }
      default:
        throw new UsageError(`unknown action "${action}"`)
    }
  },
  format: (r: ForwardResult) => (r.forwards.length === 0
    ? 'no forwards'
    : formatTable(['ID', 'PROTO', 'GATEWAY PORT', 'DEVICE', 'FAMILY'], r.forwards.map((f) => [f.id, f.proto, f.gatewayPort, `${f.deviceIp}:${f.devicePort}`, f.family === 'both' ? '4+6' : f.family]))),
})

export default job
await runMain(job, import.meta.url)
