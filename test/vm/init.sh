#!/bin/busybox sh
# /init of the kernel lab's initramfs (prepare-kernel.sh puts it there; vm.ts boots it).
# The kernel command line gives two paths in the host's file system:
#   dgshare    a host directory, exported read-write as 9p tag "dgshare", mounted at the same path;
#              it holds argv (the command, one argument per line) and receives status
#   dgmodules  the unpacked kernel's /lib/modules/<version>
# The host's root (9p tag "dgroot", read-only) goes under a tmpfs overlay; the command runs there,
# as `env ARGV...`, with stdin /dev/null and its output on the console; then the VM powers off.
# /proc, /sys, /dev and /run are the guest's own; /tmp stays the overlay's, since a checkout (CI's
# clone) may live there.
/bin/busybox --install -s /bin
export PATH=/bin

die() {
  echo "kernel lab init: $*"
  poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/null >/dev/console 2>&1

while read -r m; do
  insmod "/modules/$m" || die "insmod $m failed"
done </modules/order

mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro dgroot /lower || die "cannot mount the host's root"
mount -t tmpfs -o mode=755 tmpfs /rw
mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || die "cannot mount the overlay"

r=/newroot
mount -t proc proc $r/proc
mount -t sysfs sysfs $r/sys
mount -t devtmpfs devtmpfs $r/dev
mkdir -p $r/dev/pts $r/dev/shm
mount -t devpts devpts $r/dev/pts
mount -t tmpfs tmpfs $r/dev/shm
mount -t tmpfs -o mode=755 tmpfs $r/run
mkdir -p $r/run/lock
# For the power-off at the end: the 9p root may be gone by then.
cp /bin/busybox $r/run/busybox

modules=$r/lib/modules/$(uname -r)
mkdir -p "$modules"
mount --bind "$r$dgmodules" "$modules" || die "no modules at $dgmodules"
mkdir -p "$r$dgshare"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 dgshare "$r$dgshare" || die "cannot mount the share"

hostname kernel-lab
ip link set lo up

set --
while IFS= read -r a; do
  set -- "$@" "$a"
done <"$r$dgshare/argv"
# PID 1 itself changes root: kernel threads share its root, so the kernel's module autoloading
# then finds the host's /sbin/modprobe and the modules above. The output goes through a pipe, not
# to the console itself: the command must not see a terminal.
exec chroot $r /bin/sh -c '
share=$1
shift
{
  /usr/bin/env "$@"
  echo $? >"$share/status"
  # What the command left running may hold this pipe open: power off 5 s later all the same.
  (/run/busybox sleep 5; /run/busybox poweroff -f) >/dev/null 2>&1 &
} 2>&1 | cat
exec /run/busybox poweroff -f' init "$dgshare" "$@"
