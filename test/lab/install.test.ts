// install and uninstall, end to end. Debian: into a fake root (--root) while the network side lives in a lab
// router namespace: files, links, nftables, macvlans, rules and processes are snapshotted before install and
// must be equal again after uninstall. OpenWrt: the install into a fake root (uci is a recording stand-in),
// then the shell pieces it put there run under busybox ash, chrooted into that root as on a router.
import { execFile, execFileSync, spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { chmodSync, copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { InstallResult } from '../../jobs/install.ts'
import { gatewayEnv, ROOT, runJob } from './gateway.ts'
import { createLab, isRoot, type Lab } from './lab.ts'

interface Run { code: number; stdout: string; stderr: string }

function run(cmd: string, args: string[], o: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(cmd, args, { env: o.env ?? process.env, cwd: o.cwd ?? ROOT, timeout: o.timeoutMs ?? 120_000, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr })
    })
  })
}

/** Every path under `root`: files with their hash and mode, links with their target, directories. */
function snapshot(root: string): string[] {
  const out: string[] = []
  const walk = (rel: string) => {
    for (const name of readdirSync(path.join(root, rel)).sort()) {
      const r = `${rel}/${name}`
      const s = lstatSync(path.join(root, r))
      if (s.isSymbolicLink()) out.push(`l ${r} -> ${readlinkSync(path.join(root, r))}`)
      else if (s.isDirectory()) { out.push(`d ${r}`); walk(r) }
      else out.push(`f ${r} ${(s.mode & 0o777).toString(8)} ${createHash('sha256').update(readFileSync(path.join(root, r))).digest('hex')}`)
    }
  }
  walk('')
  return out
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe.skipIf(!isRoot())('install and uninstall', () => {
  beforeAll(async () => {
    // The install ships the build; make it from the sources under test.
    const build = await run('npm', ['run', 'build'], { timeoutMs: 180_000 })
    expect(existsSync(path.join(ROOT, 'dist/jobs/install.js')), build.stdout + build.stderr).toBe(true)
    expect(existsSync(path.join(ROOT, 'dist/lib/status-page/assets/index.html')), 'npm run build copies the status page').toBe(true)
  }, 200_000)

  describe('Debian: fake root, network in a lab', () => {
    let lab: Lab
    let root: string
    let runnerPid = 0
    const env = { DUALGATE_API_PORT: '5050', DUALGATE_API_TOKEN: 'install-test-token' }

    /** What dualgate could leave in the router namespace. */
    async function network(): Promise<Record<string, string>> {
      const ns = lab.router.ns
      const x = async (cmd: string, args: string[]) => (await lab.exec(ns, cmd, args)).stdout
      const links = (JSON.parse(await x('ip', ['-j', 'link', 'show'])) as { ifname: string }[]).map((l) => l.ifname).sort().join(' ')
      const pids = (await run('ip', ['netns', 'pids', ns])).stdout.split('\n').filter(Boolean)
      const procs = pids.map((p) => { try { return readFileSync(`/proc/${p}/cmdline`, 'utf8').replaceAll('\0', ' ').trim() } catch { return '' } }).filter(Boolean).sort().join('\n')
      return {
        nft: await x('nft', ['list', 'ruleset']),
        links,
        rules4: await x('ip', ['-4', 'rule', 'show']),
        rules6: await x('ip', ['-6', 'rule', 'show']),
        routes4: await x('ip', ['-4', 'route', 'show', 'table', 'all']),
        procs,
      }
    }

    beforeAll(async () => {
      lab = await createLab({ mode: 'dual', devices: 2 })
      root = path.join(lab.dir, 'root')
      // Something of the admin's in the way, and directories that were there before.
      mkdirSync(path.join(root, 'etc/dnsmasq.d'), { recursive: true })
      mkdirSync(path.join(root, 'usr/bin'), { recursive: true })
      writeFileSync(path.join(root, 'etc/dnsmasq.d/local.conf'), 'domain=lan\n')
      writeFileSync(path.join(root, 'usr/bin/gateway-logs'), '#!/bin/sh\necho the admin\'s own script\n', { mode: 0o755 })
    }, 120_000)
    afterAll(async () => {
      if (runnerPid) try { process.kill(runnerPid, 'SIGKILL') } catch { /* gone */ }
      await lab?.teardown()
    })

    it('installs, runs from the install, and uninstalls to exactly the state before', async () => {
      const filesBefore = snapshot(root)
      const netBefore = await network()

      const install = await runJob<InstallResult>(lab, 'install', ['--root', root, '--platform', 'debian'], env)
      expect(install.code, install.stderr).toBe(0)
      expect(install.result.backedUp).toEqual(['/usr/bin/gateway-logs'])
      expect(install.result.skipped.join('\n')).toMatch(/not the live root/)
      const lib = path.join(root, 'usr/lib/dualgate')
      for (const f of ['dist/jobs/diagnose.js', 'dist/lib/runner/main.js', 'dist/lib/status-page/assets/app.js', 'hooks/dualgate-event', 'hooks/bin/gateway-status', 'node_modules/h3/package.json', 'package.json', '.manifest.json']) {
        expect(existsSync(path.join(lib, f)), f).toBe(true)
      }
      expect(existsSync(path.join(lib, 'node_modules/typescript'))).toBe(false)
      expect(readFileSync(path.join(root, 'etc/dnsmasq.d/dualgate.conf'), 'utf8')).toContain('dhcp-script=/usr/lib/dualgate/hooks/dnsmasq-script')
      expect(readFileSync(path.join(root, 'etc/systemd/system/dualgate.service'), 'utf8')).toContain('ExecStart=')
      expect(readlinkSync(path.join(root, 'usr/bin/gateway-logs'))).toBe('/usr/lib/dualgate/hooks/bin/gateway-logs')
      const again = await runJob<InstallResult>(lab, 'install', ['--root', root, '--platform', 'debian'], env)
      expect(again.code, again.stderr).toBe(0)
      expect(again.result.written).toEqual([])

      // The network side, as a running gateway has it: devices acquired, then the installed runner up.
      expect((await runJob(lab, 'scan-arp', [], env)).code).toBe(0)
      const acquire = await runJob<{ active: string[] }>(lab, 'acquire-leases', [], env)
      expect(acquire.code, acquire.stderr).toBe(0)
      expect(acquire.result.active).toHaveLength(2)
      const gw = gatewayEnv(lab, env)
      rmSync(path.join(gw.DUALGATE_DATA_DIR, 'spool'), { recursive: true, force: true })
      const child = spawn('ip', ['netns', 'exec', lab.router.ns, process.execPath, path.join(lib, 'dist/lib/runner/main.js')], { env: gw, stdio: 'ignore', detached: true })
      child.unref()
      runnerPid = child.pid!
      for (let i = 0; i < 100 && !existsSync(path.join(gw.DUALGATE_DATA_DIR, 'runner.pid')); i++) await sleep(100)
      // The installed command, as a person runs it.
      const status = await lab.exec(lab.router.ns, path.join(lib, 'hooks/bin/gateway-status'), ['--json'], { env: gw, nothrow: true })
      expect(status.code, status.stderr).toBe(0)
      expect(JSON.parse(status.stdout)).toMatchObject({ runner: { up: true }, devices: { active: 2 } })
      const during = await network()
      expect(during.links).toMatch(/dg[0-9a-f]{12}/)
      expect(during.nft).toContain('table inet dualgate')
      expect(during.procs).toMatch(/udhcpc/)

      const un = await runJob<InstallResult>(lab, 'install', ['uninstall', '--root', root, '--platform', 'debian', '--network'], env)
      expect(un.code, un.stderr).toBe(0)
      expect(un.result.restored).toEqual(['/usr/bin/gateway-logs'])
      expect(un.result.network).toMatchObject({ runner: runnerPid, nft: true })
      expect(un.result.network?.macvlans).toHaveLength(2)
      expect(snapshot(root)).toEqual(filesBefore)
      expect(await network()).toEqual(netBefore)

      const twice = await runJob<InstallResult>(lab, 'install', ['uninstall', '--root', root, '--platform', 'debian', '--network'], env)
      expect(twice.code, twice.stderr).toBe(0)
      expect(twice.result).toMatchObject({ notInstalled: true, removed: [], restored: [], network: { macvlans: [], clients: [], nft: false } })
      expect(snapshot(root)).toEqual(filesBefore)
    }, 240_000)
  })

  describe('OpenWrt: fake root, shell pieces under busybox ash', () => {
    let dir: string
    let root: string
    let env: NodeJS.ProcessEnv
    let uciLog: string
    let before: string[]

    const install = (args: string[]) => run(process.execPath, ['--import=tsx', path.join(ROOT, 'jobs/install.ts'), '--json', '--root', root, '--platform', 'openwrt', ...args], { env })
    /** A command inside the fake root, as the router runs it: busybox ash, its own /etc and /usr. */
    const ash = (script: string, vars: Record<string, string>) => run('chroot', [root, '/bin/busybox', 'ash', '-c', script], { env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', ...vars } })
    const spool = (dataDir: string) => {
      const d = path.join(root, dataDir, 'spool')
      return existsSync(d) ? readdirSync(d).filter((n) => n.endsWith('.json')).map((n) => JSON.parse(readFileSync(path.join(d, n), 'utf8'))) : []
    }

    beforeAll(() => {
      dir = mkdtempSync(path.join(tmpdir(), 'dualgate-openwrt-'))
      root = path.join(dir, 'root')
      // busybox and the libraries it links, so that the root can be chrooted into like a router's.
      const busybox = '/usr/bin/busybox'
      mkdirSync(path.join(root, 'bin'), { recursive: true })
      copyFileSync(busybox, path.join(root, 'bin/busybox'))
      chmodSync(path.join(root, 'bin/busybox'), 0o755)
      const ldd = execFileSync('ldd', [busybox], { encoding: 'utf8' })
      for (const lib of ldd.match(/\/\S+\.so[.\d]*/g) ?? []) {
        mkdirSync(path.join(root, path.dirname(lib)), { recursive: true })
        copyFileSync(lib, path.join(root, lib))
      }
      mkdirSync(path.join(root, 'usr/bin'), { recursive: true })
      mkdirSync(path.join(root, 'dev'))
      execFileSync('mknod', ['-m', '666', path.join(root, 'dev/null'), 'c', '1', '3'])
      for (const applet of ['sh', 'ash', 'mkdir', 'mv', 'rm', 'cat', 'date']) symlinkSync('busybox', path.join(root, 'bin', applet))
      for (const applet of ['awk', 'logger']) symlinkSync('/bin/busybox', path.join(root, 'usr/bin', applet))
      // The admin's configuration: never replaced, never removed.
      mkdirSync(path.join(root, 'etc/config'), { recursive: true })
      writeFileSync(path.join(root, 'etc/config/dualgate'), "config dualgate 'main'\n\toption wan_if 'eth0.2'\n\toption data_dir '/srv/dualgate'\n")
      writeFileSync(path.join(root, 'etc/config/firewall'), "config defaults\n\toption input 'REJECT'\n")
      writeFileSync(path.join(root, 'etc/openwrt_release'), "DISTRIB_ID='OpenWrt'\n")
      // uci, recording what it is asked.
      uciLog = path.join(dir, 'uci.log')
      mkdirSync(path.join(dir, 'bin'))
      writeFileSync(path.join(dir, 'bin/uci'), `#!/bin/sh\necho "$*" >> '${uciLog}'\ncase " $* " in *" get "*) exit 1 ;; esac\nexit 0\n`, { mode: 0o755 })
      env = { PATH: `${path.join(dir, 'bin')}:${process.env.PATH}`, HOME: process.env.HOME, DUALGATE_DATA_DIR: path.join(dir, 'data'), DUALGATE_RUN_DIR: path.join(dir, 'run'), DUALGATE_UCI_FILE: path.join(dir, 'no-uci') }
      before = snapshot(root)
    })
    afterAll(() => { if (dir) rmSync(dir, { recursive: true, force: true }) })

    it('installs the OpenWrt layout, keeping the admin\'s config and adding the firewall include through uci', async () => {
      const r = await install([])
      expect(r.code, r.stderr).toBe(0)
      const result = JSON.parse(r.stdout) as InstallResult
      expect(result.platform).toBe('openwrt')
      expect(result.kept).toContain('/etc/config/dualgate')
      for (const f of ['etc/init.d/dualgate', 'etc/hotplug.d/dhcp/50-dualgate', 'etc/hotplug.d/neigh/50-dualgate', 'etc/hotplug.d/iface/50-dualgate', 'usr/share/nftables.d/chain-pre/forward/30-dualgate.nft']) {
        expect(existsSync(path.join(root, f)), f).toBe(true)
      }
      expect(lstatSync(path.join(root, 'etc/init.d/dualgate')).mode & 0o111).toBeTruthy()
      expect(readFileSync(path.join(root, 'etc/config/firewall'), 'utf8')).toBe("config defaults\n\toption input 'REJECT'\n")
      const uci = readFileSync(uciLog, 'utf8')
      expect(uci).toContain(`-c ${path.join(root, 'etc/config')} set firewall.dualgate=include`)
      expect(uci).toContain('set firewall.dualgate.type=script')
      expect(uci).toContain('set firewall.dualgate.path=/usr/lib/dualgate/hooks/openwrt/firewall.include')
      expect(uci).toContain('commit firewall')
      expect(result.skipped.join('\n')).toMatch(/\/etc\/init\.d\/dualgate enable \(not the live root\)/)
    })

    it('every shell piece parses under busybox ash', async () => {
      for (const f of ['etc/init.d/dualgate', 'etc/hotplug.d/dhcp/50-dualgate', 'etc/hotplug.d/neigh/50-dualgate', 'etc/hotplug.d/iface/50-dualgate',
        'usr/lib/dualgate/hooks/dualgate-event', 'usr/lib/dualgate/hooks/udhcpc.script', 'usr/lib/dualgate/hooks/odhcp6c.script',
        'usr/lib/dualgate/hooks/openwrt/firewall.include', 'usr/lib/dualgate/hooks/bin/dualgate-job', 'usr/lib/dualgate/hooks/bin/gateway-logs']) {
        const r = await ash(`/bin/busybox ash -n /${f}`, {})
        expect(r.code, `${f}: ${r.stderr}`).toBe(0)
      }
    })

    it('hotplug handlers, sourced as hotplug-call does, spool the right event', async () => {
      const mac = '02:aa:bb:cc:dd:01'
      let r = await ash('. /etc/hotplug.d/dhcp/50-dualgate', { ACTION: 'add', MACADDR: mac, IPADDR: '192.168.1.20', HOSTNAME: 'printer', DUALGATE_DATA_DIR: '/var/lib/dualgate' })
      expect(r.code, r.stderr).toBe(0)
      r = await ash('. /etc/hotplug.d/neigh/50-dualgate', { ACTION: 'add', MACADDR: mac, IPADDR: '192.168.1.20', DUALGATE_DATA_DIR: '/var/lib/dualgate' })
      expect(r.code, r.stderr).toBe(0)
      r = await ash('. /etc/hotplug.d/iface/50-dualgate', { ACTION: 'ifup', INTERFACE: 'wan', DEVICE: 'eth0.2', DUALGATE_DATA_DIR: '/var/lib/dualgate' })
      expect(r.code, r.stderr).toBe(0)
      // An event hotplug-iface is not about: nothing.
      await ash('. /etc/hotplug.d/iface/50-dualgate', { ACTION: 'ifdown-ignored', INTERFACE: 'lan', DUALGATE_DATA_DIR: '/var/lib/dualgate' })
      const events = spool('/var/lib/dualgate').sort((a, b) => a.event.localeCompare(b.event))
      expect(events).toHaveLength(3)
      expect(events[0]).toMatchObject({ source: 'dnsmasq', event: 'add', args: [mac, '192.168.1.20', 'printer'], env: { ACTION: 'add', MACADDR: mac, IPADDR: '192.168.1.20', HOSTNAME: 'printer' } })
      expect(events[1]).toMatchObject({ source: 'dnsmasq', event: 'arp-add', args: [mac, '192.168.1.20'] })
      expect(events[2]).toMatchObject({ source: 'iface', event: 'ifup', args: ['wan', 'eth0.2'], env: { INTERFACE: 'wan', DEVICE: 'eth0.2' } })
      expect(events[0].env.DUALGATE_DATA_DIR).toBeUndefined()
      // Without DUALGATE_DATA_DIR the shim takes data_dir from /etc/config/dualgate, as the init script does.
      r = await ash('. /etc/hotplug.d/dhcp/50-dualgate', { ACTION: 'del', MACADDR: mac, IPADDR: '192.168.1.20' })
      expect(r.code, r.stderr).toBe(0)
      expect(spool('/srv/dualgate')).toEqual([expect.objectContaining({ source: 'dnsmasq', event: 'del' })])
    })

    it('the init script starts the installed runner under procd with the shim\'s data directory', async () => {
      const stubs = 'procd_open_instance() { echo "open $*"; }; procd_set_param() { echo "param $*"; }; procd_close_instance() { echo close; }'
      const r = await ash(`${stubs}; . /etc/init.d/dualgate; start_service`, {})
      expect(r.code, r.stderr).toBe(0)
      expect(r.stdout).toContain('open runner')
      expect(r.stdout).toContain('param command /usr/bin/node --max-semi-space-size=1 --optimize-for-size /usr/lib/dualgate/dist/lib/runner/main.js')
      expect(r.stdout).toContain('param env DUALGATE_DATA_DIR=/srv/dualgate')
      expect(r.stdout).toMatch(/close\s*$/)
    })

    it('uninstalls to exactly the root it found, the admin\'s config included', async () => {
      rmSync(path.join(root, 'var'), { recursive: true, force: true })
      rmSync(path.join(root, 'srv'), { recursive: true, force: true })
      const r = await install(['uninstall'])
      expect(r.code, r.stderr).toBe(0)
      expect(readFileSync(uciLog, 'utf8')).toContain(`-c ${path.join(root, 'etc/config')} -q delete firewall.dualgate`)
      expect(snapshot(root)).toEqual(before)
      const again = await install(['uninstall'])
      expect(again.code, again.stderr).toBe(0)
      expect(JSON.parse(again.stdout)).toMatchObject({ notInstalled: true, removed: [] })
    })
  })
  describe('Debian forwarder: fake root', () => {
    let dir: string
    let root: string
    let env: NodeJS.ProcessEnv
    const install = (args: string[]) => run(process.execPath, ['--import=tsx', path.join(ROOT, 'jobs/install.ts'), '--json', '--root', root, '--platform', 'debian', ...args], { env })

    beforeAll(() => {
      dir = mkdtempSync(path.join(tmpdir(), 'dualgate-forwarder-'))
      root = path.join(dir, 'root')
      mkdirSync(path.join(root, 'etc'), { recursive: true })
      env = { PATH: process.env.PATH, HOME: process.env.HOME, DUALGATE_DATA_DIR: path.join(dir, 'data'), DUALGATE_RUN_DIR: path.join(dir, 'run'), DUALGATE_UCI_FILE: path.join(dir, 'no-uci') }
    })
    afterAll(() => { if (dir) rmSync(dir, { recursive: true, force: true }) })

    it('--role forwarder installs one unit for the runner and nothing device-related, and uninstalls exactly', async () => {
      const before = snapshot(root)
      const r = await install(['--role', 'forwarder'])
      expect(r.code, r.stderr).toBe(0)
      const units = readdirSync(path.join(root, 'etc/systemd/system'))
      expect(units).toEqual(['dualgate.service'])
      expect(readFileSync(path.join(root, 'etc/config/dualgate'), 'utf8')).toMatch(/^\toption role 'forwarder'$/m)
      expect(existsSync(path.join(root, 'etc/dnsmasq.d'))).toBe(false)
      expect(existsSync(path.join(root, 'usr/lib/dualgate/dist/lib/runner/main.js'))).toBe(true)
      const bad = await install(['--role', 'vps'])
      expect(bad.code).not.toBe(0)
      expect(bad.stderr).toMatch(/--role takes gateway, forwarder/)
      const un = await install(['uninstall'])
      expect(un.code, un.stderr).toBe(0)
      expect(snapshot(root)).toEqual(before)
    })
  })
})

