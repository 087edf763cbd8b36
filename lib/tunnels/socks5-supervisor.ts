// The SOCKS5 server inside the runner (./socks5.ts): running while config.socks5 is on, restarted when its
// address, DNS servers or limit change (SIGHUP; established connections through it are then cut), stopped
// when it is turned off or the runner stops. A listen that fails (port taken, address not there yet) is
// retried every pass and reported once per distinct error.
import type { Config } from '../core/config.ts'
import { openFileLimit } from '../core/limits.ts'
import { exposition, flag, single, snakeCase, type Family } from '../core/prometheus.ts'
import { defineSupervisor } from '../core/supervisor.ts'
import { REPLY, startSocks5, type Socks5Server, type Socks5Stats } from './socks5.ts'

export interface Socks5State {
  enabled: boolean
  listening: boolean
  host: string
  port: number
  /** DNS servers asked; empty: those of /etc/resolv.conf. */
  dns: string[]
  maxConnections: number
  startedAt?: string
  lastError?: string
  stats?: Socks5Stats
  /** Each connection takes two descriptors. */
  openFileLimit?: number
}

function settingsOf(c: Config) {
  return { host: c.socks5Host, port: c.socks5Port, dns: [...c.socks5Dns], maxConnections: c.socks5MaxConnections }
}

export const socks5Supervisor = defineSupervisor({
  name: 'socks5',
  everyMs: 2000,
  setup({ config, log }) {
    let server: Socks5Server | undefined
    let running: ReturnType<typeof settingsOf> | undefined
    let startedAt: number | undefined
    let lastError: string | undefined

    async function stop(why: string): Promise<void> {
      if (!server) return
      const s = server
      server = undefined
      running = undefined
      startedAt = undefined
      await s.close()
      log().info(`socks5: stopped (${why})`)
    }

    return {
      async pass() {
        const c = config()
        const want = c.socks5 ? settingsOf(c) : undefined
        if (server && JSON.stringify(want) !== JSON.stringify(running)) await stop(want ? 'settings changed' : 'turned off')
        if (!want) { lastError = undefined; return }
        if (server) return
        try {
          server = await startSocks5({
            ...want,
            log: (level, msg, fields) => log()[level](`socks5: ${msg}`, fields ?? {}),
          })
          running = want
          startedAt = Date.now()
          lastError = undefined
        } catch (err) {
          const message = `cannot listen on ${want.host.includes(':') ? `[${want.host}]` : want.host}:${want.port}: ${err instanceof Error ? err.message : String(err)}`
          if (message !== lastError) log().warn(`socks5: ${message}`)
          lastError = message
        }
      },
      close: () => stop('runner stopping'),
      routes: [{
        method: 'GET',
        path: '/socks5',
        handler: (): Socks5State => {
          const c = config()
          return {
            enabled: c.socks5,
            listening: server !== undefined,
            ...(running ?? settingsOf(c)),
            startedAt: startedAt === undefined ? undefined : new Date(startedAt).toISOString(),
            lastError,
            stats: server?.stats(),
            openFileLimit: openFileLimit(),
          }
        },
      }],
      metrics: () => (config().socks5 ? socks5Metrics(server?.stats()) : ''),
    }
  },
})

/** The SOCKS5 server's part of GET /metrics, while socks5 is on; its counters start at 0 when it (re)starts. */
export function socks5Metrics(stats: Socks5Stats | undefined): string {
  const families: Family[] = [single('dualgate_socks5_listening', 'gauge', 'Whether the SOCKS5 server listens.', flag(stats !== undefined))]
  if (stats) {
    families.push(
      single('dualgate_socks5_connections', 'gauge', 'SOCKS5 connections open.', stats.active),
      single('dualgate_socks5_connections_total', 'counter', 'SOCKS5 connections accepted.', stats.total),
      single('dualgate_socks5_bytes_total', 'counter', 'Payload bytes the SOCKS5 server carried either way.', stats.bytes),
      {
        name: 'dualgate_socks5_replies_total',
        type: 'counter',
        help: 'SOCKS5 replies sent, by reply.',
        samples: (Object.keys(REPLY) as (keyof typeof REPLY)[]).map((r) => ({ labels: { reply: snakeCase(r) }, value: stats.replies[r] ?? 0 })),
      },
      {
        name: 'dualgate_socks5_closed_total',
        type: 'counter',
        help: 'SOCKS5 connections closed by the server, by reason.',
        samples: [
          { labels: { reason: 'malformed' }, value: stats.malformed },
          { labels: { reason: 'handshake_timeout' }, value: stats.handshakeTimeouts },
          { labels: { reason: 'idle_timeout' }, value: stats.idleTimeouts },
          { labels: { reason: 'auth_failure' }, value: stats.authFailures },
        ],
      },
      {
        name: 'dualgate_socks5_refusals_total',
        type: 'counter',
        help: 'SOCKS5 connections refused, by the limit that refused them.',
        samples: [
          { labels: { reason: 'connections' }, value: stats.refused.connections },
          { labels: { reason: 'connections_per_source' }, value: stats.refused.connectionsPerSource },
        ],
      },
    )
  }
  return exposition(families)
}
