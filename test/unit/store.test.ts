// The store under real processes and real files: concurrent writers, a writer killed mid-write, corruption
// and restore from backups, migration, coalescing. No mocks: every test has its own temp data dir.
import { execFile, spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { afterAll, describe, expect, it } from 'vitest'
import { loadConfig } from '../../lib/core/config.ts'
import { createContext } from '../../lib/core/job.ts'
import { logFile } from '../../lib/core/log.ts'
import { parseData, STORE_VERSION } from '../../lib/core/schema.ts'
import { openStore, StoreError } from '../../lib/core/store.ts'

const WRITER = fileURLToPath(new URL('../fixtures/store-writer.ts', import.meta.url))
const run = promisify(execFile)

const dirs: string[] = []
function tempDir(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'dualgate-store-'))
  dirs.push(dir)
  return dir
}
afterAll(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }) })

const storeFile = (dir: string) => path.join(dir, 'dualgate.json')

/** Three writes with a backup before each, so two backups hold the first and second states. */
async function withBackups(dir: string) {
  const errors: string[] = []
  const store = openStore({ dataDir: dir, backupCount: 5, backupInterval: 0, onError: (m) => errors.push(m) })
  for (const host of ['one', 'two', 'three']) {
    await store.update((d) => {
      d.upstream.prefixes = [host]
    })
    await new Promise((r) => setTimeout(r, 5)) // backups are named by the millisecond
  }
  return { store, errors }
}

describe('store', () => {
  it('loses no increment from 20 processes writing at once (1,000 updates)', async () => {
    const dir = tempDir()
    await Promise.all(Array.from({ length: 20 }, () => run(process.execPath, ['--import=tsx', WRITER, dir, 'increment', '50'], { timeout: 120_000 })))
    const data = parseData(readFileSync(storeFile(dir), 'utf8'))
    expect(data.jobs.counter.runs).toBe(1000)
    // Coalescing: five updates requested together share one locked write, so far fewer writes than updates.
    expect(data.meta.writes).toBeLessThanOrEqual(1000)
    expect(existsSync(`${storeFile(dir)}.lock`)).toBe(false)
  }, 180_000)

  it('survives a writer killed with SIGKILL in the middle of large writes', async () => {
    const dir = tempDir()
    for (let round = 0; round < 3; round++) {
      const child = spawn(process.execPath, ['--import=tsx', WRITER, dir, 'large'], { stdio: ['ignore', 'pipe', 'inherit'] })
      let out = ''
      await new Promise<void>((resolve, reject) => {
        child.stdout.on('data', (d) => {
          out += d
          if ((out.match(/wrote/g) ?? []).length >= 2) resolve()
        })
        child.on('exit', () => reject(new Error(`writer exited early: ${out}`)))
      })
      // Somewhere inside the next write: the document is ~600 KB, so a write takes a while.
      await new Promise((r) => setTimeout(r, 5 + round * 17))
      child.kill('SIGKILL')
      await new Promise((r) => child.once('exit', r))
      const data = parseData(readFileSync(storeFile(dir), 'utf8'))
      expect(Object.keys(data.devices)).toHaveLength(3000)
    }
    // The next process gets the lock (stale after the writer died) and writes.
    const store = openStore({ dataDir: dir })
    await store.update((d) => { d.upstream.prefixes = ['after'] })
    expect(parseData(readFileSync(storeFile(dir), 'utf8')).upstream.prefixes).toEqual(['after'])
  }, 60_000)

  it.each([
    ['garbage', (file: string) => writeFileSync(file, 'this is not {json')],
    ['truncated', (file: string) => truncateSync(file, Math.floor(readFileSync(file).length / 2))],
    ['emptied', (file: string) => truncateSync(file, 0)],
    ['invalid', (file: string) => writeFileSync(file, JSON.stringify({ version: STORE_VERSION, devices: { x: { mac: 'nope' } }, meta: { createdAt: 'x', writes: 0 } }))],
  ])('restores a %s store from the newest valid backup, loudly, and keeps the bad file', async (_name, corrupt) => {
    const dir = tempDir()
    await withBackups(dir)
    const file = storeFile(dir)
    corrupt(file)
    const bad = readFileSync(file)
    // Through a job's context, so the report goes where a job's errors go: the log, at error level.
    const { config } = loadConfig({ env: { DUALGATE_DATA_DIR: dir }, uciFile: '/nonexistent' })
    const ctx = createContext({ config, tag: 'test' })
    const data = await ctx.store.read()
    expect(data.upstream.prefixes).toEqual(['two'])
    expect(parseData(readFileSync(file, 'utf8')).upstream.prefixes).toEqual(['two'])
    const aside = readdirSync(dir).filter((n) => n.startsWith('dualgate.json.corrupt-'))
    expect(aside).toHaveLength(1)
    expect(readFileSync(path.join(dir, aside[0]))).toEqual(bad)
    const lines = readFileSync(logFile(dir), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { level: string; msg: string })
    expect(lines).toContainEqual(expect.objectContaining({ level: 'error', msg: expect.stringMatching(/corrupt.*restored from backup/) }))
    // And writing goes on from the restored state.
    await ctx.store.update((d) => { d.upstream.prefixes.push('four') })
    expect(parseData(readFileSync(file, 'utf8')).upstream.prefixes).toEqual(['two', 'four'])
  })

  it('skips a backup that is corrupt too and takes an older one', async () => {
    const dir = tempDir()
    const { store, errors } = await withBackups(dir)
    const backups = readdirSync(path.join(dir, 'backups')).sort()
    writeFileSync(path.join(dir, 'backups', backups.at(-1)!), '{')
    writeFileSync(storeFile(dir), '{')
    expect((await store.read()).upstream.prefixes).toEqual(['one'])
    expect(errors.join('\n')).toMatch(/not valid either/)
  })

  it('with no valid backup fails clearly and leaves the bad file alone', async () => {
    const dir = tempDir()
    const errors: string[] = []
    const store = openStore({ dataDir: dir, onError: (m) => errors.push(m) })
    writeFileSync(storeFile(dir), '{"version": 1, "devices": ')
    await expect(store.read()).rejects.toThrow(StoreError)
    await expect(store.update(() => {})).rejects.toThrow(/corrupt .* no valid backup exists/)
    expect(readFileSync(storeFile(dir), 'utf8')).toBe('{"version": 1, "devices": ')
    expect(readdirSync(dir).some((n) => n.startsWith('dualgate.json.corrupt-'))).toBe(true)
  })

  it('migrates a file written before versioning', async () => {
    const dir = tempDir()
    const now = new Date().toISOString()
    writeFileSync(storeFile(dir), JSON.stringify({ devices: { '02:00:00:00:00:01': { mac: '02:00:00:00:00:01', status: 'active', statusChangedAt: now, firstSeen: now, lastSeen: now } } }))
    const store = openStore({ dataDir: dir })
    const data = await store.read()
    expect(data.version).toBe(STORE_VERSION)
    expect(data.devices['02:00:00:00:00:01'].wanIpv6).toEqual([])
    await store.update((d) => { d.devices['02:00:00:00:00:01'].hostname = 'tv' })
    const written = JSON.parse(readFileSync(storeFile(dir), 'utf8'))
    expect(written.version).toBe(STORE_VERSION)
    expect(written.meta.writes).toBe(1)
    expect(written.devices['02:00:00:00:00:01'].hostname).toBe('tv')
  })

  it('coalesces many updates in one tick into one write; a failing change does not spoil the others', async () => {
    const dir = tempDir()
    const store = openStore({ dataDir: dir })
    const updates = Array.from({ length: 100 }, (_, i) => store.update((d) => {
      if (i === 50) {
        d.jobs.counter = { runs: -1000, failures: 0 }
        throw new Error('this change fails after editing')
      }
      const c = d.jobs.counter ?? { runs: 0, failures: 0 }
      d.jobs.counter = { ...c, runs: c.runs + 1 }
      return i
    }))
    const results = await Promise.allSettled(updates)
    expect(results.filter((r) => r.status === 'rejected')).toHaveLength(1)
    const data = parseData(readFileSync(storeFile(dir), 'utf8'))
    expect(data.jobs.counter.runs).toBe(99)
    expect(data.meta.writes).toBe(1)
  })
})
