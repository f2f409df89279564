#!/usr/bin/env bash
# Runs in the VM after upm_tests: upmctl, the Rust library's errors and the Python helper.
# Prints "userspace: N passed, M failed".
set -u
cd "$(dirname "$0")/.." || exit 2
upmctl=userspace/upm/target/release/upmctl
passed=0 failed=0
check() { # name command...
	local name=$1
	shift
	if "$@"; then
		echo "ok   $name"
		passed=$((passed + 1))
	else
		echo "FAIL $name"
		failed=$((failed + 1))
	fi
}

status_json() { $upmctl status --json | grep -q '"pages_sharing": [0-9]'; }
check upmctl_status_json status_json

ready=$(mktemp)
rm -f "$ready"
tests/build/dup_holder 8 "$ready" &
holder=$!
for _ in $(seq 100); do [ -s "$ready" ] && break; sleep 0.1; done
merged_kib() { $upmctl show --pid "$holder" | sed -E 's/.*merged ([0-9]+) KiB.*/\1/'; }

check upmctl_show_before test "$(merged_kib)" = 0
unpriv() {
	# Without CAP_SYS_NICE (another user): refused with a clear message, nothing merged.
	out=$(setpriv --reuid=65534 --regid=65534 --clear-groups $upmctl advise --pid "$holder" 2>&1)
	[ $? -ne 0 ] && grep -q "permission denied" <<<"$out" && [ "$(merged_kib)" = 0 ]
}
check upmctl_advise_unprivileged unpriv
advise_ok() {
	$upmctl advise --pid "$holder" >/dev/null && [ "$(merged_kib)" -ge 8192 ] &&
		[ "$(cat /sys/kernel/mm/upm/pages_sharing)" -ge 2048 ]
}
check upmctl_advise_running_process advise_ok
unmerge_ok() { $upmctl unmerge --pid "$holder" >/dev/null && [ "$(merged_kib)" = 0 ]; }
check upmctl_unmerge unmerge_ok
kill -TERM "$holder"
check dup_holder_contents_intact wait "$holder"

no_such() { out=$($upmctl show --pid 999999 2>&1); [ $? -ne 0 ] && grep -q "no such process" <<<"$out"; }
check upmctl_no_such_process no_such
no_module() {
	rmmod upm || return 1
	out=$($upmctl advise --pid $$ 2>&1)
	local rc=$?
	insmod "$UPM_MODULE" || return 1
	[ $rc -ne 0 ] && grep -q "module not loaded" <<<"$out"
}
check upmctl_module_not_loaded no_module
check python_numpy_advise_all "${UPM_PYTHON:-python3}" tests/test_python.py

echo "userspace: $passed passed, $failed failed"
[ "$failed" = 0 ]
