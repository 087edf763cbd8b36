// Moving MCP lines: newline-delimited JSON over a byte stream (stdin/stdout, or one socket connection), with a
// bound on a line's length enforced while reading, and the runner's unix socket: root's, mode 0600 from the
// moment it can be reached, a persistent session per connection, at most MAX_CONNECTIONS at once.
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, renameSync, rmSync } from 'node:fs'
import { createServer, type Server, type Socket } from 'node:net'
import path from 'node:path'
import { StringDecoder } from 'node:string_decoder'
import type { Backend } from './backend.ts'
import { errorLine, INVALID_REQUEST } from './protocol.ts'
import { createSession, type Session } from './session.ts'

/** The longest line taken from a client; the longest tool call is a few hundred bytes. */
export const MAX_LINE_BYTES = 1 << 20
/** Clients connected to the socket at once; more are closed as they connect. */
export const MAX_CONNECTIONS = 16

/**
 * Splits a stream's chunks into lines. A line longer than MAX_LINE_BYTES is not kept: it is reported once
 * (`tooLong`) and what is left of it, up to its newline, is skipped.
 */
export function lineSplitter(onLine: (line: string) => void, tooLong: () => void): (chunk: Buffer) => void {
  const decoder = new StringDecoder('utf8')
  let buffered = ''
  let skipping = false
  return (chunk) => {
    const parts = decoder.write(chunk).split('\n')
    const last = parts.pop()!
    for (const part of parts) {
      if (skipping) skipping = false
      else if (Buffer.byteLength(buffered) + Buffer.byteLength(part) > MAX_LINE_BYTES) tooLong()
      else onLine((buffered + part).replace(/\r$/, ''))
      buffered = ''
    }
    if (skipping) return
    buffered += last
    if (Buffer.byteLength(buffered) > MAX_LINE_BYTES) {
      buffered = ''
      skipping = true
      tooLong()
    }
  }
}

const tooLongLine = () => errorLine(null, INVALID_REQUEST, `line longer than ${MAX_LINE_BYTES} bytes: skipped`)

/** A session over a readable and a writable byte stream (the caller ends both). */
export function serveStreams(o: { input: NodeJS.ReadableStream; write(text: string): void; backend: Backend; version: string; log?(m: string): void }): Session {
  const session = createSession({ backend: o.backend, version: o.version, log: o.log, send: (line) => o.write(`${line}\n`) })
  const split = lineSplitter((line) => session.receive(line), () => o.write(`${tooLongLine()}\n`))
  o.input.on('data', (chunk: Buffer | string) => split(typeof chunk === 'string' ? Buffer.from(chunk) : chunk))
  return session
}

export interface McpSocket {
  path: string
  connections(): number
  close(): Promise<void>
}

/**
 * The directory the socket goes in must be ours and writable by nobody else, or someone could put their
 * own socket in its place.
 */
function checkDirectory(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o755 })
  const st = lstatSync(dir)
  if (!st.isDirectory()) throw new Error(`${dir} is not a directory`)
  if (st.uid !== process.getuid!()) throw new Error(`${dir} belongs to uid ${st.uid}, not to this process (uid ${process.getuid!()})`)
  if (st.mode & 0o022) throw new Error(`${dir} is writable by others than its owner (mode ${(st.mode & 0o777).toString(8)})`)
}

/**
 * Listens on `socketPath`: bound first inside a fresh 0700 directory beside it, made 0600 there, then renamed
 * into place (replacing a stale socket atomically), so no one but us can ever connect while its mode is wider.
 */
export async function listenMcpSocket(o: { path: string; backend(): Backend; version: string; log(m: string): void; maxConnections?: number }): Promise<McpSocket> {
  const dir = path.dirname(o.path)
  checkDirectory(dir)
  const sessions = new Map<Socket, Session>()
  // Half-open: a client may end its side (socat does at the end of its input) and still read the answers.
  const server: Server = createServer({ allowHalfOpen: true }, (socket) => {
    const session = createSession({
      backend: o.backend(),
      version: o.version,
      log: o.log,
      send: (line) => { if (!socket.destroyed) socket.write(`${line}\n`) },
    })
    sessions.set(socket, session)
    const split = lineSplitter((line) => session.receive(line), () => socket.write(`${tooLongLine()}\n`))
    socket.on('data', split)
    socket.on('error', () => {})
    // A client that ends its side still gets the answers to what it asked, then the connection ends.
    socket.on('end', () => void session.idle().then(() => socket.end()))
    socket.on('close', () => {
      session.close()
      sessions.delete(socket)
    })
  })
  server.maxConnections = o.maxConnections ?? MAX_CONNECTIONS
  let ino = 0
  const staging = mkdtempSync(path.join(dir, '.mcp-'))
  try {
    const bound = path.join(staging, 's')
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(bound, () => {
        server.off('error', reject)
        resolve()
      })
    })
    chmodSync(bound, 0o600)
    renameSync(bound, o.path)
    ino = lstatSync(o.path).ino
  } catch (err) {
    server.close()
    throw err
  } finally {
    rmSync(staging, { recursive: true, force: true })
  }
  server.on('error', (err) => o.log(`mcp socket ${o.path}: ${err.message}`))
  return {
    path: o.path,
    connections: () => sessions.size,
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()))
      for (const [socket, session] of sessions) {
        session.close()
        socket.destroy()
      }
      await closed
      // Only ours: another runner may have put its own socket there since.
      try {
        if (lstatSync(o.path).ino === ino) rmSync(o.path, { force: true })
      } catch { /* already gone */ }
    },
  }
}
