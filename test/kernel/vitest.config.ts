// Vitest inside the kernel lab's VM (test/vm/kernel-lab.test.ts boots it; by hand see test/vm/README.md).
// Timeouts are for an emulated CPU, several times slower than the host.
import { defineConfig } from 'vitest/config'
import { guestReporter } from '../vm/guest-reporter.ts'

const out = process.env.KERNEL_LAB_OUT

export default defineConfig({
  test: {
    include: ['test/kernel/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 180_000,
    reporters: out ? ['default', guestReporter(out)] : ['default'],
  },
})
