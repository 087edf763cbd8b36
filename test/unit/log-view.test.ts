// Log lines for people: parsing the JSON log, filtering by job and device, the readable format.
import path from 'node:path'
import { describe, expect, it, vi } from 'vitest'
import { formatEntry, lastMatching, localTime, logFiles, matches, parseEntry } from '../../lib/core/log-view.ts'

const line = (o: Record<string, unknown>) => JSON.stringify({ time: '2025-03-04T05:06:07.000Z', level: 'info', msg: 'x', ...o })

describe('log view', () => {
  it('parses our lines and skips torn or foreign ones', () => {
    expect(parseEntry(line({ tag: 'scan-arp' }))).toMatchObject({ tag: 'scan-arp', msg: 'x' })
    expect(parseEntry('{"time": "2025-')).toBeUndefined()
    expect(parseEntry('plain text')).toBeUndefined()
    expect(parseEntry('{"level": "info"}')).toBeUndefined()
  })

  it('filters by job (the tag) and by device (the mac field or the message)', () => {
    const a = parseEntry(line({ tag: 'acquire-leases', msg: '02:aa:00:00:00:01 acquiring -> active', mac: '02:aa:00:00:00:01' }))!
    const b = parseEntry(line({ tag: 'runner', msg: 'acquire-leases (cron): ok in 30 ms' }))!
    const c = parseEntry(line({ tag: 'scan-arp', msg: 'ignored lease 02:aa:00:00:00:01 198.18.0.9: outside' }))!
    expect(matches(a, { job: 'acquire-leases' })).toBe(true)
    expect(matches(b, { job: 'acquire-leases' })).toBe(false)
    expect(matches(a, { mac: '02:aa:00:00:00:01' })).toBe(true)
    expect(matches(c, { mac: '02:aa:00:00:00:01' })).toBe(true)
    expect(matches(b, { mac: '02:aa:00:00:00:01' })).toBe(false)
    expect(matches(a, { job: 'scan-arp', mac: '02:aa:00:00:00:01' })).toBe(false)
  })

  it('formats TIME LEVEL [tag] msg in local time', () => {
    const e = parseEntry(line({ tag: 'prune-stale', level: 'warn', msg: 'two\nlines' }))!
    const d = new Date('2025-03-04T05:06:07.000Z')
    const p = (n: number) => String(n).padStart(2, '0')
    const t = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`
    expect(localTime(e.time)).toBe(t)
    expect(formatEntry(e)).toBe(`${t} WARN  [prune-stale] two lines`)
    expect(formatEntry(parseEntry(line({}))!)).toBe(`${t} INFO  x`)
  })

  it('reads the rotations oldest first and keeps the last N matching lines', () => {
    expect(logFiles('/d', 3)).toEqual(['/d/logs/dualgate.log.2', '/d/logs/dualgate.log.1', '/d/logs/dualgate.log'])
    expect(logFiles('/d', 1)).toEqual(['/d/logs/dualgate.log'])
    const lines = [1, 2, 3, 4, 5].map((i) => line({ tag: i % 2 ? 'odd' : 'even', msg: String(i) }))
    expect(lastMatching(lines, { job: 'odd' }, 2).map((l) => parseEntry(l)!.msg)).toEqual(['3', '5'])
    expect(lastMatching(lines, {}, 0)).toEqual([])
  })
})

describe('log rate', () => {
  it('writes at most LINES_PER_MINUTE lines a minute from one logger, then says how many it held back', async () => {
    const { createLogger, LINES_PER_MINUTE, logFile } = await import('../../lib/core/log.ts')
    const { mkdtempSync, readFileSync } = await import('node:fs')
    const { tmpdir } = await import('node:os')
    const dataDir = mkdtempSync(path.join(tmpdir(), 'dg-lograte-'))
    const log = createLogger({ tag: 'flood', dataDir })
    // Only the file reporter is looked at; the terminal reporter is muted for the test's own output.
    log.options.reporters.splice(0, 1)
    vi.useFakeTimers({ now: Date.parse('2026-01-01T00:00:00Z') })
    try {
      for (let i = 0; i < LINES_PER_MINUTE + 50; i++) log.warn(`ignored event ${i}`)
      vi.setSystemTime(Date.parse('2026-01-01T00:01:00Z'))
      log.info('next minute')
    } finally {
      vi.useRealTimers()
    }
    const lines = readFileSync(logFile(dataDir), 'utf8').trim().split('\n').map((l) => JSON.parse(l).msg as string)
    expect(lines).toHaveLength(LINES_PER_MINUTE + 2)
    expect(lines.at(-2)).toBe(`50 log lines held back in the last minute (more than ${LINES_PER_MINUTE} a minute)`)
    expect(lines.at(-1)).toBe('next minute')
  })
})
