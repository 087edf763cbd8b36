// The forwarder's relay mode (issue 13) side by side with what people run today, in the forwarder lab
// (test/lab/forwarder-lab.ts: a dual-stack VPS, an IPv6-only home router, a home server, an IPv4-only client,
// an IPv6 client, a DNS server whose AAAA record we change):
//
// 1. Throughput: one iperf3 stream for 5 s each way from the IPv4-only client to the home server through the
//    VPS, by dualgate's runner (role forwarder, a relay forward to the home's name) and by one
//    `socat TCP4-LISTEN:port,fork,reuseaddr TCP6:[home]:5201`; the ceiling is plain IPv6 routing from the IPv6
//    client straight to the server. Best of 3 interleaved rounds; the forwarder's CPU seconds per GB over all
//    rounds (the runner's utime+stime; socat's own and its reaped forked children's).
// 2. Memory, idle: the runner with 100 relay forwards (ports 10000-10099, IPv4) against 100 socat processes
//    (RSS and PSS from smaps_rollup, summed over the socats: they share pages, which PSS divides among them).
// 3. Re-resolution: the time from an AAAA change until a new connection reaches the new address (the runner
//    resolves every forwarderResolveInterval = 5 s; DNS TTL 2 s), a connection every 100 ms, 3 changes, each
//    after a random pause so the change falls anywhere in the resolution schedule.
//
// The runner is the build (`tsc --noCheck` into a temp dir, run by plain node as under systemd), so its
// memory has no TypeScript loader in it. Numbers from one run on a shared machine: read the ratios.
//
//   node --import=tsx bench/forwarder.ts          (root; about two and a half minutes)
import { execFile } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { createForwarderLab, FWLAB, type ForwarderLab } from '../test/lab/forwarder-lab.ts'
import { memoryOf } from './netns.ts'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const API_PORT = 5072
const HOME = FWLAB.dns.home
const OLD = FWLAB.server.ipv6
const NEW = FWLAB.server.ipv6Alt
const VPS4 = FWLAB.vps.ipv4
const IPERF = 5201
const RELAY_PORT = 6001
const SOCAT_PORT = 6002
const WEB_PORT = 8080
const IPERF_SECONDS = 5
const ROUNDS = 3
const RESOLVE_INTERVAL_S = 5
const DNS_TTL_S = 2
const CHANGES = 3
const POLL_MS = 100
const MANY = 100
const MANY_FROM = 10_000

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

function run(cmd: string, args: string[], timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, encoding: 'utf8', maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')}: ${stderr.trim() || stdout.trim() || err.message}`))
      else resolve(stdout)
    })
  })
}

async function until<T>(what: string, fn: () => Promise<T>, ok: (v: T) => boolean, ms: number, everyMs = 200): Promise<T> {
  const end = Date.now() + ms
  let last: unknown
  for (let i = 0; i < 10_000; i++) {
    try { const v = await fn(); last = v; if (ok(v)) return v } catch (err) { last = String(err) }
    if (Date.now() > end) break
    await sleep(everyMs)
  }
  throw new Error(`${what}: still ${JSON.stringify(last)?.slice(0, 500)} after ${ms} ms`)
}

/** The runner as `npm run build` makes it, in a temp root of its own (dist/, package.json, hooks and node_modules linked). */
async function buildRunner(dir: string): Promise<string> {
  await run(process.execPath, [path.join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', path.join(ROOT, 'tsconfig.build.json'), '--outDir', path.join(dir, 'dist'), '--noCheck'], 120_000)
  copyFileSync(path.join(ROOT, 'package.json'), path.join(dir, 'package.json'))
  symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'))
  symlinkSync(path.join(ROOT, 'hooks'), path.join(dir, 'hooks'))
  const main = path.join(dir, 'dist/lib/runner/main.js')
  if (!existsSync(main)) throw new Error(`the build has no ${main}`)
  return main
}

interface Forward { name: string; listen: string; port: number; target: string; targetPort: number }

interface Runner { pid: number; config: string; log: string }

function writeRunnerConfig(file: string, forwards: Forward[]): void {
  writeFileSync(file, JSON.stringify({
    role: 'forwarder',
    forwarderDns: [FWLAB.dns.ipv6],
    forwarderResolveInterval: RESOLVE_INTERVAL_S,
    forwards,
  }))
}

function startRunner(lab: ForwarderLab, main: string, name: string, forwards: Forward[]): Runner {
  const dir = path.join(lab.dir, name)
  mkdirSync(dir)
  const config = path.join(dir, 'dualgate.json')
  const log = path.join(dir, 'runner.log')
  writeRunnerConfig(config, forwards)
  // `ip netns exec` execs in place: the PID is node's own.
  const pid = lab.spawn(lab.ns.vps, process.execPath, [main], {
    log,
    env: {
      DUALGATE_CONFIG: config,
      DUALGATE_UCI_FILE: path.join(dir, 'no-uci'),
      DUALGATE_DATA_DIR: path.join(dir, 'data'),
      DUALGATE_RUN_DIR: path.join(dir, 'run'),
      DUALGATE_API_PORT: String(API_PORT),
      DUALGATE_SCHEDULE_FORWARDER: '',
      DUALGATE_SCHEDULE_DIAGNOSE: '',
    },
  })
  return { pid, config, log }
}

interface ForwardStatus { name: string; address?: string; listening: boolean; error?: string }

async function forwarderStatus(lab: ForwarderLab): Promise<ForwardStatus[]> {
  const body = JSON.parse(await lab.fetch(lab.ns.vps, `http://127.0.0.1:${API_PORT}/forwarder`, 3000)) as { forwards: ForwardStatus[] }
  return body.forwards
}

async function waitForwards(lab: ForwarderLab, runner: Runner, count: number, address: string): Promise<void> {
  await until(`${count} forwards listening at ${address} (runner log ${tail(runner.log)})`, () => forwarderStatus(lab),
    (f) => f.length === count && f.every((x) => x.listening && x.address === address), 60_000, 300)
}

const tail = (file: string) => { try { return readFileSync(file, 'utf8').split('\n').slice(-8).join(' | ') } catch { return '' } }

function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return !/^[ZX]/.test(stat.slice(stat.lastIndexOf(')') + 2))
  } catch {
    return false
  }
}

/** SIGTERM, then SIGKILL when it has not gone within graceMs. */
async function stopPid(pid: number, graceMs = 5000): Promise<void> {
  try { process.kill(pid, 'SIGTERM') } catch { return }
  const end = Date.now() + graceMs
  while (isAlive(pid) && Date.now() < end) await sleep(50)
  if (isAlive(pid)) try { process.kill(pid, 'SIGKILL') } catch { /* gone */ }
}

/** From /proc/PID/stat, in seconds: utime+stime, and with `children` the reaped children's cutime+cstime too. */
function cpuSeconds(pid: number, children: boolean): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
  return fields.slice(11, children ? 15 : 13).reduce((sum, f) => sum + Number(f), 0) / 100
}

/** Until socat has reaped the children it forked for the connections, so their CPU time is in its cutime. */
async function waitReaped(pid: number): Promise<void> {
  const children = () => readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim()
  await until(`socat ${pid} to reap its children`, async () => children(), (c) => c === '', 5000, 50)
}

async function waitListening(lab: ForwarderLab, ns: string, ports: [number, number], count: number): Promise<void> {
  const filter = ['sport', '>=', `:${ports[0]}`, 'and', 'sport', '<=', `:${ports[1]}`]
  await until(`${count} listeners on ports ${ports[0]}-${ports[1]} in ${ns}`, async () => (await lab.exec(ns, 'ss', ['-Hltn', ...filter])).stdout.split('\n').filter((l) => l.trim()).length,
    (n) => n >= count, 30_000, 100)
}

interface Path { name: string; ns: string; host: string; port: number; pid?: number; children: boolean }

async function iperf(lab: ForwarderLab, p: Path, reverse: boolean): Promise<{ mbps: number; bytes: number }> {
  const args = ['-c', p.host, '-p', String(p.port), '-t', String(IPERF_SECONDS), '-J', ...(reverse ? ['-R'] : [])]
  const r = await lab.exec(p.ns, 'iperf3', args, { timeoutMs: (IPERF_SECONDS + 20) * 1000, nothrow: true })
  let j: { end?: { sum_received?: { bits_per_second: number; bytes: number } }; error?: string } = {}
  try { j = JSON.parse(r.stdout) } catch { /* said below */ }
  if (!j.end?.sum_received) throw new Error(`iperf3 ${args.join(' ')} in ${p.ns}: ${j.error ?? (r.stderr.trim() || 'no result')}`)
  return { mbps: j.end.sum_received.bits_per_second / 1e6, bytes: j.end.sum_received.bytes }
}

interface Throughput { name: string; up: number[]; down: number[]; cpu: number; bytes: number }

async function throughput(lab: ForwarderLab, paths: Path[]): Promise<Throughput[]> {
  const rows = paths.map((p) => ({ name: p.name, up: [] as number[], down: [] as number[], cpu: 0, bytes: 0 }))
  for (let round = 0; round < ROUNDS; round++) {
    for (const [i, p] of paths.entries()) {
      const cpu0 = p.pid ? cpuSeconds(p.pid, p.children) : 0
      const up = await iperf(lab, p, false)
      const down = await iperf(lab, p, true)
      if (p.children && p.pid) await waitReaped(p.pid)
      else await sleep(300)
      rows[i]!.up.push(up.mbps)
      rows[i]!.down.push(down.mbps)
      if (p.pid) { rows[i]!.cpu += cpuSeconds(p.pid, p.children) - cpu0; rows[i]!.bytes += up.bytes + down.bytes }
    }
  }
  return rows
}

/** Seconds from each AAAA change until a new connection through the relay reached the new address; the name's address at the end. */
async function followTimes(lab: ForwarderLab): Promise<{ times: number[]; address: string }> {
  const times: number[] = []
  let current: string = OLD
  for (let i = 0; i < CHANGES; i++) {
    const next = current === OLD ? NEW : OLD
    await sleep(Math.random() * RESOLVE_INTERVAL_S * 1000)
    await lab.dns.set(HOME, { aaaa: next })
    const changed = Date.now()
    await until(`a new connection to reach ${next}`, () => lab.fetch(lab.ns.client4, `http://${VPS4}:${WEB_PORT}/`, 2000),
      (body) => body.startsWith(`home ${next} `), (RESOLVE_INTERVAL_S + 10) * 1000, POLL_MS)
    times.push((Date.now() - changed) / 1000)
    current = next
  }
  return { times, address: current }
}

interface Mem { rss: number; pss: number }
interface Memory { runnerIdle: Mem; runner: Mem; socat: Mem; socats: number }

/** Ends with the 100 socats running: the lab's teardown stops them (and the runner, when this fails). */
async function memory(lab: ForwarderLab, main: string, home: string): Promise<Memory> {
  const runner = startRunner(lab, main, 'runner-memory', [])
  await waitForwards(lab, runner, 0, '')
  await sleep(2000)
  const runnerIdle = memoryOf(runner.pid)
  const many = Array.from({ length: MANY }, (_, i): Forward => ({ name: `f${i}`, listen: '4', port: MANY_FROM + i, target: HOME, targetPort: IPERF }))
  writeRunnerConfig(runner.config, many)
  process.kill(runner.pid, 'SIGHUP')
  await waitForwards(lab, runner, MANY, home)
  await waitListening(lab, lab.ns.vps, [MANY_FROM, MANY_FROM + MANY - 1], MANY)
  await sleep(2000)
  const runnerMem = memoryOf(runner.pid)
  await stopPid(runner.pid)

  const socats = many.map((f) => lab.spawn(lab.ns.vps, 'socat', [`TCP4-LISTEN:${f.port},fork,reuseaddr`, `TCP6:[${home}]:${IPERF}`], { log: path.join(lab.dir, 'socat-many.log') }))
  await waitListening(lab, lab.ns.vps, [MANY_FROM, MANY_FROM + MANY - 1], MANY)
  await sleep(2000)
  const socat = { rss: 0, pss: 0 }
  for (const pid of socats) {
    const m = memoryOf(pid)
    socat.rss += m.rss
    socat.pss += m.pss
  }
  return { runnerIdle, runner: runnerMem, socat, socats: socats.length }
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench/forwarder.ts needs root (network namespaces)')
  const started = Date.now()
  const loadBefore = os.loadavg()[0]!
  const build = mkdtempSync(path.join(os.tmpdir(), 'dualgate-fwb-build-'))
  let lab: ForwarderLab | undefined
  try {
    const main = await buildRunner(build)
    lab = await createForwarderLab({ prefix: 'fwb', dnsTtl: DNS_TTL_S })
    await lab.dns.set(HOME, { aaaa: OLD })
    for (const addr of [OLD, NEW]) lab.spawn(lab.ns.server, 'iperf3', ['-s', '-B', addr, '-p', String(IPERF)], { log: path.join(lab.dir, `iperf3-${addr}.log`) })
    await waitListening(lab, lab.ns.server, [IPERF, IPERF], 2)

    const runner = startRunner(lab, main, 'runner', [
      { name: 'iperf', listen: '4', port: RELAY_PORT, target: HOME, targetPort: IPERF },
      { name: 'web', listen: '4', port: WEB_PORT, target: HOME, targetPort: FWLAB.server.http },
    ])
    await waitForwards(lab, runner, 2, OLD)
    const socat = lab.spawn(lab.ns.vps, 'socat', [`TCP4-LISTEN:${SOCAT_PORT},fork,reuseaddr`, `TCP6:[${OLD}]:${IPERF}`], { log: path.join(lab.dir, 'socat.log') })
    await waitListening(lab, lab.ns.vps, [SOCAT_PORT, SOCAT_PORT], 1)
    const listensOnIperf = (await lab.exec(lab.ns.vps, 'ss', ['-Hltn', 'sport', '=', `:${IPERF}`])).stdout.trim()
    if (listensOnIperf) throw new Error(`the VPS listens on ${IPERF} itself: ${listensOnIperf}`)

    const rows = await throughput(lab, [
      { name: 'plain IPv6 routing', ns: lab.ns.client6, host: OLD, port: IPERF, children: false },
      { name: 'relay (runner)', ns: lab.ns.client4, host: VPS4, port: RELAY_PORT, pid: runner.pid, children: false },
      { name: 'socat', ns: lab.ns.client4, host: VPS4, port: SOCAT_PORT, pid: socat, children: true },
    ])
    await stopPid(socat)
    const follow = await followTimes(lab)
    await stopPid(runner.pid)
    const mem = await memory(lab, main, follow.address)
    report(rows, mem, follow.times, loadBefore, Date.now() - started)
  } finally {
    await lab?.teardown()
    rmSync(build, { recursive: true, force: true })
  }
}

function report(rows: Throughput[], mem: Memory, follow: number[], loadBefore: number, ms: number): void {
  const by = (name: string) => rows.find((r) => r.name === name)!
  const best = (xs: number[]) => Math.max(...xs)
  const sPerGB = (r: Throughput) => (r.bytes ? r.cpu / (r.bytes / 1e9) : NaN)
  const ratio = (a: number, b: number) => `${(a / b).toFixed(2)}x`
  const mib = (kib: number) => (kib / 1024).toFixed(1)
  const sorted = [...follow].sort((a, b) => a - b)
  const relay = by('relay (runner)')
  const socat = by('socat')
  const plain = by('plain IPv6 routing')
  const lines = [
    `dualgate forwarder bench (relay mode): ${os.cpus().length} CPUs, Linux ${os.release()}, Node ${process.version}, load average ${loadBefore.toFixed(2)} at start, ${os.loadavg()[0]!.toFixed(2)} at end`,
    `iperf3 1 stream ${IPERF_SECONDS} s each way, IPv4-only client -> VPS ${VPS4} -> home server [${OLD}] (plain: IPv6 client -> server);`,
    `best of ${ROUNDS} interleaved rounds (every round in brackets); CPU: the forwarder's user+system seconds over all rounds`,
    '',
    `${'path'.padEnd(20)}${'up Mbit/s'.padStart(11)}${'down Mbit/s'.padStart(13)}${'CPU s/GB'.padStart(10)}   rounds up / down`,
    ...rows.map((r) => `${r.name.padEnd(20)}${best(r.up).toFixed(0).padStart(11)}${best(r.down).toFixed(0).padStart(13)}${(Number.isNaN(sPerGB(r)) ? '-' : sPerGB(r).toFixed(2)).padStart(10)}   [${r.up.map((x) => x.toFixed(0)).join(' ')}] / [${r.down.map((x) => x.toFixed(0)).join(' ')}]`),
    '',
    `relay / socat           up ${ratio(best(relay.up), best(socat.up))}   down ${ratio(best(relay.down), best(socat.down))}   CPU per GB ${ratio(sPerGB(relay), sPerGB(socat))}`,
    `relay / plain routing   up ${ratio(best(relay.up), best(plain.up))}   down ${ratio(best(relay.down), best(plain.down))}`,
    `socat / plain routing   up ${ratio(best(socat.up), best(plain.up))}   down ${ratio(best(socat.down), best(plain.down))}`,
    '',
    `${`memory, idle, ${MANY} forwards (TCP, IPv4, ports ${MANY_FROM}-${MANY_FROM + MANY - 1})`.padEnd(58)}${'RSS MiB'.padStart(9)}${'PSS MiB'.padStart(9)}`,
    `${`runner, ${MANY} relay forwards (1 process)`.padEnd(58)}${mib(mem.runner.rss).padStart(9)}${mib(mem.runner.pss).padStart(9)}`,
    `${'  the same runner before, with 0 forwards'.padEnd(58)}${mib(mem.runnerIdle.rss).padStart(9)}${mib(mem.runnerIdle.pss).padStart(9)}`,
    `${`socat, ${mem.socats} processes`.padEnd(58)}${mib(mem.socat.rss).padStart(9)}${mib(mem.socat.pss).padStart(9)}`,
    `runner / socat   PSS ${ratio(mem.runner.pss, mem.socat.pss)}   RSS ${ratio(mem.runner.rss, mem.socat.rss)}   (PSS is the fair sum: the socats share pages; RSS counts them ${mem.socats} times)`,
    '',
    `AAAA change -> new connections follow (resolveInterval ${RESOLVE_INTERVAL_S} s, DNS TTL ${DNS_TTL_S} s, a connection every ${POLL_MS} ms):`,
    `  ${follow.map((s) => `${s.toFixed(1)} s`).join(', ')}; median ${sorted[Math.floor(sorted.length / 2)]!.toFixed(1)} s`,
    '',
    `(${(ms / 1000).toFixed(0)} s)`,
  ]
  process.stdout.write(`${lines.join('\n')}\n`)
}

await main()
