// The Hurricane Electric updater: its pure rules (lib/tunnels/he.ts, isPublicIpv4), the key file checks, and
// the job against a fake network (fetch) and a fake system (Sh): what it sends, when, what it remembers, and
// that the sit tunnel's local address follows the WAN. The real job against a broker in namespaces is in
// test/lab/he-update.test.ts; sit itself cannot be created on this kernel (the kernel lab tests it).
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { isPublicIpv4 } from '../../lib/addr/ipv4.ts'
import { loadConfig } from '../../lib/core/config.ts'
import type { ExecResult, Sh } from '../../lib/core/exec.ts'
import type { JobContext } from '../../lib/core/job.ts'
import { createLogger } from '../../lib/core/log.ts'
import type { HeUpdate } from '../../lib/core/schema.ts'
import { openStore } from '../../lib/core/store.ts'
import {
  ABUSE_BACKOFF_MS, basicAuth, keyFromText, nextRecord, parseAnswer, settingsFingerprint, shouldSend, updateUrl,
} from '../../lib/tunnels/he.ts'
import job, { readKeyFile, sendUpdate, updateAll, type Fetch, type HeUpdateResult } from '../../jobs/he-update.ts'

const asRoot = process.getuid?.() === 0
const KEY = 'Zq9xKeyNeverShown42'
let dir: string

beforeAll(() => { dir = mkdtempSync(path.join(tmpdir(), 'dghe-unit-')) })
afterAll(() => { rmSync(dir, { recursive: true, force: true }) })

describe('isPublicIpv4', () => {
  it('says which WAN addresses the internet routes to', () => {
    for (const a of ['1.1.1.1', '100.63.255.255', '100.128.0.1', '172.32.0.1', '192.0.1.1', '198.17.255.255', '198.20.0.1', '223.255.255.254']) expect(isPublicIpv4(a), a).toBe(true)
    for (const a of [
      '0.1.2.3', '10.0.0.1', '100.64.0.1', '100.127.255.255', '127.0.0.1', '169.254.1.1', '172.16.0.1', '172.31.255.255',
      '192.0.0.9', '192.0.2.1', '192.168.1.1', '198.18.0.2', '198.19.255.255', '198.51.100.7', '203.0.113.9',
      '224.0.0.1', '239.255.255.255', '240.0.0.1', '255.255.255.255', '', 'not-an-ip', '01.2.3.4', '1.2.3.256',
    ]) expect(isPublicIpv4(a), a).toBe(false)
  })
})

describe('parseAnswer', () => {
  it('knows every answer HE gives', () => {
    expect(parseAnswer('good 198.51.100.7\n')).toEqual({ code: 'good', address: '198.51.100.7', text: 'good 198.51.100.7' })
    expect(parseAnswer('nochg 198.51.100.7')).toMatchObject({ code: 'nochg', address: '198.51.100.7' })
    for (const code of ['badauth', '!donator', 'notfqdn', 'nohost', 'abuse', '911']) expect(parseAnswer(`${code}\r\n`).code, code).toBe(code)
  })

  it('calls anything else unknown, and keeps only a short printable line', () => {
    for (const body of ['', 'OK', 'good not-an-ip', 'good 1.2.3.4 extra', 'badauth now', '-ERROR: Missing parameter(s).', 'unknown', '<html>']) {
      expect(parseAnswer(body).code, body).toBe('unknown')
    }
    const long = parseAnswer(`${'x'.repeat(500)}\u0007\n second line`)
    expect(long.text).toHaveLength(64)
    expect(parseAnswer('a\u0000b\u001bc').text).toBe('a?b?c')
  })
})

describe('the record and when to send', () => {
  const now = new Date('2025-01-01T00:00:00Z')
  const settings = 'fp1'
  const at = now.toISOString()
  const good: HeUpdate = { address: '100.128.0.1', answer: 'good 100.128.0.1', at }

  it('sends with no record or a new address, not for the address the broker has', () => {
    expect(shouldSend(undefined, { address: '100.128.0.1', settings, now })).toMatchObject({ send: true, reason: 'first update' })
    expect(shouldSend(good, { address: '100.128.0.1', settings, now })).toMatchObject({ send: false, reason: 'unchanged' })
    expect(shouldSend(good, { address: '100.128.0.2', settings, now })).toMatchObject({ send: true, reason: 'address changed' })
    expect(shouldSend({ answer: '911', at }, { address: '100.128.0.1', settings, now })).toMatchObject({ send: true })
  })

  it('remembers the settings an update was accepted with, and sends again when they change', () => {
    const accepted = nextRecord(undefined, { answer: parseAnswer('good 100.128.0.1') }, { address: '100.128.0.1', settings, now })
    expect(accepted.settings).toBe(settings)
    expect(shouldSend(accepted, { address: '100.128.0.1', settings, now })).toMatchObject({ send: false, reason: 'unchanged' })
    expect(shouldSend(accepted, { address: '100.128.0.1', settings: 'fp2', now })).toMatchObject({ send: true, reason: 'settings changed' })
  })

  it('stays stopped after a fatal answer until the settings change', () => {
    const stopped = nextRecord(good, { answer: parseAnswer('badauth') }, { address: '100.128.0.2', settings, now })
    expect(stopped).toEqual({ address: '100.128.0.1', answer: 'badauth', at, stopped: { answer: 'badauth', settings } })
    expect(shouldSend(stopped, { address: '100.128.0.3', settings, now })).toMatchObject({ send: false, reason: 'stopped', answer: 'badauth' })
    expect(shouldSend(stopped, { address: '100.128.0.1', settings: 'fp2', now })).toMatchObject({ send: true, reason: 'settings changed' })
    for (const code of ['!donator', 'notfqdn', 'nohost']) expect(nextRecord(undefined, { answer: parseAnswer(code) }, { address: 'x', settings, now }).stopped, code).toEqual({ answer: code, settings })
  })

  it('backs off for hours after abuse', () => {
    const abuse = nextRecord(good, { answer: parseAnswer('abuse') }, { address: '100.128.0.2', settings, now })
    expect(abuse.backoffUntil).toBe(new Date(now.getTime() + ABUSE_BACKOFF_MS).toISOString())
    expect(ABUSE_BACKOFF_MS).toBeGreaterThanOrEqual(3600_000)
    expect(shouldSend(abuse, { address: '100.128.0.2', settings, now: new Date(now.getTime() + ABUSE_BACKOFF_MS - 1000) })).toMatchObject({ send: false, reason: 'backing off' })
    expect(shouldSend(abuse, { address: '100.128.0.2', settings, now: new Date(now.getTime() + ABUSE_BACKOFF_MS + 1000) })).toMatchObject({ send: true })
  })

  it('keeps everything but answer and at on 911, unknown answers and errors; good clears stop and back-off', () => {
    const later = new Date(now.getTime() + 60_000)
    const o = { address: '100.128.0.2', settings, now: later }
    const backingOff = { ...good, backoffUntil: at }
    expect(nextRecord(backingOff, { answer: parseAnswer('911') }, o)).toEqual({ ...backingOff, answer: '911', at: later.toISOString() })
    expect(nextRecord(backingOff, { answer: parseAnswer('huh') }, o)).toEqual({ ...backingOff, answer: 'unknown', at: later.toISOString() })
    expect(nextRecord(backingOff, { error: true }, o)).toEqual({ ...backingOff, answer: 'error', at: later.toISOString() })
    const stopped = { ...good, stopped: { answer: 'badauth', settings: 'old' }, backoffUntil: at }
    expect(nextRecord(stopped, { answer: parseAnswer('nochg 100.128.0.2') }, o)).toEqual({ address: '100.128.0.2', settings, answer: 'nochg 100.128.0.2', at: later.toISOString() })
  })

  it('fingerprints every HE setting', () => {
    const base = { tunnelId: '1', username: 'u', keyFile: '/etc/k', url: 'https://h/nic/update' }
    const fp = settingsFingerprint(base)
    expect(fp).toMatch(/^[0-9a-f]{16}$/)
    for (const change of [{ tunnelId: '2' }, { username: 'v' }, { keyFile: '/etc/k2' }, { url: 'https://h2/nic/update' }]) expect(settingsFingerprint({ ...base, ...change })).not.toBe(fp)
  })
})

describe('request parts', () => {
  it('builds the URL without credentials, with myip only when given', () => {
    expect(updateUrl('https://ipv4.tunnelbroker.net/nic/update', '123456').href).toBe('https://ipv4.tunnelbroker.net/nic/update?hostname=123456')
    expect(updateUrl('https://u:p@h.example/nic/update?myip=1.1.1.1', 't1', '100.128.0.1').href).toBe('https://h.example/nic/update?hostname=t1&myip=100.128.0.1')
    expect(updateUrl('https://h.example/nic/update?myip=1.1.1.1', 't1').href).toBe('https://h.example/nic/update?hostname=t1')
    expect(basicAuth('user', 'a:b')).toBe(`Basic ${Buffer.from('user:a:b').toString('base64')}`)
  })

  it('takes the key file\'s first line as the key', () => {
    expect(keyFromText(`  ${KEY}  \nignored`)).toBe(KEY)
    expect(keyFromText('\n')).toBeUndefined()
    expect(keyFromText('two words')).toBeUndefined()
  })
})

describe('sendUpdate', () => {
  const url = new URL('https://broker.example/nic/update?hostname=1')

  it('reads a few KiB of an endless answer and stops', async () => {
    let pulls = 0
    const endless = new ReadableStream<Uint8Array>({ pull(c) { pulls++; c.enqueue(new TextEncoder().encode(pulls === 1 ? 'good 100.128.0.1\n' : 'x'.repeat(1024))) } })
    const r = await sendUpdate(url, 'Basic x', (async () => new Response(endless)) as Fetch)
    expect(r).toEqual({ answer: { code: 'good', address: '100.128.0.1', text: 'good 100.128.0.1' } })
    expect(pulls).toBeLessThan(10)
  })

  it('passes a timeout signal and no redirects; describes failures without the request', async () => {
    let init: RequestInit | undefined
    await sendUpdate(url, 'Basic secret', (async (_u: URL, i: RequestInit) => { init = i; return new Response('nochg') }) as Fetch)
    expect(init?.signal).toBeInstanceOf(AbortSignal)
    expect(init?.redirect).toBe('manual')
    const timeout = Object.assign(new Error('The operation was aborted due to timeout'), { name: 'TimeoutError' })
    expect(await sendUpdate(url, 'Basic secret', (async () => { throw timeout }) as Fetch)).toEqual({ error: 'no answer in 15 s' })
  })
})

describe.skipIf(!asRoot)('the key file (needs root to own files as root and as others)', () => {
  const keyFile = (name: string, mode = 0o600, text = `${KEY}\n`) => {
    const p = path.join(dir, name)
    writeFileSync(p, text, { mode })
    chmodSync(p, mode)
    return p
  }
  const refusal = async (p: string) => {
    const r = await readKeyFile(p)
    expect(r).toHaveProperty('refused')
    const why = (r as { refused: string }).refused
    expect(why).not.toContain(KEY)
    return why
  }

  it('reads a root-owned file nobody else can read', async () => {
    expect(await readKeyFile(keyFile('ok'))).toEqual({ key: KEY })
    expect(await readKeyFile(keyFile('ok-group', 0o640))).toEqual({ key: KEY })
  })

  it('refuses links, other owners, other readers, non-files, and empty files, never naming the key', async () => {
    const target = keyFile('target')
    symlinkSync(target, path.join(dir, 'link'))
    expect(await refusal(path.join(dir, 'link'))).toMatch(/symbolic link/)
    expect(await refusal(keyFile('world', 0o604))).toMatch(/readable by others/)
    expect(await refusal(keyFile('gw', 0o620))).toMatch(/writable by group or others/)
    const theirs = keyFile('theirs')
    chownSync(theirs, 65534, 65534)
    expect(await refusal(theirs)).toMatch(/owned by uid 65534/)
    mkdirSync(path.join(dir, 'adir'))
    expect(await refusal(path.join(dir, 'adir'))).toMatch(/not a regular file/)
    expect(await refusal(keyFile('empty', 0o600, ''))).toMatch(/holds no key/)
    expect(await refusal(keyFile('big', 0o600, 'x'.repeat(5000)))).toMatch(/larger than/)
    expect(await refusal(path.join(dir, 'absent'))).toMatch(/does not exist/)
  })
})

// ---------------------------------------------------------------------------------------------------------
// The job with a fake system and network.

interface World {
  wan: string
  /** The sit interface, when it exists. */
  sit?: { local: string }
  applied: string[][]
  requests: { url: string; authorization: string }[]
  answer: string | Error
}

function fakeSh(w: World): Sh {
  const ok = (stdout: string): ExecResult => ({ stdout, stderr: '', code: 0 })
  return {
    dryRun: false,
    async query(cmd, args) {
      const dev = args.at(-1)
      if (args.includes('addr') && dev === 'wan0') {
        return ok(JSON.stringify([{ ifname: 'wan0', flags: ['UP', 'LOWER_UP'], addr_info: [{ family: 'inet', local: w.wan, prefixlen: 24, scope: 'global' }] }]))
      }
      if (args.includes('link') && dev === 'he0' && w.sit) {
        return ok(JSON.stringify([{ ifname: 'he0', mtu: 1480, flags: ['UP'], linkinfo: { info_kind: 'sit', info_data: { local: w.sit.local, remote: '100.128.9.9', ttl: 64 } } }]))
      }
      return { stdout: '', stderr: `Device "${dev}" does not exist.`, code: 1 }
    },
    async apply(cmd, args) {
      w.applied.push([cmd, ...args])
      return ok('')
    },
    async daemon() { throw new Error('no daemons here') },
  }
}

function fakeFetch(w: World): Fetch {
  return (async (input: string | URL | Request, init?: RequestInit) => {
    const headers = new Headers(init?.headers)
    w.requests.push({ url: String(input), authorization: headers.get('authorization') ?? '' })
    if (w.answer instanceof Error) throw w.answer
    return new Response(`${w.answer}\n`)
  }) as Fetch
}

function jobContext(name: string, tunnel: Record<string, unknown>, opts: { dryRun?: boolean } = {}) {
  const base = path.join(dir, name)
  mkdirSync(base, { recursive: true })
  const key = path.join(base, 'he.key')
  writeFileSync(key, `${KEY}\n`, { mode: 0o600 })
  const configFile = path.join(base, 'config.json')
  const write = (t: Record<string, unknown>) => writeFileSync(configFile, JSON.stringify({
    heUpdateUrl: 'https://broker.example/nic/update',
    tunnels: [{ name: 'he', type: '6in4', iface: 'he0', remote: '100.128.9.9', address: ['2001:db8:5::2/64'], heTunnelId: '123456', heUsername: 'alice', heKeyFile: key, ...t }],
  }))
  write(tunnel)
  const env = { DUALGATE_CONFIG: configFile, DUALGATE_DATA_DIR: path.join(base, 'data'), DUALGATE_WAN_IF: 'wan0' }
  const world: World = { wan: '100.128.0.1', applied: [], requests: [], answer: 'good 100.128.0.1' }
  const ctx = (): JobContext => {
    const { config } = loadConfig({ env, uciFile: '/nonexistent' })
    return {
      config,
      store: openStore({ dataDir: config.dataDir }),
      log: createLogger({ tag: 'he-update', level: 'debug', dataDir: config.dataDir }),
      sh: fakeSh(world),
      dryRun: !!opts.dryRun,
      verbose: false,
      args: [],
      options: {},
      trigger: 'cli',
      interactive: false,
    }
  }
  const run = async (dryRun = false): Promise<HeUpdateResult> => updateAll({ ...ctx(), dryRun }, { fetch: fakeFetch(world) })
  const record = async () => (await ctx().store.read()).heUpdates.he
  return { world, run, record, rewrite: write, dataDir: env.DUALGATE_DATA_DIR }
}

const sitChange = (local: string) => ['ip', 'tunnel', 'change', 'he0', 'mode', 'sit', 'local', local, 'remote', '100.128.9.9', 'ttl', '64']

function filesUnder(d: string): string[] {
  return readdirSync(d, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? filesUnder(path.join(d, e.name)) : [path.join(d, e.name)]))
}

describe.skipIf(!asRoot)('jobs/he-update.ts with a fake network and system (root: the key file must be root\'s)', () => {
  it('sends once per WAN address with myip and credentials; the sit local follows the WAN (changeSit)', async () => {
    const t = jobContext('follow', {})
    t.world.sit = { local: '100.128.0.9' }
    const first = await t.run()
    expect(first).toMatchObject({ wanIpv4: '100.128.0.1', myip: true, tunnels: [{ tunnel: 'he', action: 'sent', answer: 'good 100.128.0.1', local: 'changed' }] })
    expect(t.world.requests).toEqual([{ url: 'https://broker.example/nic/update?hostname=123456&myip=100.128.0.1', authorization: basicAuth('alice', KEY) }])
    expect(t.world.applied).toEqual([sitChange('100.128.0.1')])
    expect(await t.record()).toMatchObject({ address: '100.128.0.1', answer: 'good 100.128.0.1' })

    // The same address: nothing sent, and the tunnel (now following) is left alone.
    t.world.sit = { local: '100.128.0.1' }
    expect((await t.run()).tunnels[0]).toMatchObject({ action: 'skipped', local: 'unchanged' })
    expect(t.world.requests).toHaveLength(1)
    expect(t.world.applied).toHaveLength(1)

    // A new WAN address: one request, and the tunnel moves to it.
    t.world.wan = '100.128.0.2'
    t.world.answer = 'nochg 100.128.0.2'
    expect((await t.run()).tunnels[0]).toMatchObject({ action: 'sent', local: 'changed' })
    expect(t.world.requests.map((r) => r.url)).toEqual([expect.stringContaining('myip=100.128.0.1'), expect.stringContaining('myip=100.128.0.2')])
    expect(t.world.applied).toEqual([sitChange('100.128.0.1'), sitChange('100.128.0.2')])

    // The key is in no file under dataDir (store, backups, logs).
    const files = filesUnder(t.dataDir)
    expect(files.some((f) => f.endsWith('dualgate.log'))).toBe(true)
    for (const f of files) expect(readFileSync(f, 'utf8'), f).not.toContain(KEY)
  })

  it('leaves a fixed local address and a missing interface alone', async () => {
    const fixed = jobContext('fixed', { local: '100.128.0.50' })
    fixed.world.sit = { local: '100.128.0.50' }
    expect((await fixed.run()).tunnels[0].local).toBeUndefined()
    expect(fixed.world.applied).toEqual([])
    const absent = jobContext('absent', {})
    expect((await absent.run()).tunnels[0].local).toBe('absent')
    expect(absent.world.applied).toEqual([])
  })

  it('omits myip behind NAT; a dry run sends and writes nothing and shows the URL without the key', async () => {
    const t = jobContext('nat', {})
    t.world.wan = '192.168.1.2'
    const dry = await t.run(true)
    expect(dry).toMatchObject({ myip: false, tunnels: [{ action: 'would-send', url: 'https://broker.example/nic/update?hostname=123456' }] })
    expect(JSON.stringify(dry)).not.toContain(KEY)
    expect(job.format!(dry)).toContain('he: would send GET https://broker.example/nic/update?hostname=123456')
    expect(job.exitCode!(dry)).toBe(0)
    expect(t.world.requests).toEqual([])
    expect(await t.record()).toBeUndefined()
    await t.run()
    expect(t.world.requests.map((r) => r.url)).toEqual(['https://broker.example/nic/update?hostname=123456'])
    expect(await t.record()).toMatchObject({ address: '192.168.1.2' })
  })

  it('retries after a network error or 911 with only answer and at changed', async () => {
    const t = jobContext('retry', {})
    await t.run()
    const before = await t.record()
    t.world.wan = '100.128.0.2'
    t.world.answer = new TypeError('fetch failed', { cause: { code: 'ECONNREFUSED' } })
    expect((await t.run()).tunnels[0]).toMatchObject({ action: 'failed', reason: 'fetch failed: ECONNREFUSED' })
    expect(await t.record()).toMatchObject({ address: before?.address, answer: 'error' })
    t.world.answer = '911'
    expect((await t.run()).tunnels[0]).toMatchObject({ action: 'sent', answer: '911' })
    expect(await t.record()).toMatchObject({ address: before?.address, answer: '911' })
    t.world.answer = 'good 100.128.0.2'
    await t.run()
    expect(t.world.requests).toHaveLength(4)
    expect(await t.record()).toMatchObject({ address: '100.128.0.2' })
  })

  it('stops on badauth until the HE settings change, and refuses a key file others can read', async () => {
    const t = jobContext('badauth', {})
    t.world.answer = 'badauth'
    await t.run()
    t.world.wan = '100.128.0.3'
    const stopped = await t.run()
    expect(stopped.tunnels[0]).toMatchObject({ action: 'skipped', stopped: true, reason: expect.stringContaining('stopped') })
    expect(job.exitCode!(stopped)).toBe(1)
    expect(t.world.requests).toHaveLength(1)
    t.rewrite({ heUsername: 'bob' })
    t.world.answer = 'good 100.128.0.3'
    expect((await t.run()).tunnels[0]).toMatchObject({ action: 'sent', reason: 'settings changed' })
    expect(t.world.requests.at(-1)?.authorization).toBe(basicAuth('bob', KEY))

    const loose = jobContext('loose', {})
    chmodSync(path.join(dir, 'loose', 'he.key'), 0o644)
    expect((await loose.run()).tunnels[0]).toMatchObject({ action: 'refused', reason: expect.stringMatching(/readable by others/) })
    expect(loose.world.requests).toEqual([])
  })
})
