// JSON-RPC 2.0 as MCP uses it, one message per line: what a line is (request, notification, a response to
// us, or not a message at all), and the answers we write. Pure: the session (./session.ts) decides what to
// do with each, the transports (./transport.ts) move the lines.

/** The protocol versions this server speaks, newest first: those of the MCP specification's releases. */
export const PROTOCOL_VERSIONS = ['2025-11-25', '2025-06-18', '2025-03-26', '2024-11-05'] as const
export const LATEST_PROTOCOL_VERSION = PROTOCOL_VERSIONS[0]

/** The client's version when we speak it, else our latest (the client then decides whether to go on). */
export function negotiateVersion(requested: string): string {
  return (PROTOCOL_VERSIONS as readonly string[]).includes(requested) ? requested : LATEST_PROTOCOL_VERSION
}

export const PARSE_ERROR = -32700
export const INVALID_REQUEST = -32600
export const METHOD_NOT_FOUND = -32601
export const INVALID_PARAMS = -32602
export const INTERNAL_ERROR = -32603

/** MCP ids are strings or numbers, never null; a response echoes the request's id as it came. */
export type RequestId = string | number
export type Params = Record<string, unknown>

export type Incoming =
  | { kind: 'request'; id: RequestId; method: string; params: Params }
  | { kind: 'notification'; method: string; params: Params }
  /** Nothing to answer: a response to a request of ours (we send none), or a notification we cannot read. */
  | { kind: 'ignore' }
  /** Not a message we can take: answered with this error (id null when the id could not be read). */
  | { kind: 'invalid'; id: RequestId | null; code: number; message: string }

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)
const isId = (v: unknown): v is RequestId => typeof v === 'string' || (typeof v === 'number' && Number.isFinite(v))

/** One line from the client. Whitespace around it is allowed; an empty line is no message (undefined). */
export function parseLine(line: string): Incoming | undefined {
  if (line.trim() === '') return undefined
  let msg: unknown
  try {
    msg = JSON.parse(line)
  } catch {
    return { kind: 'invalid', id: null, code: PARSE_ERROR, message: 'parse error: the line is not JSON' }
  }
  if (Array.isArray(msg)) return { kind: 'invalid', id: null, code: INVALID_REQUEST, message: 'batches are not part of this protocol version: send one message per line' }
  if (!isObject(msg)) return { kind: 'invalid', id: null, code: INVALID_REQUEST, message: 'a message is a JSON object' }
  const hasId = 'id' in msg
  const id = hasId && isId(msg.id) ? msg.id : null
  if (msg.jsonrpc !== '2.0') return { kind: 'invalid', id, code: INVALID_REQUEST, message: 'jsonrpc must be "2.0"' }
  if (hasId && !isId(msg.id)) return { kind: 'invalid', id: null, code: INVALID_REQUEST, message: 'id must be a string or a number' }
  if (!('method' in msg)) {
    if (hasId && ('result' in msg || 'error' in msg)) return { kind: 'ignore' }
    return { kind: 'invalid', id, code: INVALID_REQUEST, message: 'a request needs a method' }
  }
  if (typeof msg.method !== 'string') return { kind: 'invalid', id, code: INVALID_REQUEST, message: 'method must be a string' }
  // A notification is never answered, not even to say its params are wrong.
  if ('params' in msg && !isObject(msg.params)) return hasId ? { kind: 'invalid', id, code: INVALID_PARAMS, message: 'params must be an object' } : { kind: 'ignore' }
  const params = (msg.params ?? {}) as Params
  return hasId ? { kind: 'request', id: id!, method: msg.method, params } : { kind: 'notification', method: msg.method, params }
}

export function resultLine(id: RequestId, result: unknown): string {
  return JSON.stringify({ jsonrpc: '2.0', id, result })
}

export function errorLine(id: RequestId | null, code: number, message: string): string {
  return JSON.stringify({ jsonrpc: '2.0', id, error: { code, message } })
}
