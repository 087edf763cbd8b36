// `npm run demo`: the gateway at work in a lab of its own. Builds a dual-stack lab (three devices, one of
// them not registered upstream), starts the runner in the router namespace with dnsmasq's hook wired to it,
// and shows the device table as devices appear. Ctrl-C (or --seconds N) tears everything down.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import type { Device } from '../../lib/core/schema.ts'
import { ago, formatTable } from '../../lib/core/table.ts'
import { api, API_PORT, API_TOKEN, ROOT, startRunner, type LabRunner } from './gateway.ts'
import { createLab, isRoot, type Lab } from './lab.ts'

const { values } = parseArgs({ options: { seconds: { type: 'string' } } })
const seconds = values.seconds ? Number(values.seconds) : Infinity
if (!isRoot()) {
  console.error('The demo builds network namespaces: run it as root (sudo npm run demo).')
  process.exit(2)
}

const dataDir = mkdtempSync(path.join(tmpdir(), 'dualgate-demo-'))
const env = { DUALGATE_DATA_DIR: dataDir, DUALGATE_RETRY_BASE: '20', DUALGATE_RETRY_MAX: '60' }
let lab: Lab | undefined
let runner: LabRunner | undefined
let stopping: Promise<void> | undefined

/** A second Ctrl-C waits for the teardown the first one started. */
async function stop(code: number): Promise<never> {
  stopping ??= (async () => {
    console.log('\ntearing down the lab...')
    const stopped = runner?.stop()
    const bound = new Promise((resolve) => setTimeout(resolve, 8000).unref())
    if ((await Promise.race([stopped, bound.then(() => 'late')])) === 'late') await runner?.kill()
    await lab?.teardown()
    rmSync(dataDir, { recursive: true, force: true })
  })()
  await stopping
  process.exit(code)
}
process.on('SIGINT', () => void stop(0))
process.on('SIGTERM', () => void stop(0))

/** What changes the picture: not the countdown to a retry, which is shown but does not trigger a redraw. */
function stateOf(devices: Device[]): string {
  return JSON.stringify(devices.map((d) => [d.mac, d.status, d.lanIpv4, d.wanIpv4, d.wanIpv6, d.reason]))
}

function table(devices: Device[]): string {
  if (devices.length === 0) return '(no devices yet)'
  return formatTable(['MAC', 'HOSTNAME', 'LAN IPV4', 'STATUS', 'WAN IPV4', 'WAN IPV6', 'NOTE'],
    devices.map((d) => [d.mac, d.hostname, d.lanIpv4, d.status, d.wanIpv4, d.wanIpv6.join(' '), d.status === 'failed' ? `${d.reason} (retry ${ago(d.nextRetry)})` : d.reason]))
}

try {
  console.log('building the lab (dual-stack upstream, 3 LAN devices, the third not registered upstream)...')
  lab = await createLab({ mode: 'dual', devices: 3, unregistered: [2], dhcpScript: path.join(ROOT, 'hooks/dnsmasq-script'), dhcpScriptEnv: { DUALGATE_DATA_DIR: dataDir } })
  runner = startRunner(lab, env)
  const r = lab.router
  console.log(`
  upstream  ${lab.upstream.ns}: DHCPv4 ${lab.upstream.ipv4}/22, RA + DHCPv6 ${lab.upstream.prefix6}; only registered MACs get leases
     |      clients on the WAN side: IPv4-only ${lab.client4.ns} (${lab.client4.ip}), IPv6-only ${lab.client6.ns} (${lab.client6.ip})
  router    ${r.ns}: WAN ${r.wanIf} ${r.wanIpv4} (MAC ${r.wanMac}), LAN ${r.lanIf} ${r.lanAddr}; dnsmasq + dualgate runner
     |
  devices   ${lab.devices.map((d) => `${d.ns} ${d.mac} ${d.lanIpv4}`).join('\n            ')}

The runner's API (inside the router namespace):
  ip netns exec ${r.ns} curl -s http://127.0.0.1:${API_PORT}/devices
  ip netns exec ${r.ns} curl -s http://127.0.0.1:${API_PORT}/metrics
  ip netns exec ${r.ns} curl -s -X POST -H 'authorization: Bearer ${API_TOKEN}' -H 'content-type: application/json' \\
      -d '{"gatewayPort":8080,"deviceIp":"${lab.devices[0].lanIpv4}","devicePort":80}' http://127.0.0.1:${API_PORT}/forwards
A device's page from the IPv6-only client, once it is active:
  ip netns exec ${lab.client6.ns} curl -s 'http://[<device WAN IPv6>]/'
The jobs by hand, as on a router console:
  ip netns exec ${r.ns} env DUALGATE_DATA_DIR=${dataDir} DUALGATE_WAN_IF=eth0 DUALGATE_LAN_IF=eth1 DUALGATE_LAN_ADDR=${r.lanAddr} node --import=tsx jobs/devices.ts
`)
  const deadline = Date.now() + seconds * 1000
  let shown = ''
  while (Date.now() < deadline && !stopping) {
    const devices = (await api<Device[]>(lab, 'GET', '/devices').catch(() => ({ body: [] as Device[] }))).body
    const state = stateOf(devices)
    if (state !== shown) {
      console.log(`\n${new Date().toISOString().slice(11, 19)}  devices:\n${table(devices)}`)
      shown = state
    }
    await new Promise((res) => setTimeout(res, 1000))
  }
  await stop(0)
} catch (err) {
  console.error(`demo failed: ${(err as Error).message}`)
  await stop(1)
}
