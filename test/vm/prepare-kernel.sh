#!/bin/sh
# The kernel lab's kernel and initramfs (see test/vm/README.md), kept in .kernel-lab/<kernel version>/
# and pointed to by .kernel-lab/current. Run as root by test/lab/prepare.sh; quiet and quick when
# they are there.
#  - The kernel is the one Debian's linux-image-amd64 depends on: the generic flavour (the cloud one
#    has no 9p). Its package is downloaded and unpacked, never installed.
#  - So is busybox-static, for the initramfs: installing it would remove the busybox package the
#    network lab uses.
#  - The initramfs holds busybox, init.sh as /init and the modules that reach the host's root over
#    9p (virtio, 9p, overlay) in modprobe's order. It is rebuilt when init.sh is newer.
set -eu

cd "$(dirname "$0")/../.."
cache=$PWD/.kernel-lab

kernel_package() {
  apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n 1
}

# apt-cache takes a second or more, and its answer changes only with the package lists.
if [ -f "$cache/current/ready" ] &&
  [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -newer "$cache/current/ready" 2>/dev/null)" ]; then
  version=$(readlink "$cache/current")
else
  pkg=$(kernel_package)
  if [ -z "$pkg" ]; then
    apt-get update -qq
    pkg=$(kernel_package)
  fi
  if [ -z "$pkg" ]; then
    echo "prepare: no Debian kernel package (linux-image-amd64) found for the kernel lab" >&2
    exit 1
  fi
  version=${pkg#linux-image-}
fi
dir=$cache/$version

if [ -f "$dir/ready" ]; then
  touch "$dir/ready"
else
  echo "prepare: kernel lab: downloading and unpacking $pkg and busybox-static" >&2
  mkdir -p "$cache"
  build=$(mktemp -d "$cache/.build-XXXXXX")
  trap 'rm -rf "$build"' EXIT
  download() {
    (cd "$build" && apt-get download -qq -o APT::Sandbox::User=root "$pkg" busybox-static)
  }
  # A stale package list can name a file the mirror no longer has: refresh it once.
  download || { apt-get update -qq && download; }
  dpkg-deb -x "$build"/linux-image-*.deb "$build/root"
  dpkg-deb -x "$build"/busybox-static_*.deb "$build/busybox-static"
  if [ ! -d "$build/root/lib/modules/$version" ] || [ ! -f "$build/root/boot/vmlinuz-$version" ]; then
    echo "prepare: $pkg has no /boot/vmlinuz-$version or /lib/modules/$version" >&2
    exit 1
  fi
  depmod -b "$build/root" "$version"
  mv "$build/busybox-static/bin/busybox" "$build/busybox"
  rm -rf "$build"/*.deb "$build/busybox-static"
  ln -s "root/boot/vmlinuz-$version" "$build/vmlinuz"
  touch "$build/ready"
  rm -rf "$dir"
  mv "$build" "$dir"
  ln -sfn "$version" "$cache/current"
  # Older versions are no use once the current one is ready.
  for old in "$cache"/*; do
    case $(basename "$old") in "$version" | current) ;; *) rm -rf "$old" ;; esac
  done
fi

if [ ! -f "$dir/initramfs.cpio" ] || [ test/vm/init.sh -nt "$dir/initramfs.cpio" ]; then
  tree=$(mktemp -d "$cache/.initramfs-XXXXXX")
  trap 'rm -rf "$tree"' EXIT
  mkdir -p "$tree/bin" "$tree/modules" "$tree/proc" "$tree/sys" "$tree/dev"
  cp "$dir/busybox" "$tree/bin/busybox"
  cp test/vm/init.sh "$tree/init"
  chmod 755 "$tree/init"
  # "insmod /path/x.ko" lines, dependencies first; "builtin x" lines need nothing.
  modprobe -d "$dir/root" -S "$version" --show-depends -a virtio_pci 9pnet_virtio 9p overlay |
    sed -n 's/^insmod \([^ ]*\) *$/\1/p' | while read -r ko; do
      name=$(basename "$ko")
      grep -qx "$name" "$tree/modules/order" 2>/dev/null && continue
      cp "$ko" "$tree/modules/$name"
      echo "$name" >>"$tree/modules/order"
    done
  (cd "$tree" && find . | "$dir/busybox" cpio -o -H newc >"$dir/initramfs.new" 2>/dev/null)
  mv "$dir/initramfs.new" "$dir/initramfs.cpio"
  echo "prepare: kernel lab ready: $dir" >&2
fi
