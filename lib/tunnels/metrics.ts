// The tunnels' part of GET /metrics: Prometheus text exposition format 0.0.4, from the runner's in-memory
// view of each tunnel (lib/tunnels/supervisor.ts). Pure. A family without samples is left out, and so is a
// sample whose value is unknown (no latency without a reply, no byte counters before the first check).
import { labelValue } from '../core/prometheus.ts'
import type { TunnelStatus } from './supervisor.ts'

export type TunnelSample = Pick<TunnelStatus, 'name' | 'type' | 'iface' | 'state' | 'score' | 'latencyMs' | 'lossPct' | 'primary' | 'rxBytes' | 'txBytes'>


export function tunnelMetrics(tunnels: TunnelSample[], failovers: number): string {
  if (tunnels.length === 0) return ''
  const lines: string[] = []
  const labels = (t: TunnelSample) => `{tunnel="${labelValue(t.name)}",type="${labelValue(t.type)}",iface="${labelValue(t.iface)}"}`
  const family = (name: string, type: 'gauge' | 'counter', help: string, value: (t: TunnelSample) => number | undefined) => {
    const samples = tunnels.flatMap((t) => {
      const v = value(t)
      return v === undefined ? [] : [`${name}${labels(t)} ${v}`]
    })
    if (samples.length > 0) lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, ...samples)
  }
  family('dualgate_tunnel_up', 'gauge', 'Whether the tunnel is up (1 when up or degraded).', (t) => (t.state === 'up' || t.state === 'degraded' ? 1 : 0))
  family('dualgate_tunnel_score', 'gauge', 'Health score of the tunnel (0-100).', (t) => t.score)
  family('dualgate_tunnel_latency_seconds', 'gauge', 'Mean round trip of the probes through the tunnel.', (t) => (t.latencyMs === undefined ? undefined : t.latencyMs / 1000))
  family('dualgate_tunnel_loss_ratio', 'gauge', 'Share of probes lost over the recent checks (0-1).', (t) => t.lossPct / 100)
  family('dualgate_tunnel_primary', 'gauge', 'Whether the tunnel carries the default IPv6 route.', (t) => (t.primary ? 1 : 0))
  family('dualgate_tunnel_rx_bytes_total', 'counter', 'Bytes received on the tunnel link.', (t) => t.rxBytes)
  family('dualgate_tunnel_tx_bytes_total', 'counter', 'Bytes sent on the tunnel link.', (t) => t.txBytes)
  lines.push(
    '# HELP dualgate_tunnel_failovers_total Times the default IPv6 route moved from one tunnel to another.',
    '# TYPE dualgate_tunnel_failovers_total counter',
    `dualgate_tunnel_failovers_total ${failovers}`,
  )
  return `${lines.join('\n')}\n`
}
