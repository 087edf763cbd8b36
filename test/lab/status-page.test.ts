// The status page in a real browser: Debian's chromium, headless, driven by puppeteer-core over a pipe (no
// debugging port). The runner's API (createRunnerApi, as lib/runner/main.ts builds it) serves it on 127.0.0.1
// from a store seeded with devices in every status, a forward, job runs and a diagnose result. The tunnels
// supervisor needs real links and the relay and forwarder real listeners, so GET /tunnels, /relay and
// /forwarder answer fixed views of their real types. Chromium is kept off the network: a request not to
// 127.0.0.1 goes to a proxy that does not exist. The page must load without console errors or CSP violations,
// ask only its own origin, show the devices and the tunnels' scores, filter devices, follow a status change in
// the store without a reload, and change state only with a token the person gives. Screenshots (360 px light
// and dark, 1280 px) go to test-results/.
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import type { Server as HttpServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { serve } from 'h3'
import puppeteer, { type Browser, type Page } from 'puppeteer-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadConfig } from '../../lib/core/config.ts'
import type { Device, DeviceStatus } from '../../lib/core/schema.ts'
import { openStore, type Store } from '../../lib/core/store.ts'
import type { ForwarderView } from '../../lib/forwarder/supervisor.ts'
import type { RelayRule, RelayStats } from '../../lib/reach/relay.ts'
import { createRunnerApi } from '../../lib/runner/api.ts'
import { CSP } from '../../lib/status-page/routes.ts'
import { ipv6Health, type TunnelStatus } from '../../lib/tunnels/supervisor.ts'
import { isRoot } from './lab.ts'

const CHROMIUM = '/usr/bin/chromium'
const TOKEN = 'status-page-token-0123456789'
const RESULTS = fileURLToPath(new URL('../../test-results/', import.meta.url))
/** The page polls every 5 s (app.js POLL_MS); a change must show within one interval and a little. */
const REFRESH_MS = 5000

// Lab rule: as root (where prepare.sh installs it) a missing chromium is a failure; otherwise the test is skipped.
const hasChromium = existsSync(CHROMIUM)

const NOW = Date.now()
const iso = (agoS: number) => new Date(NOW - agoS * 1000).toISOString()

function device(mac: string, status: DeviceStatus, more: Partial<Device> = {}): Device {
  return { mac, status, statusChangedAt: iso(600), firstSeen: iso(3600), lastSeen: iso(30), wanIpv6: [], attempts: 0, ...more }
}

const DEVICES: Device[] = [
  device('02:00:00:00:00:01', 'active', { hostname: 'living-room-tv', lanIpv4: '198.18.1.11', wanIpv4: '198.18.200.11', wanIpv6: ['2001:db8:ea:0:ff:fe00:1', '2001:db8:ea:1:ff:fe00:1'] }),
  device('02:00:00:00:00:02', 'acquiring', { hostname: 'printer', lanIpv4: '198.18.1.12' }),
  device('02:00:00:00:00:03', 'failed', { hostname: 'nas-with-a-rather-long-hostname', lanIpv4: '198.18.1.13', reason: 'upstream DHCP gave no lease in 3 attempts' }),
  device('02:00:00:00:00:04', 'gone', { lanIpv4: '198.18.1.14', reason: 'not seen for 24 h' }),
  device('02:00:00:00:00:05', 'discovered', { hostname: 'phone' }),
]

/** A tunnel's latency history: `lost` checks without a reply. */
function history(base: number, lost: number[] = []): TunnelStatus['history'] {
  return Array.from({ length: 40 }, (_, i) => ({
    at: iso((40 - i) * 5),
    latencyMs: lost.includes(i) ? undefined : Math.round((base + 6 * Math.sin(i / 3)) * 10) / 10,
    lossPct: lost.includes(i) ? 100 : 0,
  }))
}

const TUNNELS: TunnelStatus[] = [
  { name: 'he', type: '6in4', iface: 'he-ipv6', backend: 'kernel', state: 'up', adminDown: false, score: 92, latencyMs: 18.4, lossPct: 0, primary: true, rxBytes: 52_428_800, txBytes: 9_437_184, lastCheck: iso(2), history: history(18) },
  { name: 'wg-vps', type: 'wireguard', iface: 'wga', backend: 'wireguard-go', state: 'degraded', adminDown: false, score: 61, latencyMs: 74, lossPct: 10, primary: false, handshakeAgeS: 41, lastCheck: iso(2), lastFault: 'loss 10 % over the window', history: history(70, [12, 13, 30]) },
]

const RELAY_RULES: RelayRule[] = [
  { listen: { host: '2001:db8:ea:0:ff:fe00:1', port: 80 }, target: { host: '198.18.1.11', port: 80 }, proto: 'tcp' },
  { listen: { host: '2001:db8:ea:0:ff:fe00:1', port: 8443 }, target: { host: '198.18.1.11', port: 443 }, proto: 'tcp' },
]
const RELAY_STATS: RelayStats = { listeners: 2, tcpActive: 1, tcpTotal: 17, udpSessions: 0, bytes: 3_145_728, bufferBytes: 0, refused: { connections: 0, connectionsPerSource: 2, udpSessions: 0, udpSessionsPerSource: 0 } }

const FORWARDER: ForwarderView = {
  forwards: [{
    name: 'ssh-home', mode: 'relay', enabled: true, listen: '198.18.0.2', ports: '2222', proto: 'tcp', target: 'home.example.net', targetPort: 22,
    address: '2001:db8:ea::22', family: 6, resolvedAt: iso(120), resolveFailures: 0, targetChanges: 1, listening: true,
    listeners: { wanted: 1, open: 1, failed: 0 }, connections: 1, connectionsTotal: 4, udpSessions: 0, bytes: 81_920,
  }],
  tunnels: [{
    iface: 'dgf-home', side: 'forward', names: ['nas', 'web'], transport: 'wireguard', remote: '2001:db8:200::2', changedAt: iso(600),
    link: 'up', rxBytes: 1_048_576, txBytes: 2_097_152, opened: { nas: 3, web: 12 },
  }],
  openFileLimit: 1024,
}

async function seed(store: Store): Promise<void> {
  await store.update((d) => {
    for (const dev of DEVICES) d.devices[dev.mac] = structuredClone(dev)
    d.forwards.push({ id: 'f1', gatewayPort: 8080, deviceIp: '198.18.1.11', devicePort: 80, proto: 'tcp', family: 'both', createdAt: iso(7200) })
    d.upstream = { wanUp: true, checkedAt: iso(20), dhcpv4: true, ra: true, prefixes: ['2001:db8:ea::/48'] }
    const scan = { id: 'r1', job: 'scan-arp', trigger: 'cron', startedAt: iso(40), durationMs: 85, ok: true }
    const acquire = { id: 'r2', job: 'acquire-leases', trigger: 'event', startedAt: iso(300), durationMs: 30_012, ok: false, error: 'nas-with-a-rather-long-hostname: no lease' }
    const diagnose = {
      id: 'r3', job: 'diagnose', trigger: 'api', startedAt: iso(900), durationMs: 1200, ok: true,
      result: { checks: [
        { id: 'wan-link', status: 'pass', reason: 'WAN link is up' },
        { id: 'upstream-dhcp', status: 'warn', reason: 'one device has no lease', fix: 'check the upstream DHCP pool' },
        { id: 'ipv6-route', status: 'pass', reason: 'default IPv6 route through he' },
      ] },
    }
    d.runs.push(scan, acquire, diagnose)
    d.jobs['scan-arp'] = { runs: 120, failures: 0, last: scan }
    d.jobs['acquire-leases'] = { runs: 9, failures: 3, last: acquire }
    d.jobs.diagnose = { runs: 1, failures: 0, last: diagnose }
  })
}

interface Seen {
  requests: string[]
  failedRequests: string[]
  consoleErrors: string[]
  pageErrors: string[]
}

/** Every request, console error and uncaught error of the page, from before its first byte. */
function watch(page: Page): Seen {
  const seen: Seen = { requests: [], failedRequests: [], consoleErrors: [], pageErrors: [] }
  page.on('request', (r) => { seen.requests.push(r.url()) })
  page.on('requestfailed', (r) => { seen.failedRequests.push(`${r.url()}: ${r.failure()?.errorText}`) })
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warn') seen.consoleErrors.push(`${m.type()}: ${m.text()} (${m.location().url ?? ''})`) })
  page.on('pageerror', (e) => { seen.pageErrors.push(String(e)) })
  return seen
}

/** CSP violations as the page sees them (the listener is the browser's, added before the page's scripts run). */
async function recordCspViolations(page: Page): Promise<void> {
  await page.evaluateOnNewDocument(() => {
    const list: string[] = []
    Object.defineProperty(window, '__cspViolations', { value: list })
    document.addEventListener('securitypolicyviolation', (e) => { list.push(`${e.effectiveDirective} ${e.blockedURI}`) })
  })
}

const cspViolations = (page: Page) => page.evaluate(() => (window as unknown as { __cspViolations: string[] }).__cspViolations.slice())

/** The device rows as shown: name cell's first line and the status badge. */
const deviceRows = (page: Page) => page.$$eval('#devices-rows tr', (rows) => rows.map((tr) => ({
  mac: (tr as HTMLElement).dataset.key,
  name: tr.querySelector('td span')?.textContent ?? '',
  status: tr.querySelector('.badge')?.textContent ?? '',
  visible: (tr as HTMLElement).offsetParent !== null,
})))

describe.skipIf(!hasChromium && !isRoot())('status page in headless Chromium', () => {
  let dataDir: string
  let profileDir: string
  let store: Store
  let origin: string
  let browser: Browser | undefined
  let browserPid: number | undefined
  let closeServer: (() => Promise<void>) | undefined
  const triggered: string[] = []

  beforeAll(async () => {
    dataDir = mkdtempSync(path.join(tmpdir(), 'dualgate-status-page-'))
    profileDir = mkdtempSync(path.join(tmpdir(), 'dualgate-chromium-'))
    mkdirSync(RESULTS, { recursive: true })
    const { config } = loadConfig({ env: { DUALGATE_DATA_DIR: dataDir, DUALGATE_API_TOKEN: TOKEN }, uciFile: '/nonexistent' })
    store = openStore({ dataDir })
    await seed(store)
    const app = createRunnerApi({
      store,
      config,
      version: '0.1.0',
      // The jobs the runner would have; a run asked for through the page is only recorded.
      runner: {
        jobs: () => ['scan-arp', 'acquire-leases', 'diagnose'].map((name) => ({ name, running: false, queued: false })),
        trigger: (job, trigger) => {
          triggered.push(`${job}:${trigger}`)
          return 'started'
        },
        submit: () => [],
      },
      routes: [
        { method: 'GET', path: '/tunnels', handler: () => ({ tunnels: TUNNELS, failovers: 1, switches: [{ at: iso(3000), from: 'wg-vps', to: 'he', reason: 'better score' }] }) },
        { method: 'GET', path: '/relay', handler: () => ({ rules: RELAY_RULES, failed: [], stats: RELAY_STATS, openFileLimit: 1024 }) },
        { method: 'GET', path: '/forwarder', handler: () => FORWARDER },
      ],
      supervisors: [{ name: 'tunnels', health: () => ipv6Health(TUNNELS) }],
    })
    const server = serve(app, { hostname: '127.0.0.1', port: 0, manual: true, silent: true, gracefulShutdown: false })
    await server.serve()
    await server.ready()
    const { port } = (server.node!.server as HttpServer).address() as AddressInfo
    origin = `http://127.0.0.1:${port}`
    closeServer = () => server.close(true)

    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      pipe: true,
      headless: true,
      userDataDir: profileDir,
      args: [
        '--headless=new', '--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync',
        '--no-first-run', '--disable-default-apps', '--disable-features=Translate,MediaRouter,OptimizationHints',
        // Anything not for 127.0.0.1 goes to a proxy nobody listens on, and fails.
        '--proxy-server=127.0.0.1:9', '--proxy-bypass-list=127.0.0.1',
      ],
    })
    browserPid = browser.process()?.pid
    console.info(`status page: ${origin}/, chromium ${await browser.version()} (pid ${browserPid}), screenshots in ${RESULTS}`)
  }, 30_000)

  afterAll(async () => {
    if (browser) {
      await Promise.race([browser.close(), new Promise((r) => setTimeout(r, 5000))]).catch(() => {})
      // Still there after close: this browser (and only it), by its pid.
      const proc = browser.process()
      if (proc && proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL')
    }
    await closeServer?.()
    rmSync(profileDir, { recursive: true, force: true })
    rmSync(dataDir, { recursive: true, force: true })
  })

  it('the headers forbid everything but its own origin', async () => {
    for (const p of ['/', '/ui/app.css', '/ui/app.js', '/ui/icon.svg']) {
      const res = await fetch(`${origin}${p}`)
      expect(res.status, p).toBe(200)
      expect(res.headers.get('content-security-policy'), p).toBe(CSP)
      expect(res.headers.get('x-content-type-options'), p).toBe('nosniff')
    }
  })

  it('chromium reaches nothing but 127.0.0.1: any other address goes to a proxy that is not there', async () => {
    const page = await browser!.newPage()
    await expect(page.goto('http://198.18.255.254/', { timeout: 10_000 })).rejects.toThrow(/ERR_PROXY_CONNECTION_FAILED/)
    await page.close()
  })

  it('loads clean, asks only its origin, shows devices, tunnels, filters, and follows a change without a reload', async () => {
    const page = await browser!.newPage()
    const seen = watch(page)
    await recordCspViolations(page)
    await page.setViewport({ width: 1280, height: 900 })
    const res = await page.goto(`${origin}/`, { waitUntil: 'networkidle0', timeout: 15_000 })
    expect(res?.status()).toBe(200)
    await page.waitForFunction(() => document.querySelectorAll('#devices-rows tr').length > 0 && document.getElementById('conn')?.textContent?.startsWith('Updated'), { timeout: 10_000 })

    // Devices, each with its status.
    const rows = await deviceRows(page)
    expect(rows.map((r) => [r.mac, r.status]).sort()).toEqual(DEVICES.map((d) => [d.mac, d.status]).sort())
    expect(rows.find((r) => r.mac === '02:00:00:00:00:01')?.name).toBe('living-room-tv')
    const failedRow = await page.$eval('#devices-rows tr[data-key="02:00:00:00:00:03"]', (tr) => tr.textContent ?? '')
    expect(failedRow).toContain('upstream DHCP gave no lease in 3 attempts')
    const tvRow = await page.$eval('#devices-rows tr[data-key="02:00:00:00:00:01"]', (tr) => tr.textContent ?? '')
    expect(tvRow).toContain('198.18.200.11')
    expect(tvRow).toContain('2001:db8:ea:0:ff:fe00:1')

    // Tunnels, with their scores; the forward; the gateway's IPv6 line from /health.
    const tiles = await page.$$eval('#tunnels-list .tile', (ts) => ts.map((t) => ({
      name: t.querySelector('strong')?.textContent, score: t.querySelector('.score')?.getAttribute('data-score'), shown: t.querySelector('.score')?.textContent,
    })))
    expect(tiles).toEqual([
      { name: 'he · primary', score: '92', shown: '92 score' },
      { name: 'wg-vps', score: '61', shown: '61 score' },
    ])
    expect(await page.$eval('#forwards-rows', (n) => n.textContent)).toContain('8080/tcp')
    expect(await page.$eval('#gateway-kv', (n) => n.textContent)).toContain('reachable through he')
    const forwarder = await page.$eval('#forwarder-rows', (n) => n.textContent)
    expect(forwarder).toContain('home.example.net:22')
    expect(forwarder).toContain('listening')
    const kernel = await page.$eval('#forwarder-tunnels', (n) => n.textContent)
    expect(kernel).toContain('dgf-home')
    expect(kernel).toContain('2001:db8:200::2')
    expect(kernel).toContain('web: 12 opened')
    expect(kernel).toContain('1.0 MiB in')

    // The search filters the rows.
    await page.type('#device-search', 'print')
    expect((await deviceRows(page)).map((r) => r.mac)).toEqual(['02:00:00:00:00:02'])
    expect(await page.$eval('#devices-count', (n) => n.textContent)).toBe('1 of 5')
    await page.evaluate(() => {
      const s = document.getElementById('device-search') as HTMLInputElement
      s.value = 'failed'
      s.dispatchEvent(new Event('input'))
    })
    expect((await deviceRows(page)).map((r) => r.mac)).toEqual(['02:00:00:00:00:03'])
    await page.evaluate(() => {
      const s = document.getElementById('device-search') as HTMLInputElement
      s.value = 'no-such-device'
      s.dispatchEvent(new Event('input'))
    })
    expect(await deviceRows(page)).toEqual([])
    expect(await page.$eval('#devices-empty', (n) => (n as HTMLElement).hidden ? '' : n.textContent)).toBe('No device matches.')
    await page.evaluate(() => {
      const s = document.getElementById('device-search') as HTMLInputElement
      s.value = ''
      s.dispatchEvent(new Event('input'))
    })
    expect(await deviceRows(page)).toHaveLength(DEVICES.length)

    // A status change in the store shows within the refresh interval, in the same document.
    await page.evaluate(() => { (window as unknown as { sameDocument: boolean }).sameDocument = true })
    const changedAt = Date.now()
    await store.update((d) => {
      d.devices['02:00:00:00:00:02'].status = 'active'
      d.devices['02:00:00:00:00:02'].wanIpv4 = '198.18.200.12'
    })
    await page.waitForFunction(() => document.querySelector('#devices-rows tr[data-key="02:00:00:00:00:02"] .badge')?.textContent === 'active', { timeout: REFRESH_MS + 2500, polling: 100 })
    console.info(`status page: the change showed after ${Date.now() - changedAt} ms`)
    expect(await page.evaluate(() => (window as unknown as { sameDocument?: boolean }).sameDocument)).toBe(true)
    expect(await page.$eval('#devices-rows tr[data-key="02:00:00:00:00:02"]', (tr) => tr.textContent)).toContain('198.18.200.12')

    await page.screenshot({ path: path.join(RESULTS, 'status-page-1280.png'), fullPage: true })

    expect(seen.consoleErrors).toEqual([])
    expect(seen.pageErrors).toEqual([])
    expect(await cspViolations(page)).toEqual([])
    expect(seen.failedRequests).toEqual([])
    expect(seen.requests.length).toBeGreaterThan(8)
    expect(seen.requests.filter((u) => new URL(u).origin !== origin)).toEqual([])

    // The recorders can fail: an image from elsewhere is a CSP violation, a console error and no request.
    await page.evaluate(() => {
      const img = document.createElement('img')
      img.src = 'http://198.18.255.254/x.png'
      document.body.append(img)
    })
    await page.waitForFunction(() => (window as unknown as { __cspViolations: string[] }).__cspViolations.length > 0, { timeout: 5000 })
    expect(await cspViolations(page)).toEqual(['img-src http://198.18.255.254/x.png'])
    await page.close()
  }, 30_000)

  it('changes only with a token the person gives, kept in the tab and sent only as a header', async () => {
    const page = await browser!.newPage()
    const seen = watch(page)
    const sent: { url: string; method: string; authorization?: string }[] = []
    page.on('request', (r) => { if (r.method() !== 'GET') sent.push({ url: r.url(), method: r.method(), authorization: r.headers().authorization }) })
    await recordCspViolations(page)
    await page.setViewport({ width: 1280, height: 900 })
    await page.goto(`${origin}/`, { waitUntil: 'networkidle0', timeout: 15_000 })
    await page.waitForFunction(() => document.querySelectorAll('#jobs-rows tr').length > 0, { timeout: 10_000 })
    const runButton = '#jobs-rows tr[data-key="scan-arp"] button[data-path]'
    expect(await page.$eval(runButton, (b) => b.checkVisibility())).toBe(false)

    await page.type('#token', TOKEN)
    await page.click('#token-form button:not([type])')
    expect(await page.$eval('#token', (n) => (n as HTMLInputElement).value)).toBe('')
    expect(await page.evaluate(() => sessionStorage.getItem('dualgate-api-token'))).toBe(TOKEN)
    expect(await page.evaluate(() => document.documentElement.outerHTML)).not.toContain(TOKEN)
    expect(await page.$eval(runButton, (b) => b.checkVisibility())).toBe(true)

    await page.click(runButton)
    await page.waitForFunction(() => document.getElementById('said')?.textContent === 'run scan-arp: done', { timeout: 5000 })
    expect(triggered).toEqual(['scan-arp:api'])
    expect(sent).toEqual([{ url: `${origin}/jobs/scan-arp/run`, method: 'POST', authorization: `Bearer ${TOKEN}` }])

    await page.click('#forget')
    expect(await page.evaluate(() => sessionStorage.getItem('dualgate-api-token'))).toBeNull()
    expect(await page.$eval(runButton, (b) => b.checkVisibility())).toBe(false)
    expect(seen.consoleErrors).toEqual([])
    expect(seen.pageErrors).toEqual([])
    expect(await cspViolations(page)).toEqual([])
    expect(seen.requests.filter((u) => new URL(u).origin !== origin)).toEqual([])
    await page.close()
  }, 30_000)

  it('is readable on a 360 px phone, light and dark', async () => {
    const page = await browser!.newPage()
    const seen = watch(page)
    await recordCspViolations(page)
    await page.setViewport({ width: 360, height: 740, deviceScaleFactor: 2, isMobile: true, hasTouch: true })
    await page.goto(`${origin}/`, { waitUntil: 'networkidle0', timeout: 15_000 })
    await page.waitForFunction(() => document.querySelectorAll('#tunnels-list .tile').length === 2, { timeout: 10_000 })

    // Nothing wider than the screen: no sideways scrolling.
    const overflow = () => page.evaluate(() => ({
      page: document.documentElement.scrollWidth,
      wide: [...document.querySelectorAll('main *')].filter((n) => n.getBoundingClientRect().right > window.innerWidth + 0.5).map((n) => `${n.tagName.toLowerCase()}#${n.id}.${n.className}`).slice(0, 5),
    }))
    expect(await overflow()).toEqual({ page: 360, wide: [] })
    // Table rows become labelled cards: the header row is hidden, a cell shows its column's name.
    expect(await page.$eval('#devices thead', (n) => getComputedStyle(n).display)).toBe('none')
    expect(await page.$eval('#devices-rows td[data-label="WAN IPv4"]', (n) => getComputedStyle(n, '::before').content)).toBe('"WAN IPv4"')
    const fontPx = await page.$eval('#devices-rows td[data-label="LAN"]', (n) => parseFloat(getComputedStyle(n).fontSize))
    expect(fontPx).toBeGreaterThanOrEqual(13)
    await page.screenshot({ path: path.join(RESULTS, 'status-page-360.png'), fullPage: true })

    await page.emulateMediaFeatures([{ name: 'prefers-color-scheme', value: 'dark' }])
    const colours = await page.evaluate(() => ({ bg: getComputedStyle(document.body).backgroundColor, text: getComputedStyle(document.body).color, card: getComputedStyle(document.querySelector('.card')!).backgroundColor }))
    expect(colours).toEqual({ bg: 'rgb(13, 17, 23)', text: 'rgb(230, 237, 243)', card: 'rgb(22, 27, 34)' })
    expect(await overflow()).toEqual({ page: 360, wide: [] })
    await page.screenshot({ path: path.join(RESULTS, 'status-page-360-dark.png'), fullPage: true })

    expect(seen.consoleErrors).toEqual([])
    expect(seen.pageErrors).toEqual([])
    expect(await cspViolations(page)).toEqual([])
    expect(seen.requests.filter((u) => new URL(u).origin !== origin)).toEqual([])
    await page.close()
  }, 30_000)
})
