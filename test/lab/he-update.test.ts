// The Hurricane Electric updater against a fake broker in namespaces: two of them (dgheXXXX-router and
// dgheXXXX-broker) joined by a veth pair, 198.18.0.0/24 only; the broker is a small plain-HTTP node server
// that records each request (path, query, Authorization) and answers what the test scripts. The real job
// runs in the router namespace as cron would run it. 198.18/15 is not public, so the job sends no myip and
// the broker sees the router's address as the source. No sit interface here (this kernel has no sit module):
// the unit test checks that the tunnel's local address follows the WAN.
import { execFile, type ChildProcess } from 'node:child_process'
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLab, type Lab } from '../../bench/netns.ts'
import type { HeUpdateResult } from '../../jobs/he-update.ts'
import type { Data } from '../../lib/core/schema.ts'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const BROKER = '198.18.0.1'
const PORT = 8080
const KEY = 'LabKey7fQ2NeverLogged'
const TUNNEL_ID = '987654'

const BROKER_SCRIPT = `
import http from 'node:http'
import { appendFileSync, readFileSync } from 'node:fs'
const [host, port, answerFile, requestLog] = process.argv.slice(2)
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://broker')
  const from = req.socket.remoteAddress
  appendFileSync(requestLog, JSON.stringify({ path: url.pathname, query: Object.fromEntries(url.searchParams), authorization: req.headers.authorization ?? null, from }) + '\\n')
  const answer = readFileSync(answerFile, 'utf8').trim().replace('{ip}', from)
  res.writeHead(answer === 'badauth' ? 401 : 200, { 'content-type': 'text/plain' })
  res.end(answer + '\\n')
})
server.listen(Number(port), host, () => process.stdout.write('ready\\n'))
process.on('SIGTERM', () => { server.close(); process.exit(0) })
`

interface Request { path: string; query: Record<string, string>; authorization: string | null; from: string }
interface Run { code: number; result: HeUpdateResult; stdout: string; stderr: string }

const asRoot = process.getuid?.() === 0

describe.skipIf(!asRoot)('he-update against a fake broker (lab, needs root)', () => {
  let lab: Lab
  let dir: string
  let broker: ChildProcess
  let wan = '198.18.0.2'
  const outputs: string[] = []
  const file = (name: string) => path.join(dir, name)

  const writeConfig = (username = 'labuser') => writeFileSync(file('config.json'), JSON.stringify({
    heUpdateUrl: `http://${BROKER}:${PORT}/nic/update`,
    tunnels: [{ name: 'he', type: '6in4', iface: 'he0', remote: '198.18.0.9', address: ['2001:db8:5::2/64'], heTunnelId: TUNNEL_ID, heUsername: username, heKeyFile: file('he.key') }],
  }))
  const answer = (text: string) => writeFileSync(file('answer'), text)
  const requests = (): Request[] => readFileSync(file('requests.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l))
  const store = (): Data => JSON.parse(readFileSync(file('data/dualgate.json'), 'utf8'))
  const basic = (user: string) => `Basic ${Buffer.from(`${user}:${KEY}`).toString('base64')}`

  function runJob(args: string[] = []): Promise<Run> {
    const env = {
      PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
      HOME: process.env.HOME ?? '/root',
      DUALGATE_UCI_FILE: file('no-uci'),
      DUALGATE_CONFIG: file('config.json'),
      DUALGATE_DATA_DIR: file('data'),
      DUALGATE_RUN_DIR: file('run'),
      DUALGATE_WAN_IF: 'eth0',
      DUALGATE_BACKUP_INTERVAL: '0',
    }
    return new Promise((resolve) => {
      execFile('ip', ['netns', 'exec', lab.ns('router'), process.execPath, '--import=tsx', path.join(ROOT, 'jobs/he-update.ts'), '--json', ...args],
        { cwd: ROOT, env, timeout: 60_000, killSignal: 'SIGKILL', maxBuffer: 1 << 20, encoding: 'utf8' },
        (err, stdout, stderr) => {
          outputs.push(stdout, stderr)
          let result
          try { result = JSON.parse(stdout) } catch { result = undefined }
          resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, result, stdout, stderr })
        })
    })
  }

  /** Moves the router's WAN to a new address, as a new DHCP lease would. */
  async function renumber(address: string) {
    await lab.ip('router', ['addr', 'del', `${wan}/24`, 'dev', 'eth0'])
    await lab.ip('router', ['addr', 'add', `${address}/24`, 'dev', 'eth0'])
    wan = address
  }

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'dghe-lab-'))
    mkdirSync(file('data'), { mode: 0o700 })
    mkdirSync(file('run'))
    writeFileSync(file('he.key'), `${KEY}\n`, { mode: 0o600 })
    chmodSync(file('he.key'), 0o600)
    writeFileSync(file('broker.mjs'), BROKER_SCRIPT)
    writeFileSync(file('requests.jsonl'), '')
    writeConfig()
    answer('good {ip}')
    lab = createLab('dghe')
    await lab.addNs('router', 'broker')
    await lab.veth('router', 'eth0', 'broker', 'b0')
    await lab.ip('router', ['addr', 'add', `${wan}/24`, 'dev', 'eth0'])
    await lab.ip('broker', ['addr', 'add', `${BROKER}/24`, 'dev', 'b0'])
    broker = lab.spawn('broker', process.execPath, [file('broker.mjs'), BROKER, String(PORT), file('answer'), file('requests.jsonl')])
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('fake broker not ready in 10 s')), 10_000)
      broker.stdout!.on('data', (b: Buffer) => { if (String(b).includes('ready')) { clearTimeout(timer); resolve() } })
      broker.once('exit', (code) => { clearTimeout(timer); reject(new Error(`fake broker exited ${code}`)) })
    })
  })

  afterAll(async () => {
    await lab?.teardown()
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  it('sends one request per WAN address change (good, then nochg), with the tunnel id and credentials', async () => {
    const first = await runJob()
    expect(first.code, first.stderr).toBe(0)
    expect(first.result).toMatchObject({ wanIpv4: wan, myip: false, tunnels: [{ tunnel: 'he', action: 'sent', answer: `good ${wan}`, local: 'absent' }] })
    expect(requests()).toEqual([{ path: '/nic/update', query: { hostname: TUNNEL_ID }, authorization: basic('labuser'), from: '198.18.0.2' }])
    expect(store().heUpdates.he).toMatchObject({ address: '198.18.0.2', answer: 'good 198.18.0.2' })

    answer('nochg {ip}')
    const again = await runJob()
    expect(again.result.tunnels[0]).toMatchObject({ action: 'skipped' })
    expect(requests()).toHaveLength(1)

    const dry = await runJob(['--dry-run'])
    expect(dry.code, dry.stderr).toBe(0)
    expect(requests()).toHaveLength(1)

    await renumber('198.18.0.3')
    const moved = await runJob()
    expect(moved.result.tunnels[0]).toMatchObject({ action: 'sent', answer: 'nochg 198.18.0.3', reason: 'address changed' })
    expect(requests()).toHaveLength(2)
    expect(requests()[1]).toMatchObject({ query: { hostname: TUNNEL_ID }, authorization: basic('labuser'), from: '198.18.0.3' })
    expect((await runJob()).result.tunnels[0].action).toBe('skipped')
    expect(requests()).toHaveLength(2)
  }, 120_000)

  it('a dry run prints the request it would make, without credentials', async () => {
    await renumber('198.18.0.4')
    const dry = await runJob(['--dry-run'])
    expect(dry.result.tunnels[0]).toMatchObject({ action: 'would-send', url: `http://${BROKER}:${PORT}/nic/update?hostname=${TUNNEL_ID}` })
    expect(requests()).toHaveLength(2)
    expect(store().heUpdates.he.address).toBe('198.18.0.3')
  }, 60_000)

  it('stops after badauth (later runs send nothing) until the HE settings change', async () => {
    answer('badauth')
    const bad = await runJob()
    expect(bad.code).toBe(1)
    expect(bad.result.tunnels[0]).toMatchObject({ action: 'sent', answer: 'badauth' })
    expect(requests()).toHaveLength(3)
    expect(store().heUpdates.he.stopped).toMatchObject({ answer: 'badauth' })

    await renumber('198.18.0.5')
    answer('good {ip}')
    const still = await runJob()
    expect(still.code).toBe(1)
    expect(still.result.tunnels[0]).toMatchObject({ action: 'skipped', stopped: true, reason: expect.stringContaining('stopped') })
    expect(requests()).toHaveLength(3)

    writeConfig('labuser2')
    const fixed = await runJob()
    expect(fixed.code, fixed.stderr).toBe(0)
    expect(fixed.result.tunnels[0]).toMatchObject({ action: 'sent', reason: 'settings changed', answer: 'good 198.18.0.5' })
    expect(requests()).toHaveLength(4)
    expect(requests()[3].authorization).toBe(basic('labuser2'))
    expect(store().heUpdates.he.stopped).toBeUndefined()
  }, 120_000)

  it('backs off for hours after abuse: the next run sends nothing', async () => {
    await renumber('198.18.0.6')
    answer('abuse')
    const abuse = await runJob()
    expect(abuse.result.tunnels[0]).toMatchObject({ action: 'sent', answer: 'abuse' })
    expect(requests()).toHaveLength(5)
    const until = Date.parse(store().heUpdates.he.backoffUntil ?? '')
    expect(until - Date.now()).toBeGreaterThan(5 * 3600_000)

    await renumber('198.18.0.7')
    answer('good {ip}')
    const next = await runJob()
    expect(next.result.tunnels[0]).toMatchObject({ action: 'skipped', reason: expect.stringContaining('backing off') })
    expect(requests()).toHaveLength(5)
  }, 120_000)

  it('never writes the key: not in the store, the logs, or any job output', () => {
    const walk = (d: string): string[] => readdirSync(d, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(path.join(d, e.name)) : [path.join(d, e.name)]))
    const files = walk(file('data'))
    expect(files.some((f) => f.endsWith('dualgate.log'))).toBe(true)
    expect(readFileSync(path.join(file('data'), 'logs', 'dualgate.log'), 'utf8')).toContain('badauth')
    // The key, and the Authorization values that carry it.
    const secrets = [KEY, basic('labuser').slice(6), basic('labuser2').slice(6)]
    for (const f of files) for (const s of secrets) expect(readFileSync(f, 'utf8'), f).not.toContain(s)
    expect(outputs.length).toBeGreaterThan(0)
    for (const o of outputs) for (const s of secrets) expect(o).not.toContain(s)
  })
})
