// The kernel lab's test files, test/kernel/*.test.ts, run here in ONE VM: vitest inside the guest
// (test/kernel/vitest.config.ts) and each of its tests reported below as a test of its own, passing,
// skipped, or failing with the guest's errors. The VM runs while this file is collected (top-level
// await), since the guest's tests are only known once it has run. Skipped without root or QEMU.
import { describe, it } from 'vitest'
import type { GuestResult } from './guest-reporter.ts'
import { kernelLabUnavailable, runInVm, type VmResult } from './vm.ts'

const TIMEOUT_MS = 8 * 60_000
const CONSOLE_LINES = 60

interface GuestRun {
  vm?: VmResult
  results: GuestResult[]
  error?: string
}

async function runGuestSuite(): Promise<GuestRun> {
  try {
    const vm = await runInVm({
      argv: ['node', 'node_modules/vitest/vitest.mjs', 'run', '--config', 'test/kernel/vitest.config.ts'],
      env: { NO_COLOR: '1' },
      timeoutMs: TIMEOUT_MS,
    })
    const json = vm.files['results.json']
    return { vm, results: json ? (JSON.parse(json) as GuestResult[]) : [] }
  } catch (err) {
    return { results: [], error: (err as Error).message }
  }
}

function consoleTail(vm: VmResult): string {
  return vm.console.trimEnd().split('\n').slice(-CONSOLE_LINES).join('\n')
}

/** Why the run as a whole failed (the tests it reported fail on their own), or undefined. */
function runFailure(run: GuestRun): string | undefined {
  const { vm } = run
  if (!vm) return run.error
  if (vm.timedOut) return `the VM was killed at its ${TIMEOUT_MS / 1000} s limit; console:\n${consoleTail(vm)}`
  if (vm.status === undefined) return `the VM ended without an exit status; console:\n${consoleTail(vm)}`
  if (!vm.files['results.json']) return `vitest in the guest exited ${vm.status} without results; console:\n${consoleTail(vm)}`
  if (vm.status !== 0 && !run.results.some((r) => r.state === 'failed')) return `vitest in the guest exited ${vm.status}; console:\n${consoleTail(vm)}`
  return undefined
}

const unavailable = kernelLabUnavailable()

if (unavailable) {
  describe.skip(`kernel lab (skipped: ${unavailable})`, () => {
    it('runs test/kernel/*.test.ts in a VM', () => {})
  })
} else {
  const run = await runGuestSuite()
  const files = [...new Set(run.results.map((r) => r.file))]

  describe('kernel lab', () => {
    it('boots a VM that runs vitest on test/kernel/*.test.ts and powers off', () => {
      const failure = runFailure(run)
      if (failure) throw new Error(failure)
      console.info(`kernel lab: ${run.results.length} results from the VM in ${((run.vm?.ms ?? 0) / 1000).toFixed(1)} s, boot to power-off`)
      // What the guest's tests measured (their lines start "kernel lab:").
      for (const line of (run.vm?.console ?? '').split('\n')) if (line.startsWith('kernel lab: ')) console.info(line.trimEnd())
    })

    for (const file of files) {
      describe(file || 'the guest run', () => {
        for (const r of run.results.filter((x) => x.file === file)) {
          if (r.state === 'skipped' || r.state === 'pending') it.skip(r.name, () => {})
          else
            it(r.name, () => {
              if (r.state === 'failed') throw new Error(`in the VM:\n${r.errors.join('\n\n')}`)
            })
        }
      })
    }
  })
}
