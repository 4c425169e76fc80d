#!/bin/busybox sh
# /init of the dmctl test guest: mount the basics, load the modules in order,
# run /job.sh, report its exit code on the console, power off.
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/mapper
# /tmp stays part of the initramfs root (already a tmpfs): the project's
# files are staged at their host paths, which may be under /tmp.
mkdir -p /tmp && chmod 1777 /tmp
mount -t tmpfs tmpfs /run
mkdir -p /run/lock/lvm /var/lib
ln -sf /proc/self/mounts /etc/mtab
echo 0 >/proc/sys/kernel/printk_ratelimit 2>/dev/null

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

echo "DMCTL-VM: booted $(uname -r) in $(cut -d' ' -f1 /proc/uptime)s"
export HOME=/root DMCTL_REQUIRE_DM=1
mkdir -p /root
cd /root
sh /job.sh
rc=$?
sync
echo "DMCTL-VM-EXIT: $rc"
poweroff -f
