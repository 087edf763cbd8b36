// The supervisor helper every runner-hosted capability uses (relay, NAT64, CLAT): one pass at a time, one more
// when asked during a pass, on a timer, on store change, logged failures, a clean close.
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, describe, expect, it } from 'vitest'
import type { Config } from '../../lib/core/config.ts'
import { createSh } from '../../lib/core/exec.ts'
import type { Logger } from '../../lib/core/log.ts'
import type { Store } from '../../lib/core/store.ts'
import { defineSupervisor, startSupervisor, type SupervisorParts } from '../../lib/core/supervisor.ts'

const dir = mkdtempSync(path.join(tmpdir(), 'dg-supervisor-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

function context() {
  const errors: string[] = []
  const log = { error: (m: string) => errors.push(m), warn() {}, info() {}, debug() {} } as unknown as Logger
  const store = { file: path.join(dir, 'dualgate.json') } as Store
  return { errors, ctx: { store, config: () => ({}) as Config, sh: createSh({ dryRun: true, print: () => {} }), log: () => log } }
}

/** A pass that records its start and end, and waits until released. */
function gatedPasses() {
  const events: string[] = []
  let n = 0
  let release: (() => void) | undefined
  const pass = async () => {
    const i = ++n
    events.push(`start ${i}`)
    await new Promise<void>((resolve) => { release = resolve })
    events.push(`end ${i}`)
  }
  const releaseNow = async () => {
    for (let i = 0; i < 100 && !release; i++) await sleep(5)
    const r = release
    release = undefined
    r?.()
  }
  return { events, pass, releaseNow, count: () => n }
}

describe('supervisor helper', () => {
  it('a request during a pass gives exactly one more pass, however many requests came', async () => {
    const { ctx } = context()
    const g = gatedPasses()
    const s = startSupervisor(defineSupervisor({ name: 't', everyMs: 60_000, setup: () => ({ pass: g.pass }) }), ctx)
    // The first pass starts at once and waits.
    await sleep(10)
    expect(g.events).toEqual(['start 1'])
    const asked = [s.request(), s.request(), s.request()]
    await g.releaseNow()
    await sleep(10)
    expect(g.events).toEqual(['start 1', 'end 1', 'start 2'])
    await g.releaseNow()
    await Promise.all(asked)
    await sleep(20)
    expect(g.events).toEqual(['start 1', 'end 1', 'start 2', 'end 2'])
    expect(g.count()).toBe(2)
    await s.close()
  })

  it('a request when idle starts a pass at once, and resolves when it has finished', async () => {
    const { ctx } = context()
    let passes = 0
    const s = startSupervisor(defineSupervisor({ name: 't', everyMs: 60_000, setup: () => ({ pass: async () => { await sleep(20); passes++ } }) }), ctx)
    await sleep(50)
    expect(passes).toBe(1)
    await s.request()
    expect(passes).toBe(2)
    await s.close()
  })

  it('logs a throwing pass and runs the next one', async () => {
    const { ctx, errors } = context()
    let n = 0
    const s = startSupervisor(defineSupervisor({
      name: 'boom',
      everyMs: 60_000,
      setup: () => ({ pass: async () => { n++; if (n === 1) throw new Error('first pass broke') } }),
    }), ctx)
    await sleep(20)
    expect(errors).toEqual(['boom: first pass broke'])
    await s.request()
    expect(n).toBe(2)
    expect(errors).toHaveLength(1)
    await s.close()
  })

  it('runs a pass on its timer and when the store file is replaced', async () => {
    const { ctx } = context()
    let timed = 0
    const t = startSupervisor(defineSupervisor({ name: 'timer', everyMs: 40, setup: () => ({ pass: async () => { timed++ } }) }), ctx)
    await sleep(300)
    await t.close()
    // One at start, then one per 40 ms; generous bounds for a loaded machine.
    expect(timed).toBeGreaterThanOrEqual(3)

    let followed = 0
    const f = startSupervisor(defineSupervisor({ name: 'store', everyMs: 60_000, followStore: true, setup: () => ({ pass: async () => { followed++ } }) }), ctx)
    await sleep(50)
    expect(followed).toBe(1)
    writeFileSync(path.join(dir, 'tmp.json'), '{}')
    renameSync(path.join(dir, 'tmp.json'), ctx.store.file)
    for (let i = 0; i < 100 && followed < 2; i++) await sleep(20)
    expect(followed).toBe(2)
    await f.close()
  })

  it('close waits for the pass under way, runs no more passes, then lets the supervisor clean up', async () => {
    const { ctx } = context()
    const g = gatedPasses()
    const order: string[] = []
    const parts: SupervisorParts = { pass: g.pass, close: async () => { order.push('close') } }
    const s = startSupervisor(defineSupervisor({ name: 't', everyMs: 20, setup: () => parts }), ctx)
    await sleep(10)
    void s.request()
    const closing = s.close().then(() => order.push('closed'))
    await sleep(60)
    // Still waiting for pass 1; the timer and the request made no pass.
    expect(order).toEqual([])
    await g.releaseNow()
    await closing
    expect(order).toEqual(['close', 'closed'])
    await sleep(60)
    expect(g.events).toEqual(['start 1', 'end 1'])
    await s.request()
    expect(g.count()).toBe(1)
  })

  it('hands its routes to the runner', () => {
    const { ctx } = context()
    const route = { method: 'GET' as const, path: '/thing', handler: () => ({}) }
    const s = startSupervisor(defineSupervisor({ name: 't', everyMs: 60_000, setup: () => ({ pass: async () => {}, routes: [route] }) }), ctx)
    expect(s.routes).toEqual([route])
    return s.close()
  })
})
