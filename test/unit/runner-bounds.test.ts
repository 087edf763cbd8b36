// The runner under hostile load from loopback, where any local user can reach it: a body that never ends,
// thousands of large events, thousands of connections that say nothing. Its memory must stay bounded and
// /health must keep answering. The runner is the real one, with fixture jobs, on 127.0.0.1, started with
// the V8 flags its service units use.
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterEach, describe, expect, it } from 'vitest'
import { API_LIMITS } from '../../lib/core/http-guard.ts'
import { freePort } from './free-port.ts'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const TOKEN = 'bounds-test-token-0123456789'
const MiB = 1024 * 1024

interface Runner { proc: ChildProcess; port: number; dataDir: string; output: () => string }
const started: Runner[] = []
afterEach(() => {
  for (const r of started.splice(0)) {
    r.proc.kill('SIGKILL')
    rmSync(r.dataDir, { recursive: true, force: true })
  }
})

async function until<T>(what: string, ms: number, probe: () => Promise<T | undefined> | T | undefined): Promise<T> {
  const end = Date.now() + ms
  for (;;) {
    try {
      const v = await probe()
      if (v !== undefined) return v
    } catch { /* not yet */ }
    if (Date.now() > end) throw new Error(`timed out: ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

async function startRunner(extra: Record<string, string> = {}): Promise<Runner> {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'dg-bounds-'))
  const port = await freePort()
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '', DUALGATE_DATA_DIR: dataDir, DUALGATE_RUN_DIR: path.join(dataDir, 'run'), DUALGATE_API_HOST: '127.0.0.1',
    DUALGATE_API_PORT: String(port), DUALGATE_API_TOKEN: TOKEN, DUALGATE_UCI_FILE: '/nonexistent', DUALGATE_JOBS_DIR: path.join(ROOT, 'test/fixtures/jobs'),
    ...Object.fromEntries(['SCAN_ARP', 'ACQUIRE_LEASES', 'PRUNE_STALE', 'REFRESH_PROXIES', 'DIAGNOSE'].map((j) => [`DUALGATE_SCHEDULE_${j}`, ''])),
    ...extra,
  }
  // With the V8 flags the installed service units give the runner (hooks/dualgate.init, dualgate.service).
  const proc = spawn(process.execPath, ['--max-semi-space-size=1', '--optimize-for-size', '--import=tsx', 'lib/runner/main.ts'], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  proc.stdout!.on('data', (d) => { out += d })
  proc.stderr!.on('data', (d) => { out += d })
  const r: Runner = { proc, port, dataDir, output: () => out }
  started.push(r)
  await until(`runner up:\n${out}`, 30_000, async () => ((await fetch(`http://127.0.0.1:${port}/health`)).ok ? true : undefined))
  return r
}

function rss(pid: number): number {
  return Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) * 1024
}

/** Sockets the process holds open (its listening socket, pipes to children, and its connections). */
function openSockets(pid: number): number {
  let n = 0
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try { if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('socket:')) n++ } catch { /* closed meanwhile */ }
  }
  return n
}

/** A settled RSS reading: memory freed by a collection shows after a moment. */
async function settledRss(pid: number): Promise<number> {
  await new Promise((r) => setTimeout(r, 1500))
  return rss(pid)
}

describe('the runner under hostile load (loopback)', () => {
  it('stops reading a 200 MB chunked body at the limit: 413, and its memory does not grow', async () => {
    const r = await startRunner()
    const before = await settledRss(r.proc.pid!)
    const chunk = Buffer.alloc(64 * 1024, 0x20)
    let sent = 0
    const status = await new Promise<number>((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: r.port, path: '/events', method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' } })
      let answered = false
      req.on('response', (res) => { answered = true; res.resume(); resolve(res.statusCode!) })
      req.on('error', (err) => (answered ? undefined : reject(err)))
      const pump = () => {
        while (!answered && sent < 200 * MiB) {
          sent += chunk.length
          if (!req.write(chunk)) return void req.once('drain', pump)
        }
        if (!answered) req.end()
      }
      pump()
    })
    expect(status).toBe(413)
    expect(sent).toBeLessThan(200 * MiB)
    const growth = (await settledRss(r.proc.pid!)) - before
    expect(growth, `RSS grew ${(growth / MiB).toFixed(1)} MiB`).toBeLessThan(20 * MiB)
    expect((await fetch(`http://127.0.0.1:${r.port}/health`)).status).toBe(200)
  }, 60_000)

  it('2,000 large events in the spool: at most 512 wait, the rest are dropped and counted, memory stays bounded', async () => {
    // A long coalescing window: everything piles up before any run.
    const r = await startRunner({ DUALGATE_COALESCE_WINDOW: '60000' })
    const before = await settledRss(r.proc.pid!)
    const spool = path.join(r.dataDir, 'spool')
    // Each near the size of the largest event accepted (4 KiB).
    const big = 'x'.repeat(1000)
    for (let i = 0; i < 2000; i++) {
      const file = path.join(spool, `t${i}.json`)
      writeFileSync(`${file}.tmp`, JSON.stringify({ source: 'dnsmasq', event: 'add', args: ['02:00:00:00:00:01', '192.168.1.20', `h${i}`], env: { DNSMASQ_VENDOR_CLASS: big, DNSMASQ_USER_CLASS0: big, DNSMASQ_USER_CLASS1: big } }))
      renameSync(`${file}.tmp`, file)
    }
    // Dropped events leave the spool; the 512 waiting ones stay until their run.
    await until('the spool drained to what waits', 60_000, () => (readdirSync(spool).filter((n) => n.endsWith('.json')).length <= 512 ? true : undefined))
    const growth = (await settledRss(r.proc.pid!)) - before
    expect(growth, `RSS grew ${(growth / MiB).toFixed(1)} MiB`).toBeLessThan(30 * MiB)
    expect(r.output()).toMatch(/events dropped so far .*more than 512 waiting/)
    expect((await fetch(`http://127.0.0.1:${r.port}/health`)).status).toBe(200)
  }, 120_000)

  it('4,000 silent connections: /health keeps answering, the runner never holds more than its cap, and closes the silent ones', async () => {
    const r = await startRunner()
    const pid = r.proc.pid!
    const baseline = openSockets(pid)
    const sockets: net.Socket[] = []
    let peak = 0
    try {
      for (let i = 0; i < 4000; i++) {
        const s = net.connect({ host: '127.0.0.1', port: r.port })
        s.on('error', () => {})
        sockets.push(s)
        // Paced a little, so the kernel's accept queue is not what refuses them.
        if (i % 200 === 199) {
          await new Promise((res) => setTimeout(res, 20))
          peak = Math.max(peak, openSockets(pid))
        }
      }
      const health = await until('/health answers during the flood', 20_000, async () => {
        const res = await fetch(`http://127.0.0.1:${r.port}/health`, { signal: AbortSignal.timeout(2000) })
        return res.status === 200 ? res : undefined
      })
      expect(health.status).toBe(200)
      // Counted on the runner's side: a client whose handshake the kernel dropped under load never hears a close.
      expect(peak, `peak sockets in the runner: ${peak}`).toBeLessThanOrEqual(API_LIMITS.maxConnections + baseline + 8)
      // The clients stay open and silent: the runner closes them after its idle limit.
      await until(`the runner closed the silent connections (${openSockets(pid)} sockets open, ${baseline} at start)`, 30_000, () => (openSockets(pid) <= baseline + 2 ? true : undefined))
    } finally {
      for (const s of sockets) s.destroy()
    }
    expect((await fetch(`http://127.0.0.1:${r.port}/health`)).status).toBe(200)
  }, 90_000)
})
