import { configDefaults, defineConfig } from 'vitest/config'
import { summaryReporter } from './test/summary-reporter.ts'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // test/kernel/ runs inside the kernel lab's VM, driven by test/vm/kernel-lab.test.ts.
    exclude: [...configDefaults.exclude, 'test/kernel/**'],
    // Lab tests share the kernel's network state and each builds namespaces: run files one at a time.
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    reporters: ['default', summaryReporter],
  },
})
