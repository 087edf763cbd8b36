// The store on tmpfs, persisted to flash now and then: routers wear out flash with every write, so with
// `persistDir` set the live store sits in `dataDir` (put it on tmpfs) and a copy goes to `persistDir` every
// `persistInterval` seconds when it changed, and when the runner stops. After a reboot the copy comes back.
import { createHash } from 'node:crypto'
import { copyFile, mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { parseData } from './schema.ts'

const NAME = 'dualgate.json'

export interface Persist {
  /** Copies the store to persistDir if it changed since the last copy; never copies an invalid store. */
  flush(): Promise<'written' | 'unchanged' | 'invalid' | 'missing'>
  stop(): void
}

/** Before the store is opened: a store missing from dataDir (tmpfs after a reboot) comes back from flash. */
export async function restorePersisted(dataDir: string, persistDir: string): Promise<boolean> {
  const live = path.join(dataDir, NAME)
  const saved = path.join(persistDir, NAME)
  if (await readFile(live).then(() => true, () => false)) return false
  const text = await readFile(saved, 'utf8').catch(() => undefined)
  if (text === undefined) return false
  try {
    parseData(text)
  } catch (err) {
    // A bad copy never becomes the live store, and is kept aside before the next flush replaces it.
    const aside = `${saved}.corrupt-${createHash('sha256').update(text).digest('hex').slice(0, 8)}`
    await copyFile(saved, aside)
    throw new Error(`${(err as Error).message}; kept as ${aside}`)
  }
  await mkdir(dataDir, { recursive: true })
  await copyFile(saved, `${live}.restore`)
  await rename(`${live}.restore`, live)
  return true
}

export function startPersist(o: { dataDir: string; persistDir: string; intervalSec: number; onError: (m: string) => void }): Persist {
  const live = path.join(o.dataDir, NAME)
  const saved = path.join(o.persistDir, NAME)
  let lastHash = ''
  const flush: Persist['flush'] = async () => {
    const text = await readFile(live, 'utf8').catch(() => undefined)
    if (text === undefined) return 'missing'
    const hash = createHash('sha256').update(text).digest('hex')
    if (hash === lastHash) return 'unchanged'
    try {
      parseData(text)
    } catch (err) {
      o.onError(`not persisting ${live}: ${(err as Error).message}`)
      return 'invalid'
    }
    await mkdir(o.persistDir, { recursive: true })
    await writeFile(`${saved}.tmp`, text)
    await rename(`${saved}.tmp`, saved)
    lastHash = hash
    return 'written'
  }
  const timer = setInterval(() => void flush().catch((err) => o.onError(`persisting the store: ${(err as Error).message}`)), o.intervalSec * 1000)
  timer.unref()
  return { flush, stop: () => clearInterval(timer) }
}
