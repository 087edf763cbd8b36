// Reading the JSON log ($dataDir/logs/dualgate.log and its rotations) the way people want to: filtered by
// job and by device, as `TIME LEVEL [tag] msg` lines. Pure but for readLogLines (for jobs/logs.ts and the API).
import { readFile } from 'node:fs/promises'
import { logFile } from './log.ts'

export interface LogEntry {
  time: string
  level: string
  tag?: string
  msg: string
  mac?: string
  [field: string]: unknown
}

export interface LogFilter {
  /** A job's name, matched against the tag (jobs log under their own name; the runner under "runner"). */
  job?: string
  /** A canonical MAC: lines whose `mac` field is that device, or whose message names it. */
  mac?: string
}

/** One line of the file, or undefined when it is not one of our JSON entries (a torn or foreign line). */
export function parseEntry(line: string): LogEntry | undefined {
  if (!line.startsWith('{')) return undefined
  try {
    const e = JSON.parse(line) as LogEntry
    return typeof e === 'object' && e !== null && typeof e.time === 'string' && typeof e.msg === 'string' ? e : undefined
  } catch {
    return undefined
  }
}

export function matches(e: LogEntry, f: LogFilter): boolean {
  if (f.job !== undefined && e.tag !== f.job) return false
  if (f.mac !== undefined && e.mac !== f.mac && !e.msg.toLowerCase().includes(f.mac)) return false
  return true
}

const two = (n: number) => String(n).padStart(2, '0')

/** `2025-11-22 07:33:12` in local time: what a person compares with the clock on the wall. */
export function localTime(iso: string): string {
  const d = new Date(iso)
  if (Number.isNaN(d.getTime())) return iso
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`
}

export function formatEntry(e: LogEntry): string {
  const level = (e.level || 'log').toUpperCase().padEnd(5)
  return `${localTime(e.time)} ${level} ${e.tag ? `[${e.tag}] ` : ''}${e.msg.replaceAll('\n', ' ')}`
}

/** The log's files, oldest first: dualgate.log.N ... dualgate.log.1, dualgate.log. */
export function logFiles(dataDir: string, rotations: number): string[] {
  const base = logFile(dataDir)
  return [...Array.from({ length: Math.max(0, rotations - 1) }, (_, i) => `${base}.${rotations - 1 - i}`), base]
}

/** Every line of the log's files, oldest first; a file that is not there has none. Bounded by logMaxBytes x logFiles. */
export async function readLogLines(dataDir: string, rotations: number): Promise<string[]> {
  const read = async (file: string) => {
    try {
      return (await readFile(file, 'utf8')).split('\n').filter(Boolean)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
      throw err
    }
  }
  return (await Promise.all(logFiles(dataDir, rotations).map(read))).flat()
}

/** The last `n` matching lines of `lines` (raw JSON lines in file order). */
export function lastMatching(lines: string[], f: LogFilter, n: number): string[] {
  const out: string[] = []
  for (let i = lines.length - 1; i >= 0 && out.length < n; i--) {
    const e = parseEntry(lines[i])
    if (e && matches(e, f)) out.push(lines[i])
  }
  return out.reverse()
}
