import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { openFileLimit } from '../../lib/core/limits.ts'

describe('openFileLimit', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'dg-limits-'))
  const file = (text: string) => { const p = path.join(dir, String(Math.random())); writeFileSync(p, text); return p }
  const header = 'Limit                     Soft Limit           Hard Limit           Units     \n'

  it('reads the soft limit on open files', () => {
    expect(openFileLimit(file(`${header}Max cpu time              unlimited            unlimited            seconds   \nMax open files            1024                 524288               files     \n`))).toBe(1024)
    expect(openFileLimit(file(`${header}Max open files            unlimited            unlimited            files     \n`))).toBe(Number.POSITIVE_INFINITY)
  })

  it('is undefined where it cannot tell', () => {
    expect(openFileLimit(path.join(dir, 'absent'))).toBeUndefined()
    expect(openFileLimit(file(header))).toBeUndefined()
  })

  it('reads this process', () => {
    expect(openFileLimit()).toBeGreaterThan(0)
  })
})
