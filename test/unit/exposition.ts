// A strict parser of the Prometheus text exposition format 0.0.4, for unit tests of the metrics (the lab test
// runs promtool itself on the runner's GET /metrics).

export interface ParsedFamily { help?: string; type?: string; samples: { labels: Record<string, string>; value: number }[] }

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/
const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/
// A label value: anything but a backslash, a double quote or a line feed, or one of the three escapes.
const LABEL = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)/
const unescape = (v: string) => v.replace(/\\([\\"n])/g, (_m, c: string) => (c === 'n' ? '\n' : c))

/**
 * Parses text exposition format 0.0.4 strictly, throwing at the first line that breaks a rule: each family's
 * HELP and TYPE once and before its samples, its samples in one block, valid names and escaped label values,
 * counters named *_total, no series twice, a newline at the end.
 */
export function parseExposition(text: string): Map<string, ParsedFamily> {
  if (!text.endsWith('\n')) throw new Error('no newline at the end')
  const families = new Map<string, ParsedFamily>()
  const series = new Set<string>()
  const closed = new Set<string>()
  let current: string | undefined
  const open = (name: string) => {
    if (!NAME.test(name)) throw new Error(`bad metric name ${name}`)
    if (current !== name) {
      if (current) closed.add(current)
      if (closed.has(name)) throw new Error(`${name}: its lines are not in one block`)
      current = name
    }
    const f = families.get(name) ?? { samples: [] }
    families.set(name, f)
    return f
  }
  for (const line of text.slice(0, -1).split('\n')) {
    const meta = /^# (HELP|TYPE) (\S+) (.+)$/.exec(line)
    if (meta) {
      const f = open(meta[2])
      if (f.samples.length > 0) throw new Error(`${meta[2]}: ${meta[1]} after a sample`)
      if (meta[1] === 'HELP') {
        if (f.help !== undefined) throw new Error(`${meta[2]}: HELP twice`)
        f.help = meta[3]
      } else {
        if (f.type !== undefined) throw new Error(`${meta[2]}: TYPE twice`)
        if (!['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(meta[3])) throw new Error(`${meta[2]}: unknown type ${meta[3]}`)
        if (meta[3] === 'counter' && !meta[2].endsWith('_total')) throw new Error(`${meta[2]}: a counter not named *_total`)
        f.type = meta[3]
      }
      continue
    }
    if (line.startsWith('#')) throw new Error(`unexpected comment: ${line}`)
    const m = SAMPLE.exec(line)
    if (!m) throw new Error(`not a sample: ${JSON.stringify(line)}`)
    const f = open(m[1])
    if (f.help === undefined || f.type === undefined) throw new Error(`${m[1]}: a sample without HELP and TYPE before it`)
    const labels: Record<string, string> = {}
    for (let rest = m[2] ?? ''; rest !== '';) {
      const l = LABEL.exec(rest)
      if (!l) throw new Error(`${m[1]}: bad labels at ${JSON.stringify(rest)}`)
      if (l[1] in labels) throw new Error(`${m[1]}: label ${l[1]} twice`)
      labels[l[1]] = unescape(l[2])
      rest = rest.slice(l[0].length)
      if (l[3] === ',' && rest === '') throw new Error(`${m[1]}: trailing comma`)
    }
    if (!/^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$|^[+-]Inf$|^NaN$/.test(m[3])) throw new Error(`${m[1]}: bad value ${m[3]}`)
    const key = `${m[1]}${JSON.stringify(labels)}`
    if (series.has(key)) throw new Error(`${key} twice`)
    series.add(key)
    f.samples.push({ labels, value: Number(m[3]) })
  }
  return families
}
