// The checks of `gateway-diagnose`: each reads the system (never the store through openStore, which would
// repair a corrupt file behind our back) and returns what it found, with an `apply` that repairs it when a
// safe repair exists. Every repair is idempotent; system files are backed up before they change.
import { existsSync, readFileSync, realpathSync } from 'node:fs'
import { access, constants, readdir, readFile, rename, statfs } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import {
  checkClat, checkClock, checkDisk, checkForwarding, checkNat64, checkNode, checkWanSysctls, fail, macvlanDiff, MACVLAN_NAME, mapDifferences, pass, relayDiff, warn,
  type Check, type CheckId, type DeviceView,
} from './report.ts'
import { clatPlan } from '../clat/plan.ts'
import { dhcpScripts, dnsmasqDropIn, findDnsmasq } from '../net/dnsmasq.ts'
import type { JobContext } from '../core/job.ts'
import { macvlanName } from '../addr/mac.ts'
import { natMaps, syncNat, tableOptions } from '../reach/nat.ts'
import { clientPid, dhcp6Kind, stopClients } from '../net/dhcp.ts'
import { deleteLink, getLink, listLinks, sysctl, type LinkInfo } from '../net/ip.ts'
import { readMap, TABLE, tableDefinition } from '../net/nft.ts'
import { listRules, PREF_DEVICE, removeDeviceRoutes } from '../net/route.ts'
import { findTayga, nat64Status, taygaPid, taygaSearchPath } from '../net/tayga.ts'
import { probeUpstream } from '../net/upstream.ts'
import { HOOKS_DIR } from '../core/paths.ts'
import { dnsmasqServiceCommand, runnerServiceCommand, systemPath, type Platform } from '../core/platform.ts'
import type { RelayRule } from '../reach/relay.ts'
import { relayRules } from '../reach/relay-plan.ts'
import { runnerPid } from '../core/runner-state.ts'
import { emptyData, parseData, SchemaError, type Data } from '../core/schema.ts'
import { openStore } from '../core/store.ts'
import { sha256, writeSystemFile } from '../core/system-files.ts'
import { requestRun } from '../core/trigger.ts'

/** The store file as it is on disk. When it is corrupt, its newest valid backup stands in for the other checks. */
export interface StoreView {
  file: string
  data?: Data
  missing?: boolean
  error?: string
  /** Valid backups, newest first. */
  backups: string[]
}

export interface DiagEnv {
  ctx: JobContext
  platform: Platform
  store(): Promise<StoreView>
  links(): Promise<LinkInfo[]>
  /** Runs acquire-leases in this process (diagnose imports the job; lib/ does not). */
  acquire(): Promise<void>
  progress(message: string): void
}

export interface Probe {
  check: Check
  apply?: () => Promise<void>
}

export type CheckFn = (env: DiagEnv) => Promise<Probe>

const SYSCTL_FILE = '/etc/sysctl.d/90-dualgate.conf'
const HOTPLUG = ['dhcp', 'neigh', 'iface'] as const
const WAIT_STEP_MS = 250

function once<T>(fn: () => Promise<T>): () => Promise<T> {
  let p: Promise<T> | undefined
  return () => (p ??= fn())
}

export function systemBackupDir(dataDir: string): string {
  return path.join(dataDir, 'backups', 'system')
}

/** Polls `probe` until true or `ms` pass. */
async function waitUntil(ms: number, probe: () => Promise<boolean> | boolean): Promise<boolean> {
  for (let waited = 0; waited <= ms; waited += WAIT_STEP_MS) {
    if (await probe()) return true
    await sleep(WAIT_STEP_MS)
  }
  return false
}

const realpath = (p: string) => { try { return realpathSync(p) } catch { return path.resolve(p) } }

export async function readStoreView(dataDir: string): Promise<StoreView> {
  const file = path.join(dataDir, 'dualgate.json')
  const backupDir = path.join(dataDir, 'backups')
  const names = (await readdir(backupDir).catch(() => [] as string[])).filter((n) => /^dualgate-.*\.json$/.test(n)).sort().reverse()
  const backups: string[] = []
  let fallback: Data | undefined
  for (const n of names) {
    try {
      const data = parseData(await readFile(path.join(backupDir, n), 'utf8'))
      fallback ??= data
      backups.push(path.join(backupDir, n))
    } catch { /* an invalid backup is no backup */ }
  }
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { file, data: emptyData(), missing: true, backups }
    return { file, error: (err as Error).message, data: fallback, backups }
  }
  try {
    return { file, data: parseData(text), backups }
  } catch (err) {
    if (!(err instanceof SchemaError)) throw err
    return { file, error: err.message, data: fallback, backups }
  }
}

export function createEnv(ctx: JobContext, platform: Platform, acquire: () => Promise<void>): DiagEnv {
  return {
    ctx,
    platform,
    store: once(() => readStoreView(ctx.config.dataDir)),
    links: once(() => listLinks(ctx.sh)),
    acquire,
    progress: (m) => { if (ctx.interactive) process.stderr.write(`${m}\n`) },
  }
}

// --- small helpers ---------------------------------------------------------------------------------------

/** sysctl key for a per-interface setting; an interface name with dots needs the slash form. */
function confKey(ifname: string, name: string, family: 4 | 6 = 4): string {
  return ifname.includes('.') ? `net/ipv${family}/conf/${ifname}/${name}` : `net.ipv${family}.conf.${ifname}.${name}`
}

function parseSysctlFile(text: string): Map<string, string> {
  const out = new Map<string, string>()
  for (const line of text.split('\n')) {
    const m = /^\s*([^#;=\s][^=]*?)\s*=\s*(.*?)\s*$/.exec(line)
    if (m) out.set(m[1], m[2])
  }
  return out
}

/** Sets sysctls now and records them in our own sysctl.d file, so they hold after a reboot. */
async function setSysctls(env: DiagEnv, values: Record<string, string>): Promise<void> {
  const { sh, config } = env.ctx
  await sh.apply('sysctl', ['-q', '-w', ...Object.entries(values).map(([k, v]) => `${k}=${v}`)])
  const file = systemPath(config.rootDir, SYSCTL_FILE)
  const merged = parseSysctlFile(await readFile(file, 'utf8').catch(() => ''))
  for (const [k, v] of Object.entries(values)) merged.set(k, v)
  const text = `# dualgate: kernel settings the gateway needs (written by gateway-diagnose --fix; removed by uninstall).\n${[...merged].map(([k, v]) => `${k} = ${v}`).join('\n')}\n`
  await writeSystemFile(file, text, systemBackupDir(config.dataDir))
}

async function linkFlags(env: DiagEnv, ifname: string): Promise<{ flags: string[] } | undefined> {
  const { stdout, code } = await env.ctx.sh.query('ip', ['-j', 'link', 'show', 'dev', ifname], { nothrow: true })
  if (code !== 0) return undefined
  const [link] = JSON.parse(stdout || '[]') as { flags?: string[] }[]
  return link ? { flags: link.flags ?? [] } : undefined
}

function inPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':')) {
    const file = path.join(dir, name)
    try {
      if (existsSync(file)) return file
    } catch { /* unreadable dir */ }
  }
  return undefined
}

/** The runner's PID when the PID file names a live runner (not a recycled PID). */
function liveRunner(dataDir: string): number | undefined {
  const pid = runnerPid(dataDir)
  if (pid === undefined) return undefined
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('runner/main') ? pid : undefined
  } catch {
    return undefined
  }
}

function apiUrl(env: DiagEnv, pathname: string): string {
  const { apiHost, apiPort } = env.ctx.config
  return `http://${apiHost.includes(':') ? `[${apiHost}]` : apiHost}:${apiPort}${pathname}`
}

async function apiGet(env: DiagEnv, pathname: string): Promise<{ status: number; body: unknown } | string> {
  const headers: Record<string, string> = env.ctx.config.apiToken ? { authorization: `Bearer ${env.ctx.config.apiToken}` } : {}
  try {
    const res = await fetch(apiUrl(env, pathname), { headers, signal: AbortSignal.timeout(3000) })
    const text = await res.text()
    let body: unknown
    try { body = JSON.parse(text) } catch { body = text }
    return { status: res.status, body }
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause?.code
    return cause ?? (err as Error).message
  }
}

async function healthy(env: DiagEnv): Promise<boolean> {
  const r = await apiGet(env, '/health')
  return typeof r === 'object' && r.status === 200
}

async function service(env: DiagEnv, argv: string[]): Promise<void> {
  await env.ctx.sh.apply(argv[0], argv.slice(1), { timeoutMs: 60_000 })
}

const devicesOf = (data: Data | undefined): DeviceView[] =>
  Object.values(data?.devices ?? {}).map((d) => ({ mac: d.mac, status: d.status, ifname: d.ifname ?? macvlanName(d.mac) }))

const noStore = (id: string, view: StoreView): Probe => ({ check: warn(id, `not compared: the store is unreadable (${view.error}) and no valid backup exists`) })

async function markReacquire(env: DiagEnv, macs: string[]): Promise<void> {
  await env.ctx.store.update((d) => {
    for (const mac of macs) if (d.devices[mac]?.status === 'active') d.devices[mac].reacquire = true
  })
  env.progress(`acquiring again: ${macs.join(', ')}`)
  await env.acquire()
}

// --- the checks --------------------------------------------------------------------------------------------

const clock: CheckFn = async () => ({ check: checkClock(Date.now()) })

const node: CheckFn = async () => ({ check: checkNode(process.versions.node) })

const TOOLS: { any: string[]; args: string[]; pkg: string; when?: (env: DiagEnv) => boolean }[] = [
  { any: ['ip'], args: ['-V'], pkg: 'iproute2 / ip-full' },
  { any: ['nft'], args: ['--version'], pkg: 'nftables' },
  { any: ['udhcpc'], args: ['--help'], pkg: 'udhcpc (busybox)' },
  { any: ['odhcp6c', 'dhclient'], args: ['--version'], pkg: 'odhcp6c (OpenWrt) or isc-dhcp-client (Debian)' },
  { any: ['arping'], args: ['--help'], pkg: 'arping' },
  { any: ['rdisc6'], args: ['-V'], pkg: 'ndisc6' },
  { any: ['tayga'], args: ['--help'], pkg: 'tayga', when: (env) => env.ctx.config.nat64 || env.ctx.config.clat },
]

const tools: CheckFn = async (env) => {
  const found: string[] = []
  const missing: string[] = []
  for (const t of TOOLS) {
    if (t.when && !t.when(env)) continue
    const name = t.any.find((n) => inPath(n))
    if (!name) { missing.push(`${t.any.join(' or ')} (${t.pkg})`); continue }
    const r = await env.ctx.sh.query(name, name === 'odhcp6c' ? ['-h'] : t.args, { nothrow: true, timeoutMs: 3000 })
    const version = /(\d+\.\d+(?:\.\d+)?(?:-P\d+)?)/.exec(`${r.stdout}\n${r.stderr}`)?.[1]
    found.push(version ? `${name} ${version}` : name)
  }
  if (missing.length > 0) return { check: fail('tools', `missing: ${missing.join(', ')}; found ${found.join(', ') || 'none'}`) }
  return { check: pass('tools', found.join(', ')) }
}

const disk: CheckFn = async (env) => {
  let dir = env.ctx.config.dataDir
  for (let i = 0; i < 32 && !existsSync(dir); i++) dir = path.dirname(dir)
  const s = await statfs(dir)
  return { check: checkDisk(dir, s.bavail * s.bsize, s.blocks * s.bsize) }
}

const store: CheckFn = async (env) => {
  const view = await env.store()
  const { config } = env.ctx
  if (view.error) {
    const aside = `${view.file}.corrupt-${sha256(await readFile(view.file).catch(() => Buffer.alloc(0))).slice(0, 8)}`
    const newest = view.backups[0]
    const fix = newest ? `restore ${newest} (the bad file is kept as ${path.basename(aside)})` : `move the bad file to ${path.basename(aside)} and start with an empty store`
    return {
      check: fail('store', `${view.file} is unreadable: ${view.error}`, fix),
      async apply() {
        if (!newest) await rename(view.file, aside)
        // The store's own repair: under its lock, the bad file copied aside, the newest valid backup restored.
        const s = openStore({ dataDir: config.dataDir, backupCount: config.backupCount, backupInterval: config.backupInterval, onError: (m) => env.ctx.log.warn(m) })
        await s.update(() => undefined)
      },
    }
  }
  if (view.missing) return { check: pass('store', `no store yet at ${view.file}: the first job creates it`) }
  try {
    await access(config.dataDir, constants.W_OK)
    await access(view.file, constants.W_OK)
  } catch (err) {
    return { check: fail('store', `not writable: ${(err as Error).message}`) }
  }
  const devices = Object.keys(view.data?.devices ?? {}).length
  if (config.backupCount === 0) return { check: pass('store', `valid (${devices} devices); backups disabled (backupCount 0)`) }
  if (view.backups.length === 0) return { check: warn('store', `valid (${devices} devices) but no backup yet: the next write makes one`) }
  return { check: pass('store', `valid and writable (${devices} devices), ${view.backups.length} valid backups`) }
}

function linkCheck(id: 'lan-link' | 'wan-link', which: 'lanIf' | 'wanIf'): CheckFn {
  return async (env) => {
    const ifname = env.ctx.config[which]
    const link = await linkFlags(env, ifname)
    if (!link) return { check: fail(id, `${ifname} does not exist (config ${which})`) }
    if (!link.flags.includes('UP')) {
      return {
        check: fail(id, `${ifname} is down`, `ip link set dev ${ifname} up`),
        apply: async () => { await env.ctx.sh.apply('ip', ['link', 'set', 'dev', ifname, 'up']) },
      }
    }
    if (!link.flags.includes('LOWER_UP')) return { check: warn(id, `${ifname} is up but has no carrier (cable, switch port?)`) }
    return { check: pass(id, `${ifname} is up`) }
  }
}

const lanAddress: CheckFn = async (env) => {
  const { lanIf, lanAddr } = env.ctx.config
  const link = await getLink(env.ctx.sh, lanIf)
  if (!link) return { check: fail('lan-address', `${lanIf} does not exist`) }
  const [ip, prefix] = lanAddr.split('/')
  const v4 = link.addresses.filter((a) => a.family === 4)
  const same = v4.find((a) => a.address === ip)
  if (same && String(same.prefixlen) === prefix) return { check: pass('lan-address', `${lanAddr} on ${lanIf}`) }
  if (same) return { check: fail('lan-address', `${lanIf} has ${ip}/${same.prefixlen}, configured ${lanAddr}`) }
  return {
    check: fail('lan-address', `${lanIf} lacks ${lanAddr} (has ${v4.map((a) => `${a.address}/${a.prefixlen}`).join(' ') || 'no IPv4'})`, `ip addr add ${lanAddr} dev ${lanIf}`),
    apply: async () => { await env.ctx.sh.apply('ip', ['addr', 'add', lanAddr, 'dev', lanIf]) },
  }
}

const upstream: CheckFn = async (env) => {
  const { wanIf } = env.ctx.config
  if (!(await getLink(env.ctx.sh, wanIf))) return { check: fail('upstream', `${wanIf} does not exist`) }
  const offer = await probeUpstream(env.ctx.sh, wanIf)
  const parts = [
    offer.dhcpv4 ? `IPv4 on ${wanIf}` : `no IPv4 on ${wanIf}`,
    offer.ra ? `RA from ${offer.gateway6} (${[offer.dhcpv6 && 'DHCPv6', offer.slaac && 'SLAAC'].filter(Boolean).join(', ') || 'no addresses'}${offer.prefixes.length ? `, ${offer.prefixes.join(' ')}` : ''})` : 'no RA',
  ]
  if (!offer.dhcpv4 && !offer.ra) return { check: fail('upstream', `the upstream offers nothing: ${parts.join('; ')}`) }
  if (!offer.dhcpv4) {
    if (env.ctx.config.clat) return { check: pass('upstream', `${parts.join('; ')}: IPv6-only upstream; devices' own IPv4 goes through 464XLAT (GET /clat)`) }
    // Said plainly, because it is what a person on an IPv6-only upstream needs to know.
    return { check: warn('upstream', `${parts.join('; ')}: IPv6-only upstream. Devices get their own IPv6 identity and are reachable through the relay and NAT64, but their own outbound IPv4 has no path`, 'set clat 1 (464XLAT; needs tayga, and a NAT64 upstream at clatPrefix)') }
  }
  const recorded = (await env.store()).data?.upstream.prefixes ?? []
  if (offer.ra && recorded.length > 0 && offer.prefixes.join() !== recorded.join()) {
    return {
      check: warn('upstream', `${parts.join('; ')}; the IPv6 prefixes changed since the last acquire (${recorded.join(' ')})`, 'run acquire-leases (devices re-acquire once)'),
      apply: () => env.acquire(),
    }
  }
  return { check: pass('upstream', parts.join('; ')) }
}

const forwarding: CheckFn = async (env) => {
  const v4 = await sysctl(env.ctx.sh, 'net.ipv4.ip_forward')
  const v6 = await sysctl(env.ctx.sh, 'net.ipv6.conf.all.forwarding')
  const check = checkForwarding(v4, v6)
  return { check, apply: check.fix ? () => setSysctls(env, { 'net.ipv4.ip_forward': '1' }) : undefined }
}

const wanSysctls: CheckFn = async (env) => {
  const { sh, config } = env.ctx
  const w = config.wanIf
  const [allRp, wanRp, allArpIgnore, wanArpIgnore, allArpAnnounce, wanArpAnnounce] = await Promise.all([
    sysctl(sh, 'net.ipv4.conf.all.rp_filter'), sysctl(sh, confKey(w, 'rp_filter')),
    sysctl(sh, 'net.ipv4.conf.all.arp_ignore'), sysctl(sh, confKey(w, 'arp_ignore')),
    sysctl(sh, 'net.ipv4.conf.all.arp_announce'), sysctl(sh, confKey(w, 'arp_announce')),
  ])
  const { check, set } = checkWanSysctls(w, { allRp, wanRp, allArpIgnore, wanArpIgnore, allArpAnnounce, wanArpAnnounce })
  const keyed = Object.fromEntries(Object.entries(set).map(([k, v]) => [k.startsWith(`net.ipv4.conf.${w}.`) ? confKey(w, k.slice(`net.ipv4.conf.${w}.`.length)) : k, v]))
  return { check, apply: check.fix ? () => setSysctls(env, keyed) : undefined }
}

async function startDnsmasq(env: DiagEnv, action: 'start' | 'restart'): Promise<void> {
  await service(env, dnsmasqServiceCommand(env.ctx.config, env.platform, action))
  if (!env.ctx.sh.dryRun && !(await waitUntil(10_000, () => findDnsmasq().length > 0))) throw new Error(`dnsmasq is not running after ${action}`)
}

const dnsmasq: CheckFn = async (env) => {
  const procs = findDnsmasq()
  if (procs.length > 0) return { check: pass('dnsmasq', `running (pid ${procs.map((p) => p.pid).join(', ')})`) }
  const cmd = dnsmasqServiceCommand(env.ctx.config, env.platform, 'start')
  return {
    check: fail('dnsmasq', 'dnsmasq is not running in this network namespace: LAN devices get no addresses and no lease events', cmd.join(' ')),
    apply: () => startDnsmasq(env, 'start'),
  }
}

const dnsmasqHook: CheckFn = async (env) => {
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

const nft: CheckFn = async (env) => {
  const { sh, config } = env.ctx
  const view = await env.store()
  // The text listing: nft 1.0.6 leaves the table's comment out of its JSON.
  const { stdout, code, stderr } = await sh.query('nft', ['list', 'table', 'inet', TABLE], { nothrow: true })
  const repair = view.data ? async () => { await syncNat(env.ctx, (await readStoreView(config.dataDir)).data ?? view.data!) } : undefined
  if (code !== 0) {
    if (/No such file|does not exist/i.test(stderr)) {
      return { check: fail('nft', `table inet ${TABLE} is missing: no device NAT, no port forwards`, view.data ? 'create the table and load its maps from the store' : undefined), apply: repair }
    }
    return { check: fail('nft', `nft failed: ${stderr.trim()}`) }
  }
  const comment = /^\s*comment "([^"]*)"/m.exec(stdout)?.[1]
  const wanted = /comment "([^"]*)"/.exec(tableDefinition(tableOptions(config)))?.[1]
  if (comment !== wanted) return { check: fail('nft', `table inet ${TABLE} is from another version or settings (${comment ?? 'no comment'})`, 'recreate the table and load its maps'), apply: repair }
  if (!view.data) return noStore('nft', view)
  const want = natMaps(view.data)
  const have: Record<string, Map<string, string>> = {}
  for (const name of Object.keys(want)) have[name] = await readMap(sh, name)
  const diffs = mapDifferences(want, have)
  if (diffs.length > 0) return { check: fail('nft', `maps differ from the store: ${diffs.join('; ')}`, 'sync the maps with the store'), apply: repair }
  const n = Object.values(want).reduce((s, m) => s + m.size, 0)
  return { check: pass('nft', `table inet ${TABLE} present, ${n} map elements match the store`) }
}

const macvlans: CheckFn = async (env) => {
  const { sh, config } = env.ctx
  const view = await env.store()
  if (!view.data) return noStore('macvlans', view)
  const links = (await env.links()).filter((l) => l.kind === 'macvlan').map((l) => l.ifname)
  const devices = devicesOf(view.data)
  const { orphans, missing } = macvlanDiff(links, devices)
  const count = links.filter((l) => MACVLAN_NAME.test(l)).length
  if (orphans.length === 0 && missing.length === 0) return { check: pass('macvlans', `${count} device macvlans, one per active device`) }
  const parts = [
    orphans.length && `orphan macvlans without a device: ${orphans.join(' ')}`,
    missing.length && `active devices without their macvlan: ${missing.join(' ')}`,
  ].filter(Boolean)
  const fixes = [orphans.length && 'remove the orphans (clients, routes, link)', missing.length && 'acquire the devices again'].filter(Boolean)
  return {
    check: fail('macvlans', parts.join('; '), fixes.join('; ')),
    async apply() {
      if (orphans.length > 0) {
        const data = (await readStoreView(config.dataDir)).data ?? view.data!
        const held = new Set(Object.values(data.devices).map((d) => d.routeTable).filter((t) => t !== undefined).map(String))
        for (const ifname of orphans) await stopClients(sh, config.runDir, ifname, config.dataDir)
        // Routing tables of device rules that no device holds: what the orphans left behind.
        const tables = new Set<number>()
        for (const family of [4, 6] as const) {
          for (const rule of await listRules(sh, family)) {
            if (rule.priority === PREF_DEVICE && rule.table && /^\d+$/.test(rule.table) && Number(rule.table) >= 1000 && !held.has(rule.table)) tables.add(Number(rule.table))
          }
        }
        for (const table of tables) await removeDeviceRoutes(sh, table)
        for (const ifname of orphans) await deleteLink(sh, ifname)
      }
      if (missing.length > 0) await markReacquire(env, missing)
    },
  }
}

const dhcpClients: CheckFn = async (env) => {
  const { config } = env.ctx
  const view = await env.store()
  if (!view.data) return noStore('dhcp-clients', view)
  const kind6 = dhcp6Kind()
  const active = Object.values(view.data.devices).filter((d) => d.status === 'active')
  const dead: string[] = []
  const macs: string[] = []
  for (const d of active) {
    const ifname = d.ifname ?? macvlanName(d.mac)
    const lost = [
      d.wanIpv4 && !clientPid(config.runDir, ifname, 'udhcpc') && 'udhcpc',
      view.data.upstream.dhcpv6 && !clientPid(config.runDir, ifname, kind6) && kind6,
    ].filter(Boolean)
    if (lost.length > 0) { dead.push(`${d.mac} (${lost.join(', ')})`); macs.push(d.mac) }
  }
  if (dead.length === 0) return { check: pass('dhcp-clients', `${active.length} active devices, every DHCP client alive`) }
  return {
    check: fail('dhcp-clients', `DHCP clients not running: ${dead.join(', ')}: their leases will lapse upstream`, 'acquire those devices again'),
    apply: () => markReacquire(env, macs),
  }
}

async function startRunner(env: DiagEnv, action: 'start' | 'restart'): Promise<void> {
  await service(env, runnerServiceCommand(env.ctx.config, env.platform, action))
  if (env.ctx.sh.dryRun) return
  if (!(await waitUntil(20_000, async () => liveRunner(env.ctx.config.dataDir) !== undefined && (await healthy(env))))) {
    throw new Error(`the runner did not come up within 20 s after ${action}`)
  }
}

const runner: CheckFn = async (env) => {
  const pid = liveRunner(env.ctx.config.dataDir)
  if (pid) return { check: pass('runner', `running (pid ${pid})`) }
  const cmd = runnerServiceCommand(env.ctx.config, env.platform, 'start')
  return {
    check: fail('runner', 'the runner is not running: no schedules, hook events wait in the spool, no API, no relay', cmd.join(' ')),
    apply: () => startRunner(env, 'start'),
  }
}

const api: CheckFn = async (env) => {
  const url = apiUrl(env, '/health')
  if (!liveRunner(env.ctx.config.dataDir)) return { check: warn('api', `not checked: the runner is not running (${url})`) }
  const r = await apiGet(env, '/health')
  if (typeof r === 'object' && r.status === 200) return { check: pass('api', `${url} answers (version ${(r.body as { version?: string })?.version ?? '?'})`) }
  const why = typeof r === 'string' ? r : `HTTP ${r.status}`
  const cmd = runnerServiceCommand(env.ctx.config, env.platform, 'restart')
  return { check: fail('api', `${url} does not answer (${why})`, cmd.join(' ')), apply: () => startRunner(env, 'restart') }
}

async function relayState(env: DiagEnv, data: Data): Promise<{ check: Check; retry: boolean }> {
  const r = await apiGet(env, '/relay')
  if (typeof r === 'string') return { check: warn('relay', `GET /relay failed (${r})`), retry: false }
  if (r.status === 404 || r.status === 405) return { check: warn('relay', 'this runner does not report its relay listeners (no GET /relay)'), retry: false }
  const have = (r.body as { rules?: RelayRule[] })?.rules
  if (r.status !== 200 || !Array.isArray(have)) return { check: warn('relay', `GET /relay: HTTP ${r.status}`), retry: false }
  const wan = await getLink(env.ctx.sh, env.ctx.config.wanIf)
  const wan6 = (wan?.addresses ?? []).filter((a) => a.family === 6 && a.scope === 'global').map((a) => a.address)
  const want = relayRules(data, env.ctx.config, wan6)
  const { missing, extra } = relayDiff(want, have)
  if (missing.length === 0 && extra.length === 0) return { check: pass('relay', `${have.length} relay listeners match the store`), retry: false }
  const parts = [missing.length && `${missing.length} missing (${missing.slice(0, 3).join('; ')})`, extra.length && `${extra.length} not wanted (${extra.slice(0, 3).join('; ')})`].filter(Boolean)
  return { check: fail('relay', `relay listeners differ from the store: ${parts.join(', ')}`, 'ask the runner to re-apply them (refresh-proxies)'), retry: true }
}

const relay: CheckFn = async (env) => {
  if (!liveRunner(env.ctx.config.dataDir)) return { check: warn('relay', 'not checked: the runner (which holds the relay) is not running') }
  const view = await env.store()
  if (!view.data) return noStore('relay', view)
  const { check, retry } = await relayState(env, view.data)
  if (!retry) return { check }
  return {
    check,
    async apply() {
      await requestRun(env.ctx.config, 'refresh-proxies', 'diagnose', 'fix')
      const data = (await readStoreView(env.ctx.config.dataDir)).data ?? view.data!
      await waitUntil(15_000, async () => (await relayState(env, data)).check.status === 'pass')
    },
  }
}

export const CHECKS: Record<CheckId, CheckFn> = {
  clock, node, tools, disk, store,
  'lan-link': linkCheck('lan-link', 'lanIf'),
  'wan-link': linkCheck('wan-link', 'wanIf'),
  'lan-address': lanAddress,
  upstream, forwarding,
  'wan-sysctls': wanSysctls,
  dnsmasq,
  'dnsmasq-hook': dnsmasqHook,
  nft, macvlans,
  'dhcp-clients': dhcpClients,
  runner, api, relay,
  nat64: async (env) => {
    const { config } = env.ctx
    return { check: checkNat64(nat64Status(config), taygaPid(config.runDir), runnerPid(config.dataDir) !== undefined) }
  },
  clat: async (env) => {
    const { config, sh } = env.ctx
    const data = (await env.store()).data
    const has = { wanMac: (await getLink(sh, config.wanIf))?.mac, tayga: findTayga(taygaSearchPath()) !== undefined, tun: existsSync('/dev/net/tun') }
    const plan = data ? clatPlan(data, config, has) : { prefix: config.clatPrefix, idle: 'no readable store', devices: [] }
    return { check: checkClat({ enabled: config.clat, ...plan, devices: plan.devices.length }, taygaPid(config.runDir, 'clat'), runnerPid(config.dataDir) !== undefined) }
  },
}

/** One check, never throwing: an error while checking is itself a failing result. */
export async function probe(id: CheckId, env: DiagEnv): Promise<Probe> {
  try {
    return await CHECKS[id](env)
  } catch (err) {
    return { check: fail(id, `could not check: ${(err as Error).message}`) }
  }
}
