import { describe, expect, it } from 'vitest'
import { isDeviceMac, macvlanName, normalizeMac } from '../../lib/addr/mac.ts'

describe('normalizeMac', () => {
  it.each(['AA:BB:CC:00:11:22', 'aa-bb-cc-00-11-22', 'aabb.cc00.1122', 'AABBCC001122', ' aa:bb:cc:00:11:22\n'])('reads %j', (input) => {
    expect(normalizeMac(input)).toBe('aa:bb:cc:00:11:22')
  })
  it.each(['', 'aa:bb:cc:00:11', 'aa:bb:cc:00:11:2g', 'aa:bb:cc:00:11:22:33', '$(reboot)', 'aa:bb-cc:00:11:22x'])('rejects %j', (input) => {
    expect(normalizeMac(input)).toBeUndefined()
  })
})

describe('isDeviceMac', () => {
  it('accepts unicast and refuses zero, broadcast and multicast', () => {
    expect(isDeviceMac('02:00:00:00:00:01')).toBe(true)
    expect(isDeviceMac('00:00:00:00:00:00')).toBe(false)
    expect(isDeviceMac('ff:ff:ff:ff:ff:ff')).toBe(false)
    expect(isDeviceMac('01:00:5e:00:00:01')).toBe(false)
    expect(isDeviceMac('33:33:00:00:00:01')).toBe(false)
  })
})

describe('macvlanName', () => {
  it('is stable and fits IFNAMSIZ', () => {
    expect(macvlanName('aa:bb:cc:00:11:22')).toBe('dgaabbcc001122')
    expect(macvlanName('aa:bb:cc:00:11:22').length).toBeLessThanOrEqual(15)
  })
})
