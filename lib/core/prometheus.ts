// The Prometheus text exposition format (0.0.4), for the runner's GET /metrics and the families capabilities
// add to it. One place for its rules: each family's HELP and TYPE before its samples, escaped label values
// and HELP text, counters named *_total and nothing else so. A family without samples is left out.

export type MetricType = 'gauge' | 'counter'

export interface Sample {
  labels?: Record<string, string>
  value: number
}

export interface Family {
  name: string
  type: MetricType
  help: string
  samples: Sample[]
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/

/** A label value as the format wants it: backslash, double quote and line feed escaped. */
export function labelValue(v: string): string {
  return v.replaceAll('\\', '\\\\').replaceAll('"', '\\"').replaceAll('\n', '\\n')
}

/** HELP text as the format wants it: backslash and line feed escaped (a double quote stays as it is). */
export function helpText(v: string): string {
  return v.replaceAll('\\', '\\\\').replaceAll('\n', '\\n')
}

/** `{a="x",b="y"}` in the order given, or '' for none. */
export function labelSet(labels: Record<string, string> = {}): string {
  const pairs = Object.entries(labels).map(([k, v]) => {
    if (!LABEL_NAME.test(k) || k.startsWith('__')) throw new Error(`bad label name ${JSON.stringify(k)}`)
    return `${k}="${labelValue(v)}"`
  })
  return pairs.length > 0 ? `{${pairs.join(',')}}` : ''
}

/** A sample's value: Go's float syntax for the values JavaScript spells otherwise. */
export function sampleValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN'
  if (v === Infinity) return '+Inf'
  if (v === -Infinity) return '-Inf'
  return String(v)
}

/**
 * One family's lines, each ending in a newline; '' when it has no samples. Names are constants of ours, so a
 * bad one (or a counter not named *_total, or a gauge that is) is a bug, thrown at the first scrape.
 */
export function formatFamily(f: Family): string {
  if (!METRIC_NAME.test(f.name)) throw new Error(`bad metric name ${JSON.stringify(f.name)}`)
  if ((f.type === 'counter') !== f.name.endsWith('_total')) throw new Error(`${f.name}: only counters end in _total, and every counter does`)
  if (f.samples.length === 0) return ''
  const lines = [`# HELP ${f.name} ${helpText(f.help)}`, `# TYPE ${f.name} ${f.type}`]
  for (const s of f.samples) lines.push(`${f.name}${labelSet(s.labels)} ${sampleValue(s.value)}`)
  return `${lines.join('\n')}\n`
}

/** Families in the order given; a name twice is a bug (Prometheus would refuse the whole scrape). */
export function exposition(families: Family[]): string {
  const seen = new Set<string>()
  for (const f of families) {
    if (seen.has(f.name)) throw new Error(`metric family ${f.name} twice`)
    seen.add(f.name)
  }
  return families.map(formatFamily).join('')
}

/** A family of one unlabelled sample. */
export function single(name: string, type: MetricType, help: string, value: number): Family {
  return { name, type, help, samples: [{ value }] }
}

/** connectionsPerSource -> connections_per_source: our camelCase names as label values. */
export const snakeCase = (s: string): string => s.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)

/** 1 for true, 0 for false: how the format says yes and no. */
export const flag = (b: boolean): number => (b ? 1 : 0)
