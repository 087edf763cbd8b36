#!/usr/bin/env node
// Checks the gateway end to end (links, addresses, upstream, kernel settings, dnsmasq and its hook, the
// store, nftables, macvlans, DHCP clients, runner, API, relay, tools) and, with --fix CHECK or --fix-all,
// repairs what it safely can, then checks again. Exit status 1 when a check still fails.
import { CHECK_IDS, failed, formatReport, selectFixes, type Check, type CheckId, type FixOutcome } from '../lib/diagnose/report.ts'
import { probe } from '../lib/diagnose/checks.ts'
import { createEnv, type DiagEnv } from '../lib/diagnose/env.ts'
import { defineJob, execute, runMain, UsageError, type JobContext } from '../lib/core/job.ts'
import { detectPlatform, type Platform } from '../lib/core/platform.ts'
import acquireLeases from './acquire-leases.ts'

export interface DiagnoseResult { ok: boolean; platform: Platform; checks: Check[]; fixes: FixOutcome[] }

async function runChecks(env: DiagEnv): Promise<Check[]> {
  const checks: Check[] = []
  for (const id of CHECK_IDS) checks.push((await probe(id, env)).check)
  return checks
}

function fixList(ctx: JobContext): string[] {
  const raw = ctx.options.fix as unknown
  return Array.isArray(raw) ? raw.map(String) : typeof raw === 'string' ? [raw] : []
}

const job = defineJob({
  name: 'diagnose',
  description: 'Check the gateway and, with --fix CHECK (repeatable, or a comma list) or --fix-all, repair it.',
  options: { fix: { type: 'string', multiple: true }, 'fix-all': { type: 'boolean' } },
  async run({ ctx }): Promise<DiagnoseResult> {
    if (ctx.args.length > 0) throw new UsageError(`unexpected argument "${ctx.args[0]}"`)
    const selected = selectFixes(fixList(ctx), !!ctx.options['fix-all'])
    if (typeof selected === 'string') throw new UsageError(selected)
    const platform = detectPlatform(ctx.config.rootDir, ctx.config.platform)
    // Through the job contract, so a repair waits for (and is waited for by) any other acquire-leases run.
    const acquire = async () => { await execute(acquireLeases, [], ctx) }
    const fresh = () => createEnv(ctx, platform, acquire)

    const first = await runChecks(fresh())
    const fixes: FixOutcome[] = []
    for (const id of selected as CheckId[]) {
      if (first.find((c) => c.id === id)?.status === 'pass') continue
      // Checked again right before fixing: an earlier fix may have repaired this one too (a re-acquired
      // device has its macvlan and its clients back).
      const now = await probe(id, fresh())
      if (!now.apply || !now.check.fix) continue
      if (ctx.dryRun) { fixes.push({ id, action: now.check.fix, status: 'planned' }); continue }
      if (ctx.interactive) process.stderr.write(`fixing ${id}: ${now.check.fix} ...\n`)
      try {
        await now.apply()
        fixes.push({ id, action: now.check.fix, status: 'applied' })
        ctx.log.info(`diagnose: fixed ${id}: ${now.check.fix}`)
      } catch (err) {
        fixes.push({ id, action: now.check.fix, status: 'failed', error: (err as Error).message })
        ctx.log.error(`diagnose: fixing ${id} failed: ${(err as Error).message}`)
      }
    }
    const checks = fixes.some((f) => f.status === 'applied') ? await runChecks(fresh()) : first
    for (const c of checks) if (c.status === 'fail' && ctx.trigger !== 'cli') ctx.log.warn(`diagnose: ${c.id}: ${c.reason}`)
    return { ok: !failed(checks), platform, checks, fixes }
  },
  format: (r: DiagnoseResult) => formatReport(r.checks, r.fixes),
  exitCode: (r: DiagnoseResult) => (r.ok ? 0 : 1),
})

export default job
await runMain(job, import.meta.url)
