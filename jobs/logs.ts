#!/usr/bin/env node
// gateway-logs: the JSON log as readable lines (`TIME LEVEL [tag] msg`), or passed through with --json;
// filtered by job or device, the last N lines, and -f to follow as it grows (across rotations).
import { open, stat, type FileHandle } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { defineJob, runMain, UsageError } from '../lib/core/job.ts'
import { logFile } from '../lib/core/log.ts'
import { formatEntry, lastMatching, matches, parseEntry, readLogLines, type LogFilter } from '../lib/core/log-view.ts'
import { normalizeMac } from '../lib/addr/mac.ts'

const POLL_MS = 250
const MAX_LINES = 1_000_000

/** Writes what was appended to the log from `offset` on; follows the file when rotation renames it away. */
async function follow(file: string, show: (line: string) => void): Promise<never> {
  let handle: FileHandle | undefined
  let ino = 0
  let offset = 0
  let partial = ''
  const drain = async () => {
    if (!handle) return
    for (;;) {
      const buf = Buffer.alloc(64 * 1024)
      const { bytesRead } = await handle.read(buf, 0, buf.length, offset)
      if (bytesRead === 0) return
      offset += bytesRead
      const text = partial + buf.subarray(0, bytesRead).toString('utf8')
      const lines = text.split('\n')
      partial = lines.pop() ?? ''
      lines.filter(Boolean).forEach(show)
    }
  }
  try {
    const s = await stat(file)
    handle = await open(file, 'r')
    ino = s.ino
    offset = s.size
  } catch { /* not there yet */ }
  for (;;) {
    await drain()
    let s
    try { s = await stat(file) } catch { s = undefined }
    if (s && (s.ino !== ino || s.size < offset)) {
      // Rotated (or truncated): finish the old file, then start the new one from its beginning.
      await drain()
      await handle?.close()
      handle = await open(file, 'r').catch(() => undefined)
      ino = s.ino
      offset = 0
      partial = ''
      continue
    }
    await sleep(POLL_MS)
  }
}

const job = defineJob({
  name: 'logs',
  description: 'Show the gateway log: readable lines (--json: the JSON lines), filtered by --job or --device; -f follows.',
  options: { follow: { type: 'boolean', short: 'f' }, job: { type: 'string' }, device: { type: 'string' }, lines: { type: 'string', short: 'n' } },
  async run({ ctx }): Promise<undefined> {
    if (ctx.args.length > 0) throw new UsageError(`unexpected argument "${ctx.args[0]}"`)
    const filter: LogFilter = {}
    if (ctx.options.job !== undefined) {
      if (!/^[a-z0-9][a-z0-9-]{0,63}$/.test(String(ctx.options.job))) throw new UsageError(`not a job name: "${ctx.options.job}"`)
      filter.job = String(ctx.options.job)
    }
    if (ctx.options.device !== undefined) {
      const mac = normalizeMac(String(ctx.options.device))
      if (!mac) throw new UsageError(`not a MAC address: "${ctx.options.device}" (aa:bb:cc:dd:ee:ff, aa-bb-..., aabb.ccdd.eeff or aabbccddeeff)`)
      filter.mac = mac
    }
    const rawLines = ctx.options.lines === undefined ? '50' : String(ctx.options.lines)
    if (!/^\d{1,7}$/.test(rawLines) || Number(rawLines) > MAX_LINES) throw new UsageError(`--lines takes a number from 0 to ${MAX_LINES}, not "${rawLines}"`)
    const json = !!ctx.options.json
    const show = (line: string) => {
      const e = parseEntry(line)
      if (!e || !matches(e, filter)) return
      process.stdout.write(`${json ? line : formatEntry(e)}\n`)
    }
    const lines = await readLogLines(ctx.config.dataDir, ctx.config.logFiles)
    for (const line of lastMatching(lines, filter, Number(rawLines))) show(line)
    if (ctx.options.follow) await follow(logFile(ctx.config.dataDir), show)
    return undefined
  },
})

export default job
await runMain(job, import.meta.url)
