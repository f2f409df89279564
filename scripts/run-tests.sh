#!/usr/bin/env bash
# Run the whole test suite against the cached kernel and module of UPM_FLAVOUR (debug by
# default; make test FLAVOUR=release runs it on the release kernel):
#   1. host: the advice values in include/upm.h match the patched kernel's uapi headers, and
#            upmctl reports the host's unpatched kernel as such;
#   2. VM:   tests/build/upm_tests (optionally only the named tests) with upm.ko loaded,
#            failing on any kernel splat in dmesg;
#   3. VM:   the splat detector itself: a guest that provokes a real WARNING must fail the
#            run (skipped when tests are named).
# The last line is "N passed, M failed[, K skipped]".
#
#   scripts/run-tests.sh [TEST...]
set -uo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "$0")/env.sh"
cd "$UPM_ROOT" || exit 1

flavour=${UPM_FLAVOUR:-debug}
kbuild=$(upm_kbuild_dir "$flavour")
passed=0 failed=0 skipped=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

result() { # name status(0=pass)
	if [ "$2" = 0 ]; then
		echo "ok   $1"
		passed=$((passed + 1))
	else
		echo "FAIL $1"
		failed=$((failed + 1))
	fi
}

make -s -C "$UPM_KSRC" O="$kbuild" LLVM=1 headers_install >/dev/null 2>&1
# The kernel's KSM selftests, which the ksm_selftests test runs with the module loaded.
make -s -C tests ksm-selftests KSRC="$UPM_KSRC" KHDR="$kbuild/usr/include" >/dev/null ||
	upm_log "the kernel's KSM selftests did not build: ksm_selftests will fail"
if (($# == 0)); then
	make -s -C tests abi-check KHDR="$kbuild/usr/include"
	result abi_check $?
	# The host runs a kernel without the series: upmctl must say so, not blame the module.
	if ! grep -q ' upm_register_ops$' /proc/kallsyms; then
		out=$(userspace/upm/target/release/upmctl advise --pid $$ 2>&1)
		rc=$?
		[ "$rc" = 69 ] && grep -q "kernel not patched" <<<"$out"
		result upmctl_kernel_not_patched $?
	fi
	# The crate builds from its package (no path outside it), carries both licenses, and
	# builds without the CLI's dependencies for library users.
	(cd userspace/upm && cargo package --quiet --allow-dirty >/dev/null 2>&1 &&
		tar -tzf target/package/linux-upm-*.crate | grep -c '/LICENSES/\(GPL-2.0\|MIT\)\.txt$' |
		grep -qx 2 && cargo build --quiet --release --lib --no-default-features)
	result cargo_package $?
	# Completions and the manual page come from the clap definitions.
	# (Captured first: grep -q leaving early would SIGPIPE upmctl under pipefail.)
	upmctl=userspace/upm/target/release/upmctl
	completions=$($upmctl completions bash) && manpage=$($upmctl manpage) &&
		grep -q 'complete -F _upmctl' <<<"$completions" &&
		grep -q '^\.TH upmctl 1' <<<"$manpage" && grep -q 'metrics' <<<"$manpage"
	result upmctl_completions_manpage $?
	# make install puts every piece where the unit and modules-load.d expect it; the unit
	# passes systemd's own checks against that tree.
	root=$(mktemp -d) install_failed=0
	make -s install DESTDIR="$root" FLAVOUR="$flavour" >"$root.log" 2>&1 ||
		{ cat "$root.log"; install_failed=1; }
	for f in usr/bin/upmctl usr/lib/upm/libupm_preload.so etc/modprobe.d/upm.conf \
		usr/lib/systemd/system/upm.service usr/lib/modules-load.d/upm.conf \
		usr/share/containers/oci/hooks.d/upm.json usr/share/man/man1/upmctl.1 \
		usr/share/bash-completion/completions/upmctl; do
		[ -s "$root/$f" ] || { echo "    make install: no $f"; install_failed=1; }
	done
	find "$root/lib/modules" -path '*/extra/*' -name upm.ko | grep -q . ||
		{ echo "    make install: no upm.ko"; install_failed=1; }
	if command -v systemd-analyze >/dev/null; then
		systemd-analyze verify --man=no --recursive-errors=no --root="$root" upm.service || install_failed=1
	fi
	# The installed hook description names the installed upmctl.
	python3 -c 'import json, sys; h = json.load(open(sys.argv[1]))
assert h["hook"]["path"] == "/usr/bin/upmctl" and h["stages"] == ["poststart"]' \
		"$root/usr/share/containers/oci/hooks.d/upm.json" || install_failed=1
	result make_install $install_failed
	rm -rf "$root" "$root.log"
	# The Python helper installs as a wheel and works outside the repository.
	pydir=$(mktemp -d)
	# Its distribution name is linux-upm (not PyPI's "upm"), with both licenses in the wheel.
	python3 -m pip wheel --quiet --no-deps -w "$pydir/wheel" userspace/python >/dev/null 2>&1 &&
		python3 -m zipfile -l "$pydir"/wheel/linux_upm-*.whl |
		grep -c 'linux_upm-.*dist-info/licenses/LICENSES/\(GPL-2.0\|MIT\)\.txt ' | grep -qx 2 &&
		python3 -m pip install --quiet --no-deps --target "$pydir/site" "$pydir"/wheel/*.whl \
			>/dev/null 2>&1 &&
		(cd / && PYTHONPATH="$pydir/site" python3 -c '
import re, sys, upm
assert upm.__file__.startswith(sys.argv[1]), upm.__file__
want = dict(re.findall(r"#define (UPM_MADV_\w+)\s+(\d+)", open(sys.argv[2]).read()))
assert upm.MADV_UPM_MERGEABLE == int(want["UPM_MADV_MERGEABLE"])' "$pydir/site" "$UPM_ROOT/include/upm.h")
	result python_package $?
	rm -rf "$pydir"
	# The DaemonSet passes Kubernetes 1.30's and 1.37's schemas with unknown fields rejected,
	# runs only on labelled nodes, mounts only /etc and /var of the node and cleans up in
	# preStop; the image's build file copies only what the repository has.
	k8s=userspace/k8s
	kubernetes-validate --quiet --strict -k 1.30 "$k8s/upm-daemonset.yaml" &&
		kubernetes-validate --quiet --strict -k 1.37 "$k8s/upm-daemonset.yaml" && python3 -c '
import sys, yaml
spec = yaml.safe_load(open(sys.argv[1]))["spec"]["template"]["spec"]
assert spec["nodeSelector"] == {"node.upm/available": "true"}, spec.get("nodeSelector")
for path in (v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v):
    assert path.startswith(("/etc/", "/var/")), path
assert any("preStop" in c.get("lifecycle", {}) for c in spec["containers"])' \
		"$k8s/upm-daemonset.yaml" &&
		sed -n 's/^COPY \([^-][^ ]*\) .*/\1/p' "$k8s/Containerfile" | xargs ls -d >/dev/null
	result k8s_daemonset $?
fi

start=$(date +%s)
if (($# == 0)); then
	# Both suites in one boot: the userspace suite needs the same kernel and module.
	vm_cmd='tests/build/upm_tests; a=$?; tests/vm/userspace.sh; b=$?; exit $((a | b))'
else
	vm_cmd="tests/build/upm_tests $*"
fi
# Our kernels have every feature the tests use (io_uring, THP, hugetlb, cgroup v2): there, a
# skipped test is a failure. Elsewhere upm_tests may skip. The release kernel has no fault
# injection (a debug option): the runner lets the tests marked as needing it skip there.
vm_cmd="export UPM_SKIP_IS_FAILURE=1; $vm_cmd"
scripts/vm-run.sh --flavour "$flavour" -- "$vm_cmd" 2>&1 | tee "$log"
vm_rc=${PIPESTATUS[0]}
suite_failed=0
while read -r vp vf vs; do
	passed=$((passed + vp)) failed=$((failed + vf)) skipped=$((skipped + ${vs:-0}))
	suite_failed=$((suite_failed + vf))
done < <(sed -nE 's/^(vm|userspace): ([0-9]+) passed, ([0-9]+) failed(, ([0-9]+) skipped)?$/\2 \3 \5/p' "$log")
# A splat, a crash or a guest that never finished fails the run even if every test passed.
if [ "$vm_rc" != 0 ] && [ "$suite_failed" = 0 ]; then
	result vm_clean_run 1
fi
upm_log "VM suite took $(($(date +%s) - start)) s"

if (($# == 0)) && [ "$flavour" = debug ]; then
	# LKDTM's WARNING test prints a real "WARNING:" splat; the runner must fail on it (LKDTM
	# is in the debug configuration only). No kmemleak scan there: this boot checks the runner.
	UPM_KMEMLEAK=0 scripts/vm-run.sh --flavour debug --no-module -- \
		'echo WARNING > /sys/kernel/debug/provoke-crash/DIRECT' >"$log" 2>&1
	det_rc=$?
	if [ "$det_rc" != 0 ] && grep -q "kernel splat in guest dmesg" "$log" &&
		grep -q "WARNING:" "$log"; then
		result splat_detector 0
	else
		cat "$log"
		result splat_detector 1
	fi
fi

if ((skipped)); then
	echo "$passed passed, $failed failed, $skipped skipped"
else
	echo "$passed passed, $failed failed"
fi
((failed == 0))
