import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { restorePersisted, startPersist } from '../../lib/core/persist.ts'
import { openStore } from '../../lib/core/store.ts'

const dirs: string[] = []
const tmp = () => { const d = mkdtempSync(path.join(tmpdir(), 'dualgate-persist-')); dirs.push(d); return d }
afterEach(() => { for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true }) })

describe('store on tmpfs, persisted to flash', () => {
  it('copies the store when it changed, only then, and brings it back after a reboot', async () => {
    const live = tmp()
    const flash = tmp()
    const errors: string[] = []
    const persist = startPersist({ dataDir: live, persistDir: flash, intervalSec: 3600, onError: (m) => errors.push(m) })
    const store = openStore({ dataDir: live, backupCount: 0 })
    expect(await persist.flush()).toBe('missing')
    await store.update((d) => { d.forwards = [] ; d.upstream.prefixes = ['2001:db8:1::/64'] })
    expect(await persist.flush()).toBe('written')
    expect(await persist.flush()).toBe('unchanged')
    persist.stop()
    expect(readFileSync(path.join(flash, 'dualgate.json'), 'utf8')).toBe(readFileSync(path.join(live, 'dualgate.json'), 'utf8'))

    rmSync(live, { recursive: true })
    expect(await restorePersisted(live, flash)).toBe(true)
    expect((await openStore({ dataDir: live }).read()).upstream.prefixes).toEqual(['2001:db8:1::/64'])
    // A live store is never replaced by the copy.
    expect(await restorePersisted(live, flash)).toBe(false)
    expect(errors).toEqual([])
  })

  it('never persists an invalid store, and never restores an invalid copy (kept aside)', async () => {
    const live = tmp()
    const flash = tmp()
    const errors: string[] = []
    writeFileSync(path.join(live, 'dualgate.json'), '{"version": 1, "devi')
    const persist = startPersist({ dataDir: live, persistDir: flash, intervalSec: 3600, onError: (m) => errors.push(m) })
    expect(await persist.flush()).toBe('invalid')
    persist.stop()
    expect(existsSync(path.join(flash, 'dualgate.json'))).toBe(false)
    expect(errors[0]).toMatch(/not persisting/)

    writeFileSync(path.join(flash, 'dualgate.json'), 'garbage')
    rmSync(path.join(live, 'dualgate.json'))
    await expect(restorePersisted(live, flash)).rejects.toThrow(/kept as .*corrupt-/)
    expect(existsSync(path.join(live, 'dualgate.json'))).toBe(false)
    expect(readdirSync(flash).some((n) => n.startsWith('dualgate.json.corrupt-'))).toBe(true)
  })
})
