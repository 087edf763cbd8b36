#!/bin/sh
# busybox udhcpc event script for lab devices: configure the leased IPv4 address and default route
# on $interface, and nothing else. (Debian's /etc/udhcpc/default.script also rewrites
# /etc/resolv.conf, and /etc is the host's own file system inside a network namespace.)
# The lab copies this file into its temp dir with mode 0755 and passes it with `udhcpc -s`.
# udhcpc exports: interface, ip, mask (prefix length), subnet, router (space separated list), ...
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set dev "$interface" up
    ;;
  bound | renew)
    [ -n "$ip" ] || exit 1
    prefix="${mask:-24}"
    # Drop any other address first, so a changed lease does not leave the old one behind.
    for old in $(ip -4 -o addr show dev "$interface" | awk '{ print $4 }'); do
      [ "$old" = "$ip/$prefix" ] || ip -4 addr del "$old" dev "$interface"
    done
    ip -4 addr replace "$ip/$prefix" dev "$interface"
    gw="${router%% *}"
    # Only the first interface that gets a lease in a namespace owns the default route (the crowd
    # namespace holds hundreds of interfaces on one LAN).
    if [ -n "$gw" ] && ! ip -4 route show default | grep -q .; then
      ip -4 route replace default via "$gw" dev "$interface"
    fi
    ;;
  leasefail | nak)
    ;;
esac
exit 0
