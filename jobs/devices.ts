#!/usr/bin/env node
// The device table, optionally filtered by status.
import { defineJob, runMain, UsageError } from '../lib/core/job.ts'
import { listDevices, statusFilterError } from '../lib/devices/state.ts'
import { DEVICE_STATUSES, type Device, type DeviceStatus } from '../lib/core/schema.ts'
import { ago, formatTable } from '../lib/core/table.ts'

const job = defineJob({
  name: 'devices',
  description: 'List devices and their WAN identity; filter by status.',
  usage: `[${DEVICE_STATUSES.join('|')}]`,
  async run({ ctx }) {
    const [status, ...extra] = ctx.args
    if (extra.length > 0) throw new UsageError(`unexpected argument "${extra[0]}"`)
    const why = statusFilterError(status)
    if (why) throw new UsageError(why)
    return listDevices(await ctx.store.read(), status as DeviceStatus | undefined)
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
