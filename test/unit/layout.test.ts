// The layout rule of shared/DESIGN.md: shared ground (lib/core, lib/addr, lib/net) never imports a
// capability folder, so a capability can be read, changed or removed without touching what lies below it.
import { readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'

const LIB = fileURLToPath(new URL('../../lib/', import.meta.url))
/** Shared ground, and what each part of it may import. */
const MAY_IMPORT: Record<string, string[]> = {
  addr: ['addr'],
  core: ['core', 'addr'],
  net: ['net', 'core', 'addr'],
}

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name)
    return e.isDirectory() ? sources(p) : e.name.endsWith('.ts') ? [p] : []
  })
}

/** The lib/ folders a module imports from, by its relative import specifiers. */
function importedFolders(file: string): string[] {
  const text = readFileSync(file, 'utf8')
  const specs = [...text.matchAll(/(?:from\s+|import\s*\(\s*|import\s+)['"](\.{1,2}\/[^'"]+)['"]/g)].map((m) => m[1])
  return specs.map((s) => path.relative(LIB, path.resolve(path.dirname(file), s)).split(path.sep)[0])
}

describe('layout', () => {
  it('lib/ holds folders only: every module has a room', () => {
    expect(readdirSync(LIB, { withFileTypes: true }).filter((e) => !e.isDirectory()).map((e) => e.name)).toEqual([])
  })

  for (const [folder, allowed] of Object.entries(MAY_IMPORT)) {
    it(`lib/${folder} imports only ${allowed.map((a) => `lib/${a}`).join(', ')}`, () => {
      const wrong = sources(path.join(LIB, folder)).flatMap((f) => importedFolders(f).filter((d) => !allowed.includes(d)).map((d) => `${path.relative(LIB, f)} imports lib/${d}`))
      expect(wrong).toEqual([])
    })
  }

  it('finds an import of a capability when there is one (the check can fail)', () => {
    const capability = sources(path.join(LIB, 'runner')).find((f) => f.endsWith('main.ts'))!
    expect(importedFolders(capability)).toEqual(expect.arrayContaining(['core', 'reach', 'nat64', 'clat']))
  })
})
