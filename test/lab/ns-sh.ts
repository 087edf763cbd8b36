// dualgate's own code driven in-process against one namespace of a lab (the kernel lab's tests and bench,
// where a job's process start costs seconds): an Sh whose commands run through `ip netns exec`.
import { createSh, type Sh } from '../../lib/core/exec.ts'

export function nsSh(ns: string): Sh {
  const host = createSh({ dryRun: false })
  const wrap = (cmd: string, args: string[]) => ['netns', 'exec', ns, cmd, ...args]
  return {
    dryRun: false,
    query: (cmd, args, o) => host.query('ip', wrap(cmd, args), o),
    apply: (cmd, args, o) => host.apply('ip', wrap(cmd, args), o),
    daemon: (cmd, args, o) => host.daemon('ip', wrap(cmd, args), o),
  }
}
