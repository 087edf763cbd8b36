// The LAN's dnsmasq as it runs: which processes share our network namespace, and which --dhcp-script they
// use, from their command line and the configuration files it names (conf-file, conf-dir), read the way
// dnsmasq reads them. Pure parsing apart from `findDnsmasq` and `dhcpScripts`, which read /proc and files.
import { readdirSync, readFileSync, readlinkSync } from 'node:fs'
import path from 'node:path'

export interface DnsmasqProcess { pid: number; args: string[] }

export interface DnsmasqSources {
  scripts: string[]
  confFiles: string[]
  /** conf-dir entries: the directory, suffixes to include (`*.conf`) and to skip (`.dpkg-old`). */
  confDirs: { dir: string; include: string[]; exclude: string[] }[]
}

const empty = (): DnsmasqSources => ({ scripts: [], confFiles: [], confDirs: [] })

function confDir(value: string): DnsmasqSources['confDirs'][number] {
  const [dir, ...rest] = value.split(',')
  return { dir, include: rest.filter((x) => x.startsWith('*')).map((x) => x.slice(1)), exclude: rest.filter((x) => !x.startsWith('*')) }
}

function addOption(out: DnsmasqSources, name: string, value: string): void {
  if (name === 'dhcp-script') out.scripts.push(value)
  else if (name === 'conf-file') out.confFiles.push(value)
  else if (name === 'conf-dir') out.confDirs.push(confDir(value))
}

const SHORT: Record<string, string> = { '-6': 'dhcp-script', '-C': 'conf-file', '-7': 'conf-dir' }

/** Options of a dnsmasq command line: `--dhcp-script=X`, `--dhcp-script X`, `-6 X`, `-6X`, and the same for conf-file and conf-dir. */
export function parseDnsmasqArgs(args: string[]): DnsmasqSources & { defaultConf: boolean } {
  const out = empty()
  for (let i = 0; i < args.length; i++) {
    const a = args[i]
    const long = /^--(dhcp-script|conf-file|conf-dir)(?:=(.*))?$/.exec(a)
    if (long) {
      const value = long[2] ?? args[++i]
      if (value !== undefined) addOption(out, long[1], value)
      continue
    }
    const short = SHORT[a.slice(0, 2)]
    if (short) {
      const value = a.length > 2 ? a.slice(2) : args[++i]
      if (value !== undefined) addOption(out, short, value)
    }
  }
  // Without -C, dnsmasq reads its compiled-in default file.
  return { ...out, defaultConf: !args.some((a) => /^(--conf-file|-C)/.test(a)) }
}

/** Lines of a dnsmasq configuration file: `dhcp-script=X`, `conf-file=X`, `conf-dir=X`. */
export function parseDnsmasqConf(text: string): DnsmasqSources {
  const out = empty()
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) continue
    const eq = line.indexOf('=')
    if (eq < 0) continue
    addOption(out, line.slice(0, eq).trim(), line.slice(eq + 1).trim())
  }
  return out
}

/** The files of a conf-dir dnsmasq reads: sorted, no dot files, no editor backups, include/exclude suffixes. */
export function confDirFiles(names: string[], entry: DnsmasqSources['confDirs'][number]): string[] {
  return names
    .filter((n) => !n.startsWith('.') && !n.endsWith('~') && !(n.startsWith('#') && n.endsWith('#')))
    .filter((n) => (entry.include.length === 0 || entry.include.some((s) => n.endsWith(s))) && !entry.exclude.some((s) => n.endsWith(s)))
    .sort()
}

function netns(pid: number | 'self'): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/ns/net`)
  } catch {
    return undefined
  }
}

/** dnsmasq processes in this process's network namespace (other namespaces' dnsmasqs serve other networks). */
export function findDnsmasq(): DnsmasqProcess[] {
  const own = netns('self')
  const found: DnsmasqProcess[] = []
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    const pid = Number(name)
    try {
      if (readFileSync(`/proc/${pid}/comm`, 'utf8').trim() !== 'dnsmasq') continue
      if (netns(pid) !== own) continue
      found.push({ pid, args: readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean).slice(1) })
    } catch {
      // exited while we looked
    }
  }
  return found
}

export interface ScriptReport {
  scripts: string[]
  /** Configuration directories the process reads, resolved. */
  confDirs: string[]
}

const MAX_DEPTH = 4

/** Every dhcp-script a dnsmasq process was given, following its configuration files (bounded depth). */
export function dhcpScripts(proc: DnsmasqProcess, defaultConf = '/etc/dnsmasq.conf'): ScriptReport {
  const parsed = parseDnsmasqArgs(proc.args)
  const report: ScriptReport = { scripts: [...parsed.scripts], confDirs: [] }
  const seen = new Set<string>()
  const visit = (src: DnsmasqSources, depth: number) => {
    if (depth > MAX_DEPTH) return
    for (const file of src.confFiles) readConf(file, depth)
    for (const dir of src.confDirs) {
      report.confDirs.push(path.resolve(dir.dir))
      let names: string[] = []
      try { names = readdirSync(dir.dir) } catch { continue }
      for (const n of confDirFiles(names, dir)) readConf(path.join(dir.dir, n), depth)
    }
  }
  const readConf = (file: string, depth: number) => {
    if (seen.has(file)) return
    seen.add(file)
    let text: string
    try { text = readFileSync(file, 'utf8') } catch { return }
    const src = parseDnsmasqConf(text)
    report.scripts.push(...src.scripts)
    visit(src, depth + 1)
  }
  if (parsed.defaultConf) readConf(defaultConf, 0)
  visit(parsed, 0)
  return report
}

/** Our drop-in for Debian's /etc/dnsmasq.d: lease events go to the hook shim. */
export function dnsmasqDropIn(hooksDir: string): string {
  return `# dualgate: dnsmasq hands DHCP lease events to dualgate (hooks/dnsmasq-script -> dualgate-event).\n# Written by dualgate install or gateway-diagnose --fix; removed by dualgate uninstall.\ndhcp-script=${hooksDir}/dnsmasq-script\n`
}
