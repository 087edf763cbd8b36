// A forward never takes a port of the router's own: the API's port, or one with a serving socket in this
// network namespace (read from /proc/net, read-only). The sockets here are the test process's own, on
// loopback and ephemeral ports.
import { execFile } from 'node:child_process'
import { createSocket, type Socket as UdpSocket } from 'node:dgram'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadConfig } from '../../lib/core/config.ts'
import type { Data } from '../../lib/core/schema.ts'
import { openStore } from '../../lib/core/store.ts'
import { connectionKey, parseCloseWait, parseProcNet } from '../../lib/net/sockets.ts'
import { addForwards, ForwardError, routerPortProblem } from '../../lib/reach/forwards.ts'
import { createRunnerApi } from '../../lib/runner/api.ts'

const TOKEN = 'forward-ports-token'
const DEVICE_IP = '192.168.1.20'
const MAC = '02:aa:bb:cc:dd:20'
let dir: string
let tcp: Server
let udp: UdpSocket
let tcpPort: number
let udpPort: number

function setup() {
  const { config } = loadConfig({ env: { DUALGATE_DATA_DIR: path.join(dir, 'data'), DUALGATE_API_TOKEN: TOKEN }, uciFile: '/nonexistent' })
  return { config, store: openStore({ dataDir: config.dataDir }) }
}

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'dualgate-ports-'))
  const now = new Date().toISOString()
  await setup().store.update((d) => {
    d.devices[MAC] = { mac: MAC, status: 'active', statusChangedAt: now, firstSeen: now, lastSeen: now, lanIpv4: DEVICE_IP, wanIpv6: [], attempts: 0 }
  })
  tcp = createServer()
  await new Promise<void>((resolve) => tcp.listen(0, '127.0.0.1', resolve))
  tcpPort = (tcp.address() as { port: number }).port
  udp = createSocket('udp4')
  await new Promise<void>((resolve) => udp.bind(0, '127.0.0.1', resolve))
  udpPort = udp.address().port
})
afterAll(() => {
  tcp?.close()
  udp?.close()
  rmSync(dir, { recursive: true, force: true })
})

async function refusal(work: Promise<unknown>): Promise<ForwardError> {
  const err = await work.then(() => undefined, (e: unknown) => e)
  expect(err).toBeInstanceOf(ForwardError)
  return err as ForwardError
}

describe('forwards and the router\'s own ports', () => {
  it('refuses the API port, even with no runner listening on it', async () => {
    const { config, store } = setup()
    const err = await refusal(addForwards(store, config, [{ gatewayPort: config.apiPort, deviceIp: DEVICE_IP, devicePort: 80 }]))
    expect(err.status).toBe(409)
    expect(err.message).toBe(`gateway port tcp/${config.apiPort} is the dualgate API's port (apiPort); forwards cannot take the router's own ports`)
    expect((await store.read()).forwards).toEqual([])
  })

  it('refuses a port with a listening TCP socket, and a UDP port with a bound socket', async () => {
    const { config, store } = setup()
    const t = await refusal(addForwards(store, config, [{ gatewayPort: tcpPort, deviceIp: DEVICE_IP, devicePort: 80 }]))
    expect(t.status).toBe(409)
    expect(t.message).toBe(`gateway port tcp/${tcpPort} is in use on this router (a listening socket on 127.0.0.1); forwards cannot take the router's own ports`)
    const u = await refusal(addForwards(store, config, [{ gatewayPort: udpPort, deviceIp: DEVICE_IP, devicePort: 53, proto: 'udp' }]))
    expect(u.message).toBe(`gateway port udp/${udpPort} is in use on this router (a bound socket on 127.0.0.1); forwards cannot take the router's own ports`)
    expect((await store.read()).forwards).toEqual([])
  })

  it('refuses an IPv6 forward on a port the tunnels\' proxy mode offers, and takes an IPv4-only one', async () => {
    const { config, store } = setup()
    await store.update((d) => { d.ports.push({ id: 'p1', port: 2222, proto: 'tcp', targetPort: 22, createdAt: new Date().toISOString() }) })
    const err = await refusal(addForwards(store, config, [{ gatewayPort: 2222, deviceIp: DEVICE_IP, devicePort: 22 }]))
    expect(err.status).toBe(409)
    expect(err.message).toContain('offers a local service on the tunnels\' IPv6 (port p1)')
    expect(await addForwards(store, config, [{ gatewayPort: 2222, deviceIp: DEVICE_IP, devicePort: 22, family: '4' }])).toHaveLength(1)
  })

  it('the API answers 409 with the reason', async () => {
    const { config, store } = setup()
    const api = createRunnerApi({ store, config })
    const res = await api.fetch(new Request('http://127.0.0.1:5050/forwards', {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ gatewayPort: tcpPort, deviceIp: DEVICE_IP, devicePort: 80 }),
    }))
    expect(res.status).toBe(409)
    expect((await res.json()).error).toContain(`gateway port tcp/${tcpPort} is in use on this router`)
  })

  it('`port-forward add` exits 2 with the reason (a dry run: nothing could reach the system if it were let through)', async () => {
    const bin = fileURLToPath(new URL('../../hooks/bin/gateway-port-forward', import.meta.url))
    const env = { PATH: process.env.PATH, DUALGATE_DATA_DIR: path.join(dir, 'data'), DUALGATE_RUN_DIR: path.join(dir, 'run'), DUALGATE_UCI_FILE: path.join(dir, 'no-uci'), DUALGATE_WAN_IF: 'lo', DUALGATE_LAN_IF: 'lo' }
    const r = await new Promise<{ code: number; stderr: string }>((resolve) => {
      execFile(bin, ['add', String(tcpPort), DEVICE_IP, '80', '--dry-run'], { env, timeout: 30_000 }, (err, _out, stderr) => resolve({ code: err ? Number(err.code) : 0, stderr }))
    })
    expect(r.code, r.stderr).toBe(2)
    expect(r.stderr).toContain(`gateway port tcp/${tcpPort} is in use on this router (a listening socket on 127.0.0.1)`)
  }, 40_000)

  it('takes a port held only for another protocol', async () => {
    const { config, store } = setup()
    const [f] = await addForwards(store, config, [{ gatewayPort: tcpPort, deviceIp: DEVICE_IP, devicePort: 80, proto: 'udp' }])
    expect(f).toMatchObject({ gatewayPort: tcpPort, proto: 'udp' })
  })
})

describe('which sockets are the router\'s own', () => {
  const empty = { devices: {}, forwards: [] } as unknown as Data

  it('not the relay\'s: sockets on a device\'s WAN address, or on a router address at an IPv6 forward\'s port', () => {
    const data = {
      devices: { [MAC]: { mac: MAC, wanIpv4: '198.18.0.20', wanIpv6: ['2001:db8:0:1:0:0:0:20'] } },
      forwards: [{ id: 'a', gatewayPort: 8080, deviceIp: DEVICE_IP, devicePort: 80, proto: 'tcp', family: '6', createdAt: '' }],
    } as unknown as Data
    const config = { apiPort: 5050 }
    expect(routerPortProblem(data, config, 'tcp', 80, [{ proto: 'tcp', address: '2001:db8:0:1::20', port: 80 }])).toBeUndefined()
    expect(routerPortProblem(data, config, 'tcp', 8080, [{ proto: 'tcp', address: '2001:db8::1', port: 8080 }])).toBeUndefined()
    // A wildcard socket is never the relay's, and a socket for another protocol is no clash.
    expect(routerPortProblem(data, config, 'tcp', 8080, [{ proto: 'tcp', address: '::', port: 8080 }])).toMatch(/tcp\/8080 is in use on this router/)
    expect(routerPortProblem(empty, config, 'udp', 22, [{ proto: 'tcp', address: '0.0.0.0', port: 22 }])).toBeUndefined()
    expect(routerPortProblem(empty, config, 'udp', 5050, [])).toBeUndefined()
  })

  it('parses /proc/net tables of either byte order: LISTEN for TCP, unconnected for UDP', () => {
    const head = '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n'
    const tcp4 = `${head}   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:A1B2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0\n`
    expect(parseProcNet(tcp4, 'tcp', 'LE')).toEqual([{ proto: 'tcp', address: '127.0.0.1', port: 8080 }, { proto: 'tcp', address: '0.0.0.0', port: 22 }])
    expect(parseProcNet(tcp4.replace('0100007F:1F90 00000000', '7F000001:1F90 00000000'), 'tcp', 'BE')[0]).toEqual({ proto: 'tcp', address: '127.0.0.1', port: 8080 })
    const tcp6 = `${head}   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0 100 0 0 10 0
   1: B80D0120000000000000000001000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1 0 100 0 0 10 0\n`
    expect(parseProcNet(tcp6, 'tcp', 'LE')).toEqual([{ proto: 'tcp', address: '::1', port: 22 }, { proto: 'tcp', address: '2001:db8::1', port: 443 }])
    const udp4 = `${head}  10: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 6 2 0
  11: 0100007F:D431 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 7 2 0\n`
    expect(parseProcNet(udp4, 'udp', 'LE')).toEqual([{ proto: 'udp', address: '0.0.0.0', port: 53 }])
  })

  it('finds the TCP connections whose peer has ended (CLOSE_WAIT), keyed as the relay names its sockets', () => {
    const head = '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n'
    const tcp6 = `${head}   0: B80D0120000000000000000001000000:1B5C B80D0120000000000000000010000000:9C40 08 00000000:00004001 00:00000000 00000000     0        0 4 1 0 100 0 0 10 0
   1: B80D0120000000000000000001000000:1B5C B80D0120000000000000000011000000:9C41 01 00000000:00000000 00:00000000 00000000     0        0 5 1 0 100 0 0 10 0
   2: garbage line\n`
    expect(parseCloseWait(tcp6, 'LE')).toEqual([connectionKey('2001:DB8:0::1', 7004, '2001:db8::10', 40_000)])
    expect(connectionKey('2001:DB8:0::1', 7004, '2001:db8::10', 40_000)).toBe('[2001:db8::1]:7004 [2001:db8::10]:40000')
  })
})
