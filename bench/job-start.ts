// How long a job takes to start and finish, and its peak memory: the built JavaScript a router's hooks and
// cron call, against `npx zx` and `node --import=tsx` on the TypeScript sources. The job is `status`
// (reads the store and `ip addr`; changes nothing), in a temp data dir. Runs `npm run build` first.
//
//   node --import=tsx bench/job-start.ts [runs]
import { execFileSync, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = fileURLToPath(new URL('../', import.meta.url))
const runs = Number(process.argv[2] ?? 10)
const dataDir = mkdtempSync(path.join(os.tmpdir(), 'dualgate-startbench-'))
execFileSync('npm', ['run', '--silent', 'build'], { cwd: ROOT, stdio: 'inherit' })

const env = { PATH: process.env.PATH, HOME: process.env.HOME, DUALGATE_DATA_DIR: dataDir, DUALGATE_UCI_FILE: '/nonexistent' }
const variants: [string, string[]][] = [
  ['node dist/jobs/status.js', [process.execPath, 'dist/jobs/status.js', '--json']],
  ['node --import=tsx jobs/status.ts', [process.execPath, '--import=tsx', 'jobs/status.ts', '--json']],
  ['npx zx jobs/status.ts', ['npx', 'zx', 'jobs/status.ts', '--json']],
]

function once(cmd: string[]): { ms: number; kb: number } {
  const start = performance.now()
  const r = spawnSync('/usr/bin/time', ['-f', '%M', ...cmd], { cwd: ROOT, env: cmd[0] === 'npx' ? { ...env, NODE_OPTIONS: '--import=tsx' } : env, encoding: 'utf8' })
  const ms = performance.now() - start
  if (r.status !== 0) throw new Error(`${cmd.join(' ')}: ${r.stderr}`)
  return { ms, kb: Number(r.stderr.trim().split('\n').at(-1)) }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const rows = variants.map(([name, cmd]) => {
  once(cmd) // warm the page cache
  const samples = Array.from({ length: runs }, () => once(cmd))
  return { name, ms: median(samples.map((s) => s.ms)), mb: median(samples.map((s) => s.kb)) / 1024 }
})
rmSync(dataDir, { recursive: true, force: true })

console.log(`job start to finish, median of ${runs} (${os.cpus().length} CPUs, Node ${process.version}, load ${os.loadavg()[0].toFixed(1)})`)
for (const r of rows) console.log(`${r.name.padEnd(36)} ${r.ms.toFixed(0).padStart(5)} ms  ${r.mb.toFixed(0).padStart(4)} MB peak RSS  ${(r.ms / rows[0].ms).toFixed(1)}x`)
