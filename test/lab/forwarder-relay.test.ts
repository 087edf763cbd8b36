// The VPS forwarder in relay mode (issue 13), in the forwarder lab (test/lab/forwarder-lab.ts): the runner on the
// VPS, role forwarder, relays the VPS's IPv4 and IPv6 ports to the home server it finds by name, through the
// lab's dnsmasq, whose answer the tests change and make fail. Needs root (network namespaces); skipped otherwise.
import { chmodSync, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createForwarderLab, FWLAB, isRoot, type ForwarderLab } from './forwarder-lab.ts'

const ROOT = path.resolve(import.meta.dirname, '../..')
// Not 5060 or 5061: fetch refuses the ports on its list of bad ports (SIP), and so does the config.
const API_PORT = 5071
const INTERVAL_S = 5
const GRACE_S = 3
const V4 = FWLAB.vps.ipv4
const V6 = `[${FWLAB.vps.ipv6}]`
const HOME = FWLAB.dns.home
const OLD = FWLAB.server.ipv6
const NEW = FWLAB.server.ipv6Alt
const C4 = FWLAB.client4.ipv4

const forwards = [
  { name: 'web', port: 8080, targetPort: FWLAB.server.http, target: HOME },
  { name: 'echo', port: 2323, targetPort: FWLAB.server.tcpEcho, target: HOME },
  { name: 'dgram', port: 7007, proto: 'udp', targetPort: FWLAB.server.udpEcho, target: HOME },
  { name: 'proxied', port: 8081, targetPort: FWLAB.server.proxyHttp, target: HOME, proxyProtocol: true },
]

interface ForwardStatus { name: string; address?: string; resolveError?: string; resolveFailures: number; targetChanges: number; listening: boolean; connections: number; bytes: number; error?: string; listeners: { wanted: number; open: number; failed: number } }

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

describe.skipIf(!isRoot())('forwarder, relay mode (lab)', () => {
  let lab: ForwarderLab
  let runnerPid = 0
  let configFile = ''
  let notes = ''
  let runnerLog = ''

  const writeConfig = (list: Record<string, unknown>[]) => writeFileSync(configFile, JSON.stringify({
    role: 'forwarder',
    forwarderDns: [FWLAB.dns.ipv6],
    forwarderResolveInterval: INTERVAL_S,
    forwarderGrace: GRACE_S,
    forwarderNotifyCommand: path.join(lab.dir, 'notify.sh'),
    forwards: list,
  }))
  const api = async <T>(p: string) => JSON.parse(await lab.fetch(lab.ns.vps, `http://127.0.0.1:${API_PORT}${p}`)) as T
  const status = async () => (await api<{ forwards: ForwardStatus[]; problem?: string }>('/forwarder'))
  const forward = async (name: string) => (await status()).forwards.find((f) => f.name === name)!
  async function until<T>(what: string, fn: () => Promise<T>, ok: (v: T) => boolean, ms: number): Promise<T> {
    const end = Date.now() + ms
    let last: T | undefined
    for (let i = 0; i < 1000; i++) {
      try { last = await fn(); if (ok(last)) return last } catch (err) { last = String(err) as T }
      if (Date.now() > end) break
      await sleep(200)
    }
    throw new Error(`${what}: still ${JSON.stringify(last)} after ${ms} ms`)
  }
  const reload = () => process.kill(runnerPid, 'SIGHUP')
  const jobEnv = () => ({ DUALGATE_CONFIG: configFile, DUALGATE_UCI_FILE: path.join(lab.dir, 'no-uci'), DUALGATE_DATA_DIR: path.join(lab.dir, 'data'), DUALGATE_RUN_DIR: path.join(lab.dir, 'run'), DUALGATE_API_PORT: String(API_PORT) })
  const job = async (name: string, args: string[]) => {
    const r = await lab.exec(lab.ns.vps, process.execPath, ['--import=tsx', path.join(ROOT, `jobs/${name}.ts`), ...args, '--json'], { env: jobEnv(), timeoutMs: 60_000, nothrow: true })
    return JSON.parse(r.stdout) as unknown
  }
  const forwarderCheck = async () => ((await job('diagnose', [])) as { checks: { id: string; status: string; reason: string }[] }).checks.find((c) => c.id === 'forwarder')!

  beforeAll(async () => {
    lab = await createForwarderLab({ prefix: 'fwr', dnsTtl: 2 })
    await lab.dns.set(HOME, { aaaa: OLD })
    configFile = path.join(lab.dir, 'dualgate.json')
    notes = path.join(lab.dir, 'notes')
    writeFileSync(notes, '')
    writeFileSync(path.join(lab.dir, 'notify.sh'), `#!/bin/sh\necho "$@" >> ${notes}\n`)
    chmodSync(path.join(lab.dir, 'notify.sh'), 0o755)
    writeConfig(forwards)
    runnerLog = path.join(lab.dir, 'runner.log')
    const dataDir = path.join(lab.dir, 'data')
    runnerPid = lab.spawn(lab.ns.vps, process.execPath, ['--import=tsx', path.join(ROOT, 'lib/runner/main.ts')], {
      log: runnerLog,
      env: {
        DUALGATE_CONFIG: configFile,
        DUALGATE_UCI_FILE: path.join(lab.dir, 'no-uci'),
        DUALGATE_DATA_DIR: dataDir,
        DUALGATE_RUN_DIR: path.join(lab.dir, 'run'),
        DUALGATE_API_PORT: String(API_PORT),
        DUALGATE_SCHEDULE_FORWARDER: '',
        DUALGATE_SCHEDULE_DIAGNOSE: '',
      },
    })
    await until('every forward listening', status, (s) => s.forwards.length === 4 && s.forwards.every((f) => f.listening && f.address === OLD), 30_000)
  }, 120_000)

  afterAll(async () => { await lab?.teardown() })

  it('the IPv4-only client reaches HTTP, TCP echo and UDP echo by the home\'s name; so does an IPv6 client', async () => {
    expect(await lab.fetch(lab.ns.client4, `http://${V4}:8080/`)).toBe(`home ${OLD} peer ${FWLAB.vps.ipv6}\n`)
    expect(await lab.tcpEcho(lab.ns.client4, V4, 2323, 'over ipv4')).toBe('over ipv4')
    expect(await lab.udpEcho(lab.ns.client4, V4, 7007, 'datagram')).toBe('datagram')
    expect(await lab.fetch(lab.ns.client6, `http://${V6}:8080/`)).toMatch(/^home 2001:db8:250::10 peer /)
    expect(await lab.tcpEcho(lab.ns.client6, FWLAB.vps.ipv6, 2323, 'over ipv6')).toBe('over ipv6')
    const web = await forward('web')
    expect(web.bytes).toBeGreaterThan(0)
    expect(web.listeners).toEqual({ wanted: 2, open: 2, failed: 0 })
  })

  it('with PROXY v2 on, the home server logs the client\'s own address', async () => {
    // HAProxy answers with the addresses the PROXY header gave it: the client's, and the VPS's that it reached.
    expect(await lab.fetch(lab.ns.client4, `http://${V4}:8081/`)).toBe(`home ${V4} peer ${C4}\n`)
    expect(lab.server.peers()).toContainEqual(expect.objectContaining({ proto: 'proxy', peer: C4 }))
  })

  it('forwarder list, GET /metrics: each forward with its address, connections and bytes', async () => {
    const metrics = await lab.fetch(lab.ns.vps, `http://127.0.0.1:${API_PORT}/metrics`)
    expect(metrics).toMatch(/^dualgate_forward_bytes_total\{forward="web"\} [1-9]\d*$/m)
    expect(metrics).toMatch(/^dualgate_forward_target_changes_total\{forward="echo"\} 0$/m)
    const list = await job('forwarder', ['list']) as { forwards: { name: string; mode: string; address?: string; state: string; bytes?: number }[] }
    expect(list.forwards.map((f) => [f.name, f.mode, f.address, f.state])).toEqual(forwards.map((f) => [f.name, 'relay', OLD, 'listening']))
    expect(list.forwards.find((f) => f.name === 'web')!.bytes).toBeGreaterThan(0)
    expect(await forwarderCheck()).toMatchObject({ status: 'pass', reason: expect.stringContaining('4 relay forwards, 0 kernel tunnels') })
  }, 90_000)

  it('an AAAA change: new connections reach the new address within resolveInterval + 2 s, one notice per forward, old connections end after the grace', async () => {
    const held = await lab.hold(lab.ns.client4, V4, 2323)
    expect(await held.echo('before')).toBe('before')
    const pid = runnerPid
    await lab.dns.set(HOME, { aaaa: NEW })
    const changed = Date.now()
    await until('new connections at the new address', () => lab.fetch(lab.ns.client4, `http://${V4}:8080/`, 2000), (body) => body.startsWith(`home ${NEW} `), (INTERVAL_S + 2) * 1000)
    const followedS = (Date.now() - changed) / 1000
    console.info(`forwarder relay: new connections followed the AAAA change after ${followedS.toFixed(1)} s (interval ${INTERVAL_S} s)`)
    expect(await lab.tcpEcho(lab.ns.client4, V4, 2323, 'after')).toBe('after')
    expect(lab.server.peers().filter((p) => p.proto === 'tcp').at(-1)).toMatchObject({ peer: FWLAB.vps.ipv6, local: NEW })
    // The held connection to the old address lasts the grace, then is closed.
    expect(held.isClosed()).toBe(false)
    await Promise.race([held.closed, sleep((GRACE_S + 5) * 1000)])
    expect(held.isClosed()).toBe(true)
    await until('every forward moved', status, (s) => s.forwards.every((f) => f.address === NEW), 5000)
    const lines = readFileSync(notes, 'utf8').trim().split('\n').sort()
    expect(lines).toEqual(forwards.map((f) => `${f.name} ${OLD} ${NEW}`).sort())
    expect((await forward('web')).targetChanges).toBe(1)
    expect(process.kill(pid, 0)).toBe(true)
  }, 60_000)

  it('DNS failing for several intervals: forwarding to the last good address never stops, nothing restarts, one warning', async () => {
    const before = readFileSync(runnerLog, 'utf8').length
    const opened = (await lab.exec(lab.ns.vps, 'ss', ['-Htln'])).stdout
    lab.dns.fail(true)
    try {
      const end = Date.now() + 3 * INTERVAL_S * 1000
      let rounds = 0
      while (Date.now() < end && rounds < 100) {
        expect(await lab.tcpEcho(lab.ns.client4, V4, 2323, `round ${rounds}`)).toBe(`round ${rounds}`)
        rounds++
        await sleep(500)
      }
      expect(rounds).toBeGreaterThan(10)
      const web = await until('failures counted', () => forward('web'), (f) => f.resolveFailures >= 2, 10_000)
      expect(web.address).toBe(NEW)
      expect(web.resolveError).toBeTruthy()
    } finally {
      lab.dns.fail(false)
    }
    expect((await lab.exec(lab.ns.vps, 'ss', ['-Htln'])).stdout).toBe(opened)
    await until('DNS recovered', () => forward('web'), (f) => f.resolveError === undefined, (INTERVAL_S + 5) * 1000)
    const log = readFileSync(runnerLog, 'utf8').slice(before)
    expect(log.match(/forwards\.web: cannot resolve home\.lab\.test/g)).toHaveLength(1)
    expect(log.match(/forwards\.web: home\.lab\.test resolves again/g)).toHaveLength(1)
    expect(log).not.toMatch(/listeners added/)
    expect(readFileSync(notes, 'utf8').trim().split('\n')).toHaveLength(forwards.length)
  }, 90_000)

  it('bad config: a port the VPS already uses, and a name that never resolves, get an error naming the key; the rest keeps working', async () => {
    // Something of the VPS's own on a port: the forward that wants it fails, naming forwards.taken.port.
    const squatter = lab.spawn(lab.ns.vps, 'socat', ['TCP4-LISTEN:9090,bind=0.0.0.0,reuseaddr,fork', 'SYSTEM:true'], { log: path.join(lab.dir, 'squatter.log') })
    await until('squatter listening', async () => (await lab.exec(lab.ns.vps, 'ss', ['-Htln', 'sport = :9090'])).stdout, (s) => s.includes(':9090'), 5000)
    writeConfig([...forwards, { name: 'taken', port: 9090, target: HOME, targetPort: 80 }, { name: 'ghost', port: 9091, target: 'nowhere.lab.test', targetPort: 80 }])
    reload()
    const s = await until('errors reported', status, (v) => v.forwards.length === 6 && !!v.forwards.find((f) => f.name === 'taken')?.error && !!v.forwards.find((f) => f.name === 'ghost')?.error, 20_000)
    expect(s.forwards.find((f) => f.name === 'taken')!.error).toMatch(/^forwards\.taken\.port 9090: cannot listen on tcp 0\.0\.0\.0:9090: .*EADDRINUSE/)
    expect(s.forwards.find((f) => f.name === 'ghost')!.error).toMatch(/^forwards\.ghost\.target nowhere\.lab\.test: /)
    expect(await lab.tcpEcho(lab.ns.client4, V4, 2323, 'still here')).toBe('still here')
    const check = await forwarderCheck()
    expect(check.status).toBe('fail')
    expect(check.reason).toMatch(/forwards\.taken\.port 9090: .*forwards\.ghost\.target nowhere\.lab\.test/)
    process.kill(squatter, 'SIGTERM')

    // Two forwards on one port: the whole change is refused, and what ran before keeps running.
    writeConfig([...forwards, { name: 'clash', port: 2323, target: HOME, targetPort: 80 }])
    reload()
    const clash = await until('clash reported', status, (v) => !!v.problem, 10_000)
    expect(clash.problem).toMatch(/forwards echo and clash both take tcp port 2323/)
    expect(await lab.tcpEcho(lab.ns.client4, V4, 2323, 'unchanged')).toBe('unchanged')

    // Port 0 and an unknown mode: the runner keeps its configuration (SIGHUP with a bad file), the forwards keep working.
    for (const bad of [{ name: 'zero', port: 0, target: HOME }, { name: 'odd', port: 9092, target: HOME, mode: 'teleport' }]) {
      const before = readFileSync(runnerLog, 'utf8').length
      writeConfig([...forwards, bad])
      reload()
      const said = await until('reload refused', async () => readFileSync(runnerLog, 'utf8').slice(before), (t) => /SIGHUP/.test(t), 10_000)
      expect(said).toMatch(bad.port === 0 ? /forwards\.zero.*port/ : /forwards\.odd.*mode/)
      expect(await lab.tcpEcho(lab.ns.client4, V4, 2323, 'kept')).toBe('kept')
    }
  }, 90_000)

  it('removing the forwards closes their listeners', async () => {
    writeConfig([])
    reload()
    await until('no forwards', status, (s) => s.forwards.length === 0, 10_000)
    const ours = (out: string) => out.split('\n').filter((l) => forwards.some((f) => l.includes(`:${f.port} `)))
    await until('their listeners closed', async () => ours((await lab.exec(lab.ns.vps, 'ss', ['-Htuln'])).stdout), (l) => l.length === 0, 5000)
    expect(readFileSync(runnerLog, 'utf8')).not.toMatch(/ERROR|Unhandled|TypeError/)
  }, 30_000)
})
