// ip6tnl links in ipip6 mode (IPv4 inside IPv6, "4in6"): the argv that makes or changes one, and the link as
// `ip -d -j link show` reads it back. Pure but for getIp6tnlLink.
import type { Sh } from '../core/exec.ts'

export interface Ip6tnlSettings {
  ifname: string
  local: string
  remote: string
  /** true: the encapsulation limit option (4) in every packet, 8 bytes; false: `encaplimit none`. */
  encaplimit: boolean
}

export interface Ip6tnlLink {
  ifname: string
  kind?: string
  /** ipip6, ip6ip6 or any. */
  proto?: string
  up: boolean
  mtu: number
  local?: string
  remote?: string
  encaplimit?: boolean
  rxBytes: number
  txBytes: number
}

const HOP_LIMIT = '64'

interface LinkJson {
  ifname: string
  mtu?: number
  flags?: string[]
  stats64?: { rx?: { bytes?: number }; tx?: { bytes?: number } }
  linkinfo?: { info_kind?: string; info_data?: { proto?: string; local?: string; remote?: string; encap_limit?: number; ip6_tnl_f_ign_encap_limit?: boolean } }
}

export function parseIp6tnlLinks(json: string): Ip6tnlLink[] {
  return (JSON.parse(json || '[]') as LinkJson[]).map((l) => {
    const d = l.linkinfo?.info_data
    return {
      ifname: l.ifname,
      kind: l.linkinfo?.info_kind,
      proto: d?.proto,
      up: (l.flags ?? []).includes('UP'),
      mtu: l.mtu ?? 0,
      local: d?.local,
      remote: d?.remote,
      encaplimit: d ? !d.ip6_tnl_f_ign_encap_limit : undefined,
      rxBytes: l.stats64?.rx?.bytes ?? 0,
      txBytes: l.stats64?.tx?.bytes ?? 0,
    }
  })
}

export async function getIp6tnlLink(sh: Sh, ifname: string): Promise<Ip6tnlLink | undefined> {
  const { stdout, code } = await sh.query('ip', ['-j', '-s', '-d', 'link', 'show', 'dev', ifname], { nothrow: true })
  return code === 0 ? parseIp6tnlLinks(stdout)[0] : undefined
}

const encap = (s: Ip6tnlSettings) => ['encaplimit', s.encaplimit ? '4' : 'none']

/** `ip link add ... type ip6tnl`: rtnetlink loads the ip6_tunnel module itself (the ioctl of `ip -6 tunnel add` needs it loaded). */
export function addIp6tnlArgs(s: Ip6tnlSettings): string[] {
  return ['link', 'add', 'name', s.ifname, 'type', 'ip6tnl', 'mode', 'ipip6', 'local', s.local, 'remote', s.remote, ...encap(s), 'hoplimit', HOP_LIMIT]
}

/** Changes the outer addresses and the limit option in place: the link, its routes and rules stay. */
export function changeIp6tnlArgs(s: Ip6tnlSettings): string[] {
  return ['-6', 'tunnel', 'change', s.ifname, 'mode', 'ipip6', 'local', s.local, 'remote', s.remote, ...encap(s), 'hoplimit', HOP_LIMIT]
}

/** Whether the link is an ipip6 tunnel with these settings (addresses compared as the kernel prints them). */
export function ip6tnlMatches(link: Ip6tnlLink, s: Ip6tnlSettings): boolean {
  return link.kind === 'ip6tnl' && link.proto === 'ipip6' && link.local === s.local && link.remote === s.remote && link.encaplimit === s.encaplimit
}
