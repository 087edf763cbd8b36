// Ends the run with one plain line, "N passed, N failed, N skipped", which CI systems read without knowing
// vitest's own summary format.
import type { Reporter, TestModule } from 'vitest/node'

export const summaryReporter: Reporter = {
  onTestRunEnd(modules: ReadonlyArray<TestModule>) {
    const count = { passed: 0, failed: 0, skipped: 0 }
    for (const m of modules) {
      for (const test of m.children.allTests()) {
        const state = test.result().state
        if (state === 'passed') count.passed++
        else if (state === 'failed') count.failed++
        else count.skipped++
      }
    }
    process.stdout.write(`\n${count.passed} passed, ${count.failed} failed, ${count.skipped} skipped\n`)
  },
}
