# Guest job for vm-tests/bench-containerd: run the containerd benchmark
# driver. The directory of the static binaries and the knobs come on the
# kernel command line (dmctl.bin=..., dmctl.runs=...), exported by /init as
# DMCTL_VM_*; the image comes from the containerd part of the initrd.
bin=${DMCTL_VM_BIN:?dmctl.bin= missing from the kernel command line}
drv="$bin/examples/bench_containerd"
[ -x "$drv" ] || { echo "bench-containerd: driver $drv missing" >&2; exit 1; }
echo "DMCTL-VM: bench-containerd: $(uname -r), $(date -u)"
"$drv" --in-guest \
    --dmctl "$bin/dmctl" \
    --image "${DMCTL_CONTAINERD_IMAGE:?}" \
    --ref "${DMCTL_CONTAINERD_IMAGE_REF:?}" \
    --runs "${DMCTL_VM_RUNS:-50}" \
    --burst "${DMCTL_VM_BURST:-20}" \
    --spares "${DMCTL_VM_SPARES:-4}" \
    --prepares "${DMCTL_VM_PREPARES:-50}"
