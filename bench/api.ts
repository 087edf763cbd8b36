// The API under load with 1,000 devices in the store: GET /devices requests per second and the server's
// memory, with the store parsed once per version of the file (store.snapshot(), what the runner serves
// from) against parsed again for every request (store.read(), as before). Loopback only; each variant's
// server is a process of its own, so its memory is its own.
//
//   node --import=tsx bench/api.ts [seconds] [concurrency]
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { serve } from 'h3'
import { loadConfig } from '../lib/core/config.ts'
import { openStore, type Store } from '../lib/core/store.ts'
import { createRunnerApi } from '../lib/runner/api.ts'

const DEVICES = 1000

async function server(dataDir: string, cached: boolean): Promise<void> {
  const { config } = loadConfig({ env: { DUALGATE_DATA_DIR: dataDir }, uciFile: '/nonexistent' })
  const opened = openStore({ dataDir })
  const store: Store = cached ? opened : { ...opened, snapshot: () => opened.read() }
  const app = createRunnerApi({ store, config })
  const s = serve(app, { hostname: '127.0.0.1', port: 0, silent: true, gracefulShutdown: false, manual: true })
  await s.serve()
  process.stdout.write(`${new URL(s.url!).port}\n`)
}

async function fill(dataDir: string): Promise<void> {
  const now = new Date().toISOString()
  await openStore({ dataDir }).update((d) => {
    for (let i = 0; i < DEVICES; i++) {
      const mac = `02:00:00:00:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`
      d.devices[mac] = {
        mac, status: 'active', statusChangedAt: now, firstSeen: now, lastSeen: now, hostname: `device-${i}`,
        lanIpv4: `198.19.${i >> 8}.${(i & 255) || 1}`, wanIpv4: `198.18.${4 + (i >> 8)}.${(i & 255) || 1}`, wanIpv6: [`2001:db8:1::${i.toString(16)}`], routeTable: 1000 + i, attempts: 0,
      }
    }
  })
}

/** Requests per second over `seconds` from `concurrency` keep-alive clients, and the server's peak RSS. */
async function measure(dataDir: string, cached: boolean, seconds: number, concurrency: number): Promise<{ rps: number; rssMb: number; peakMb: number }> {
  const child = spawn(process.execPath, ['--import=tsx', fileURLToPath(import.meta.url), 'serve', dataDir, cached ? 'cached' : 'parse'], { stdio: ['ignore', 'pipe', 'inherit'] })
  try {
    const port = await new Promise<string>((resolve, reject) => {
      child.stdout.once('data', (d: Buffer) => resolve(d.toString().trim()))
      child.once('exit', () => reject(new Error('the server exited')))
    })
    const url = `http://127.0.0.1:${port}/devices`
    const until = Date.now() + seconds * 1000
    let done = 0
    await Promise.all(Array.from({ length: concurrency }, async () => {
      while (Date.now() < until) {
        const res = await fetch(url)
        if ((await res.json() as unknown[]).length !== DEVICES) throw new Error('short answer')
        done++
      }
    }))
    const status = readFileSync(`/proc/${child.pid}/status`, 'utf8')
    const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? 0)
    return { rps: done / seconds, rssMb: kb('VmRSS') / 1024, peakMb: kb('VmHWM') / 1024 }
  } finally {
    child.kill('SIGTERM')
  }
}

if (process.argv[2] === 'serve') {
  await server(process.argv[3], process.argv[4] === 'cached')
} else {
  const seconds = Number(process.argv[2] ?? 5)
  const concurrency = Number(process.argv[3] ?? 8)
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'dualgate-apibench-'))
  try {
    await fill(dataDir)
    const before = await measure(dataDir, false, seconds, concurrency)
    const after = await measure(dataDir, true, seconds, concurrency)
    console.log(`GET /devices with ${DEVICES} devices, ${concurrency} keep-alive clients for ${seconds} s (${os.cpus().length} CPUs, load ${os.loadavg()[0].toFixed(1)})`)
    console.log('store                      req/s   RSS MB  peak RSS MB')
    for (const [name, r] of [['parsed per request', before], ['parsed once per write', after]] as const) {
      console.log(`${name.padEnd(24)} ${r.rps.toFixed(0).padStart(7)} ${r.rssMb.toFixed(1).padStart(8)} ${r.peakMb.toFixed(1).padStart(12)}`)
    }
    console.log(`cached / per request: ${(after.rps / before.rps).toFixed(2)}x requests per second, ${(after.peakMb / before.peakMb).toFixed(2)}x peak RSS`)
  } finally {
    rmSync(dataDir, { recursive: true, force: true })
  }
}
