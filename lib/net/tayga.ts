// tayga, the user-space IPv4/IPv6 translator, as processes: found, started detached with a config file of
// ours, recognised by PID file and command line, stopped. One instance per name in the run directory: NAT64
// (lib/nat64/) and the CLAT (lib/clat/) each run their own. tayga (0.9.2, Debian 12 and OpenWrt) creates its
// TUN without `persist`: when tayga exits, the device and its routes go with it.
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs'
import { mkdir, rm, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Sh } from '../core/exec.ts'
import { findInPath } from '../core/paths.ts'

const SEARCH = ['/usr/sbin', '/sbin', '/usr/local/sbin', '/usr/bin', '/bin']
const STOP_GRACE_MS = 2000

/** Where tayga is looked for: $PATH, then the usual sbin directories (procd and cron give a short PATH). */
export const taygaSearchPath = (): string => [process.env.PATH ?? '', ...SEARCH].join(':')

export function findTayga(searchPath = taygaSearchPath()): string | undefined {
  return findInPath('tayga', searchPath)
}

const versions = new Map<string, string | undefined>()

/**
 * tayga 0.9.2 prints no version: it is read from the binary ("starting TAYGA 0.9.2", first 8 MiB), once per
 * binary file (path, size and mtime), since the runner asks every second.
 */
export function taygaVersion(binary: string): string | undefined {
  let fd: number | undefined
  try {
    fd = openSync(binary, 'r')
    const st = fstatSync(fd)
    const key = `${binary} ${st.size} ${st.mtimeMs}`
    if (versions.has(key)) return versions.get(key)
    const buf = Buffer.alloc(Math.min(st.size, 8 << 20))
    const n = readSync(fd, buf, 0, buf.length, 0)
    const version = /TAYGA v?(\d+\.\d+(?:\.\d+)?)/.exec(buf.subarray(0, n).toString('latin1'))?.[1]
    versions.set(key, version)
    return version
  } catch {
    return undefined
  } finally {
    if (fd !== undefined) closeSync(fd)
  }
}

export interface TaygaFiles { conf: string; dataDir: string; pidFile: string; logFile: string }

/** The files of one tayga instance: `tayga` (NAT64) or `clat`. */
export function taygaFiles(runDir: string, name: string): TaygaFiles {
  return {
    conf: path.join(runDir, `${name}.conf`),
    // dynamic.map: the pool assignments, kept across restarts so that clients keep their address.
    dataDir: path.join(runDir, name),
    pidFile: path.join(runDir, `${name}.pid`),
    logFile: path.join(runDir, `${name}.log`),
  }
}

/** The running tayga of this run directory: the PID file's process, checked to be tayga on our config file. */
export function taygaPid(runDir: string, name: string): number | undefined {
  const files = taygaFiles(runDir, name)
  try {
    const pid = Number(readFileSync(files.pidFile, 'utf8').trim())
    if (!Number.isInteger(pid) || pid <= 1) return undefined
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    if (/^[ZX]/.test(stat.slice(stat.lastIndexOf(')') + 2))) return undefined
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
    return path.basename(cmdline[0]) === 'tayga' && cmdline.includes(files.conf) ? pid : undefined
  } catch {
    return undefined
  }
}

/** The config file tayga runs with now, to tell whether a running tayga matches the settings. */
export function runningConfig(runDir: string, name: string): string | undefined {
  try {
    return readFileSync(taygaFiles(runDir, name).conf, 'utf8')
  } catch {
    return undefined
  }
}

/**
 * Writes the config and starts tayga detached (it outlives a crashed runner, which adopts it again); -d keeps
 * it in the foreground and sends its messages to the log file instead of syslog.
 */
export async function startTayga(sh: Sh, binary: string, runDir: string, text: string, name: string): Promise<number | undefined> {
  const files = taygaFiles(runDir, name)
  if (!sh.dryRun) {
    await mkdir(files.dataDir, { recursive: true })
    await writeFile(files.conf, text)
  }
  const pid = await sh.daemon(binary, ['--config', files.conf, '-d'], { logFile: files.logFile })
  if (pid !== undefined) await writeFile(files.pidFile, `${pid}\n`)
  return pid
}

/** Waits (bounded) for tayga's TUN device; false when tayga exits first or the time runs out. */
export async function waitForTun(pid: number, ms: number, tun: string, sysNet = '/sys/class/net'): Promise<boolean> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (existsSync(path.join(sysNet, tun))) return true
    if (!existsSync(`/proc/${pid}`)) return false
    await sleep(50)
  }
  return existsSync(path.join(sysNet, tun))
}

/** Stops this run directory's tayga `name`; its TUN and the routes through it go with it. */
export async function stopTayga(sh: Sh, runDir: string, name: string): Promise<number | undefined> {
  const pid = taygaPid(runDir, name)
  if (pid) {
    await sh.apply('kill', ['-TERM', String(pid)], { nothrow: true })
    for (let i = 0; i < STOP_GRACE_MS / 50 && !sh.dryRun && taygaPid(runDir, name) === pid; i++) await sleep(50)
    if (!sh.dryRun && taygaPid(runDir, name) === pid) await sh.apply('kill', ['-KILL', String(pid)], { nothrow: true })
  }
  if (!sh.dryRun) await rm(taygaFiles(runDir, name).pidFile, { force: true })
  return pid
}
