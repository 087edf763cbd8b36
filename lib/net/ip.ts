// Typed wrappers over iproute2 (`ip -j`), so jobs read as plans. Parsing is separate and pure.
import type { Sh } from '../core/exec.ts'

export interface LinkInfo {
  ifname: string
  mac?: string
  up: boolean
  /** LOWER_UP: the link has a carrier (a cable, a peer). */
  carrier: boolean
  kind?: string
  parent?: string
  /** `usable`: neither tentative (duplicate address detection under way) nor dadfailed. */
  addresses: { family: 4 | 6; address: string; prefixlen: number; scope: string; usable: boolean }[]
}

interface IpAddrJson {
  ifname: string
  address?: string
  operstate?: string
  flags?: string[]
  link?: string
  linkinfo?: { info_kind?: string }
  addr_info?: { family: string; local: string; prefixlen: number; scope: string; tentative?: boolean; dadfailed?: boolean }[]
}

export function parseLinks(json: string): LinkInfo[] {
  const rows = JSON.parse(json || '[]') as IpAddrJson[]
  return rows.map((r) => ({
    ifname: r.ifname,
    mac: r.address,
    up: (r.flags ?? []).includes('UP'),
    carrier: (r.flags ?? []).includes('LOWER_UP'),
    kind: r.linkinfo?.info_kind,
    parent: r.link,
    addresses: (r.addr_info ?? []).map((a) => ({
      family: a.family === 'inet6' ? 6 : 4,
      address: a.local,
      prefixlen: a.prefixlen,
      scope: a.scope,
      usable: !a.tentative && !a.dadfailed,
    })),
  }))
}

/** All links with their addresses; `-d` adds the macvlan kind. */
export async function listLinks(sh: Sh): Promise<LinkInfo[]> {
  const { stdout } = await sh.query('ip', ['-j', '-d', 'addr', 'show'])
  return parseLinks(stdout)
}

/** The first global IPv4 address on a link: on the WAN, what a 6in4 tunnel leaves from and HE is told. */
export function globalIpv4(link: LinkInfo | undefined): string | undefined {
  return link?.addresses.find((a) => a.family === 4 && a.scope === 'global')?.address
}

/** The global IPv6 addresses on a link: on the WAN, the router's own (IPv6 forwards listen there). */
export function globalIpv6(link: LinkInfo | undefined): string[] {
  return (link?.addresses ?? []).filter((a) => a.family === 6 && a.scope === 'global').map((a) => a.address)
}

export async function getLink(sh: Sh, ifname: string): Promise<LinkInfo | undefined> {
  const { stdout, code } = await sh.query('ip', ['-j', '-d', 'addr', 'show', 'dev', ifname], { nothrow: true })
  return code === 0 ? parseLinks(stdout)[0] : undefined
}

export async function addMacvlan(sh: Sh, o: { parent: string; name: string; mac: string }): Promise<void> {
  await sh.apply('ip', ['link', 'add', 'link', o.parent, 'name', o.name, 'address', o.mac, 'type', 'macvlan', 'mode', 'bridge'])
}

export async function setLinkUp(sh: Sh, ifname: string): Promise<void> {
  await sh.apply('ip', ['link', 'set', 'dev', ifname, 'up'])
}

export async function deleteLink(sh: Sh, ifname: string): Promise<void> {
  await sh.apply('ip', ['link', 'del', 'dev', ifname], { nothrow: true })
}
