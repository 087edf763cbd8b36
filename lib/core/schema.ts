// The store's document: its schema, its version, and the migrations that bring older files forward.
import { z } from 'zod'

export const STORE_VERSION = 1

export const DEVICE_STATUSES = ['discovered', 'acquiring', 'active', 'failed', 'gone'] as const
export type DeviceStatus = (typeof DEVICE_STATUSES)[number]

const isoTime = z.string().datetime()

export const deviceSchema = z.object({
  mac: z.string().regex(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/),
  status: z.enum(DEVICE_STATUSES),
  statusChangedAt: isoTime,
  firstSeen: isoTime,
  lastSeen: isoTime,
  lanIpv4: z.string().optional(),
  hostname: z.string().optional(),
  ifname: z.string().optional(),
  routeTable: z.number().int().min(1).max(252_000).optional(),
  /** Set when the upstream changed under an active device: acquire once more. */
  reacquire: z.boolean().optional(),
  wanIpv4: z.string().optional(),
  wanIpv4Expires: isoTime.optional(),
  wanIpv6: z.array(z.string()).default(() => []),
  reason: z.string().optional(),
  attempts: z.number().int().min(0).default(0),
  nextRetry: isoTime.optional(),
})
export type Device = z.infer<typeof deviceSchema>

export const forwardSchema = z.object({
  id: z.string(),
  gatewayPort: z.number().int().min(1).max(65535),
  deviceIp: z.string(),
  devicePort: z.number().int().min(1).max(65535),
  proto: z.enum(['tcp', 'udp']),
  family: z.enum(['4', '6', 'both']),
  createdAt: isoTime,
})
export type Forward = z.infer<typeof forwardSchema>

export const runSchema = z.object({
  id: z.string(),
  job: z.string(),
  trigger: z.string(),
  startedAt: isoTime,
  durationMs: z.number().min(0),
  ok: z.boolean(),
  error: z.string().optional(),
  result: z.unknown().optional(),
})
export type Run = z.infer<typeof runSchema>

export const upstreamSchema = z.object({
  wanUp: z.boolean().default(true),
  checkedAt: isoTime.optional(),
  dhcpv4: z.boolean().optional(),
  ra: z.boolean().optional(),
  dhcpv6: z.boolean().optional(),
  prefixes: z.array(z.string()).default(() => []),
  /** The NAT64 prefix the upstream's DNS64 reported (RFC 7050), on an IPv6-only upstream. */
  pref64: z.string().optional(),
})

/** A tunnel dualgate keeps (lib/tunnels): what it made or adopted, and a person's `tunnels down`. */
export const tunnelRecordSchema = z.object({
  type: z.enum(['6in4', 'wireguard', 'external']),
  iface: z.string(),
  /** Its own routing table (lib/tunnels/routes.ts). */
  table: z.number().int().min(1).max(252_000),
  /** We created (or adopted) the interface and remove it when the tunnel leaves the config; never for external. */
  owned: z.boolean(),
  /** Its routed prefix: device addresses in it (lib/reach/relay-view.ts) go with the tunnel. */
  prefix: z.string().optional(),
  /** A 6in4 tunnel's broker: its pinned host route goes with the tunnel. */
  remote: z.string().optional(),
  /** wireguard-go's pid when the tunnel runs in user space. */
  pid: z.number().int().optional(),
  /** Set by `tunnels down NAME`: kept down, and never primary, until `tunnels up NAME`. */
  adminDown: z.boolean().default(false),
  since: isoTime,
})
export type TunnelRecord = z.infer<typeof tunnelRecordSchema>

/** A port of this host's own, offered on the tunnels' IPv6 through the relay (lib/tunnels/ports.ts). */
export const portSchema = z.object({
  id: z.string(),
  /** Where IPv6 clients connect, on each tunnel's own address. */
  port: z.number().int().min(1).max(65535),
  proto: z.enum(['tcp', 'udp']),
  /** The local IPv4 service: 127.0.0.1:targetPort. */
  targetPort: z.number().int().min(1).max(65535),
  createdAt: isoTime,
})
export type Port = z.infer<typeof portSchema>

/** The Hurricane Electric updater's memory per tunnel (jobs/he-update.ts). */
export const heUpdateSchema = z.object({
  /** The address the broker last accepted (answered good or nochg). */
  address: z.string().optional(),
  /** The HE settings it was accepted with (a fingerprint, never the key): other settings send again. */
  settings: z.string().optional(),
  /** The last answer, and when. */
  answer: z.string().optional(),
  at: isoTime.optional(),
  /** After a fatal answer: no more updates until the tunnel's HE settings change from these. */
  stopped: z.object({ answer: z.string(), settings: z.string() }).optional(),
  /** After `abuse`: nothing sent before this. */
  backoffUntil: isoTime.optional(),
})
export type HeUpdate = z.infer<typeof heUpdateSchema>

/**
 * A kernel-mode forwarder tunnel dualgate made (lib/forwarder/kernel-apply.ts), by interface: the VPS end of
 * kernel forwards, or a home router's end (a forwarder peer). What removal needs once config no longer
 * names it, and the far end's address with its last resolution.
 */
export const forwarderTunnelSchema = z.object({
  side: z.enum(['forward', 'peer']),
  transport: z.enum(['ipip6', 'wireguard']),
  /** The forwards it carries (VPS end), or the peer's name (home end). */
  names: z.array(z.string()),
  /** The far end's IPv6 in use (the resolved target or remote). */
  remote: z.string().optional(),
  /**
   * When the remote or the resolution's outcome last changed (not every resolution: the store is written
   * only when something changed), and the error of the last resolution when it failed (remote is kept).
   */
  changedAt: isoTime.optional(),
  resolveError: z.string().optional(),
  /** VPS end: the routes (targetAddress/32) into it. */
  routes: z.array(z.string()).default(() => []),
  /** Home end: its routing table; the connection mark follows from it. */
  table: z.number().int().min(1).max(252_000).optional(),
  /** wireguard-go's pid when the kernel has no WireGuard. */
  pid: z.number().int().optional(),
  since: isoTime,
})
export type ForwarderTunnelRecord = z.infer<typeof forwarderTunnelSchema>

export const dataSchema = z.object({
  version: z.literal(STORE_VERSION),
  devices: z.record(z.string(), deviceSchema).default(() => ({})),
  forwards: z.array(forwardSchema).default(() => []),
  runs: z.array(runSchema).default(() => []),
  jobs: z.record(z.string(), z.object({ runs: z.number(), failures: z.number(), last: runSchema.optional() })).default(() => ({})),
  upstream: upstreamSchema.default(() => ({ wanUp: true, prefixes: [] })),
  tunnels: z.record(z.string(), tunnelRecordSchema).default(() => ({})),
  heUpdates: z.record(z.string(), heUpdateSchema).default(() => ({})),
  ports: z.array(portSchema).default(() => []),
  forwarderTunnels: z.record(z.string(), forwarderTunnelSchema).default(() => ({})),
  meta: z.object({ createdAt: isoTime, writes: z.number().int().min(0) }),
})
export type Data = z.infer<typeof dataSchema>

export function emptyData(now = new Date()): Data {
  return dataSchema.parse({ version: STORE_VERSION, meta: { createdAt: now.toISOString(), writes: 0 } })
}

/** Migrations by the version they upgrade from. Files from before versioning are treated as version 0. */
const migrations: Record<number, (doc: Record<string, unknown>) => Record<string, unknown>> = {
  0: (doc) => ({ ...doc, version: 1, meta: doc.meta ?? { createdAt: new Date().toISOString(), writes: 0 } }),
}

export class SchemaError extends Error {}

/** Parses a stored document: migrates it forward, then validates it. Throws SchemaError with the reason. */
export function parseData(text: string): Data {
  let doc: unknown
  try {
    doc = JSON.parse(text)
  } catch (err) {
    throw new SchemaError(`not JSON (${(err as Error).message})`)
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new SchemaError('not a JSON object')
  let record = doc as Record<string, unknown>
  let version = typeof record.version === 'number' ? record.version : 0
  if (version > STORE_VERSION) throw new SchemaError(`written by a newer dualgate (store version ${version}, this one reads ${STORE_VERSION})`)
  while (version < STORE_VERSION) {
    record = migrations[version](record)
    version = record.version as number
  }
  const result = dataSchema.safeParse(record)
  if (!result.success) {
    const issue = result.error.issues[0]
    throw new SchemaError(`invalid at ${issue.path.join('.') || '(root)'}: ${issue.message}`)
  }
  return result.data
}
