// Kernel settings through sysctl(8): read one, set several in one call.
import { readFile } from 'node:fs/promises'
import type { Sh } from '../core/exec.ts'
import { writeSystemFile } from '../core/system-files.ts'

/**
 * The key of a per-interface setting. sysctl reads dots as separators, so an interface name with a dot in it
 * (OpenWrt's eth0.2) needs the slash form.
 */
export function confKey(ifname: string, name: string, family: 4 | 6 = 4): string {
  return ifname.includes('.') ? `net/ipv${family}/conf/${ifname}/${name}` : `net.ipv${family}.conf.${ifname}.${name}`
}

export async function readSysctl(sh: Sh, key: string): Promise<string | undefined> {
  const { stdout, code } = await sh.query('sysctl', ['-n', key], { nothrow: true })
  return code === 0 ? stdout.trim() : undefined
}

export async function setSysctls(sh: Sh, values: Record<string, string>): Promise<void> {
  const pairs = Object.entries(values)
  if (pairs.length > 0) await sh.apply('sysctl', ['-q', '-w', ...pairs.map(([k, v]) => `${k}=${v}`)])
}

function parseSysctlFile(text: string): Map<string, string> {
  const out = new Map<string, string>()
  for (const line of text.split('\n')) {
    const m = /^\s*([^#;=\s][^=]*?)\s*=\s*(.*?)\s*$/.exec(line)
    if (m) out.set(m[1], m[2])
  }
  return out
}

/**
 * Sets sysctls now and records them in `file` (our own sysctl.d file, merged with what it holds), so they
 * hold after a reboot; the file is backed up into `backupDir` before it changes.
 */
export async function persistSysctls(sh: Sh, values: Record<string, string>, file: string, backupDir: string): Promise<void> {
  await setSysctls(sh, values)
  const merged = parseSysctlFile(await readFile(file, 'utf8').catch(() => ''))
  for (const [k, v] of Object.entries(values)) merged.set(k, v)
  const text = `# dualgate: kernel settings the gateway needs (removed by uninstall).\n${[...merged].map(([k, v]) => `${k} = ${v}`).join('\n')}\n`
  if (!sh.dryRun) await writeSystemFile(file, text, backupDir)
}
