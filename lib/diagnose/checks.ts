// The checks of `gateway-diagnose`, by id: each reads the system (never the store through openStore, which
// would repair a corrupt file behind our back) and returns what it found, with an `apply` that repairs it
// when a safe repair exists. Every repair is idempotent; system files are backed up before they change.
import type { CheckFn, DiagEnv, Probe } from './env.ts'
import { dhcpClients, macvlans, nft } from './devices.ts'
import { dnsmasq, dnsmasqHook } from './dnsmasq.ts'
import { forwarder } from './forwarder.ts'
import { forwarding, lanAddress, linkCheck, upstream, wanSysctls } from './network.ts'
import { hasRole } from '../core/config.ts'
import { fail, pass, type CheckId } from './report.ts'
import { api, clat, nat64, relay, runner } from './runner.ts'
import { clock, disk, node, store, tools } from './system.ts'
import { heUpdate, tunnels } from './tunnels.ts'

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
  nat64, clat,
  tunnels,
  'he-update': heUpdate,
  forwarder,
}

/** What only a gateway has (a LAN, devices and their data plane): passed over on a host that is not one. */
const GATEWAY_ONLY = new Set<CheckId>(['lan-link', 'lan-address', 'upstream', 'wan-sysctls', 'dnsmasq', 'dnsmasq-hook', 'nft', 'macvlans', 'dhcp-clients', 'relay', 'nat64', 'clat'])

/** One check, never throwing: an error while checking is itself a failing result. */
export async function probe(id: CheckId, env: DiagEnv): Promise<Probe> {
  const { config } = env.ctx
  if (GATEWAY_ONLY.has(id) && !hasRole(config, 'gateway')) return { check: pass(id, `not checked: this host is not a gateway (role ${config.role.join(',')})`) }
  try {
    return await CHECKS[id](env)
  } catch (err) {
    return { check: fail(id, `could not check: ${(err as Error).message}`) }
  }
}

