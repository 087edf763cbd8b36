// The tunnels' part of GET /metrics: Prometheus text exposition format 0.0.4, from the runner's in-memory
// view of each tunnel (lib/tunnels/supervisor.ts). Pure. A family without samples is left out, and so is a
// sample whose value is unknown (no latency without a reply, no byte counters before the first check).
import { exposition, flag, single, type Family } from '../core/prometheus.ts'
import type { TunnelStatus } from './supervisor.ts'

export type TunnelSample = Pick<TunnelStatus, 'name' | 'type' | 'iface' | 'state' | 'score' | 'latencyMs' | 'lossPct' | 'primary' | 'rxBytes' | 'txBytes'>

export function tunnelMetrics(tunnels: TunnelSample[], failovers: number): string {
  if (tunnels.length === 0) return ''
  const family = (name: string, type: 'gauge' | 'counter', help: string, value: (t: TunnelSample) => number | undefined): Family => ({
    name,
    type,
    help,
    samples: tunnels.flatMap((t) => {
      const v = value(t)
      return v === undefined ? [] : [{ labels: { tunnel: t.name, type: t.type, iface: t.iface }, value: v }]
    }),
  })
  return exposition([
    family('dualgate_tunnel_up', 'gauge', 'Whether the tunnel is up (1 when up or degraded).', (t) => flag(t.state === 'up' || t.state === 'degraded')),
    family('dualgate_tunnel_score', 'gauge', 'Health score of the tunnel (0-100).', (t) => t.score),
    family('dualgate_tunnel_latency_seconds', 'gauge', 'Mean round trip of the probes through the tunnel.', (t) => (t.latencyMs === undefined ? undefined : t.latencyMs / 1000)),
    family('dualgate_tunnel_loss_ratio', 'gauge', 'Share of probes lost over the recent checks (0-1).', (t) => t.lossPct / 100),
    family('dualgate_tunnel_primary', 'gauge', 'Whether the tunnel carries the default IPv6 route.', (t) => flag(t.primary)),
    family('dualgate_tunnel_rx_bytes_total', 'counter', 'Bytes received on the tunnel link.', (t) => t.rxBytes),
    family('dualgate_tunnel_tx_bytes_total', 'counter', 'Bytes sent on the tunnel link.', (t) => t.txBytes),
    single('dualgate_tunnel_failovers_total', 'counter', 'Times the default IPv6 route moved from one tunnel to another.', failovers),
  ])
}
