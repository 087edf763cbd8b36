// Runs one command in the kernel lab by hand, its console on stdout; exits with the command's status
// (124 when the time limit killed the VM, 125 when the VM ended without a status). As root:
//   node --import=tsx test/vm/run.ts [--timeout SECONDS] [--memory MIB] [--cpus N] [--] COMMAND [ARG...]
//   npm run kernel-lab -- node_modules/.bin/vitest run -c test/kernel/vitest.config.ts test/kernel/sit.test.ts
import { kernelLabUnavailable, runInVm } from './vm.ts'

const usage = 'usage: run.ts [--timeout SECONDS] [--memory MIB] [--cpus N] [--] COMMAND [ARG...]'
const opts = { timeout: 600, memory: 1536, cpus: 2 }
const args = process.argv.slice(2)
while (args[0]?.startsWith('--')) {
  const flag = args.shift() as string
  if (flag === '--') break
  const key = flag.slice(2)
  const value = Number(args.shift())
  if (!(key in opts) || !Number.isInteger(value) || value <= 0) {
    console.error(usage)
    process.exit(2)
  }
  opts[key as keyof typeof opts] = value
}
if (args.length === 0) {
  console.error(usage)
  process.exit(2)
}
const why = kernelLabUnavailable()
if (why) {
  console.error(`kernel lab: ${why}`)
  process.exit(2)
}
const r = await runInVm({
  argv: args,
  cwd: process.cwd(),
  timeoutMs: opts.timeout * 1000,
  memoryMiB: opts.memory,
  cpus: opts.cpus,
  onOutput: (text) => process.stdout.write(text),
})
const end = r.timedOut ? `killed at the ${opts.timeout} s limit` : r.status === undefined ? 'ended without an exit status' : `exit status ${r.status}`
console.error(`kernel lab: ${end} after ${(r.ms / 1000).toFixed(1)} s`)
process.exit(r.timedOut ? 124 : (r.status ?? 125))
