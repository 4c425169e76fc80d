# Guest job: run the dm_* integration test binaries (listed in /tests.list) as
# root against the real kernel. libtest's output goes to the console, where the
# host reads the totals. A binary that fails or crashes makes the job fail.
#
# DMCTL_VM_FILTER=WORD (dmctl.filter=WORD) passes a libtest name filter.
# DMCTL_VM_ONLY=NAME (kernel command line dmctl.only=NAME) runs just the test
# NAME, in whichever binary has it: the host uses it for the power-cut tests,
# which run in two boots on a persistent disk (DMCTL_VM_PHASE=1, then 2).
failed=0
for bin in $(cat /tests.list); do
    if [ -n "${DMCTL_VM_ONLY:-}" ]; then
        "$bin" --list --format terse 2>/dev/null | grep -qx "$DMCTL_VM_ONLY: test" || continue
        echo "DMCTL-VM: running $DMCTL_VM_ONLY (phase ${DMCTL_VM_PHASE:-}) from ${bin##*/}"
        "$bin" --exact "$DMCTL_VM_ONLY" --test-threads=1 || failed=1
        continue
    fi
    echo "DMCTL-VM: running ${bin##*/}"
    "$bin" --test-threads=1 --skip power_cut ${DMCTL_VM_FILTER:-} || failed=1
done
exit $failed
