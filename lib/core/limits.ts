// The runner's limits as the kernel applies them (/proc/self/limits): the service units raise the
// open-file limit (systemd LimitNOFILE, procd limits nofile), and the relay and diagnose report it.
import { readFileSync } from 'node:fs'

/** The soft limit on open files, or undefined where /proc says nothing. */
export function openFileLimit(limits = '/proc/self/limits'): number | undefined {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync(limits, 'utf8'))
    return m ? (m[1] === 'unlimited' ? Number.POSITIVE_INFINITY : Number(m[1])) : undefined
  } catch {
    return undefined
  }
}
