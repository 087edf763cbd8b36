// Checks of dnsmasq: running, and calling our hook (Debian: dhcp-script; OpenWrt: hotplug handlers).
import { readFileSync, realpathSync } from 'node:fs'
import path from 'node:path'
import { HOOKS_DIR } from '../core/paths.ts'
import { dnsmasqServiceCommand, systemPath } from '../core/platform.ts'
import { systemBackupDir, writeSystemFile } from '../core/system-files.ts'
import { dhcpScripts, dnsmasqDropIn, findDnsmasq } from '../net/dnsmasq.ts'
import { service, waitUntil, type CheckFn, type DiagEnv } from './env.ts'
import { fail, pass } from './report.ts'

const HOTPLUG = ['dhcp', 'neigh', 'iface'] as const

const realpath = (p: string) => { try { return realpathSync(p) } catch { return path.resolve(p) } }

async function startDnsmasq(env: DiagEnv, action: 'start' | 'restart'): Promise<void> {
  await service(env, dnsmasqServiceCommand(env.ctx.config, env.platform, action))
  if (!env.ctx.sh.dryRun && !(await waitUntil(10_000, () => findDnsmasq().length > 0))) throw new Error(`dnsmasq is not running after ${action}`)
}

export const dnsmasq: CheckFn = async (env) => {
  const procs = findDnsmasq()
  if (procs.length > 0) return { check: pass('dnsmasq', `running (pid ${procs.map((p) => p.pid).join(', ')})`) }
  const cmd = dnsmasqServiceCommand(env.ctx.config, env.platform, 'start')
  return {
    check: fail('dnsmasq', 'dnsmasq is not running in this network namespace: LAN devices get no addresses and no lease events', cmd.join(' ')),
    apply: () => startDnsmasq(env, 'start'),
  }
}

export const dnsmasqHook: CheckFn = async (env) => {
  const { config } = env.ctx
  const backups = systemBackupDir(config.dataDir)
  if (env.platform === 'openwrt') {
    const wrong = HOTPLUG.filter((kind) => {
      const file = systemPath(config.rootDir, `/etc/hotplug.d/${kind}/50-dualgate`)
      try { return readFileSync(file, 'utf8') !== readFileSync(path.join(HOOKS_DIR, 'openwrt', `hotplug-${kind}`), 'utf8') } catch { return true }
    })
    if (wrong.length === 0) return { check: pass('dnsmasq-hook', `hotplug handlers installed (/etc/hotplug.d/{${HOTPLUG.join(',')}}/50-dualgate)`) }
    return {
      check: fail('dnsmasq-hook', `hotplug handler missing or outdated: ${wrong.map((k) => `/etc/hotplug.d/${k}/50-dualgate`).join(', ')}`, 'install the hotplug handlers from hooks/openwrt'),
      async apply() {
        for (const kind of wrong) {
          await writeSystemFile(systemPath(config.rootDir, `/etc/hotplug.d/${kind}/50-dualgate`), readFileSync(path.join(HOOKS_DIR, 'openwrt', `hotplug-${kind}`), 'utf8'), backups)
        }
      },
    }
  }
  const ours = realpath(path.join(HOOKS_DIR, 'dnsmasq-script'))
  const dropIn = systemPath(config.rootDir, '/etc/dnsmasq.d/dualgate.conf')
  const dropInDir = realpath(path.dirname(dropIn))
  const want = dnsmasqDropIn(HOOKS_DIR)
  const dropInOk = (() => { try { return readFileSync(dropIn, 'utf8') === want } catch { return false } })()
  const writeAndRestart = async () => {
    await writeSystemFile(dropIn, want, backups)
    await startDnsmasq(env, 'restart')
  }
  const procs = findDnsmasq()
  if (procs.length === 0) {
    if (dropInOk) return { check: pass('dnsmasq-hook', `${dropIn} names ${ours} (dnsmasq is not running)`) }
    return { check: fail('dnsmasq-hook', `${dropIn} is missing or outdated`, `write ${dropIn}`), apply: async () => { await writeSystemFile(dropIn, want, backups) } }
  }
  const lacking: string[] = []
  for (const proc of procs) {
    const report = dhcpScripts(proc)
    if (report.scripts.some((s) => realpath(s) === ours)) continue
    if (report.scripts.length > 0) return { check: fail('dnsmasq-hook', `dnsmasq (pid ${proc.pid}) runs another dhcp-script (${report.scripts.join(', ')}); have it call ${path.join(HOOKS_DIR, 'dnsmasq-script')} "$@"`) }
    if (!report.confDirs.map(realpath).includes(dropInDir)) {
      return { check: fail('dnsmasq-hook', `dnsmasq (pid ${proc.pid}) has no dhcp-script and does not read ${path.dirname(dropIn)}: add dhcp-script=${path.join(HOOKS_DIR, 'dnsmasq-script')} to its configuration`) }
    }
    lacking.push(String(proc.pid))
  }
  if (lacking.length === 0) return { check: pass('dnsmasq-hook', `dnsmasq calls ${ours}`) }
  const restart = dnsmasqServiceCommand(config, env.platform, 'restart').join(' ')
  return {
    check: fail('dnsmasq-hook', `dnsmasq (pid ${lacking.join(', ')}) does not call our hook: lease events do not reach dualgate`, dropInOk ? restart : `write ${dropIn}; ${restart}`),
    apply: writeAndRestart,
  }
}
