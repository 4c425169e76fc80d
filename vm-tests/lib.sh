# shellcheck shell=bash
# vm-tests/lib.sh: build a guest (Debian cloud kernel + busybox initramfs) and
# boot it under QEMU/TCG. Sourced by the entry scripts in this directory.
#
# The host kernel has no device-mapper, so everything that touches dm, loop or
# mounts runs here, as root, inside a real kernel. See
# ../shared/notes/guest-kernel.md for what was measured on these machines.
#
# Layout of the guest's initrd: two concatenated cpio archives (the kernel
# unpacks them in order):
#   base.cpio    kernel modules, busybox, e2fsprogs, xfsprogs,
#                thin-provisioning-tools, dmsetup, lvm and their libraries.
#                Cached in $DMCTL_VM_CACHE, keyed by kernel version and this file.
#   project.cpio the project's binaries and test binaries at the same absolute
#                paths as on the host (so env!("CARGO_BIN_EXE_dmctl") resolves),
#                plus /job.sh, the job the guest runs.
# The guest prints "DMCTL-VM-EXIT: N" when the job ends; that decides the exit
# code. "DMCTL-VM-POWERCUT" on the console makes the host kill QEMU at once.

set -euo pipefail

VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$VM_DIR/.." && pwd)
: "${DMCTL_VM_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/dmctl-vm}"
: "${DMCTL_VM_MEM:=3072}"
: "${DMCTL_VM_CPUS:=2}"
: "${DMCTL_VM_TIMEOUT:=1200}"

# Modules in load order, dependencies first (dm-thin-pool fails with
# "unknown symbol" without dm-bio-prison).
GUEST_MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
loop libcrc32c dm-mod dm-bufio dm-persistent-data dm-bio-prison dm-thin-pool
dm-delay dm-flakey xfs overlay"

# Programs the guest carries, by host path. Symlinks (thin_check -> pdata_tools)
# are recreated as symlinks.
GUEST_PROGRAMS="/usr/sbin/mke2fs /usr/sbin/mkfs.ext4 /usr/sbin/e2fsck /usr/sbin/fsck.ext4
/usr/sbin/resize2fs /usr/sbin/tune2fs /usr/sbin/debugfs /usr/sbin/dumpe2fs
/usr/sbin/mkfs.xfs /usr/sbin/xfs_growfs /usr/sbin/xfs_repair /usr/sbin/xfs_db /usr/sbin/xfs_admin
/usr/sbin/pdata_tools /usr/sbin/thin_check /usr/sbin/thin_dump /usr/sbin/thin_ls
/usr/sbin/thin_repair /usr/sbin/thin_restore /usr/sbin/thin_delta /usr/sbin/thin_trim
/usr/sbin/thin_metadata_size /usr/sbin/dmsetup /usr/sbin/lvm /usr/sbin/blkdiscard
/usr/bin/sha256sum /usr/bin/umoci"
GUEST_FILES="/etc/mke2fs.conf"

# The guest runs static, non-PIE builds of the project, every binary of it
# the floors included, so comparisons stay fair: see vm-tests/cargo-static.
HOST_TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
# cargo's target directory: $CARGO_TARGET_DIR if set (relative to the repo,
# where cargo-static runs cargo), else target/.
case "${CARGO_TARGET_DIR:-}" in
    "") TARGET_DIR=$REPO_DIR/target ;;
    /*) TARGET_DIR=$CARGO_TARGET_DIR ;;
    *) TARGET_DIR=$REPO_DIR/$CARGO_TARGET_DIR ;;
esac
BIN_DIR="$TARGET_DIR/$HOST_TRIPLE/release"
cargo_static() { "$VM_DIR/cargo-static" "$@"; }

log() { printf 'vm-tests: %s\n' "$*" >&2; }
die() { printf 'vm-tests: error: %s\n' "$*" >&2; exit 1; }

# Fetch and unpack the Debian cloud kernel once; print the unpack directory.
ensure_kernel() {
    local pkg dir
    mkdir -p "$DMCTL_VM_CACHE"
    if [ -f "$DMCTL_VM_CACHE/kernel.pkg" ]; then
        pkg=$(cat "$DMCTL_VM_CACHE/kernel.pkg")
    else
        pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
            awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
        [ -n "$pkg" ] || die "cannot resolve linux-image-cloud-amd64 (run apt-get update)"
    fi
    dir="$DMCTL_VM_CACHE/$pkg"
    if [ ! -f "$dir/.complete" ]; then
        log "fetching guest kernel $pkg"
        rm -rf "$dir" && mkdir -p "$dir/deb"
        (cd "$dir/deb" && apt-get download "$pkg" >/dev/null 2>&1) ||
            die "apt-get download $pkg failed"
        dpkg-deb -x "$dir"/deb/*.deb "$dir/root"
        rm -rf "$dir/deb"
        touch "$dir/.complete"
        echo "$pkg" >"$DMCTL_VM_CACHE/kernel.pkg"
    fi
    echo "$dir"
}

# Copy one ELF binary (or a symlink to one) into a staging root, with every
# shared library it needs, at the same paths.
stage_binary() {
    local root=$1 bin=$2 lib
    [ -e "$bin" ] || die "missing program $bin (is its package installed?)"
    mkdir -p "$root$(dirname "$bin")"
    if [ -L "$bin" ]; then
        ln -sf "$(readlink "$bin")" "$root$bin"
        stage_binary "$root" "$(readlink -f "$bin")"
        return
    fi
    [ -e "$root$bin" ] || cp "$bin" "$root$bin"
    for lib in $(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' || true); do
        [ -e "$root$lib" ] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}

make_cpio() { # DIR OUT
    (cd "$1" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) >"$2"
}

# Build (or reuse) the base initramfs; print its path.
ensure_base_cpio() {
    local kdir=$1 key out stage kver m path p
    key=$(cat "$VM_DIR/lib.sh" "$VM_DIR/guest-init.sh" | sha256sum | cut -c1-16)
    out="$DMCTL_VM_CACHE/base-$(basename "$kdir")-$key.cpio"
    if [ -f "$out" ]; then echo "$out"; return; fi
    log "building base initramfs"
    stage=$(mktemp -d)
    kver=$(ls "$kdir/root/lib/modules")
    mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,mnt,etc,lib/modules,var/lib}
    cp "$(command -v busybox)" "$stage/bin/busybox"
    file -L "$stage/bin/busybox" | grep -q 'statically linked' ||
        die "busybox is not static (install busybox-static)"
    : >"$stage/lib/modules/order"
    for m in $GUEST_MODULES; do
        path=$(find "$kdir/root/lib/modules/$kver" -name "$m.ko" -o -name "$m.ko.xz" | head -n 1)
        [ -n "$path" ] || die "module $m not found in $kver"
        case "$path" in
            *.xz) xz -dc "$path" >"$stage/lib/modules/$m.ko" ;;
            *) cp "$path" "$stage/lib/modules/$m.ko" ;;
        esac
        echo "$m" >>"$stage/lib/modules/order"
    done
    for p in $GUEST_PROGRAMS; do stage_binary "$stage" "$p"; done
    for p in $GUEST_FILES; do mkdir -p "$stage$(dirname "$p")" && cp "$p" "$stage$p"; done
    # lvm wants a config and its run/lock directories; no udev or lvmetad here.
    mkdir -p "$stage/etc/lvm" "$stage/run/lock/lvm"
    printf 'global {\n use_lvmlockd = 0\n}\nactivation {\n udev_sync = 0\n udev_rules = 0\n monitoring = 0\n}\ndevices {\n obtain_device_list_from_udev = 0\n}\n' \
        >"$stage/etc/lvm/lvm.conf"
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$stage/etc/passwd"
    printf 'root:x:0:\n' >"$stage/etc/group"
    cp "$VM_DIR/guest-init.sh" "$stage/init"
    chmod 0755 "$stage/init"
    make_cpio "$stage" "$out.tmp"
    mv "$out.tmp" "$out"
    rm -rf "$stage"
    echo "$out"
}

# The containerd tests (tests/dm_containerd.rs) need, in the guest: containerd,
# its client and runc shim, runc; containerd's snapshotter conformance suite
# (vm-tests/containerd, a static Go test binary); a tiny image to import. All
# of it is one more cpio archive (containerd.cpio, ~110 MB, cached), appended
# to the initrd of jobs that run the tests (PARTS "tests"), with
# /etc/dmctl-vm/containerd.env, which guest-init.sh sources before the job:
#   DMCTL_CONTAINERD_SUITE      the suite binary (run it with DMCTL_BIN=dmctl)
#   DMCTL_CONTAINERD_IMAGE      a docker-archive tar for `ctr images import`
#   DMCTL_CONTAINERD_IMAGE_REF  the image's name in it
CONTAINERD_PROGRAMS="/usr/bin/containerd /usr/bin/ctr /usr/bin/containerd-shim-runc-v2
/usr/sbin/runc /usr/bin/runc"
GUEST_CONTAINERD_DIR=/opt/dmctl-containerd
CONTAINERD_IMAGE_REF=docker.io/library/dmctl-test:latest
# The line the image's second layer writes to /etc/dmctl-test.
CONTAINERD_IMAGE_LINE="dmctl-test layer 2"

# Build (or reuse) containerd's snapshotter conformance suite against
# `dmctl serve` (vm-tests/containerd/suite_test.go) as a static test binary;
# print its path. Offline: Go in GOPATH mode over Debian's
# golang-github-containerd-containerd-dev in /usr/share/gocode. Cached by the
# Go source, the Go version and this function. ~50 s with a cold Go build
# cache (in $DMCTL_VM_CACHE/go-build unless GOCACHE is set), ~15 s warm.
ensure_containerd_suite() {
    local key out gopath pkg
    command -v go >/dev/null || die "go not found (run vm-tests/install-deps)"
    [ -d /usr/share/gocode/src/github.com/containerd/containerd/snapshots/testsuite ] ||
        die "containerd's Go source is missing (run vm-tests/install-deps)"
    mkdir -p "$DMCTL_VM_CACHE"
    key=$({ cat "$VM_DIR"/containerd/*.go; go version; declare -f ensure_containerd_suite; } |
        sha256sum | cut -c1-16)
    out="$DMCTL_VM_CACHE/containerd-suite-$key.test"
    if [ -x "$out" ]; then echo "$out"; return; fi
    log "building containerd's snapshotter conformance suite (go test -c, offline)"
    gopath=$(mktemp -d)
    pkg="$gopath/src/dmctl-containerd-suite"
    mkdir -p "$pkg"
    cp "$VM_DIR"/containerd/*.go "$pkg/"
    if ! (cd "$pkg" && CGO_ENABLED=0 GO111MODULE=off GOPROXY=off GOFLAGS='' \
        GOPATH="$gopath:/usr/share/gocode" GOCACHE="${GOCACHE:-$DMCTL_VM_CACHE/go-build}" \
        go test -c -o "$out.tmp" . >&2); then
        rm -rf "$gopath" "$out.tmp"
        die "building the containerd suite failed"
    fi
    rm -rf "$gopath"
    mv "$out.tmp" "$out"
    echo "$out"
}

# Build (or reuse) the containerd tests' image, $CONTAINERD_IMAGE_REF, as a
# docker-archive tar (skopeo's layout) for `ctr images import`; print its
# path. Two layers: a static busybox with the /bin links a test needs,
# /etc/passwd and /etc/group; then /etc/dmctl-test ($CONTAINERD_IMAGE_LINE).
# Config: cmd /bin/sh. Made offline with umoci and skopeo, a few seconds.
ensure_containerd_image() {
    local key out work bb a img
    bb=$(command -v busybox)
    file -L "$bb" | grep -q 'statically linked' ||
        die "busybox is not static (install busybox-static)"
    mkdir -p "$DMCTL_VM_CACHE"
    key=$({ declare -f ensure_containerd_image; echo "$CONTAINERD_IMAGE_REF $CONTAINERD_IMAGE_LINE"
        sha256sum <"$bb"; umoci --version; skopeo --version; } | sha256sum | cut -c1-16)
    out="$DMCTL_VM_CACHE/containerd-image-$key.tar"
    if [ -f "$out" ]; then echo "$out"; return; fi
    log "building the containerd test image $CONTAINERD_IMAGE_REF"
    work=$(mktemp -d)
    mkdir -p "$work"/l1/{bin,etc,dev,proc,sys,tmp,root} "$work"/l2/etc
    cp "$bb" "$work/l1/bin/busybox"
    for a in sh echo cat ls true false sleep mkdir touch rm cp mv ln test [ env id \
        stat head tail wc sync mount umount grep sed sha256sum dd df du ps kill; do
        ln -s busybox "$work/l1/bin/$a"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' \
        >"$work/l1/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$work/l1/etc/group"
    chmod 1777 "$work/l1/tmp"
    chmod 0700 "$work/l1/root"
    echo "$CONTAINERD_IMAGE_LINE" >"$work/l2/etc/dmctl-test"
    for a in l1 l2; do
        tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
            -C "$work/$a" -cf "$work/$a.tar" .
    done
    img="$work/oci:latest"
    {
        umoci init --layout "$work/oci" &&
            umoci new --image "$img" &&
            umoci raw add-layer --image "$img" "$work/l1.tar" &&
            umoci raw add-layer --image "$img" "$work/l2.tar" &&
            umoci config --image "$img" --config.cmd /bin/sh \
                --config.env PATH=/usr/sbin:/usr/bin:/sbin:/bin --config.workingdir / &&
            skopeo --insecure-policy copy -q "oci:$img" \
                "docker-archive:$out.tmp:$CONTAINERD_IMAGE_REF"
    } >&2 || { rm -rf "$work" "$out.tmp"; die "building the containerd test image failed"; }
    rm -rf "$work"
    mv "$out.tmp" "$out"
    echo "$out"
}

# Build (or reuse) the containerd cpio (see CONTAINERD_PROGRAMS); print its
# path. Cached by the programs (size, mtime), the suite, the image and this
# function.
ensure_containerd_cpio() {
    local suite image key out stage p
    # In a command substitution errexit is off: exit on failure by hand.
    suite=$(ensure_containerd_suite) || exit 1
    image=$(ensure_containerd_image) || exit 1
    for p in $CONTAINERD_PROGRAMS; do
        [ -e "$p" ] || die "missing program $p (run vm-tests/install-deps)"
    done
    # shellcheck disable=SC2086 # word splitting of the list is wanted
    key=$({ declare -f ensure_containerd_cpio stage_binary; echo "$suite $image $GUEST_CONTAINERD_DIR"
        stat -L -c '%n %s %Y' $CONTAINERD_PROGRAMS; } | sha256sum | cut -c1-16)
    out="$DMCTL_VM_CACHE/containerd-$key.cpio"
    if [ -f "$out" ]; then echo "$out"; return; fi
    log "building the containerd initramfs part"
    stage=$(mktemp -d)
    for p in $CONTAINERD_PROGRAMS; do stage_binary "$stage" "$p"; done
    mkdir -p "$stage$GUEST_CONTAINERD_DIR" "$stage/etc/dmctl-vm"
    cp "$suite" "$stage$GUEST_CONTAINERD_DIR/snapshots-suite.test"
    cp "$image" "$stage$GUEST_CONTAINERD_DIR/image.tar"
    {
        echo "export DMCTL_CONTAINERD_SUITE=$GUEST_CONTAINERD_DIR/snapshots-suite.test"
        echo "export DMCTL_CONTAINERD_IMAGE=$GUEST_CONTAINERD_DIR/image.tar"
        echo "export DMCTL_CONTAINERD_IMAGE_REF=$CONTAINERD_IMAGE_REF"
    } >"$stage/etc/dmctl-vm/containerd.env"
    make_cpio "$stage" "$out.tmp"
    mv "$out.tmp" "$out"
    rm -rf "$stage"
    echo "$out"
}

# has_part PARTS WORD: true if the space-separated PARTS contains WORD.
has_part() { [[ " $1 " == *" $2 "* ]]; }

# build_project LIST [PARTS]: build the static release dmctl and, as PARTS
# asks (words "examples" and "tests"; default both), the examples and the
# dm_* integration tests (the tests that need the kernel). Writes the paths of
# the dm_* test executables to the file LIST, one per line (empty without
# "tests"). Cargo's progress goes to stderr.
build_project() {
    local list=$1 parts=${2-examples tests} what=(--bins) desc=dmctl
    if has_part "$parts" examples; then what+=(--examples) desc+=", examples"; fi
    has_part "$parts" tests && desc+=", dm_* integration tests"
    log "building $desc (cargo --release, static; a first build takes ~10 minutes on 2 CPUs)"
    cargo_static build "${what[@]}" || die "cargo build failed"
    : >"$list"
    has_part "$parts" tests || return 0
    # One build: the executables from cargo's JSON on stdout, its progress and
    # diagnostics on stderr.
    cargo_static test --no-run --test 'dm_*' --message-format=json-render-diagnostics >"$list.json" ||
        die "cargo test --no-run failed"
    jq -r 'select(.reason == "compiler-artifact" and .executable != null
                  and (.target.kind | any(. == "test")) and (.target.name | startswith("dm_")))
           | .executable' <"$list.json" >"$list" || die "cannot read cargo's JSON output"
    rm -f "$list.json"
    [ -s "$list" ] || die "no dm_* test binaries found"
}

# build_project_cpio JOB TESTS [PARTS]: stage the project's files (dmctl, the
# test executables listed in the file TESTS, the examples if PARTS has
# "examples") and JOB (a shell script run as /job.sh); print the path of the
# project cpio.
build_project_cpio() {
    local job=$1 tests=$2 parts=${3-examples tests} stage out f
    stage=$(mktemp -d)
    for f in "$BIN_DIR"/dmctl $(cat "$tests"); do
        stage_binary "$stage" "$f"
    done
    if has_part "$parts" examples; then
        for f in "$BIN_DIR"/examples/*; do
            # Skip cargo's hashed copies (NAME-HASH); match the file name only,
            # the target triple in the path has dashes too.
            [ -f "$f" ] && [ -x "$f" ] && case "${f##*/}" in *-*) ;; *) stage_binary "$stage" "$f" ;; esac
        done
    fi
    mkdir -p "$stage/usr/bin"
    ln -s "$BIN_DIR/dmctl" "$stage/usr/bin/dmctl"
    mkdir -p "$stage$REPO_DIR/vm-tests"
    cp -r "$REPO_DIR"/vm-tests/*.sh "$stage$REPO_DIR/vm-tests/"
    cp "$job" "$stage/job.sh"
    cp "$tests" "$stage/tests.list"
    chmod 0755 "$stage/job.sh"
    out=$(mktemp --suffix=.cpio)
    make_cpio "$stage" "$out"
    rm -rf "$stage"
    echo "$out"
}

# boot_guest INITRD LOG [DISK] [APPEND]: boot, stream the console to stdout and
# LOG, return the job's exit code. A guest that never reports one fails.
boot_guest() {
    local initrd=$1 logf=$2 disk=${3:-} append=${4:-} kernel qpid rc waited=0
    kernel=$(ls "$KERNEL_DIR"/root/boot/vmlinuz-*)
    # no_timer_check: on a loaded host the kernel's early timer check under
    # TCG fails now and then ("IO-APIC + timer doesn't work!", a panic).
    # shellcheck disable=SC2054 # the commas are QEMU's
    local args=(-accel tcg -cpu max -m "$DMCTL_VM_MEM" -smp "$DMCTL_VM_CPUS"
        -kernel "$kernel" -initrd "$initrd"
        -append "console=ttyS0 quiet loglevel=3 panic=-1 no_timer_check dmctl.bin=$BIN_DIR $append"
        -nographic -no-reboot -monitor none -serial stdio -nic none
        -fw_cfg name=etc/sercon-port,string=0)
    if [ -n "$disk" ]; then
        args+=(-drive "file=$disk,if=virtio,format=raw,cache=writeback")
    fi
    : >"$logf"
    # sercon-port=0 keeps SeaBIOS off the serial console: it wrote "ESC c
    # ESC[?7l ESC[2J" (reset, line wrap off, clear) to the user's terminal.
    # QEMU warns that the name lacks "opt/" (SeaBIOS reads exactly this
    # name): drop that line. Any other escape sequence is filtered out before
    # the terminal and the log see it, as are the serial console's CRs.
    # In a subshell with stderr to /dev/null: bash reports QEMU's SIGKILL (a
    # power cut) as "Killed" there, not on the terminal.
    (qemu-system-x86_64 "${args[@]}" </dev/null 2>&1 |
        LC_ALL=C sed -u -e '/externally provided fw_cfg item names/d' -e 's/\r//g' \
            -e 's|\x1b\[[0-?]*[ -/]*[@-~]||g' -e 's|\x1b[()].||g' -e 's|\x1b.\?||g' |
        tee -a "$logf") 2>/dev/null &
    # $! is the subshell's pid; find QEMU's by its initrd argument.
    sleep 0.2
    qpid=$(pgrep -n -f -- "-initrd $initrd" || true)
    while [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; do
        if grep -q '^DMCTL-VM-POWERCUT' "$logf"; then
            log "power cut requested: killing QEMU (SIGKILL)"
            kill -9 "$qpid" 2>/dev/null || true
            break
        fi
        if grep -q '^DMCTL-VM-EXIT:' "$logf"; then
            # Give poweroff a moment, then make sure QEMU is gone.
            sleep 2
            kill -9 "$qpid" 2>/dev/null || true
            break
        fi
        sleep 0.2
        waited=$((waited + 1))
        if [ "$waited" -gt $((DMCTL_VM_TIMEOUT * 5)) ]; then
            log "guest timed out after ${DMCTL_VM_TIMEOUT}s"
            kill -9 "$qpid" 2>/dev/null || true
            wait || true
            return 124
        fi
    done
    wait || true
    if grep -q '^DMCTL-VM-POWERCUT' "$logf"; then
        return 0
    fi
    rc=$(sed -n 's/^DMCTL-VM-EXIT: \([0-9]*\).*/\1/p' "$logf" | tail -n 1)
    if [ -z "$rc" ]; then
        log "guest ended without reporting an exit code (boot failure or crash)"
        return 125
    fi
    return "$rc"
}

# run_host_tests LOG [ARGS]: the host tier, `cargo test ARGS` (the ordinary
# debug build), its output on stdout and in LOG. libtest counts a dm test that
# skipped on a host without device-mapper as passed; these do not: sets
# host_pass (passed and not skipped), host_fail, host_skip (tests that printed
# "skipped: needs device-mapper: NAME") and host_rc (non-zero if cargo test
# failed or printed no totals).
# shellcheck disable=SC2034 # the host_* variables are for the callers
run_host_tests() {
    local logf=$1
    shift
    host_rc=0
    (cd "$REPO_DIR" && cargo test --color never "$@" 2>&1) | tee "$logf" || host_rc=1
    read -r host_pass host_fail < <(sum_results "$logf")
    # Anywhere in a line: the message is written past libtest's capture and
    # may land after a "test NAME ... " that is still waiting for its result.
    host_skip=$(grep -o 'skipped: needs device-mapper' "$logf" | wc -l)
    host_pass=$((host_pass - host_skip))
    grep -q '^test result:' "$logf" || host_rc=1
}

# The host tier's summary line (test-all, host-tests).
host_summary() {
    echo "host:  $host_pass passed, $host_fail failed, $host_skip skipped (need device-mapper: they run in the guest)"
}

# Sum libtest's "test result:" lines of a log: prints "passed failed".
sum_results() {
    awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
         END { print p + 0, f + 0 }' "$1"
}

# Names of the power-cut tests in the staged test binaries.
power_cut_tests() {
    local bin
    for bin in $TEST_BINARIES; do
        "$bin" --list --format terse 2>/dev/null | sed -n 's/^\(.*power_cut[^:]*\): test$/\1/p'
    done
}

# power_cut_test NAME WORKDIR [SEED]: phase 1 on a fresh disk until the guest
# asks for the power cut (QEMU is SIGKILLed), phase 2 on the same disk. Both
# boots get dmctl.seed=SEED (DMCTL_VM_SEED in the guest) if SEED is given.
# Returns 0 if phase 2 passed; on failure the two console logs are kept in
# $DMCTL_POWER_CUT_LOGS (default $DMCTL_VM_CACHE/power-cut-failures).
power_cut_test() {
    local t=$1 work=$2 seed=${3:-} disk rc p f args ok=1
    disk="$work/disk.img"
    args="dmctl.only=$t${seed:+ dmctl.seed=$seed}"
    rm -f "$disk" && truncate -s 8G "$disk"
    log "power-cut test $t${seed:+ (seed $seed)}: phase 1"
    rc=0
    boot_guest "${INITRD_LEAN:-$INITRD}" "$work/cut1.log" "$disk" "$args dmctl.phase=1" || rc=$?
    : >"$work/cut2.log"
    if [ "$rc" -ne 0 ] || ! grep -q '^DMCTL-VM-POWERCUT' "$work/cut1.log"; then
        log "power-cut test $t: phase 1 did not reach the power cut"
        ok=0
    else
        log "power-cut test $t: phase 2, booting again on the same disk"
        rc=0
        boot_guest "${INITRD_LEAN:-$INITRD}" "$work/cut2.log" "$disk" "$args dmctl.phase=2" || rc=$?
        read -r p f < <(sum_results "$work/cut2.log")
        [ "$rc" -eq 0 ] && [ "$p" -ge 1 ] && [ "$f" -eq 0 ] || ok=0
    fi
    rm -f "$disk"
    if [ "$ok" -eq 0 ]; then
        local keep="${DMCTL_POWER_CUT_LOGS:-$DMCTL_VM_CACHE/power-cut-failures}/$t-${seed:-noseed}-$(date +%Y%m%d-%H%M%S)"
        mkdir -p "$keep" && cp "$work/cut1.log" "$work/cut2.log" "$keep/"
        log "power-cut test $t${seed:+ (seed $seed)} FAILED; console logs kept in $keep"
        return 1
    fi
}

# run_power_cuts WORKDIR: every power-cut test once, except the random-mix
# ones (name contains random_mix), which run DMCTL_POWER_CUTS times (default
# 3), each with a new seed (the host's DMCTL_VM_SEED, if set, is the first;
# with DMCTL_VM_SEED_ALL=1 it is every one, to chase a timing-dependent failure).
# Sets cut_pass and cut_fail (runs), mix_cuts and mix_survived (random-mix
# cuts) and mix_failed_seeds.
run_power_cuts() {
    local work=$1 t n i seed
    n=${DMCTL_POWER_CUTS:-3}
    [[ "$n" =~ ^[0-9]+$ ]] || die "DMCTL_POWER_CUTS=$n is not a number"
    cut_pass=0 cut_fail=0 mix_cuts=0 mix_survived=0 mix_failed_seeds=""
    for t in $(power_cut_tests); do
        case "$t" in
            *random_mix*)
                for ((i = 1; i <= n; i++)); do
                    if [ -n "${DMCTL_VM_SEED:-}" ] && { [ "$i" -eq 1 ] || [ "${DMCTL_VM_SEED_ALL:-}" = 1 ]; }; then
                        seed=$DMCTL_VM_SEED
                    else
                        seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
                    fi
                    log "random-mix power cut $i of $n (seed $seed)"
                    mix_cuts=$((mix_cuts + 1))
                    if power_cut_test "$t" "$work" "$seed"; then
                        cut_pass=$((cut_pass + 1)) mix_survived=$((mix_survived + 1))
                    else
                        cut_fail=$((cut_fail + 1)) mix_failed_seeds+=" $seed"
                    fi
                    log "power cuts survived so far: $mix_survived of $mix_cuts"
                done
                ;;
            *)
                if power_cut_test "$t" "$work"; then
                    cut_pass=$((cut_pass + 1))
                else
                    cut_fail=$((cut_fail + 1))
                fi
                ;;
        esac
    done
}

# The line the reliability report quotes.
power_cuts_summary() {
    echo "power cuts survived: $mix_survived of $mix_cuts${mix_failed_seeds:+ (failed seeds:$mix_failed_seeds)}"
}

# prepare_guest JOB [PARTS]: everything up to a bootable initrd in $INITRD.
# PARTS says what the job needs besides dmctl: "examples" (the benchmark
# drivers), "tests" (the dm_* test binaries, and containerd with its suite
# and test image for tests/dm_containerd.rs), "containerd" (containerd
# without the tests, for vm-tests/bench-containerd); default examples and tests. The demo needs
# neither: prepare_guest JOB "". With containerd, INITRD_LEAN is the same
# initrd without it (~110 MB, ~3 s less per boot), for the power-cut tests'
# many boots; remove both when done ("${INITRD_LEAN:-}" may be empty).
prepare_guest() {
    local job=$1 parts=${2-examples tests} tests extra=() ccpio
    KERNEL_DIR=$(ensure_kernel)
    BASE_CPIO=$(ensure_base_cpio "$KERNEL_DIR")
    if has_part "$parts" tests || has_part "$parts" containerd; then
        ccpio=$(ensure_containerd_cpio)
        extra+=("$ccpio")
    fi
    tests=$(mktemp)
    build_project "$tests" "$parts"
    TEST_BINARIES=$(cat "$tests")
    PROJECT_CPIO=$(build_project_cpio "$job" "$tests" "$parts")
    INITRD=$(mktemp --suffix=.initrd)
    cat "$BASE_CPIO" "${extra[@]}" "$PROJECT_CPIO" >"$INITRD"
    INITRD_LEAN=
    if [ "${#extra[@]}" -gt 0 ]; then
        INITRD_LEAN=$(mktemp --suffix=.initrd)
        cat "$BASE_CPIO" "$PROJECT_CPIO" >"$INITRD_LEAN"
    fi
    rm -f "$tests" "$PROJECT_CPIO"
}
