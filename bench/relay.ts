// The relay side by side with plain routing, kernel DNAT, socat and HAProxy, in namespaces of its own:
//
//   client (198.18.10.2, 2001:db8:10::2) -- router (198.18.10.1, 2001:db8:10::1 | 198.18.20.1) -- server (198.18.20.2)
//
// Throughput is one iperf3 stream for 5 s each way, with the forwarder's CPU time per GB (less noisy than
// throughput when the machine is shared); connection rate is a Node client opening and closing connections
// to a server that closes at once, with the forwarder's CPU time per connection; memory is 400 relay
// listeners in one process against 400 socat processes. Everything is measured in one run, paths
// interleaved, because these machines are noisy: read the ratios, not the absolutes.
//
//   node --import=tsx bench/relay.ts          (root; about three and a half minutes)
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { createLab, memoryOf, run, stopChild, type Agent, type Lab } from './netns.ts'

const HERE = path.dirname(fileURLToPath(import.meta.url))
const SELF = fileURLToPath(import.meta.url)

const C4 = '198.18.10.2'
const R4 = '198.18.10.1'
const R6 = '2001:db8:10::1'
const S4 = '198.18.20.2'
const IPERF = 5201
const CLOSER = 5300
const IPERF_SECONDS = 5
const ROUNDS = 3
const CPS_MS = 2000
const CPS_CONCURRENCY = 32
const MANY = 400

interface Mode {
  name: string
  host: string
  iperfPort: number
  cpsPort: number
}

const MODES: Mode[] = [
  { name: 'plain routing', host: S4, iperfPort: IPERF, cpsPort: CLOSER },
  { name: 'kernel DNAT', host: R4, iperfPort: 5202, cpsPort: 5302 },
  { name: 'relay', host: R6, iperfPort: 6001, cpsPort: 6101 },
  { name: 'socat', host: R6, iperfPort: 6002, cpsPort: 6102 },
  { name: 'haproxy', host: R6, iperfPort: 6003, cpsPort: 6103 },
]

function closeServer(host: string, port: number): void {
  net.createServer((s) => { s.on('error', () => {}); s.end() }).listen(port, host)
  process.on('SIGTERM', () => process.exit(0))
}

/** `concurrency` loops of connect, wait for the server's close, close; for `ms`. Prints JSON. */
async function cpsClient(host: string, port: number, ms: number, concurrency: number): Promise<void> {
  let done = 0
  let errors = 0
  const end = Date.now() + ms
  const once = () => new Promise<void>((resolve) => {
    const s = net.connect({ host, port })
    let settled = false
    const finish = (ok: boolean) => {
      if (settled) return
      settled = true
      if (ok) done++
      else errors++
      s.destroy()
      resolve()
    }
    s.setTimeout(2000, () => finish(false))
    s.on('error', () => finish(false))
    s.on('end', () => finish(true))
    s.resume()
  })
  await Promise.all(Array.from({ length: concurrency }, async () => { while (Date.now() < end) await once() }))
  process.stdout.write(`${JSON.stringify({ done, errors, perSec: done / (ms / 1000) })}\n`)
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench/relay.ts needs root (network namespaces)')
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'dgrelay-bench-'))
  const lab = createLab('dgrelay')
  const started = Date.now()
  try {
    const hostFile = await compileRelayHost(tmp)
    await topology(lab)
    lab.spawn('server', 'iperf3', ['-s', '-B', S4, '-p', String(IPERF)], true)
    lab.spawn('server', process.execPath, ['--import=tsx', SELF, '--close-server', S4, String(CLOSER)], true)
    await waitListening(lab, 'server', IPERF)
    await waitListening(lab, 'server', CLOSER)

    const nftFile = path.join(tmp, 'dnat.nft')
    writeFileSync(nftFile, [
      'table ip dgbench {',
      '  chain pre {',
      '    type nat hook prerouting priority dstnat;',
      `    tcp dport 5202 dnat to ${S4}:${IPERF}`,
      `    tcp dport 5302 dnat to ${S4}:${CLOSER}`,
      '  }',
      '}',
      '',
    ].join('\n'))
    await lab.exec('router', 'nft', ['-f', nftFile])

    const relay = await lab.agent('router', hostFile, [JSON.stringify({ maxConnections: 10_000 })], [])
    await relay.call('apply', { rules: [relayRule(R6, 6001, IPERF), relayRule(R6, 6101, CLOSER)] })
    // The forwarders whose CPU time is counted, for the throughput and the connection-rate runs (socat is one
    // process per listener, and its forked children are reaped into its cutime).
    const pids = new Map<string, { iperf: number; cps: number }>([['relay', { iperf: relay.pid, cps: relay.pid }]])
    const socat = (port: number, target: number) => lab.spawn('router', 'socat', [`TCP6-LISTEN:${port},bind=[${R6}],ipv6only=1,fork,reuseaddr`, `TCP4:${S4}:${target}`], true).pid!
    pids.set('socat', { iperf: socat(6002, IPERF), cps: socat(6102, CLOSER) })
    const haCfg = path.join(tmp, 'haproxy.cfg')
    writeFileSync(haCfg, [
      'global',
      '  maxconn 4000',
      'defaults',
      '  mode tcp',
      '  timeout connect 5s',
      '  timeout client 60s',
      '  timeout server 60s',
      ...[[6003, IPERF], [6103, CLOSER]].flatMap(([port, target]) => [
        `listen p${port}`,
        `  bind [${R6}]:${port} v6only`,
        `  server s ${S4}:${target}`,
      ]),
      '',
    ].join('\n'))
    const haproxy = lab.spawn('router', 'haproxy', ['-db', '-f', haCfg], true).pid!
    pids.set('haproxy', { iperf: haproxy, cps: haproxy })
    for (const port of [6001, 6101, 6002, 6102, 6003, 6103]) await waitListening(lab, 'router', port)

    // Rounds interleave the paths, and each path keeps its best round: on a shared machine a neighbour's burst
    // then costs one round, not the comparison. CPU figures add up all rounds.
    const rows: Row[] = MODES.map((m) => ({ name: m.name, up: 0, down: 0, msPerGB: NaN, cps: 0, cpsErrors: 0, usPerConn: NaN }))
    const acc = MODES.map(() => ({ cpuIperf: 0, bytes: 0, cpuCps: 0, conns: 0 }))
    for (let round = 0; round < ROUNDS; round++) {
      for (const [i, m] of MODES.entries()) {
        const pid = pids.get(m.name)?.iperf
        const cpu0 = pid ? cpuSeconds(pid) : 0
        const up = await iperf(lab, m.host, m.iperfPort, false)
        const down = await iperf(lab, m.host, m.iperfPort, true)
        await new Promise((r) => setTimeout(r, 300))
        rows[i].up = Math.max(rows[i].up, up.gbps)
        rows[i].down = Math.max(rows[i].down, down.gbps)
        if (pid) { acc[i].cpuIperf += cpuSeconds(pid) - cpu0; acc[i].bytes += up.bytes + down.bytes }
      }
    }
    for (let round = 0; round < ROUNDS; round++) {
      for (const [i, m] of MODES.entries()) {
        const pid = pids.get(m.name)?.cps
        const cpu0 = pid ? cpuSeconds(pid) : 0
        const out = await lab.exec('client', process.execPath, ['--import=tsx', SELF, '--cps', m.host, String(m.cpsPort), String(CPS_MS), String(CPS_CONCURRENCY)], CPS_MS + 15_000)
        const r = JSON.parse(out) as { done: number; perSec: number; errors: number }
        await new Promise((res) => setTimeout(res, 300))
        rows[i].cps = Math.max(rows[i].cps, r.perSec)
        rows[i].cpsErrors += r.errors
        if (pid) { acc[i].cpuCps += cpuSeconds(pid) - cpu0; acc[i].conns += r.done }
      }
    }
    for (const [i, a] of acc.entries()) {
      if (a.bytes) rows[i].msPerGB = (a.cpuIperf * 1000) / (a.bytes / 1e9)
      if (a.conns) rows[i].usPerConn = (a.cpuCps * 1e6) / a.conns
    }
    await relay.stop()

    const mem = await memory(lab, hostFile)
    report(rows, mem, Date.now() - started)
  } finally {
    await lab.teardown()
    rmSync(tmp, { recursive: true, force: true })
  }
}

function relayRule(host: string, port: number, target: number) {
  return { proto: 'tcp', listen: { host, port }, target: { host: S4, port: target } }
}

async function topology(lab: Lab): Promise<void> {
  await lab.addNs('client', 'router', 'server')
  await lab.veth('router', 'r0', 'client', 'c0')
  await lab.veth('router', 'r1', 'server', 's0')
  await lab.ip('client', ['addr', 'add', `${C4}/24`, 'dev', 'c0'])
  await lab.ip('client', ['addr', 'add', '2001:db8:10::2/64', 'dev', 'c0', 'nodad'])
  await lab.ip('client', ['route', 'add', 'default', 'via', R4])
  await lab.ip('router', ['addr', 'add', `${R4}/24`, 'dev', 'r0'])
  await lab.ip('router', ['addr', 'add', `${R6}/64`, 'dev', 'r0', 'nodad'])
  await lab.ip('router', ['addr', 'add', '198.18.20.1/24', 'dev', 'r1'])
  await lab.ip('server', ['addr', 'add', `${S4}/24`, 'dev', 's0'])
  await lab.ip('server', ['route', 'add', 'default', 'via', '198.18.20.1'])
  await lab.exec('router', 'sysctl', ['-qw', 'net.ipv4.ip_forward=1'])
  // Tens of thousands of short connections per run: room for them, and TIME_WAIT reuse (namespace-local).
  for (const role of ['client', 'router', 'server']) {
    await lab.exec(role, 'sysctl', ['-qw', 'net.ipv4.ip_local_port_range=1024 65535', 'net.ipv4.tcp_tw_reuse=1'])
  }
}

/** lib/reach/relay.ts as plain JavaScript plus a tiny host: what `dist/` runs, without a TypeScript loader in memory. */
async function compileRelayHost(dir: string): Promise<string> {
  const { default: ts } = await import('typescript')
  const src = readFileSync(path.join(HERE, '../lib/reach/relay.ts'), 'utf8')
  const js = ts.transpileModule(src, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, verbatimModuleSyntax: true } })
  writeFileSync(path.join(dir, 'relay.mjs'), js.outputText)
  const host = path.join(dir, 'relay-host.mjs')
  writeFileSync(host, `import { createInterface } from 'node:readline'
import { createRelay } from './relay.mjs'
const relay = createRelay(JSON.parse(process.argv[2] ?? '{}'))
const out = (m) => process.stdout.write(JSON.stringify(m) + '\\n')
createInterface({ input: process.stdin }).on('line', async (line) => {
  const { id, op, args } = JSON.parse(line)
  try { out({ id, ok: true, result: op === 'apply' ? await relay.apply(args.rules) : relay.stats() }) }
  catch (err) { out({ id, ok: false, error: String(err) }) }
}).on('close', () => process.exit(0))
process.on('SIGTERM', () => process.exit(0))
out({ ready: true })
`)
  return host
}

async function waitListening(lab: Lab, role: string, port: number, count = 1, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs
  for (;;) {
    const out = await lab.exec(role, 'ss', ['-Hltn', 'sport', '=', `:${port}`])
    const n = out.split('\n').filter((l) => l.trim()).length
    if (n >= count) return
    if (Date.now() > end) throw new Error(`${role}: ${n}/${count} listeners on port ${port} after ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

interface Row {
  name: string
  up: number
  down: number
  /** Forwarder CPU time (user + system, children included) per GB relayed; NaN for the kernel paths. */
  msPerGB: number
  cps: number
  cpsErrors: number
  /** Forwarder CPU time per connection during the connection-rate run. */
  usPerConn: number
}

/** Client to server, or with `reverse` server to client (the device serving a download). */
async function iperf(lab: Lab, host: string, port: number, reverse: boolean): Promise<{ gbps: number; bytes: number }> {
  const args = ['-c', host, '-p', String(port), '-t', String(IPERF_SECONDS), '-J', ...(reverse ? ['-R'] : [])]
  const out = await lab.exec('client', 'iperf3', args, (IPERF_SECONDS + 15) * 1000)
  const j = JSON.parse(out) as { end?: { sum_received?: { bits_per_second: number; bytes: number } }; error?: string }
  if (!j.end?.sum_received) throw new Error(`iperf3 to ${host}:${port}: ${j.error ?? 'no result'}`)
  return { gbps: j.end.sum_received.bits_per_second / 1e9, bytes: j.end.sum_received.bytes }
}

/** utime + stime + cutime + cstime from /proc/PID/stat, in seconds. */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
  return fields.slice(11, 15).reduce((sum, f) => sum + Number(f), 0) / 100
}

interface Memory {
  relayIdle: { rss: number; pss: number }
  relay: { rss: number; pss: number }
  socat: { rss: number; pss: number }
  socatCount: number
}

async function memory(lab: Lab, hostFile: string): Promise<Memory> {
  const addrs = Array.from({ length: MANY }, (_, i) => `2001:db8:10::${(0x1000 + i).toString(16)}`)
  const batch = path.join(path.dirname(hostFile), 'addrs.batch')
  writeFileSync(batch, addrs.map((a) => `addr add ${a}/128 dev r0 nodad\n`).join(''))
  await run('ip', ['-n', lab.ns('router'), '-batch', batch])

  const relay: Agent = await lab.agent('router', hostFile, ['{}'], [])
  await settle()
  const relayIdle = memoryOf(relay.pid)
  const applied = await relay.call<{ added: number; failed: unknown[] }>('apply', { rules: addrs.map((a) => relayRule(a, 7000, IPERF)) })
  if (applied.added !== MANY) throw new Error(`relay opened ${applied.added}/${MANY} listeners: ${JSON.stringify(applied.failed.slice(0, 3))}`)
  await settle()
  const relayMem = memoryOf(relay.pid)
  await relay.stop()

  const socats = addrs.map((a) => lab.spawn('router', 'socat', [`TCP6-LISTEN:7001,bind=[${a}],ipv6only=1,fork,reuseaddr`, `TCP4:${S4}:${IPERF}`], true))
  try {
    await waitListening(lab, 'router', 7001, MANY, 30_000)
    await settle()
    const socat = { rss: 0, pss: 0 }
    for (const c of socats) {
      const m = memoryOf(c.pid!)
      socat.rss += m.rss
      socat.pss += m.pss
    }
    return { relayIdle, relay: relayMem, socat, socatCount: socats.length }
  } finally {
    // Sequentially, so the machine is not asked to reap 400 processes at once; each by its own PID.
    for (const c of socats) await stopChild(c, 1000)
  }
}

function settle(): Promise<void> {
  return new Promise((r) => setTimeout(r, 1000))
}

function report(rows: Row[], mem: Memory, ms: number): void {
  const by = (name: string) => rows.find((r) => r.name === name)!
  const pad = (s: string, n: number) => s.padEnd(n)
  const lpad = (s: string, n: number) => s.padStart(n)
  const mib = (kib: number) => (kib / 1024).toFixed(1)
  const ratio = (a: number, b: number) => `${(a / b).toFixed(2)}x`
  const num = (n: number) => (Number.isNaN(n) ? '-' : n.toFixed(0))
  const lines = [
    `dualgate relay bench: ${os.cpus().length} CPUs, Linux ${os.release()}, Node ${process.version}, load average ${os.loadavg()[0].toFixed(1)}`,
    `iperf3 1 stream ${IPERF_SECONDS} s each way (up: client to server; down: server to client, -R); ${CPS_CONCURRENCY} concurrent`,
    `connect/close loops for ${CPS_MS / 1000} s; best of ${ROUNDS} interleaved rounds; CPU: the forwarder's user+system time, all rounds`,
    '',
    `${pad('path', 16)}${lpad('up Gbit/s', 11)}${lpad('down Gbit/s', 13)}${lpad('CPU ms/GB', 11)}${lpad('conn/s', 9)}${lpad('errors', 8)}${lpad('CPU us/conn', 13)}`,
    ...rows.map((r) => `${pad(r.name, 16)}${lpad(r.up.toFixed(2), 11)}${lpad(r.down.toFixed(2), 13)}${lpad(num(r.msPerGB), 11)}${lpad(r.cps.toFixed(0), 9)}${lpad(String(r.cpsErrors), 8)}${lpad(num(r.usPerConn), 13)}`),
    '',
    ...([['kernel DNAT', 'plain routing'], ['relay', 'socat'], ['relay', 'haproxy']] as const).map(([a, b]) =>
      `${pad(`${a} / ${b}`, 24)} up ${ratio(by(a).up, by(b).up)}   down ${ratio(by(a).down, by(b).down)}   conn/s ${ratio(by(a).cps, by(b).cps)}${Number.isNaN(by(a).msPerGB) ? '' : `   CPU per GB ${ratio(by(a).msPerGB, by(b).msPerGB)}   CPU per conn ${ratio(by(a).usPerConn, by(b).usPerConn)}`}`),
    '',
    `memory for ${MANY} TCP listeners   ${lpad('RSS MiB', 9)}${lpad('PSS MiB', 9)}`,
    `relay, 1 process                ${lpad(mib(mem.relay.rss), 9)}${lpad(mib(mem.relay.pss), 9)}`,
    `  of which Node with 0 listeners${lpad(mib(mem.relayIdle.rss), 9)}${lpad(mib(mem.relayIdle.pss), 9)}`,
    `socat, ${mem.socatCount} processes            ${lpad(mib(mem.socat.rss), 9)}${lpad(mib(mem.socat.pss), 9)}`,
    '',
    `relay / socat memory  PSS ${ratio(mem.relay.pss, mem.socat.pss)} (the ratio we use: socat processes share pages, RSS counts them ${mem.socatCount} times)   RSS ${ratio(mem.relay.rss, mem.socat.rss)}`,
    `relay listeners alone (minus idle Node) / socat  PSS ${ratio(mem.relay.pss - mem.relayIdle.pss, mem.socat.pss)}`,
    '',
    `(${(ms / 1000).toFixed(0)} s)`,
  ]
  process.stdout.write(`${lines.join('\n')}\n`)
}

// Roles run inside a namespace by the main process.
if (process.argv[2] === '--close-server') closeServer(process.argv[3], Number(process.argv[4]))
else if (process.argv[2] === '--cps') await cpsClient(process.argv[3], Number(process.argv[4]), Number(process.argv[5]), Number(process.argv[6]))
else await main()
