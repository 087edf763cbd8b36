// The jobs are the files in jobs/: `jobs/*.ts` beside lib/ in a checkout, `dist/jobs/*.js` beside dist/lib/
// when built. The runner only lists them; each is imported in its own child process, never in the runner.
import { readdirSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { JOB_NAME } from '../core/event.ts'

/** `.ts` when the runner itself runs from source (a TypeScript loader is present), `.js` when built. */
export const MODULE_EXT = path.extname(fileURLToPath(import.meta.url))

/** DUALGATE_JOBS_DIR (for tests: fixture jobs) or the jobs/ directory that ships with this runner. */
export function jobsDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.DUALGATE_JOBS_DIR ? path.resolve(env.DUALGATE_JOBS_DIR) : fileURLToPath(new URL('../../jobs', import.meta.url))
}

/**
 * Files in jobs/ that are commands, never the runner's jobs: install writes the system's files and services,
 * mcp serves an MCP client on its stdin. Neither is listed, scheduled, or started by an event or the API.
 */
const COMMANDS_ONLY = new Set(['install', 'mcp'])

/** Job name → module file, for the jobs the runner may run. */
export function discoverJobs(dir: string): Map<string, string> {
  const exts = MODULE_EXT === '.ts' ? ['.ts', '.js', '.mjs'] : ['.js', '.mjs']
  const jobs = new Map<string, string>()
  let names: string[]
  try {
    names = readdirSync(dir).sort()
  } catch {
    return jobs
  }
  for (const file of names) {
    if (file.endsWith('.d.ts') || file.includes('.test.')) continue
    const ext = path.extname(file)
    const name = file.slice(0, -ext.length)
    if (!exts.includes(ext) || !JOB_NAME.test(name) || COMMANDS_ONLY.has(name) || jobs.has(name)) continue
    jobs.set(name, path.join(dir, file))
  }
  return jobs
}
