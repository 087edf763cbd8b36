// Echo probes through one interface only: iputils ping bound to the link (SO_BINDTODEVICE), so a probe can
// never leave by another route. ping itself matches replies by type, identifier and sequence; an ICMPv6
// error (Destination Unreachable, Time Exceeded) is counted as no reply. Node has no raw sockets, hence ping.
import type { Sh } from '../core/exec.ts'

export interface PingResult {
  sent: number
  /** Round-trip times of the replies, one per sequence number answered (duplicates ignored). */
  rttMs: number[]
  /** ICMP errors reported instead of replies. */
  errors: number
}

export function parsePing(stdout: string, sent: number): PingResult {
  const answered = new Map<number, number>()
  let errors = 0
  for (const line of stdout.split('\n')) {
    const reply = /icmp_seq=(\d+) .*time=([\d.]+) ms(?! \(DUP!\))/.exec(line)
    if (reply && !line.includes('DUP!')) {
      const seq = Number(reply[1])
      if (!answered.has(seq)) answered.set(seq, Number(reply[2]))
    } else if (/^From \S+ icmp_seq=\d+ /.test(line)) errors++
  }
  return { sent, rttMs: [...answered.values()], errors }
}

/**
 * `count` echo requests to `target` out of `ifname`, 200 ms apart; the whole probe ends after `timeoutS`
 * (sooner when every reply is in), which bounds how long a failing check takes.
 */
export async function pingVia(sh: Sh, o: { ifname: string; target: string; count: number; timeoutS: number }): Promise<PingResult> {
  const r = await sh.query('ping', ['-6', '-n', '-I', o.ifname, '-c', String(o.count), '-i', '0.2', '-W', String(o.timeoutS), '-w', String(o.timeoutS), o.target], {
    nothrow: true,
    timeoutMs: (o.timeoutS + 5) * 1000,
  })
  return parsePing(r.stdout, o.count)
}
