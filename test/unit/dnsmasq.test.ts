// Where a running dnsmasq takes its dhcp-script from: its command line and the files it names.
import { describe, expect, it } from 'vitest'
import { confDirFiles, parseDnsmasqArgs, parseDnsmasqConf } from '../../lib/net/dnsmasq.ts'

describe('dnsmasq configuration', () => {
  it('reads long, long-with-space and short options', () => {
    const r = parseDnsmasqArgs(['--dhcp-script=/a', '--conf-file', '/etc/x.conf', '-6', '/b', '-7/etc/dnsmasq.d,.dpkg-dist,*.conf', '--port=0'])
    expect(r.scripts).toEqual(['/a', '/b'])
    expect(r.confFiles).toEqual(['/etc/x.conf'])
    expect(r.confDirs).toEqual([{ dir: '/etc/dnsmasq.d', include: ['.conf'], exclude: ['.dpkg-dist'] }])
    expect(r.defaultConf).toBe(false)
    expect(parseDnsmasqArgs(['-x', '/run/dnsmasq.pid']).defaultConf).toBe(true)
  })
  it('reads configuration files', () => {
    const r = parseDnsmasqConf('# comment\ndhcp-script = /usr/lib/dualgate/hooks/dnsmasq-script\nconf-dir=/etc/dnsmasq.d\ninterface=br-lan\n')
    expect(r.scripts).toEqual(['/usr/lib/dualgate/hooks/dnsmasq-script'])
    expect(r.confDirs[0].dir).toBe('/etc/dnsmasq.d')
  })
  it('picks the files of a conf-dir the way dnsmasq does', () => {
    const names = ['b.conf', 'a.conf', '.hidden.conf', 'c.conf~', '#d.conf#', 'e.conf.dpkg-dist', 'README']
    expect(confDirFiles(names, { dir: '/d', include: [], exclude: ['.dpkg-dist'] })).toEqual(['README', 'a.conf', 'b.conf'])
    expect(confDirFiles(names, { dir: '/d', include: ['.conf'], exclude: [] })).toEqual(['a.conf', 'b.conf'])
  })
})
