// Checks of the router's network: links, the LAN address, the upstream, forwarding and WAN sysctls.
import { persistSysctls, readSysctl, confKey } from '../net/sysctl.ts'
import { getLink } from '../net/ip.ts'
import { probeUpstream } from '../net/upstream.ts'
import { systemPath } from '../core/platform.ts'
import { systemBackupDir } from '../core/system-files.ts'
import type { CheckFn, DiagEnv } from './env.ts'
import { checkForwarding, checkWanSysctls, fail, pass, warn } from './report.ts'

const SYSCTL_FILE = '/etc/sysctl.d/90-dualgate.conf'

/** Sets sysctls now and in our sysctl.d file. */
function persist(env: DiagEnv, values: Record<string, string>): Promise<void> {
  const { sh, config } = env.ctx
  return persistSysctls(sh, values, systemPath(config.rootDir, SYSCTL_FILE), systemBackupDir(config.dataDir))
}

async function linkFlags(env: DiagEnv, ifname: string): Promise<{ flags: string[] } | undefined> {
  const { stdout, code } = await env.ctx.sh.query('ip', ['-j', 'link', 'show', 'dev', ifname], { nothrow: true })
  if (code !== 0) return undefined
  const [link] = JSON.parse(stdout || '[]') as { flags?: string[] }[]
  return link ? { flags: link.flags ?? [] } : undefined
}

export function linkCheck(id: 'lan-link' | 'wan-link', which: 'lanIf' | 'wanIf'): CheckFn {
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

export const lanAddress: CheckFn = async (env) => {
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

export const upstream: CheckFn = async (env) => {
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

export const forwarding: CheckFn = async (env) => {
  const v4 = await readSysctl(env.ctx.sh, 'net.ipv4.ip_forward')
  const v6 = await readSysctl(env.ctx.sh, 'net.ipv6.conf.all.forwarding')
  const check = checkForwarding(v4, v6)
  return { check, apply: check.fix ? () => persist(env, { 'net.ipv4.ip_forward': '1' }) : undefined }
}

export const wanSysctls: CheckFn = async (env) => {
  const { sh, config } = env.ctx
  const w = config.wanIf
  const [allRp, wanRp, allArpIgnore, wanArpIgnore, allArpAnnounce, wanArpAnnounce] = await Promise.all([
    readSysctl(sh, 'net.ipv4.conf.all.rp_filter'), readSysctl(sh, confKey(w, 'rp_filter')),
    readSysctl(sh, 'net.ipv4.conf.all.arp_ignore'), readSysctl(sh, confKey(w, 'arp_ignore')),
    readSysctl(sh, 'net.ipv4.conf.all.arp_announce'), readSysctl(sh, confKey(w, 'arp_announce')),
  ])
  const { check, set } = checkWanSysctls(w, { allRp, wanRp, allArpIgnore, wanArpIgnore, allArpAnnounce, wanArpAnnounce })
  const keyed = Object.fromEntries(Object.entries(set).map(([k, v]) => [k.startsWith(`net.ipv4.conf.${w}.`) ? confKey(w, k.slice(`net.ipv4.conf.${w}.`.length)) : k, v]))
  return { check, apply: check.fix ? () => persist(env, keyed) : undefined }
}
