// Device records and their state changes. Every change of status is one log line with the device's MAC, so
// `gateway-logs --device MAC` tells a device's story: discovered, acquiring, active, failed (why), gone.
import type { Logger } from '../core/log.ts'
import { FIRST_DEVICE_TABLE } from '../net/route.ts'
import { DEVICE_STATUSES, type Data, type Device, type DeviceStatus } from '../core/schema.ts'

export interface Transition { mac: string; from?: DeviceStatus; to: DeviceStatus; reason?: string }

/** Sets a device's status inside a store change; the caller logs the returned transition after the write. */
export function setStatus(device: Device, to: DeviceStatus, now: string, reason?: string): Transition | undefined {
  const from = device.status
  if (from === to && device.reason === reason) return undefined
  device.status = to
  device.reason = reason
  if (from !== to) device.statusChangedAt = now
  return { mac: device.mac, from, to, reason }
}

export function newDevice(mac: string, now: string): Device {
  return { mac, status: 'discovered', statusChangedAt: now, firstSeen: now, lastSeen: now, wanIpv6: [], attempts: 0 }
}

export function logTransitions(log: Logger, transitions: (Transition | undefined)[]): void {
  for (const t of transitions) {
    if (!t) continue
    const line = `${t.mac} ${t.from && t.from !== t.to ? `${t.from} -> ` : ''}${t.to}${t.reason ? `: ${t.reason}` : ''}`
    const fields = { mac: t.mac, status: t.to, reason: t.reason }
    if (t.to === 'failed') log.warn(line, fields)
    else log.info(line, fields)
  }
}

/** Lowest routing table number (from FIRST_DEVICE_TABLE) that no device holds. */
export function freeRouteTable(data: Data): number {
  const used = new Set(Object.values(data.devices).map((d) => d.routeTable))
  let table = FIRST_DEVICE_TABLE
  while (used.has(table)) table++
  return table
}

/** Why `status` is not a device status a person may filter by, or undefined when it is (or is absent). */
export function statusFilterError(status: unknown): string | undefined {
  if (status === undefined || (typeof status === 'string' && DEVICE_STATUSES.includes(status as DeviceStatus))) return undefined
  return `unknown status ${JSON.stringify(status)}; one of ${DEVICE_STATUSES.join(', ')}`
}

/** The device table as people see it (the devices job, GET /devices): oldest first, optionally one status. */
export function listDevices(data: Data, status?: DeviceStatus): Device[] {
  return Object.values(data.devices).filter((d) => !status || d.status === status).sort((a, b) => a.firstSeen.localeCompare(b.firstSeen))
}
