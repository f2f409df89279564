#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# The OCI poststart hook for real: crun starts three containers from one local root file
# system (a static dup_holder, no registry), each with `upmctl hook` as its poststart hook.
# Two carry the annotation io.upm.merge=true: their identical memory must end up on the
# same frames, the delay (io.upm.delay, over the hook's --delay) must be honoured, and a
# delayed hook must not hold up the start.
# The third has no annotation and must be left alone: no merged page, not even its two
# identical copies with each other. Exits 0 when all of that holds.
#
#   tests/container_hook.sh UPMCTL
set -u
cd "$(dirname "$0")/.." || exit 2
upmctl=$(realpath "$1")
holder=$(realpath tests/build/dup_holder_static)
pfn_pairs=tests/build/pfn_pairs
command -v crun >/dev/null || { echo "    crun is not installed (make setup installs it)"; exit 1; }

dir=$(mktemp -d)
state=$dir/state
cgroup=/sys/fs/cgroup/upm-hook-test
mkdir -p "$dir/rootfs/proc" "$dir/rootfs/dev" "$dir/rootfs/out" "$state" "$cgroup"
cp "$holder" "$dir/rootfs/holder"

cleanup() {
	local id
	for id in c1 c2 c3; do
		crun --root "$state" kill "$id" KILL 2>/dev/null
		crun --root "$state" delete -f "$id" 2>/dev/null
	done
	rmdir "$cgroup"/* "$cgroup" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT

# bundle ID ANNOTATIONS: a bundle whose process holds two identical 1 MiB copies.
bundle() {
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
    "poststart": [ { "path": "$upmctl", "args": ["upmctl", "hook", "--delay", "8"] } ]
  },
  "linux": {
    "namespaces": [ { "type": "pid" }, { "type": "mount" }, { "type": "ipc" }, { "type": "uts" } ],
    "cgroupsPath": "/upm-hook-test/$1"
  }
}
EOF
}

# The hook's own --delay is 8 s; the annotation's 20 s must win.
bundle c1 '"io.upm.merge": "true", "io.upm.delay": "20"'
bundle c2 '"io.upm.merge": "true", "io.upm.delay": "20"'
bundle c3 '"io.example.other": "true"'
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
exit 0
