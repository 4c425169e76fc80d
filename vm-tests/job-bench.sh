# Guest job for vm-tests/bench: run the snapshot latency driver. The host
# passes the directory of the static binaries and the knobs on the kernel command line
# (dmctl.bin=..., dmctl.budget=..., ...), which /init exports as DMCTL_VM_*.
# The driver, floor_snapshot and dmctl are staged at their host paths.
bin=${DMCTL_VM_BIN:?dmctl.bin= missing from the kernel command line}
drv="$bin/examples/bench_snapshot"
[ -x "$drv" ] || { echo "bench: driver $drv missing" >&2; exit 1; }
# For LVM's target check only (see vm-tests/bench); nothing uses the target.
[ ! -f /lib/modules/extra/dm-snapshot.ko ] || insmod /lib/modules/extra/dm-snapshot.ko ||
    echo "bench: insmod dm-snapshot failed (lvm snapshots will fail)"
echo "DMCTL-VM: bench: $(uname -r), $(date -u)"
set -- --in-guest \
    --dmctl "$bin/dmctl" \
    --floor "$bin/examples/floor_snapshot" \
    --work /tmp/bench-snapshot \
    --budget-secs "${DMCTL_VM_BUDGET:-600}" \
    --ops "${DMCTL_VM_OPS:-20}" \
    --levels "${DMCTL_VM_LEVELS:-10,100,1000}"
[ -z "${DMCTL_VM_CONTENDERS:-}" ] || set -- "$@" --only "$DMCTL_VM_CONTENDERS"
"$drv" "$@"
