// The coalescing of bursts: events for one job that arrive close together become one run.

export interface Coalescer<T> {
  add(key: string, item: T): void
  /** Items waiting in bursts, across keys. */
  pending(): number
  /** Cancels the timers and hands back what was waiting (nothing is flushed). */
  takeAll(): Map<string, T[]>
}

export interface CoalesceOptions<T> {
  /** Quiet time (ms) that ends a burst. Read at every event, so a reloaded config applies at once. */
  window: () => number
  /** Longest a first event waits (ms), however long the burst goes on. */
  maxWait: () => number
  onFlush: (key: string, items: T[]) => void
  /** Adds `item` to a burst's `items` in place, returning what it dropped to stay bounded (see queue.ts). */
  add: (items: T[], item: T) => T[]
  onDrop: (key: string, dropped: T[]) => void
}

interface Burst<T> { items: T[]; first: number; last: number; timer: ReturnType<typeof setTimeout> }

/** Debounce with a maximum wait, per key. One timer per burst, re-armed only when it fires early. */
export function createCoalescer<T>(o: CoalesceOptions<T>): Coalescer<T> {
  const bursts = new Map<string, Burst<T>>()

  function due(b: Burst<T>): number {
    return Math.min(b.last + o.window(), b.first + Math.max(o.maxWait(), o.window()))
  }

  function arm(key: string, b: Burst<T>): void {
    b.timer = setTimeout(() => {
      const now = Date.now()
      if (now < due(b)) return arm(key, b)
      bursts.delete(key)
      o.onFlush(key, b.items)
    }, Math.max(0, due(b) - Date.now()))
  }

  return {
    add(key, item) {
      const now = Date.now()
      const b = bursts.get(key)
      if (b) {
        const dropped = o.add(b.items, item)
        if (dropped.length > 0) o.onDrop(key, dropped)
        b.last = now
        return
      }
      const burst: Burst<T> = { items: [item], first: now, last: now, timer: undefined as unknown as Burst<T>['timer'] }
      bursts.set(key, burst)
      arm(key, burst)
    },
    pending: () => [...bursts.values()].reduce((n, b) => n + b.items.length, 0),
    takeAll() {
      const out = new Map<string, T[]>()
      for (const [k, b] of bursts) {
        clearTimeout(b.timer)
        out.set(k, b.items)
      }
      bursts.clear()
      return out
    },
  }
}
