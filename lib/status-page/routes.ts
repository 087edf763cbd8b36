// The status page: GET / and its files under /ui/, served as they are from ./assets (next to this module in
// lib/ and, copied by `npm run build`, in dist/). The page reads the JSON API of the same origin; it changes
// state only with the token a person types in, which stays in the browser's sessionStorage. Every file goes
// out under a Content-Security-Policy that allows nothing but this origin's own scripts, styles and API.
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { HTTPError, type H3Event } from 'h3'
import type { ApiRoute } from '../core/api.ts'

export const CSP = [
  "default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "img-src 'self'",
  "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'",
].join('; ')

export const ASSETS_DIR = fileURLToPath(new URL('./assets/', import.meta.url))

/** Route path, file in ASSETS_DIR, content type. */
export const PAGE_FILES: [string, string, string][] = [
  ['/', 'index.html', 'text/html; charset=utf-8'],
  ['/ui/app.css', 'app.css', 'text/css; charset=utf-8'],
  ['/ui/app.js', 'app.js', 'text/javascript; charset=utf-8'],
  ['/ui/icon.svg', 'icon.svg', 'image/svg+xml'],
]

interface Loaded { body: Buffer; etag: string }

// Read once, at the first request: the files change only with a new build, which restarts the runner.
const loaded = new Map<string, Loaded>()

function load(file: string): Loaded {
  let hit = loaded.get(file)
  if (!hit) {
    let body: Buffer
    try {
      body = readFileSync(`${ASSETS_DIR}${file}`)
    } catch {
      throw new HTTPError({ status: 500, message: `the status page's ${file} is missing from ${ASSETS_DIR} (\`npm run build\` copies it)` })
    }
    hit = { body, etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 16)}"` }
    loaded.set(file, hit)
  }
  return hit
}

function serveFile(event: H3Event, file: string, type: string): Response {
  const { body, etag } = load(file)
  const headers = {
    'content-security-policy': CSP,
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
    'cache-control': 'no-cache',
    etag,
  }
  if (event.req.headers.get('if-none-match') === etag) return new Response(null, { status: 304, headers })
  return new Response(new Uint8Array(body), { headers: { ...headers, 'content-type': type, 'content-length': String(body.length) } })
}

export const statusPageRoutes: ApiRoute[] = PAGE_FILES.map(([path, file, type]): ApiRoute => ({
  method: 'GET',
  path,
  handler: (event) => serveFile(event, file, type),
}))
