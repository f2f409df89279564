#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# The OCI poststart hook for real: crun starts three containers from one local root file
# system (a static dup_holder, no registry), each with `upmctl hook` as its poststart hook.
# Two carry the annotation io.upm.merge=true: their identical memory must end up on the
# same frames, the delay (io.upm.delay, over the hook's --delay) must be honoured, and a
# delayed hook must not hold up the start.
# The third has no annotation and must be left alone: no merged page, not even its two
# identical copies with each other. Each outcome is counted for `upmctl metrics`
# (upm_hook_containers_total{outcome,reason}), failures too: a hook without CAP_SYS_NICE,
# a container process in no cgroup of its own, no module loaded. Exits 0 when all of that
# holds.
#
#   tests/vm/container_hook.sh UPMCTL
set -u
cd "$(dirname "$0")/../.." || exit 2
upmctl=$(realpath "$1")
holder=$(realpath tests/build/dup_holder_static)
pfn_pairs=tests/build/pfn_pairs
command -v crun >/dev/null || { echo "    crun is not installed (make setup installs it)"; exit 1; }

dir=$(mktemp -d)
state=$dir/state
cgroup=/sys/fs/cgroup/upm-hook-test
mkdir -p "$dir/rootfs/proc" "$dir/rootfs/dev" "$dir/rootfs/out" "$state" "$cgroup"
cp "$holder" "$dir/rootfs/holder"

# Under domain_policy=group, as the DaemonSet sets it: the hook puts each annotated
# container in the group of its namespace and function; c1 and c2 are instances of one.
policy_before=$(sed 's/.*\[\(.*\)\].*/\1/' /sys/kernel/mm/upm/domain_policy)
echo group >/sys/kernel/mm/upm/domain_policy || { echo "    domain_policy=group refused"; exit 1; }

# The hook's counts belong to the host: put back as they were.
outcomes=/run/upm/hook-outcomes
saved_outcomes=$(cat "$outcomes" 2>/dev/null) had_outcomes=$([ -e "$outcomes" ] && echo 1)

cleanup() {
	local id
	for id in c1 c2 c3 c4 c5 c6; do
		crun --root "$state" kill "$id" KILL 2>/dev/null
		crun --root "$state" delete -f "$id" 2>/dev/null
	done
	rmdir "$cgroup"/* "$cgroup" 2>/dev/null
	rm -rf "$dir"
	echo "$policy_before" >/sys/kernel/mm/upm/domain_policy 2>/dev/null
	if [ -n "$had_outcomes" ]; then
		printf '%s\n' "$saved_outcomes" >"$outcomes"
	else
		rm -f "$outcomes" "$outcomes.lock"
	fi
}
trap cleanup EXIT

# hooked OUTCOME REASON: how many containers the hook counted so, as upmctl metrics says.
hooked() {
	local n
	n=$("$upmctl" metrics 2>/dev/null |
		sed -n "s/^upm_hook_containers_total{outcome=\"$1\",reason=\"$2\"} //p")
	echo "${n:-0}"
}

# bundle ID ANNOTATIONS [HOOK]: a bundle whose process holds two identical 1 MiB copies;
# HOOK is its poststart hook's "path" and "args" (upmctl hook --delay 8 by default).
bundle() {
	local hook=${3:-"\"path\": \"$upmctl\", \"args\": [\"upmctl\", \"hook\", \"--delay\", \"8\"]"}

	mkdir -p "$dir/$1/out"
	cat >"$dir/$1/config.json" <<EOF
{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": false,
    "user": { "uid": 0, "gid": 0 },
    "args": ["/holder", "1", "/out/ready"],
    "env": ["PATH=/"],
    "cwd": "/"
  },
  "root": { "path": "$dir/rootfs", "readonly": true },
  "hostname": "$1",
  "mounts": [
    { "destination": "/proc", "type": "proc", "source": "proc" },
    { "destination": "/out", "type": "bind", "source": "$dir/$1/out", "options": ["rbind", "rw"] }
  ],
  "annotations": { $2 },
  "hooks": {
    "poststart": [ { $hook } ]
  },
  "linux": {
    "namespaces": [ { "type": "pid" }, { "type": "mount" }, { "type": "ipc" }, { "type": "uts" } ],
    "cgroupsPath": "/upm-hook-test/$1"
  }
}
EOF
}

# The hook's own --delay is 8 s; the annotation's 20 s must win.
pod='"io.kubernetes.pod.namespace": "ns1", "io.upm.group": "resnet"'
bundle c1 '"io.upm.merge": "true", "io.upm.delay": "20", '"$pod"
bundle c2 '"io.upm.merge": "true", "io.upm.delay": "20", '"$pod"
bundle c3 '"io.example.other": "true"'
advised_before=$(hooked advised ok) left_before=$(hooked left_alone not_annotated)
times=""
merged_before=$(cat /sys/kernel/mm/upm/pages_merged)
declare -A started pid addr_a addr_b pages
shared() { # ID1 ID2: frames of ID1's first copy that ID2's first copy maps too
	$pfn_pairs "${pid[$1]}" "${addr_a[$1]}" "${addr_a[$2]}" "${pages[$1]}" "${pid[$2]}"
}
# c2's hook advises 20 s after its start: until then, c1 and c2 share no frame. Looked at as
# soon as c2 is ready (before c3 starts, so that a slow start of c3 does not use up the
# delay) and again until the delay is over; a look counts if it ended 1 s before.
early=0 checked_early=0 across=0
early_look() {
	across=$(shared c1 c2)
	if [ $(($(date +%s) + 1)) -lt $((started[c2] + 20)) ]; then
		checked_early=$((checked_early + 1))
		[ "$across" = 0 ] || early=$across
	fi
}
for id in c1 c2 c3; do
	started[$id]=$(date +%s)
	start=$(date +%s%N)
	if ! crun --root "$state" --cgroup-manager=cgroupfs run --detach --bundle "$dir/$id" "$id" \
		</dev/null >"$dir/$id.log" 2>&1; then
		echo "    crun run $id failed:"
		sed 's/^/      /' "$dir/$id.log"
		exit 1
	fi
	took=$((($(date +%s%N) - start) / 1000000))
	times="$times $id ${took} ms"
	# The delayed advise is detached: the runtime does not wait for it (a hook that did would
	# hold the start for its delay, 20 s for c1 and c2).
	[ "$took" -lt 20000 ] || { echo "    crun run $id took $took ms: the hook held it up"; exit 1; }
	for _ in $(seq 600); do
		[ -s "$dir/$id/out/ready" ] && break
		sleep 0.1
	done
	pid[$id]=$(crun --root "$state" state "$id" | sed -n 's/^ *"pid": *\([0-9]*\).*/\1/p')
	read -r _ addr_a[$id] addr_b[$id] pages[$id] <"$dir/$id/out/ready" ||
		{ echo "    $id never got ready"; exit 1; }
	times="$times (ready after $(($(date +%s) - started[$id])) s)"
	[ "$id" = c1 ] || early_look
done

# Then the detached advise must be done within 60 s.
for _ in $(seq 600); do
	early_look
	[ "$across" = "${pages[c1]}" ] && break
	sleep 0.1
done
[ "$checked_early" -gt 0 ] || { echo "    too slow to look before the delay:$times"; exit 1; }
within=$($pfn_pairs "${pid[c1]}" "${addr_a[c1]}" "${addr_b[c1]}" "${pages[c1]}")
left_c3=$($pfn_pairs "${pid[c3]}" "${addr_a[c3]}" "${addr_b[c3]}" "${pages[c3]}")
with_c3=$(shared c1 c3)
ksm_c3=$(awk '/^KSM:/ { kb += $2 } END { print kb + 0 }' "/proc/${pid[c3]}/smaps")
merged=$(($(cat /sys/kernel/mm/upm/pages_merged) - merged_before))
echo "    crun run:$times; annotated: $across of ${pages[c1]} pages shared across containers ($early" \
	"in $checked_early looks before the delay), $within within one; not annotated: $left_c3 within, $with_c3 with c1," \
	"KSM ${ksm_c3} kB; pages_merged +$merged"
[ "$early" = 0 ] && [ "$across" = "${pages[c1]}" ] && [ "$within" = "${pages[c1]}" ] &&
	[ "$left_c3" = 0 ] && [ "$with_c3" = 0 ] && [ "$ksm_c3" = 0 ] &&
	[ "$merged" -ge $((3 * ${pages[c1]})) ] || exit 1

# Counted: c1 and c2 advised (by the detached upmctl, once its advice returned), c3 left alone.
for _ in $(seq 300); do
	[ "$(hooked advised ok)" = $((advised_before + 2)) ] && break
	sleep 0.1
done
advised=$(($(hooked advised ok) - advised_before)) left=$(($(hooked left_alone not_annotated) - left_before))
echo "    counted: advised +$advised, left alone (not annotated) +$left"
[ "$advised" = 2 ] && [ "$left" = 1 ] || exit 1

# The same function in another namespace: a group of its own, sharing nothing with c1,
# while its two copies share within it. The hook wrote c1's group for c1's cgroup.
bundle c6 '"io.upm.merge": "true", "io.upm.delay": "0", "io.kubernetes.pod.namespace": "ns2",
	"io.upm.group": "resnet"'
crun --root "$state" --cgroup-manager=cgroupfs run --detach --bundle "$dir/c6" c6 \
	</dev/null >"$dir/c6.log" 2>&1 || { sed 's/^/      /' "$dir/c6.log"; exit 1; }
for _ in $(seq 600); do
	[ -s "$dir/c6/out/ready" ] && break
	sleep 0.1
done
pid[c6]=$(crun --root "$state" state c6 | jq -r .pid)
read -r _ addr_a[c6] addr_b[c6] pages[c6] <"$dir/c6/out/ready" || { echo "    c6 never got ready"; exit 1; }
# Its hook ran before it was ready, but advised the cgroup then: advise again, as its own
# runtime would once loaded, to compare with c1 now.
"$upmctl" advise --pid "${pid[c6]}" >/dev/null || exit 1
within_c6=$($pfn_pairs "${pid[c6]}" "${addr_a[c6]}" "${addr_b[c6]}" "${pages[c6]}")
with_c6=$(shared c1 c6)
c1_group=$(awk -v id="$(stat -c %i "$cgroup/c1")" '$1 == id { print $2 }' \
	/sys/kernel/mm/upm/domain_groups)
echo "    group policy: c1 in group ${c1_group:-none}; c6 (another namespace) shares $with_c6" \
	"with c1, $within_c6 of ${pages[c6]} within"
[ -n "$c1_group" ] && [ "$with_c6" = 0 ] && [ "$within_c6" = "${pages[c6]}" ] || exit 1
crun --root "$state" kill c6 KILL 2>/dev/null

# Stopped and deleted, the containers leave nothing merged behind once swept.
for id in c1 c2 c3; do
	kill -TERM "${pid[$id]}"
done
for id in c1 c2 c3; do
	for _ in $(seq 100); do
		[ "$(crun --root "$state" state "$id" 2>/dev/null |
			jq -r .status)" = stopped ] &&
			break
		sleep 0.1
	done
done

# Each failure counted with its reason, the hook called as the runtime calls it.
# fails ID REASON [HOOK]: container ID (advised at once) must add one "failed" with REASON.
fails() {
	local before after
	before=$(hooked failed "$2")
	bundle "$1" '"io.upm.merge": "true", "io.upm.delay": "0"' "${3:-}"
	# A poststart hook that fails is the runtime's warning, not its error: either will do.
	crun --root "$state" --cgroup-manager=cgroupfs run --detach --bundle "$dir/$1" "$1" \
		</dev/null >"$dir/$1.log" 2>&1
	crun --root "$state" kill "$1" KILL 2>/dev/null
	after=$(hooked failed "$2")
	echo "    $1: failed ($2) +$((after - before))"
	[ "$after" = $((before + 1)) ] || { sed 's/^/      /' "$dir/$1.log"; return 1; }
}
# Without CAP_SYS_NICE (dropped from the bounding set), process_madvise() is refused.
fails c4 permission_denied "\"path\": \"/usr/bin/setpriv\", \"args\": [\"setpriv\", \"--bounding-set=-sys_nice\", \"--\", \"$upmctl\", \"hook\"]" ||
	exit 1
# A state whose process is in the root cgroup: not a container's.
before=$(hooked failed invalid_input)
echo '{"ociVersion": "1.0.2", "id": "c-root", "status": "running", "pid": 1, "bundle": "/",
	"annotations": {"io.upm.merge": "true", "io.upm.delay": "0"}}' |
	"$upmctl" hook 2>/dev/null && { echo "    a hook for pid 1 succeeded"; exit 1; }
after=$(hooked failed invalid_input)
echo "    pid 1: failed (invalid_input) +$((after - before))"
[ "$after" = $((before + 1)) ] || exit 1
# No module: the hook fails, and says why.
rmmod upm || { echo "    rmmod upm failed"; exit 1; }
fails c5 module_not_loaded
rc=$?
insmod "$UPM_MODULE" || { echo "    insmod $UPM_MODULE failed"; exit 1; }
exit $rc
