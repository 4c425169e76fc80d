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

echo
echo "=== images: a two-layer OCI image built with umoci, imported as a snapshot chain ==="
cd /tmp
umoci init --layout img >/dev/null
umoci new --image img:base >/dev/null
umoci unpack --image img:base bundle >/dev/null
mkdir -p bundle/rootfs/bin bundle/rootfs/etc bundle/rootfs/app
cp /bin/busybox bundle/rootfs/bin/busybox && ln -s busybox bundle/rootfs/bin/sh
echo "version 1" >bundle/rootfs/app/VERSION && echo "debug=true" >bundle/rootfs/etc/app.conf
umoci repack --image img:base bundle >/dev/null
rm -rf bundle && umoci unpack --image img:base bundle >/dev/null
echo "version 2" >bundle/rootfs/app/VERSION && rm bundle/rootfs/etc/app.conf
umoci repack --image img:v2 bundle >/dev/null
echo "(built OCI layout /tmp/img with tags base and v2)"
run dmctl image import demo /tmp/img:v2 --size 256M
run dmctl image import demo /tmp/img --ref base --name app:base --size 256M
run dmctl image import demo /tmp/img:v2 --size 256M
run dmctl image ls demo
run dmctl image inspect demo v2
mkdir -p /mnt/job
run dmctl image warm demo v2 --spares 2
run dmctl image provision demo v2 job1 --mount /mnt/job
echo "(job1 is a warm spare handed out: renamed, its mount moved)"
echo "  /mnt/job/app/VERSION: $(cat /mnt/job/app/VERSION); etc/app.conf: $(cat /mnt/job/etc/app.conf 2>/dev/null || echo '(deleted in v2)')"
echo "built by the CI job" >/mnt/job/app/artifact
rm /mnt/job/bin/sh
echo "(the job wrote app/artifact and deleted bin/sh)"
run dmctl diff demo/job1 -o /tmp/job1.tar
tar -tvf /tmp/job1.tar
run dmctl image commit demo/job1 v3
run dmctl image export demo v3 /tmp/exported
run dmctl image inspect demo v3
run dmctl rm demo/job1 --force
run dmctl ls demo -o name,size,mapped,parent
run dmctl ls demo --tree
run dmctl check demo
run dmctl pool destroy demo --force
echo
echo "demo: OK"
