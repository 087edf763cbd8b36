// WireGuard links: the kernel's module, or wireguard-go over TUN where the kernel has none; their settings
// through `wg`, private keys never on a command line. Parsing and comparison are separate and pure.
import { createPrivateKey, createPublicKey } from 'node:crypto'
import { existsSync } from 'node:fs'
import { chmod, mkdir, readFile, rm } from 'node:fs/promises'
import { connect } from 'node:net'
import path from 'node:path'
import type { Sh } from '../core/exec.ts'
import { replaceFile } from '../core/safe-file.ts'

export interface WgPeerState {
  publicKey: string
  presharedKey?: string
  endpoint?: string
  allowedIps: string[]
  /** Seconds since the epoch; 0: never. */
  latestHandshake: number
  rxBytes: number
  txBytes: number
  persistentKeepalive: number
}

/** `wg show IF dump` without the private key, which is dropped as it is read. */
export interface WgState {
  publicKey: string
  listenPort: number
  peers: WgPeerState[]
}

const TUN_DEVICE = '/dev/net/tun'
const WG_SOCKET_DIR = '/var/run/wireguard'

const num = (v: string | undefined) => (v && /^\d+$/.test(v) ? Number(v) : 0)

export function parseWgDump(text: string): WgState | undefined {
  const [first, ...rest] = text.trim().split('\n')
  const head = first?.split('\t')
  if (!head || head.length < 4) return undefined
  return {
    publicKey: head[1],
    listenPort: num(head[2]),
    peers: rest.filter(Boolean).map((line) => {
      const f = line.split('\t')
      return {
        publicKey: f[0],
        presharedKey: f[1] && f[1] !== '(none)' ? f[1] : undefined,
        endpoint: f[2] && f[2] !== '(none)' ? f[2] : undefined,
        allowedIps: f[3] && f[3] !== '(none)' ? f[3].split(',') : [],
        latestHandshake: num(f[4]),
        rxBytes: num(f[5]),
        txBytes: num(f[6]),
        persistentKeepalive: num(f[7]),
      }
    }),
  }
}

/** The public key of a base64 X25519 private key, as `wg pubkey` prints it (computed here: no key on a pipe). */
export function wgPublicKey(privateKey: string): string {
  const pkcs8 = Buffer.concat([Buffer.from('302e020100300506032b656e04220420', 'hex'), Buffer.from(privateKey, 'base64')])
  const jwk = createPublicKey(createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' })).export({ format: 'jwk' })
  return Buffer.from(jwk.x ?? '', 'base64url').toString('base64')
}

export async function wgState(sh: Sh, ifname: string): Promise<WgState | undefined> {
  const r = await sh.query('wg', ['show', ifname, 'dump'], { nothrow: true })
  return r.code === 0 ? parseWgDump(r.stdout) : undefined
}

/** Whether this kernel has WireGuard: loaded, or a module modprobe can load. */
export async function kernelHasWireguard(sh: Sh): Promise<boolean> {
  if (existsSync('/sys/module/wireguard')) return true
  return (await sh.query('modprobe', ['--dry-run', '--quiet', 'wireguard'], { nothrow: true })).code === 0
}

/** Creates a kernel WireGuard link; false when the kernel refused it. */
export async function addKernelWg(sh: Sh, ifname: string): Promise<boolean> {
  const r = await sh.apply('ip', ['link', 'add', 'dev', ifname, 'type', 'wireguard'], { nothrow: true })
  return r.code === 0
}

/** The TUN device wireguard-go needs: loads the driver when the device node is missing (no udev did it). */
export async function ensureTun(sh: Sh): Promise<boolean> {
  if (existsSync(TUN_DEVICE)) return true
  await sh.apply('modprobe', ['tun'], { nothrow: true })
  return sh.dryRun || existsSync(TUN_DEVICE)
}

/**
 * Whether a wireguard-go of this name is already listening: their control sockets live in one directory
 * for every network namespace of the host, so a name in use elsewhere would answer `wg` for ours.
 */
export function wireguardGoNameTaken(ifname: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(path.join(WG_SOCKET_DIR, `${ifname}.sock`))
    socket.once('connect', () => {
      socket.destroy()
      resolve(true)
    })
    socket.once('error', () => resolve(false))
  })
}

/** Starts wireguard-go in the foreground of a detached process of its own (so its pid is ours to watch). */
export async function startWireguardGo(sh: Sh, ifname: string, logFile: string): Promise<number | undefined> {
  return sh.daemon('wireguard-go', ['--foreground', ifname], { logFile, env: { ...process.env, LOG_LEVEL: 'error' } })
}

/**
 * Replaces the link's keys and peers (`wg syncconf` keeps sessions of peers that stay). wg takes them from a
 * file only: /dev/stdin fails on the socket Node gives a child, so they go to a 0600 file in `secretDir`
 * (a 0700 directory of root's on tmpfs) for the length of the call, as wg-quick hands them over a pipe.
 */
export async function wgSyncconf(sh: Sh, ifname: string, text: string, secretDir: string): Promise<void> {
  const file = path.join(secretDir, `${ifname}.conf`)
  if (sh.dryRun) {
    await sh.apply('wg', ['syncconf', ifname, file])
    return
  }
  await mkdir(secretDir, { recursive: true, mode: 0o700 })
  await chmod(secretDir, 0o700)
  await replaceFile(file, text, 0o600)
  try {
    await sh.apply('wg', ['syncconf', ifname, file])
  } finally {
    await rm(file, { force: true })
  }
}

/** Whether `pid` is still a wireguard-go serving `ifname` (after a reboot the number is someone else's). */
export async function isWireguardGo(pid: number, ifname: string): Promise<boolean> {
  const argv = await readFile(`/proc/${pid}/cmdline`, 'utf8').then((t) => t.split('\0'), (): string[] => [])
  return argv.some((a) => a.endsWith('wireguard-go')) && argv.includes(ifname)
}

/** wireguard-go creates the TUN first and its control socket (what `wg` talks to) a moment later: waits for it, bounded. */
export async function waitForWireguardGo(sh: Sh, ifname: string, timeoutMs = 5000): Promise<boolean> {
  const until = Date.now() + timeoutMs
  while (Date.now() < until) {
    if (await wgState(sh, ifname)) return true
    await new Promise((r) => setTimeout(r, 100))
  }
  return false
}
