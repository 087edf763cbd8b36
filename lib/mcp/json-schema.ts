// The subset of JSON Schema the MCP tools declare, and a checker for tool arguments against it. The same
// schema objects are what tools/list hands the client, so what we check is what we promise.

export interface JsonSchema {
  type?: 'object' | 'array' | 'string' | 'integer' | 'number' | 'boolean'
  description?: string
  properties?: Record<string, JsonSchema>
  required?: string[]
  additionalProperties?: boolean
  items?: JsonSchema
  enum?: readonly (string | number)[]
  minimum?: number
  maximum?: number
  minLength?: number
  maxLength?: number
  pattern?: string
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)

function typeError(schema: JsonSchema, value: unknown): boolean {
  switch (schema.type) {
    case undefined: return false
    case 'object': return !isObject(value)
    case 'array': return !Array.isArray(value)
    case 'integer': return !Number.isInteger(value)
    case 'number': return typeof value !== 'number' || !Number.isFinite(value)
    default: return typeof value !== schema.type
  }
}

/** Why `value` does not match `schema` (the first problem, naming where), or undefined when it does. */
export function schemaError(schema: JsonSchema, value: unknown, where = 'arguments'): string | undefined {
  if (typeError(schema, value)) return `${where}: expected ${schema.type === 'integer' ? 'an integer' : `a${/^[aeiou]/.test(schema.type!) ? 'n' : ''} ${schema.type}`}`
  if (schema.enum && !schema.enum.includes(value as string | number)) return `${where}: expected one of ${schema.enum.map((e) => JSON.stringify(e)).join(', ')}`
  if (typeof value === 'number') {
    if (schema.minimum !== undefined && value < schema.minimum) return `${where}: at least ${schema.minimum}`
    if (schema.maximum !== undefined && value > schema.maximum) return `${where}: at most ${schema.maximum}`
  }
  if (typeof value === 'string') {
    if (schema.minLength !== undefined && value.length < schema.minLength) return `${where}: at least ${schema.minLength} characters`
    if (schema.maxLength !== undefined && value.length > schema.maxLength) return `${where}: at most ${schema.maxLength} characters`
    if (schema.pattern !== undefined && !new RegExp(schema.pattern, 'u').test(value)) return `${where}: does not match ${schema.pattern}`
  }
  if (Array.isArray(value) && schema.items) {
    for (const [i, item] of value.entries()) {
      const why = schemaError(schema.items, item, `${where}[${i}]`)
      if (why) return why
    }
  }
  if (isObject(value)) {
    for (const key of schema.required ?? []) if (!(key in value)) return `${where}: "${key}" is required`
    for (const [key, item] of Object.entries(value)) {
      const sub = schema.properties?.[key]
      if (!sub) {
        if (schema.additionalProperties === false) return `${where}: unknown property "${key}"${schema.properties ? `; known: ${Object.keys(schema.properties).join(', ') || 'none'}` : ''}`
        continue
      }
      const why = schemaError(sub, item, `${where}.${key}`)
      if (why) return why
    }
  }
  return undefined
}
