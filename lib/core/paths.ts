// Where the project's own files are, from source (lib/) and from the build (dist/lib/) alike.
import { existsSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

function findRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url))
  for (let i = 0; i < 5; i++) {
    if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(dir, 'hooks'))) return dir
    dir = path.dirname(dir)
  }
  throw new Error('dualgate: cannot find the project root (package.json beside hooks/)')
}

export const ROOT = findRoot()
export const HOOKS_DIR = path.join(ROOT, 'hooks')

/** The first file called `name` in the directories of `searchPath` ($PATH by default). */
export function findInPath(name: string, searchPath = process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'): string | undefined {
  for (const dir of searchPath.split(':').filter(Boolean)) {
    const file = path.join(dir, name)
    if (existsSync(file)) return file
  }
  return undefined
}
