# SPDX-License-Identifier: GPL-2.0
#
# UPM: user-guided page merging. `make help` lists the targets.
#
# Build outputs (kernel trees, per-flavour builds) live in $(UPM_CACHE), outside the repo,
# so that a fresh clone on the same machine reuses them.

SHELL := /bin/bash
UPM_CACHE ?= $(HOME)/.cache/upm
FLAVOUR ?= debug
KDIR ?= $(UPM_CACHE)/build-$(FLAVOUR)
export UPM_CACHE
export RUSTUP_TOOLCHAIN := 1.95.0
export PATH := $(HOME)/.cargo/bin:$(PATH)

KMAKE = $(MAKE) -C $(KDIR) M=$(CURDIR) LLVM=1

.PHONY: all module setup kernel kernel-info test-programs test test-release mutants mutants-module mutants-ci demo demo-compare bench check \
	checkpatch clippy fmt install \
	rust-analyzer clean help

all: module

help:
	@echo "make                 build src/upm.ko against the cached kernel (FLAVOUR=$(FLAVOUR))"
	@echo "make setup           install packages, virtme-ng, bindgen (idempotent)"
	@echo "make kernel          build the patched kernel (FLAVOUR=debug|release)"
	@echo "make kernel-info     show the cached kernel's version and patches"
	@echo "make test            setup, kernel, module, then the test suite in the debug VM"
	@echo "make test-release    the parity, scaling, stress and race tests in the release kernel (CI)"
	@echo "make test-programs   only build the tests' programs and the preload shim (host)"
	@echo "make test FLAVOUR=release   the same suite on the release kernel"
	@echo "make test TESTS=...  run only the named tests (see tests/upm_tests --list)"
	@echo "make test STRESS_SECS=600 [STRESS_SEED=N]  a longer (or replayed) stress test"
	@echo "make mutants         build deliberately broken modules and kernels; the suite must fail each"
	@echo "make mutants-module  only the module's mutants, in one boot"
	@echo "make mutants-ci      the central mutants and those whose code or tests changed (CI)"
	@echo "make demo            16 ResNet-50 function instances on ONNX Runtime, UPM off and on (DEMO_INSTANCES=16, DEMO_ARGS=\"--runtime numpy --default-malloc\")"
	@echo "make demo-compare    the same instances under UPM, KSM (three ways) and fork from a loaded parent"
	@echo "make bench           UPM against KSM and the floor, release VM (BENCH_MIB=256)"
	@echo "make check           rustfmt, clippy (warnings are errors), checkpatch --strict"
	@echo "make install [DESTDIR=...]  module, upmctl, preload shim, systemd unit, config"

# The objects in src/ belong to one kernel: switching KDIR cleans them first.
module:
	@test -f $(KDIR)/Module.symvers || { echo "no kernel in $(KDIR): run 'make kernel'"; exit 1; }
	@if [ "$$(cat src/.upm-kdir 2>/dev/null)" != "$(KDIR)" ]; then \
		$(KMAKE) clean >/dev/null; echo "$(KDIR)" >src/.upm-kdir; fi
	$(KMAKE) modules

setup:
	scripts/setup.sh

kernel:
	scripts/build-kernel.sh $(FLAVOUR)

kernel-info:
	@cat $(KDIR)/upm-kernel-info

test-programs:
	$(MAKE) -C tests
	$(MAKE) -C userspace/preload
	cargo build --quiet --release --manifest-path userspace/upm/Cargo.toml
	cargo test --quiet --release --manifest-path userspace/upm/Cargo.toml

# The whole suite in the debug kernel (FLAVOUR=release: the release kernel). Its last line is
# "N passed, M failed".
test: setup
	scripts/build-kernel.sh $(FLAVOUR)
	$(MAKE) module FLAVOUR=$(FLAVOUR)
	$(MAKE) test-programs
	UPM_FLAVOUR=$(FLAVOUR) UPM_STRESS_SECS=$(STRESS_SECS) UPM_STRESS_SEED=$(STRESS_SEED) \
		scripts/run-tests.sh $(TESTS)

# The tests whose windows the release kernel's timing moves most (no KASAN, no lockdep: several
# times faster): every parity test against ksmd, the scaling and concurrency tests, the stress
# test and racing_writes. CI runs them after make test.
RELEASE_TESTS = $(shell sed -n 's/^\t{ "\([a-z0-9_]*\)", test_.*/\1/p' \
	tests/vm/ksm_parity_tests.c tests/vm/scale_tests.c tests/vm/stress_tests.c) racing_writes

test-release:
	$(MAKE) test FLAVOUR=release TESTS="$(RELEASE_TESTS)"

# The demo's figures describe what users run: the release kernel. Writes results/demo.{json,png}.
DEMO_INSTANCES ?= 16
DEMO_BUDGET_MIB ?= 1024
DEMO_ARGS ?=
demo: setup
	scripts/build-kernel.sh release
	$(MAKE) module FLAVOUR=release
	$(MAKE) test-programs
	UPM_VM_MEM=8G UPM_RESULTS_DIR=$(CURDIR)/results scripts/vm-run.sh --flavour release -- \
		tests/demo/demo.sh $(DEMO_INSTANCES) $(DEMO_BUDGET_MIB) $(DEMO_ARGS)
	scripts/results-page.py

# UPM against KSM (PR_SET_MEMORY_MERGE: defaults, unthrottled, scan-time advisor) and fork from
# a loaded parent, on the same instances. Writes results/demo_compare.{json,png}.
DEMO_COMPARE_ARGS ?=
demo-compare: setup
	scripts/build-kernel.sh release
	$(MAKE) module FLAVOUR=release
	$(MAKE) test-programs
	# The instances serve their requests in rounds with a progress line each; the idle limit
	# is raised as a margin. The guest CPU has no AVX: under TCG, ONNX Runtime's AVX2/FMA
	# kernels take 5.3 s an inference, its SSE ones 0.5-0.9 s (docs/figures.md).
	UPM_VM_MEM=8G UPM_VM_IDLE_TIMEOUT=3600 UPM_VM_QEMU_OPTS="-cpu Westmere" \
		UPM_RESULTS_DIR=$(CURDIR)/results \
		scripts/vm-run.sh --flavour release -- \
		"cd tests/demo && \$${UPM_PYTHON:-python3} demo_compare.py --instances $(DEMO_INSTANCES) $(DEMO_COMPARE_ARGS) --out \$$UPM_VM_OUT/results"
	scripts/results-page.py

# UPM against KSM and the floor in the same VM, on the release kernel (no debug options), in a
# guest large enough for the 4 GiB ranges. Figures are printed and written to results/bench.json.
BENCH_MIB ?= 256
bench: setup
	scripts/build-kernel.sh release
	$(MAKE) module FLAVOUR=release
	$(MAKE) test-programs
	# Swap off: the bench measures merging. With the tests' zram swap on, kswapd balancing one
	# of the two fake NUMA nodes swapped out 27648 pages of a 4 GiB pair before their twins
	# came (skipped as not present, by design), and the run failed its all-merged check.
	UPM_VM_MEM=12G UPM_VM_APPEND=slab_nomerge UPM_RESULTS_DIR=$(CURDIR)/results scripts/vm-run.sh --flavour release -- \
		'swapoff -a && UPM_COMMIT=$(shell git rev-parse --short=12 HEAD) tests/build/upm_bench $(BENCH_MIB) "$$UPM_VM_OUT/results/bench.json"'
	scripts/results-page.py

# Deliberately broken variants of the module and the kernel series: the suite must fail on each.
mutants: setup
	scripts/build-kernel.sh debug
	$(MAKE) module FLAVOUR=debug
	$(MAKE) test-programs
	scripts/mutants.sh $(MUTANTS)

# The module's mutants only (no kernel rebuild; all in one boot).
mutants-module: setup
	scripts/build-kernel.sh debug
	$(MAKE) module FLAVOUR=debug
	$(MAKE) test-programs
	scripts/mutants.sh $$(cd tests/vm/mutants && ls module-*.patch | sed 's/\.patch$$//')

# What CI runs: the mutants marked "Run-in-CI: always", and every other one whose patch, code
# or tests changed since it was last caught (tests/vm/mutants/caught).
mutants-ci: setup
	scripts/build-kernel.sh debug
	$(MAKE) module FLAVOUR=debug
	$(MAKE) test-programs
	scripts/mutants.sh --ci

check: setup fmt clippy checkpatch
	$(MAKE) -s -C tests isolation
	scripts/test-catalogue.sh --check
	scripts/results-page.py --check

# checkpatch.pl must run from the kernel tree to know its files. That tree is Debian's
# tarball with no history, so checkpatch cannot look up the upstream ids a backport cites
# (UNKNOWN_COMMIT_ID); every other check stays on.
checkpatch:
	@for p in $(CURDIR)/patches/*.patch; do \
		(cd $(UPM_CACHE)/linux-6.12 && scripts/checkpatch.pl --strict --quiet \
			--ignore UNKNOWN_COMMIT_ID $$p) || exit 1; \
	done
	@echo "checkpatch --strict: clean"

fmt:
	rustfmt --edition 2021 --config-path .rustfmt.toml --check src/*.rs
	cargo fmt --manifest-path userspace/upm/Cargo.toml --check

clippy:
	@test -f $(KDIR)/Module.symvers || { echo "no kernel in $(KDIR): run 'make kernel'"; exit 1; }
	rm -f src/*.o src/.*.o.cmd
	$(KMAKE) CLIPPY=1 KRUSTFLAGS="-Dwarnings" modules
	cargo clippy --quiet --release --all-targets --manifest-path userspace/upm/Cargo.toml -- -D warnings

# 6.12's `make M=... rust-analyzer` looks for rust/Makefile in the module tree, so call the
# kernel's generator directly, as rust/Makefile does (core edition 2024 for rustc >= 1.87).
# What an operator installs on a host that runs our kernel: the module (then depmod), upmctl
# (with its manual page and bash completion), the preload shim, the modules-load.d entry
# that loads the module at boot with the options of /etc/modprobe.d/upm.conf (kept if it
# exists), and the unit that orders the container runtimes and the kubelet after it.
install: module
	cargo build --quiet --release --manifest-path userspace/upm/Cargo.toml
	$(MAKE) -C userspace/preload
	$(KMAKE) INSTALL_MOD_PATH=$(abspath $(DESTDIR)/) INSTALL_MOD_DIR=extra modules_install
	install -D -m 755 userspace/upm/target/release/upmctl $(DESTDIR)/usr/bin/upmctl
	install -d $(DESTDIR)/usr/share/man/man1 $(DESTDIR)/usr/share/bash-completion/completions
	userspace/upm/target/release/upmctl manpage >$(DESTDIR)/usr/share/man/man1/upmctl.1
	userspace/upm/target/release/upmctl completions bash \
		>$(DESTDIR)/usr/share/bash-completion/completions/upmctl
	install -D -m 644 userspace/preload/build/libupm_preload.so \
		$(DESTDIR)/usr/lib/upm/libupm_preload.so
	install -D -m 644 userspace/systemd/upm.service $(DESTDIR)/usr/lib/systemd/system/upm.service
	install -D -m 644 userspace/systemd/modules-load.conf \
		$(DESTDIR)/usr/lib/modules-load.d/upm.conf
	install -D -m 644 userspace/oci/upm-hook.json \
		$(DESTDIR)/usr/share/containers/oci/hooks.d/upm.json
	test -e $(DESTDIR)/etc/modprobe.d/upm.conf || \
		install -D -m 644 userspace/systemd/modprobe.conf $(DESTDIR)/etc/modprobe.d/upm.conf

rust-analyzer:
	sysroot=$$(rustc --print sysroot); \
	python3 $(UPM_CACHE)/linux-6.12/scripts/generate_rust_analyzer.py \
		2024 \
		$(UPM_CACHE)/linux-6.12 $(KDIR) $$sysroot $$sysroot/lib/rustlib/src/rust/library \
		$(CURDIR) >rust-project.json
	@echo "wrote rust-project.json"

clean:
	$(KMAKE) clean
	$(MAKE) -C tests clean
	$(MAKE) -C userspace/preload clean
