# Guest job for the demo (the README's first command): dmctl builds a pool,
# a three-level snapshot chain with different content at each level, shows
# the tree and the pool's status, checks its metadata against the kernel's,
# and survives a pool deactivate/activate cycle. Every command is printed.
set -e
export DMCTL_ROOT=/var/lib/dmctl
run() {
    echo
    echo "\$ $*"
    "$@"
}
mkdir -p /mnt/base /mnt/layer1 /mnt/layer2
run dmctl doctor || true
run dmctl pool create demo --data-size 10G
run dmctl create demo/base --size 1G --fs ext4
run dmctl mount demo/base /mnt/base
echo "written in base" >/mnt/base/id.txt
mkdir -p /mnt/base/etc && echo "base config" >/mnt/base/etc/app.conf
echo "(wrote /mnt/base/id.txt and /mnt/base/etc/app.conf)"
run dmctl snapshot demo/base demo/layer1
run dmctl mount demo/layer1 /mnt/layer1
echo "written in layer1" >/mnt/layer1/id.txt && echo "layer1 config" >/mnt/layer1/etc/app.conf
echo "(changed id.txt and etc/app.conf in layer1)"
run dmctl snapshot demo/layer1 demo/layer2
run dmctl mount demo/layer2 /mnt/layer2
echo "written in layer2" >/mnt/layer2/id.txt && rm /mnt/layer2/etc/app.conf
echo "(changed id.txt, deleted etc/app.conf in layer2)"
for l in base layer1 layer2; do
    echo "  /mnt/$l/id.txt: $(cat /mnt/$l/id.txt); etc/app.conf: $(cat /mnt/$l/etc/app.conf 2>/dev/null || echo '(deleted)')"
done
run dmctl ls demo --tree
run dmctl ls
run dmctl pool status demo
for l in layer2 layer1 base; do run dmctl umount demo/$l; done
run dmctl check demo
run dmctl pool deactivate demo
run dmctl pool activate demo
run dmctl mount demo/layer1 /mnt/layer1 --ro
echo "  after deactivate/activate, layer1 says: $(cat /mnt/layer1/id.txt)"
test "$(cat /mnt/layer1/id.txt)" = "written in layer1"
run dmctl umount demo/layer1
run dmctl rm demo/layer2
run dmctl info demo/layer1
run dmctl pool destroy demo --force
echo
echo "demo: OK"
