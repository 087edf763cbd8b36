// Hostnames arrive from DHCP clients we don't control: keep what a DNS label allows, nothing else.

export interface CleanHostname { hostname?: string; changed: boolean }

/** Letters, digits, '-' and '.', at most 63 characters, no leading or trailing '-' or '.'. */
export function cleanHostname(raw: string | undefined): CleanHostname {
  if (raw === undefined || raw === '' || raw === '*') return { hostname: undefined, changed: false }
  const cleaned = raw.replace(/[^A-Za-z0-9.-]/g, '').slice(0, 63).replace(/^[.-]+|[.-]+$/g, '')
  return { hostname: cleaned || undefined, changed: cleaned !== raw }
}

/** A DNS name as config may give it: labels of 1-63 letters, digits and '-' (not at either end), 253 at most. */
export function isHostname(name: string): boolean {
  const bare = name.endsWith('.') ? name.slice(0, -1) : name
  return bare.length > 0 && bare.length <= 253 && bare.split('.').every((l) => /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/.test(l))
}
