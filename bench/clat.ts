// IPv4 through 464XLAT: a device behind an IPv6-only upstream, its traffic translated by our CLAT (tayga in
// the runner) and the lab upstream's NAT64 (a second tayga), against the router's own IPv6 to the same
// upstream host. One iperf3 stream each way; CPU of our tayga per GB. Both translators are user space, so
// the path is bounded by the slower of the two: read the CLAT's CPU per GB as the figure for a router.
//
//   node --import=tsx bench/clat.ts          (root; about a minute)
import { readFileSync } from 'node:fs'
import os from 'node:os'
import type { ClatState } from '../lib/clat/supervisor.ts'
import { api, runJob, startRunner, until, type LabRunner } from '../test/lab/gateway.ts'
import { createLab } from '../test/lab/lab.ts'

const SECONDS = 5

/** utime + stime from /proc/PID/stat, in seconds. */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
  return (Number(fields[11]) + Number(fields[12])) / 100
}

const lab = await createLab({ mode: 'ipv6', devices: 1, plat: true })
let runner: LabRunner | undefined
try {
  const env = { DUALGATE_CLAT: '1', DUALGATE_SCHEDULE_SCAN_ARP: '', DUALGATE_SCHEDULE_ACQUIRE_LEASES: '' }
  await runJob(lab, 'scan-arp', [], env)
  await runJob(lab, 'acquire-leases', [], env)
  runner = startRunner(lab, env)
  const clat = await until('the CLAT', 20_000, async () => {
    const s = (await api<ClatState>(lab, 'GET', '/clat')).body
    return s.running && s.devices.length === 1 ? s : undefined
  })
  const plat = lab.upstream.plat!
  await lab.exec(lab.upstream.ns, 'sh', ['-c', 'iperf3 -s -D -p 5201 >/dev/null 2>&1'])
  await until('iperf3 in the upstream', 5000, async () => ((await lab.exec(lab.upstream.ns, 'ss', ['-Hltn', 'sport', '=', ':5201'])).stdout.trim() ? true : undefined))

  const iperf = async (ns: string, host: string, reverse: boolean) => {
    const out = (await lab.exec(ns, 'iperf3', ['-c', host, '-p', '5201', '-t', String(SECONDS), '-J', ...(reverse ? ['-R'] : [])], { timeoutMs: (SECONDS + 15) * 1000 })).stdout
    const sum = (JSON.parse(out) as { end: { sum_received: { bits_per_second: number; bytes: number } } }).end.sum_received
    return { gbps: sum.bits_per_second / 1e9, bytes: sum.bytes }
  }
  const device = lab.devices[0].ns
  const v6 = { up: await iperf(lab.router.ns, lab.upstream.ipv6, false), down: await iperf(lab.router.ns, lab.upstream.ipv6, true) }
  const cpu0 = cpuSeconds(clat.pid!)
  const v4 = { up: await iperf(device, plat.ipv4Host, false), down: await iperf(device, plat.ipv4Host, true) }
  const cpu = cpuSeconds(clat.pid!) - cpu0
  const msPerGB = (cpu * 1000) / ((v4.up.bytes + v4.down.bytes) / 1e9)

  const row = (name: string, r: typeof v6) => `${name.padEnd(34)}${r.up.gbps.toFixed(2).padStart(8)}${r.down.gbps.toFixed(2).padStart(10)}`
  console.log(`dualgate 464XLAT bench: ${os.cpus().length} CPUs, Linux ${os.release()}, load average ${os.loadavg()[0].toFixed(1)}`)
  console.log(`iperf3, 1 stream, ${SECONDS} s each way\n`)
  console.log(`${'path'.padEnd(34)}${'up'.padStart(8)}${'down'.padStart(10)}  Gbit/s`)
  console.log(row('router IPv6 -> upstream (no CLAT)', v6))
  console.log(row('device IPv4 -> CLAT -> NAT64 -> v4', v4))
  console.log(`\nCLAT / router IPv6: up ${(v4.up.gbps / v6.up.gbps).toFixed(2)}x, down ${(v4.down.gbps / v6.down.gbps).toFixed(2)}x; our tayga ${msPerGB.toFixed(0)} ms CPU per GB`)
} finally {
  await runner?.stop()
  await lab.teardown()
}
