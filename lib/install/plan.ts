// What `install` puts where, per platform, as data: files copied from the build, files written, links, UCI
// sections and service commands. jobs/install.ts applies a plan and records it in a manifest, so that
// uninstall removes exactly that and restores what was there before. Pure.
import type { Role } from '../core/config.ts'
import { dnsmasqDropIn } from '../net/dnsmasq.ts'
import type { Platform } from '../core/platform.ts'

export const INSTALL_DIR = '/usr/lib/dualgate'
export const MANIFEST = `${INSTALL_DIR}/.manifest.json`
/** Files that were in the way of ours, kept until uninstall puts them back. */
export const BACKUP_DIR = `${INSTALL_DIR}/.backups`

/** The person-facing commands: /usr/bin/<name> -> hooks/bin/<name>. */
export const COMMANDS = ['gateway-status', 'gateway-devices', 'gateway-diagnose', 'gateway-port-forward', 'gateway-logs', 'gateway-mcp'] as const

/** Packages that only serve running from source (`npm start`, `npx zx jobs/x.ts`); the build needs neither. */
const SOURCE_ONLY = new Set(['tsx', 'zx'])

export type Step =
  /** A file of the source tree (relative path) to a system path, its mode kept. */
  | { kind: 'copy'; from: string; to: string }
  /** A file with the given content; `ifAbsent`: the admin's file wins, and an edited one survives uninstall. */
  | { kind: 'write'; to: string; content: string; mode: number; ifAbsent?: boolean }
  | { kind: 'link'; to: string; target: string }
  /** A named UCI section, added with `uci` commands (never by rewriting the package file). */
  | { kind: 'uci'; config: string; section: string; type: string; options: Record<string, string> }
  /**
   * A command for the live system (services), run after the files; skipped on a fake root. `undo` runs at
   * uninstall, before the files go (stop, disable) or after (reloads that must see them gone).
   */
  | { kind: 'command'; argv: string[]; undo?: string[]; undoStage?: 'before' | 'after' }

export interface PlanInput {
  platform: Platform
  /** Files of the source tree to ship, relative (dist/..., hooks/..., package.json, node_modules/...). */
  files: string[]
  /** The systemd unit's presence decides the systemctl commands (Debian). */
  systemd: boolean
  dnsmasqService: string
  /** What the host is (`install --role`): a forwarder alone (a VPS) gets the runner and nothing device-related. */
  roles: Role[]
}

const CONFIG_HEAD = `# dualgate (see \`gateway-diagnose\` and \`node ${INSTALL_DIR}/dist/jobs/config.js\`).`

/**
 * /etc/config/dualgate for a new install, per platform; the admin's own file is never replaced. dnsmasq_leases
 * is where that platform's dnsmasq keeps its leases: /tmp/dhcp.leases on OpenWrt (the built-in default),
 * /var/lib/misc/dnsmasq.leases on Debian, where /tmp is anyone's to plant a lease file in.
 */
export const DEFAULT_CONFIG: Record<Platform, string> = {
  openwrt: `${CONFIG_HEAD}
# Check wan_if and lan_if against /etc/config/network: the WAN port (not the logical interface) and the LAN
# bridge. Options are the config keys in snake case (wan_if, lan_addr, relay_ports, ...).
config dualgate 'main'
	option wan_if 'wan'
	option lan_if 'br-lan'
	option lan_addr '192.168.1.1/24'
	option data_dir '/etc/dualgate'
	option dnsmasq_leases '/tmp/dhcp.leases'
`,
  debian: `${CONFIG_HEAD}
# Set wan_if and lan_if to this host's WAN port and LAN interface (\`ip link\`). Options are the config keys in
# snake case (wan_if, lan_addr, relay_ports, ...).
config dualgate 'main'
	option wan_if 'eth0'
	option lan_if 'eth1'
	option lan_addr '192.168.1.1/24'
	option data_dir '/var/lib/dualgate'
	option dnsmasq_leases '/var/lib/misc/dnsmasq.leases'
`,
}

/** /etc/config/dualgate for a VPS that lends IPv4 to IPv6-only homes (Debian): no LAN, no devices. */
export const FORWARDER_CONFIG = `${CONFIG_HEAD}
# A forwarder: ports of this host forwarded to homes behind DS-Lite (README: "The forwarder"). wan_if is the
# interface with this host's public IPv4 (kernel-mode DNAT uses its address).
config dualgate 'main'
	option role 'forwarder'
	option wan_if 'eth0'
	option data_dir '/var/lib/dualgate'

# config forward 'nas'
#	option port '443'
#	option proto 'tcp'
#	option target 'home.example.net'
`

export function installPlan(input: PlanInput): Step[] {
  const steps: Step[] = input.files.map((f) => ({ kind: 'copy', from: f, to: `${INSTALL_DIR}/${f}` }))
  for (const name of COMMANDS) steps.push({ kind: 'link', to: `/usr/bin/${name}`, target: `${INSTALL_DIR}/hooks/bin/${name}` })
  const gateway = input.roles.includes('gateway')
  if (!gateway) {
    if (input.platform !== 'debian') throw new Error('a forwarder alone is installed on Debian (a VPS); an OpenWrt router is a gateway, optionally also a forwarder')
    steps.push(
      { kind: 'copy', from: 'hooks/dualgate.service', to: '/etc/systemd/system/dualgate.service' },
      { kind: 'write', to: '/etc/config/dualgate', content: FORWARDER_CONFIG, mode: 0o600, ifAbsent: true },
      // Kernel-mode forwards route IPv4 into their tunnels (the forwarder job also turns it on at run time).
      { kind: 'write', to: '/etc/sysctl.d/90-dualgate.conf', content: '# dualgate: kernel settings the forwarder needs (removed by uninstall).\nnet.ipv4.ip_forward = 1\n', mode: 0o644 },
    )
    if (input.systemd) steps.push(...systemdSteps)
    return steps
  }
  if (input.platform === 'openwrt') {
    steps.push(
      { kind: 'copy', from: 'hooks/dualgate.init', to: '/etc/init.d/dualgate' },
      { kind: 'write', to: '/etc/config/dualgate', content: DEFAULT_CONFIG.openwrt, mode: 0o600, ifAbsent: true },
      { kind: 'copy', from: 'hooks/openwrt/hotplug-dhcp', to: '/etc/hotplug.d/dhcp/50-dualgate' },
      { kind: 'copy', from: 'hooks/openwrt/hotplug-neigh', to: '/etc/hotplug.d/neigh/50-dualgate' },
      { kind: 'copy', from: 'hooks/openwrt/hotplug-iface', to: '/etc/hotplug.d/iface/50-dualgate' },
      { kind: 'copy', from: 'hooks/openwrt/fw4-forward.nft', to: '/usr/share/nftables.d/chain-pre/forward/30-dualgate.nft' },
      { kind: 'uci', config: 'firewall', section: 'dualgate', type: 'include', options: { type: 'script', path: `${INSTALL_DIR}/hooks/openwrt/firewall.include` } },
      { kind: 'command', argv: ['/etc/init.d/dualgate', 'enable'], undo: ['/etc/init.d/dualgate', 'disable'] },
      { kind: 'command', argv: ['/etc/init.d/dualgate', 'restart'], undo: ['/etc/init.d/dualgate', 'stop'] },
      { kind: 'command', argv: ['/etc/init.d/firewall', 'reload'], undo: ['/etc/init.d/firewall', 'reload'], undoStage: 'after' },
      { kind: 'command', argv: [input.dnsmasqService || '/etc/init.d/dnsmasq', 'restart'], undo: [input.dnsmasqService || '/etc/init.d/dnsmasq', 'restart'], undoStage: 'after' },
    )
  } else {
    steps.push(
      { kind: 'copy', from: 'hooks/dualgate.service', to: '/etc/systemd/system/dualgate.service' },
      { kind: 'write', to: '/etc/config/dualgate', content: DEFAULT_CONFIG.debian, mode: 0o600, ifAbsent: true },
      { kind: 'write', to: '/etc/dnsmasq.d/dualgate.conf', content: dnsmasqDropIn(`${INSTALL_DIR}/hooks`), mode: 0o644 },
      // Devices' IPv4 is routed: on after a reboot too (acquire-leases turns it on at run time; OpenWrt has it on).
      { kind: 'write', to: '/etc/sysctl.d/90-dualgate.conf', content: '# dualgate: kernel settings the gateway needs (removed by uninstall).\nnet.ipv4.ip_forward = 1\n', mode: 0o644 },
    )
    if (input.systemd) steps.push(...systemdSteps)
    if (input.dnsmasqService) {
      steps.push({ kind: 'command', argv: [input.dnsmasqService, 'restart'], undo: [input.dnsmasqService, 'restart'], undoStage: 'after' })
    }
  }
  return steps
}

const systemdSteps: Step[] = [
  { kind: 'command', argv: ['systemctl', 'daemon-reload'], undo: ['systemctl', 'daemon-reload'], undoStage: 'after' },
  { kind: 'command', argv: ['systemctl', 'enable', 'dualgate'], undo: ['systemctl', 'disable', 'dualgate'] },
  { kind: 'command', argv: ['systemctl', 'restart', 'dualgate'], undo: ['systemctl', 'stop', 'dualgate'] },
]

interface LockPackage { dependencies?: Record<string, string>; optionalDependencies?: Record<string, string>; dev?: boolean }
export interface Lockfile { packages: Record<string, LockPackage> }

/** Where node resolves `name` from the package at `from` (a lockfile key such as node_modules/a). */
function resolve(lock: Lockfile, from: string, name: string): string | undefined {
  let dir = from
  for (let i = 0; i < 64; i++) {
    const candidate = `${dir ? `${dir}/` : ''}node_modules/${name}`
    if (lock.packages[candidate]) return candidate
    if (!dir) return undefined
    const cut = dir.lastIndexOf('/node_modules/')
    dir = cut < 0 ? '' : dir.slice(0, cut)
  }
  return undefined
}

/** Lockfile paths (node_modules/...) of the packages the build needs at run time: the dependencies' closure. */
export function runtimePackages(lock: Lockfile): string[] {
  const root = lock.packages['']
  const todo = Object.keys(root?.dependencies ?? {}).filter((n) => !SOURCE_ONLY.has(n)).map((n) => resolve(lock, '', n)).filter((p): p is string => !!p)
  const seen = new Set<string>()
  while (todo.length > 0) {
    const p = todo.pop()!
    if (seen.has(p)) continue
    seen.add(p)
    const pkg = lock.packages[p]
    for (const dep of [...Object.keys(pkg.dependencies ?? {}), ...Object.keys(pkg.optionalDependencies ?? {})]) {
      const r = resolve(lock, p, dep)
      if (r && !seen.has(r)) todo.push(r)
    }
  }
  return [...seen].sort()
}

/** Which source files ship: the build, the hooks, package.json, and the run-time packages (not their nested node_modules, which are packages of their own). */
export function shippedFiles(all: string[], packages: string[]): string[] {
  const pkgs = new Set(packages)
  return all.filter((f) => {
    if (f === 'package.json' || f.startsWith('dist/') || f.startsWith('hooks/')) return true
    if (!f.startsWith('node_modules/')) return false
    // The package a file belongs to: the longest node_modules/<name> (or @scope/name) prefix.
    const m = /^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(f)
    return !!m && pkgs.has(m[1])
  }).sort()
}
