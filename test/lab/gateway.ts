// dualgate inside a lab: the environment that points it at the router namespace's interfaces and a data dir
// of its own, and a way to run its jobs there as a person would (`node jobs/x.ts --json`).
import { execFile, spawn } from 'node:child_process'
import { mkdirSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Lab } from './lab.ts'

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')

export function gatewayEnv(lab: Lab, extra: Record<string, string> = {}): Record<string, string> {
  const dataDir = path.join(lab.dir, 'dualgate')
  const runDir = path.join(lab.dir, 'dualgate-run')
  mkdirSync(dataDir, { recursive: true })
  mkdirSync(runDir, { recursive: true })
  return {
    PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: process.env.HOME ?? '/root',
    DUALGATE_UCI_FILE: path.join(lab.dir, 'no-uci'),
    DUALGATE_DATA_DIR: dataDir,
    DUALGATE_RUN_DIR: runDir,
    DUALGATE_WAN_IF: lab.router.wanIf,
    DUALGATE_LAN_IF: lab.router.lanIf,
    DUALGATE_LAN_ADDR: lab.router.lanAddr,
    DUALGATE_DNSMASQ_LEASES: lab.router.leasesFile,
    DUALGATE_BACKUP_INTERVAL: '0',
    DUALGATE_DHCP_TIMEOUT: '2',
    DUALGATE_DHCP_RETRIES: '1',
    ...extra,
  }
}

export interface JobRun<T = unknown> { code: number; result: T; stderr: string; stdout: string }

/** Runs `jobs/<name>.ts` in the router namespace with `--json` and returns its parsed result. */
export function runJob<T = unknown>(lab: Lab, name: string, args: string[] = [], env: Record<string, string> = {}, timeoutMs = 120_000): Promise<JobRun<T>> {
  return new Promise((resolve) => {
    execFile('ip', ['netns', 'exec', lab.router.ns, process.execPath, '--import=tsx', path.join(ROOT, 'jobs', `${name}.ts`), '--json', ...args],
      { cwd: ROOT, env: gatewayEnv(lab, env), timeout: timeoutMs, maxBuffer: 32 << 20 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0
        let result: unknown
        try { result = JSON.parse(stdout) } catch { result = undefined }
        resolve({ code, result: result as T, stderr, stdout })
      })
  })
}

export const API_PORT = '5050'
export const API_TOKEN = 'lab-token-0123456789'

export interface LabRunner { pid: number; stop(): Promise<number | null>; kill(): Promise<void>; log(): string }

/** The runner in the router namespace, every schedule off (tests trigger jobs themselves). */
export function startRunner(lab: Lab, env: Record<string, string> = {}): LabRunner {
  const output: string[] = []
  const child = spawn('ip', ['netns', 'exec', lab.router.ns, process.execPath, '--import=tsx', path.join(ROOT, 'lib/runner/main.ts')], {
    cwd: ROOT,
    env: gatewayEnv(lab, {
      DUALGATE_API_PORT: API_PORT,
      DUALGATE_API_TOKEN: API_TOKEN,
      DUALGATE_COALESCE_WINDOW: '200',
      DUALGATE_SCHEDULE_SCAN_ARP: '',
      DUALGATE_SCHEDULE_ACQUIRE_LEASES: '',
      DUALGATE_SCHEDULE_PRUNE_STALE: '',
      DUALGATE_SCHEDULE_REFRESH_PROXIES: '',
      DUALGATE_SCHEDULE_DIAGNOSE: '',
      DUALGATE_SCHEDULE_TUNNELS: '',
      DUALGATE_SCHEDULE_HE_UPDATE: '',
      ...env,
    }),
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  child.stdout.on('data', (b) => output.push(String(b)))
  child.stderr.on('data', (b) => output.push(String(b)))
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  return {
    pid: child.pid!,
    async stop() {
      child.kill('SIGTERM')
      return exited
    },
    async kill() {
      child.kill('SIGKILL')
      await exited
    },
    log: () => output.join(''),
  }
}

/** GET (or another method) against the runner's API from inside the router namespace. */
export async function api<T = unknown>(lab: Lab, method: string, urlPath: string, body?: unknown, token: string | undefined = API_TOKEN): Promise<{ status: number; body: T }> {
  const args = ['-sS', '--max-time', '5', '-X', method, '-w', '\n%{http_code}', `http://127.0.0.1:${API_PORT}${urlPath}`]
  if (token) args.push('-H', `authorization: Bearer ${token}`)
  if (body !== undefined) args.push('-H', 'content-type: application/json', '--data-binary', JSON.stringify(body))
  const { stdout, code, stderr } = await lab.exec(lab.router.ns, 'curl', args, { nothrow: true })
  if (code !== 0) throw new Error(`curl ${urlPath}: ${stderr}`)
  const cut = stdout.lastIndexOf('\n')
  const text = stdout.slice(0, cut)
  return { status: Number(stdout.slice(cut + 1)), body: (text ? JSON.parse(text) : undefined) as T }
}

/** Polls `probe` every 100 ms until it returns a value other than undefined, or throws after `ms`. */
export async function until<T>(what: string, ms: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + ms
  for (;;) {
    const value = await probe().catch(() => undefined)
    if (value !== undefined) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}
