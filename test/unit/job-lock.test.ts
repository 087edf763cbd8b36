// Exclusive jobs across processes: two runs of the same job by hand never overlap, the second says whom it
// waits for, a holder killed with SIGKILL does not block the job for good, and a dry run does not wait; a
// repair by diagnose and a prune take the identities lock that acquire-leases holds.
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { openStore } from '../../lib/core/store.ts'
import { IDENTITY_LOCK } from '../../lib/devices/identity.ts'

const FIXTURE = fileURLToPath(new URL('../fixtures/jobs/exclusive.ts', import.meta.url))
const HOLD_LOCK = fileURLToPath(new URL('../fixtures/hold-lock.ts', import.meta.url))
const DIAGNOSE = fileURLToPath(new URL('../../jobs/diagnose.ts', import.meta.url))
const PRUNE = fileURLToPath(new URL('../../jobs/prune-stale.ts', import.meta.url))
let dir: string

interface Run { pid: number; done: Promise<{ code: number | null; stderr: string }> }

function start(env: Record<string, string> = {}, args: string[] = []): Run {
  const child = spawn(process.execPath, ['--import=tsx', FIXTURE, ...args], {
    env: {
      PATH: process.env.PATH,
      DUALGATE_DATA_DIR: path.join(dir, 'data'),
      DUALGATE_RUN_DIR: path.join(dir, 'run'),
      DUALGATE_UCI_FILE: path.join(dir, 'no-uci'),
      ...env,
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  const done = new Promise<{ code: number | null; stderr: string }>((resolve) => child.on('close', (code) => resolve({ code, stderr })))
  return { pid: child.pid!, done }
}

/** [pid, start, end] per finished run, from the fixture's log. */
function spans(): [number, number, number][] {
  const lines = readFileSync(path.join(dir, 'data', 'exclusive.log'), 'utf8').trim().split('\n').map((l) => l.split(' '))
  const starts = new Map(lines.filter((l) => l[0] === 'start').map((l) => [Number(l[1]), Number(l[2])]))
  return lines.filter((l) => l[0] === 'end').map((l) => [Number(l[1]), starts.get(Number(l[1]))!, Number(l[2])])
}

async function started(timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs
  for (;;) {
    try { if (readFileSync(path.join(dir, 'data', 'exclusive.log'), 'utf8').includes('start')) return } catch { /* not yet */ }
    if (Date.now() > end) throw new Error('the first run never started')
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** A process that holds the identities lock for `ms`, as an acquire-leases run would; resolves once it holds it. */
async function holdIdentities(ms: number): Promise<ChildProcess> {
  const holder = spawn(process.execPath, ['--import=tsx', HOLD_LOCK, path.join(dir, 'run'), IDENTITY_LOCK, String(ms)], { stdio: ['ignore', 'pipe', 'inherit'] })
  await new Promise<void>((resolve, reject) => {
    holder.stdout!.on('data', (d: Buffer) => { if (d.toString().includes('held')) resolve() })
    holder.on('close', () => reject(new Error('the lock holder exited first')))
  })
  return holder
}

/** Runs a job file whose interfaces do not exist: once it holds its lock, it refuses and changes nothing here. */
async function runWithoutInterfaces(file: string, args: string[] = []): Promise<string> {
  const child = spawn(process.execPath, ['--import=tsx', file, ...args], {
    env: { PATH: process.env.PATH, DUALGATE_DATA_DIR: path.join(dir, 'data'), DUALGATE_RUN_DIR: path.join(dir, 'run'), DUALGATE_UCI_FILE: path.join(dir, 'no-uci'), DUALGATE_WAN_IF: 'dgnowan0', DUALGATE_LAN_IF: 'dgnolan0' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stderr = ''
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString() })
  await new Promise((resolve) => child.on('close', resolve))
  return stderr
}

beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'dualgate-lock-'))
  mkdirSync(path.join(dir, 'data'))
  writeFileSync(path.join(dir, 'data', 'exclusive.log'), '')
})
afterEach(() => rmSync(dir, { recursive: true, force: true }))

describe('exclusive jobs', () => {
  it('a second run waits for the first, names it, and the two never overlap', async () => {
    // Held long enough that the second process (a second or two to start under load) finds it taken.
    const first = start({ FIXTURE_HOLD_MS: '4000' })
    await started()
    const second = start({ FIXTURE_HOLD_MS: '100' })
    const [a, b] = await Promise.all([first.done, second.done])
    expect(a.code, a.stderr).toBe(0)
    expect(b.code, b.stderr).toBe(0)
    expect(b.stderr).toContain(`waiting for another exclusive run (pid ${first.pid}) to finish`)
    const [[p1, , end1], [p2, start2]] = spans()
    expect([p1, p2]).toEqual([first.pid, second.pid])
    expect(start2).toBeGreaterThanOrEqual(end1)
  }, 30_000)

  it('gives up after jobTimeout with the holder named, and a dry run does not wait', async () => {
    const first = start({ FIXTURE_HOLD_MS: '6000' })
    await started()
    const second = start({ DUALGATE_JOB_TIMEOUT: '1' })
    const dry = start({ FIXTURE_HOLD_MS: '0' }, ['--dry-run'])
    const [b, d] = await Promise.all([second.done, dry.done])
    expect(b.code).toBe(1)
    expect(b.stderr).toMatch(new RegExp(`another exclusive run \\(pid ${first.pid}\\) still holds .*exclusive\\.lock after 1 s`))
    expect(d.code, d.stderr).toBe(0)
    expect((await first.done).code).toBe(0)
    // The dry run ran inside the first run's span; the refused run never started.
    const runs = spans()
    expect(runs.map((r) => r[0]).sort()).toEqual([first.pid, dry.pid].sort())
  }, 30_000)

  it('a holder killed with SIGKILL leaves a lock that goes stale, and the next run proceeds', async () => {
    const first = start({ FIXTURE_HOLD_MS: '60000' })
    await started()
    process.kill(first.pid, 'SIGKILL')
    await first.done
    const second = start({ FIXTURE_HOLD_MS: '0' })
    const b = await second.done
    expect(b.code, b.stderr).toBe(0)
    expect(spans().map((r) => r[0])).toEqual([second.pid])
  }, 40_000)

  it('a repair by diagnose --fix runs acquire-leases under the identities lock that prune-stale shares, waiting for its holder', async () => {
    const now = new Date().toISOString()
    const mac = '02:00:00:00:00:0a'
    await openStore({ dataDir: path.join(dir, 'data') }).update((d) => {
      // Active, with a WAN lease but no DHCP client: the dhcp-clients check fails and its fix re-acquires it.
      d.devices[mac] = { mac, status: 'active', statusChangedAt: now, firstSeen: now, lastSeen: now, lanIpv4: '192.168.1.10', wanIpv4: '198.18.1.10', wanIpv6: [], attempts: 0 }
    })
    const holder = await holdIdentities(5000)
    const stderr = await runWithoutInterfaces(DIAGNOSE, ['--fix', 'dhcp-clients'])
    expect(stderr).toContain(`waiting for the run holding the ${IDENTITY_LOCK} lock (pid ${holder.pid}) to finish`)
    expect(holder.exitCode).toBe(0)
  }, 40_000)

  it('prune-stale waits for the identities lock too: it never releases a device that acquire-leases is working on', async () => {
    const holder = await holdIdentities(3000)
    const stderr = await runWithoutInterfaces(PRUNE)
    expect(stderr).toContain(`waiting for the run holding the ${IDENTITY_LOCK} lock (pid ${holder.pid}) to finish`)
    // It ran only once the holder let go: then it found the interfaces missing and changed nothing.
    expect(holder.exitCode).toBe(0)
    expect(stderr).toMatch(/dgnolan0|dgnowan0/)
  }, 40_000)
})
