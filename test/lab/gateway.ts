// dualgate inside a lab: the environment that points it at the router namespace's interfaces and a data dir
// of its own, and a way to run its jobs there as a person would (`node jobs/x.ts --json`).
import { execFile } from 'node:child_process'
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
