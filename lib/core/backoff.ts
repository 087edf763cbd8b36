// When to try a failed device again: exponential in the number of attempts, capped, with jitter so that
// hundreds of devices failed by one upstream outage do not all retry in the same second.

export function retryDelaySeconds(attempts: number, base: number, max: number, random = Math.random()): number {
  const exponential = Math.min(max, base * 2 ** Math.max(0, attempts - 1))
  return Math.round(exponential * (0.5 + random / 2))
}
