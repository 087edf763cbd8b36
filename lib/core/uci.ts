// A parser for the UCI file syntax (/etc/config/*), so the gateway reads its config without the `uci` binary.
// Grammar: `config <type> ['name']`, `option <key> '<value>'`, `list <key> '<value>'`, `#` comments.

export interface UciSection {
  type: string
  name?: string
  options: Record<string, string | string[]>
}

export class UciSyntaxError extends Error {}

export function parseUci(text: string): UciSection[] {
  const sections: UciSection[] = []
  let current: UciSection | undefined
  text.split('\n').forEach((raw, index) => {
    const words = splitWords(raw, index + 1)
    if (words.length === 0) return
    const [keyword, a, b] = words
    const where = `line ${index + 1}`
    if (keyword === 'package') return
    if (keyword === 'config') {
      if (!a || words.length > 3) throw new UciSyntaxError(`${where}: expected: config <type> ['name']`)
      current = { type: a, name: b, options: {} }
      sections.push(current)
      return
    }
    if (keyword !== 'option' && keyword !== 'list') throw new UciSyntaxError(`${where}: unknown keyword "${keyword}"`)
    if (!current) throw new UciSyntaxError(`${where}: ${keyword} outside a config section`)
    if (!a || b === undefined || words.length > 3) throw new UciSyntaxError(`${where}: expected: ${keyword} <name> '<value>'`)
    if (keyword === 'option') current.options[a] = b
    else {
      const list = current.options[a]
      current.options[a] = Array.isArray(list) ? [...list, b] : [b]
    }
  })
  return sections
}

/** Splits a line into words, honouring '…' and "…" quoting and # comments, the way uci does. */
function splitWords(line: string, lineNo: number): string[] {
  const words: string[] = []
  let i = 0
  while (i < line.length) {
    const c = line[i]
    if (c === ' ' || c === '\t' || c === '\r') { i++; continue }
    if (c === '#') break
    let word = ''
    while (i < line.length && !/[ \t\r]/.test(line[i])) {
      const q = line[i]
      if (q === "'" || q === '"') {
        const end = line.indexOf(q, i + 1)
        if (end < 0) throw new UciSyntaxError(`line ${lineNo}: unterminated quote`)
        word += line.slice(i + 1, end)
        i = end + 1
      } else if (q === '\\' && i + 1 < line.length) {
        word += line[i + 1]
        i += 2
      } else {
        word += q
        i++
      }
    }
    words.push(word)
  }
  return words
}
