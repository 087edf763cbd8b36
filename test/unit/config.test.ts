import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { ConfigError, loadConfig } from '../../lib/core/config.ts'
import { parseUci } from '../../lib/core/uci.ts'

const dir = mkdtempSync(path.join(tmpdir(), 'dg-config-'))
const noUci = path.join(dir, 'absent')

function file(name: string, text: string): string {
  const p = path.join(dir, name)
  writeFileSync(p, text)
  return p
}

describe('parseUci', () => {
  it('reads sections, quoted options and lists', () => {
    const sections = parseUci(`
# comment
config dualgate 'main'
\toption wan_if 'wan0'   # trailing comment
\toption lan_addr "10.0.0.1/24"
\tlist relay_ports '80'
\tlist relay_ports 8080
config job 'scan_arp'
\toption schedule '*/3 * * * *'
`)
    expect(sections).toEqual([
      { type: 'dualgate', name: 'main', options: { wan_if: 'wan0', lan_addr: '10.0.0.1/24', relay_ports: ['80', '8080'] } },
      { type: 'job', name: 'scan_arp', options: { schedule: '*/3 * * * *' } },
    ])
  })

  it('rejects options outside a section and unterminated quotes', () => {
    expect(() => parseUci("option a 'b'")).toThrow(/line 1: option outside/)
    expect(() => parseUci("config x\n option a 'b")).toThrow(/line 2: unterminated quote/)
  })
})

describe('loadConfig', () => {
  it('has the documented defaults', () => {
    const { config, sources } = loadConfig({ env: {}, uciFile: noUci })
    expect(config).toMatchObject({ wanIf: 'eth0', lanIf: 'eth1', lanAddr: '192.168.1.1/24', apiHost: '127.0.0.1', apiPort: 5050, maxDevices: 1000 })
    expect(sources.wanIf).toBe('default')
  })

  it('layers UCI, then JSON, then env, remembering each source', () => {
    const uci = file('dualgate', "config dualgate 'main'\n option wan_if 'wan'\n option lan_if 'br-lan'\n option api_port '6000'\nconfig job 'prune_stale'\n option schedule '*/9 * * * *'\n")
    const json = file('c.json', JSON.stringify({ lanIf: 'lan1', apiPort: 7000, schedules: { diagnose: '' } }))
    const { config, sources } = loadConfig({ uciFile: uci, env: { DUALGATE_CONFIG: json, DUALGATE_API_PORT: '8000' } })
    expect(config.wanIf).toBe('wan')
    expect(sources.wanIf).toBe(`uci ${uci}`)
    expect(config.lanIf).toBe('lan1')
    expect(sources.lanIf).toBe(`json ${json}`)
    expect(config.apiPort).toBe(8000)
    expect(sources.apiPort).toBe('env DUALGATE_API_PORT')
    expect(config.schedules['prune-stale']).toBe('*/9 * * * *')
    expect(config.schedules.diagnose).toBe('')
  })

  it.each([
    [{ DUALGATE_API_PORT: '70000' }, /apiPort = "70000" from env DUALGATE_API_PORT/],
    [{ DUALGATE_WAN_IF: 'eth0; reboot' }, /wanIf .* from env DUALGATE_WAN_IF: not an interface name/],
    [{ DUALGATE_WAN_IF: 'averyveryverylongname' }, /wanIf/],
    [{ DUALGATE_LAN_ADDR: '192.168.1.300/24' }, /lanAddr/],
    [{ DUALGATE_SCHEDULE_SCAN_ARP: 'every minute' }, /schedules.scan-arp .* not a cron expression/],
    [{ DUALGATE_RELAY_PORTS: '80,0' }, /relayPorts/],
  ])('refuses %o with one clear error naming key and source', (env, message) => {
    expect(() => loadConfig({ env, uciFile: noUci })).toThrow(ConfigError)
    expect(() => loadConfig({ env, uciFile: noUci })).toThrow(message)
  })

  it('names the file for an unknown UCI option or JSON key', () => {
    const uci = file('bad-uci', "config dualgate\n option wan_iface 'x'\n")
    expect(() => loadConfig({ uciFile: uci, env: {} })).toThrow(/unknown option "wan_iface"/)
    const json = file('bad.json', '{"wanIface": "x"}')
    expect(() => loadConfig({ uciFile: noUci, env: { DUALGATE_CONFIG: json } })).toThrow(/unknown key "wanIface"/)
  })
})
