#!/usr/bin/env node
// The device table, optionally filtered by status.
import { defineJob, runMain, UsageError } from '../lib/core/job.ts'
import { DEVICE_STATUSES, type Device, type DeviceStatus } from '../lib/core/schema.ts'
import { ago, formatTable } from '../lib/core/table.ts'

const job = defineJob({
  name: 'devices',
  description: 'List devices and their WAN identity; filter by status.',
  usage: `[${DEVICE_STATUSES.join('|')}]`,
  async run({ ctx }) {
    const [status, ...extra] = ctx.args
    if (extra.length > 0) throw new UsageError(`unexpected argument "${extra[0]}"`)
    if (status !== undefined && !DEVICE_STATUSES.includes(status as DeviceStatus)) {
      throw new UsageError(`unknown status "${status}"; one of ${DEVICE_STATUSES.join(', ')}`)
    }
    const devices = Object.values((await ctx.store.read()).devices)
    return devices.filter((d) => !status || d.status === status).sort((a, b) => a.firstSeen.localeCompare(b.firstSeen))
  },
  format(devices: Device[]) {
    if (devices.length === 0) return 'no devices'
    return formatTable(
      ['MAC', 'HOSTNAME', 'LAN IPV4', 'STATUS', 'WAN IPV4', 'WAN IPV6', 'LAST SEEN', 'NOTE'],
      devices.map((d) => [
        d.mac, d.hostname, d.lanIpv4, d.status, d.wanIpv4, d.wanIpv6.join(' '), ago(d.lastSeen),
        d.status === 'failed' ? `${d.reason ?? ''}${d.nextRetry ? ` (retry ${ago(d.nextRetry)})` : ''}` : undefined,
      ]),
    )
  },
})

export default job
await runMain(job, import.meta.url)
