#!/usr/bin/env bash
# Runs inside the VM (see vm-run.sh): load the module, run the command, save status and dmesg.
set -u
out=$UPM_VM_OUT
mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug 2>/dev/null
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
