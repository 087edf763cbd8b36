// The install plan as data: what ships, where each piece goes on OpenWrt and on Debian.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { loadConfig } from '../../lib/core/config.ts'
import { COMMANDS, FORWARDER_CONFIG, installPlan, runtimePackages, shippedFiles, type Lockfile } from '../../lib/install/plan.ts'

const lock = JSON.parse(readFileSync(new URL('../../package-lock.json', import.meta.url), 'utf8')) as Lockfile

describe('install plan', () => {
  it('ships the run-time dependencies and their own dependencies, nothing for development or for running from source', () => {
    const pkgs = runtimePackages(lock)
    expect(pkgs).toEqual(expect.arrayContaining(['node_modules/h3', 'node_modules/lowdb', 'node_modules/steno', 'node_modules/zod', 'node_modules/proper-lockfile', 'node_modules/graceful-fs']))
    for (const p of ['node_modules/vitest', 'node_modules/typescript', 'node_modules/tsx', 'node_modules/zx', 'node_modules/esbuild']) expect(pkgs).not.toContain(p)
  })

  it('resolves nested packages the way node does', () => {
    const l: Lockfile = { packages: { '': { dependencies: { a: '1' } }, 'node_modules/a': { dependencies: { b: '2' } }, 'node_modules/a/node_modules/b': {}, 'node_modules/b': {} } }
    expect(runtimePackages(l)).toEqual(['node_modules/a', 'node_modules/a/node_modules/b'])
    expect(shippedFiles(['node_modules/a/index.js', 'node_modules/a/node_modules/b/x.js', 'node_modules/b/y.js', 'node_modules/.bin/a', 'src/x.ts', 'dist/jobs/a.js', 'package.json'],
      ['node_modules/a', 'node_modules/a/node_modules/b'])).toEqual(['dist/jobs/a.js', 'node_modules/a/index.js', 'node_modules/a/node_modules/b/x.js', 'package.json'])
  })

  it('OpenWrt: init script, a default UCI config only if absent, hotplug handlers, fw4 include, a firewall include through uci', () => {
    const steps = installPlan({ platform: 'openwrt', files: ['dist/jobs/status.js'], systemd: false, dnsmasqService: '/etc/init.d/dnsmasq', roles: ['gateway'] })
    const to = steps.flatMap((s) => ('to' in s ? [s.to] : []))
    expect(to).toEqual(expect.arrayContaining(['/usr/lib/dualgate/dist/jobs/status.js', '/etc/init.d/dualgate', '/etc/config/dualgate', '/etc/hotplug.d/dhcp/50-dualgate',
      '/etc/hotplug.d/neigh/50-dualgate', '/etc/hotplug.d/iface/50-dualgate', '/usr/share/nftables.d/chain-pre/forward/30-dualgate.nft', ...COMMANDS.map((c) => `/usr/bin/${c}`)]))
    expect(steps.find((s) => s.kind === 'write' && s.to === '/etc/config/dualgate')).toMatchObject({ ifAbsent: true })
    expect(to).not.toContain('/etc/config/firewall')
    expect(steps.find((s) => s.kind === 'uci')).toMatchObject({ config: 'firewall', section: 'dualgate', type: 'include', options: { type: 'script' } })
    const commands = steps.flatMap((s) => (s.kind === 'command' ? [s.argv.join(' ')] : []))
    expect(commands).toEqual(['/etc/init.d/dualgate enable', '/etc/init.d/dualgate restart', '/etc/init.d/firewall reload', '/etc/init.d/dnsmasq restart'])
  })

  it('Debian: systemd unit, dnsmasq drop-in, IPv4 forwarding persisted, systemctl only when systemd runs', () => {
    const steps = installPlan({ platform: 'debian', files: [], systemd: true, dnsmasqService: '/etc/init.d/dnsmasq', roles: ['gateway'] })
    expect(steps.find((s) => s.kind === 'write' && s.to === '/etc/sysctl.d/90-dualgate.conf')).toMatchObject({ content: expect.stringMatching(/^net\.ipv4\.ip_forward = 1$/m) })
    expect(steps.find((s) => s.kind === 'write' && s.to === '/etc/dnsmasq.d/dualgate.conf')).toMatchObject({ content: expect.stringContaining('dhcp-script=/usr/lib/dualgate/hooks/dnsmasq-script') })
    expect(steps.some((s) => s.kind === 'copy' && s.to === '/etc/systemd/system/dualgate.service')).toBe(true)
    expect(steps.flatMap((s) => (s.kind === 'command' ? [s.argv.join(' ')] : []))).toEqual(['systemctl daemon-reload', 'systemctl enable dualgate', 'systemctl restart dualgate', '/etc/init.d/dnsmasq restart'])
    const plain = installPlan({ platform: 'debian', files: [], systemd: false, dnsmasqService: '', roles: ['gateway'] })
    expect(plain.some((s) => s.kind === 'command')).toBe(false)
  })

  it('a forwarder alone (Debian): one systemd unit for the runner, its own config, IPv4 forwarding, nothing device-related', () => {
    const steps = installPlan({ platform: 'debian', files: ['dist/jobs/forwarder.js'], systemd: true, dnsmasqService: '/etc/init.d/dnsmasq', roles: ['forwarder'] })
    const to = steps.flatMap((s) => ('to' in s ? [s.to] : []))
    expect(to.filter((t) => t.startsWith('/etc/systemd/'))).toEqual(['/etc/systemd/system/dualgate.service'])
    expect(steps.find((s) => s.kind === 'write' && s.to === '/etc/config/dualgate')).toMatchObject({ ifAbsent: true, content: expect.stringMatching(/^\toption role 'forwarder'$/m) })
    expect(to).not.toContain('/etc/dnsmasq.d/dualgate.conf')
    expect(steps.flatMap((s) => (s.kind === 'command' ? [s.argv.join(' ')] : []))).toEqual(['systemctl daemon-reload', 'systemctl enable dualgate', 'systemctl restart dualgate'])
    expect(() => installPlan({ platform: 'openwrt', files: [], systemd: false, dnsmasqService: '', roles: ['forwarder'] })).toThrow(/Debian/)
    const dir = mkdtempSync(path.join(tmpdir(), 'dualgate-plan-'))
    try {
      writeFileSync(path.join(dir, 'dualgate'), FORWARDER_CONFIG)
      expect(loadConfig({ env: {}, uciFile: path.join(dir, 'dualgate') }).config.role).toEqual(['forwarder'])
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
