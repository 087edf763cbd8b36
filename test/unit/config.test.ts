import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { z } from 'zod'
import { ConfigError, loadConfig, type SectionSpec } from '../../lib/core/config.ts'
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
    [{ DUALGATE_API_PORT: '5060' }, /apiPort = "5060" from env DUALGATE_API_PORT: a port that browsers and fetch refuse/],
    [{ DUALGATE_WAN_IF: 'eth0; reboot' }, /wanIf .* from env DUALGATE_WAN_IF: not an interface name/],
    [{ DUALGATE_WAN_IF: 'averyveryverylongname' }, /wanIf/],
    [{ DUALGATE_LAN_ADDR: '192.168.1.300/24' }, /lanAddr/],
    [{ DUALGATE_SCHEDULE_SCAN_ARP: 'every minute' }, /schedules.scan-arp .* not a cron expression/],
    [{ DUALGATE_RELAY_PORTS: '80,0' }, /relayPorts/],
  ])('refuses %o with one clear error naming key and source', (env, message) => {
    expect(() => loadConfig({ env, uciFile: noUci })).toThrow(ConfigError)
    expect(() => loadConfig({ env, uciFile: noUci })).toThrow(message)
  })

  it("refuses for apiPort exactly the ports this Node's fetch refuses to connect to", async () => {
    // fetch refuses a bad port before it connects, so this sends nothing; ports it would connect to are not tried.
    const refused = async (port: number) => ((await fetch(`http://127.0.0.1:${port}/`).catch((e: Error) => e)) as Error & { cause?: Error }).cause?.message === 'bad port'
    for (const port of [1, 22, 6000, 6679, 10080]) {
      expect(() => loadConfig({ env: { DUALGATE_API_PORT: String(port) }, uciFile: noUci })).toThrow(/browsers and fetch refuse/)
      expect(await refused(port)).toBe(true)
    }
    expect(loadConfig({ env: { DUALGATE_API_PORT: '6680' }, uciFile: noUci }).config.apiPort).toBe(6680)
  })

  it('names the file for an unknown UCI option or JSON key', () => {
    const uci = file('bad-uci', "config dualgate\n option wan_iface 'x'\n")
    expect(() => loadConfig({ uciFile: uci, env: {} })).toThrow(/unknown option "wan_iface"/)
    const json = file('bad.json', '{"wanIface": "x"}')
    expect(() => loadConfig({ uciFile: noUci, env: { DUALGATE_CONFIG: json } })).toThrow(/unknown key "wanIface"/)
  })
})

describe('named sections', () => {
  // A made-up section type, as the tunnel and forwarder capabilities will declare theirs.
  const widget: SectionSpec = {
    uci: 'widget',
    json: 'widgets',
    options: {
      kind: { schema: z.enum(['round', 'square']) },
      size: { schema: z.coerce.number().int().min(1).max(10), default: 3 },
      colours: { schema: z.array(z.string()).default([]), default: [] },
      maxSpeed: { schema: z.coerce.number(), default: 1 },
    },
  }
  const load = (uci: string | undefined, json?: unknown) => {
    const env: NodeJS.ProcessEnv = json === undefined ? {} : { DUALGATE_CONFIG: file(`w${Math.random()}.json`, JSON.stringify(json)) }
    return loadConfig({ uciFile: uci === undefined ? noUci : file(`w${Math.random()}`, uci), env, sections: [widget] })
  }

  it('reads repeated named sections from UCI with defaults, lists and snake_case options, and their source', () => {
    const { config, sources } = load("config widget 'a'\n option kind 'round'\n option max_speed '7'\n list colours 'red'\n list colours 'blue'\nconfig widget 'b'\n option kind 'square'\n option size 9\n")
    expect(config.sections.widgets).toEqual([
      { name: 'a', kind: 'round', size: 3, colours: ['red', 'blue'], maxSpeed: 7 },
      { name: 'b', kind: 'square', size: 9, colours: [], maxSpeed: 1 },
    ])
    expect(sources['widgets.a']).toMatch(/^uci /)
  })

  it('reads them from the JSON file, where a section replaces the UCI one of the same name whole', () => {
    const { config, sources } = load("config widget 'a'\n option kind 'round'\n option size 5\nconfig widget 'b'\n option kind 'round'\n", { widgets: [{ name: 'a', kind: 'square' }, { name: 'c', kind: 'round', colours: ['green'] }] })
    expect(config.sections.widgets.map((w) => [w.name, w.kind, w.size])).toEqual([['a', 'square', 3], ['b', 'round', 3], ['c', 'round', 3]])
    expect(sources['widgets.a']).toMatch(/^json /)
    expect(sources['widgets.b']).toMatch(/^uci /)
  })

  it('is empty when none is configured', () => {
    expect(load(undefined).config.sections).toEqual({ widgets: [] })
  })

  it.each([
    ["config widget 'a'\n option shape 'round'\n", /widgets\.a .*unknown option "shape"/],
    ["config widget 'a'\n option size 4\n", /widgets\.a .*option "kind" is required/],
    ["config widget 'a'\n option kind 'oval'\n", /widgets\.a\.kind = "oval"/],
    ["config widget\n option kind 'round'\n", /a widget section needs a name/],
    ["config widget 'a-b'\n option kind 'round'\n", /widget name "a-b" is not/],
    ["config widget 'a'\n option kind 'round'\nconfig widget 'a'\n option kind 'round'\n", /widget "a" is defined twice/],
    ["config gadget 'a'\n", /unknown section type "config gadget"/],
  ])('refuses bad UCI sections with an error naming them: %j', (uci, message) => {
    expect(() => load(uci)).toThrow(ConfigError)
    expect(() => load(uci)).toThrow(message)
  })

  it('refuses bad JSON sections', () => {
    expect(() => load(undefined, { widgets: { name: 'a' } })).toThrow(/"widgets" must be a list/)
    expect(() => load(undefined, { widgets: [{ kind: 'round' }] })).toThrow(/needs a name/)
    expect(() => load(undefined, { widgets: [{ name: 'a', kind: 'round', size: 11 }] })).toThrow(/widgets\.a\.size/)
  })
})

describe('role', () => {
  it('is gateway by default, and takes forwarder or both from UCI, JSON or env', () => {
    expect(loadConfig({ env: {}, uciFile: noUci }).config.role).toEqual(['gateway'])
    expect(loadConfig({ env: { DUALGATE_ROLE: 'forwarder' }, uciFile: noUci }).config.role).toEqual(['forwarder'])
    expect(loadConfig({ env: { DUALGATE_ROLE: 'gateway,forwarder' }, uciFile: noUci }).config.role).toEqual(['gateway', 'forwarder'])
    const uci = file('role', "config dualgate 'main'\n option role 'forwarder'\n")
    expect(loadConfig({ env: {}, uciFile: uci }).config.role).toEqual(['forwarder'])
    const json = file('role.json', JSON.stringify({ role: ['gateway', 'forwarder'] }))
    expect(loadConfig({ env: { DUALGATE_CONFIG: json }, uciFile: noUci }).config.role).toEqual(['gateway', 'forwarder'])
  })

  it('refuses an unknown role', () => {
    expect(() => loadConfig({ env: { DUALGATE_ROLE: 'router' }, uciFile: noUci })).toThrow(/role = "router" from env DUALGATE_ROLE: expected gateway, forwarder/)
    expect(() => loadConfig({ env: { DUALGATE_ROLE: '' }, uciFile: noUci })).toThrow(/role/)
  })
})
