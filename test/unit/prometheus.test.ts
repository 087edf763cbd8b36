// The exposition helpers (lib/core/prometheus.ts) and the families built on them that need no system: the
// runner's own, the relay's and the SOCKS5 server's, each read back by the strict parser of ./exposition.ts.
import { describe, expect, it } from 'vitest'
import { exposition, formatFamily, helpText, labelSet, labelValue, sampleValue, single, snakeCase } from '../../lib/core/prometheus.ts'
import { emptyData } from '../../lib/core/schema.ts'
import { relayMetrics } from '../../lib/reach/relay-supervisor.ts'
import type { RelayStats } from '../../lib/reach/relay.ts'
import { runnerFamilies } from '../../lib/runner/api.ts'
import { socks5Metrics } from '../../lib/tunnels/socks5-supervisor.ts'
import type { Socks5Stats } from '../../lib/tunnels/socks5.ts'
import { parseExposition } from './exposition.ts'

describe('escaping', () => {
  it('escapes backslash, double quote and line feed in label values, backslash first', () => {
    expect(labelValue('plain')).toBe('plain')
    expect(labelValue('a\\b')).toBe('a\\\\b')
    expect(labelValue('say "hi"')).toBe('say \\"hi\\"')
    expect(labelValue('two\nlines')).toBe('two\\nlines')
    // A backslash before an n stays a backslash and an n, not a line feed.
    expect(labelValue('\\n')).toBe('\\\\n')
    expect(labelValue('\\"\n')).toBe('\\\\\\"\\n')
  })

  it('escapes backslash and line feed in HELP text, and leaves double quotes alone', () => {
    expect(helpText('Bytes "relayed".')).toBe('Bytes "relayed".')
    expect(helpText('a\\b\nc')).toBe('a\\\\b\\nc')
  })

  it('writes label sets in the order given, and refuses a label name the format does not allow', () => {
    expect(labelSet()).toBe('')
    expect(labelSet({})).toBe('')
    expect(labelSet({ b: '1', a: 'x"y' })).toBe('{b="1",a="x\\"y"}')
    expect(() => labelSet({ 'bad-name': 'x' })).toThrow(/bad label name/)
    expect(() => labelSet({ __reserved: 'x' })).toThrow(/bad label name/)
  })

  it('writes values as Go parses them', () => {
    expect([1, 0.5, -2, 1e21, NaN, Infinity, -Infinity].map(sampleValue)).toEqual(['1', '0.5', '-2', '1e+21', 'NaN', '+Inf', '-Inf'])
  })

  it('turns camelCase names into label values', () => {
    expect(['connections', 'connectionsPerSource', 'udpSessionsPerSource'].map(snakeCase)).toEqual(['connections', 'connections_per_source', 'udp_sessions_per_source'])
  })
})

describe('families', () => {
  it('puts HELP and TYPE before the samples, and escapes what needs it on the way out and back', () => {
    const text = formatFamily({ name: 'x_up', type: 'gauge', help: 'Up?\nOr "down" \\ gone.', samples: [{ labels: { name: 'a"b\\c\nd' }, value: 1 }, { value: 0 }] })
    expect(text).toBe('# HELP x_up Up?\\nOr "down" \\\\ gone.\n# TYPE x_up gauge\nx_up{name="a\\"b\\\\c\\nd"} 1\nx_up 0\n')
    expect(parseExposition(text).get('x_up')?.samples).toEqual([{ labels: { name: 'a"b\\c\nd' }, value: 1 }, { labels: {}, value: 0 }])
  })

  it('leaves out a family without samples', () => {
    expect(formatFamily({ name: 'x', type: 'gauge', help: 'x', samples: [] })).toBe('')
  })

  it('names counters *_total and nothing else so, and takes only valid names', () => {
    expect(() => formatFamily(single('x_bytes', 'counter', 'x', 1))).toThrow(/_total/)
    expect(() => formatFamily(single('x_total', 'gauge', 'x', 1))).toThrow(/_total/)
    expect(() => formatFamily(single('1x', 'gauge', 'x', 1))).toThrow(/bad metric name/)
    expect(() => formatFamily(single('x-y', 'gauge', 'x', 1))).toThrow(/bad metric name/)
  })

  it('refuses a family twice', () => {
    expect(() => exposition([single('x', 'gauge', 'x', 1), single('x', 'gauge', 'again', 2)])).toThrow(/twice/)
    expect(exposition([single('a', 'gauge', 'a', 1), single('b_total', 'counter', 'b', 2)])).toBe('# HELP a a\n# TYPE a gauge\na 1\n# HELP b_total b\n# TYPE b_total counter\nb_total 2\n')
  })
})

describe("the runner's families", () => {
  const stats = { residentMemoryBytes: 50_000_000, startTimeSeconds: 1_700_000_000.5, eventQueueLength: 3, spoolBacklog: 2, eventsDropped: 7 }

  it('counts forwards by protocol and family, each combination present', () => {
    const data = emptyData()
    const at = new Date().toISOString()
    data.forwards.push(
      { id: 'a', gatewayPort: 8080, deviceIp: '198.18.0.10', devicePort: 80, proto: 'tcp', family: 'both', createdAt: at },
      { id: 'b', gatewayPort: 8081, deviceIp: '198.18.0.10', devicePort: 81, proto: 'tcp', family: 'both', createdAt: at },
      { id: 'c', gatewayPort: 5353, deviceIp: '198.18.0.11', devicePort: 53, proto: 'udp', family: '6', createdAt: at },
    )
    const f = parseExposition(exposition(runnerFamilies(data, [])))
    const forwards = Object.fromEntries(f.get('dualgate_forwards')!.samples.map((s) => [`${s.labels.proto}/${s.labels.family}`, s.value]))
    expect(forwards).toEqual({ 'tcp/4': 0, 'tcp/6': 0, 'tcp/both': 2, 'udp/4': 0, 'udp/6': 1, 'udp/both': 0 })
  })

  it("reports the process and the runner's queues when the runner hands them over", () => {
    const f = parseExposition(exposition(runnerFamilies(emptyData(), [{ name: 'scan-arp', running: false }], stats)))
    const value = (name: string) => f.get(name)?.samples[0].value
    expect(value('process_resident_memory_bytes')).toBe(50_000_000)
    expect(value('process_start_time_seconds')).toBe(1_700_000_000.5)
    expect(value('dualgate_runner_event_queue_length')).toBe(3)
    expect(value('dualgate_runner_spool_backlog_files')).toBe(2)
    expect(value('dualgate_runner_events_dropped_total')).toBe(7)
    expect(f.get('dualgate_runner_events_dropped_total')?.type).toBe('counter')
    // A job that never ran: its counters at 0, no last run.
    expect(f.get('dualgate_job_runs_total')?.samples).toEqual([{ labels: { job_name: 'scan-arp' }, value: 0 }])
    expect(f.has('dualgate_job_last_run_success')).toBe(false)
  })

  it('keeps one order however the store lists its jobs', () => {
    const a = emptyData()
    const b = emptyData()
    a.jobs = { x: { runs: 1, failures: 0 }, b: { runs: 2, failures: 1 } }
    b.jobs = { b: { runs: 2, failures: 1 }, x: { runs: 1, failures: 0 } }
    b.meta = a.meta
    expect(exposition(runnerFamilies(b, [{ name: 'm', running: true }], stats))).toBe(exposition(runnerFamilies(a, [{ name: 'm', running: true }], stats)))
  })
})

describe('the relay and SOCKS5 families', () => {
  const relayStats: RelayStats = {
    listeners: 3, tcpActive: 2, tcpTotal: 40, udpSessions: 1, bytes: 123_456, bufferBytes: 0,
    refused: { connections: 1, connectionsPerSource: 2, udpSessions: 0, udpSessionsPerSource: 3 },
  }
  const rule = (proto: 'tcp' | 'udp', port: number) => ({ listen: { host: '2001:db8:1::10', port }, target: { host: '198.18.0.10', port }, proto })

  it('counts listeners by protocol and refusals by reason', () => {
    const f = parseExposition(relayMetrics([rule('tcp', 80), rule('tcp', 23), rule('udp', 7)], 1, relayStats))
    const by = (name: string, label: string) => Object.fromEntries(f.get(name)!.samples.map((s) => [s.labels[label], s.value]))
    expect(by('dualgate_relay_listeners', 'proto')).toEqual({ tcp: 2, udp: 1 })
    expect(by('dualgate_relay_refusals_total', 'reason')).toEqual({ connections: 1, connections_per_source: 2, udp_sessions: 0, udp_sessions_per_source: 3 })
    expect(f.get('dualgate_relay_listeners_failed')?.samples[0].value).toBe(1)
    expect(f.get('dualgate_relay_tcp_connections_total')).toMatchObject({ type: 'counter', samples: [{ value: 40 }] })
    expect(f.get('dualgate_relay_bytes_total')?.samples[0].value).toBe(123_456)
  })

  it('says whether SOCKS5 listens, with its counters only while it does', () => {
    expect([...parseExposition(socks5Metrics(undefined)).keys()]).toEqual(['dualgate_socks5_listening'])
    const stats: Socks5Stats = {
      address: { host: '127.0.0.1', port: 1080 }, active: 1, handshaking: 0, total: 9, bytes: 4096,
      replies: { succeeded: 8, connectionRefused: 1 }, malformed: 2, handshakeTimeouts: 0, idleTimeouts: 1, authFailures: 0,
      refused: { connections: 0, connectionsPerSource: 4 },
    }
    const f = parseExposition(socks5Metrics(stats))
    const replies = Object.fromEntries(f.get('dualgate_socks5_replies_total')!.samples.map((s) => [s.labels.reply, s.value]))
    expect(replies).toMatchObject({ succeeded: 8, connection_refused: 1, general_failure: 0 })
    expect(f.get('dualgate_socks5_refusals_total')?.samples.find((s) => s.labels.reason === 'connections_per_source')?.value).toBe(4)
    expect(f.get('dualgate_socks5_listening')?.samples[0].value).toBe(1)
  })
})
