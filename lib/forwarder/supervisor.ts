// The forwarder's relay mode inside the runner (role forwarder): one relay of its own for every relay-mode
// forward, from IPv4 and IPv6 listeners to each forward's target, whose name we resolve (./resolve.ts). A pass
// every second starts the resolutions that are due (in the background: a DNS server that does not answer
// never holds the relay up), and applies the rules of the addresses known now (./relay-plan.ts). A changed
// address moves the forward's listeners in place: new connections go to the new address, those to the old one
// are closed after forwarderGrace, and the change is notified (./notify.ts). A name that does not resolve keeps
// its last good address; a forward that never resolved, or whose port is taken, gets an error naming it in
// the log (once) and in GET /forwarder, and nothing else changes. Kernel mode is the forwarder job's: the
// runner only watches its tunnels' names and asks for a run when one moves (./kernel-watch.ts).
import { hasRole, type Config } from '../core/config.ts'
import { openFileLimit } from '../core/limits.ts'
import { exposition, type Family } from '../core/prometheus.ts'
import type { Store } from '../core/store.ts'
import type { Sh } from '../core/exec.ts'
import { defineSupervisor } from '../core/supervisor.ts'
import { requestRun } from '../core/trigger.ts'
import { getIp6tnlLink } from '../net/ip6tnl.ts'
import { readCounters } from '../net/nft.ts'
import { createRelay, ruleKey, type ApplyResult, type RelayLogLevel } from '../reach/relay.ts'
import { configuredForwards, forwardsProblem, type Forward, type RelayForward } from './config.ts'
import { kernelTunnels } from './kernel-apply.ts'
import { forwardCounter, FWD_NFT_TABLE } from './kernel-plan.ts'
import { createKernelWatch, namedFarEnds, type WatchedName } from './kernel-watch.ts'
import { createNotifier, type Notifier } from './notify.ts'
import { listenerCount, relayPlan } from './relay-plan.ts'
import { createTargetTracker, dnsLookup, type Lookup, type TargetTracker } from './resolve.ts'

/** One forward in GET /forwarder. Relay forwards fill the relay fields; kernel forwards may be added by their owner. */
export interface ForwardStatus {
  name: string
  mode: Forward['mode']
  enabled: boolean
  listen: string
  /** "22", "8000-8100" or "all". */
  ports: string
  proto: 'tcp' | 'udp' | 'both'
  target: string
  targetPort?: number
  /** The target's address in use, its family, when it was last resolved (ISO), and the error while resolving fails. */
  address?: string
  family?: 4 | 6
  resolvedAt?: string
  resolveError?: string
  resolveFailures: number
  targetChanges: number
  /** Whether any of its listeners is open. */
  listening: boolean
  listeners: { wanted: number; open: number; failed: number }
  /** TCP connections open now, and since the runner started; UDP sessions open now. */
  connections: number
  connectionsTotal: number
  udpSessions: number
  /** Payload bytes relayed either way since its listeners opened. */
  bytes: number
  proxyProtocol?: boolean
  /** What keeps it from working, naming the config key. */
  error?: string
}

/**
 * A kernel-mode tunnel dualgate made (the VPS end of kernel forwards, or a home router's peer): the kernel
 * carries their packets, so what is counted is the tunnel's, not each forward's.
 */
export interface KernelTunnelStatus {
  iface: string
  side: 'forward' | 'peer'
  /** The forwards it carries, or the peer. */
  names: string[]
  transport: 'ipip6' | 'wireguard'
  /** The far end's IPv6 in use, when it or its resolution's outcome last changed, and the resolution's error. */
  remote?: string
  changedAt?: string
  resolveError?: string
  link: 'up' | 'down' | 'missing'
  rxBytes: number
  txBytes: number
  /** On the VPS: connections each of its forwards opened since the nftables table was last written (its DNAT rule's counter). */
  opened: Record<string, number>
}

export interface ForwarderView {
  /** Relay forwards (kernel forwards: `tunnels`). */
  forwards: ForwardStatus[]
  tunnels: KernelTunnelStatus[]
  /** A rule across forwards that is broken (two take one port): nothing is changed while it holds. */
  problem?: string
  /** Each relayed connection takes two descriptors. */
  openFileLimit?: number
}

/** How often a failing listener (port taken, address missing) is tried again. */
const LISTEN_RETRY_MS = 10_000
/** How long a pass waits for resolutions it started before applying what is known. */
const RESOLVE_WAIT_MS = 500

const portsText = (p: [number, number] | undefined) => (!p ? 'all' : p[0] === p[1] ? String(p[0]) : `${p[0]}-${p[1]}`)
const protoText = (protos: string[]): ForwardStatus['proto'] => (protos.length > 1 ? 'both' : (protos[0] as 'tcp' | 'udp'))

function emptyCounts(): Pick<ForwardStatus, 'connections' | 'connectionsTotal' | 'udpSessions' | 'bytes'> & { open: number } {
  return { open: 0, connections: 0, connectionsTotal: 0, udpSessions: 0, bytes: 0 }
}

/** Prometheus families of the forwards (relay fields; kernel forwards count what they know). */
export function forwardFamilies(forwards: ForwardStatus[]): Family[] {
  const per = (value: (f: ForwardStatus) => number) => forwards.map((f) => ({ labels: { forward: f.name }, value: value(f) }))
  return [
    { name: 'dualgate_forward_connections', type: 'gauge', help: 'TCP connections relayed now, per forward.', samples: per((f) => f.connections) },
    { name: 'dualgate_forward_bytes_total', type: 'counter', help: 'Payload bytes relayed either way, per forward (since its listeners opened).', samples: per((f) => f.bytes) },
    { name: 'dualgate_forward_resolve_failures_total', type: 'counter', help: 'Resolutions of the forward\'s target that failed or came back empty.', samples: per((f) => f.resolveFailures) },
    { name: 'dualgate_forward_target_changes_total', type: 'counter', help: 'Times the forward\'s target address changed.', samples: per((f) => f.targetChanges) },
  ]
}

/** Prometheus families of the kernel-mode tunnels. */
export function tunnelFamilies(tunnels: KernelTunnelStatus[]): Family[] {
  const per = (value: (t: KernelTunnelStatus) => number) => tunnels.map((t) => ({ labels: { iface: t.iface, side: t.side, transport: t.transport }, value: value(t) }))
  return [
    { name: 'dualgate_forward_tunnel_up', type: 'gauge', help: 'Whether a kernel-mode forwarder tunnel is up.', samples: per((t) => (t.link === 'up' ? 1 : 0)) },
    { name: 'dualgate_forward_tunnel_rx_bytes_total', type: 'counter', help: 'Bytes received on a kernel-mode forwarder tunnel (the link\'s counter).', samples: per((t) => t.rxBytes) },
    { name: 'dualgate_forward_tunnel_tx_bytes_total', type: 'counter', help: 'Bytes sent on a kernel-mode forwarder tunnel (the link\'s counter).', samples: per((t) => t.txBytes) },
    {
      name: 'dualgate_forward_kernel_connections_total',
      type: 'counter',
      help: 'Connections (UDP: flows) a kernel-mode forward opened since its nftables table was last written.',
      samples: tunnels.flatMap((t) => Object.entries(t.opened).map(([forward, value]) => ({ labels: { forward, iface: t.iface }, value }))),
    },
  ]
}

/** The kernel tunnels the forwarder job made (its records in the store), with their links as they are now. */
export async function kernelTunnelStatus(store: Store, sh: Sh): Promise<KernelTunnelStatus[]> {
  const records = Object.entries((await store.snapshot()).forwarderTunnels).sort(([a], [b]) => a.localeCompare(b))
  const counters = records.some(([, r]) => r.side === 'forward') ? await readCounters(sh, FWD_NFT_TABLE) : new Map()
  return Promise.all(records.map(async ([iface, r]) => {
    const link = await getIp6tnlLink(sh, iface)
    const opened = r.side === 'forward' ? Object.fromEntries(r.names.map((n) => [n, counters.get(forwardCounter(n))?.packets ?? 0])) : {}
    return {
      iface, side: r.side, names: r.names, transport: r.transport, remote: r.remote, changedAt: r.changedAt, resolveError: r.resolveError,
      link: !link ? 'missing' : link.up ? 'up' : 'down', rxBytes: link?.rxBytes ?? 0, txBytes: link?.txBytes ?? 0, opened,
    } satisfies KernelTunnelStatus
  }))
}

interface Tracked { key: string; tracker: TargetTracker }

export const forwarderSupervisor = defineSupervisor({
  name: 'forwarder',
  everyMs: 1000,
  setup({ config, log, store, sh }) {
    // Limits are read once: a change takes effect when the runner restarts.
    const c0 = config()
    const say = (level: RelayLogLevel, msg: string) => log()[level](`forwarder: ${msg}`)
    const relay = createRelay({
      idleTimeoutMs: c0.forwarderTcpIdle * 1000,
      udpIdleMs: c0.forwarderUdpIdle * 1000,
      maxConnections: c0.forwarderMaxConnections,
      maxUdpSessions: c0.forwarderMaxConnections,
      maxConnectionsPerSource: c0.forwarderMaxPerSource,
      maxUdpSessionsPerSource: c0.forwarderMaxPerSource,
      // One line per listener would flood the log for a port range: those are debug, the pass says the sum.
      log: (level, msg, fields) => log()[/^relay listener (open|closed)$/.test(msg) ? 'debug' : level](`forwarder: ${msg}`, fields ?? {}),
      onConnectFailure: (rule) => { if (rule.tag) trackers.get(rule.tag)?.tracker.soon() },
    })
    const trackers = new Map<string, Tracked>()
    let lookup: { key: string; fn: Lookup } | undefined
    let notifier: { key: string; n: Notifier } | undefined
    let forwards: RelayForward[] = []
    let planErrors = new Map<string, string>()
    let failed: ApplyResult['failed'] = []
    let reported = new Set<string>()
    let appliedSig: string | undefined
    let appliedAt = 0
    let problem: string | undefined

    const lookupFor = (c: Config): Lookup => {
      const key = c.forwarderDns.join(',')
      if (lookup?.key !== key) lookup = { key, fn: dnsLookup(c.forwarderDns) }
      return lookup.fn
    }
    const notifierFor = (c: Config): Notifier => {
      const key = JSON.stringify([c.forwarderNotifyCommand, c.forwarderNotifyUrl])
      if (notifier?.key !== key) {
        notifier = { key, n: createNotifier({ command: c.forwarderNotifyCommand, url: c.forwarderNotifyUrl, log: (level, msg) => log()[level](`forwarder: ${msg}`) }) }
      }
      return notifier.n
    }

    function syncTrackers(c: Config): void {
      const fn = lookupFor(c)
      for (const name of trackers.keys()) if (!forwards.some((f) => f.name === name)) trackers.delete(name)
      for (const f of forwards) {
        const key = JSON.stringify([f.target, f.ipv4Fallback, c.forwarderResolveInterval, c.forwarderDns])
        if (trackers.get(f.name)?.key === key) continue
        trackers.set(f.name, {
          key,
          tracker: createTargetTracker({
            target: f.target,
            ipv4Fallback: f.ipv4Fallback,
            intervalS: c.forwarderResolveInterval,
            lookup: fn,
            log: (level, msg) => say(level, `forwards.${f.name}: ${msg}`),
            onChange: (ch) => notifierFor(config()).notify({ forward: f.name, target: ch.target, old: ch.old, new: ch.new, at: new Date().toISOString() }),
          }),
        })
      }
    }

    function reportFailures(): void {
      const now = new Set<string>()
      for (const f of failed) {
        const key = `${ruleKey(f.rule)} ${f.error}`
        now.add(key)
        if (!reported.has(key)) say('warn', `${failureText(f)}`)
      }
      reported = now
    }

    const failureText = (f: ApplyResult['failed'][number]) => {
      const at = f.rule.listen.host.includes(':') ? `[${f.rule.listen.host}]` : f.rule.listen.host
      return `forwards.${f.rule.tag ?? '?'}.port ${f.rule.listen.port}: cannot listen on ${f.rule.proto} ${at}:${f.rule.listen.port}: ${f.error}`
    }

    function view(): Omit<ForwarderView, 'tunnels'> {
      const c = config()
      const counts = new Map<string, ReturnType<typeof emptyCounts>>()
      for (const l of relay.listeners()) {
        const tag = l.rule.tag ?? ''
        const n = counts.get(tag) ?? emptyCounts()
        n.open++
        n.connections += l.tcpActive
        n.connectionsTotal += l.tcpTotal
        n.udpSessions += l.udpSessions
        n.bytes += l.bytes
        counts.set(tag, n)
      }
      const all = hasRole(c, 'forwarder') ? configuredForwards(c).filter((f): f is RelayForward => f.mode === 'relay') : []
      const list = all.map((f): ForwardStatus => {
        const s = trackers.get(f.name)?.tracker.status()
        const n = counts.get(f.name) ?? emptyCounts()
        const mine = failed.filter((x) => x.rule.tag === f.name)
        const wanted = f.enabled ? listenerCount(f) : 0
        const error = planErrors.get(f.name)
          ?? (f.enabled && s && !s.address && s.error ? `forwards.${f.name}.target ${f.target}: ${s.error}` : undefined)
          ?? (mine.length > 0 ? `${failureText(mine[0])}${mine.length > 1 ? ` (and ${mine.length - 1} more)` : ''}` : undefined)
        const { open, ...traffic } = n
        return {
          name: f.name,
          mode: 'relay',
          enabled: f.enabled,
          listen: f.listen,
          ports: portsText(f.ports),
          proto: protoText(f.protos),
          target: f.target,
          targetPort: f.targetPort,
          address: s?.address,
          family: s?.family,
          resolvedAt: s?.resolvedAt === undefined ? undefined : new Date(s.resolvedAt).toISOString(),
          resolveError: s?.error,
          resolveFailures: s?.failures ?? 0,
          targetChanges: s?.changes ?? 0,
          listening: open > 0,
          listeners: { wanted, open, failed: mine.length },
          ...traffic,
          proxyProtocol: f.proxyProtocol || undefined,
          error,
        }
      })
      return { forwards: list, problem, openFileLimit: openFileLimit() }
    }

    const watch = createKernelWatch()
    let watching: Promise<void> | undefined

    /** The kernel tunnels' far ends by name: a move asks for the forwarder job (kernel-watch.ts); never waited for. */
    function watchKernelNames(c: Config): void {
      if (watching) return
      let names: WatchedName[]
      try {
        names = namedFarEnds(kernelTunnels(c))
      } catch {
        return // a config problem: the job says it
      }
      if (names.length === 0) return
      watching = (async () => {
        const moved = await watch.pass(names, (await store.snapshot()).forwarderTunnels, lookupFor(c), c.forwarderResolveInterval)
        if (moved.length === 0) return
        for (const m of moved) say('info', `${m.name} resolves to ${m.to.join(', ')}${m.from ? `, no longer ${m.from}` : ''}: asking the forwarder job to follow on ${m.iface}`)
        await requestRun(c, 'forwarder', 'forwarder', 'resolved')
      })()
        .catch((err: Error) => say('warn', `watching the kernel tunnels' names: ${err.message}`))
        .finally(() => { watching = undefined })
    }

    return {
      async pass() {
        const c = config()
        watchKernelNames(c)
        const configured = hasRole(c, 'forwarder') ? configuredForwards(c) : []
        const nextProblem = forwardsProblem(configured)
        if (nextProblem !== problem && nextProblem) say('error', `${nextProblem}; the relay forwards are left as they are until this is fixed`)
        problem = nextProblem
        if (problem) return
        forwards = configured.filter((f): f is RelayForward => f.mode === 'relay' && f.enabled)
        syncTrackers(c)

        const started = [...trackers.values()].filter((t) => t.tracker.due()).map((t) => t.tracker.refresh())
        if (started.length > 0) await Promise.race([Promise.all(started), new Promise((r) => setTimeout(r, RESOLVE_WAIT_MS))])

        const addresses = new Map<string, string>()
        for (const [name, t] of trackers) {
          const a = t.tracker.status().address
          if (a) addresses.set(name, a)
        }
        const graceMs = c.forwarderGrace * 1000
        const sig = JSON.stringify([forwards, [...addresses], graceMs])
        if (sig === appliedSig && (failed.length === 0 || Date.now() - appliedAt < LISTEN_RETRY_MS)) return
        const plan = relayPlan(forwards, addresses, graceMs)
        for (const [name, error] of plan.errors) if (planErrors.get(name) !== error) say('error', error)
        planErrors = plan.errors
        const result = await relay.apply(plan.rules)
        appliedSig = sig
        appliedAt = Date.now()
        failed = result.failed
        reportFailures()
        if (result.added + result.removed + (result.retargeted ?? 0) > 0) {
          say('info', `${result.added} listeners added, ${result.removed} removed, ${result.retargeted ?? 0} retargeted, ${relay.list().length} open`)
        }
      },
      close: () => relay.close(),
      routes: [{ method: 'GET', path: '/forwarder', handler: async (): Promise<ForwarderView> => ({ ...view(), tunnels: await kernelTunnelStatus(store, sh) }) }],
      async metrics() {
        return exposition([...forwardFamilies(view().forwards), ...tunnelFamilies(await kernelTunnelStatus(store, sh))])
      },
      health() {
        const { forwards: list, problem: p } = view()
        const enabled = list.filter((f) => f.enabled)
        if (enabled.length === 0 && !p) return undefined
        return {
          forwards: enabled.length,
          listening: enabled.filter((f) => f.listening && f.listeners.failed === 0).length,
          unresolved: enabled.filter((f) => !f.address).map((f) => f.name),
          errors: enabled.filter((f) => f.error).map((f) => f.error),
          ...(p ? { problem: p } : {}),
        }
      },
    }
  },
})
