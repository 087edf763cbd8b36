#!/usr/bin/env node
// Small network services for the lab, run inside its namespaces. Plain JavaScript so it starts in
// ~70 ms without a TypeScript loader.
//
//   node services.mjs upstream --log FILE [--ready FILE]
//       HTTP on [::]:80 (dual-stack; 0.0.0.0:80 when the namespace has no IPv6) answering
//       "you are <peer address>\n".
//   node services.mjs device --name NAME --log FILE [--ready FILE]
//       IPv4 only: HTTP on 0.0.0.0:80 answering "device <name> peer <peer address>\n",
//       TCP echo on 0.0.0.0:23, UDP echo on 0.0.0.0:7.
//   node services.mjs home --addrs A,B,... --log FILE [--ready FILE]
//       Dual-stack, for the forwarder lab's home server: HTTP on [::]:80 answering
//       "home <local address> peer <peer address>\n", TCP echo on [::]:23, and a UDP echo on port 7 of
//       each address in --addrs (one socket each, so every datagram's local address is known). Its log
//       lines carry the local address too: "<proto> <peer> <local>".
//
// Every peer is appended to the --log file as one line "<proto> <address>" (proto: http, tcp, udp),
// with IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) written as plain IPv4.
// Once every listener is up, the --ready file is created (the lab polls for it).
import { appendFileSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { createServer as createTcpServer } from 'node:net'
import { createSocket } from 'node:dgram'

function parseArgs(argv) {
  const [mode, ...rest] = argv
  const opts = { mode }
  for (let i = 0; i < rest.length; i += 2) {
    const key = rest[i]
    const value = rest[i + 1]
    if (!key?.startsWith('--') || value === undefined) throw new Error(`bad argument: ${key}`)
    opts[key.slice(2)] = value
  }
  return opts
}

function plain(address) {
  if (!address) return 'unknown'
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address
}

const opts = parseArgs(process.argv.slice(2))
if (!opts.log) throw new Error('--log FILE is required')

function logPeer(proto, address, local) {
  try {
    appendFileSync(opts.log, `${proto} ${plain(address)}${local ? ` ${plain(local)}` : ''}\n`)
  } catch {
    // the lab dir may be going away during teardown
  }
}

function listen(server, port, host) {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen({ port, host, ipv6Only: false }, () => {
      server.off('error', reject)
      resolve()
    })
  })
}

function http(answer) {
  return createServer((req, res) => {
    const peer = plain(req.socket.remoteAddress)
    logPeer('http', peer)
    const body = answer(peer)
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body), connection: 'close' })
    res.end(body)
  })
}

async function upstream() {
  const server = http((peer) => `you are ${peer}\n`)
  try {
    await listen(server, 80, '::')
  } catch (err) {
    if (err.code !== 'EAFNOSUPPORT' && err.code !== 'EADDRNOTAVAIL') throw err
    await listen(server, 80, '0.0.0.0')
  }
}

async function device() {
  const name = opts.name
  if (!name) throw new Error('--name NAME is required')
  await listen(http((peer) => `device ${name} peer ${peer}\n`), 80, '0.0.0.0')

  const echo = createTcpServer((socket) => {
    logPeer('tcp', socket.remoteAddress)
    socket.on('error', () => socket.destroy())
    // pipe() keeps backpressure and half-close: the peer's FIN ends our side after the data.
    socket.pipe(socket)
  })
  await listen(echo, 23, '0.0.0.0')

  const udp = createSocket('udp4')
  udp.on('message', (msg, rinfo) => {
    logPeer('udp', rinfo.address)
    udp.send(msg, rinfo.port, rinfo.address)
  })
  await new Promise((resolve, reject) => {
    udp.once('error', reject)
    udp.bind(7, '0.0.0.0', () => {
      udp.off('error', reject)
      resolve()
    })
  })
}

async function home() {
  const addrs = (opts.addrs ?? '').split(',').filter(Boolean)
  if (addrs.length === 0) throw new Error('--addrs A,B,... is required')
  const web = createServer((req, res) => {
    const peer = plain(req.socket.remoteAddress)
    const local = plain(req.socket.localAddress)
    logPeer('http', peer, local)
    const body = `home ${local} peer ${peer}\n`
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body), connection: 'close' })
    res.end(body)
  })
  await listen(web, 80, '::')
  const echo = createTcpServer((socket) => {
    logPeer('tcp', socket.remoteAddress, socket.localAddress)
    socket.on('error', () => socket.destroy())
    socket.pipe(socket)
  })
  await listen(echo, 23, '::')
  for (const address of addrs) {
    const udp = createSocket(address.includes(':') ? 'udp6' : 'udp4')
    udp.on('message', (msg, rinfo) => {
      logPeer('udp', rinfo.address, address)
      udp.send(msg, rinfo.port, rinfo.address)
    })
    await new Promise((resolve, reject) => {
      udp.once('error', reject)
      udp.bind(7, address, () => {
        udp.off('error', reject)
        resolve()
      })
    })
  }
}

const modes = { upstream, device, home }
const run = modes[opts.mode]
if (!run) throw new Error(`unknown mode ${opts.mode}: one of ${Object.keys(modes).join(', ')}`)
await run()
if (opts.ready) writeFileSync(opts.ready, `${process.pid}\n`)
process.stdout.write(`${opts.mode} ready pid ${process.pid}\n`)
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0))
