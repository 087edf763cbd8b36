// Checks of the host itself: clock, Node, tools, disk, the store and its directory.
import { existsSync } from 'node:fs'
import { access, chmod, chown, constants, readFile, rename, stat, statfs } from 'node:fs/promises'
import path from 'node:path'
import { findInPath } from '../core/paths.ts'
import { ownershipProblem, trustedOwners } from '../core/safe-file.ts'
import { openStore } from '../core/store.ts'
import { sha256 } from '../core/system-files.ts'
import type { CheckFn, DiagEnv, Probe } from './env.ts'
import { checkClock, checkDisk, checkNode, fail, pass, warn } from './report.ts'

export const clock: CheckFn = async () => ({ check: checkClock(Date.now()) })

export const node: CheckFn = async () => ({ check: checkNode(process.versions.node) })

const TOOLS: { any: string[]; args: string[]; pkg: string; when?: (env: DiagEnv) => boolean }[] = [
  { any: ['ip'], args: ['-V'], pkg: 'iproute2 / ip-full' },
  { any: ['nft'], args: ['--version'], pkg: 'nftables' },
  { any: ['udhcpc'], args: ['--help'], pkg: 'udhcpc (busybox)' },
  { any: ['odhcp6c', 'dhclient'], args: ['--version'], pkg: 'odhcp6c (OpenWrt) or isc-dhcp-client (Debian)' },
  { any: ['arping'], args: ['--help'], pkg: 'arping' },
  { any: ['rdisc6'], args: ['-V'], pkg: 'ndisc6' },
  { any: ['tayga'], args: ['--help'], pkg: 'tayga', when: (env) => env.ctx.config.nat64 || env.ctx.config.clat },
]

export const tools: CheckFn = async (env) => {
  const found: string[] = []
  const missing: string[] = []
  for (const t of TOOLS) {
    if (t.when && !t.when(env)) continue
    const name = t.any.find((n) => findInPath(n))
    if (!name) { missing.push(`${t.any.join(' or ')} (${t.pkg})`); continue }
    const r = await env.ctx.sh.query(name, name === 'odhcp6c' ? ['-h'] : t.args, { nothrow: true, timeoutMs: 3000 })
    const version = /(\d+\.\d+(?:\.\d+)?(?:-P\d+)?)/.exec(`${r.stdout}\n${r.stderr}`)?.[1]
    found.push(version ? `${name} ${version}` : name)
  }
  if (missing.length > 0) return { check: fail('tools', `missing: ${missing.join(', ')}; found ${found.join(', ') || 'none'}`) }
  return { check: pass('tools', found.join(', ')) }
}

export const disk: CheckFn = async (env) => {
  let dir = env.ctx.config.dataDir
  for (let i = 0; i < 32 && !existsSync(dir); i++) dir = path.dirname(dir)
  const s = await statfs(dir)
  return { check: checkDisk(dir, s.bavail * s.bsize, s.blocks * s.bsize) }
}

/**
 * The data directory holds the store, the spool and the logs that root acts on: anyone else who can write
 * there could plant a link or an event. Undefined when it is fine (or not there yet: it is created 0700).
 */
async function dataDirProbe(dir: string): Promise<Probe | undefined> {
  const st = await stat(dir).catch(() => undefined)
  const problem = st && ownershipProblem(st, trustedOwners())
  if (!st || !problem) return undefined
  const [uid, gid] = [process.geteuid?.() ?? 0, process.getegid?.() ?? 0]
  const chownFirst = !trustedOwners().includes(st.uid)
  return {
    check: fail('store', `data directory ${dir} is ${problem}`, `${chownFirst ? `chown ${uid}:${gid} ${dir}; ` : ''}chmod 700 ${dir}`),
    async apply() {
      if (chownFirst) await chown(dir, uid, gid)
      await chmod(dir, 0o700)
    },
  }
}

export const store: CheckFn = async (env) => {
  const { config } = env.ctx
  const dirProbe = await dataDirProbe(config.dataDir)
  if (dirProbe) return dirProbe
  const view = await env.store()
  if (view.error) {
    const aside = `${view.file}.corrupt-${sha256(await readFile(view.file).catch(() => Buffer.alloc(0))).slice(0, 8)}`
    const newest = view.backups[0]
    const fix = newest ? `restore ${newest} (the bad file is kept as ${path.basename(aside)})` : `move the bad file to ${path.basename(aside)} and start with an empty store`
    return {
      check: fail('store', `${view.file} is unreadable: ${view.error}`, fix),
      async apply() {
        if (!newest) await rename(view.file, aside)
        // The store's own repair: under its lock, the bad file copied aside, the newest valid backup restored.
        const s = openStore({ dataDir: config.dataDir, backupCount: config.backupCount, backupInterval: config.backupInterval, onError: (m) => env.ctx.log.warn(m) })
        await s.update(() => undefined)
      },
    }
  }
  if (view.missing) return { check: pass('store', `no store yet at ${view.file}: the first job creates it`) }
  try {
    await access(config.dataDir, constants.W_OK)
    await access(view.file, constants.W_OK)
  } catch (err) {
    return { check: fail('store', `not writable: ${(err as Error).message}`) }
  }
  const devices = Object.keys(view.data?.devices ?? {}).length
  if (config.backupCount === 0) return { check: pass('store', `valid (${devices} devices); backups disabled (backupCount 0)`) }
  if (view.backups.length === 0) return { check: warn('store', `valid (${devices} devices) but no backup yet: the next write makes one`) }
  return { check: pass('store', `valid and writable (${devices} devices), ${view.backups.length} valid backups`) }
}
