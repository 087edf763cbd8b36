// What the runner keeps in step with the store (relay listeners, the CLAT) follows the store file: the
// store replaces it on every write, so a change is a rename into its directory. Debounced, since one job
// run writes several times.
import { watch, type FSWatcher } from 'node:fs'
import path from 'node:path'

const DEBOUNCE_MS = 100

/** Calls `onChange` after the store file at `file` is replaced; returns the stop. */
export function watchStore(file: string, onChange: () => void): () => void {
  let timer: NodeJS.Timeout | undefined
  let watcher: FSWatcher | undefined
  try {
    watcher = watch(path.dirname(file), { persistent: false }, (_type, name) => {
      if (name !== path.basename(file)) return
      clearTimeout(timer)
      timer = setTimeout(onChange, DEBOUNCE_MS)
    })
  } catch {
    // Without inotify the callers' periodic passes still follow the store, only later.
  }
  return () => {
    watcher?.close()
    clearTimeout(timer)
  }
}
