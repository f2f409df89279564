#!/usr/bin/env bash
# Runs inside the VM (see vm-run.sh): load the module, run the command, save status and dmesg.
set -u
out=$UPM_VM_OUT
mkdir -p "$out/results"
mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug 2>/dev/null
# What a distribution's machine has and merged pages must cope with: swap (on zram, so no
# disk is needed) and the cgroup v2 hierarchy (memory.reclaim, memory.max).
if [ -e /sys/block/zram0/disksize ] && ! grep -q zram0 /proc/swaps; then
	echo 1G >/sys/block/zram0/disksize && mkswap /dev/zram0 >/dev/null && swapon /dev/zram0 ||
		echo "vm-guest: zram swap setup failed" >&2
fi
# A small second zram disk for the O_DIRECT test, made once per boot and never removed
# (zram's hot_remove frees a kobject that DEBUG_KOBJECT_RELEASE still has a timer on).
if [ -e /sys/class/zram-control/hot_add ] && [ ! -e /sys/block/zram1 ]; then
	id=$(cat /sys/class/zram-control/hot_add) && echo 1M >"/sys/block/zram$id/disksize" ||
		echo "vm-guest: second zram disk setup failed" >&2
fi
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null
# A stuck task or CPU ends the run at once (vng boots with panic=-1 and -no-reboot, so a
# panic stops QEMU) instead of at the VM timeout; the kernel log is streamed to the host as
# it is written, so the report survives the panic and nothing is lost to the ring buffer.
sysctl -q -w kernel.hung_task_timeout_secs=60 kernel.hung_task_panic=1 \
	kernel.softlockup_panic=1 kernel.watchdog_thresh=10 ||
	echo "vm-guest: could not arm the hung-task and soft-lockup detectors" >&2
cat /dev/kmsg >"$out/kmsg" &
kmsg_pid=$!
rc=0
if [ "$UPM_LOAD_MODULE" = 1 ]; then
	insmod "$UPM_MODULE" || rc=$?
fi
if [ "$rc" = 0 ]; then
	t0=$EPOCHREALTIME
	bash -c "$(cat "$out/command")"
	rc=$?
	# The boot is the rest of what the host measures.
	echo "vm-guest: up after $(cut -d' ' -f1 /proc/uptime) s at the command's end, which took $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }') s" >&2
fi
# Let deferred work (the stable-page sweep, RCU callbacks) run, then look for leaks (not for
# mutants, which are judged by their tests' checks alone: UPM_KMEMLEAK=0).
if [ "${UPM_KMEMLEAK:-1}" = 1 ] && [ -w /sys/kernel/debug/kmemleak ]; then
	t0=$EPOCHREALTIME
	echo scan >/sys/kernel/debug/kmemleak
	echo scan >/sys/kernel/debug/kmemleak
	grep -q . /sys/kernel/debug/kmemleak && cat /sys/kernel/debug/kmemleak >"$out/kmemleak"
	echo "vm-guest: two kmemleak scans took $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }') s" >&2
fi
dmesg >"$out/dmesg"
sleep 0.2
kill "$kmsg_pid" 2>/dev/null
echo "$rc" >"$out/rc"
exit "$rc"
