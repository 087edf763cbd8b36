// Plain-text tables for people at a console: aligned columns, no colour codes, "-" for empty cells.

export function formatTable(headers: string[], rows: (string | number | undefined)[][]): string {
  const cells = rows.map((r) => r.map((c) => (c === undefined || c === '' ? '-' : String(c))))
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => r[i]?.length ?? 0)))
  const line = (r: string[]) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  ')
  return [line(headers), ...cells.map(line)].join('\n')
}

/** "3m ago", "in 40s": enough precision for a person reading a table. */
export function ago(iso: string | undefined, now = Date.now()): string | undefined {
  if (!iso) return undefined
  const s = Math.round((now - Date.parse(iso)) / 1000)
  return s < 0 ? `in ${span(-s)}` : `${span(s)} ago`
}

function span(s: number): string {
  if (s < 90) return `${s}s`
  if (s < 5400) return `${Math.round(s / 60)}m`
  if (s < 129_600) return `${Math.round(s / 3600)}h`
  return `${Math.round(s / 86_400)}d`
}
