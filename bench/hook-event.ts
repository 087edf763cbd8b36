// Cost of one hook event: hooks/dualgate-event run N times in a row with the runner up (it drains the spool
// while the shims run, as on a router), under dash and under busybox ash with busybox applets only (as on
// OpenWrt); for reference, an HTTP POST per event with curl and with busybox wget. Also the runner's RSS,
// idle and after the burst. Uses dist/ when built (what a router runs), else the TypeScript sources.
//
//   node --import=tsx bench/hook-event.ts [N]          (no root needed; 127.0.0.1 only; about 30 s)
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = fileURLToPath(new URL('../', import.meta.url))
const N = Number(process.argv[2] ?? 200)
const tmp = mkdtempSync(path.join(os.tmpdir(), 'dualgate-hookbench-'))
const dataDir = path.join(tmp, 'data')
const built = existsSync(path.join(ROOT, 'dist/lib/runner/main.js'))

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer().listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number }
      srv.close(() => resolve(port))
    })
  })
}

function rss(pid: number): string {
  const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return `${Math.round(Number(m?.[1]) / 1024)} MB`
}

let jobsDir = path.join(ROOT, 'test/fixtures/jobs')
if (built) {
  jobsDir = path.join(tmp, 'jobs')
  mkdirSync(jobsDir)
  writeFileSync(path.join(jobsDir, 'scan-arp.js'), `import { defineJob, runMain } from ${JSON.stringify(path.join(ROOT, 'dist/lib/core/job.js'))}
const job = defineJob({ name: 'scan-arp', description: 'bench', async run({ payload }) { return { count: payload.length } } })
export default job
await runMain(job, import.meta.url)
`)
}

const port = await freePort()
const env = {
  ...process.env, DUALGATE_DATA_DIR: dataDir, DUALGATE_API_PORT: String(port), DUALGATE_API_HOST: '127.0.0.1', DUALGATE_UCI_FILE: '/nonexistent', DUALGATE_JOBS_DIR: jobsDir,
  DUALGATE_SCHEDULE_SCAN_ARP: '', DUALGATE_SCHEDULE_ACQUIRE_LEASES: '', DUALGATE_SCHEDULE_PRUNE_STALE: '', DUALGATE_SCHEDULE_REFRESH_PROXIES: '', DUALGATE_SCHEDULE_DIAGNOSE: '',
}
const runner = spawn(process.execPath, built ? ['dist/lib/runner/main.js'] : ['--import=tsx', 'lib/runner/main.ts'], { cwd: ROOT, env, stdio: ['ignore', 'ignore', 'inherit'] })
for (let i = 0; ; i++) {
  try {
    if ((await fetch(`http://127.0.0.1:${port}/health`)).ok) break
  } catch { /* starting */ }
  if (i > 300) throw new Error('runner did not start')
  await new Promise((r) => setTimeout(r, 100))
}
await new Promise((r) => setTimeout(r, 3000))
console.log(`runner (${built ? 'dist' : 'tsx'}) idle RSS: ${rss(runner.pid!)}`)

// busybox applets only, as on OpenWrt: a PATH of symlinks to the one binary.
const bb = path.join(tmp, 'bb')
const busybox = ['/usr/bin/busybox', '/bin/busybox'].find(existsSync)
if (busybox) {
  mkdirSync(bb)
  for (const applet of execFileSync(busybox, ['--list'], { encoding: 'utf8' }).split('\n').filter(Boolean)) symlinkSync(busybox, path.join(bb, applet))
}

const loop = (cmd: string) => `i=0; while [ $i -lt ${N} ]; do ${cmd}; i=$((i+1)); done`
const shim = path.join(ROOT, 'hooks/dualgate-event')
const body = `{\\"source\\":\\"dnsmasq\\",\\"event\\":\\"add\\",\\"args\\":[\\"02:00:00:00:00:01\\",\\"192.168.1.$i\\"]}`
const cases: [string, string, string[], NodeJS.ProcessEnv?][] = [
  ['shim, dash + mawk + coreutils', 'sh', ['-c', loop(`DNSMASQ_INTERFACE=br-lan sh ${shim} dnsmasq add 02:00:00:00:00:01 192.168.1.$i host$i`)]],
  ...(busybox ? [['shim, busybox ash + applets', path.join(bb, 'ash'), ['-c', loop(`DNSMASQ_INTERFACE=br-lan ash ${shim} dnsmasq add 02:00:00:00:00:01 192.168.1.$i host$i`)], { ...env, PATH: bb }] as [string, string, string[], NodeJS.ProcessEnv]] : []),
  ['reference: curl POST /events', 'sh', ['-c', loop(`curl -s -o /dev/null -X POST --data "${body}" http://127.0.0.1:${port}/events`)]],
  ...(busybox ? [['reference: busybox wget POST', 'sh', ['-c', loop(`${busybox} wget -q -O /dev/null --post-data "${body}" http://127.0.0.1:${port}/events`)]] as [string, string, string[]]] : []),
]
for (const [name, cmd, args, e] of cases) {
  const r = spawnSync('/usr/bin/time', ['-f', '%e %M', cmd, ...args], { env: e ?? env, encoding: 'utf8' })
  const [secs, kb] = r.stderr.trim().split('\n').at(-1)!.split(' ').map(Number)
  console.log(`${name.padEnd(32)} ${(secs * 1000 / N).toFixed(1).padStart(5)} ms/event   max RSS of one process ${(kb / 1024).toFixed(1)} MB`)
  for (let i = 0; i < 100 && readdirSync(path.join(dataDir, 'spool')).length > 0; i++) await new Promise((res) => setTimeout(res, 100))
  await new Promise((res) => setTimeout(res, 1500))
}
console.log(`runner RSS after ${cases.length * N} events: ${rss(runner.pid!)}`)
runner.kill('SIGTERM')
await new Promise((r) => runner.once('exit', r))
rmSync(tmp, { recursive: true, force: true })
