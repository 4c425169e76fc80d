#!/bin/busybox sh
# /init of the dmctl test guest: make the root a mount runc can pivot away
# from, mount the basics, load the modules in order, run /job.sh, report its
# exit code on the console, power off.
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

# First run, on the initramfs itself (the kernel's rootfs): runc cannot
# pivot_root away from rootfs ("pivot_root .: invalid argument": the kernel
# refuses a root mount without a parent). So make / a mount of its own, as
# switch_root does, but without copying anything: bind-mount the rootfs onto
# /mnt, move that mount over / and chroot into it; this script then runs again
# from the top there. runc pivots away from that bind mount (its parent is
# rootfs). Same files, same memory, no size limit: nothing else changes.
if [ ! -e /.dmctl-root-bound ]; then
    : >/.dmctl-root-bound
    mount --bind / /mnt && cd /mnt && mount --move . / && exec chroot . /init
    echo "DMCTL-VM: cannot make / a bind mount of the initramfs"
    echo "DMCTL-VM-EXIT: 99"
    poweroff -f
fi

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/mapper
# containerd and runc: cgroup v2 (runc's cgroupfs driver), ptys, /dev/shm.
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
# /tmp stays part of the initramfs root (already a tmpfs): the project's
# files are staged at their host paths, which may be under /tmp.
mkdir -p /tmp && chmod 1777 /tmp
mount -t tmpfs tmpfs /run
mkdir -p /run/lock/lvm /var/lib
ln -sf /proc/self/mounts /etc/mtab
echo 0 >/proc/sys/kernel/printk_ratelimit 2>/dev/null
# No network, but loopback (registries, servers on 127.0.0.1).
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up

fail() {
    echo "DMCTL-VM: $*"
    echo "DMCTL-VM-EXIT: 99"
    sync
    poweroff -f
}

while read -r m; do
    insmod "/lib/modules/$m.ko" || fail "module $m did not load"
done </lib/modules/order
[ -c /dev/mapper/control ] || fail "/dev/mapper/control missing after dm-mod"
grep -q thin-pool /proc/devices /proc/misc 2>/dev/null
for i in 0 1 2 3 4 5 6 7; do [ -b /dev/loop$i ] || mknod /dev/loop$i b 7 $i; done
[ -c /dev/loop-control ] || fail "/dev/loop-control missing"

# Kernel command line options dmctl.KEY=VALUE become DMCTL_VM_KEY=VALUE.
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        dmctl.*=*) k=${arg#dmctl.}; export "DMCTL_VM_$(echo "${k%%=*}" | tr a-z A-Z)=${arg#*=}" ;;
    esac
done

# Environment the initramfs's parts add for the job (lib.sh), e.g.
# containerd.env: DMCTL_CONTAINERD_SUITE, DMCTL_CONTAINERD_IMAGE(_REF).
for f in /etc/dmctl-vm/*.env; do
    # shellcheck source=/dev/null
    [ -f "$f" ] && . "$f"
done

echo "DMCTL-VM: booted $(uname -r) in $(cut -d' ' -f1 /proc/uptime)s"
export HOME=/root DMCTL_REQUIRE_DM=1
mkdir -p /root
cd /root
sh /job.sh
rc=$?
sync
echo "DMCTL-VM-EXIT: $rc"
poweroff -f
