// The one JSON store every job shares. lowdb holds the document; the file is replaced atomically through a
// temp file created exclusively (safe-file.ts, not lowdb's file adapter, which writes through a link planted
// at its fixed temp name). This module adds what lowdb leaves out for many processes: an inter-process lock
// around every read-modify-write, validation and migration on read, rotating backups, restore from the
// newest valid backup, and coalescing of writes so a busy gateway does not wear out its flash.
import { createHash } from 'node:crypto'
import { copyFile, mkdir, readdir, readFile, stat, unlink } from 'node:fs/promises'
import path from 'node:path'
import { Low, type Adapter } from 'lowdb'
import lockfile from 'proper-lockfile'
import { replaceFile } from './safe-file.ts'
import { emptyData, parseData, SchemaError, type Data } from './schema.ts'

export interface StoreOptions {
  dataDir: string
  /** How many backups to keep (0: none). */
  backupCount?: number
  /** Seconds between backups (0: before every write). */
  backupInterval?: number
  /** Where restores and failures are reported. */
  onError?: (message: string) => void
}

export interface Store {
  readonly file: string
  /** A consistent snapshot. The file is only ever replaced whole, so reading needs no lock. */
  read(): Promise<Data>
  /**
   * The same, parsed once per version of the file and shared by every caller until the file is replaced:
   * for the runner's readers (API GETs, supervisors), which read far more often than jobs write. Frozen: a
   * caller that needs to change it takes read() instead.
   */
  snapshot(): Promise<Data>
  /**
   * Applies `change` to the document under the lock and writes it once. Changes requested while a write is
   * pending are applied in the same locked cycle (one write for many). If `change` throws, its edits are
   * dropped and the others still land.
   */
  update<T>(change: (data: Data) => T): Promise<T>
}

export class StoreError extends Error {}

interface Pending {
  change: (data: Data) => unknown
  resolve: (value: unknown) => void
  reject: (err: unknown) => void
}

const LOCK_OPTIONS = {
  realpath: false,
  stale: 5000,
  update: 1000,
  retries: { retries: 400, factor: 1.3, minTimeout: 2, maxTimeout: 50, randomize: true },
}

/** lowdb's file adapter, reading as it does and writing through replaceFile. */
function storeFile(file: string): Adapter<Data | null> {
  return {
    async read() {
      try {
        return parseData(await readFile(file, 'utf8'))
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
        throw err
      }
    },
    write: (data) => replaceFile(file, `${JSON.stringify(data, null, 1)}\n`),
  }
}

export function openStore(opts: StoreOptions): Store {
  const file = path.join(opts.dataDir, 'dualgate.json')
  const backupDir = path.join(opts.dataDir, 'backups')
  const backupCount = opts.backupCount ?? 5
  const backupInterval = opts.backupInterval ?? 3600
  const onError = opts.onError ?? ((m: string) => console.error(m))
  const db = new Low<Data | null>(storeFile(file), null)
  let queue: Pending[] = []
  let flushing: Promise<void> | undefined

  async function load(): Promise<Data> {
    try {
      await db.read()
      return db.data ?? emptyData()
    } catch (err) {
      if (!(err instanceof SchemaError)) throw err
      return restore(err.message)
    }
  }

  /** Called with the lock held: keep the bad file aside, put the newest valid backup in its place. */
  async function restore(reason: string): Promise<Data> {
    const bad = await readFile(file)
    const aside = `${file}.corrupt-${createHash('sha1').update(bad).digest('hex').slice(0, 8)}`
    await copyFile(file, aside)
    for (const name of await listBackups()) {
      const candidate = path.join(backupDir, name)
      try {
        const data = parseData(await readFile(candidate, 'utf8'))
        await copyFile(candidate, file)
        onError(`store ${file} was corrupt (${reason}): restored from backup ${candidate}; the bad file is kept at ${aside}`)
        return data
      } catch {
        onError(`store backup ${candidate} is not valid either, trying an older one`)
      }
    }
    if (bad.toString().trim() === '') {
      onError(`store ${file} was empty and no backup exists: starting with an empty store`)
      return emptyData()
    }
    throw new StoreError(`store ${file} is corrupt (${reason}) and no valid backup exists; a copy is kept at ${aside}. Move the file away to start with an empty store.`)
  }

  async function listBackups(): Promise<string[]> {
    try {
      return (await readdir(backupDir)).filter((n) => /^dualgate-.*\.json$/.test(n)).sort().reverse()
    } catch {
      return []
    }
  }

  async function backup(): Promise<void> {
    if (backupCount === 0) return
    const existing = await listBackups()
    if (existing.length > 0 && backupInterval > 0) {
      const newest = await stat(path.join(backupDir, existing[0]))
      if (Date.now() - newest.mtimeMs < backupInterval * 1000) return
    }
    try {
      await stat(file)
    } catch {
      return
    }
    await mkdir(backupDir, { recursive: true })
    const stamp = new Date().toISOString().replace(/[:.]/g, '-')
    await copyFile(file, path.join(backupDir, `dualgate-${stamp}-${process.pid}.json`))
    for (const old of [...existing].slice(backupCount - 1)) await unlink(path.join(backupDir, old)).catch(() => {})
  }

  async function flush(): Promise<void> {
    const batch = queue
    queue = []
    await mkdir(opts.dataDir, { recursive: true, mode: 0o700 })
    let release: (() => Promise<void>) | undefined
    try {
      release = await lockfile.lock(file, { ...LOCK_OPTIONS, onCompromised: (err) => onError(`store lock lost: ${err.message}`) })
      const data = await load()
      const results: { ok: boolean; value: unknown }[] = []
      for (const item of batch) {
        const before = structuredClone(data)
        try {
          results.push({ ok: true, value: await item.change(data) })
        } catch (err) {
          Object.assign(data, before)
          results.push({ ok: false, value: err })
        }
      }
      if (results.some((r) => r.ok)) {
        await backup()
        data.meta.writes += 1
        db.data = data
        await db.write()
      }
      batch.forEach((item, i) => (results[i].ok ? item.resolve(results[i].value) : item.reject(results[i].value)))
    } catch (err) {
      batch.forEach((item) => item.reject(err))
    } finally {
      await release?.().catch(() => {})
    }
  }

  function schedule(): void {
    if (flushing) return
    flushing = new Promise<void>((resolve) => setImmediate(resolve))
      .then(flush)
      .finally(() => {
        flushing = undefined
        if (queue.length > 0) schedule()
      })
  }

  let shared: { version: string; data: Data } | undefined

  return {
    file,
    async snapshot() {
      // The file is replaced by rename on every write: a new inode (or size, or time) is a new version.
      const st = await stat(file).catch((err: NodeJS.ErrnoException) => { if (err.code === 'ENOENT') return undefined; throw err })
      const version = st ? `${st.ino}:${st.size}:${st.mtimeMs}` : 'none'
      // A copy is frozen: the parse may share objects (defaults) that other readers change.
      if (shared?.version !== version) shared = { version, data: deepFreeze(structuredClone(await this.read())) }
      return shared.data
    },
    async read() {
      try {
        return parseData(await readFile(file, 'utf8'))
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return emptyData()
        if (!(err instanceof SchemaError)) throw err
        // Corrupt: repair under the lock (another process may be doing the same).
        return this.update((data) => data)
      }
    },
    update<T>(change: (data: Data) => T): Promise<T> {
      return new Promise<T>((resolve, reject) => {
        queue.push({ change, resolve: resolve as (v: unknown) => void, reject })
        schedule()
      })
    },
  }
}

/** The store file as it is on disk. When it is corrupt, its newest valid backup stands in for the other checks. */
export interface StoreView {
  file: string
  data?: Data
  missing?: boolean
  error?: string
  /** Valid backups, newest first. */
  backups: string[]
}

export async function readStoreView(dataDir: string): Promise<StoreView> {
  const file = path.join(dataDir, 'dualgate.json')
  const backupDir = path.join(dataDir, 'backups')
  const names = (await readdir(backupDir).catch(() => [] as string[])).filter((n) => /^dualgate-.*\.json$/.test(n)).sort().reverse()
  const backups: string[] = []
  let fallback: Data | undefined
  for (const n of names) {
    try {
      const data = parseData(await readFile(path.join(backupDir, n), 'utf8'))
      fallback ??= data
      backups.push(path.join(backupDir, n))
    } catch { /* an invalid backup is no backup */ }
  }
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { file, data: emptyData(), missing: true, backups }
    return { file, error: (err as Error).message, data: fallback, backups }
  }
  try {
    return { file, data: parseData(text), backups }
  } catch (err) {
    if (!(err instanceof SchemaError)) throw err
    return { file, error: err.message, data: fallback, backups }
  }
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value)
    for (const v of Object.values(value)) deepFreeze(v)
  }
  return value
}
