// Reporter of vitest inside the kernel lab: writes every test's outcome to $KERNEL_LAB_OUT/results.json,
// where the host (kernel-lab.test.ts) reads it back. Errors outside tests (imports, hooks, unhandled)
// become results of their own, so that nothing fails in the guest without failing on the host.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { Reporter, TestModule } from 'vitest/node'

export interface GuestResult {
  file: string
  name: string
  state: 'passed' | 'failed' | 'skipped' | 'pending'
  errors: string[]
}

type SerializedErrors = ReadonlyArray<{ message: string; stack?: string }>

const text = (errors: SerializedErrors | undefined) => (errors ?? []).map((e) => e.stack ?? e.message)

export function guestReporter(outDir: string): Reporter {
  return {
    onTestRunEnd(modules: ReadonlyArray<TestModule>, unhandledErrors: SerializedErrors) {
      const results: GuestResult[] = []
      for (const m of modules) {
        const file = m.relativeModuleId
        const outside = [...text(m.errors()), ...[...m.children.allSuites()].flatMap((s) => text(s.errors()))]
        if (outside.length) results.push({ file, name: '(imports and hooks)', state: 'failed', errors: outside })
        for (const t of m.children.allTests()) {
          const r = t.result()
          results.push({ file, name: t.fullName, state: r.state, errors: text(r.errors) })
        }
      }
      if (unhandledErrors.length) results.push({ file: '', name: '(unhandled errors)', state: 'failed', errors: text(unhandledErrors) })
      writeFileSync(join(outDir, 'results.json'), JSON.stringify(results))
    },
  }
}
