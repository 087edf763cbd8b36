// dualgate status page: polls the JSON API of this origin and updates only the parts of the page that
// changed. Everything from the API goes in as text (textContent, attributes), never as HTML. Changes need
// the API token, which the person types in and which stays in this tab's sessionStorage.
'use strict'

const POLL_MS = 5000
const HIDDEN_POLL_MS = 60000
const MAX_DELAY_MS = 60000
const TIMEOUT_MS = 8000
const TOKEN_KEY = 'dualgate-api-token'
const MAX_ROWS = 500

const $ = (id) => document.getElementById(id)
const svgNs = 'http://www.w3.org/2000/svg'

// ---- small DOM helpers ----------------------------------------------------------------------------

function setText(node, text) {
  const t = text === undefined || text === null ? '' : String(text)
  if (node.textContent !== t) node.textContent = t
}

function setClass(node, cls) {
  if (node.className !== cls) node.className = cls
}

function setAttr(node, name, value) {
  if (node.getAttribute(name) !== value) node.setAttribute(name, value)
}

function make(tag, cls, text) {
  const node = document.createElement(tag)
  if (cls) node.className = cls
  if (text !== undefined) node.textContent = text
  return node
}

/** The children of `parent` follow `items` by key: a child is made once, then only updated, moved or removed. */
function syncChildren(parent, items, key, create, update) {
  const old = new Map()
  for (const child of parent.children) old.set(child.dataset.key, child)
  let prev = null
  for (const item of items.slice(0, MAX_ROWS)) {
    const k = String(key(item))
    let node = old.get(k)
    if (node) old.delete(k)
    else {
      node = create(item)
      node.dataset.key = k
    }
    update(node, item)
    const want = prev ? prev.nextSibling : parent.firstChild
    if (node !== want) parent.insertBefore(node, want)
    prev = node
  }
  for (const node of old.values()) node.remove()
}

/** A table row with one cell per label (the label shows beside the value on a phone). */
function makeRow(labels) {
  const tr = document.createElement('tr')
  for (const label of labels) {
    const td = make('td')
    if (label) td.dataset.label = label
    tr.append(td)
  }
  return tr
}

/** A cell of two lines: a main text and a smaller one under it. */
function twoLines(td, main, sub, mainCls = '') {
  if (!td.firstChild) td.append(make('span'), make('span', 'sub'))
  setText(td.firstChild, main)
  setClass(td.firstChild, mainCls)
  setText(td.lastChild, sub)
}

function badge(node, text, tone) {
  setText(node, text)
  setClass(node, `badge ${tone}`)
}

/** Key/value pairs as dt/dd, in order. */
function syncKv(dl, pairs) {
  const shown = pairs.filter(([, v]) => v !== undefined && v !== '')
  const old = new Map()
  for (const dt of dl.querySelectorAll('dt')) old.set(dt.textContent, dt)
  let prev = null
  for (const [k, v, tone] of shown) {
    let dt = old.get(k)
    let dd
    if (dt) {
      old.delete(k)
      dd = dt.nextSibling
    } else {
      dt = make('dt', '', k)
      dd = make('dd')
    }
    setText(dd, v)
    setClass(dd, tone || '')
    const want = prev ? prev.nextSibling : dl.firstChild
    if (dt !== want) dl.insertBefore(dt, want)
    if (dd !== dt.nextSibling) dl.insertBefore(dd, dt.nextSibling)
    prev = dd
  }
  for (const dt of old.values()) {
    dt.nextSibling?.remove()
    dt.remove()
  }
}

// ---- formatting -------------------------------------------------------------------------------------

function ago(iso) {
  const t = Date.parse(iso)
  if (!Number.isFinite(t)) return ''
  const s = Math.round((Date.now() - t) / 1000)
  if (s < 0) return 'just now'
  if (s < 90) return `${s} s ago`
  if (s < 5400) return `${Math.round(s / 60)} min ago`
  if (s < 129600) return `${Math.round(s / 3600)} h ago`
  return `${Math.round(s / 86400)} d ago`
}

function bytes(n) {
  if (typeof n !== 'number') return ''
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++ }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`
}

function duration(ms) {
  if (typeof ms !== 'number') return ''
  if (ms < 1000) return `${Math.round(ms)} ms`
  if (ms < 120000) return `${(ms / 1000).toFixed(1)} s`
  return `${Math.round(ms / 60000)} min`
}

const hostPort = (e) => (e ? (String(e.host).includes(':') ? `[${e.host}]:${e.port}` : `${e.host}:${e.port}`) : '')
const TONES = { active: 'ok', up: 'ok', pass: 'ok', degraded: 'warn', warn: 'warn', acquiring: 'warn', discovered: 'off', unknown: 'off', failed: 'bad', down: 'bad', fail: 'bad', gone: 'off' }
const tone = (s) => TONES[s] || 'off'

// ---- the API ----------------------------------------------------------------------------------------

async function getJson(path) {
  const ctl = new AbortController()
  const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS)
  try {
    const res = await fetch(path, { signal: ctl.signal, headers: { accept: 'application/json' }, cache: 'no-store' })
    const body = await res.json().catch(() => undefined)
    return { status: res.status, body }
  } finally {
    clearTimeout(timer)
  }
}

const token = () => sessionStorage.getItem(TOKEN_KEY) || ''

function say(text, bad) {
  setText($('said'), text)
  setClass($('said'), bad ? 'bad' : '')
}

async function change(method, path, what, body) {
  const headers = { authorization: `Bearer ${token()}` }
  if (body !== undefined) headers['content-type'] = 'application/json'
  say(`${what}…`)
  try {
    const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' })
    const answer = await res.json().catch(() => ({}))
    if (res.ok) say(`${what}: done`)
    else say(`${what}: ${res.status === 401 ? 'the token was refused' : answer.error || `HTTP ${res.status}`}`, true)
  } catch (err) {
    say(`${what}: ${err.message}`, true)
  }
  void poll()
}

// ---- sections ---------------------------------------------------------------------------------------

function renderGateway(health, status) {
  const pairs = []
  if (health) {
    pairs.push(['Runner', health.ok ? `up, version ${health.version}` : `not healthy${health.store?.error ? `: ${health.store.error}` : ''}`, health.ok ? '' : 'bad'])
    setText($('version'), health.version ? `v${health.version}` : '')
    const v6 = health.tunnels?.ipv6
    if (v6) pairs.push(['IPv6', v6.reachable ? `reachable through ${v6.primary}` : 'not reachable', v6.reachable ? '' : 'bad'])
  }
  if (status) {
    for (const i of status.interfaces || []) {
      const state = !i.present ? 'missing' : i.up ? 'up' : 'down'
      pairs.push([`${i.role.toUpperCase()} ${i.ifname}`, [state, ...(i.addresses || [])].join('\n'), state === 'up' ? '' : 'bad'])
    }
    const u = status.upstream || {}
    const has = [u.dhcpv4 && 'DHCPv4', u.ra && 'RA', u.dhcpv6 && 'DHCPv6'].filter(Boolean).join(', ')
    pairs.push(['Upstream', `${u.wanUp === false ? 'down' : 'up'}${has ? ` (${has})` : ''}${u.checkedAt ? `, checked ${ago(u.checkedAt)}` : ''}`, u.wanUp === false ? 'bad' : ''])
    if (u.prefixes?.length) pairs.push(['Prefixes', u.prefixes.join('\n')])
    if (u.pref64) pairs.push(['NAT64 prefix', u.pref64])
    const d = status.devices || {}
    const counts = ['active', 'acquiring', 'discovered', 'failed', 'gone'].filter((s) => d[s]).map((s) => `${d[s]} ${s}`)
    pairs.push(['Devices', `${d.total ?? 0}${counts.length ? ` (${counts.join(', ')})` : ''}`, d.failed ? 'bad' : ''])
  }
  syncKv($('gateway-kv'), pairs)
}

function deviceText(d) {
  return [d.hostname, d.mac, d.status, d.reason, d.lanIpv4, d.wanIpv4, ...(d.wanIpv6 || [])].filter(Boolean).join(' ').toLowerCase()
}

let devices = []

function renderDevices(list) {
  if (list) devices = Array.isArray(list) ? list : list.devices || []
  const words = $('device-search').value.toLowerCase().split(/\s+/).filter(Boolean)
  const shown = devices.filter((d) => words.every((w) => deviceText(d).includes(w)))
  setText($('devices-count'), words.length ? `${shown.length} of ${devices.length}` : String(devices.length))
  $('devices-empty').hidden = shown.length > 0
  setText($('devices-empty'), devices.length ? 'No device matches.' : 'No devices.')
  syncChildren($('devices-rows'), shown, (d) => d.mac, () => makeRow(['', 'Status', 'LAN', 'WAN IPv4', 'WAN IPv6', 'Seen']), (tr, d) => {
    const [name, st, lan, wan4, wan6, seen] = tr.children
    setClass(name, 'head')
    twoLines(name, d.hostname || d.mac, d.hostname ? d.mac : '', '')
    if (!st.firstChild) st.append(make('span'), make('span', 'sub'))
    badge(st.firstChild, d.status, tone(d.status))
    setText(st.lastChild, d.status === 'failed' || d.status === 'gone' ? d.reason : '')
    setText(lan, d.lanIpv4)
    setText(wan4, d.wanIpv4)
    setText(wan6, (d.wanIpv6 || []).join('\n'))
    setClass(wan4, 'mono')
    setClass(wan6, 'mono')
    setText(seen, ago(d.lastSeen))
    setAttr(seen, 'title', d.lastSeen || '')
  })
}

/** The latency history as a line (no reply: a red dot on the floor). */
function drawHistory(svg, history) {
  const w = 120
  const h = 30
  const n = Math.max(history.length, 2)
  const max = Math.max(1, ...history.map((c) => c.latencyMs || 0))
  const x = (i) => ((i / (n - 1)) * w).toFixed(1)
  const points = history.map((c, i) => (c.latencyMs === undefined || c.latencyMs === null ? null : `${x(i)},${(h - 2 - (c.latencyMs / max) * (h - 6)).toFixed(1)}`))
  setAttr(svg.querySelector('polyline'), 'points', points.filter(Boolean).join(' '))
  const lost = history.map((c, i) => (c.latencyMs === undefined || c.latencyMs === null || c.lossPct >= 100 ? i : -1)).filter((i) => i >= 0)
  syncChildren(svg.querySelector('g'), lost, (i) => history[i].at, () => {
    const dot = document.createElementNS(svgNs, 'circle')
    dot.setAttribute('class', 'lost')
    dot.setAttribute('r', '1.8')
    return dot
  }, (dot, i) => {
    setAttr(dot, 'cx', x(i))
    setAttr(dot, 'cy', String(h - 2))
  })
  const lat = history.map((c) => c.latencyMs).filter((v) => typeof v === 'number')
  return lat.length ? `${Math.min(...lat)}–${Math.max(...lat)} ms over ${history.length} checks` : history.length ? `no reply in ${history.length} checks` : ''
}

function makeTunnel() {
  const tile = make('div', 'tile')
  const head = make('div', 'tile-head')
  head.append(make('strong'), make('span'))
  const score = make('div', 'score')
  const meter = make('meter')
  meter.min = 0
  meter.max = 100
  meter.low = 50
  meter.high = 80
  meter.optimum = 100
  const svg = document.createElementNS(svgNs, 'svg')
  svg.setAttribute('class', 'spark')
  svg.setAttribute('viewBox', '0 0 120 30')
  svg.setAttribute('preserveAspectRatio', 'none')
  svg.setAttribute('aria-hidden', 'true')
  const axis = document.createElementNS(svgNs, 'line')
  for (const [k, v] of [['class', 'axis'], ['x1', '0'], ['x2', '120'], ['y1', '28'], ['y2', '28'], ['vector-effect', 'non-scaling-stroke']]) axis.setAttribute(k, v)
  const line = document.createElementNS(svgNs, 'polyline')
  line.setAttribute('vector-effect', 'non-scaling-stroke')
  svg.append(axis, line, document.createElementNS(svgNs, 'g'))
  const actions = make('div', 'needs-token')
  actions.append(make('button', 'quiet'))
  tile.append(head, score, meter, svg, make('span', 'sub history'), make('span', 'sub detail'), actions)
  return tile
}

function updateTunnel(tile, t) {
  const [head, score, meter, svg, historyLine, detail, actions] = tile.children
  setClass(tile, t.primary ? 'tile primary' : 'tile')
  setText(head.firstChild, `${t.name}${t.primary ? ' · primary' : ''}`)
  badge(head.lastChild, t.adminDown ? 'set down' : t.state, t.adminDown ? 'off' : tone(t.state))
  if (!score.firstChild) score.append(document.createTextNode(''), make('small'))
  setText(score.firstChild, String(t.score))
  setText(score.lastChild, ' score')
  setAttr(score, 'data-score', String(t.score))
  if (meter.value !== t.score) meter.value = t.score
  setText(historyLine, drawHistory(svg, t.history || []))
  const bits = [`${t.type}${t.backend ? ` (${t.backend})` : ''} on ${t.iface}`]
  if (t.latencyMs !== undefined) bits.push(`${t.latencyMs} ms`)
  bits.push(`${t.lossPct} % loss`)
  if (t.handshakeAgeS !== undefined) bits.push(`handshake ${t.handshakeAgeS} s ago`)
  if (t.rxBytes !== undefined) bits.push(`${bytes(t.rxBytes)} in, ${bytes(t.txBytes)} out`)
  if (t.lastFault && t.state !== 'up') bits.push(t.lastFault)
  setText(detail, bits.join(' · '))
  const button = actions.firstChild
  const action = t.adminDown ? 'up' : 'down'
  setText(button, t.adminDown ? 'Bring up' : 'Set down')
  button.dataset.method = 'POST'
  button.dataset.path = `/tunnels/${encodeURIComponent(t.name)}/${action}`
  button.dataset.what = `tunnel ${t.name} ${action}`
  if (action === 'down') button.dataset.confirm = '1'
  else delete button.dataset.confirm
}

function renderTunnels(body) {
  const list = body?.tunnels || []
  $('tunnels').hidden = !body
  $('tunnels-empty').hidden = list.length > 0
  setText($('tunnels-note'), body && list.length ? `${body.failovers} failover${body.failovers === 1 ? '' : 's'}` : '')
  syncChildren($('tunnels-list'), list, (t) => t.name, makeTunnel, updateTunnel)
}

function actionButton(td, label, method, path, what, confirm) {
  if (!td.firstChild) td.append(make('button', 'quiet'))
  const b = td.firstChild
  setText(b, label)
  Object.assign(b.dataset, { method, path, what })
  if (confirm) b.dataset.confirm = '1'
  setClass(td, 'needs-token')
}

function renderForwards(list) {
  list = Array.isArray(list) ? list : []
  $('forwards-empty').hidden = list.length > 0
  syncChildren($('forwards-rows'), list, (f) => f.id, () => makeRow(['Gateway port', 'To', 'Family', '']), (tr, f) => {
    const [port, to, family, act] = tr.children
    setText(port, `${f.gatewayPort}/${f.proto}`)
    setText(to, `${f.deviceIp}:${f.devicePort}`)
    setText(family, f.family === 'both' ? 'IPv4 + IPv6' : `IPv${f.family}`)
    actionButton(act, 'Remove', 'DELETE', `/forwards/${encodeURIComponent(f.id)}`, `remove forward ${f.gatewayPort}/${f.proto}`, true)
  })
}

function renderRelay(body) {
  $('relay').hidden = !body
  if (!body) return
  const s = body.stats || {}
  const refused = Object.entries(s.refused || {}).filter(([, n]) => n > 0).map(([k, n]) => `${n} (${k})`).join(', ')
  syncKv($('relay-kv'), [
    ['Listeners', `${s.listeners ?? 0}${body.failed?.length ? `, ${body.failed.length} failing` : ''}`, body.failed?.length ? 'bad' : ''],
    ['Connections', `${s.tcpActive ?? 0} open, ${s.tcpTotal ?? 0} since start; ${s.udpSessions ?? 0} UDP sessions`],
    ['Relayed', bytes(s.bytes)],
    ['Refused', refused || undefined, 'bad'],
    ...(body.failed || []).slice(0, 20).map((f) => [`Cannot listen on ${hostPort(f.rule?.listen)}`, f.error, 'bad']),
  ])
  const rules = body.rules || []
  $('relay-empty').hidden = rules.length > 0
  syncChildren($('relay-rows'), rules, (r) => `${r.proto} ${hostPort(r.listen)}`, () => makeRow(['Listens on', 'Relays to', 'Proto']), (tr, r) => {
    setText(tr.children[0], hostPort(r.listen))
    setText(tr.children[1], hostPort(r.target))
    setText(tr.children[2], r.proto)
    setClass(tr.children[0], 'mono')
    setClass(tr.children[1], 'mono')
  })
}

/**
 * GET /forwarder: the relay-mode forwards of a forwarder host, and the kernel-mode tunnels dualgate made here
 * (a VPS's to its homes, a home router's to its VPS); none of either: the panel stays hidden.
 */
function renderForwarder(body) {
  const list = Array.isArray(body?.forwards) ? body.forwards : []
  const tunnels = Array.isArray(body?.tunnels) ? body.tunnels : []
  $('forwarder').hidden = list.length === 0 && tunnels.length === 0 && !body?.problem
  $('forwarder-relay').hidden = list.length === 0
  $('forwarder-kernel').hidden = tunnels.length === 0
  syncChildren($('forwarder-tunnels'), tunnels, (t) => t.iface, () => makeRow(['', 'Far end', 'Carries', 'State']), (tr, t) => {
    const [iface, far, carries, state] = tr.children
    setClass(iface, 'head')
    twoLines(iface, t.iface, `${t.transport}, ${t.side === 'peer' ? 'to the VPS' : 'to a home'}`)
    twoLines(far, t.remote || 'not resolved', t.resolveError ? `cannot resolve: ${t.resolveError}` : t.changedAt ? `since ${ago(t.changedAt)}` : '', 'mono')
    const opened = t.opened || {}
    setText(carries, (t.names || []).map((n) => (n in opened ? `${n}: ${opened[n]} opened` : n)).join('\n'))
    if (!state.firstChild) state.append(make('span'), make('span', 'sub'))
    badge(state.firstChild, t.link, t.link === 'up' ? 'ok' : 'bad')
    setText(state.lastChild, `${bytes(t.rxBytes)} in, ${bytes(t.txBytes)} out`)
  })
  setText($('forwarder-problem'), body?.problem)
  $('forwarder-problem').hidden = !body?.problem
  syncChildren($('forwarder-rows'), list, (f) => f.name, () => makeRow(['', 'Listens on', 'To', 'State']), (tr, f) => {
    const [name, listen, to, state] = tr.children
    setClass(name, 'head')
    setText(name, f.name)
    twoLines(listen, `${f.listen} ${f.ports}/${f.proto}`, '', 'mono')
    const port = f.targetPort ? `:${f.targetPort}` : ''
    const where = f.address && f.address !== f.target ? `${f.address}${f.resolvedAt ? `, resolved ${ago(f.resolvedAt)}` : ''}` : ''
    twoLines(to, `${f.target}${port}`, f.resolveError ? `cannot resolve: ${f.resolveError}` : where, 'mono')
    if (!state.firstChild) state.append(make('span'), make('span', 'sub'))
    const l = f.listeners || {}
    if (!f.enabled) badge(state.firstChild, 'disabled', 'off')
    else if (f.error) badge(state.firstChild, 'failing', 'bad')
    else badge(state.firstChild, f.listening ? 'listening' : 'not listening', f.listening ? 'ok' : 'warn')
    const traffic = `${l.open ?? 0} of ${l.wanted ?? 0} listeners, ${f.connections ?? 0} open, ${f.connectionsTotal ?? 0} since start, ${bytes(f.bytes)}`
    setText(state.lastChild, f.error ? `${f.error}\n${traffic}` : traffic)
  })
}

function renderJobs(list) {
  list = Array.isArray(list) ? list : []
  const failing = list.filter((j) => j.last && !j.last.ok)
  setText($('jobs-note'), failing.length ? `${failing.length} failing` : '')
  setClass($('jobs-note'), failing.length ? 'bad' : '')
  syncChildren($('jobs-rows'), list, (j) => j.name, () => makeRow(['', 'Last run', 'Runs', 'Schedule', '']), (tr, j) => {
    const [name, last, runs, schedule, act] = tr.children
    setClass(name, 'head')
    setText(name, `${j.name}${j.running ? ' (running)' : j.queued ? ' (queued)' : ''}`)
    if (!last.firstChild) last.append(make('span'), make('span', 'sub'))
    if (j.last) {
      badge(last.firstChild, j.last.ok ? 'ok' : 'failed', j.last.ok ? 'ok' : 'bad')
      setText(last.lastChild, `${ago(j.last.startedAt)}, took ${duration(j.last.durationMs)}, ${j.last.trigger}${j.last.error ? `\n${j.last.error}` : ''}`)
    } else {
      badge(last.firstChild, 'never', 'off')
      setText(last.lastChild, '')
    }
    setText(runs, `${j.runs}${j.failures ? `, ${j.failures} failed` : ''}`)
    setClass(runs, j.failures ? 'warn' : '')
    setText(schedule, j.schedule || 'on events')
    if (j.available === false) {
      act.replaceChildren()
      setClass(act, '')
    } else actionButton(act, 'Run', 'POST', `/jobs/${encodeURIComponent(j.name)}/run`, `run ${j.name}`)
  })
}

const ORDER = { fail: 0, warn: 1, pass: 2 }

function renderDiagnose(list) {
  const run = (Array.isArray(list) ? list : []).find((j) => j.name === 'diagnose')?.last
  const checks = Array.isArray(run?.result?.checks) ? [...run.result.checks] : []
  checks.sort((a, b) => (ORDER[a.status] ?? 3) - (ORDER[b.status] ?? 3))
  const count = (s) => checks.filter((c) => c.status === s).length
  setText($('diagnose-note'), run ? `${ago(run.startedAt)}: ${count('fail')} fail, ${count('warn')} warn, ${count('pass')} pass` : '')
  $('diagnose-empty').hidden = checks.length > 0
  setText($('diagnose-empty'), run ? 'The last run left no checks (it failed before them).' : 'Diagnose has not run yet.')
  syncChildren($('diagnose-rows'), checks, (c) => c.id, () => makeRow(['', 'Result', 'Fix']), (tr, c) => {
    const [id, result, fix] = tr.children
    setClass(id, 'head')
    if (!id.firstChild) id.append(make('span'), document.createTextNode(''))
    badge(id.firstChild, c.status, tone(c.status))
    setText(id.lastChild, ` ${c.id}`)
    setText(result, c.reason)
    setText(fix, c.fix)
  })
}

// ---- polling ----------------------------------------------------------------------------------------

let timer
let busy = false
let failures = 0
let hasForwarder = true

async function refresh() {
  const paths = ['/health', '/status', '/devices', '/tunnels', '/forwards', '/relay', '/jobs']
  if (hasForwarder) paths.push('/forwarder')
  const got = await Promise.all(paths.map((p) => getJson(p).catch((err) => ({ status: 0, error: err }))))
  const r = Object.fromEntries(paths.map((p, i) => [p, got[i]]))
  if (r['/health'].status === 0) throw r['/health'].error
  const ok = (p) => (r[p] && r[p].status >= 200 && r[p].status < 300 ? r[p].body : undefined)
  renderGateway(r['/health'].body, ok('/status'))
  renderDevices(ok('/devices'))
  renderTunnels(ok('/tunnels'))
  renderForwards(ok('/forwards'))
  renderRelay(ok('/relay'))
  renderJobs(ok('/jobs'))
  renderDiagnose(ok('/jobs'))
  if (hasForwarder) {
    // A runner without the forwarder has no such route: the panel stays away until the page is loaded again.
    if (r['/forwarder'].status === 404) hasForwarder = false
    renderForwarder(ok('/forwarder'))
  }
  const failed = paths.filter((p) => r[p].status !== 200 && !(p === '/forwarder' && r[p].status === 404))
  return failed
}

async function poll() {
  if (busy) return
  busy = true
  clearTimeout(timer)
  try {
    const failed = await refresh()
    failures = 0
    setText($('conn'), `Updated ${new Date().toLocaleTimeString()}${failed.length ? ` · no answer from ${failed.join(', ')}` : ''}`)
    setClass($('conn'), failed.length ? 'bad' : '')
  } catch (err) {
    failures++
    setText($('conn'), `Cannot reach the gateway (${err.name === 'AbortError' ? 'timed out' : err.message}); trying again`)
    setClass($('conn'), 'bad')
  } finally {
    busy = false
    const base = document.hidden ? HIDDEN_POLL_MS : POLL_MS
    timer = setTimeout(poll, Math.min(MAX_DELAY_MS, base * 2 ** Math.min(failures, 4)))
  }
}

// ---- changes, with the token ------------------------------------------------------------------------

function showToken() {
  document.body.classList.toggle('has-token', !!token())
}

function onClick(event) {
  const button = event.target.closest('button[data-path]')
  if (!button || !token()) return
  if (button.dataset.confirm && !button.classList.contains('armed')) {
    button.classList.add('armed')
    button.dataset.label = button.textContent
    button.textContent = 'Sure?'
    setTimeout(() => {
      if (!button.classList.contains('armed')) return
      button.classList.remove('armed')
      button.textContent = button.dataset.label
    }, 4000)
    return
  }
  if (button.classList.contains('armed')) {
    button.classList.remove('armed')
    button.textContent = button.dataset.label
  }
  void change(button.dataset.method, button.dataset.path, button.dataset.what)
}

function start() {
  $('admin').hidden = false
  showToken()
  $('token-form').addEventListener('submit', (event) => {
    event.preventDefault()
    const field = $('token')
    const value = field.value.trim()
    field.value = ''
    if (!value) return
    sessionStorage.setItem(TOKEN_KEY, value)
    showToken()
    say('Token kept for this tab.')
  })
  $('forget').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY)
    showToken()
    say('Token forgotten.')
  })
  $('forward-form').addEventListener('submit', (event) => {
    event.preventDefault()
    const f = new FormData(event.target)
    const body = { gatewayPort: Number(f.get('gatewayPort')), deviceIp: String(f.get('deviceIp')).trim(), devicePort: Number(f.get('devicePort')), proto: f.get('proto'), family: f.get('family') }
    void change('POST', '/forwards', `add forward ${body.gatewayPort}/${body.proto}`, body).then(() => event.target.reset())
  })
  document.addEventListener('click', onClick)
  $('device-search').addEventListener('input', () => renderDevices())
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) void poll()
  })
  void poll()
}

start()
