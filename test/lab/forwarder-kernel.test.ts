// Kernel-mode forwarding on the host (issue 13): the forwarder job makes a WireGuard-over-IPv6 tunnel
// (wireguard-go: this kernel has no WireGuard and no ip6tnl) between the forwarder lab's VPS (role forwarder)
// and its IPv6-only home router (role gateway, a forwarder peer), the DNAT on the VPS and the policy routing
// on the router. The IPv4-only client reaches the home server at the VPS's IPv4 and the server sees the
// client's own address; the router's other traffic keeps its default route; a second reconcile changes
// nothing; a dry run changes nothing; the home's new address moves the tunnel's far end; removing the config
// removes everything on both ends. Jobs run as a person runs them: `node jobs/forwarder.ts --json`.
import { execFile, execFileSync } from 'node:child_process'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { ForwarderResult, ForwardRow, PeerRow } from '../../jobs/forwarder.ts'
import { parseIpv6 } from '../../lib/addr/ipv6.ts'
import { openStore } from '../../lib/core/store.ts'
import type { KernelOutcome } from '../../lib/forwarder/kernel-plan.ts'
import { kernelTunnelStatus, tunnelFamilies } from '../../lib/forwarder/supervisor.ts'
import { exposition } from '../../lib/core/prometheus.ts'
import { createForwarderLab, FWLAB, isRoot, type ForwarderLab } from './forwarder-lab.ts'
import { ROOT } from './gateway.ts'
import { nsSh } from './ns-sh.ts'
import { isAlive, kill, waitFor } from './proc.ts'

const { vps: VPS, router: ROUTER, server: SERVER, client4: CLIENT4, client6: CLIENT6, dns: DNS } = FWLAB
const WG_PORT = 51830
const VPS_IF = 'dgf-home'
const WATCH_INTERVAL_S = 5
const HOME_IF = 'dgp-vps'
const ROUTER_NEW_V6 = '2001:db8:200::3'

type End = 'vps' | 'router'
type Reconcile = Extract<ForwarderResult, { action: 'reconcile' }>
type List = Extract<ForwarderResult, { action: 'list' }>

let lab: ForwarderLab
const keyFile: Record<End, string> = { vps: '', router: '' }
const publicKey: Record<End, string> = { vps: '', router: '' }
const configFile: Record<End, string> = { vps: '', router: '' }

function envOf(end: End): Record<string, string> {
  const dir = path.join(lab.dir, `dg-${end}`)
  mkdirSync(path.join(dir, 'data'), { recursive: true })
  mkdirSync(path.join(dir, 'run'), { recursive: true })
  return {
    PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: process.env.HOME ?? '/root',
    DUALGATE_UCI_FILE: path.join(lab.dir, 'no-uci'),
    DUALGATE_CONFIG: configFile[end],
    DUALGATE_DATA_DIR: path.join(dir, 'data'),
    DUALGATE_RUN_DIR: path.join(dir, 'run'),
    DUALGATE_WAN_IF: 'eth0',
    DUALGATE_LAN_IF: ROUTER.lanIf,
    DUALGATE_LAN_ADDR: `${ROUTER.lanIpv4}/24`,
    DUALGATE_FORWARDER_DNS: DNS.ipv6,
    DUALGATE_BACKUP_INTERVAL: '0',
  }
}

interface JobRun<T> { code: number; result: T; stdout: string; stderr: string }

function job<T = ForwarderResult>(end: End, args: string[] = [], json = true): Promise<JobRun<T>> {
  return new Promise((resolve) => {
    execFile('ip', ['netns', 'exec', lab.ns[end], process.execPath, '--import=tsx', path.join(ROOT, 'jobs/forwarder.ts'), ...(json ? ['--json'] : []), ...args],
      { cwd: ROOT, env: envOf(end), timeout: 60_000, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        let result: unknown
        try { result = JSON.parse(stdout) } catch { result = undefined }
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, result: result as T, stdout, stderr })
      })
  })
}

async function reconcile(end: End, args: string[] = []): Promise<Reconcile> {
  const r = await job<Reconcile>(end, args)
  if (r.code !== 0 || r.result?.action !== 'reconcile') throw new Error(`forwarder on ${end} exited ${r.code}:\n${r.stdout}\n${r.stderr}`)
  return r.result
}

const vpsForwards = (enabled = true) => ['web:80:tcp', 'ssh:23:tcp', 'echo:7:udp'].map((spec) => {
  const [name, port, proto] = spec.split(':')
  return {
    name, enabled, mode: 'kernel', listen: '4', port, proto, target: DNS.router, targetAddress: SERVER.ipv4,
    transport: 'wireguard', iface: VPS_IF, privateKeyFile: keyFile.vps, peerPublicKey: publicKey.router, listenPort: WG_PORT,
  }
})
const homePeers = () => [{
  name: 'vps', remote: VPS.ipv6, transport: 'wireguard', iface: HOME_IF, servers: [SERVER.ipv4], ports: '80,23,7',
  privateKeyFile: keyFile.router, peerPublicKey: publicKey.vps, endpointPort: WG_PORT,
}]

function writeConfigs(on: boolean): void {
  writeFileSync(configFile.vps, JSON.stringify({ role: 'forwarder', forwards: on ? vpsForwards() : [] }))
  writeFileSync(configFile.router, JSON.stringify({ role: 'gateway', forwarderPeers: on ? homePeers() : [] }))
}

const x = (end: End | 'server' | 'client4' | 'client6', cmd: string, args: string[], nothrow = false) => lab.exec(lab.ns[end], cmd, args, { nothrow })

/** What either end holds of routing, filtering and links, for before/after comparisons (link-local routes come with DAD, whenever). */
async function snapshot(end: End): Promise<Record<string, string>> {
  const links = JSON.parse((await x(end, 'ip', ['-j', 'link', 'show'])).stdout) as { ifname: string; flags: string[] }[]
  return {
    rules4: (await x(end, 'ip', ['-4', 'rule'])).stdout,
    rules6: (await x(end, 'ip', ['-6', 'rule'])).stdout,
    routes4: (await x(end, 'ip', ['-4', 'route', 'show', 'table', 'all'])).stdout,
    routes6: (await x(end, 'ip', ['-6', 'route', 'show', 'table', 'all'])).stdout.split('\n').filter((l) => !l.startsWith('multicast') && !l.includes(' fe80:')).join('\n'),
    nft: (await x(end, 'nft', ['list', 'ruleset'])).stdout,
    links: links.map((l) => `${l.ifname} ${l.flags.includes('UP') ? 'up' : 'down'}`).sort().join('\n'),
  }
}

/** The pids of wireguard-go processes serving ifname (their control sockets are global: the names are too). */
/** wireguard-go processes serving ifname in this lab's VPS and router (another lab's, or a tunnel test's, are not ours). */
function wireguardGoFor(ifname: string): number[] {
  const inLab = [lab.ns.vps, lab.ns.router].flatMap((ns) => execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8', timeout: 5000 }).split('\n').filter(Boolean))
  return inLab.filter((pid) => {
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
      return argv.some((a) => a.endsWith('wireguard-go')) && argv.includes(ifname)
    } catch {
      return false
    }
  }).map(Number)
}

/** An IPv6 address with every group in four digits, as socat logs it. */
const expand6 = (a: string) => Buffer.from(parseIpv6(a)!).toString('hex').match(/.{4}/g)!.join(':')

const wgEndpoint = async () => (await x('vps', 'wg', ['show', VPS_IF, 'endpoints'])).stdout.trim().split(/\s+/)[1]

/** The client reaches every forwarded service at the VPS's IPv4, and the server names the client's own address. */
async function clientReaches(): Promise<void> {
  const before = lab.server.peers().length
  expect(await lab.fetch(lab.ns.client4, `http://${VPS.ipv4}/`, 10_000)).toBe(`home ${SERVER.ipv4} peer ${CLIENT4.ipv4}\n`)
  expect(await lab.tcpEcho(lab.ns.client4, VPS.ipv4, SERVER.tcpEcho, 'hello over the tunnel\n')).toBe('hello over the tunnel\n')
  expect(await lab.udpEcho(lab.ns.client4, VPS.ipv4, SERVER.udpEcho, 'datagram\n', 3_000)).toBe('datagram\n')
  const seen = lab.server.peers().slice(before)
  expect(seen.map((p) => `${p.proto} ${p.peer} ${p.local}`).sort()).toEqual(['http', 'tcp', 'udp'].map((p) => `${p} ${CLIENT4.ipv4} ${SERVER.ipv4}`))
}

describe.skipIf(!isRoot())('forwarder kernel mode, WireGuard over IPv6 through wireguard-go', () => {
  const baseline: Partial<Record<End, Record<string, string>>> = {}

  beforeAll(async () => {
    lab = await createForwarderLab({ prefix: 'fwk' })
    for (const end of ['vps', 'router'] as End[]) {
      const key = execFileSync('wg', ['genkey'], { encoding: 'utf8' }).trim()
      keyFile[end] = path.join(lab.dir, `${end}.key`)
      writeFileSync(keyFile[end], `${key}\n`, { mode: 0o600 })
      publicKey[end] = execFileSync('wg', ['pubkey'], { input: `${key}\n`, encoding: 'utf8' }).trim()
      configFile[end] = path.join(lab.dir, `${end}.json`)
      baseline[end] = await snapshot(end)
    }
    writeConfigs(true)
  }, 60_000)

  afterAll(async () => {
    await lab?.teardown()
  })

  it('before any reconcile the client reaches nothing at the VPS', async () => {
    await expect(lab.tcpEcho(lab.ns.client4, VPS.ipv4, SERVER.tcpEcho, 'x\n', 1_000)).rejects.toThrow()
  })

  it('prints what it would make in a dry run and makes nothing', async () => {
    for (const end of ['vps', 'router'] as End[]) {
      const iface = end === 'vps' ? VPS_IF : HOME_IF
      const r = await job(end, ['--dry-run'], false)
      expect(r.code, r.stderr).toBe(0)
      const printed = r.stdout + r.stderr
      expect(printed).toContain(`wireguard-go --foreground ${iface}`)
      expect(printed).toContain(`ip link set dev ${iface} up`)
      expect(printed).toContain('nft -f -')
      expect(printed).not.toMatch(/PrivateKey|private-key/i)
      expect(await snapshot(end)).toEqual(baseline[end])
      expect(wireguardGoFor(iface)).toEqual([])
    }
  })

  it('reconciles both ends: the tunnel, the DNAT and the policy routing are made', async () => {
    const home = await reconcile('router')
    const vps = await reconcile('vps')
    const actions = (r: Reconcile) => r.tunnels.map((t: KernelOutcome) => `${t.side} ${t.name} ${t.iface} ${t.action} ${t.remote}`)
    expect(actions(home)).toEqual([`peer vps ${HOME_IF} created ${VPS.ipv6}`])
    expect(actions(vps)).toEqual([`forward web,ssh,echo ${VPS_IF} created ${ROUTER.wanIpv6}`])
    expect(home.nft).toBe('written')
    expect(vps.nft).toBe('written')
    expect(home.changes).toBeGreaterThan(0)
    expect(vps.changes).toBeGreaterThan(0)
    expect(wireguardGoFor(VPS_IF)).toHaveLength(1)
    expect(wireguardGoFor(HOME_IF)).toHaveLength(1)
  })

  it('lets the IPv4-only client reach HTTP, TCP echo and UDP echo, and the server sees the client\'s own IPv4', async () => {
    await clientReaches()
    // What GET /forwarder and /metrics say of the tunnels (the runner's own function, on each end's store).
    for (const [end, iface, side, remote] of [['vps', VPS_IF, 'forward', ROUTER.wanIpv6], ['router', HOME_IF, 'peer', VPS.ipv6]] as const) {
      const [t, ...more] = await kernelTunnelStatus(openStore({ dataDir: envOf(end).DUALGATE_DATA_DIR }), nsSh(lab.ns[end]))
      expect(more).toEqual([])
      expect(t).toMatchObject({ iface, side, transport: 'wireguard', link: 'up', remote })
      expect(t.rxBytes).toBeGreaterThan(0)
      expect(t.txBytes).toBeGreaterThan(0)
      // One connection (UDP: one flow) each, counted by the DNAT rule of each forward on the VPS.
      expect(t.opened).toEqual(side === 'forward' ? { web: 1, ssh: 1, echo: 1 } : {})
      if (side === 'forward') expect(exposition(tunnelFamilies([t]))).toContain(`dualgate_forward_kernel_connections_total{forward="ssh",iface="${VPS_IF}"} 1\n`)
    }
  })

  it('leaves the router\'s other traffic on its default route', async () => {
    // IPv6 from the router leaves by eth0; its connection arrives from its WAN address.
    expect((await x('router', 'ip', ['-6', 'route', 'get', CLIENT6.ipv6])).stdout).toMatch(/ dev eth0 /)
    const out = path.join(lab.dir, 'c6-listener.out')
    lab.spawn(lab.ns.client6, 'socat', ['-d', '-d', '-u', 'TCP6-LISTEN:9000,reuseaddr', 'OPEN:/dev/null'], { log: out })
    for (let i = 0; i < 50 && !(await x('client6', 'ss', ['-Hlnt', 'sport', '=', ':9000'])).stdout.trim(); i++) await new Promise((r) => setTimeout(r, 100))
    const v6 = await lab.exec(lab.ns.router, 'socat', ['-u', '-', `TCP6:[${CLIENT6.ipv6}]:9000,connect-timeout=3`], { input: 'from the router\n', nothrow: true, timeoutMs: 5_000 })
    expect(v6.code, v6.stderr).toBe(0)
    // The listener logs the connection a moment after the sender has finished.
    const accepted = `accepting connection from AF=10 [${expand6(ROUTER.wanIpv6)}]`
    for (let i = 0; i < 30 && !readFileSync(out, 'utf8').includes(accepted); i++) await new Promise((r) => setTimeout(r, 100))
    expect(readFileSync(out, 'utf8')).toContain(accepted)
    // IPv4 the router or a server starts has no route (an IPv6-only home): nothing enters the tunnel.
    const fromRouter = await x('router', 'ip', ['-4', 'route', 'get', CLIENT4.ipv4], true)
    expect(fromRouter.stdout).not.toContain(HOME_IF)
    const fromServer = await x('router', 'ip', ['-4', 'route', 'get', CLIENT4.ipv4, 'from', SERVER.ipv4, 'iif', ROUTER.lanIf], true)
    expect(fromServer.stdout + fromServer.stderr).not.toContain(HOME_IF)
    expect(fromServer.code).not.toBe(0)
    await expect(lab.tcpEcho(lab.ns.server, CLIENT4.ipv4, 9, 'x\n', 1_000)).rejects.toThrow()
    // Only packets with the peer's mark (a connection that came in through the tunnel) take it.
    const rules = JSON.parse((await x('router', 'ip', ['-j', '-4', 'rule'])).stdout) as { priority: number; fwmark?: string; table: string }[]
    const peerRule = rules.find((r) => r.fwmark && r.table !== 'main')
    expect(peerRule).toBeDefined()
    const viaMark = await x('router', 'ip', ['-4', 'route', 'get', CLIENT4.ipv4, 'from', SERVER.ipv4, 'iif', ROUTER.lanIf, 'mark', peerRule!.fwmark!])
    expect(viaMark.stdout).toContain(`dev ${HOME_IF}`)
  })

  it('changes nothing on a second reconcile at either end', async () => {
    const before = { vps: await snapshot('vps'), router: await snapshot('router') }
    for (const end of ['router', 'vps'] as End[]) {
      const r = await reconcile(end)
      expect(r.changes, `${end}: ${JSON.stringify(r)}`).toBe(0)
      expect(r.nft).toBe('unchanged')
      expect(r.tunnels.map((t) => t.action)).toEqual(['unchanged'])
    }
    expect(await snapshot('vps')).toEqual(before.vps)
    expect(await snapshot('router')).toEqual(before.router)
  })

  it('lists the forwards and the peer', async () => {
    const vps = (await job<List>('vps', ['list'])).result
    expect(vps.forwards.map((f: ForwardRow) => `${f.name} ${f.mode} ${f.ports} ${f.proto} ${f.address} ${f.state} ${f.opened}`)).toEqual([
      `web kernel 80 tcp ${ROUTER.wanIpv6} ${VPS_IF} up 1`,
      `ssh kernel 23 tcp ${ROUTER.wanIpv6} ${VPS_IF} up 1`,
      `echo kernel 7 udp ${ROUTER.wanIpv6} ${VPS_IF} up 1`,
    ])
    const home = (await job<List>('router', ['list'])).result
    expect(home.peers.map((p: PeerRow) => `${p.name} ${p.iface} ${p.transport} ${p.address} ${p.link} ${p.servers.join(',')} ${p.ports}`)).toEqual([
      `vps ${HOME_IF} wireguard ${VPS.ipv6} up ${SERVER.ipv4} 80,23,7`,
    ])
    const text = await job('vps', ['list'], false)
    expect(text.code).toBe(0)
    expect(text.stdout).toContain('web')
    expect(text.stdout).toContain(ROUTER.wanIpv6)
  })

  it('follows the home\'s new address when its name changes: the VPS\'s runner sees the move and runs the job', async () => {
    // The runner with the job's schedule off: only its watch over the tunnel's name can start the job.
    const runnerLog = path.join(lab.dir, 'vps-runner.log')
    const runner = lab.spawn(lab.ns.vps, process.execPath, ['--import=tsx', path.join(ROOT, 'lib/runner/main.ts')], {
      log: runnerLog,
      env: { ...envOf('vps'), DUALGATE_API_PORT: '5074', DUALGATE_SCHEDULE_FORWARDER: '', DUALGATE_SCHEDULE_DIAGNOSE: '', DUALGATE_FORWARDER_RESOLVE_INTERVAL: String(WATCH_INTERVAL_S) },
    })
    try {
      // Its start-up run of the job finds everything as it is.
      await waitFor('the runner\'s first forwarder run', 30_000, () => /forwarder \(start\): ok/.test(readFileSync(runnerLog, 'utf8')))
      await x('router', 'ip', ['-6', 'addr', 'add', `${ROUTER_NEW_V6}/64`, 'dev', 'eth0', 'nodad'])
      await lab.dns.set(DNS.router, { aaaa: ROUTER_NEW_V6 })
      await x('router', 'ip', ['-6', 'addr', 'del', `${ROUTER.wanIpv6}/64`, 'dev', 'eth0'])
      const t0 = Date.now()
      await waitFor('the tunnel\'s endpoint to follow', (WATCH_INTERVAL_S + 20) * 1000, async () => (await wgEndpoint()) === `[${ROUTER_NEW_V6}]:${WG_PORT}`, 250)
      console.info(`forwarder-kernel: the tunnel followed a changed AAAA in ${((Date.now() - t0) / 1000).toFixed(1)} s (watch interval ${WATCH_INTERVAL_S} s)`)
      expect(readFileSync(runnerLog, 'utf8')).toContain(`${DNS.router} resolves to ${ROUTER_NEW_V6}, no longer ${ROUTER.wanIpv6}: asking the forwarder job to follow on ${VPS_IF}`)
      // The endpoint moves part-way through the run; the runner says the run's end when its process exits.
      await waitFor('the runner\'s forwarder run to end', 30_000, () => /forwarder \(event[^)]*\): ok/.test(readFileSync(runnerLog, 'utf8')))
    } finally {
      kill(runner, 'SIGTERM')
      await waitFor('the VPS\'s runner to stop', 10_000, () => !isAlive(runner))
    }
    await clientReaches()
    expect((await reconcile('vps')).changes).toBe(0)
  })

  it('prints a removal in a dry run and changes nothing', async () => {
    const before = { vps: await snapshot('vps'), router: await snapshot('router') }
    writeConfigs(false)
    for (const end of ['vps', 'router'] as End[]) {
      const r = await job(end, ['--dry-run'], false)
      expect(r.code, r.stderr).toBe(0)
      expect(r.stdout + r.stderr).toMatch(/ip link del dev dg[fp]-/)
      expect(r.stdout + r.stderr).toContain('nft delete table inet dualgate_fwd')
    }
    expect(await snapshot('vps')).toEqual(before.vps)
    expect(await snapshot('router')).toEqual(before.router)
    await clientReaches()
  })

  it('removes every rule, route, table, nft table and interface on both ends when the config goes', async () => {
    writeConfigs(false)
    for (const end of ['vps', 'router'] as End[]) {
      const r = await reconcile(end)
      expect(r.tunnels.map((t) => t.action)).toEqual(['removed'])
      expect(r.nft).toBe('removed')
    }
    for (const end of ['vps', 'router'] as End[]) {
      const now = await snapshot(end)
      expect((await x(end, 'nft', ['list', 'tables'])).stdout).not.toContain('dualgate_fwd')
      expect((await x(end, 'ip', ['link', 'show'])).stdout).not.toMatch(/dg[fp]-/)
      expect(now.rules4).toBe(baseline[end]!.rules4)
      expect(now.routes4).toBe(baseline[end]!.routes4)
      expect(now.nft).toBe(baseline[end]!.nft)
      expect(now.links).toBe(baseline[end]!.links)
      const iface = end === 'vps' ? VPS_IF : HOME_IF
      for (let i = 0; i < 20 && wireguardGoFor(iface).length > 0; i++) await new Promise((r) => setTimeout(r, 100))
      expect(wireguardGoFor(iface)).toEqual([])
      expect((await reconcile(end)).changes).toBe(0)
    }
    await expect(lab.tcpEcho(lab.ns.client4, VPS.ipv4, SERVER.tcpEcho, 'x\n', 1_000)).rejects.toThrow()
  })
})
