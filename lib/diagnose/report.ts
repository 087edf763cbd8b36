// What diagnose reports, and the pure parts of its checks: each check is one line a person can act on,
// with the fix `--fix` would apply. The system is read by the checks (./checks.ts); here are only the rules.
import { MACVLAN_NAME } from '../addr/mac.ts'
import { ruleKey, type RelayRule } from '../reach/relay.ts'
import { formatTable } from '../core/table.ts'

export type CheckStatus = 'pass' | 'warn' | 'fail'

export interface Check {
  id: string
  status: CheckStatus
  /** One line: what was found. */
  reason: string
  /** What `--fix` would do; absent when there is nothing to fix or no safe automatic fix. */
  fix?: string
}

export interface FixOutcome {
  id: string
  action: string
  /** applied; planned (dry run); failed (error says why). */
  status: 'applied' | 'planned' | 'failed'
  error?: string
}

/** In running order: later checks read what earlier ones may repair (the store first). */
export const CHECK_IDS = [
  'clock', 'node', 'tools', 'disk', 'store', 'lan-link', 'wan-link', 'lan-address', 'upstream', 'forwarding', 'wan-sysctls',
  'dnsmasq', 'dnsmasq-hook', 'nft', 'macvlans', 'dhcp-clients', 'runner', 'api', 'relay', 'nat64', 'clat', 'tunnels', 'he-update', 'forwarder',
] as const
export type CheckId = (typeof CHECK_IDS)[number]

export const pass = (id: string, reason: string): Check => ({ id, status: 'pass', reason })
export const warn = (id: string, reason: string, fix?: string): Check => ({ id, status: 'warn', reason, ...(fix ? { fix } : {}) })
export const fail = (id: string, reason: string, fix?: string): Check => ({ id, status: 'fail', reason, ...(fix ? { fix } : {}) })

/** `--fix a,b --fix c` and `--fix-all` -> the ids to fix, in running order; an unknown id is an error message. */
export function selectFixes(values: string[], all: boolean): CheckId[] | string {
  if (all) return [...CHECK_IDS]
  const wanted = values.flatMap((v) => v.split(',')).map((v) => v.trim()).filter(Boolean)
  const unknown = wanted.filter((id) => !(CHECK_IDS as readonly string[]).includes(id))
  if (unknown.length > 0) return `unknown check "${unknown[0]}"; one of ${CHECK_IDS.join(', ')}`
  return CHECK_IDS.filter((id) => wanted.includes(id))
}

export function failed(checks: Check[]): boolean {
  return checks.some((c) => c.status === 'fail')
}

/** "1.2.3" >= "1.2.0", numerically, missing parts as 0. */
export function versionAtLeast(version: string, min: string): boolean {
  const a = version.replace(/^v/, '').split('.').map((x) => parseInt(x, 10) || 0)
  const b = min.split('.').map((x) => parseInt(x, 10) || 0)
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) > (b[i] ?? 0)
  }
  return true
}

export const MIN_NODE = '20.19.0'

export function checkNode(version: string): Check {
  return versionAtLeast(version, MIN_NODE)
    ? pass('node', `Node.js ${version}`)
    : fail('node', `Node.js ${version} is older than ${MIN_NODE} (require(esm), fs.statfs and the test runner need it)`)
}

export const CLOCK_FLOOR = Date.parse('2025-01-01T00:00:00Z')

export function checkClock(now: number): Check {
  return now >= CLOCK_FLOOR
    ? pass('clock', new Date(now).toISOString())
    : fail('clock', `the clock says ${new Date(now).toISOString()}, before 2025: lease times, backups and logs will be wrong (is NTP running?)`)
}

const MiB = 1024 * 1024

export function checkDisk(where: string, free: number, total: number): Check {
  const pct = total > 0 ? Math.round((free / total) * 100) : 0
  const text = `${(free / MiB).toFixed(1)} MiB free (${pct}%) at ${where}`
  if (free < MiB) return fail('disk', `${text}: the store and its backups cannot be written`)
  if (free < 8 * MiB || pct < 5) return warn('disk', `${text}: running low`)
  return pass('disk', text)
}

/**
 * Forwarding: IPv4 is what the devices need (their traffic is routed and NATed). IPv6 reaches devices through
 * the user-space relay, so its forwarding is reported, not forced: turning it on stops the kernel from taking
 * the WAN's own RAs where accept_ra is 1.
 */
export function checkForwarding(v4: string | undefined, v6: string | undefined): Check {
  const six = v6 === '1' ? 'IPv6 forwarding on' : 'IPv6 forwarding off (not needed: IPv6 reaches devices through the relay)'
  if (v4 !== '1') return fail('forwarding', `IPv4 forwarding is off (net.ipv4.ip_forward=${v4 ?? '?'}): devices cannot reach the WAN; ${six}`, 'sysctl net.ipv4.ip_forward=1 (and persist it)')
  return pass('forwarding', `IPv4 forwarding on; ${six}`)
}

/** The kernel applies the larger of `all` and the interface's own value for these settings. */
const effective = (all: string | undefined, own: string | undefined) => Math.max(Number(all ?? 0), Number(own ?? 0))

/** WAN sysctls: loose or no reverse-path filter, and ARP answered only for the WAN's own addresses. */
export function checkWanSysctls(wanIf: string, v: { allRp?: string; wanRp?: string; allArpIgnore?: string; wanArpIgnore?: string; allArpAnnounce?: string; wanArpAnnounce?: string }): { check: Check; set: Record<string, string> } {
  const problems: string[] = []
  const set: Record<string, string> = {}
  if (v.allRp === '1') { problems.push('net.ipv4.conf.all.rp_filter=1'); set['net.ipv4.conf.all.rp_filter'] = '2' }
  if (v.wanRp === '1') { problems.push(`${wanIf} rp_filter=1`); set[`net.ipv4.conf.${wanIf}.rp_filter`] = '2' }
  if (effective(v.allArpIgnore, v.wanArpIgnore) < 1) { problems.push(`${wanIf} arp_ignore=${v.wanArpIgnore ?? '?'}`); set[`net.ipv4.conf.${wanIf}.arp_ignore`] = '1' }
  if (effective(v.allArpAnnounce, v.wanArpAnnounce) !== 2) { problems.push(`${wanIf} arp_announce=${v.wanArpAnnounce ?? '?'}`); set[`net.ipv4.conf.${wanIf}.arp_announce`] = '2' }
  if (problems.length === 0) return { check: pass('wan-sysctls', `rp_filter loose or off, arp_ignore and arp_announce set on ${wanIf}`), set }
  const why = [
    ...(set['net.ipv4.conf.all.rp_filter'] || set[`net.ipv4.conf.${wanIf}.rp_filter`] ? ['strict rp_filter drops inbound traffic to device macvlans'] : []),
    ...(set[`net.ipv4.conf.${wanIf}.arp_ignore`] || set[`net.ipv4.conf.${wanIf}.arp_announce`] ? [`${wanIf} would answer ARP for device addresses`] : []),
  ]
  return { check: fail('wan-sysctls', `${problems.join(', ')}: ${why.join('; ')}`, `sysctl ${Object.entries(set).map(([k, x]) => `${k}=${x}`).join(' ')} (and persist)`), set }
}

/** Differences between the maps the store wants and the ones in the kernel: "dev_snat4: 1 missing, 2 wrong". */
export function mapDifferences(want: Record<string, Map<string, string>>, have: Record<string, Map<string, string>>): string[] {
  const out: string[] = []
  for (const [name, w] of Object.entries(want)) {
    const h = have[name] ?? new Map<string, string>()
    const missing = [...w.keys()].filter((k) => !h.has(k)).length
    const wrong = [...w].filter(([k, v]) => h.has(k) && h.get(k) !== v).length
    const extra = [...h.keys()].filter((k) => !w.has(k)).length
    const parts = [missing && `${missing} missing`, wrong && `${wrong} wrong`, extra && `${extra} extra`].filter(Boolean)
    if (parts.length > 0) out.push(`${name}: ${parts.join(', ')}`)
  }
  return out
}

export interface DeviceView { mac: string; status: string; ifname: string }

/** Macvlans without an active or acquiring device (orphans), and active devices without their macvlan. */
export function macvlanDiff(links: string[], devices: DeviceView[]): { orphans: string[]; missing: string[] } {
  const held = new Set(devices.filter((d) => d.status === 'active' || d.status === 'acquiring').map((d) => d.ifname))
  const present = new Set(links.filter((l) => MACVLAN_NAME.test(l)))
  return {
    orphans: [...present].filter((l) => !held.has(l)).sort(),
    missing: devices.filter((d) => d.status === 'active' && !present.has(d.ifname)).map((d) => d.mac).sort(),
  }
}

export function relayDiff(want: RelayRule[], have: RelayRule[]): { missing: string[]; extra: string[] } {
  const w = new Set(want.map(ruleKey))
  const h = new Set(have.map(ruleKey))
  return { missing: [...w].filter((k) => !h.has(k)).sort(), extra: [...h].filter((k) => !w.has(k)).sort() }
}

const MARK: Record<CheckStatus, string> = { pass: 'ok', warn: 'WARN', fail: 'FAIL' }

/** The human view: one row per check, then what was fixed, then the verdict. */
export function formatReport(checks: Check[], fixes: FixOutcome[]): string {
  const rows = checks.map((c) => [c.id, MARK[c.status], c.reason, c.status === 'pass' ? undefined : c.fix])
  const lines = [formatTable(['CHECK', 'STATUS', 'REASON', 'FIX (--fix CHECK)'], rows)]
  if (fixes.length > 0) {
    lines.push('', formatTable(['FIXED', 'RESULT', 'ACTION'], fixes.map((f) => [f.id, f.status === 'failed' ? `failed: ${f.error ?? ''}` : f.status, f.action])))
  }
  const counts = (s: CheckStatus) => checks.filter((c) => c.status === s).length
  lines.push('', `${counts('pass')} ok, ${counts('warn')} warnings, ${counts('fail')} failing${counts('fail') > 0 && fixes.length === 0 ? ' (run with --fix CHECK or --fix-all)' : ''}`)
  return lines.join('\n')
}

/** NAT64: off (and whether it could be turned on), or on and translating. */
export function checkNat64(s: { enabled: boolean; available: boolean; version?: string; prefix?: string; pool: string; problems: string[] }, pid: number | undefined, runnerUp: boolean): Check {
  const tayga = s.version ? `tayga ${s.version}` : 'tayga'
  if (!s.enabled) return pass('nat64', s.available ? `off (${tayga} available: set nat64 1 to map devices under ${s.prefix})` : `off (not available: ${s.problems.join('; ')})`)
  if (!s.available) return fail('nat64', `enabled but not available: ${s.problems.join('; ')}`)
  if (pid) return pass('nat64', `${tayga} running (pid ${pid}): devices at ${s.prefix} <-> pool ${s.pool}`)
  return runnerUp ? fail('nat64', `enabled, but tayga is not running`, 'restart the runner, which supervises tayga') : warn('nat64', 'enabled; tayga starts with the runner, which is down')
}

/**
 * 464XLAT: off; on but with nothing to do (and why); or translating `devices`, which needs the CLAT's tayga
 * (`pid`) while the runner that supervises it is up.
 */
export function checkClat(s: { enabled: boolean; prefix: string; idle?: string; missing?: boolean; devices: number }, pid: number | undefined, runnerUp: boolean): Check {
  if (!s.enabled) return pass('clat', 'off')
  if (s.missing) return fail('clat', `enabled, but ${s.idle}`)
  if (s.idle) return pass('clat', `on, idle: ${s.idle}`)
  if (pid) return pass('clat', `tayga running (pid ${pid}): ${s.devices} devices' IPv4 toward the NAT64 at ${s.prefix}`)
  return runnerUp ? fail('clat', `enabled for ${s.devices} devices, but its tayga is not running`, 'restart the runner, which supervises it') : warn('clat', 'enabled; its tayga starts with the runner, which is down')
}
