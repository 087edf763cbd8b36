#!/usr/bin/env node
// install | uninstall: puts the built gateway on an OpenWrt or Debian system (or under --root DIR, a fake
// root for tests and image builds) from a declarative plan (lib/install-plan.ts), and takes it off again
// exactly, from the manifest install wrote. --dry-run prints every file and command instead.
import { existsSync } from 'node:fs'
import { lstat, readdir, readFile, rm } from 'node:fs/promises'
import path from 'node:path'
import { INSTALL_DIR, installPlan, runtimePackages, shippedFiles, type Lockfile } from '../lib/install/plan.ts'
import { applyPlan, emptyReport, readManifest, removeInstall, type InstallIo, type Report } from '../lib/install/apply.ts'
import { ROLES, type Role } from '../lib/core/config.ts'
import { defineJob, runMain, UsageError } from '../lib/core/job.ts'
import { ROOT } from '../lib/core/paths.ts'
import { detectPlatform, systemdRunning, type Platform } from '../lib/core/platform.ts'
import { removeDiagnoseFiles, teardownNetwork, type TeardownReport } from '../lib/install/teardown.ts'

export interface InstallResult extends Report {
  action: 'install' | 'uninstall'
  platform: Platform
  root: string
  dryRun: boolean
  /** Uninstall: what was running or configured in this network namespace, now gone. */
  network?: TeardownReport
  /** Uninstall without a manifest: nothing was installed there. */
  notInstalled?: boolean
  dataKept?: string
}

const WALK_LIMIT = 100_000

/** Regular files under `dir`, relative to `base` (links are not followed: a package's .bin is not shipped). */
async function walk(base: string, dir: string, out: string[]): Promise<void> {
  for (const name of await readdir(path.join(base, dir)).catch(() => [] as string[])) {
    if (out.length > WALK_LIMIT) throw new Error(`more than ${WALK_LIMIT} files under ${base}`)
    const rel = path.join(dir, name)
    const s = await lstat(path.join(base, rel))
    if (s.isDirectory()) await walk(base, rel, out)
    else if (s.isFile()) out.push(rel)
  }
}

async function sourceFiles(source: string): Promise<string[]> {
  if (!existsSync(path.join(source, 'dist/jobs'))) throw new Error(`no build in ${source}/dist: run \`npm run build\` first`)
  const files: string[] = ['package.json']
  await walk(source, 'dist', files)
  await walk(source, 'hooks', files)
  let packages: string[]
  try {
    packages = runtimePackages(JSON.parse(await readFile(path.join(source, 'package-lock.json'), 'utf8')) as Lockfile)
  } catch {
    // An installed tree has no lockfile; what it has is already just the run-time packages.
    packages = (await readdir(path.join(source, 'node_modules')).catch(() => [] as string[])).filter((n) => !n.startsWith('.')).map((n) => `node_modules/${n}`)
  }
  for (const p of packages) await walk(source, p, files)
  return shippedFiles(files, packages)
}

function parseRoles(value: string): Role[] {
  const roles = value.split(',').map((r) => r.trim())
  const bad = roles.find((r) => !(ROLES as readonly string[]).includes(r))
  if (bad !== undefined || roles.length === 0) throw new UsageError(`--role takes ${ROLES.join(', ')} or both as gateway,forwarder, not "${value}"`)
  return roles as Role[]
}

const job = defineJob({
  name: 'install',
  description: `Install the gateway (${INSTALL_DIR}, service, dnsmasq or hotplug hooks, /usr/bin/gateway-*) or uninstall it exactly.`,
  usage: '[install|uninstall] [--role gateway|forwarder|gateway,forwarder]',
  // --network: tear down the network side (this namespace) on a fake root too; on the live root it always is.
  // --role: what to install for; default the config's role.
  options: { root: { type: 'string' }, platform: { type: 'string' }, purge: { type: 'boolean' }, network: { type: 'boolean' }, role: { type: 'string' } },
  async run({ ctx }): Promise<InstallResult> {
    const [action = 'install', ...extra] = ctx.args
    if (action !== 'install' && action !== 'uninstall') throw new UsageError(`unknown action "${action}"; install or uninstall`)
    if (extra.length > 0) throw new UsageError(`unexpected argument "${extra[0]}"`)
    const choice = ctx.options.platform
    if (choice !== undefined && choice !== 'openwrt' && choice !== 'debian') throw new UsageError(`--platform takes openwrt or debian, not "${choice}"`)
    const root = path.resolve(typeof ctx.options.root === 'string' ? ctx.options.root : ctx.config.rootDir)
    if (!existsSync(root)) throw new UsageError(`--root ${root} does not exist`)
    const platform = detectPlatform(root, (choice as Platform | undefined) ?? ctx.config.platform)
    // A dry run's plan goes where the shell's does: stdout for people, stderr when stdout carries --json.
    const planTo = ctx.options.json ? process.stderr : process.stdout
    const io: InstallIo = { root, sh: ctx.sh, dryRun: ctx.dryRun, print: (line) => planTo.write(`${line}\n`) }
    const report = emptyReport()
    const result: InstallResult = { action, platform, root, dryRun: ctx.dryRun, ...report }

    if (action === 'install') {
      const roles = typeof ctx.options.role === 'string' ? parseRoles(ctx.options.role) : ctx.config.role
      if (!roles.includes('gateway') && platform !== 'debian') throw new UsageError('--role forwarder alone is for Debian (a VPS); on OpenWrt use --role gateway,forwarder')
      const steps = installPlan({ platform, files: await sourceFiles(ROOT), systemd: root === '/' && systemdRunning(), dnsmasqService: ctx.config.dnsmasqService, roles })
      await applyPlan(io, steps, ROOT, platform, report)
      if (!ctx.dryRun) ctx.log.info(`installed for ${platform} under ${root}: ${report.written.length} written, ${report.unchanged} unchanged`)
      return { ...result, ...report }
    }

    const manifest = await readManifest(root)
    await removeInstall(io, report)
    const config = { ...ctx.config, rootDir: root }
    report.removed.push(...await removeDiagnoseFiles(ctx.sh, config, new Set(manifest?.files.map((f) => f.path) ?? []), io.print))
    const network = root === '/' || ctx.options.network ? await teardownNetwork(ctx.sh, config) : undefined
    let dataKept: string | undefined = config.dataDir
    if (ctx.options.purge) {
      if (ctx.dryRun) io.print(`rm -r ${config.dataDir} ${config.runDir}`)
      else for (const dir of [config.dataDir, config.runDir]) await rm(dir, { recursive: true, force: true })
      dataKept = undefined
    }
    if (manifest && !ctx.dryRun) ctx.log.info(`uninstalled from ${root}: ${report.removed.length} removed, ${report.restored.length} restored`)
    return { ...result, ...report, network, notInstalled: !manifest, dataKept }
  },
  format(r: InstallResult) {
    const lines: string[] = []
    const list = (label: string, xs: string[]) => { if (xs.length > 0) lines.push(`${label} (${xs.length}):`, ...xs.slice(0, 12).map((x) => `  ${x}`), ...(xs.length > 12 ? [`  ... ${xs.length - 12} more`] : [])) }
    lines.push(`${r.action}${r.dryRun ? ' (dry run)' : ''}: ${r.platform} under ${r.root}${r.notInstalled ? ': no install found (nothing to remove)' : ''}`)
    list('written', r.written)
    if (r.unchanged) lines.push(`unchanged: ${r.unchanged}`)
    list('moved aside (restored at uninstall)', r.backedUp)
    list('kept', r.kept)
    list('removed', r.removed)
    list('restored', r.restored)
    list('commands', r.commands)
    list('skipped', r.skipped)
    list('FAILED', r.failed)
    if (r.network) {
      const n = r.network
      lines.push(`network: runner ${n.runner ? `stopped (pid ${n.runner})` : 'not running'}; ${n.clients.length} client sets stopped; ${n.macvlans.length} macvlans, ${n.tables.length} routing tables removed; nft table ${n.nft ? 'deleted' : 'absent'}`)
    }
    if (r.dataKept) lines.push(`data kept in ${r.dataKept} (--purge removes it)`)
    return lines.join('\n')
  },
  exitCode: (r: InstallResult) => (r.failed.length > 0 ? 1 : 0),
})

export default job
await runMain(job, import.meta.url)
