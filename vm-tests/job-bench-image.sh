# Guest job for vm-tests/bench-image: run the image import / provisioning
# driver. The host passes the directory of the static binaries and the knobs on the kernel
# command line (dmctl.bin=..., dmctl.mb=..., ...), which /init exports as
# DMCTL_VM_*. The driver and dmctl are staged at their host paths.
bin=${DMCTL_VM_BIN:?dmctl.bin= missing from the kernel command line}
drv="$bin/examples/bench_image"
[ -x "$drv" ] || { echo "bench-image: driver $drv missing" >&2; exit 1; }
grep -qw overlay /proc/filesystems || { echo "bench-image: no overlay in /proc/filesystems" >&2; exit 1; }
command -v umoci >/dev/null || { echo "bench-image: umoci missing" >&2; exit 1; }
echo "DMCTL-VM: bench-image: $(uname -r), $(date -u)"
"$drv" --in-guest \
    --dmctl "$bin/dmctl" \
    --floor "$bin/examples/floor_snapshot" \
    --work /tmp/bench-image \
    --mb "${DMCTL_VM_MB:-80}" \
    --layers "${DMCTL_VM_LAYERS:-3}" \
    --reps "${DMCTL_VM_REPS:-3}" \
    --provisions "${DMCTL_VM_PROVISIONS:-100}"
