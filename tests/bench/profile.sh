#!/usr/bin/env bash
# Runs in the VM: where the time of a pairing madvise goes, by kernel symbol.
#   scripts/vm-run.sh --flavour release -- tests/bench/profile.sh [MiB | small]
# Samples every CPU (cpu-clock: QEMU without KVM has no PMU) while `upm_bench pair` advises
# two processes' twin regions (or, with `small`, while `upm_bench small` advises unique pages
# 64 KiB at a time), then prints the kernel symbols under madvise: self time, and time
# including callees.
set -euo pipefail
cd "$(dirname "$0")"
echo 0 >/proc/sys/kernel/kptr_restrict
echo -1 >/proc/sys/kernel/perf_event_paranoid
data=${UPM_VM_OUT:-/tmp}/results/perf.data
cat /proc/kallsyms >"${data%/*}/kallsyms"
if [ "${1:-}" = small ]; then
	workload=(../build/upm_bench small 200)
else
	workload=(../build/upm_bench pair "${1:-64}")
fi
perf record -q -e cpu-clock -F 10000 -a -g -o "$data" -- "${workload[@]}"
for mode in --no-children --children; do
	echo "== $mode"
	perf report -i "$data" --stdio $mode --sort sym --comm upm_bench -g none \
		--percent-limit 1 2>/dev/null | grep -E '^ +[0-9]' | head -40
done
