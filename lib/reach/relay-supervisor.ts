// The relay inside the runner: one process for every IPv6-to-IPv4 listener. Its rules are a pure function of
// the store (./relay-plan.ts); a pass reconciles them when the store file is replaced, and every few seconds
// so that a listener whose address was not configured yet (EADDRNOTAVAIL) is retried.
import { hasRole } from '../core/config.ts'
import { openFileLimit } from '../core/limits.ts'
import { exposition, single, snakeCase } from '../core/prometheus.ts'
import { defineSupervisor } from '../core/supervisor.ts'
import { createRelay, ruleKey, type ApplyResult, type RelayRule, type RelayStats } from './relay.ts'
import { relayView, syncTunnelAddresses } from './relay-view.ts'

export const relaySupervisor = defineSupervisor({
  name: 'relay',
  everyMs: 5000,
  followStore: true,
  setup({ store, config, sh, log }) {
    // Limits are read once: a change takes effect when the runner restarts.
    const { relayMaxConnections: max, relayMaxPerSource: perSource } = config()
    const relay = createRelay({
      maxConnections: max, maxUdpSessions: max, maxConnectionsPerSource: perSource, maxUdpSessionsPerSource: perSource,
      log: (level, msg, fields) => log()[level](`relay: ${msg}`, fields ?? {}),
    })
    let failed: ApplyResult['failed'] = []
    let reported = new Set<string>()
    return {
      async pass() {
        const c = config()
        // A host that is not a gateway has no devices to relay to: every listener closes.
        let rules: RelayRule[] = []
        if (hasRole(c, 'gateway')) {
          const view = await relayView(sh, c, await store.snapshot())
          const moved = await syncTunnelAddresses(sh, view)
          if (moved > 0) log().info(`relay: ${moved} device addresses in tunnel prefixes added or removed`)
          rules = view.rules
        }
        const result = await relay.apply(rules)
        failed = result.failed
        // Say each failing listener once, not every retry.
        const now = new Set(failed.map((f) => ruleKey(f.rule)))
        for (const f of failed) if (!reported.has(ruleKey(f.rule))) log().warn(`relay: cannot listen on [${f.rule.listen.host}]:${f.rule.listen.port}: ${f.error}`)
        reported = now
        if (result.added + result.removed > 0) log().info(`relay: ${result.added} listeners added, ${result.removed} removed, ${relay.list().length} open`)
      },
      close: () => relay.close(),
      // GET /relay: the listeners open now, those that failed and why, traffic counters, and the runner's
      // open-file limit (each relayed connection takes two descriptors).
      routes: [{ method: 'GET', path: '/relay', handler: () => ({ rules: relay.list(), failed, stats: relay.stats(), openFileLimit: openFileLimit() }) }],
      metrics: () => relayMetrics(relay.list(), failed.length, relay.stats()),
    }
  },
})

/** The relay's part of GET /metrics. Its counters start at 0 when the runner starts. */
export function relayMetrics(open: RelayRule[], failed: number, stats: RelayStats): string {
  return exposition([
    {
      name: 'dualgate_relay_listeners',
      type: 'gauge',
      help: 'Relay listeners open, by protocol.',
      samples: (['tcp', 'udp'] as const).map((proto) => ({ labels: { proto }, value: open.filter((r) => r.proto === proto).length })),
    },
    single('dualgate_relay_listeners_failed', 'gauge', 'Relay listeners that could not listen at the last pass (retried every pass).', failed),
    single('dualgate_relay_tcp_connections', 'gauge', 'TCP connections being relayed.', stats.tcpActive),
    single('dualgate_relay_tcp_connections_total', 'counter', 'TCP connections accepted by the relay.', stats.tcpTotal),
    single('dualgate_relay_udp_sessions', 'gauge', 'UDP sessions being relayed.', stats.udpSessions),
    single('dualgate_relay_bytes_total', 'counter', 'Payload bytes the relay received from either side, TCP and UDP.', stats.bytes),
    single('dualgate_relay_buffer_bytes', 'gauge', 'Read-buffer bytes held beyond the first 16 KiB of each connection.', stats.bufferBytes),
    {
      name: 'dualgate_relay_refusals_total',
      type: 'counter',
      help: 'TCP connections reset and new UDP sessions dropped by the relay, by the limit that refused them.',
      samples: Object.entries(stats.refused).sort(([a], [b]) => a.localeCompare(b)).map(([reason, value]) => ({ labels: { reason: snakeCase(reason) }, value })),
    },
  ])
}
