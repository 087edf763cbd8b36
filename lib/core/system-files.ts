// Changing a system file the careful way: the old content is copied to a backup directory first (named after
// the file's path and the time), the new content is written to a temp file and renamed into place, and a
// file that already has the wanted content is left alone, so a repeated change is a no-op.
import { createHash } from 'node:crypto'
import { chmod, copyFile, mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import path from 'node:path'

export function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex')
}

/** `/etc/dnsmasq.d/x.conf` -> `etc%dnsmasq.d%x.conf.<stamp>`: flat, unique, and still readable. */
export function backupName(file: string, now = new Date()): string {
  return `${file.replace(/^\/+/, '').replaceAll('/', '%')}.${now.toISOString().replace(/[:.]/g, '-')}`
}

async function readOrUndefined(file: string): Promise<Buffer | undefined> {
  try {
    return await readFile(file)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
}

export interface WriteResult { changed: boolean; backup?: string }

/** Makes `file` hold `content`; an existing different file is first copied into `backupDir`. */
export async function writeSystemFile(file: string, content: string, backupDir: string, mode = 0o644): Promise<WriteResult> {
  const old = await readOrUndefined(file)
  if (old !== undefined && old.equals(Buffer.from(content))) return { changed: false }
  let backup: string | undefined
  if (old !== undefined) {
    await mkdir(backupDir, { recursive: true })
    backup = path.join(backupDir, backupName(file))
    await copyFile(file, backup)
  }
  await mkdir(path.dirname(file), { recursive: true })
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.dualgate-${process.pid}`)
  await writeFile(tmp, content, { mode })
  await chmod(tmp, mode)
  await rename(tmp, file)
  return { changed: true, backup }
}

/** Where the copies of system files go before dualgate changes them (diagnose --fix, the installer). */
export function systemBackupDir(dataDir: string): string {
  return path.join(dataDir, 'backups', 'system')
}
