// The SOCKS5 server inside the runner (./socks5.ts): running while config.socks5 is on, restarted when its
// address, DNS servers or limit change (SIGHUP; established connections through it are then cut), stopped
// when it is turned off or the runner stops. A listen that fails (port taken, address not there yet) is
// retried every pass and reported once per distinct error.
import type { Config } from '../core/config.ts'
import { openFileLimit } from '../core/limits.ts'
import { defineSupervisor } from '../core/supervisor.ts'
import { startSocks5, type Socks5Server, type Socks5Stats } from './socks5.ts'

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
    }
  },
})
