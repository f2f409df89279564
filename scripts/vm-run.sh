#!/usr/bin/env bash
# Boot the cached kernel of one flavour under QEMU with virtme-ng, load upm.ko, run a
# command in the guest, and bring back its output and exit status.
#
#   scripts/vm-run.sh [--flavour debug|release] [--kbuild DIR] [--no-module | --module KO]
#                     [--kvm] [--] COMMAND...
#
# The kernel is the cached build of the flavour unless --kbuild names another (a kernel
# mutant's); the module is src/upm.ko unless --module names another build (a module mutant's).
#
# After the command, the guest's dmesg is checked for kernel splats (BUG, WARNING, KASAN,
# lockdep, Bad rss-counter...). Any splat fails the run, whatever the command returned, and
# the offending lines are printed. The guest sees the host's file system read-only, except
# for $UPM_VM_OUT (a fresh directory per run) which it may write. What the command writes to
# $UPM_VM_OUT/results is copied to $UPM_RESULTS_DIR, when that is set. UPM_VM_MEM sizes the
# guest (default 4G); UPM_VM_APPEND adds to the kernel command line.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "$0")/env.sh"

flavour=$UPM_FLAVOUR
kbuild=
load_module=1
module=$UPM_ROOT/src/upm.ko
kvm_flag=--disable-kvm
while (($#)); do
	case "$1" in
	--flavour) flavour=$2; shift 2 ;;
	--no-module) load_module=0; shift ;;
	--module) module=$(realpath "$2"); shift 2 ;;
	--kvm) kvm_flag=; shift ;;
	--kbuild) kbuild=$2; shift 2 ;;
	--) shift; break ;;
	*) break ;;
	esac
done
(($#)) || { upm_log "usage: $0 [--flavour F] [--no-module | --module KO] [--] COMMAND..."; exit 2; }

kbuild=${kbuild:-$(upm_kbuild_dir "$flavour")}
image=$kbuild/arch/x86/boot/bzImage
[ -f "$image" ] || { upm_log "no $flavour kernel at $image: run 'make kernel'"; exit 2; }
if ((load_module)) && [ ! -f "$module" ]; then
	upm_log "no module at $module: run 'make'"
	exit 2
fi

out=$(mktemp -d "${TMPDIR:-/tmp}/upm-vm.XXXXXX")
trap 'rm -rf "$out"' EXIT
# One argument is a shell command line; several are the words of one command.
if (($# == 1)); then
	printf '%s\n' "$1" >"$out/command"
else
	printf '%q ' "$@" >"$out/command"
fi

# Patterns that mean the kernel hit a bug; kept in one place, also used by the self-test.
splat_re='BUG:|WARNING:|KASAN|Oops|possible circular locking|possible recursive locking'
splat_re+='|Bad rss-counter|Bad page|RCU stall|self-detected stall|general protection'
splat_re+='|kernel BUG|UBSAN|kmemleak: .* new suspected memory leaks|inconsistent lock state'
splat_re+='|detected stalls on CPUs|blocked for more than|soft lockup'
# SLUB's consistency checks ("BUG ksm_rmap_item (Not tainted): Poison overwritten").
splat_re+='|BUG [[:alnum:]_:-]+ \((Not t|T)ainted'

# The guest's PATH has no pyenv shims: hand it the interpreter that setup.sh provisioned.
python=$(python3 -c 'import sys; print(sys.executable)')

# A guest that hangs (a deadlocked kernel, a test stuck in D state) must fail the run, not
# hold it forever: QEMU is killed when the guest has printed nothing for UPM_VM_IDLE_TIMEOUT
# seconds. Every test prints when it starts and ends and has a time limit of its own (the
# longest, stress, its length plus 300 s), so a slow machine never cuts a passing run however
# long the suite takes. UPM_VM_TIMEOUT bounds the whole run only as a last guard.
idle_timeout=${UPM_VM_IDLE_TIMEOUT:-$((900 + ${UPM_STRESS_SECS:-60}))}
vm_timeout=${UPM_VM_TIMEOUT:-14400}

slub_debug=
[ "$flavour" = debug ] &&
	slub_debug="slub_debug=FZPU,ksm_rmap_item,ksm_stable_node,ksm_mm_slot,upm_node kasan_multi_shot"
start=$(date +%s.%N)
set +e
# The guest's output (its stdout and stderr, both on our stdout) goes through a FIFO: QEMU
# reopens them by path, which on a plain file (a caller's "> log 2>&1") would write from
# offset 0 over what came before.
# Two NUMA nodes of 2 GiB (numa=fake=2) so pages can move between nodes, and 1 GiB of
# ZONE_MOVABLE (movablecore=) so a memory block can go offline. SLUB checks the objects of
# the caches of KSM's and UPM's rmap (consistency, red zones, poisoning, owner tracking):
# the debug kernel's KASAN finds a use after free; these find a list or free-pointer broken.
# KASAN reports every bad access (kasan_multi_shot), not only the boot's first: a test that
# reads the kernel log for its own history's reports must see them.
mkfifo "$out/stream"
timeout --kill-after=30 "$vm_timeout" vng --run "$image" $kvm_flag ${UPM_VM_QEMU_OPTS:+"--qemu-opts=$UPM_VM_QEMU_OPTS"} -m "${UPM_VM_MEM:-4G}" -p 2 --rwdir="$out" --cwd "$PWD" \
	--append "numa=fake=2 movablecore=1G $slub_debug ${UPM_VM_APPEND:-}" \
	-e "UPM_VM_OUT=$out UPM_LOAD_MODULE=$load_module UPM_MODULE=$module UPM_PYTHON=$python \
UPM_STRESS_SECS=${UPM_STRESS_SECS-} UPM_STRESS_SEED=${UPM_STRESS_SEED-} UPM_KMEMLEAK=${UPM_KMEMLEAK:-1} \
$UPM_ROOT/scripts/vm-guest.sh" \
	>"$out/stream" 2>&1 </dev/null &
vm_pid=$!
while :; do
	if IFS= read -r -t "$idle_timeout" line; then
		printf '%s\n' "$line"
	elif (($? > 128)); then
		upm_log "the guest printed nothing for $idle_timeout s (UPM_VM_IDLE_TIMEOUT): killed"
		kill -TERM "$vm_pid" 2>/dev/null # timeout(1) passes it on to vng and QEMU
		cat >/dev/null &                 # keep draining until they are gone
		break
	else
		[ -n "$line" ] && printf '%s\n' "$line"
		break
	fi
done <"$out/stream"
wait "$vm_pid"
vng_rc=$?
set -e
if [ "$vng_rc" = 124 ] || [ "$vng_rc" = 137 ]; then
	upm_log "the guest did not finish within $vm_timeout s (UPM_VM_TIMEOUT): killed"
fi
upm_log "VM finished in $(printf '%.1f' "$(echo "$(date +%s.%N) - $start" | bc)") s"

# The streamed log (complete even after a panic) and the final dmesg, in case streaming failed.
cat "$out/kmsg" "$out/dmesg" 2>/dev/null >"$out/klog"
# Results first: what a guest wrote before it crashed is still worth having.
if [ -n "${UPM_RESULTS_DIR:-}" ] && [ -d "$out/results" ]; then
	mkdir -p "$UPM_RESULTS_DIR"
	cp -r "$out/results/." "$UPM_RESULTS_DIR/"
fi
if [ ! -f "$out/rc" ]; then
	upm_log "the guest did not finish its script (vng exit status $vng_rc)"
	grep -E -B2 -A30 "$splat_re" "$out/klog" | head -200 >&2
	exit 1
fi
rc=$(cat "$out/rc")
if grep -E -q "$splat_re" "$out/klog"; then
	upm_log "kernel splat in guest dmesg:"
	grep -E -B2 -A20 "$splat_re" "$out/klog" | head -200 >&2
	exit 1
fi
exit "$rc"
