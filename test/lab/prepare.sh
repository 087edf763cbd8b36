#!/bin/sh
# Pre-script of `npm test` and `npm run demo`: make sure dependencies and the lab's system tools are
# there. Quiet and fast (a few ms) when everything is present.
#  - node_modules missing, or older than package-lock.json: npm ci.
#  - As root, any lab tool missing: apt-get update (once) and install the Debian packages.
#    dnsmasq-base, not dnsmasq: the dnsmasq package starts a system DNS/DHCP service in the root
#    namespace, and the lab only ever runs dnsmasq inside its own namespaces.
#  - Not root and tools missing: say that the lab tests will be skipped (they need root anyway).
#  - As root: the kernel lab's Debian kernel and initramfs (test/vm/prepare-kernel.sh, cached).
set -eu

cd "$(dirname "$0")/../.."

# npm keeps node_modules/.package-lock.json in step with what it installed.
if [ ! -d node_modules ] || [ ! -f node_modules/.package-lock.json ] ||
  [ -n "$(find package-lock.json -newer node_modules/.package-lock.json 2>/dev/null)" ]; then
  echo "prepare: installing node modules (npm ci)" >&2
  # .npmrc loads tsx into every node npm starts; tsx is what is being installed, so not for this one.
  NODE_OPTIONS= npm ci --node-options= --no-audit --no-fund
fi

# command:package pairs
tools="ip:iproute2 nft:nftables dnsmasq:dnsmasq-base udhcpc:udhcpc dhclient:isc-dhcp-client
arping:arping rdisc6:ndisc6 socat:socat haproxy:haproxy iperf3:iperf3 tayga:tayga busybox:busybox curl:curl
qemu-system-x86_64:qemu-system-x86 depmod:kmod wg:wireguard-tools ping:iputils-ping
wireguard-go:wireguard-go promtool:prometheus chromium:chromium"

PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
missing_cmds=""
missing_pkgs=""
for pair in $tools; do
  cmd=${pair%%:*}
  pkg=${pair#*:}
  if ! command -v "$cmd" >/dev/null 2>&1; then
    missing_cmds="$missing_cmds $cmd"
    missing_pkgs="$missing_pkgs $pkg"
  fi
done

if [ -n "$missing_cmds" ] && [ "$(id -u)" -ne 0 ]; then
  echo "prepare: missing lab tools:$missing_cmds; not root, so the network lab tests will be skipped" >&2
  exit 0
fi

if [ -n "$missing_cmds" ]; then
  echo "prepare: installing lab tools:$missing_pkgs" >&2
  export DEBIAN_FRONTEND=noninteractive
  # haproxy's, iperf3's and prometheus's packages would start their services in the root namespace (the lab
  # only wants prometheus's promtool, to check GET /metrics): policy-rc.d says no,
  # for the length of this install only (and only if no policy of the admin's is in place).
  policy=/usr/sbin/policy-rc.d
  own_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  # shellcheck disable=SC2086 # word splitting of the package list is intended
  apt-get install -y -qq --no-install-recommends $missing_pkgs >/dev/null
  [ -n "$own_policy" ] && rm -f "$policy"
fi

[ "$(id -u)" -eq 0 ] || exit 0
sh test/vm/prepare-kernel.sh
