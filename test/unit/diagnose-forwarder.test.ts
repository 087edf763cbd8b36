// diagnose's forwarder check as a pure function of what it saw: relay forwards as the runner reports them,
// kernel tunnels' links and the kernel-mode table.
import { describe, expect, it } from 'vitest'
import { checkForwarder, FIX, type ForwarderSeen } from '../../lib/diagnose/forwarder.ts'

const good = { name: 'nas', enabled: true, address: '2001:db8::10', listening: true }
const tunnel = { names: ['web'], iface: 'dgf-web', link: 'up' as const }
const seen = (s: Partial<ForwarderSeen>): ForwarderSeen => ({ relay: [], live: undefined, tunnels: [], ...s })

describe('the forwarder check', () => {
  it('passes with nothing configured, and with everything working', () => {
    expect(checkForwarder(seen({}))).toMatchObject({ status: 'pass', reason: 'no forwards or forwarder peers configured' })
    expect(checkForwarder(seen({ relay: ['nas'], live: [good], tunnels: [tunnel], table: true }))).toMatchObject({ status: 'pass' })
  })

  it('reports a relay forward\'s own error (naming the key), without a fix: the runner retries it', () => {
    const error = 'forwards.nas.target home.example.net: home.example.net has no AAAA record'
    const c = checkForwarder(seen({ relay: ['nas'], live: [{ ...good, address: undefined, listening: false, error }] }))
    expect(c).toMatchObject({ status: 'fail' })
    expect(c.reason).toContain(error)
    expect(c.fix).toBeUndefined()
  })

  it('fails a relay forward the runner does not serve, or does not listen for', () => {
    expect(checkForwarder(seen({ relay: ['nas'], live: [] })).reason).toMatch(/forwards\.nas: not served by the runner/)
    expect(checkForwarder(seen({ relay: ['nas'], live: [{ ...good, listening: false }] })).reason).toMatch(/forwards\.nas: not listening/)
    expect(checkForwarder(seen({ relay: ['nas'], live: undefined })).reason).toMatch(/the runner is not running/)
  })

  it('only warns when the runner cannot be asked', () => {
    expect(checkForwarder(seen({ relay: ['nas'], live: 'GET /forwarder failed (ECONNREFUSED)' }))).toMatchObject({ status: 'warn' })
  })

  it('a kernel tunnel down or missing, or the table missing, fails with the forwarder job as the fix', () => {
    expect(checkForwarder(seen({ tunnels: [{ ...tunnel, link: 'missing' }], table: true }))).toMatchObject({ status: 'fail', fix: FIX, reason: expect.stringContaining('web: tunnel dgf-web missing') })
    expect(checkForwarder(seen({ tunnels: [{ ...tunnel, link: 'down' }], table: true })).reason).toContain('tunnel dgf-web down')
    expect(checkForwarder(seen({ tunnels: [tunnel], table: false }))).toMatchObject({ status: 'fail', fix: FIX, reason: expect.stringContaining('dualgate_fwd missing') })
  })
})
