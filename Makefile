# Shortcuts. The tests need root and QEMU (see README.md); fuzzing needs
# cargo-fuzz (`cargo install cargo-fuzz`) and, for the layer target, root.
#
#   make static                static, non-PIE release binaries in target/HOST-TRIPLE/release
#   make install               make static, then dmctl, man pages, completions and systemd
#                              units under $(DESTDIR)$(PREFIX) (PREFIX=/usr/local)
#   make deb                   the Debian package: target/debian/dmctl_VERSION_ARCH.deb
#   make test-deb              install that package on this host, check it, remove it (root)
#   make test                  ./vm-tests/test-all (host tests, guest tests, power cuts, package)
#   make host-test             ./vm-tests/host-tests (the host tier only; dm tests count as skipped)
#   make demo                  ./vm-tests/demo
#   make fuzz                  every fuzz target for FUZZ_SECONDS (default 60) each
#   make fuzz-TARGET           one target (status units names state_json thin_dump layer oci_digest)
#   make -k fuzz               go on after a target that finds a crash
#
# `make fuzz` is not part of CI's default run. cargo-fuzz needs nightly
# features; RUSTC_BOOTSTRAP=1 enables them on the stable toolchain. Each target
# keeps its growing corpus in fuzz/corpus/TARGET (git-ignored) and starts from
# the seeds in fuzz/seeds/TARGET; a crash is saved in fuzz/artifacts/TARGET.

FUZZ_SECONDS ?= 60
FUZZ_TARGETS := status units names state_json thin_dump layer oci_digest
# -a: debug assertions (and overflow checks) on, so an overflow is a crash.
CARGO_FUZZ ?= RUSTC_BOOTSTRAP=1 cargo fuzz
CARGO_FUZZ_FLAGS ?= -a

PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: static install deb test-deb test host-test demo fuzz fuzz-build $(addprefix fuzz-,$(FUZZ_TARGETS))

# The same build as the guest harness's (vm-tests/cargo-static).
static:
	./vm-tests/cargo-static build --bins

# Completions and man pages come from the binary (dmctl completions SHELL,
# dmctl manpages DIR), generated into target/dist by packaging/build-dist.
install:
	./packaging/build-dist
	./packaging/install-tree "$(DESTDIR)" "$(PREFIX)"

deb:
	./packaging/build-deb

test-deb:
	./packaging/test-deb

test:
	./vm-tests/test-all

host-test:
	./vm-tests/host-tests

demo:
	./vm-tests/demo

fuzz: $(addprefix fuzz-,$(FUZZ_TARGETS))

fuzz-build:
	cd fuzz && $(CARGO_FUZZ) build $(CARGO_FUZZ_FLAGS)

$(addprefix fuzz-,$(FUZZ_TARGETS)): fuzz-%: fuzz-build
	mkdir -p fuzz/corpus/$* fuzz/seeds/$*
	cd fuzz && $(CARGO_FUZZ) run $(CARGO_FUZZ_FLAGS) $* corpus/$* seeds/$* -- \
		-max_total_time=$(FUZZ_SECONDS) -print_final_stats=1
