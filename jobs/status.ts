#!/usr/bin/env node
// Gateway summary: interfaces and addresses, devices by status, the runner, the last run of each job.
import { defineJob, runMain } from '../lib/core/job.ts'
import { gatewayStatus, type GatewayStatus } from '../lib/devices/status.ts'
import { listLinks } from '../lib/net/ip.ts'
import { ago, formatTable } from '../lib/core/table.ts'

const job = defineJob({
  name: 'status',
  description: 'Gateway summary: interfaces, devices by status, runner, last job runs.',
  async run({ ctx }) {
    return gatewayStatus({ config: ctx.config, data: await ctx.store.read(), links: await listLinks(ctx.sh) })
  },
  format(s: GatewayStatus) {
    const interfaces = formatTable(
      ['ROLE', 'INTERFACE', 'STATE', 'MAC', 'ADDRESSES'],
      s.interfaces.map((i) => [i.role, i.ifname, i.present ? (i.up ? 'up' : 'down') : 'missing', i.mac, i.addresses.join(' ')]),
    )
    const { total, ...byStatus } = s.devices
    const devices = `devices: ${total} (${Object.entries(byStatus).map(([k, v]) => `${k} ${v}`).join(', ')})`
    const runner = `runner: ${s.runner.up ? `up (pid ${s.runner.pid})` : 'down'}`
    const jobs = Object.keys(s.jobs).length === 0
      ? 'jobs: none has run yet'
      : formatTable(
        ['JOB', 'LAST RUN', 'RESULT', 'RUNS', 'FAILURES'],
        Object.entries(s.jobs).map(([name, j]) => [name, ago(j.last?.startedAt), j.last ? (j.last.ok ? 'ok' : `failed: ${j.last.error ?? ''}`) : undefined, j.runs, j.failures]),
      )
    return [interfaces, '', devices, runner, '', jobs].join('\n')
  },
})

export default job
await runMain(job, import.meta.url)
