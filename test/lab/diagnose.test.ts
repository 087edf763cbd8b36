// gateway-diagnose against a real gateway: a dual-stack lab with two acquired devices, the router's dnsmasq
// calling our hook through a drop-in in a fake root, and the runner up in the router namespace. Things are
// broken one at a time; each must show up as exactly one failing check, be repaired by --fix-all, and a
// second --fix-all must find nothing to do.
import { chmodSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { DiagnoseResult } from '../../jobs/diagnose.ts'
import { macvlanName } from '../../lib/addr/mac.ts'
import { openStore } from '../../lib/core/store.ts'
import { gatewayEnv, ROOT, runJob } from './gateway.ts'
import { createLab, isRoot, type Lab } from './lab.ts'

const TOKEN = 'diagnose-test-token'
const sq = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe.skipIf(!isRoot())('diagnose (lab)', () => {
  let lab: Lab
  let env: Record<string, string>
  let root: string
  let dataDir: string
  let dnsmasqPidFile: string
  let runnerScript: string
  let dnsmasqScript: string

  const diagnose = (args: string[] = []) => runJob<DiagnoseResult>(lab, 'diagnose', args, env)
  const failing = (r: DiagnoseResult) => r.checks.filter((c) => c.status === 'fail').map((c) => c.id)
  const pidOf = (file: string) => Number(readFileSync(file, 'utf8').trim())
  const alive = (pid: number) => { try { process.kill(pid, 0); return true } catch { return false } }
  const inRouter = (cmd: string, args: string[]) => lab.exec(lab.router.ns, cmd, args, { env: gatewayEnv(lab, env) })

  async function waitGone(pid: number): Promise<void> {
    for (let i = 0; i < 100 && alive(pid); i++) await sleep(100)
    expect(alive(pid)).toBe(false)
  }

  beforeAll(async () => {
    lab = await createLab({ mode: 'dual', devices: 2 })
    root = path.join(lab.dir, 'root')
    mkdirSync(path.join(root, 'etc/dnsmasq.d'), { recursive: true })
    dnsmasqPidFile = path.join(lab.dir, 'router-dnsmasq.pid')

    // The router's dnsmasq as a service: the lab's own arguments, daemonised, reading the fake root's
    // /etc/dnsmasq.d as Debian's dnsmasq reads /etc/dnsmasq.d.
    const args = readFileSync(`/proc/${pidOf(dnsmasqPidFile)}/cmdline`, 'utf8').split('\0').filter(Boolean).slice(1).filter((a) => a !== '--keep-in-foreground')
    args.push(`--conf-dir=${path.join(root, 'etc/dnsmasq.d')},*.conf`)
    dnsmasqScript = path.join(lab.dir, 'dnsmasq-service')
    writeFileSync(dnsmasqScript, [
      '#!/bin/sh',
      `pidfile=${sq(dnsmasqPidFile)}`,
      'running() { [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }',
      'case "$1" in',
      '  start) running && exit 0 ;;',
      '  restart) if running; then pid=$(cat "$pidfile"); kill "$pid"; i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; fi ;;',
      '  *) echo "usage: $0 start|restart" >&2; exit 2 ;;',
      'esac',
      `exec dnsmasq ${args.map(sq).join(' ')}`,
      '',
    ].join('\n'))
    chmodSync(dnsmasqScript, 0o755)

    runnerScript = path.join(lab.dir, 'runner-service')
    writeFileSync(runnerScript, [
      '#!/bin/sh',
      'case "$1" in start|restart) ;; *) echo "usage: $0 start|restart" >&2; exit 2 ;; esac',
      'pidfile="$DUALGATE_DATA_DIR/runner.pid"',
      'if [ "$1" = restart ] && [ -s "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null; sleep 1; fi',
      `cd ${sq(ROOT)}`,
      `setsid ${sq(process.execPath)} --import=tsx lib/runner/main.ts </dev/null >>${sq(path.join(lab.dir, 'runner.log'))} 2>&1 &`,
      '',
    ].join('\n'))
    chmodSync(runnerScript, 0o755)

    env = {
      DUALGATE_ROOT_DIR: root,
      DUALGATE_PLATFORM: 'debian',
      DUALGATE_DNSMASQ_SERVICE: dnsmasqScript,
      DUALGATE_RUNNER_SERVICE: runnerScript,
      DUALGATE_API_TOKEN: TOKEN,
      // The runner stays idle unless asked: nothing but the break under test changes the gateway.
      ...Object.fromEntries(['scan_arp', 'acquire_leases', 'prune_stale', 'refresh_proxies', 'diagnose'].map((j) => [`DUALGATE_SCHEDULE_${j.toUpperCase()}`, ''])),
    }
    dataDir = gatewayEnv(lab, env).DUALGATE_DATA_DIR

    const scan = await runJob(lab, 'scan-arp', [], env)
    expect(scan.code, scan.stderr).toBe(0)
    const acquire = await runJob<{ active: string[] }>(lab, 'acquire-leases', [], env)
    expect(acquire.code, acquire.stderr).toBe(0)
    expect(acquire.result.active).toHaveLength(2)
    // Debian's dnsmasq reads /etc/dnsmasq.d: from here on the lab's does too (the fake root's).
    await inRouter(dnsmasqScript, ['restart'])
    // Events the clients spooled while acquiring would make the runner busy at start.
    rmSync(path.join(dataDir, 'spool'), { recursive: true, force: true })
    // An older drop-in of the admin's stands where ours goes: the repair must keep a copy of it.
    writeFileSync(path.join(root, 'etc/dnsmasq.d/dualgate.conf'), '# an older drop-in of the admin\'s\n')
    // The first repair doubles as setup: the hook drop-in is written and dnsmasq restarted with it, the
    // runner started, the kernel settings made right.
    const setup = await diagnose(['--fix-all'])
    expect(setup.code, `${setup.stderr}\n${JSON.stringify(setup.result?.checks, null, 1)}`).toBe(0)
    expect(setup.result.fixes.map((f) => f.id)).toEqual(expect.arrayContaining(['dnsmasq-hook', 'runner']))
  }, 180_000)

  afterAll(async () => { await lab?.teardown() })

  it('reports every check, all passing or warning, on a healthy gateway; --dry-run plans nothing', async () => {
    const r = await diagnose()
    expect(r.code, r.stderr).toBe(0)
    expect(r.result.ok).toBe(true)
    expect(failing(r.result)).toEqual([])
    const ids = r.result.checks.map((c) => c.id)
    expect(ids).toEqual(expect.arrayContaining(['lan-link', 'wan-link', 'lan-address', 'upstream', 'forwarding', 'wan-sysctls', 'dnsmasq', 'dnsmasq-hook',
      'runner', 'api', 'store', 'disk', 'nft', 'relay', 'macvlans', 'dhcp-clients', 'tools', 'node', 'clock']))
    const by = Object.fromEntries(r.result.checks.map((c) => [c.id, c]))
    expect(by.upstream.reason).toMatch(/RA from .*DHCPv6/)
    expect(by.runner.status).toBe('pass')
    expect(by.api.status).toBe('pass')
    expect(by['dnsmasq-hook'].reason).toContain('hooks/dnsmasq-script')
    expect(by.macvlans.reason).toMatch(/^2 device macvlans/)
    for (const c of r.result.checks) expect(c.reason).not.toContain('\n')
    const dry = await diagnose(['--fix-all', '--dry-run'])
    expect(dry.code).toBe(0)
    expect(dry.result.fixes).toEqual([])
  })

  /** `also`: checks that fail with it, by necessity. */
  const cases: { id: string; what: string; also?: string[]; breakIt: () => Promise<void> }[] = [
    { id: 'lan-link', what: 'the LAN link down', breakIt: async () => { await inRouter('ip', ['link', 'set', 'dev', lab.router.lanIf, 'down']) } },
    { id: 'forwarding', what: 'IPv4 forwarding off', breakIt: async () => { await inRouter('sysctl', ['-q', '-w', 'net.ipv4.ip_forward=0']) } },
    {
      id: 'dnsmasq', what: 'dnsmasq stopped',
      async breakIt() { const pid = pidOf(dnsmasqPidFile); process.kill(pid, 'SIGTERM'); await waitGone(pid) },
    },
    {
      id: 'dnsmasq-hook', what: 'the hook removed',
      async breakIt() { rmSync(path.join(root, 'etc/dnsmasq.d/dualgate.conf')); await inRouter(dnsmasqScript, ['restart']) },
    },
    {
      id: 'runner', what: 'the runner stopped',
      async breakIt() { const pid = pidOf(path.join(dataDir, 'runner.pid')); process.kill(pid, 'SIGTERM'); await waitGone(pid) },
    },
    {
      // A running runner repairs a corrupt store itself within moments (its relay re-reads the store when
      // the file changes, and reading restores the newest backup): the store is broken with the runner down.
      id: 'store', what: 'the store corrupted (runner down)', also: ['runner'],
      async breakIt() {
        const pid = pidOf(path.join(dataDir, 'runner.pid'))
        process.kill(pid, 'SIGTERM')
        await waitGone(pid)
        // A write first, so that the newest backup holds the current devices (a backup is taken before each write).
        await openStore({ dataDir, backupInterval: 0 }).update(() => undefined)
        writeFileSync(path.join(dataDir, 'dualgate.json'), '{"version": 1, "devices": {"x": ')
      },
    },
    {
      id: 'macvlans', what: 'an orphan macvlan',
      async breakIt() { await inRouter('ip', ['link', 'add', 'link', lab.router.wanIf, 'name', macvlanName('02:00:5e:10:20:30'), 'address', '02:00:5e:10:20:30', 'type', 'macvlan', 'mode', 'bridge']) },
    },
    { id: 'nft', what: 'the nftables table deleted', breakIt: async () => { await inRouter('nft', ['delete', 'table', 'inet', 'dualgate']) } },
    {
      id: 'dhcp-clients', what: "a device's DHCPv4 client killed",
      async breakIt() {
        const pid = pidOf(path.join(lab.dir, 'dualgate-run', `${macvlanName(lab.devices[0].mac)}.udhcpc.pid`))
        process.kill(pid, 'SIGKILL')
        await waitGone(pid)
      },
    },
  ]

  for (const c of cases) {
    it(`${c.what}: only ${[c.id, ...c.also ?? []].join(' and ')} fails, --fix-all repairs it, a second --fix-all does nothing`, async () => {
      const ids = [c.id, ...c.also ?? []]
      const order = (xs: string[]) => xs.sort()
      await c.breakIt()
      const broken = await diagnose()
      expect(broken.code, broken.stderr).toBe(1)
      expect(order(failing(broken.result)), JSON.stringify(broken.result.checks, null, 1)).toEqual(order([...ids]))
      expect(broken.result.checks.find((x) => x.id === c.id)?.fix).toBeTruthy()

      const fixed = await diagnose(['--fix-all'])
      expect(fixed.code, `${fixed.stderr}\n${JSON.stringify(fixed.result, null, 1)}`).toBe(0)
      expect(order(fixed.result.fixes.map((f) => `${f.id} ${f.status}`))).toEqual(order(ids.map((id) => `${id} applied`)))
      expect(failing(fixed.result)).toEqual([])

      const again = await diagnose(['--fix-all'])
      expect(again.code, `${again.stderr}\n${JSON.stringify(again.result, null, 1)}`).toBe(0)
      expect(again.result.fixes).toEqual([])
    }, 90_000)
  }

  it('keeps the corrupt store aside and backs up a system file before changing it', async () => {
    const { readdirSync } = await import('node:fs')
    expect(readdirSync(dataDir).some((n) => n.startsWith('dualgate.json.corrupt-'))).toBe(true)
    const backups = path.join(dataDir, 'backups', 'system')
    const copies = readdirSync(backups).filter((n) => n.includes('%etc%dnsmasq.d%dualgate.conf.'))
    expect(copies.map((n) => readFileSync(path.join(backups, n), 'utf8'))).toContain("# an older drop-in of the admin's\n")
    expect(readFileSync(path.join(root, 'etc/sysctl.d/90-dualgate.conf'), 'utf8')).toMatch(/net\.ipv4\.ip_forward = 1/)
    expect(readFileSync(path.join(root, 'etc/dnsmasq.d/dualgate.conf'), 'utf8')).toContain(`dhcp-script=${path.join(ROOT, 'hooks/dnsmasq-script')}`)
  })

  it('takes --fix with a comma list, refuses an unknown check with usage and exit 2', async () => {
    const ok = await diagnose(['--fix', 'nft,store', '--fix', 'runner'])
    expect(ok.code, ok.stderr).toBe(0)
    const bad = await diagnose(['--fix', 'nope'])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toMatch(/unknown check "nope"[\s\S]*usage: diagnose/)
  })
})
