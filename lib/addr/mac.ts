// MAC addresses as they arrive from people, dnsmasq and the kernel: any common spelling in, one canonical form out.

const SPELLINGS = [
  /^([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})$/i,
  /^([0-9a-f]{2})([0-9a-f]{2})\.([0-9a-f]{2})([0-9a-f]{2})\.([0-9a-f]{2})([0-9a-f]{2})$/i,
  /^([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i,
]

/** `aa:bb:cc:dd:ee:ff` for any of aa:bb:.., AA-BB-.., aabb.ccdd.eeff, aabbccddeeff; undefined otherwise. */
export function normalizeMac(input: string): string | undefined {
  for (const re of SPELLINGS) {
    const m = re.exec(input.trim())
    if (m) return m.slice(1).join(':').toLowerCase()
  }
  return undefined
}

/** A unicast MAC a LAN device could own: not zero, broadcast or multicast. */
export function isDeviceMac(mac: string): boolean {
  const first = parseInt(mac.slice(0, 2), 16)
  return mac !== '00:00:00:00:00:00' && (first & 1) === 0
}

/** Device macvlans by name (macvlanName). */
export const MACVLAN_NAME = /^dg[0-9a-f]{12}$/

/** Stable interface name for a device's macvlan, within Linux's 15 characters: `dg` + the 12 hex digits. */
export function macvlanName(mac: string): string {
  return `dg${mac.replaceAll(':', '')}`
}
