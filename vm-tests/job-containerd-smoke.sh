# Guest job of vm-tests/containerd-smoke: containerd + runc work in the guest.
# Starts containerd with its own config, root, state and socket (plus a dmctl
# proxy plugin entry with nothing behind it), imports the test image
# ($DMCTL_CONTAINERD_IMAGE) into the built-in overlayfs snapshotter, runs it
# with `ctr run --rm` (the output and the exit code must come through), and
# checks that the conformance suite binary starts. Prints timings.
up() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(up)" 'BEGIN { printf "%.2f s", b - a }'; }
say() { echo "containerd-smoke: $*"; }
mem() { awk '/^MemAvailable:/ { printf "%d MB available", $2 / 1024 }' /proc/meminfo; }
d=$(mktemp -d /tmp/containerd-smoke.XXXXXX)
fail() {
    say "FAIL: $*"
    [ -f "$d/containerd.log" ] && tail -n 40 "$d/containerd.log"
    exit 1
}
[ -n "${DMCTL_CONTAINERD_IMAGE:-}" ] || fail "DMCTL_CONTAINERD_IMAGE is not set"
say "$(mem); root: $(awk '$2 == "/" { print $3 }' /proc/mounts | tail -n 1); cgroup2: $(cat /sys/fs/cgroup/cgroup.controllers)"
mkdir -p /run/dmctl
cat >"$d/config.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$d/containerd.sock"
[proxy_plugins]
  [proxy_plugins.dmctl]
    type = "snapshot"
    address = "/run/dmctl/x.sock"
EOF
ctr() { command ctr -a "$d/containerd.sock" "$@"; }

t=$(up)
containerd --config "$d/config.toml" >"$d/containerd.log" 2>&1 &
cpid=$!
i=0
until ctr version >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -le 600 ] || fail "containerd did not answer within 60 s"
    kill -0 "$cpid" 2>/dev/null || fail "containerd exited"
    sleep 0.1
done
say "containerd answers after $(since "$t")"
ctr plugins ls | grep -E 'snapshotter|runtime' | sed 's/^/  /'

t=$(up)
ctr images import --snapshotter overlayfs "$DMCTL_CONTAINERD_IMAGE" || fail "ctr images import"
say "import: $(since "$t")"
ctr images ls -q | grep -qx "$DMCTL_CONTAINERD_IMAGE_REF" || fail "image $DMCTL_CONTAINERD_IMAGE_REF not listed"

t=$(up)
out=$(ctr run --rm --snapshotter overlayfs "$DMCTL_CONTAINERD_IMAGE_REF" c1 \
    /bin/sh -c 'cat /etc/dmctl-test; exit 3')
rc=$?
say "run: $(since "$t"), exit code $rc, output: $out"
[ "$rc" -eq 3 ] || fail "ctr run: exit code $rc, expected 3"
[ "$out" = "dmctl-test layer 2" ] || fail "ctr run: unexpected output"

t=$(up)
out=$(ctr run --rm --snapshotter overlayfs "$DMCTL_CONTAINERD_IMAGE_REF" c2 /bin/true)
rc=$?
say "second run (/bin/true): $(since "$t"), exit code $rc"
[ "$rc" -eq 0 ] || fail "second ctr run"

t=$(up)
list=$("$DMCTL_CONTAINERD_SUITE" -test.list .) || fail "suite binary: -test.list"
say "suite -test.list: $(since "$t"): $list"
[ "$list" = TestSnapshotterSuite ] || fail "suite lists: $list"

kill -TERM "$cpid"
wait "$cpid"
say "containerd stopped (exit $?); $(mem)"
say "PASS"
