// Files that root reads from places others may reach (dnsmasq's lease file, the DHCP client records) and
// files it replaces there (the store). Reading never follows a symbolic link at the path, never blocks on a
// FIFO or a device, and takes only a regular file of bounded size that root (or a named service user, or
// this process's own user) owns and nobody else can write. Writing goes through a temp file created
// exclusively, so a link planted at the temp path is never written through.
import type { Stats } from 'node:fs'
import { constants } from 'node:fs'
import { open, readFile, rename, unlink } from 'node:fs/promises'
import path from 'node:path'

export type FileRead = { text: string } | { missing: true } | { refused: string }

const READ_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY
const CHUNK = 64 * 1024

/** Root and the user this process runs as (the same on a router; a checkout or a test may run as another user). */
export function trustedOwners(extra: number[] = []): number[] {
  return [...new Set([0, process.geteuid?.() ?? 0, ...extra])]
}

/** Why a file or directory with these attributes is not under our control, or undefined when it is. */
export function ownershipProblem(st: Pick<Stats, 'uid' | 'mode'>, owners: number[]): string | undefined {
  if (!owners.includes(st.uid)) return `owned by uid ${st.uid}, not by ${owners.map((u) => `uid ${u}`).join(' or ')}`
  if (st.mode & 0o022) return `writable by group or others (mode ${(st.mode & 0o777).toString(8)})`
  return undefined
}

function kind(st: Stats): string {
  if (st.isFIFO()) return 'a FIFO'
  if (st.isDirectory()) return 'a directory'
  if (st.isSocket()) return 'a socket'
  if (st.isCharacterDevice() || st.isBlockDevice()) return 'a device'
  return 'of another kind'
}

/**
 * `file`'s text, `missing`, or `refused` with the reason (the content is never part of it). `owners` are the
 * uids that may own it (trustedOwners()); a file with more than one link is refused too, since a hard link
 * planted beside it could name a file of root's that we would then read and log. A `secret` (a key) must
 * not be readable by others either.
 */
export async function readOwnedFile(file: string, opts: { owners: number[]; maxBytes: number; secret?: boolean }): Promise<FileRead> {
  let handle
  try {
    handle = await open(file, READ_FLAGS)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT') return { missing: true }
    if (code === 'ELOOP') return { refused: 'a symbolic link' }
    throw err
  }
  try {
    const st = await handle.stat()
    if (!st.isFile()) return { refused: `${kind(st)}, not a regular file` }
    const problem = ownershipProblem(st, opts.owners)
      ?? (opts.secret && st.mode & 0o004 ? `readable by others (mode ${(st.mode & 0o777).toString(8)}); chmod 600 it` : undefined)
      ?? (st.nlink !== 1 ? `${st.nlink} hard links to it` : undefined)
    if (problem) return { refused: problem }
    const chunks: Buffer[] = []
    let total = 0
    for (;;) {
      const { bytesRead, buffer } = await handle.read({ buffer: Buffer.alloc(CHUNK) })
      if (bytesRead === 0) break
      total += bytesRead
      if (total > opts.maxBytes) return { refused: `larger than ${opts.maxBytes} bytes` }
      chunks.push(buffer.subarray(0, bytesRead))
    }
    return { text: Buffer.concat(chunks).toString('utf8') }
  } finally {
    await handle.close()
  }
}

/** The uid of `user` in the passwd file, if it has one. */
export async function userId(user: string, passwd = '/etc/passwd'): Promise<number | undefined> {
  const text = await readFile(passwd, 'utf8').catch(() => '')
  const uid = text.split('\n').map((l) => l.split(':')).find((f) => f[0] === user)?.[2] ?? ''
  return /^\d{1,10}$/.test(uid) ? Number(uid) : undefined
}

/**
 * Replaces `file` with `text` atomically: a temp file beside it, created exclusively (O_EXCL: a link at
 * that path fails the open instead of being followed), synced, then renamed over `file` (rename replaces
 * a link at `file` itself, never its target). The caller holds the lock that makes it the only writer, so
 * anything already at the temp path is a leftover of a crash or planted: it is unlinked (the link, not
 * what it points to) and the create tried once more.
 */
export async function replaceFile(file: string, text: string, mode = 0o600): Promise<void> {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.tmp`)
  const create = () => open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode)
  let handle
  try {
    handle = await create()
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    await unlink(tmp)
    handle = await create()
  }
  try {
    await handle.writeFile(text)
    await handle.sync()
  } finally {
    await handle.close()
  }
  await rename(tmp, file)
}
