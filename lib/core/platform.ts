// Which kind of system this is and how its services are driven: OpenWrt (procd, /etc/init.d, UCI, hotplug.d)
// or Debian (systemd, /etc/dnsmasq.d). System paths go through `rootDir`, so tests and image builds can work
// on a fake root; commands always act on the live system.
import { existsSync } from 'node:fs'
import path from 'node:path'
import type { Config } from './config.ts'

export type Platform = 'openwrt' | 'debian'

/** A system path (`/etc/...`) under the configured root. */
export function systemPath(rootDir: string, file: string): string {
  return path.join(rootDir, file)
}

export function detectPlatform(rootDir: string, choice: Config['platform'] = 'auto'): Platform {
  if (choice !== 'auto') return choice
  return existsSync(systemPath(rootDir, '/etc/openwrt_release')) ? 'openwrt' : 'debian'
}

/** systemd is the live init system: only then are systemctl commands meaningful. */
export function systemdRunning(): boolean {
  return existsSync('/run/systemd/system')
}

/** The command that starts or restarts the runner: the configured one, else the platform's. */
export function runnerServiceCommand(config: Config, platform: Platform, action: 'start' | 'restart' | 'stop'): string[] {
  if (config.runnerService) return [config.runnerService, action]
  return platform === 'openwrt' ? ['/etc/init.d/dualgate', action] : ['systemctl', action, 'dualgate']
}

export function dnsmasqServiceCommand(config: Config, platform: Platform, action: 'start' | 'restart'): string[] {
  if (config.dnsmasqService) return [config.dnsmasqService, action]
  return platform === 'openwrt' ? ['/etc/init.d/dnsmasq', action] : ['systemctl', action, 'dnsmasq']
}
