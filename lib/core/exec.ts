// Running system tools: always with an argument vector, never through a shell. Queries (reading state)
// always run; changes are printed instead of run under --dry-run, so a dry run computes the real plan.
import { execFile, spawn } from 'node:child_process'
import { closeSync, openSync } from 'node:fs'

export interface ExecResult {
  stdout: string
  stderr: string
  code: number
}

export interface ExecOptions {
  input?: string
  timeoutMs?: number
  /** Resolve with the exit code instead of throwing when the command fails. */
  nothrow?: boolean
}

export class ExecError extends Error {
  readonly result: ExecResult
  constructor(cmd: string[], result: ExecResult) {
    super(`${formatCommand(cmd)} exited ${result.code}: ${result.stderr.trim() || result.stdout.trim()}`)
    this.result = result
  }
}

export interface Sh {
  /** Reads system state; runs even in a dry run. */
  query(cmd: string, args: string[], opts?: ExecOptions): Promise<ExecResult>
  /** Changes the system; in a dry run it is printed and not run. */
  apply(cmd: string, args: string[], opts?: ExecOptions): Promise<ExecResult>
  /** Starts a long-running process detached from this one (a DHCP client); in a dry run only printed. */
  daemon(cmd: string, args: string[], opts: DaemonOptions): Promise<number | undefined>
  readonly dryRun: boolean
}

export interface DaemonOptions {
  env?: NodeJS.ProcessEnv
  /** Its stdout and stderr are appended here. */
  logFile: string
}

/** Shell-style quoting for display only: what a person could paste. Never executed. */
export function formatCommand(cmd: string[]): string {
  return cmd.map((w) => (/^[\w@%+=:,./-]+$/.test(w) ? w : `'${w.replaceAll("'", `'\\''`)}'`)).join(' ')
}

export function run(cmd: string, args: string[], opts: ExecOptions = {}): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { timeout: opts.timeoutMs ?? 30_000, maxBuffer: 64 << 20, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 127) : 0
      const result = { stdout, stderr: err && code === 127 && !stderr ? err.message : stderr, code }
      if (code !== 0 && !opts.nothrow) reject(new ExecError([cmd, ...args], result))
      else resolve(result)
    })
    // A command that exits without reading its input (it failed) must not take this process down with EPIPE.
    child.stdin?.on('error', () => {})
    if (opts.input !== undefined) child.stdin?.end(opts.input)
  })
}

export function createSh(opts: { dryRun: boolean; print?: (line: string) => void; trace?: (line: string) => void }): Sh {
  const print = opts.print ?? ((line: string) => process.stdout.write(`${line}\n`))
  return {
    dryRun: opts.dryRun,
    query(cmd, args, o) {
      opts.trace?.(`$ ${formatCommand([cmd, ...args])}`)
      return run(cmd, args, o)
    },
    async apply(cmd, args, o) {
      const line = formatCommand([cmd, ...args])
      if (opts.dryRun) {
        print(o?.input ? `${line} <<'EOF'\n${o.input.trimEnd()}\nEOF` : line)
        return { stdout: '', stderr: '', code: 0 }
      }
      opts.trace?.(`$ ${line}`)
      return run(cmd, args, o)
    },
    async daemon(cmd, args, o) {
      const line = formatCommand([cmd, ...args])
      if (opts.dryRun) {
        print(`${line} &`)
        return undefined
      }
      opts.trace?.(`$ ${line} &`)
      const out = openSync(o.logFile, 'a')
      let child
      try {
        child = spawn(cmd, args, { detached: true, stdio: ['ignore', out, out], env: o.env ?? process.env })
      } finally {
        // The child has its own copy; ours would leak one descriptor per client started (hundreds per run).
        closeSync(out)
      }
      child.unref()
      return new Promise((resolve, reject) => {
        child.once('spawn', () => resolve(child.pid))
        child.once('error', reject)
      })
    },
  }
}
