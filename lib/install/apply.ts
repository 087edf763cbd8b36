// Applies an install plan (lib/install-plan.ts) under a root directory and keeps a manifest of what it did:
// every file with the hash it wrote, every link, directory, UCI section and undo command, and where a file
// that was in the way was put. Uninstall reads the manifest back: it removes exactly that and restores the
// rest, and does nothing the second time. Commands that act on running services only run on the live root.
import { existsSync } from 'node:fs'
import { chmod, copyFile, lstat, mkdir, readFile, readlink, rename, rm, rmdir, stat, symlink, unlink, writeFile } from 'node:fs/promises'
import path from 'node:path'
import type { Sh } from '../core/exec.ts'
import { BACKUP_DIR, MANIFEST, type Step } from './plan.ts'
import type { Platform } from '../core/platform.ts'
import { sha256 } from '../core/system-files.ts'

export interface Manifest {
  version: 1
  platform: Platform
  installedAt: string
  files: { path: string; sha256: string; backup?: string; config?: boolean }[]
  links: { path: string; target: string; backup?: string }[]
  /** Directories install created, to remove when empty again. */
  dirs: string[]
  uci: { config: string; section: string }[]
  undo: { argv: string[]; stage: 'before' | 'after' }[]
}

export interface InstallIo {
  root: string
  sh: Sh
  dryRun: boolean
  /** Dry-run lines: what would be done. */
  print(line: string): void
}

export interface Report {
  written: string[]
  unchanged: number
  kept: string[]
  backedUp: string[]
  removed: string[]
  restored: string[]
  commands: string[]
  skipped: string[]
  failed: string[]
}

export const emptyReport = (): Report => ({ written: [], unchanged: 0, kept: [], backedUp: [], removed: [], restored: [], commands: [], skipped: [], failed: [] })

const under = (io: InstallIo, p: string) => path.join(io.root, p)
const live = (io: InstallIo) => path.resolve(io.root) === '/'

async function exists(p: string): Promise<boolean> {
  try { await lstat(p); return true } catch { return false }
}

export async function readManifest(root: string): Promise<Manifest | undefined> {
  try {
    const m = JSON.parse(await readFile(path.join(root, MANIFEST), 'utf8')) as Manifest
    return m.version === 1 ? m : undefined
  } catch {
    return undefined
  }
}

/** Creates the directories above `file` that are missing, remembering them (system paths). */
async function ensureParent(io: InstallIo, file: string, created: Set<string>): Promise<void> {
  const missing: string[] = []
  for (let dir = path.dirname(file); dir !== '/' && !created.has(dir) && !(await exists(under(io, dir))); dir = path.dirname(dir)) missing.push(dir)
  if (missing.length === 0) return
  for (const d of missing) created.add(d)
  if (io.dryRun) io.print(`mkdir -p ${under(io, path.dirname(file))}`)
  else await mkdir(under(io, path.dirname(file)), { recursive: true })
}

/** Moves what is at `p` (file or link) into the backup directory; returns the backup's system path. */
async function moveAside(io: InstallIo, p: string, created: Set<string>): Promise<string> {
  const backup = `${BACKUP_DIR}/${p.replace(/^\/+/, '').replaceAll('/', '%')}`
  await ensureParent(io, `${backup}`, created)
  if (io.dryRun) { io.print(`mv ${under(io, p)} ${under(io, backup)}`); return backup }
  try {
    await rename(under(io, p), under(io, backup))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err
    const s = await lstat(under(io, p))
    if (s.isSymbolicLink()) await symlink(await readlink(under(io, p)), under(io, backup))
    else await copyFile(under(io, p), under(io, backup))
    await unlink(under(io, p))
  }
  return backup
}

async function moveBack(io: InstallIo, backup: string, p: string): Promise<void> {
  if (io.dryRun) { io.print(`mv ${under(io, backup)} ${under(io, p)}`); return }
  await mkdir(path.dirname(under(io, p)), { recursive: true })
  await rename(under(io, backup), under(io, p))
}

async function runCommand(io: InstallIo, argv: string[], report: Report): Promise<void> {
  const line = argv.join(' ')
  if (!live(io)) { report.skipped.push(`${line} (not the live root)`); return }
  if (argv[0].startsWith('/') && !existsSync(argv[0])) { report.skipped.push(`${line} (${argv[0]} is not installed)`); return }
  const r = await io.sh.apply(argv[0], argv.slice(1), { nothrow: true, timeoutMs: 120_000 })
  if (r.code === 0) report.commands.push(line)
  else report.failed.push(`${line}: exit ${r.code} ${r.stderr.trim().split('\n')[0] ?? ''}`)
}

function uciArgs(io: InstallIo, ...args: string[]): string[] {
  return live(io) ? args : ['-c', under(io, '/etc/config'), ...args]
}

/** Applies `steps` from `source` (the tree being installed); returns the new manifest and what happened. */
export async function applyPlan(io: InstallIo, steps: Step[], source: string, platform: Platform, report: Report): Promise<Manifest> {
  const old = await readManifest(io.root)
  const oldFiles = new Map((old?.files ?? []).map((f) => [f.path, f]))
  const oldLinks = new Map((old?.links ?? []).map((l) => [l.path, l]))
  const created = new Set<string>(old?.dirs ?? [])
  const m: Manifest = { version: 1, platform, installedAt: new Date().toISOString(), files: [], links: [], dirs: [], uci: [], undo: [] }

  for (const step of steps) {
    if (step.kind === 'copy' || step.kind === 'write') {
      const content = step.kind === 'copy' ? await readFile(path.join(source, step.from)) : Buffer.from(step.content)
      const mode = step.kind === 'copy' ? (await stat(path.join(source, step.from))).mode & 0o777 : step.mode
      const target = under(io, step.to)
      const mine = oldFiles.get(step.to)
      const present = await exists(target)
      if (step.kind === 'write' && step.ifAbsent && present) {
        if (mine) m.files.push(mine)
        else report.kept.push(step.to)
        continue
      }
      let backup = mine?.backup
      if (present && !mine) {
        backup = await moveAside(io, step.to, created)
        report.backedUp.push(step.to)
      }
      const hash = sha256(content)
      const same = present && mine && !io.dryRun && sha256(await readFile(target)) === hash && ((await stat(target)).mode & 0o777) === mode
      if (same) report.unchanged++
      else {
        await ensureParent(io, step.to, created)
        if (io.dryRun) io.print(`install -m ${mode.toString(8)} ${step.kind === 'copy' ? path.join(source, step.from) : '(generated)'} ${target}`)
        else {
          const tmp = `${target}.dualgate-new`
          await writeFile(tmp, content, { mode })
          await chmod(tmp, mode)
          await rename(tmp, target)
        }
        report.written.push(step.to)
      }
      m.files.push({ path: step.to, sha256: hash, ...(backup ? { backup } : {}), ...(step.kind === 'write' && step.ifAbsent ? { config: true } : {}) })
    } else if (step.kind === 'link') {
      const target = under(io, step.to)
      const mine = oldLinks.get(step.to)
      let backup = mine?.backup
      const current = await readlink(target).catch(() => undefined)
      if (current === step.target && mine) { report.unchanged++; m.links.push(mine); continue }
      if (await exists(target)) {
        if (mine) { if (io.dryRun) io.print(`rm ${target}`); else await unlink(target) }
        else { backup = await moveAside(io, step.to, created); report.backedUp.push(step.to) }
      }
      await ensureParent(io, step.to, created)
      if (io.dryRun) io.print(`ln -s ${step.target} ${target}`)
      else await symlink(step.target, target)
      report.written.push(step.to)
      m.links.push({ path: step.to, target: step.target, ...(backup ? { backup } : {}) })
    } else if (step.kind === 'uci') {
      const key = `${step.config}.${step.section}`
      const ours = old?.uci.some((u) => u.config === step.config && u.section === step.section)
      const got = io.dryRun ? { code: 1 } : await io.sh.query('uci', uciArgs(io, '-q', 'get', key), { nothrow: true })
      if (got.code === 0 && !ours) { report.kept.push(`uci ${key} (the admin's)`); continue }
      if (got.code !== 0) {
        const sets = [`${key}=${step.type}`, ...Object.entries(step.options).map(([k, v]) => `${key}.${k}=${v}`)]
        for (const s of sets) await io.sh.apply('uci', uciArgs(io, 'set', s))
        await io.sh.apply('uci', uciArgs(io, 'commit', step.config))
        report.written.push(`uci ${key}`)
      } else report.unchanged++
      m.uci.push({ config: step.config, section: step.section })
    } else {
      await runCommand(io, step.argv, report)
      if (step.undo) m.undo.push({ argv: step.undo, stage: step.undoStage ?? 'before' })
    }
  }

  // Files of an earlier install that this one no longer ships.
  const now = new Set([...m.files.map((f) => f.path), ...m.links.map((l) => l.path)])
  for (const f of old?.files ?? []) if (!now.has(f.path)) await removeFile(io, f, report)
  for (const l of old?.links ?? []) if (!now.has(l.path)) await removeLink(io, l, report)

  m.dirs = [...created].sort()
  if (io.dryRun) io.print(`write ${under(io, MANIFEST)}`)
  else {
    await mkdir(path.dirname(under(io, MANIFEST)), { recursive: true })
    await writeFile(under(io, MANIFEST), `${JSON.stringify(m, null, 1)}\n`)
  }
  return m
}

async function removeFile(io: InstallIo, f: Manifest['files'][number], report: Report): Promise<void> {
  const target = under(io, f.path)
  if (await exists(target)) {
    if (f.config && sha256(await readFile(target)) !== f.sha256) { report.kept.push(`${f.path} (changed since install)`); return }
    if (io.dryRun) io.print(`rm ${target}`)
    else await unlink(target)
    report.removed.push(f.path)
  }
  if (f.backup && await exists(under(io, f.backup))) {
    await moveBack(io, f.backup, f.path)
    report.restored.push(f.path)
  }
}

async function removeLink(io: InstallIo, l: Manifest['links'][number], report: Report): Promise<void> {
  const target = under(io, l.path)
  if ((await readlink(target).catch(() => undefined)) === l.target) {
    if (io.dryRun) io.print(`rm ${target}`)
    else await unlink(target)
    report.removed.push(l.path)
  }
  if (l.backup && await exists(under(io, l.backup))) {
    await moveBack(io, l.backup, l.path)
    report.restored.push(l.path)
  }
}

/** Undoes an install from its manifest. Without a manifest there is nothing to undo. */
export async function removeInstall(io: InstallIo, report: Report): Promise<Manifest | undefined> {
  const m = await readManifest(io.root)
  if (!m) return undefined
  for (const u of [...m.undo].reverse()) if (u.stage === 'before') await runCommand(io, u.argv, report)
  for (const u of m.uci) {
    const key = `${u.config}.${u.section}`
    const r = await io.sh.apply('uci', uciArgs(io, '-q', 'delete', key), { nothrow: true })
    if (r.code === 0) {
      await io.sh.apply('uci', uciArgs(io, 'commit', u.config), { nothrow: true })
      report.removed.push(`uci ${key}`)
    }
  }
  for (const f of m.files) await removeFile(io, f, report)
  for (const l of m.links) await removeLink(io, l, report)
  if (io.dryRun) io.print(`rm ${under(io, MANIFEST)}`)
  else await rm(under(io, MANIFEST), { force: true })
  // Deepest first; a directory that still holds something not ours stays.
  for (const d of [...m.dirs].sort((a, b) => b.length - a.length)) {
    if (io.dryRun) { io.print(`rmdir ${under(io, d)}`); continue }
    await rmdir(under(io, d)).catch(() => {})
  }
  for (const u of m.undo) if (u.stage === 'after') await runCommand(io, u.argv, report)
  return m
}
