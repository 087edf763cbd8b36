// The Prometheus text exposition format (0.0.4), for the runner's GET /metrics and the families capabilities
// add to it.

/** A label value as the format wants it: backslash, double quote and line feed escaped. */
export function labelValue(v: string): string {
  return v.replaceAll('\\', '\\\\').replaceAll('"', '\\"').replaceAll('\n', '\\n')
}
