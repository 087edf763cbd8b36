// The spool directory ($dataDir/spool): the one way hook events reach the runner. The shim writes each event
// as a JSON file (temp file, then rename, so a file is never seen half-written); the runner drains the
// directory at start and watches it (inotify through fs.watch, plus a slow poll in case a notification is
// lost). A file is removed only after a run has handled its event, so an event survives a runner crash.
//
// Why files and not a socket or HTTP: the shim must run under busybox ash on OpenWrt, whose busybox nc has
// no unix sockets (-U) and where curl is usually absent; uclient-fetch/wget would add an HTTP request per
// event and still need a fallback for when the runner is down. A rename into a directory costs one `mv` and
// works the same whether the runner is up, down or restarting: no event is lost in between.
import { watch, type FSWatcher } from 'node:fs'
import { lstat, mkdir, readdir, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { MAX_EVENT_BYTES, parseEvent, type HookEvent } from './event.ts'

/** Files read in one pass over the spool; the rest wait for the next pass (the caller asks again). */
export const SPOOL_BATCH = 128
/** Refused files kept for a person to look at; past this they are deleted (a flood must not fill the disk). */
const BAD_KEPT = 16

export function spoolDir(dataDir: string): string {
  return path.join(dataDir, 'spool')
}

let written = 0

/** Writes an event the way the shim does. Used by the runner to keep events it could not run before exiting. */
export async function writeSpool(dir: string, event: HookEvent): Promise<string> {
  await mkdir(dir, { recursive: true })
  const name = `r${process.pid}-${Date.now()}-${written++}.json`
  const tmp = path.join(dir, `.${name}.tmp`)
  await writeFile(tmp, `${JSON.stringify(event)}\n`, { mode: 0o600 })
  await rename(tmp, path.join(dir, name))
  return path.join(dir, name)
}

export interface SpoolEntry { file: string; event: HookEvent }

/**
 * Reads up to SPOOL_BATCH spool files not in `skip`, oldest first; `more` says whether others wait. Only
 * regular files of our own user and at most MAX_EVENT_BYTES are read (the directory is ours alone, 0700,
 * but a file that is not an event is never trusted): anything else, or a file that is not a valid event, is
 * reported through `onBad` and renamed to `<name>.bad` for a person to look at (the first BAD_KEPT; later
 * ones are deleted).
 */
export async function readSpool(dir: string, skip: Set<string>, onBad: (file: string, why: string, kept: boolean) => void): Promise<{ entries: SpoolEntry[]; more: boolean }> {
  let names: string[]
  try {
    names = await readdir(dir)
  } catch {
    return { entries: [], more: false }
  }
  const found: { file: string; mtime: number; why?: string }[] = []
  for (const name of names) {
    const file = path.join(dir, name)
    if (name.startsWith('.') || !name.endsWith('.json') || skip.has(file)) continue
    try {
      const st = await lstat(file)
      const why = !st.isFile() ? 'not a regular file' : st.uid !== process.getuid?.() ? `owned by uid ${st.uid}, not ours` : st.size > MAX_EVENT_BYTES ? `larger than ${MAX_EVENT_BYTES} bytes` : undefined
      found.push({ file, mtime: st.mtimeMs, why })
    } catch { /* taken by another drain */ }
  }
  found.sort((a, b) => a.mtime - b.mtime || a.file.localeCompare(b.file))
  let bad = names.filter((n) => n.endsWith('.bad')).length
  const entries: SpoolEntry[] = []
  for (const { file, mtime, why } of found.slice(0, SPOOL_BATCH)) {
    try {
      if (why) throw new Error(why)
      const event = parseEvent(JSON.parse(await readFile(file, 'utf8')))
      event.time ??= new Date(mtime).toISOString()
      entries.push({ file, event })
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue
      const keep = bad++ < BAD_KEPT
      onBad(file, (err as Error).message, keep)
      if (keep) await rename(file, `${file}.bad`).catch(() => unlink(file).catch(() => {}))
      else await unlink(file).catch(() => {})
    }
  }
  return { entries, more: found.length > SPOOL_BATCH }
}

/** Removes temp files a shim left when it was killed between write and rename. */
export async function cleanSpool(dir: string, olderThanMs = 60_000): Promise<void> {
  let names: string[]
  try {
    names = await readdir(dir)
  } catch {
    return
  }
  for (const name of names.filter((n) => n.startsWith('.'))) {
    const file = path.join(dir, name)
    try {
      if (Date.now() - (await stat(file)).mtimeMs > olderThanMs) await unlink(file)
    } catch { /* gone already */ }
  }
}

export interface SpoolWatcher { close(): void }

/** Calls `onChange` (coalesced to one call per tick) when files may have arrived. */
export function watchSpool(dir: string, onChange: () => void, pollMs = 5000): SpoolWatcher {
  let pending = false
  const poke = () => {
    if (pending) return
    pending = true
    setImmediate(() => { pending = false; onChange() })
  }
  let watcher: FSWatcher | undefined
  try {
    watcher = watch(dir, { persistent: false }, (_type, name) => {
      if (!name || (!name.startsWith('.') && name.endsWith('.json'))) poke()
    })
    watcher.on('error', () => { watcher?.close(); watcher = undefined })
  } catch {
    // No inotify (or out of watches): the poll below still drains the spool.
  }
  const timer = setInterval(poke, pollMs)
  timer.unref()
  return {
    close() {
      watcher?.close()
      clearInterval(timer)
    },
  }
}
