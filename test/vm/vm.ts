// The kernel lab: boots Debian's own kernel in QEMU (TCG, no KVM needed) over the host's root file
// system and runs one command in it, for what this machine's kernel cannot do (sit, ip6tnl, kernel
// WireGuard, netem). See test/vm/README.md.
//
// The guest sees the host's / read-only through 9p, under a tmpfs overlay (writes vanish with the
// VM), with its own /proc, /sys, /dev and /run, so every tool, node_modules and this checkout are
// there at the same paths. It has no network device: its namespaces are its own. One host
// directory (KERNEL_LAB_OUT in the guest, the same path on both sides) is writable: the command
// leaves result files there; init.sh writes the exit status beside it.
//
// A QEMU process never outlives its run: SIGKILL by PID at the wall-clock limit, when this process
// exits, and (setpriv --pdeathsig) when this process dies without running its exit handlers.
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const CACHE = join(REPO, '.kernel-lab', 'current')
const QEMU = 'qemu-system-x86_64'
const CONSOLE_TAIL = 64 << 10
const OUT_FILE_MAX = 16 << 20
const GUEST_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
// Paths go on the kernel command line, which splits at spaces and knows no escapes.
const CMDLINE_PATH_RE = /^\/[A-Za-z0-9._/+-]+$/

interface Kernel {
  vmlinuz: string
  initramfs: string
  modules: string
}

export interface VmOptions {
  /** The command to run in the guest (PATH lookup as in `env`). */
  argv: string[]
  /** Working directory in the guest; default the repository. */
  cwd?: string
  /** Environment on top of PATH, HOME, LANG and KERNEL_LAB_OUT. */
  env?: Record<string, string>
  /** Wall-clock limit of the whole VM, boot included; default 10 minutes. */
  timeoutMs?: number
  memoryMiB?: number
  cpus?: number
  /** Console output as it arrives (kernel messages and the command's output). */
  onOutput?: (text: string) => void
}

export interface VmResult {
  /** The command's exit status; undefined when the VM ended without one (time limit, crash, panic). */
  status?: number
  timedOut: boolean
  /** The last 64 KiB of the console. */
  console: string
  /** The files the command left in KERNEL_LAB_OUT, by name. */
  files: Record<string, string>
  ms: number
}

function onPath(cmd: string): boolean {
  return (process.env.PATH ?? '').split(':').some((d) => d !== '' && existsSync(join(d, cmd)))
}

/** Why the kernel lab cannot run on this machine (a reason to skip its tests), or undefined. */
export function kernelLabUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (QEMU over the host root, network namespaces in the guest)'
  if (process.arch !== 'x64' || process.platform !== 'linux') return 'needs an x86-64 Linux host'
  if (!onPath(QEMU)) return `${QEMU} is not installed (sh test/lab/prepare.sh installs it)`
  return undefined
}

/** The prepared kernel; throws when test/vm/prepare-kernel.sh has not run. */
function preparedKernel(): Kernel {
  if (!existsSync(join(CACHE, 'ready')) || !existsSync(join(CACHE, 'initramfs.cpio'))) {
    throw new Error(`the kernel lab is not prepared (no ${CACHE}/ready): run sh test/lab/prepare.sh as root`)
  }
  const version = readlinkSync(join(REPO, '.kernel-lab', 'current'))
  return {
    vmlinuz: join(CACHE, 'vmlinuz'),
    initramfs: join(CACHE, 'initramfs.cpio'),
    modules: join(REPO, '.kernel-lab', version, 'root', 'lib', 'modules', version),
  }
}

const running = new Set<number>()
let exitHandler = false

function killQemu(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL')
  } catch {
    // already gone
  }
}

function readOut(dir: string): Record<string, string> {
  const files: Record<string, string> = {}
  for (const name of readdirSync(dir)) {
    const file = join(dir, name)
    const st = statSync(file)
    if (st.isFile() && st.size <= OUT_FILE_MAX) files[name] = readFileSync(file, 'utf8')
  }
  return files
}

function checkArgs(opts: VmOptions): void {
  const [cmd] = opts.argv
  if (!cmd || cmd.includes('=')) throw new Error(`bad guest command ${JSON.stringify(cmd)}`)
  // init.sh reads the arguments one per line.
  for (const a of opts.argv) if (a.includes('\n')) throw new Error(`guest arguments cannot contain newlines: ${JSON.stringify(a)}`)
  if (opts.cwd !== undefined && (!opts.cwd.startsWith('/') || opts.cwd.includes('\n'))) throw new Error(`bad guest cwd ${JSON.stringify(opts.cwd)}`)
  for (const [k, v] of Object.entries(opts.env ?? {})) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k) || v.includes('\n')) throw new Error(`bad guest environment variable ${k}`)
  }
}

/** Boots the kernel lab, runs opts.argv in it and powers it off. Rejects when it cannot boot at all (bad arguments, no prepared kernel, no QEMU). */
export async function runInVm(opts: VmOptions): Promise<VmResult> {
  checkArgs(opts)
  const kernel = preparedKernel()
  const share = mkdtempSync(join(tmpdir(), 'dualgate-vm-'))
  try {
    return await boot(kernel, share, opts)
  } finally {
    rmSync(share, { recursive: true, force: true })
  }
}

async function boot(kernel: Kernel, share: string, opts: VmOptions): Promise<VmResult> {
  for (const p of [share, kernel.modules]) if (!CMDLINE_PATH_RE.test(p)) throw new Error(`path unusable on the kernel command line: ${p}`)
  const out = join(share, 'out')
  mkdirSync(out)
  const env = { PATH: GUEST_PATH, HOME: '/root', LANG: 'C.UTF-8', ...opts.env, KERNEL_LAB_OUT: out }
  const envArgs = ['-i', '-C', opts.cwd ?? REPO, '--', ...Object.entries(env).map(([k, v]) => `${k}=${v}`)]
  writeFileSync(join(share, 'argv'), `${[...envArgs, ...opts.argv].join('\n')}\n`)

  const append = ['console=ttyS0', 'quiet', 'panic=-1', `dgshare=${share}`, `dgmodules=${kernel.modules}`].join(' ')
  const qemuArgs = [
    '-nodefaults', '-no-user-config', '-machine', 'pc', '-accel', 'tcg,tb-size=256', '-cpu', 'max',
    '-smp', String(opts.cpus ?? 2), '-m', String(opts.memoryMiB ?? 1536),
    '-display', 'none', '-serial', 'stdio', '-nic', 'none', '-no-reboot',
    '-kernel', kernel.vmlinuz, '-initrd', kernel.initramfs, '-append', append,
    '-virtfs', 'local,path=/,mount_tag=dgroot,security_model=none,readonly=on,multidevs=remap',
    '-virtfs', `local,path=${share},mount_tag=dgshare,security_model=none`,
  ]
  const t0 = Date.now()
  // setpriv execs QEMU: the PID is QEMU's.
  const child = spawn('setpriv', ['--pdeathsig', 'KILL', QEMU, ...qemuArgs], { stdio: ['ignore', 'pipe', 'pipe'] })
  const pid = child.pid
  if (pid === undefined) {
    const err = await new Promise<Error>((resolve) => child.once('error', resolve))
    throw new Error(`could not start ${QEMU}: ${err.message}`)
  }
  running.add(pid)
  if (!exitHandler) {
    exitHandler = true
    process.on('exit', () => running.forEach(killQemu))
  }
  let timedOut = false
  const timer = setTimeout(() => {
    timedOut = true
    killQemu(pid)
  }, opts.timeoutMs ?? 600_000)
  // Once reaped its PID may be reused: never signal it after 'exit'.
  child.once('exit', () => {
    clearTimeout(timer)
    running.delete(pid)
  })

  let consoleText = ''
  const onData = (chunk: string) => {
    const text = chunk.replaceAll('\r', '')
    consoleText = (consoleText + text).slice(-CONSOLE_TAIL)
    opts.onOutput?.(text)
  }
  child.stdout.setEncoding('utf8').on('data', onData)
  child.stderr.setEncoding('utf8').on('data', onData)
  await new Promise<void>((resolve) => child.once('close', () => resolve()))

  const statusFile = join(share, 'status')
  const statusText = existsSync(statusFile) ? readFileSync(statusFile, 'utf8').trim() : ''
  return {
    status: /^\d+$/.test(statusText) ? Number(statusText) : undefined,
    timedOut,
    console: consoleText,
    files: readOut(out),
    ms: Date.now() - t0,
  }
}
