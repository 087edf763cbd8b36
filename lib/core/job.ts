// The job contract (in the spirit of Nitro's defineTask): a name, a description, and run() returning a
// JSON-serialisable result. A job file has no side effects at import; `runMain` makes the same file a script.
import { realpathSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { parseArgs, type ParseArgsConfig } from 'node:util'
import { ConfigError, hasRole, loadConfig, type Config, type Role } from './config.ts'
import { createSh, type Sh } from './exec.ts'
import { lockJob } from './job-lock.ts'
import { createLogger, type Logger } from './log.ts'
import { openStore, type Store } from './store.ts'

/** One event handed to a job: a hook's arguments and environment, or a person's request. */
export type Payload = Record<string, string>

export interface JobContext {
  config: Config
  store: Store
  log: Logger
  sh: Sh
  dryRun: boolean
  verbose: boolean
  /** Positional arguments and parsed options from the command line (empty when run by the runner). */
  args: string[]
  options: Record<string, string | boolean | undefined>
  /** cli, cron, event, start, or api. */
  trigger: string
  /** True on a terminal: jobs may show progress. */
  interactive: boolean
}

export interface Job<R = unknown> {
  name: string
  description: string
  /** Positional arguments, for the usage line: "[status]". */
  usage?: string
  /** Options beyond the common --json, --dry-run, --verbose, --help (node:util parseArgs format). */
  options?: ParseArgsConfig['options']
  run(input: { payload: Payload[]; ctx: JobContext }): Promise<R>
  /** The result as a person wants to read it; without it the CLI prints JSON. */
  format?(result: R): string
  /** The command line's exit status for a run that returned (default 0): diagnose exits 1 when a check fails. */
  exitCode?(result: R): number
  /**
   * Changes the data plane: runs once at a time across processes (lib/job-lock.ts); dry runs do not wait.
   * A lock name instead of true keeps the job apart from every other job that names it too.
   */
  exclusive?: boolean | string
  /** The role this job serves (config key role); on a host without it the job does nothing and says so. */
  role?: Role
}

export function defineJob<R>(job: Job<R>): Job<R> {
  return job
}

/** Bad arguments or input: exit 2 with usage. */
export class UsageError extends Error {}

export interface ContextOptions {
  config: Config
  tag: string
  dryRun?: boolean
  verbose?: boolean
  args?: string[]
  options?: JobContext['options']
  trigger?: string
  interactive?: boolean
  /** Where a dry run prints its plan: stdout for people, stderr when stdout carries --json. */
  planTo?: NodeJS.WritableStream
}

export function createContext(o: ContextOptions): JobContext {
  const { config } = o
  const log = createLogger({ tag: o.tag, level: o.verbose ? 'debug' : config.logLevel, dataDir: o.dryRun ? undefined : config.dataDir, maxBytes: config.logMaxBytes, files: config.logFiles })
  const store = openStore({ dataDir: config.dataDir, backupCount: config.backupCount, backupInterval: config.backupInterval, onError: (m) => log.error(m) })
  return {
    config,
    store: o.dryRun ? readOnly(store, log) : store,
    log,
    sh: createSh({ dryRun: !!o.dryRun, trace: (line) => log.debug(line), print: (line) => (o.planTo ?? process.stdout).write(`${line}\n`) }),
    dryRun: !!o.dryRun,
    verbose: !!o.verbose,
    args: o.args ?? [],
    options: o.options ?? {},
    trigger: o.trigger ?? 'cli',
    interactive: o.interactive ?? false,
  }
}

/**
 * Runs the job (the runner's child and the CLI both): nothing, with a log line, when this host lacks its role;
 * holding its lock while it runs when it is exclusive.
 */
export async function execute<R>(job: Job<R>, payload: Payload[], ctx: JobContext): Promise<R | undefined> {
  if (job.role && !hasRole(ctx.config, job.role)) {
    const line = `${job.name}: nothing to do, this host is not a ${job.role} (role ${ctx.config.role.join(',')})`
    if (ctx.trigger === 'cron') ctx.log.debug(line)
    else ctx.log.info(line)
    return undefined
  }
  if (!job.exclusive || ctx.dryRun) return job.run({ payload, ctx })
  const lock = typeof job.exclusive === 'string' ? job.exclusive : job.name
  const release = await lockJob(ctx.config.runDir, lock, {
    waitMs: ctx.config.jobTimeout * 1000,
    holder: lock === job.name ? `another ${job.name} run` : `the run holding the ${lock} lock`,
    onWait: (holder) => ctx.log.info(`waiting for ${holder} to finish`),
    onCompromised: (err) => ctx.log.warn(`${lock} lock lost: ${err.message}`),
  })
  try {
    return await job.run({ payload, ctx })
  } finally {
    await release().catch(() => {})
  }
}

/** A dry run computes on a copy of the store and never writes it. */
function readOnly(store: Store, log: Logger): Store {
  return {
    file: store.file,
    read: () => store.read(),
    snapshot: () => store.snapshot(),
    async update(change) {
      const result = change(await store.read())
      log.debug('dry run: store not written')
      return result
    },
  }
}

const COMMON: NonNullable<ParseArgsConfig['options']> = {
  json: { type: 'boolean' },
  'dry-run': { type: 'boolean' },
  verbose: { type: 'boolean', short: 'v' },
  help: { type: 'boolean', short: 'h' },
}

export function usage(job: Job): string {
  const own = Object.entries(job.options ?? {}).map(([k, o]) => (o.type === 'string' ? `[--${k} VALUE]` : `[--${k}]`))
  return [`usage: ${[job.name, job.usage, ...own, '[--json] [--dry-run] [--verbose]'].filter(Boolean).join(' ')}`, `  ${job.description}`].join('\n')
}

/** This module is the process's entry: `node x.js`, `tsx x.ts`, or `zx x.ts`. Returns the script's argv. */
function scriptArgs(moduleUrl: string): string[] | undefined {
  const self = fileURLToPath(moduleUrl)
  const real = (p: string) => { try { return realpathSync(p) } catch { return p } }
  for (const i of [1, 2]) {
    const candidate = process.argv[i]
    if (candidate && real(candidate) === self) return process.argv.slice(i + 1)
    if (i === 1 && !/zx/.test(candidate ?? '')) break
  }
  return undefined
}

/** Runs the job as a command-line program when its file is the entry point; otherwise does nothing. */
export async function runMain(job: Job, moduleUrl: string): Promise<void> {
  const argv = scriptArgs(moduleUrl)
  if (!argv) return
  process.exitCode = await runCli(job, argv)
}

export async function runCli(job: Job, argv: string[]): Promise<number> {
  let parsed
  try {
    parsed = parseArgs({ args: argv, options: { ...COMMON, ...job.options }, allowPositionals: true, strict: true })
  } catch (err) {
    process.stderr.write(`${job.name}: ${(err as Error).message}\n${usage(job)}\n`)
    return 2
  }
  const { values, positionals } = parsed
  if (values.help) {
    process.stdout.write(`${usage(job)}\n`)
    return 0
  }
  let config
  try {
    config = loadConfig().config
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err
    process.stderr.write(`${err.message}\n`)
    return 2
  }
  const ctx = createContext({
    config,
    tag: job.name,
    dryRun: !!values['dry-run'],
    verbose: !!values.verbose,
    args: positionals,
    options: values as JobContext['options'],
    trigger: 'cli',
    interactive: !!process.stderr.isTTY && !values.json,
    planTo: values.json ? process.stderr : process.stdout,
  })
  try {
    const result = await execute(job, [], ctx)
    // A job that streams its own output (logs -f) returns nothing, and nothing more is printed.
    if (result === undefined) return job.exitCode?.(result) ?? 0
    if (values.json) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`)
    else process.stdout.write(`${job.format ? job.format(result) : JSON.stringify(result, null, 2)}\n`)
    return job.exitCode?.(result) ?? 0
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`${job.name}: ${err.message}\n${usage(job)}\n`)
      return 2
    }
    ctx.log.error(err instanceof Error ? (ctx.verbose ? err.stack : err.message) : String(err))
    if (values.json) process.stdout.write(`${JSON.stringify({ ok: false, error: String((err as Error)?.message ?? err) })}\n`)
    return 1
  }
}
