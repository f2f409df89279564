#!/usr/bin/env bash
# Runs in the VM after upm_tests: upmctl, the Rust library's errors and the Python helper.
# Prints "userspace: N passed, M failed".
set -u
cd "$(dirname "$0")/../.." || exit 2
upmctl=userspace/upm/target/release/upmctl
passed=0 failed=0
check() { # name command...
	local name=$1 t0=$EPOCHREALTIME
	shift
	if "$@"; then
		echo "ok   $name"
		passed=$((passed + 1))
	else
		echo "FAIL $name"
		failed=$((failed + 1))
	fi
	# Where the suite's time goes, as upm_tests prints it.
	echo "    $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"
}

# Field KEY of the JSON object on stdin (empty if absent); fails if stdin is not JSON.
# (jq: a Python interpreter takes seconds to start in the VM.)
json_field() { jq -r --arg k "$1" 'if .[$k] == null then "" else .[$k] end'; }
status_json() { [[ "$($upmctl status --json | json_field pages_sharing)" =~ ^[0-9]+$ ]]; }
check upmctl_status_json status_json
set_ok() {
	# Sets a tunable; a value or name the module refuses is a usage error (64).
	$upmctl set use_zero_pages=0 && [ "$(cat /sys/kernel/mm/upm/use_zero_pages)" = 0 ] &&
		$upmctl set use_zero_pages=1 && [ "$(cat /sys/kernel/mm/upm/use_zero_pages)" = 1 ] &&
		{ $upmctl set run=7 2>/dev/null; [ $? = 64 ]; } &&
		{ $upmctl set no_such_tunable=1 2>/dev/null; [ $? = 64 ]; }
}
check upmctl_set set_ok
apply_config_ok() {
	# The shipped file (defaults, all commented out) sets nothing; a file's lines apply in
	# order; a line that does not parse sets nothing; a refused value stops at its line.
	# Both are configuration errors (78) that name the line.
	local conf out rc
	conf=$(mktemp)
	$upmctl apply-config userspace/systemd/upm.conf 2>/dev/null &&
		printf '# test\nsplit_thp = 0\nuse_zero_pages=0 # comment\n' >"$conf" &&
		$upmctl apply-config "$conf" 2>/dev/null &&
		[ "$(cat /sys/kernel/mm/upm/split_thp)$(cat /sys/kernel/mm/upm/use_zero_pages)" = 00 ] &&
		printf 'split_thp=1\nbroken line\n' >"$conf" &&
		{ out=$($upmctl apply-config "$conf" 2>&1); [ $? = 78 ]; } && grep -q 'line 2' <<<"$out" &&
		[ "$(cat /sys/kernel/mm/upm/split_thp)" = 0 ] &&
		printf 'split_thp=1\nrun=7\nuse_zero_pages=1\n' >"$conf" &&
		{ out=$($upmctl apply-config "$conf" 2>&1); [ $? = 78 ]; } && grep -q 'line 2' <<<"$out" &&
		[ "$(cat /sys/kernel/mm/upm/split_thp)$(cat /sys/kernel/mm/upm/use_zero_pages)" = 10 ]
	rc=$?
	$upmctl set split_thp=1 && $upmctl set use_zero_pages=1
	rm -f "$conf"
	return $rc
}
check upmctl_apply_config apply_config_ok
metrics_ok() {
	# Prometheus text: upm_up 1, cumulative counters typed counter with _total, the skip
	# counters as one family with a reason label, gauges typed gauge, values as in sysfs,
	# every sample of a family that has a TYPE line, one per-domain series for each line of
	# the domains file (root reads it). With --textfile, the same text in the
	# file (but for the sweep's count, which moves by itself) and no temporary file beside it.
	local out dir rc moving='^upm_sweep_passes_total '
	dir=$(mktemp -d)
	out=$($upmctl metrics) && $upmctl metrics --textfile "$dir/upm.prom" &&
		grep -qx 'upm_up 1' <<<"$out" &&
		grep -q '^# TYPE upm_pages_merged_total counter$' <<<"$out" &&
		grep -q '^# TYPE upm_pages_sharing gauge$' <<<"$out" &&
		grep -qx "upm_run $(cat /sys/kernel/mm/upm/run)" <<<"$out" &&
		grep -qx "upm_pages_skipped_total{reason=\"busy\"} $(cat /sys/kernel/mm/upm/pages_skipped_busy)" <<<"$out" &&
		[ "$(grep -c '^upm_pages_skipped_total{reason=' <<<"$out")" = \
			"$(find /sys/kernel/mm/upm -name 'pages_skipped_*' | wc -l)" ] &&
		grep -qx "upm_saved_bytes $(($(cat /sys/kernel/mm/upm/pages_sharing) * $(getconf PAGESIZE)))" <<<"$out" &&
		grep -qx "upm_domain_policy_info{policy=\"$(policy)\"} 1" <<<"$out" &&
		[ "$(grep -c '^upm_domain_pages_sharing{' <<<"$out")" = \
			"$(($(wc -l </sys/kernel/mm/upm/domains) - 1))" ] &&
		[ -z "$(comm -13 <(sed -n 's/^# TYPE \([a-z_]*\) .*/\1/p' <<<"$out" | sort -u) \
			<(grep -v '^#' <<<"$out" | sed 's/[{ ].*//' | sort -u))" ] &&
		[ "$(grep -v "$moving" "$dir/upm.prom")" = "$(grep -v "$moving" <<<"$out")" ] &&
		[ "$(ls -A "$dir")" = upm.prom ]
	rc=$?
	rm -rf "$dir"
	return $rc
}
# The policy in force: the bracketed word of domain_policy.
policy() { grep -o '\[[a-z]*\]' /sys/kernel/mm/upm/domain_policy | tr -d '[]'; }
check upmctl_metrics metrics_ok
status_policy() {
	[ "$($upmctl status --json | json_field domain_policy)" = "$(policy)" ] &&
		$upmctl status | grep -q "merge domains by $(policy)"
}
check upmctl_status_policy status_policy

# start_holder MiB [env...]: runs dup_holder (optionally under env, e.g. LD_PRELOAD) and sets
# holder (pid), addr_a, addr_b and pages from its ready file.
start_holder() {
	local mib=$1 ready
	shift
	ready=$(mktemp -u)
	env "$@" tests/build/dup_holder "$mib" "$ready" &
	holder=$!
	for _ in $(seq 200); do [ -s "$ready" ] && break; sleep 0.1; done
	read -r _ addr_a addr_b pages <"$ready"
	rm -f "$ready"
}
# Pairs of the holder's two copies that share a frame, read from its pagemap.
shared_pairs() { tests/build/pfn_pairs "$holder" "$addr_a" "$addr_b" "$pages"; }
show_field() { $upmctl show --pid "$holder" --json | json_field "$1"; }

start_holder 8
check upmctl_show_before test "$(show_field merged_pages)" = 0 -a "$(shared_pairs)" = 0
unpriv() {
	# Without CAP_SYS_NICE (another user): refused with a clear message, nothing merged.
	out=$(setpriv --reuid=65534 --regid=65534 --clear-groups $upmctl advise --pid "$holder" 2>&1)
	[ $? = 77 ] && grep -q "permission denied" <<<"$out" && [ "$(shared_pairs)" = 0 ]
}
check upmctl_advise_unprivileged unpriv
unpriv_show() {
	out=$(setpriv --reuid=65534 --regid=65534 --clear-groups $upmctl show --pid "$holder" 2>&1)
	[ $? -ne 0 ] && grep -q "permission denied" <<<"$out"
}
check upmctl_show_unprivileged unpriv_show
own_show() {
	# A user showing its own process without CAP_SYS_ADMIN gets the smaps figures and a note
	# that frames need CAP_SYS_ADMIN, and exit status 0; --json gives the smaps fields only.
	local sleeper out json rc
	setpriv --reuid=65534 --regid=65534 --clear-groups sleep 30 &
	sleeper=$!
	sleep 0.3
	out=$(setpriv --reuid=65534 --regid=65534 --clear-groups $upmctl show --pid "$sleeper" 2>&1)
	rc=$?
	json=$(setpriv --reuid=65534 --regid=65534 --clear-groups $upmctl show --pid "$sleeper" --json)
	kill "$sleeper"
	[ $rc = 0 ] && grep -q "need CAP_SYS_ADMIN" <<<"$out" && grep -q "Pss_Anon" <<<"$out" &&
		[[ "$(json_field pss_anon_kib <<<"$json")" =~ ^[0-9]+$ ]] &&
		[ -z "$(json_field merged_pages <<<"$json")" ]
}
check upmctl_show_own_process_unprivileged own_show
advise_ok() {
	# Every page pair shares one frame (pagemap), and show counts both copies as merged.
	$upmctl advise --pid "$holder" >/dev/null && [ "$(shared_pairs)" = "$pages" ] &&
		[ "$(show_field merged_pages)" -ge $((2 * pages)) ] &&
		[ "$(show_field merged_frames)" -le "$(($(show_field merged_pages) - pages))" ] &&
		[ "$(cat /sys/kernel/mm/upm/pages_sharing)" -ge "$pages" ]
}
check upmctl_advise_running_process advise_ok
unmerge_ok() {
	$upmctl unmerge --pid "$holder" >/dev/null && [ "$(shared_pairs)" = 0 ] &&
		[ "$(show_field merged_pages)" = 0 ]
}
check upmctl_unmerge unmerge_ok
# Whether no mapping of the holder contains address $1 (decimal).
unmapped_in_holder() {
	local range
	while read -r range _; do
		(($((16#${range%-*})) <= $1 && $1 < $((16#${range#*-})))) && return 1
	done <"/proc/$holder/maps"
	return 0
}
partly_unmapped() {
	# A named range with a hole (the page below b, the holder's last mmap): ENOMEM reaches
	# the user, after the mapped part was advised: a as candidates first, then b pairs.
	local below=$((16#$addr_b - 4096)) out
	unmapped_in_holder "$below" || return 1
	$upmctl advise --pid "$holder" --range "$addr_a-$(printf '%x' $((16#$addr_a + pages * 4096)))" \
		>/dev/null || return 1
	out=$($upmctl advise --pid "$holder" \
		--range "$(printf '%x-%x' "$below" $((16#$addr_b + pages * 4096)))" 2>&1)
	[ $? = 65 ] && grep -q "not mapped" <<<"$out" && [ "$(shared_pairs)" = "$pages" ] &&
		$upmctl unmerge --pid "$holder" >/dev/null
}
check upmctl_advise_partly_unmapped partly_unmapped
cgroup_ok() {
	# Every process of a cgroup and its descendants: the holder sits in a child group.
	local cg=/sys/fs/cgroup/upm_ctl_test rc
	mkdir -p "$cg/inner" && echo "$holder" >"$cg/inner/cgroup.procs" || return 1
	$upmctl advise --cgroup upm_ctl_test >/dev/null && [ "$(shared_pairs)" = "$pages" ] &&
		$upmctl unmerge --cgroup "$cg" >/dev/null && [ "$(shared_pairs)" = 0 ]
	rc=$?
	echo "$holder" >/sys/fs/cgroup/cgroup.procs
	rmdir "$cg/inner" "$cg"
	return $rc
}
check upmctl_advise_cgroup cgroup_ok
no_such_cgroup() {
	local out
	out=$($upmctl advise --cgroup upm_no_such_group 2>&1)
	[ $? = 66 ] && grep -q "no such cgroup: /sys/fs/cgroup/upm_no_such_group" <<<"$out"
}
check upmctl_no_such_cgroup no_such_cgroup
cgroup_keeps_going() {
	# A user with CAP_SYS_NICE advises a cgroup holding its own holder and a process of
	# root's, which it may not advise: the holder is merged all the same, the failure is
	# printed with its pid and a summary, and the status is the failure's (77).
	local cg=/sys/fs/cgroup/upm_ctl_mixed ready sleeper user_holder out rc a b n
	ready=$(mktemp -u)
	mkdir -p "$cg" || return 1
	sleep 120 &
	sleeper=$!
	echo "$sleeper" >"$cg/cgroup.procs"
	setpriv --reuid=65534 --regid=65534 --clear-groups tests/build/dup_holder 4 "$ready" &
	user_holder=$!
	for _ in $(seq 200); do [ -s "$ready" ] && break; sleep 0.1; done
	read -r _ a b n <"$ready"
	echo "$user_holder" >"$cg/cgroup.procs"
	out=$(setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=+sys_nice \
		--ambient-caps=+sys_nice $upmctl advise --cgroup "$cg" 2>&1)
	rc=$?
	[ "$rc" = 77 ] && grep -q "pid $sleeper: permission denied" <<<"$out" &&
		grep -q "1 of 2 processes of $cg not advised" <<<"$out" &&
		[ "$(tests/build/pfn_pairs "$user_holder" "$a" "$b" "$n")" = "$n" ]
	local ok=$?
	((ok == 0)) || echo "    status $rc: $out"
	kill -TERM "$user_holder" "$sleeper"
	wait "$user_holder" "$sleeper" 2>/dev/null
	rm -f "$ready"
	rmdir "$cg"
	return $ok
}
check upmctl_cgroup_keeps_going cgroup_keeps_going
domains_named() {
	# Under the cgroup policy the holder's domain is its cgroup, which upmctl domains names
	# by its directory; under uid, by the user's name.
	local cg=/sys/fs/cgroup/upm_ctl_domain json rc
	mkdir -p "$cg" && echo "$holder" >"$cg/cgroup.procs" || return 1
	$upmctl set domain_policy=cgroup && $upmctl set domain_cgroup_level=1 &&
		$upmctl advise --pid "$holder" >/dev/null && json=$($upmctl domains --json) &&
		jq -e --arg cg "$cg" --argjson pages "$pages" 'map(select(.resolved == $cg)) |
			length > 0 and (.[0].domain | startswith("cgroup:1:")) and
			.[0].pages_sharing >= $pages' <<<"$json" >/dev/null || { echo "    $json"; false; } &&
		$upmctl unmerge --pid "$holder" >/dev/null && $upmctl set domain_policy=uid &&
		$upmctl advise --pid "$holder" >/dev/null &&
		$upmctl domains | grep -Eq "^uid:0 .* root$" && $upmctl unmerge --pid "$holder" >/dev/null
	rc=$?
	$upmctl set domain_policy=uid
	echo "$holder" >/sys/fs/cgroup/cgroup.procs
	rmdir "$cg"
	return $rc
}
check upmctl_domains_named domains_named
watch_ok() {
	# Two refreshes; an advise during the interval shows up as a change. The interval
	# outlasts upmctl advise's start in a slow guest (with 1 s, a loaded VM once ended the
	# watch before the advise merged its first page).
	local out
	out=$(mktemp)
	$upmctl watch --interval 5 --count 2 >"$out" &
	local watcher=$!
	# After the first refresh, however long the watcher took to start.
	for _ in $(seq 600); do grep -q 'KiB saved by merging' "$out" && break; sleep 0.05; done
	$upmctl advise --pid "$holder" >/dev/null
	wait "$watcher" || return 1
	[ "$(grep -c 'KiB saved by merging' "$out")" = 2 ] &&
		grep -Eq "pages_merged +[0-9]+ \(\+[0-9]+\)" "$out"
	local rc=$?
	rm -f "$out"
	return $rc
}
check upmctl_watch watch_ok
kill -TERM "$holder"
check dup_holder_contents_intact wait "$holder"

preload_ok() {
	# An unmodified program under LD_PRELOAD merges its own copies after the delay. The
	# delay must outlast the program's start-up (filling its copies): the shim advises once,
	# and with 200 ms it once came before the copies were written in a loaded VM.
	start_holder 4 LD_PRELOAD="$PWD/userspace/preload/build/libupm_preload.so" \
		UPM_PRELOAD_DELAY_MS=2000 UPM_PRELOAD_VERBOSE=1
	for _ in $(seq 300); do [ "$(shared_pairs)" = "$pages" ] && break; sleep 0.2; done
	local pairs
	pairs=$(shared_pairs)
	kill -TERM "$holder"
	wait "$holder" && [ "$pairs" = "$pages" ] && return
	echo "    ${pairs:-?} of ${pages:-?} pairs share a frame 60 s after start"
	return 1
}
check ld_preload_shim preload_ok
preload_short() {
	# A verbose program shorter than the delay says that it advised nothing, with its pid.
	local out
	# (bash: coreutils closes stderr before library destructors run, dash leaves by _exit().)
	out=$(LD_PRELOAD="$PWD/userspace/preload/build/libupm_preload.so" UPM_PRELOAD_VERBOSE=1 \
		UPM_PRELOAD_DELAY_MS=5000 bash -c : 2>&1)
	grep -Eq "^upm_preload: pid [0-9]+ \(bash\) exited after [0-9]+ ms, before UPM_PRELOAD_DELAY_MS=5000: nothing advised$" <<<"$out"
}
check ld_preload_short_program preload_short

no_such() {
	# Exit status 66, and with --json an error object on stdout.
	out=$($upmctl show --pid 999999 2>&1)
	[ $? = 66 ] && grep -q "no such process" <<<"$out" || return 1
	out=$($upmctl show --pid 999999 --json 2>/dev/null)
	[ $? = 66 ] && [ "$(json_field error <<<"$out")" = "no such process" ] &&
		[ "$(json_field exit_status <<<"$out")" = 66 ]
}
check upmctl_no_such_process no_such
no_module() {
	rmmod upm || return 1
	out=$($upmctl advise --pid $$ 2>&1)
	local rc=$? prom metrics_rc
	# The textfile still says the module is down, and the exit status too.
	prom=$(mktemp)
	$upmctl metrics --textfile "$prom" 2>/dev/null
	metrics_rc=$?
	# The shim under a wrapper chain: no thread, one line for the whole tree, with a pid.
	local shim
	shim=$(LD_PRELOAD="$PWD/userspace/preload/build/libupm_preload.so" UPM_PRELOAD_VERBOSE=1 \
		sh -c 'sh -c true; true' 2>&1)
	insmod "$UPM_MODULE" || return 1
	[ $metrics_rc = 69 ] && [ "$(grep -v '^#' "$prom")" = "upm_up 0" ] && rm -f "$prom" &&
		[ $rc = 69 ] && grep -q "module not loaded" <<<"$out" &&
		[ "$(grep -c 'UPM not available' <<<"$shim")" = 1 ] &&
		grep -Eq '^upm_preload: pid [0-9]+ \(sh\): UPM not available' <<<"$shim"
}
check upmctl_module_not_loaded no_module
modprobe_options() {
	# The shipped /etc/modprobe.d/upm.conf, its option lines uncommented, loads the module
	# (modprobe passes them to it as parameters), and upm.service's check says it is loaded.
	local opts
	opts=$(sed -n 's/^#options upm //p' userspace/systemd/modprobe.conf | tr '\n' ' ')
	[ -n "$opts" ] && rmmod upm || return 1
	# shellcheck disable=SC2086 # one word per option
	insmod "$UPM_MODULE" $opts || { insmod "$UPM_MODULE"; return 1; }
	$upmctl status >/dev/null && [ "$(cat /sys/kernel/mm/upm/sweep_millisecs)" = 1000 ] &&
		grep -q '\[uid\]' /sys/kernel/mm/upm/domain_policy
}
check modprobe_options modprobe_options
check python_numpy_advise_all "${UPM_PYTHON:-python3}" tests/vm/test_python.py

# The module's cumulative counters, one "name=value" per line.
upm_counters() {
	grep -H . /sys/kernel/mm/upm/pages_* /sys/kernel/mm/upm/hash_collisions 2>/dev/null |
		sed 's#.*/##; s/:/=/'
}

# README's runtime snippets (examples/): two instances of each, started at the same moment
# as a platform scaling out starts them, so that they advise at once, share every page of
# their weights (pagemap of both, read as root) and still answer a request alike. Started
# at once, up to 422 of 4096 pages used to end apart although counted as merged:
# khugepaged collapsed ranges half merged at that moment (patch 0008 now stops it).
instances_share() { # command...
	local dir fd1 fd2 pid1 pid2 a1 a2 pages1 pages2 same=0 rc=1 i before
	before=$(upm_counters)
	dir=$(mktemp -d)
	mkfifo "$dir/in1" "$dir/in2"
	"$@" <"$dir/in1" >"$dir/out1" 2>&1 &
	"$@" <"$dir/in2" >"$dir/out2" 2>&1 &
	exec {fd1}>"$dir/in1" {fd2}>"$dir/in2"
	for i in 1 2; do
		for _ in $(seq 600); do
			grep -q '^ready' "$dir/out$i" && break
			sleep 0.1
		done
	done
	read -r _ pid1 a1 pages1 < <(grep '^ready' "$dir/out1")
	read -r _ pid2 a2 pages2 < <(grep '^ready' "$dir/out2")
	if [ -n "${pid2:-}" ] && [ "$pages1" = "$pages2" ]; then
		same=$(PFN_PAIRS_APART=1 tests/build/pfn_pairs "$pid1" "$a1" "$a2" "$pages1" "$pid2" \
			2>"$dir/apart")
	fi
	echo "request" >&"$fd1"
	echo "request" >&"$fd2"
	exec {fd1}>&- {fd2}>&-
	wait
	[ "$same" = "${pages1:-x}" ] && grep -q '^request -> ' "$dir/out1" &&
		[ "$(grep '^request -> ' "$dir/out1")" = "$(grep '^request -> ' "$dir/out2")" ]
	rc=$?
	if [ $rc != 0 ]; then
		echo "    $1: $same of ${pages1:-?} pages shared; counters that moved:"
		join -t= <(sort <<<"$before") <(upm_counters | sort) |
			awk -F= '$2 != $3 { printf "      %s +%d\n", $1, $3 - $2 }'
		cat "$dir/out1"
		head -8 "$dir/apart" | sed 's/^/      /'
	fi
	rm -rf "$dir"
	return $rc
}
check runtime_snippet_c instances_share tests/build/handler
check runtime_snippet_python instances_share env PYTHONPATH=userspace/python "${UPM_PYTHON:-python3}" \
	examples/handler.py

check container_hook tests/vm/container_hook.sh "$upmctl"

echo "userspace: $passed passed, $failed failed"
[ "$failed" = 0 ]
