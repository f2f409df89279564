#!/usr/bin/env bash
# Runs inside the VM (see vm-run.sh): load the module, run the command, save status and dmesg.
set -u
out=$UPM_VM_OUT
mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug 2>/dev/null
# What a distribution's machine has and merged pages must cope with: swap (on zram, so no
# disk is needed) and the cgroup v2 hierarchy (memory.reclaim, memory.max).
if [ -e /sys/block/zram0/disksize ] && ! grep -q zram0 /proc/swaps; then
	echo 1G >/sys/block/zram0/disksize && mkswap /dev/zram0 >/dev/null && swapon /dev/zram0 ||
		echo "vm-guest: zram swap setup failed" >&2
fi
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null
rc=0
if [ "$UPM_LOAD_MODULE" = 1 ]; then
	insmod "$UPM_MODULE" || rc=$?
fi
if [ "$rc" = 0 ]; then
	bash -c "$(cat "$out/command")"
	rc=$?
fi
# Let deferred work (the stable-page sweep, RCU callbacks) run, then look for leaks.
if [ -w /sys/kernel/debug/kmemleak ]; then
	echo scan >/sys/kernel/debug/kmemleak
	echo scan >/sys/kernel/debug/kmemleak
	grep -q . /sys/kernel/debug/kmemleak && cat /sys/kernel/debug/kmemleak >"$out/kmemleak"
fi
dmesg >"$out/dmesg"
echo "$rc" >"$out/rc"
exit "$rc"
