#!/usr/bin/env node
// The effective configuration and where each value came from.
import { loadConfig } from '../lib/core/config.ts'
import { defineJob, runMain } from '../lib/core/job.ts'
import { formatTable } from '../lib/core/table.ts'

interface Entry { key: string; value: unknown; source: string }

const job = defineJob({
  name: 'config',
  description: 'Print the effective configuration and the source of each value.',
  async run({ ctx }) {
    const { sources } = loadConfig()
    const { schedules, sections, ...keys } = ctx.config
    const flat: Record<string, unknown> = {
      ...keys,
      ...Object.fromEntries(Object.entries(schedules).map(([k, v]) => [`schedules.${k}`, v])),
      ...Object.fromEntries(Object.entries(sections).flatMap(([kind, list]) => list.map(({ name, ...options }) => [`${kind}.${name}`, options]))),
    }
    if (flat.apiToken) flat.apiToken = '(set)'
    return Object.entries(flat).map(([key, value]): Entry => ({ key, value, source: sources[key] }))
  },
  format(entries: Entry[]) {
    return formatTable(['KEY', 'VALUE', 'SOURCE'], entries.map((e) => [e.key, Array.isArray(e.value) ? e.value.join(',') : JSON.stringify(e.value), e.source]))
  },
})

export default job
await runMain(job, import.meta.url)
