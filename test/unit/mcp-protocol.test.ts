// The MCP server's pure parts: JSON-RPC framing (lib/mcp/protocol.ts), the session (lib/mcp/session.ts) with
// a stand-in backend, line splitting (lib/mcp/transport.ts) and the argument checker (lib/mcp/json-schema.ts).
import { describe, expect, it } from 'vitest'
import { loadConfig, type Config } from '../../lib/core/config.ts'
import { emptyData } from '../../lib/core/schema.ts'
import { ToolError, type ApiAnswer, type Backend } from '../../lib/mcp/backend.ts'
import { schemaError } from '../../lib/mcp/json-schema.ts'
import { LATEST_PROTOCOL_VERSION, negotiateVersion, parseLine } from '../../lib/mcp/protocol.ts'
import { createSession, MAX_IN_FLIGHT } from '../../lib/mcp/session.ts'
import { READ_TOOLS, WRITE_TOOLS } from '../../lib/mcp/tools.ts'
import { lineSplitter, MAX_LINE_BYTES } from '../../lib/mcp/transport.ts'

const baseConfig = loadConfig({ env: {}, uciFile: '/nonexistent' }).config

describe('parseLine', () => {
  it('reads requests and notifications, whatever the spacing', () => {
    expect(parseLine('{"jsonrpc":"2.0","id":1,"method":"ping"}')).toEqual({ kind: 'request', id: 1, method: 'ping', params: {} })
    expect(parseLine(' { "jsonrpc" : "2.0" , "id" : "a b" , "method" : "tools/list" , "params" : { "cursor" : "x" } } ')).toEqual({ kind: 'request', id: 'a b', method: 'tools/list', params: { cursor: 'x' } })
    expect(parseLine('{"jsonrpc":"2.0","method":"notifications/initialized"}')).toEqual({ kind: 'notification', method: 'notifications/initialized', params: {} })
    expect(parseLine('   ')).toBeUndefined()
  })

  it('says what is wrong with what is not a request, with the id when it can be read', () => {
    expect(parseLine('{"jsonrpc":"2.0","id":1,"method":')).toMatchObject({ kind: 'invalid', id: null, code: -32700 })
    expect(parseLine('[{"jsonrpc":"2.0","id":1,"method":"ping"}]')).toMatchObject({ kind: 'invalid', id: null, code: -32600 })
    expect(parseLine('"ping"')).toMatchObject({ kind: 'invalid', id: null, code: -32600 })
    expect(parseLine('{"id":5,"method":"ping"}')).toMatchObject({ kind: 'invalid', id: 5, code: -32600 })
    expect(parseLine('{"jsonrpc":"2.0","id":null,"method":"ping"}')).toMatchObject({ kind: 'invalid', id: null, code: -32600 })
    expect(parseLine('{"jsonrpc":"2.0","id":{},"method":"ping"}')).toMatchObject({ kind: 'invalid', id: null, code: -32600 })
    expect(parseLine('{"jsonrpc":"2.0","id":"q","method":3}')).toMatchObject({ kind: 'invalid', id: 'q', code: -32600 })
    expect(parseLine('{"jsonrpc":"2.0","id":2,"method":"ping","params":[1]}')).toMatchObject({ kind: 'invalid', id: 2, code: -32602 })
  })

  it('never answers a notification or a response, even a wrong one', () => {
    expect(parseLine('{"jsonrpc":"2.0","method":"notifications/x","params":[1]}')).toEqual({ kind: 'ignore' })
    expect(parseLine('{"jsonrpc":"2.0","id":9,"result":{}}')).toEqual({ kind: 'ignore' })
    expect(parseLine('{"jsonrpc":"2.0","id":9,"error":{"code":1,"message":"x"}}')).toEqual({ kind: 'ignore' })
  })

  it('negotiates the protocol version', () => {
    expect(negotiateVersion('2025-06-18')).toBe('2025-06-18')
    expect(negotiateVersion('2024-11-05')).toBe('2024-11-05')
    expect(negotiateVersion('1999-01-01')).toBe(LATEST_PROTOCOL_VERSION)
  })
})

interface Fake {
  backend: Backend
  asked: string[]
}

/** A backend that answers from a table (path → answer), or never (for the in-flight bound). */
function fakeBackend(answers: Record<string, ApiAnswer | 'hang' | 'throw'>, config: Config = baseConfig): Fake {
  const asked: string[] = []
  return {
    asked,
    backend: {
      config: () => config,
      async api(method, pathname, opts = {}) {
        asked.push(`${method} ${pathname}`)
        const a = answers[`${method} ${pathname}`]
        if (a === 'hang') {
          return new Promise<ApiAnswer>((_resolve, reject) => opts.signal?.addEventListener('abort', () => reject(opts.signal!.reason)))
        }
        if (a === 'throw') throw new ToolError('the runner\'s API is not answering (ECONNREFUSED)')
        return a ?? { status: 404, body: { error: `no route ${pathname}` } }
      },
      data: async () => {
        const d = emptyData()
        d.runs.push({ id: 'r1', job: 'scan-arp', trigger: 'cron', startedAt: '2024-01-01T00:00:00.000Z', durationMs: 5, ok: true })
        d.runs.push({ id: 'r2', job: 'scan-arp', trigger: 'api', startedAt: '2024-01-02T00:00:00.000Z', durationMs: 5, ok: false, error: 'x' })
        d.runs.push({ id: 'r3', job: 'count', trigger: 'api', startedAt: '2024-01-03T00:00:00.000Z', durationMs: 5, ok: true })
        d.jobs['scan-arp'] = { runs: 2, failures: 1, last: d.runs[1] }
        return d
      },
    },
  }
}

/** A session whose answers are collected, parsed, in order. */
function open(fake: Fake) {
  const out: any[] = []
  const session = createSession({ backend: fake.backend, version: '9.9.9', send: (line) => out.push(JSON.parse(line)) })
  const send = (msg: unknown) => session.receive(typeof msg === 'string' ? msg : JSON.stringify(msg))
  const init = async () => {
    send({ jsonrpc: '2.0', id: 0, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 't', version: '1' } } })
    send({ jsonrpc: '2.0', method: 'notifications/initialized' })
    await session.idle()
    out.length = 0
  }
  /** Answers come as they are ready, not in the order asked: look each up by its id. */
  const byId = (id: unknown) => out.find((m) => m.id === id)
  return { out, session, send, init, byId }
}

const DEVICES = [{ mac: '02:00:00:00:00:01', status: 'active' }]

describe('session', () => {
  it('initializes with the client\'s version when it speaks it, else its latest', async () => {
    const s = open(fakeBackend({}))
    s.send({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-03-26', capabilities: {} } })
    s.send({ jsonrpc: '2.0', id: 2, method: 'initialize', params: { protocolVersion: '2030-01-01', capabilities: {} } })
    s.send({ jsonrpc: '2.0', id: 3, method: 'initialize', params: {} })
    await s.session.idle()
    expect(s.out[0]).toMatchObject({ jsonrpc: '2.0', id: 1, result: { protocolVersion: '2025-03-26', capabilities: { tools: {} }, serverInfo: { name: 'dualgate', version: '9.9.9' } } })
    expect(s.out[1].result.protocolVersion).toBe(LATEST_PROTOCOL_VERSION)
    expect(s.out[2]).toMatchObject({ id: 3, error: { code: -32602 } })
  })

  it('echoes ids with their type, and writes valid JSON for any id', async () => {
    const s = open(fakeBackend({}))
    const ids = [7, '7', 0, -1.5, '', 'a"b\\c\n', '☃']
    for (const id of ids) s.send({ jsonrpc: '2.0', id, method: 'ping' })
    await s.session.idle()
    expect(s.out.map((m) => m.id)).toEqual(ids)
    expect(s.out.every((m) => JSON.stringify(m.result) === '{}')).toBe(true)
  })

  it('answers no notification, known or not, even a malformed one', async () => {
    const s = open(fakeBackend({}))
    await s.init()
    s.send({ jsonrpc: '2.0', method: 'notifications/initialized' })
    s.send({ jsonrpc: '2.0', method: 'notifications/whatever', params: { a: 1 } })
    s.send({ jsonrpc: '2.0', method: 'tools/list' })
    s.send({ jsonrpc: '2.0', method: 'notifications/x', params: 'no' })
    s.send({ jsonrpc: '2.0', id: 'last', method: 'ping' })
    await s.session.idle()
    expect(s.out).toEqual([{ jsonrpc: '2.0', id: 'last', result: {} }])
  })

  it('-32601 for an unknown method, -32700 for a line that is not JSON, -32600 for tools before initialize', async () => {
    const s = open(fakeBackend({}))
    s.send({ jsonrpc: '2.0', id: 1, method: 'tools/list' })
    s.send({ jsonrpc: '2.0', id: 2, method: 'resources/list' })
    s.send('{nope')
    await s.session.idle()
    expect(s.out).toHaveLength(3)
    expect(s.byId(1)).toEqual({ jsonrpc: '2.0', id: 1, error: { code: -32600, message: 'initialize first' } })
    expect(s.byId(2)).toEqual({ jsonrpc: '2.0', id: 2, error: { code: -32601, message: 'method not found: resources/list' } })
    expect(s.byId(null)).toEqual({ jsonrpc: '2.0', id: null, error: { code: -32700, message: expect.any(String) } })
  })

  it('lists the read tools, each with input and output schemas; write tools only with mcpWrite', async () => {
    const s = open(fakeBackend({}))
    await s.init()
    s.send({ jsonrpc: '2.0', id: 1, method: 'tools/list' })
    await s.session.idle()
    const tools = s.out[0].result.tools as { name: string; inputSchema: any; outputSchema: any; annotations: any }[]
    expect(tools.map((t) => t.name)).toEqual(READ_TOOLS.map((t) => t.name))
    for (const t of tools) {
      expect(t.inputSchema.type).toBe('object')
      expect(t.outputSchema.type).toBe('object')
      expect(t.annotations.readOnlyHint).toBe(true)
    }
    const w = open(fakeBackend({}, { ...baseConfig, mcpWrite: true }))
    await w.init()
    w.send({ jsonrpc: '2.0', id: 1, method: 'tools/list' })
    await w.session.idle()
    expect(w.out[0].result.tools.map((t: { name: string }) => t.name)).toEqual([...READ_TOOLS, ...WRITE_TOOLS].map((t) => t.name))
  })

  it('-32602 for an unknown tool or arguments its schema refuses, and asks the API nothing then', async () => {
    const f = fakeBackend({ 'GET /devices': { status: 200, body: DEVICES } })
    const s = open(f)
    await s.init()
    s.send({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'rm_rf', arguments: {} } })
    s.send({ jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'list_devices', arguments: { status: 'bogus' } } })
    s.send({ jsonrpc: '2.0', id: 3, method: 'tools/call', params: { name: 'list_devices', arguments: { colour: 'red' } } })
    s.send({ jsonrpc: '2.0', id: 4, method: 'tools/call', params: { name: 'get_device', arguments: {} } })
    s.send({ jsonrpc: '2.0', id: 5, method: 'tools/call', params: { name: 'get_device', arguments: { mac: '../../jobs/x/run' } } })
    s.send({ jsonrpc: '2.0', id: 6, method: 'tools/call', params: { name: 'job_runs', arguments: { job: 'scan-arp', limit: 0 } } })
    s.send({ jsonrpc: '2.0', id: 7, method: 'tools/call', params: { name: 'add_forward', arguments: { gatewayPort: 1, deviceIp: '192.168.1.2', devicePort: 1 } } })
    s.send({ jsonrpc: '2.0', id: 8, method: 'tools/call', params: { name: 'list_devices', arguments: [] } })
    await s.session.idle()
    expect(s.out.map((m) => [m.id, m.error?.code]).sort()).toEqual([1, 2, 3, 4, 5, 6, 7, 8].map((id) => [id, -32602]))
    expect(s.byId(1).error.message).toBe('unknown tool: "rm_rf"')
    expect(s.byId(2).error.message).toMatch(/status: expected one of "discovered"/)
    expect(s.byId(3).error.message).toMatch(/unknown property "colour"/)
    expect(s.byId(4).error.message).toMatch(/"mac" is required/)
    expect(s.byId(8).error.message).toMatch(/^list_devices: arguments: expected an object/)
    expect(f.asked).toEqual([])
  })

  it('gives what the API answered as structured content and text', async () => {
    const f = fakeBackend({ 'GET /devices?status=active': { status: 200, body: DEVICES }, 'GET /health': { status: 503, body: { ok: false, store: { ok: false } } } })
    const s = open(f)
    await s.init()
    s.send({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'list_devices', arguments: { status: 'active' } } })
    s.send({ jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'health' } })
    s.send({ jsonrpc: '2.0', id: 3, method: 'tools/call', params: { name: 'job_runs', arguments: { job: 'scan-arp', limit: 1 } } })
    await s.session.idle()
    expect(s.byId(1).result.structuredContent).toEqual({ devices: DEVICES })
    expect(JSON.parse(s.byId(1).result.content[0].text)).toEqual({ devices: DEVICES })
    expect(s.byId(1).result.isError).toBeUndefined()
    expect(s.byId(2).result.structuredContent).toEqual({ ok: false, store: { ok: false } })
    expect(s.byId(3).result.structuredContent).toMatchObject({ job: 'scan-arp', runs: 2, failures: 1, recent: [{ id: 'r2' }] })
  })

  it('says a tool\'s failure as a result with isError, in the API\'s words', async () => {
    const f = fakeBackend({ 'GET /devices/02%3A00%3A00%3A00%3A00%3A09': { status: 404, body: { error: 'no device 02:00:00:00:00:09' } }, 'GET /forwards': 'throw' })
    const s = open(f)
    await s.init()
    s.send({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'get_device', arguments: { mac: '02:00:00:00:00:09' } } })
    s.send({ jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'list_forwards', arguments: {} } })
    await s.session.idle()
    expect(s.byId(1).result).toEqual({ content: [{ type: 'text', text: 'GET /devices/02%3A00%3A00%3A00%3A00%3A09: 404 no device 02:00:00:00:00:09' }], isError: true })
    expect(s.byId(2).result).toMatchObject({ isError: true, content: [{ type: 'text', text: expect.stringMatching(/ECONNREFUSED/) }] })
  })

  it(`refuses more than ${MAX_IN_FLIGHT} requests at once, answers nothing for a cancelled one, and drops answers after close`, async () => {
    const s = open(fakeBackend({ 'GET /forwards': 'hang' }))
    await s.init()
    for (let id = 1; id <= MAX_IN_FLIGHT + 1; id++) s.send({ jsonrpc: '2.0', id, method: 'tools/call', params: { name: 'list_forwards' } })
    expect(s.out).toEqual([{ jsonrpc: '2.0', id: MAX_IN_FLIGHT + 1, error: { code: -32000, message: expect.stringMatching(/retry/) } }])
    // A duplicate of an id still in flight is refused, not answered twice.
    s.send({ jsonrpc: '2.0', id: 1, method: 'ping' })
    expect(s.out[1]).toMatchObject({ id: 1, error: { code: -32600 } })
    s.send({ jsonrpc: '2.0', method: 'notifications/cancelled', params: { requestId: 1, reason: 'user' } })
    await new Promise((r) => setTimeout(r, 20))
    expect(s.out).toHaveLength(2)
    // With one slot free, a new request is taken again.
    s.send({ jsonrpc: '2.0', id: 'p', method: 'ping' })
    await new Promise((r) => setTimeout(r, 20))
    expect(s.out[2]).toEqual({ jsonrpc: '2.0', id: 'p', result: {} })
    s.session.close()
    await s.session.idle()
    expect(s.out).toHaveLength(3)
  })
})

describe('lineSplitter', () => {
  it('splits lines across chunks, keeps a character split between chunks whole, drops \\r', () => {
    const lines: string[] = []
    const split = lineSplitter((l) => lines.push(l), () => lines.push('TOO LONG'))
    const bytes = Buffer.from('{"a":"☃"}\r\n{"b":1}\n{"c"')
    split(bytes.subarray(0, 7)) // inside the snowman's three bytes
    split(bytes.subarray(7))
    expect(lines).toEqual(['{"a":"☃"}', '{"b":1}'])
    split(Buffer.from(':2}\n'))
    expect(lines).toEqual(['{"a":"☃"}', '{"b":1}', '{"c":2}'])
  })

  it('reports a line longer than the bound once, skips it, and takes the next', () => {
    const lines: string[] = []
    let tooLong = 0
    const split = lineSplitter((l) => lines.push(l), () => tooLong++)
    const chunk = Buffer.alloc(64 * 1024, 'x')
    for (let i = 0; i < (MAX_LINE_BYTES / chunk.length) * 3; i++) split(chunk)
    expect(tooLong).toBe(1)
    split(Buffer.from('tail\n{"ok":1}\n'))
    expect(lines).toEqual(['{"ok":1}'])
    // Just under the bound, in one piece or several, is a line.
    split(Buffer.alloc(MAX_LINE_BYTES - 1, 'y'))
    split(Buffer.from('\n'))
    expect(lines[1]).toHaveLength(MAX_LINE_BYTES - 1)
    expect(tooLong).toBe(1)
  })
})

describe('schemaError', () => {
  const schema = READ_TOOLS.find((t) => t.name === 'job_runs')!.inputSchema
  it('takes what the schema allows and names what it refuses', () => {
    expect(schemaError(schema, { job: 'scan-arp' })).toBeUndefined()
    expect(schemaError(schema, { job: 'scan-arp', limit: 100 })).toBeUndefined()
    expect(schemaError(schema, { job: 'scan-arp', limit: 101 })).toBe('arguments.limit: at most 100')
    expect(schemaError(schema, { job: 'scan-arp', limit: 1.5 })).toBe('arguments.limit: expected an integer')
    expect(schemaError(schema, { job: 'Scan Arp' })).toMatch(/^arguments.job: does not match/)
    expect(schemaError(schema, { job: 3 })).toBe('arguments.job: expected a string')
    expect(schemaError(schema, { limit: 3 })).toBe('arguments: "job" is required')
    expect(schemaError(schema, null)).toBe('arguments: expected an object')
    expect(schemaError({ type: 'array', items: { type: 'boolean' } }, [true, 1], 'x')).toBe('x[1]: expected a boolean')
  })
})
