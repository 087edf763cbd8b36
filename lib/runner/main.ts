// The resident runner: `npm start` in a checkout, `node dist/lib/runner/main.js` under procd or systemd.
// It schedules jobs, takes hook events from the spool and POST /events, coalesces them, runs each job in
// its own child process without overlap, records every run in the store, and serves the API.
// Signals: SIGTERM/SIGINT stop it cleanly (exit 0); SIGHUP reloads the configuration.
import { randomUUID } from 'node:crypto'
import type { Server as HttpServer } from 'node:http'
import { chmodSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { unlink } from 'node:fs/promises'
import { serve } from 'h3'
import { packageVersion, type RunnerControl } from '../core/api.ts'
import { ConfigError, loadConfig, type Config } from '../core/config.ts'
import { createSh } from '../core/exec.ts'
import { createLogger, type Logger } from '../core/log.ts'
import { restorePersisted, startPersist } from '../core/persist.ts'
import { liveRunner, runnerPidFile } from '../core/runner-state.ts'
import { openStore } from '../core/store.ts'
import { toPayload, type HookEvent } from '../core/event.ts'
import { createCoalescer } from './coalescer.ts'
import { discoverJobs, jobsDir } from './jobs.ts'
import { API_LIMITS, guardServer, serverOptions } from '../core/http-guard.ts'
import { startSupervisor } from '../core/supervisor.ts'
import { clatSupervisor } from '../clat/supervisor.ts'
import { nat64Supervisor } from '../nat64/supervisor.ts'
import { relaySupervisor } from '../reach/relay-supervisor.ts'
import { socks5Supervisor } from '../tunnels/socks5-supervisor.ts'
import { hasTunnels } from '../tunnels/config.ts'
import { hasKernelForwarding } from '../forwarder/config.ts'
import { forwarderSupervisor } from '../forwarder/supervisor.ts'
import { tunnelSupervisor } from '../tunnels/supervisor.ts'
import { startMcpSocket } from '../mcp/server.ts'
import type { McpSocket } from '../mcp/transport.ts'
import { createRunnerApi, type RunnerStats } from './api.ts'
import { addBounded, createQueue, MAX_PENDING, type Batch, type Item } from './queue.ts'
import { recordRun } from './record.ts'
import { EVENT_JOBS, jobsFor } from './event-jobs.ts'
import { scheduleJobs, wantedSchedules, type Schedule } from './schedule.ts'
import { spawnJob, type ChildRun } from './spawn.ts'
import { cleanSpool, readSpool, spoolDir, watchSpool, writeSpool, type SpoolWatcher } from '../core/spool.ts'

/** How long a burst of events may keep growing, as a multiple of config.coalesceWindow. */
const MAX_WAIT_FACTOR = 5
/** Grace between SIGTERM and SIGKILL for a job's process group; shorter at shutdown, to stay inside procd's stop timeout. */
const KILL_GRACE_MS = 5000
const SHUTDOWN_GRACE_MS = 3000

function makeLogger(config: Config): Logger {
  return createLogger({ tag: 'runner', level: config.logLevel, dataDir: config.dataDir, maxBytes: config.logMaxBytes, files: config.logFiles })
}

/** What the runner keeps running beside the jobs, each on the supervisor helper (lib/core/supervisor.ts). */
const SUPERVISORS = [relaySupervisor, nat64Supervisor, clatSupervisor, tunnelSupervisor, socks5Supervisor, forwarderSupervisor]

async function main(): Promise<void> {
  let config: Config
  try {
    config = loadConfig().config
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err
    process.stderr.write(`dualgate runner: ${err.message}\n`)
    process.exit(2)
  }
  let log = makeLogger(config)
  const { dataDir } = config
  mkdirSync(dataDir, { recursive: true, mode: 0o700 })
  const other = liveRunner(dataDir)
  if (other && other !== process.pid) {
    log.error(`another runner (pid ${other}) is using ${dataDir}`)
    process.exit(1)
  }
  const pidFile = runnerPidFile(dataDir)
  writeFileSync(pidFile, `${process.pid}\n`)
  const removePid = () => {
    try {
      if (readFileSync(pidFile, 'utf8').trim() === String(process.pid)) rmSync(pidFile)
    } catch { /* already gone */ }
  }

  if (config.persistDir) {
    try {
      if (await restorePersisted(dataDir, config.persistDir)) log.info(`store restored from ${config.persistDir}`)
    } catch (err) {
      log.error(`the persisted store in ${config.persistDir} is not valid (${(err as Error).message}); starting without it`)
    }
  }
  const persist = config.persistDir ? startPersist({ dataDir, persistDir: config.persistDir, intervalSec: config.persistInterval, onError: (m) => log.error(m) }) : undefined
  const store = openStore({ dataDir, backupCount: config.backupCount, backupInterval: config.backupInterval, onError: (m) => log.error(m) })
  // Hooks hand events over through the spool: it is root's alone (the shim writes it under umask 077).
  const spool = spoolDir(dataDir)
  mkdirSync(spool, { recursive: true, mode: 0o700 })
  chmodSync(spool, 0o700)
  await cleanSpool(spool)

  const dir = jobsDir()
  let jobs = discoverJobs(dir)
  const jobFile = (name: string) => jobs.get(name) ?? (jobs = discoverJobs(dir)).get(name)
  let stopping = false

  // A spool file leaves the spool when every run its event went to has finished.
  const claims = new Map<string, number>()
  const release = (items: Item[]) => {
    for (const { file } of items) {
      if (!file) continue
      const left = (claims.get(file) ?? 1) - 1
      if (left > 0) claims.set(file, left)
      else {
        claims.delete(file)
        void unlink(file).catch(() => {})
      }
    }
  }
  /** Events that only live in memory (from POST /events) go back to the spool for the next start. */
  const keep = async (job: string, items: Item[]) => {
    for (const item of items) {
      if (!item.file) await writeSpool(spool, { ...item.event, job }).catch((err) => log.error(`could not spool an event for ${job}: ${err.message}`))
    }
  }

  const running = new Map<string, ChildRun>()

  async function runBatch(job: string, batch: Batch): Promise<void> {
    const file = jobFile(job)
    if (!file) {
      log.warn(`${job}: no such job any more; ${batch.items.length} event(s) dropped`)
      release(batch.items)
      return
    }
    const trigger = batch.triggers.join('+') || 'event'
    const startedAt = new Date()
    const timeoutMs = config.jobTimeout * 1000
    const child = spawnJob({
      job, file, trigger, config, timeoutMs,
      payload: batch.items.map((i) => toPayload(i.event)),
      graceMs: Math.min(KILL_GRACE_MS, timeoutMs),
    })
    running.set(job, child)
    const outcome = await child.done
    running.delete(job)
    const durationMs = Date.now() - startedAt.getTime()
    const what = `${job} (${trigger}${batch.items.length ? `, ${batch.items.length} event${batch.items.length === 1 ? '' : 's'}` : ''})`
    if (outcome.ok) log.info(`${what}: ok in ${durationMs} ms`)
    else log.error(`${what}: failed after ${durationMs} ms: ${outcome.error}`)
    await recordRun(store, {
      id: randomUUID(), job, trigger, startedAt: startedAt.toISOString(), durationMs, ok: outcome.ok, error: outcome.error, result: outcome.result,
    }).catch((err) => log.error(`could not record the run of ${job}: ${err.message}`))
    // Stopped by our own shutdown: the events were not handled, so they stay for the next start.
    if (outcome.stopped && stopping) await keep(job, batch.items)
    else release(batch.items)
  }

  // Dropped events (see queue.ts) leave the spool; how many is said at most once a minute.
  let droppedEvents = 0
  let droppedSaidAt = 0
  const dropped = (job: string, items: Item[]) => {
    release(items)
    droppedEvents += items.length
    if (Date.now() - droppedSaidAt < 60_000) return
    droppedSaidAt = Date.now()
    log.warn(`${droppedEvents} events dropped so far (the last for ${job}): the same as one already waiting, or more than ${MAX_PENDING} waiting for one job`)
  }
  const queue = createQueue(runBatch, dropped)
  const request = (job: string, batch: Batch) => {
    const state = queue.request(job, batch)
    if (state === 'closed') void keep(job, batch.items)
    return state
  }
  const coalescer = createCoalescer<Item>({
    window: () => config.coalesceWindow,
    maxWait: () => config.coalesceWindow * MAX_WAIT_FACTOR,
    onFlush: (job, items) => request(job, { items, triggers: ['event'] }),
    add: addBounded,
    onDrop: dropped,
  })

  function submit(event: HookEvent, file?: string): string[] {
    if (event.job && !EVENT_JOBS.includes(event.job)) log.warn(`event ${event.source} ${event.event} names job ${event.job}, which events may not start (only ${EVENT_JOBS.join(', ')}); ignored`)
    const targets = jobsFor(event, config).filter((job) => {
      if (jobFile(job)) return true
      if (event.job) log.warn(`event ${event.source} ${event.event} names job ${job}, which does not exist`)
      else log.debug(`event ${event.source} ${event.event}: job ${job} is not installed`)
      return false
    })
    if (targets.length === 0) {
      log.debug(`event ${event.source} ${event.event}: no job handles it`)
      if (file) void unlink(file).catch(() => {})
      return []
    }
    if (stopping) {
      if (!file) for (const job of targets) void keep(job, [{ event }])
      return targets
    }
    if (file) claims.set(file, (claims.get(file) ?? 0) + targets.length)
    for (const job of targets) coalescer.add(job, { event: { ...event, time: event.time ?? new Date().toISOString() }, file })
    return targets
  }

  let draining = false
  let again = false
  async function drain(): Promise<void> {
    if (draining) { again = true; return }
    draining = true
    try {
      do {
        again = false
        const { entries, more } = await readSpool(spool, new Set(claims.keys()), (file, why, kept) => log.error(`spool file ${file} is not a valid event (${why}); ${kept ? `kept as ${file}.bad` : 'deleted'}`))
        if (stopping) return
        for (const e of entries) submit(e.event, e.file)
        if (more) again = true
      } while (again)
    } catch (err) {
      log.error(`reading the spool ${spool}: ${(err as Error).message}`)
    } finally {
      draining = false
    }
  }

  const runner: RunnerControl = {
    jobs: () => [...(jobs = discoverJobs(dir)).keys()].map((name) => ({ name, running: queue.running(name), queued: queue.queued(name) })),
    trigger(job, trigger) {
      if (!jobFile(job)) return undefined
      const state = request(job, { items: [], triggers: [trigger] })
      return state === 'closed' ? 'stopping' : state
    },
    submit: (event) => submit(event),
  }

  const sh = createSh({ dryRun: false })
  const supervisors = SUPERVISORS.map((def) => startSupervisor(def, { store, config: () => config, sh, log: () => log }))
  const closeSupervisors = () => Promise.all(supervisors.map((s) => s.close()))
  const stats = (): RunnerStats => ({
    residentMemoryBytes: process.memoryUsage.rss(),
    startTimeSeconds: performance.timeOrigin / 1000,
    eventQueueLength: coalescer.pending() + queue.pending(),
    spoolBacklog: claims.size,
    eventsDropped: droppedEvents,
  })
  const app = createRunnerApi({ store, config: () => config, runner, version: packageVersion(), log, routes: supervisors.flatMap((s) => s.routes), supervisors, stats })
  const server = serve(app, { hostname: config.apiHost, port: config.apiPort, manual: true, silent: true, gracefulShutdown: false, node: serverOptions(API_LIMITS) })
  if (server.node?.server) guardServer(server.node.server as HttpServer, API_LIMITS)
  let schedule: Schedule | undefined
  const startSchedule = () => scheduleJobs(wantedSchedules(config), (j) => !!jobFile(j), (job) => request(job, { items: [], triggers: ['cron'] }), (m) => log.info(m))
  let watcher: SpoolWatcher | undefined
  let mcp: McpSocket | undefined

  async function shutdown(signal: string): Promise<void> {
    if (stopping) return
    stopping = true
    log.info(`${signal}: stopping`)
    schedule?.stop()
    watcher?.close()
    const closed = Promise.all([server.close(true).catch(() => {}), closeSupervisors(), mcp?.close()])
    const left = coalescer.takeAll()
    for (const [job, batch] of queue.close()) left.set(job, [...(left.get(job) ?? []), ...batch.items])
    await Promise.all([...left].map(([job, items]) => keep(job, items)))
    for (const child of running.values()) child.stop('stopped: the runner is shutting down', Math.min(SHUTDOWN_GRACE_MS, config.jobTimeout * 1000))
    const bound = new Promise((resolve) => setTimeout(resolve, SHUTDOWN_GRACE_MS + 2000).unref())
    await Promise.race([Promise.all([queue.idle(), closed]), bound])
    persist?.stop()
    await persist?.flush().catch((err) => log.error(`persisting the store: ${(err as Error).message}`))
    removePid()
    log.info('stopped')
    process.exit(0)
  }

  function reload(): void {
    let next: Config
    try {
      next = loadConfig().config
    } catch (err) {
      log.error(`SIGHUP: ${(err as Error).message}; keeping the running configuration`)
      return
    }
    for (const key of ['dataDir', 'apiHost', 'apiPort'] as const) {
      if (next[key] !== config[key]) log.warn(`SIGHUP: ${key} changed to ${next[key]}; this takes effect after a restart`)
    }
    const tunnelsChanged = JSON.stringify(next.sections.tunnels ?? []) !== JSON.stringify(config.sections.tunnels ?? [])
    const forwardingChanged = ['forwards', 'forwarderPeers'].some((k) => JSON.stringify(next.sections[k] ?? []) !== JSON.stringify(config.sections[k] ?? []))
    config = { ...next, dataDir: config.dataDir, apiHost: config.apiHost, apiPort: config.apiPort }
    log = makeLogger(config)
    jobs = discoverJobs(dir)
    // Tunnels added, changed or removed are made so now, not at the next scheduled run.
    if (tunnelsChanged && jobFile('tunnels')) request('tunnels', { items: [], triggers: ['reload'] })
    // So are kernel forwards and forwarder peers (relay forwards follow in the runner's own supervisor).
    if (forwardingChanged && jobFile('forwarder')) request('forwarder', { items: [], triggers: ['reload'] })
    if (!schedule) return log.info('SIGHUP: configuration reloaded')
    schedule.stop()
    schedule = startSchedule()
    log.info(`SIGHUP: configuration reloaded (${jobs.size} jobs)`)
  }

  // Handlers first, so a signal during start-up is handled too. The stop is bounded by SHUTDOWN_GRACE_MS;
  // the stop timeouts of procd and systemd allow more (hooks/).
  process.on('SIGTERM', () => void shutdown('SIGTERM'))
  process.on('SIGINT', () => void shutdown('SIGINT'))
  process.on('SIGHUP', reload)
  process.on('exit', removePid)

  try {
    await server.serve()
  } catch (err) {
    log.error(`cannot serve the API on ${config.apiHost}:${config.apiPort}: ${(err as Error).message}`)
    await closeSupervisors()
    removePid()
    process.exit(1)
  }
  mcp = await startMcpSocket({ config: () => config, store, fetch: (r) => app.fetch(r), version: packageVersion(), log: () => log })
  if (stopping) {
    await mcp?.close()
    return
  }
  schedule = startSchedule()
  watcher = watchSpool(spool, () => void drain())
  await drain()
  if (jobFile('refresh-proxies')) request('refresh-proxies', { items: [], triggers: ['start'] })
  // Tunnels to make, or records of tunnels config no longer has to take down.
  if ((hasTunnels(config) || Object.keys((await store.read()).tunnels).length > 0) && jobFile('tunnels')) request('tunnels', { items: [], triggers: ['start'] })
  if ((hasKernelForwarding(config) || Object.keys((await store.read()).forwarderTunnels).length > 0) && jobFile('forwarder')) request('forwarder', { items: [], triggers: ['start'] })
  log.info(`runner ${packageVersion()} up (pid ${process.pid}): API on http://${config.apiHost.includes(':') ? `[${config.apiHost}]` : config.apiHost}:${config.apiPort}, ${jobs.size} jobs, data in ${dataDir}`)
}

await main()
