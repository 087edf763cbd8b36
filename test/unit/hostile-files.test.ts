// Files root reads or writes where someone else may have put something first: dnsmasq's lease file, the DHCP
// client records, the store's temp file, the log, the data directory. Real files in temp dirs; the attacks are
// the ones found on a lab router (a FIFO, a symlink to a 0600 file, a file planted by nobody).
import { execFileSync } from 'node:child_process'
import { chmodSync, chownSync, existsSync, linkSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { parseCidr4 } from '../../lib/addr/ipv4.ts'
import { loadConfig } from '../../lib/core/config.ts'
import { createLogger, logFile } from '../../lib/core/log.ts'
import { userId } from '../../lib/core/safe-file.ts'
import { installPlan } from '../../lib/install/plan.ts'
import { openStore, readStoreView } from '../../lib/core/store.ts'
import type { DiagEnv } from '../../lib/diagnose/env.ts'
import { store as storeCheck } from '../../lib/diagnose/system.ts'
import { leaseFile, readLease4 } from '../../lib/net/dhcp.ts'
import { readLeases, type LanView } from '../../lib/net/neigh.ts'

const isRoot = process.geteuid?.() === 0
const NOBODY = 65534
const VIEW: LanView = { subnet: parseCidr4('192.168.1.1/24'), routerIps: ['192.168.1.1'] }
const LEASE = '0 02:00:00:00:00:50 192.168.1.50 secret-host *\n'

const dirs: string[] = []
function tempDir(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'dualgate-hostile-'))
  dirs.push(dir)
  return dir
}
afterAll(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }) })

/** A file of root's only, as a secret would be. */
function secret(dir: string): string {
  const file = path.join(dir, 'secret')
  writeFileSync(file, LEASE, { mode: 0o600 })
  return file
}

describe('dnsmasq lease file', () => {
  it('a FIFO is refused at once, with a warning and nothing seen (it hung scan-arp and prune-stale)', async () => {
    const dir = tempDir()
    const fifo = path.join(dir, 'dhcp.leases')
    execFileSync('mkfifo', [fifo])
    const started = Date.now()
    const r = await readLeases(VIEW, fifo)
    expect(Date.now() - started).toBeLessThan(1000)
    expect(r.seen).toEqual([])
    expect(r.rejected).toEqual([{ input: `lease file ${fifo}`, why: 'refused: a FIFO, not a regular file' }])
  }, 3000)

  it('a symlink is not followed: the linked file stays unread and none of it reaches the warning', async () => {
    const dir = tempDir()
    const link = path.join(dir, 'dhcp.leases')
    symlinkSync(secret(dir), link)
    const r = await readLeases(VIEW, link)
    expect(r.seen).toEqual([])
    expect(r.rejected).toEqual([{ input: `lease file ${link}`, why: 'refused: a symbolic link' }])
    expect(JSON.stringify(r)).not.toContain('secret-host')
  })

  it('a hard link to a file of root\'s is refused too', async () => {
    const dir = tempDir()
    const file = path.join(dir, 'dhcp.leases')
    linkSync(secret(dir), file)
    expect((await readLeases(VIEW, file)).rejected[0].why).toBe('refused: 2 hard links to it')
  })

  it.skipIf(!isRoot)('a file planted by another user, or writable by others, is refused; dnsmasq\'s own is read', async () => {
    const dir = tempDir()
    const file = path.join(dir, 'dhcp.leases')
    writeFileSync(file, LEASE, { mode: 0o644 })
    expect((await readLeases(VIEW, file)).seen).toMatchObject([{ mac: '02:00:00:00:00:50', ip: '192.168.1.50', hostname: 'secret-host' }])
    chmodSync(file, 0o666)
    expect((await readLeases(VIEW, file)).rejected[0].why).toBe('refused: writable by group or others (mode 666)')
    chmodSync(file, 0o644)
    chownSync(file, NOBODY, NOBODY)
    const planted = await readLeases(VIEW, file)
    expect(planted.seen).toEqual([])
    expect(planted.rejected[0].why).toMatch(/^refused: owned by uid 65534, not by uid 0/)
    const dnsmasq = await userId('dnsmasq')
    if (dnsmasq !== undefined) {
      chownSync(file, dnsmasq, NOBODY)
      expect((await readLeases(VIEW, file)).seen).toHaveLength(1)
    }
  })

  it('a file over 4 MiB is refused, not read into memory', async () => {
    const dir = tempDir()
    const file = path.join(dir, 'dhcp.leases')
    writeFileSync(file, LEASE.repeat(Math.ceil((4 << 20) / LEASE.length) + 1))
    expect((await readLeases(VIEW, file)).rejected[0].why).toBe(`refused: larger than ${4 << 20} bytes`)
  })

  it('a missing file is nothing seen and nothing to warn about', async () => {
    expect(await readLeases(VIEW, path.join(tempDir(), 'none'))).toEqual({ seen: [], rejected: [] })
  })

  it('the Debian install points dnsmasqLeases at dnsmasq\'s own file, not /tmp (OpenWrt keeps its /tmp path)', () => {
    const configFile = (platform: 'openwrt' | 'debian') => installPlan({ platform, files: [], systemd: false, dnsmasqService: '', roles: ['gateway'] })
      .find((s) => s.kind === 'write' && s.to === '/etc/config/dualgate')
    const leases = (platform: 'openwrt' | 'debian') => {
      const step = configFile(platform)
      expect(step).toMatchObject({ ifAbsent: true, mode: 0o600 })
      const file = path.join(tempDir(), 'dualgate')
      writeFileSync(file, step?.kind === 'write' ? step.content : '')
      return loadConfig({ env: {}, uciFile: file }).config.dnsmasqLeases
    }
    expect(leases('debian')).toBe('/var/lib/misc/dnsmasq.leases')
    expect(leases('openwrt')).toBe('/tmp/dhcp.leases')
  })

  it('finds a user\'s uid in a passwd file', async () => {
    const passwd = path.join(tempDir(), 'passwd')
    writeFileSync(passwd, 'root:x:0:0:root:/root:/bin/ash\ndnsmasq:x:453:453:dnsmasq:/var/run/dnsmasq:/bin/false\n')
    expect(await userId('dnsmasq', passwd)).toBe(453)
    expect(await userId('root', passwd)).toBe(0)
    expect(await userId('nobody', passwd)).toBeUndefined()
  })
})

describe('DHCP client lease records', () => {
  const RECORD = 'event=bound\nip=198.18.0.20\nsubnet=255.255.255.0\nrouter=198.18.0.1\nlease=600\nat=1700000000\n'

  it('a record is read; a symlink or a FIFO in its place is refused with the file named, and never hangs', async () => {
    const run = tempDir()
    const file = leaseFile(run, 'dg1', 4)
    writeFileSync(file, RECORD)
    expect(await readLease4(run, 'dg1')).toMatchObject({ ip: '198.18.0.20', prefix: 24 })
    rmSync(file)
    symlinkSync(secret(run), file)
    expect(await readLease4(run, 'dg1')).toBe(`${file} refused: a symbolic link`)
    rmSync(file)
    execFileSync('mkfifo', [file])
    expect(await readLease4(run, 'dg1')).toBe(`${file} refused: a FIFO, not a regular file`)
  }, 3000)
})

describe('store temp file', () => {
  it('a symlink at the temp path is not written through: its target is untouched, the store is a plain file', async () => {
    const dir = tempDir()
    const data = path.join(dir, 'data')
    mkdirSync(data)
    const target = path.join(dir, 'precious')
    writeFileSync(target, 'precious\n', { mode: 0o600 })
    symlinkSync(target, path.join(data, '.dualgate.json.tmp'))
    const store = openStore({ dataDir: data })
    await store.update((d) => { d.upstream.prefixes = ['2001:db8::/64'] })
    expect(readFileSync(target, 'utf8')).toBe('precious\n')
    const file = path.join(data, 'dualgate.json')
    expect(lstatSync(file).isFile()).toBe(true)
    expect(statSync(file).mode & 0o777).toBe(0o600)
    expect((await store.read()).upstream.prefixes).toEqual(['2001:db8::/64'])
    expect(existsSync(path.join(data, '.dualgate.json.tmp'))).toBe(false)
  })
})

describe('log file', () => {
  it('is created 0600 in a 0700 directory, and rotation keeps every file 0600', () => {
    const dir = tempDir()
    const log = createLogger({ tag: 'test', dataDir: dir, maxBytes: 300, files: 3, level: 'info' })
    for (let i = 0; i < 12; i++) log.info(`line ${i} ${'x'.repeat(60)}`)
    const file = logFile(dir)
    for (const f of [file, `${file}.1`, `${file}.2`]) expect((statSync(f).mode & 0o777).toString(8), f).toBe('600')
    expect((statSync(path.dirname(file)).mode & 0o777).toString(8)).toBe('700')
  })

  it('a log left 0644 by an older version becomes 0600; a symlink at its path is not written through', () => {
    const dir = tempDir()
    const file = logFile(dir)
    mkdirSync(path.dirname(file), { recursive: true })
    writeFileSync(file, '', { mode: 0o644 })
    chmodSync(file, 0o644)
    createLogger({ tag: 'test', dataDir: dir }).info('hello')
    expect(statSync(file).mode & 0o777).toBe(0o600)
    rmSync(file)
    const target = secret(dir)
    symlinkSync(target, file)
    createLogger({ tag: 'test', dataDir: dir }).info('hello')
    expect(readFileSync(target, 'utf8')).toBe(LEASE)
  })
})

describe('diagnose: the data directory', () => {
  function env(dataDir: string): DiagEnv {
    const { config } = loadConfig({ env: { DUALGATE_DATA_DIR: dataDir }, uciFile: '/nonexistent' })
    return { ctx: { config }, store: () => readStoreView(dataDir) } as unknown as DiagEnv
  }

  it('fails when others can write it, and --fix makes it 0700', async () => {
    const dir = tempDir()
    chmodSync(dir, 0o777)
    const probe = await storeCheck(env(dir))
    expect(probe.check).toMatchObject({ status: 'fail', reason: `data directory ${dir} is writable by group or others (mode 777)`, fix: `chmod 700 ${dir}` })
    await probe.apply!()
    expect(statSync(dir).mode & 0o777).toBe(0o700)
    expect((await storeCheck(env(dir))).check.status).toBe('pass')
  })

  it.skipIf(!isRoot)('fails when another user owns it, and --fix takes it back', async () => {
    const dir = tempDir()
    chownSync(dir, NOBODY, NOBODY)
    const probe = await storeCheck(env(dir))
    expect(probe.check).toMatchObject({ status: 'fail', reason: `data directory ${dir} is owned by uid 65534, not by uid 0`, fix: `chown 0:0 ${dir}; chmod 700 ${dir}` })
    await probe.apply!()
    expect(statSync(dir).uid).toBe(0)
  })
})
