// Kernel-mode forwarding made so (jobs/forwarder.ts): reads config, resolves the far ends, reads the keys and
// the system, plans (lib/forwarder/kernel-plan.ts) and runs the plan, step by step through `sh.apply` (a dry run
// prints it), then records what was made. A step that fails fails its tunnel only: the rest goes on.
import { Resolver } from 'node:dns/promises'
import { mkdir } from 'node:fs/promises'
import path from 'node:path'
import { formatIpv6, parseIpv6 } from '../addr/ipv6.ts'
import { hasRole, WG_KEY, type Config } from '../core/config.ts'
import { ExecError, type Sh } from '../core/exec.ts'
import type { Logger } from '../core/log.ts'
import { readOwnedFile, trustedOwners } from '../core/safe-file.ts'
import type { ForwarderTunnelRecord } from '../core/schema.ts'
import type { Store } from '../core/store.ts'
import { getLink, globalIpv4 } from '../net/ip.ts'
import { getIp6tnlLink, type Ip6tnlLink } from '../net/ip6tnl.ts'
import { tableComment } from '../net/nft.ts'
import { listProtoRoutes4, listRules } from '../net/route.ts'
import { parseProcNet, type ListeningSocket, type Proto } from '../net/sockets.ts'
import { confKey, readSysctl } from '../net/sysctl.ts'
import { ensureTun, isWireguardGo, kernelHasWireguard, startWireguardGo, waitForWireguardGo, wgState, wgSyncconf, wireguardGoNameTaken, type WgState } from '../net/wireguard.ts'
import { configuredForwards, configuredPeers, forwardsProblem, peersProblem, type KernelForward } from './config.ts'
import { FWD_NFT_TABLE, FWD_ROUTE_PROTO, planKernel, wantedTunnels, type ForwarderSystem, type KernelOutcome, type KernelPlan, type Resolution, type Step, type WantedTunnel } from './kernel-plan.ts'

export interface ForwarderEnv {
  sh: Sh
  config: Config
  store: Store
  log: Logger
  /** A name's IPv6 addresses (tests in namespaces give their own); default: node's resolver over forwarderDns. */
  resolve6?: (name: string) => Promise<string[]>
}

export class ForwarderConfigError extends Error {}

export interface KernelResult {
  /** Commands run (or printed in a dry run): 0 when everything was already right. */
  changes: number
  nft: KernelPlan['nft']
  tunnels: KernelOutcome[]
}

const SECRET_MAX_BYTES = 16 * 1024
const RESOLVE_TIMEOUT_MS = 2000

/** The kernel forwards (role forwarder) and forwarder peers (role gateway) config asks of this host, as tunnels. */
export function kernelTunnels(config: Config): WantedTunnel[] {
  const forwards = hasRole(config, 'forwarder') ? configuredForwards(config) : []
  const problem = forwardsProblem(forwards) ?? peersProblem(configuredPeers(config))
  if (problem) throw new ForwarderConfigError(problem)
  const kernel = forwards.filter((f): f is KernelForward => f.mode === 'kernel')
  return wantedTunnels(kernel, hasRole(config, 'gateway') ? configuredPeers(config) : [])
}

const canonical6 = (a: string) => {
  const b = parseIpv6(a)
  return b ? formatIpv6(b) : undefined
}

function systemResolver(config: Config): (name: string) => Promise<string[]> {
  return async (name) => {
    const r = new Resolver({ timeout: RESOLVE_TIMEOUT_MS, tries: 2 })
    if (config.forwarderDns.length > 0) r.setServers(config.forwarderDns)
    return r.resolve6(name)
  }
}

/** The far end's IPv6: the literal, or the name's AAAA (the one in use while the answer still has it). */
async function resolveFar(t: WantedTunnel, current: string | undefined, resolve6: (name: string) => Promise<string[]>): Promise<Resolution> {
  const literal = canonical6(t.far)
  if (literal) return { address: literal }
  try {
    const answers = (await resolve6(t.far)).map(canonical6).filter((a): a is string => a !== undefined)
    if (answers.length === 0) return { error: 'no AAAA record' }
    return { address: current && answers.includes(current) ? current : answers[0] }
  } catch (err) {
    return { error: (err as NodeJS.ErrnoException).code ?? (err as Error).message }
  }
}

async function readKey(file: string): Promise<{ key: string } | { error: string }> {
  const read = await readOwnedFile(file, { owners: trustedOwners(), maxBytes: SECRET_MAX_BYTES, secret: true })
  if ('missing' in read) return { error: `private_key_file ${file} does not exist` }
  if ('refused' in read) return { error: `private_key_file ${file} refused: ${read.refused}` }
  const key = read.text.trim()
  // What the file holds otherwise is never repeated.
  return WG_KEY.test(key) ? { key } : { error: `private_key_file ${file} does not hold a WireGuard key (44 characters of base64, as wg genkey writes)` }
}

async function listeners(sh: Sh): Promise<ListeningSocket[]> {
  const out: ListeningSocket[] = []
  for (const proto of ['tcp', 'udp'] as Proto[]) {
    // Both tables in one read (each starts with a header line, which parses as no socket); a kernel without
    // IPv6 has no <proto>6 table, and cat still prints the other.
    const r = await sh.query('cat', [`/proc/net/${proto}`, `/proc/net/${proto}6`], { nothrow: true })
    out.push(...parseProcNet(r.stdout, proto))
  }
  return out
}

export async function readSystem(sh: Sh, config: Config, tunnels: WantedTunnel[], records: Record<string, ForwarderTunnelRecord>): Promise<ForwarderSystem> {
  const ifaces = [...new Set([...tunnels.map((t) => t.iface), ...Object.keys(records)])]
  const links: Record<string, Ip6tnlLink | undefined> = {}
  const wg: Record<string, WgState | undefined> = {}
  for (const iface of ifaces) {
    links[iface] = await getIp6tnlLink(sh, iface)
    if (links[iface]?.kind === 'wireguard' || links[iface]?.kind === 'tun') wg[iface] = await wgState(sh, iface)
  }
  const wan = await getLink(sh, config.wanIf)
  const sysctls: Record<string, string | undefined> = {}
  if (tunnels.length > 0) sysctls['net.ipv4.ip_forward'] = await readSysctl(sh, 'net.ipv4.ip_forward')
  for (const t of tunnels.filter((x) => x.side === 'peer' && links[x.iface])) {
    const key = confKey(t.iface, 'src_valid_mark')
    sysctls[key] = await readSysctl(sh, key)
  }
  const needsWg = tunnels.some((t) => t.transport === 'wireguard' && !links[t.iface])
  return {
    links,
    wg,
    wanIpv4: globalIpv4(wan),
    wanIpv6: (wan?.addresses ?? []).filter((a) => a.family === 6 && a.scope === 'global' && a.usable).map((a) => a.address),
    routes: await listProtoRoutes4(sh, FWD_ROUTE_PROTO),
    rules: await listRules(sh, 4),
    nftComment: await tableComment(sh, FWD_NFT_TABLE),
    sysctls,
    kernelWireguard: needsWg ? await kernelHasWireguard(sh) : false,
    listeners: tunnels.some((t) => t.side === 'forward') ? await listeners(sh) : [],
  }
}

/** Runs one step; returns wireguard-go's pid when it started one. */
async function runStep(env: ForwarderEnv, step: Step): Promise<number | undefined> {
  const { sh, config } = env
  switch (step.kind) {
    case 'run':
      await sh.apply(step.cmd, step.args, { input: step.input, nothrow: step.nothrow })
      return undefined
    case 'wg-set':
      await wgSyncconf(sh, step.iface, step.text, path.join(config.runDir, 'wireguard'))
      return undefined
    case 'wireguard-go': {
      if (!(await ensureTun(sh))) throw new ForwarderConfigError('/dev/net/tun is missing (the TUN driver wireguard-go needs)')
      if (await wireguardGoNameTaken(step.iface)) throw new ForwarderConfigError(`a wireguard-go named ${step.iface} runs already (in another network namespace?): choose another iface`)
      if (!sh.dryRun) await mkdir(config.runDir, { recursive: true })
      const log = path.join(config.runDir, `wireguard-go-${step.iface}.log`)
      const pid = await startWireguardGo(sh, step.iface, log)
      if (!sh.dryRun && !(await waitForWireguardGo(sh, step.iface))) throw new ForwarderConfigError(`wireguard-go (pid ${pid}) did not bring up ${step.iface}; see ${log}`)
      return pid
    }
    case 'stop-wireguard-go':
      // wireguard-go exits when its TUN goes; one that did not is ours (its pid is in the store) to stop.
      if (sh.dryRun) return undefined
      await new Promise((r) => setTimeout(r, 200))
      if (await isWireguardGo(step.pid, step.iface)) process.kill(step.pid, 'SIGTERM')
      return undefined
  }
}

/** Makes both ends' kernel forwarding what config says; a run that finds everything right changes nothing. */
export async function reconcileKernel(env: ForwarderEnv): Promise<KernelResult> {
  const { sh, config, log } = env
  const tunnels = kernelTunnels(config)
  const data = await env.store.read()
  const prior = data.forwarderTunnels
  const resolve6 = env.resolve6 ?? systemResolver(config)
  const resolved: Record<string, Resolution> = {}
  const keys: Record<string, { key: string } | { error: string }> = {}
  for (const t of tunnels) {
    resolved[t.iface] = await resolveFar(t, prior[t.iface]?.remote, resolve6)
    if (t.wireguard) keys[t.iface] = await readKey(t.wireguard.privateKeyFile)
  }
  const system = await readSystem(sh, config, tunnels, prior)
  const plan = planKernel({ tunnels, resolved, keys, records: prior, system, wanIf: config.wanIf, now: new Date().toISOString() })

  const records = { ...plan.records }
  const broken = new Map<string, string>()
  let changes = 0
  // A step of no one tunnel (nft, rules, sysctl) that fails fails the run, but only after the records of the
  // links made are kept: without them a later run could not remove them.
  let failedShared: Error | undefined
  for (const step of plan.steps) {
    if (step.iface && broken.has(step.iface)) continue
    try {
      const pid = await runStep(env, step)
      changes++
      if (pid && records[step.iface!]) records[step.iface!] = { ...records[step.iface!], pid }
    } catch (err) {
      if (!(err instanceof ExecError) && !(err instanceof ForwarderConfigError)) throw err
      if (!step.iface) {
        failedShared ??= err
        continue
      }
      broken.set(step.iface, err.message)
      // Never made: no record. Made before: the record stays, for a later run or a removal.
      if (prior[step.iface]) records[step.iface] = prior[step.iface]
      else delete records[step.iface]
    }
  }
  const outcomes = plan.outcomes.map((o) => (broken.has(o.iface) && o.action !== 'failed' ? { ...o, action: 'failed' as const, detail: broken.get(o.iface) } : o))

  if (!sh.dryRun && JSON.stringify(records) !== JSON.stringify(prior)) {
    await env.store.update((d) => {
      d.forwarderTunnels = records
    })
  }
  if (failedShared) throw failedShared
  for (const o of outcomes) {
    if (o.action === 'unchanged') continue
    const line = `forwarder ${o.side === 'peer' ? 'peer' : 'forward'} ${o.name} (${o.iface}): ${o.action}${o.detail ? `: ${o.detail}` : ''}`
    // A resolution that keeps failing is said once, when it starts failing.
    const repeated = o.action === 'failed' && prior[o.iface]?.resolveError !== undefined && prior[o.iface]?.resolveError === records[o.iface]?.resolveError
    if (o.action === 'failed') (repeated ? log.debug : log.warn)(line)
    else log.info(line)
  }
  for (const t of tunnels) {
    const r = records[t.iface]
    if (r?.resolveError && r.resolveError !== prior[t.iface]?.resolveError && r.remote) log.warn(`forwarder ${t.side === 'peer' ? 'peer' : 'forward'} ${t.names.join(',')}: ${t.far} did not resolve (${r.resolveError}); keeping ${r.remote}`)
  }
  return { changes, nft: plan.nft, tunnels: outcomes }
}
