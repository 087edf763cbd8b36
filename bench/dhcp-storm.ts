// 200 devices appear on the LAN at once: how long until every one is `active` with its own WAN identity?
// Run by hand as root: `node --import=tsx bench/dhcp-storm.ts [devices] [parallel]`. Builds its own lab.
import type { AcquireResult } from '../jobs/acquire-leases.ts'
import type { Device } from '../lib/core/schema.ts'
import { runJob } from '../test/lab/gateway.ts'
import { createLab } from '../test/lab/lab.ts'

const count = Number(process.argv[2] ?? 200)
const parallel = process.argv[3] ?? '32'
const lab = await createLab({ mode: 'dual', devices: 0 })
try {
  await lab.addCrowd(count)
  const env = { DUALGATE_MAX_PARALLEL: parallel, DUALGATE_DHCP_TIMEOUT: '3', DUALGATE_DHCP_RETRIES: '2' }
  const start = performance.now()
  const scan = await runJob(lab, 'scan-arp', [], env)
  const scanned = performance.now()
  const acquire = await runJob<AcquireResult>(lab, 'acquire-leases', [], env, 300_000)
  const done = performance.now()
  const table = (await runJob<Device[]>(lab, 'devices', [], env)).result
  const count4 = (t: Device[]) => t.filter((d) => d.status === 'active' && d.wanIpv4).length
  const count46 = (t: Device[]) => t.filter((d) => d.status === 'active' && d.wanIpv4 && d.wanIpv6.length > 0).length
  // What the runner does when the late DHCPv6 clients report their leases: one more pass, a refresh.
  const refresh = await runJob<AcquireResult>(lab, 'acquire-leases', [], env, 300_000)
  const refreshed = performance.now()
  const final = (await runJob<Device[]>(lab, 'devices', [], env)).result
  const leases = await lab.upstream.leases()
  console.log(`devices ${count}, parallel ${parallel}, dual-stack upstream, load ${(await import('node:os')).loadavg()[0].toFixed(1)}`)
  console.log(`scan-arp           ${((scanned - start) / 1000).toFixed(1)} s (exit ${scan.code})`)
  console.log(`acquire-leases     ${((done - scanned) / 1000).toFixed(1)} s (exit ${acquire.code}): ${table.filter((d) => d.status === 'active').length}/${count} active, ${count4(table)} with WAN IPv4, ${count46(table)} with IPv4 and IPv6`)
  console.log(`follow-up refresh  ${((refreshed - done) / 1000).toFixed(1)} s (exit ${refresh.code}): ${count46(final)}/${count} with IPv4 and IPv6`)
  console.log(`all active after   ${((done - start) / 1000).toFixed(1)} s; ${(((done - start) / count)).toFixed(0)} ms of wall time per device`)
  console.log(`upstream leases    ${leases.v4.length} DHCPv4, ${leases.v6.length} DHCPv6`)
  for (const d of final.filter((x) => x.status !== 'active' || !x.wanIpv4 || x.wanIpv6.length === 0).slice(0, 5)) console.log(`  ${d.mac} ${d.status}: ${d.reason ?? ''}`)
  process.exitCode = final.filter((d) => d.status === 'active').length === count ? 0 : 1
} finally {
  await lab.teardown()
}
