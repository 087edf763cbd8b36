#!/usr/bin/env node
// Reconciles what should be reachable with what is: the nftables table (device NAT, IPv4 port forwards,
// hairpin) in the kernel, and the relay's listeners, which the runner applies from the store. Idempotent;
// runs on a schedule, when devices change, and when the runner starts.
import { defineJob, runMain } from '../lib/core/job.ts'
import { ensureForwarding } from '../lib/devices/identity.ts'
import { requireInterfaces } from '../lib/devices/lan.ts'
import { syncNat } from '../lib/reach/nat.ts'
import { relayView } from '../lib/reach/relay-view.ts'

export interface RefreshResult { table: 'present' | 'created'; added: number; removed: number; forwards: number; relayListeners: number }

const job = defineJob({
  name: 'refresh-proxies',
  role: 'gateway',
  description: 'Reconcile port forwards, device NAT and relay listeners with the store.',
  exclusive: true,
  async run({ ctx }): Promise<RefreshResult> {
    await requireInterfaces(ctx.sh, ctx.config)
    // The runner runs this job at start: a host that rebooted without our sysctl file forwards again.
    await ensureForwarding(ctx)
    const nat = await syncNat(ctx, () => ctx.store.read())
    const data = await ctx.store.read()
    if (nat.table === 'created') ctx.log.info('nftables table inet dualgate (re)created')
    if (nat.added + nat.removed > 0) ctx.log.info(`nftables: ${nat.added} elements added, ${nat.removed} removed`)
    return { ...nat, forwards: data.forwards.length, relayListeners: (await relayView(ctx.sh, ctx.config, data)).rules.length }
  },
  format: (r: RefreshResult) => `nftables table ${r.table}: +${r.added} -${r.removed} elements; ${r.forwards} forwards; ${r.relayListeners} relay listeners planned`,
})

export default job
await runMain(job, import.meta.url)
