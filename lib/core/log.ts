// consola with a tag per job: human lines on stderr (stdout stays clean for --json), and JSON lines in
// $DATA_DIR/logs/dualgate.log, capped in size and rotated (dualgate.log.1, .2, ...). The log tells which
// devices are where and what failed, so it is root's alone: created 0600 in a 0700 directory, never written
// through a link, and rotation renames (the mode goes with the file).
import { closeSync, constants, fchmodSync, fstatSync, mkdirSync, openSync, renameSync, statSync, writeSync } from 'node:fs'
import path from 'node:path'
import { formatWithOptions } from 'node:util'
import { createConsola, type ConsolaInstance, type LogObject } from 'consola'

export type Logger = ConsolaInstance

const LEVELS = { error: 0, warn: 1, info: 3, debug: 4 } as const

export interface LogOptions {
  tag: string
  level?: keyof typeof LEVELS
  /** Where JSON lines go; omitted: no file. */
  dataDir?: string
  maxBytes?: number
  files?: number
}

export function logFile(dataDir: string): string {
  return path.join(dataDir, 'logs', 'dualgate.log')
}

/**
 * Lines one logger (a job run, the runner) writes in a minute at most: hostile input that is refused line by
 * line (a flood of forged events) must not become a flood of log lines and flash writes. What is held back
 * is counted, and said when the minute is over.
 */
export const LINES_PER_MINUTE = 600

export function createLogger(opts: LogOptions): Logger {
  const log = createConsola({ level: LEVELS[opts.level ?? 'info'], stdout: process.stderr, stderr: process.stderr }).withTag(opts.tag)
  if (opts.dataDir) log.addReporter({ log: jsonLines(logFile(opts.dataDir), opts.maxBytes ?? 1 << 20, opts.files ?? 3) })
  limitRate(log, LINES_PER_MINUTE)
  return log
}

function limitRate(log: Logger, perMinute: number): void {
  for (const reporter of log.options.reporters) {
    let minute = 0
    let lines = 0
    let held = 0
    const write = reporter.log.bind(reporter)
    reporter.log = (entry, ctx) => {
      const now = Math.floor(entry.date.getTime() / 60_000)
      if (now !== minute) {
        if (held > 0) write({ ...entry, type: 'warn', level: 1, args: [`${held} log lines held back in the last minute (more than ${perMinute} a minute)`] }, ctx)
        minute = now
        lines = 0
        held = 0
      }
      if (++lines <= perMinute) write(entry, ctx)
      else held++
    }
  }
}

/** Plain objects among the arguments become fields of the JSON line (`log.info('msg', { mac })`). */
function jsonLines(file: string, maxBytes: number, files: number) {
  let dirReady = false
  return (entry: LogObject) => {
    const fields: Record<string, unknown> = {}
    const words: unknown[] = []
    for (const arg of entry.args) {
      if (arg && typeof arg === 'object' && !Array.isArray(arg) && !(arg instanceof Error)) Object.assign(fields, arg)
      else words.push(arg instanceof Error ? arg.message : arg)
    }
    const line = JSON.stringify({ time: entry.date.toISOString(), level: entry.type, tag: entry.tag || undefined, msg: formatWithOptions({ colors: false }, ...words), ...fields })
    try {
      if (!dirReady) { mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 }); dirReady = true }
      rotate(file, maxBytes, files)
      append(file, `${line}\n`)
    } catch {
      // A full or read-only disk must not stop the gateway; the stderr line was still written.
    }
  }
}

const APPEND = constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW | constants.O_NONBLOCK

/** One line, to a file created 0600; a log left readable to others by an older version is made 0600. */
function append(file: string, text: string): void {
  const fd = openSync(file, APPEND, 0o600)
  try {
    if (fstatSync(fd).mode & 0o077) fchmodSync(fd, 0o600)
    writeSync(fd, text)
  } finally {
    closeSync(fd)
  }
}

function rotate(file: string, maxBytes: number, files: number): void {
  let size = 0
  try { size = statSync(file).size } catch { return }
  if (size < maxBytes) return
  for (let i = files - 1; i >= 1; i--) {
    try { renameSync(i === 1 ? file : `${file}.${i - 1}`, `${file}.${i}`) } catch { /* gap in the rotation */ }
  }
  if (files === 1) try { renameSync(file, `${file}.old`) } catch { /* raced with another process */ }
}
