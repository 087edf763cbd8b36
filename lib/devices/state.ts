// Device records and their state changes. Every change of status is one log line with the device's MAC, so
// `gateway-logs --device MAC` tells a device's story: discovered, acquiring, active, failed (why), gone.
import type { Logger } from '../core/log.ts'
import type { Data, Device, DeviceStatus } from '../core/schema.ts'

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

/** Lowest routing table number (from 1000) that no device holds. */
export function freeRouteTable(data: Data): number {
  const used = new Set(Object.values(data.devices).map((d) => d.routeTable))
  let table = 1000
  while (used.has(table)) table++
  return table
}
