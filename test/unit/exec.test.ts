import { mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { createSh } from '../../lib/core/exec.ts'

const dir = mkdtempSync(path.join(tmpdir(), 'dualgate-exec-'))
const started: number[] = []
afterAll(() => {
  for (const pid of started) try { process.kill(pid, 'SIGKILL') } catch { /* gone */ }
  rmSync(dir, { recursive: true, force: true })
})

describe('sh.daemon', () => {
  it('starts detached processes without keeping their log files open here', async () => {
    const sh = createSh({ dryRun: false })
    const fds = () => readdirSync('/proc/self/fd').length
    const before = fds()
    for (let i = 0; i < 3; i++) {
      const pid = await sh.daemon('sleep', ['30'], { logFile: path.join(dir, `d${i}.log`) })
      expect(pid).toBeGreaterThan(1)
      started.push(pid!)
    }
    expect(fds()).toBe(before)
  })

  it('prints instead of starting in a dry run', async () => {
    const lines: string[] = []
    const sh = createSh({ dryRun: true, print: (l) => lines.push(l) })
    expect(await sh.daemon('sleep', ['30'], { logFile: path.join(dir, 'dry.log') })).toBeUndefined()
    expect(lines).toEqual(['sleep 30 &'])
  })
})
