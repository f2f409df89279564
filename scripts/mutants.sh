#!/usr/bin/env bash
# The suite must catch a broken UPM. Each tests/vm/mutants/*.patch breaks one thing on purpose:
#   module-*.patch  applies to a copy of src/, built as its own upm.ko in $UPM_CACHE/mutants;
#                   all module mutants run in one boot of the debug kernel, one after another
#                   (insmod, its tests, rmmod), and any that did not run to its end there
#                   (the guest crashed, rmmod failed) or survived is run again in a boot of
#                   its own;
#   kernel-*.patch  is built into a kernel of its own in $UPM_CACHE/build-mutant (a copy of
#                   the debug build): the source tree is patched for that build only and
#                   restored with its files' times, so the cached debug kernel is never
#                   rebuilt or left mutated.
# Line 1 of a patch says what it breaks, line 2 ("Caught-by: TEST...") names the tests written
# to catch it, and a line "Run-in-CI: always" marks the central safety mutants. The tests run
# in the debug VM (stress shortened to 20 s, no kmemleak scan, the guest killed after 420 s
# of silence: longer than any test's limit); the mutant is caught only when one of them fails
# a check, and the summary says which. A run that fails otherwise (another test, a named test
# that only timed out, a splat alone) is reported, not counted as a catch.
#
# Every catch is recorded in tests/vm/mutants/caught with a digest of what the mutant and its
# tests are made of (the patch, the code it breaks, the test sources). With --ci only the
# central mutants run, and those whose digest is not recorded: their code or tests changed
# since they were last caught. Commit tests/vm/mutants/caught after a run.
# Exits non-zero if any mutant survives.
#
# With --repeat N, a mutant's tests run N times in its boot (each module mutant in a boot of
# its own), and it is caught only if they catch it every time: for race mutants, whose catch
# must not depend on luck.
#
#   scripts/mutants.sh [--ci] [--repeat N] [MUTANT_NAME...]
set -uo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "$0")/env.sh"
cd "$UPM_ROOT" || exit 1

ci=0 repeat=1
while (($#)); do
	case "$1" in
	--ci) ci=1; shift ;;
	--repeat) repeat=$2; shift 2 ;;
	*) break ;;
	esac
done
kbuild=$(upm_kbuild_dir debug)
mbuild=$UPM_CACHE/build-mutant
work=$UPM_CACHE/mutants
record=tests/vm/mutants/caught
mkdir -p "$work"
touch "$record"
caught=0 survived=0
summary=()

# The tests a mutant names on its line 2, and the files its diff patches.
caught_by() { sed -n '2s/^Caught-by: //p' "$1"; }
patched_files() { sed -n 's|^+++ b/\([^[:space:]]*\).*|\1|p' "$1"; }

# What a mutant's verdict depends on: its patch, the code it breaks (the module's sources, or
# the series patches that touch the files it patches), the test runner and library, and the
# files that define its tests. A test file shares nothing but through upm_lib.c (make check
# holds it to that), so a change to another test file leaves the record standing.
digest() { # patch
	local patch=$1 t files=("$1" tests/vm/runner.c tests/vm/upm_lib.c tests/vm/harness.h) touched p
	for t in $(caught_by "$patch"); do
		files+=($(grep -l "{ \"$t\"," tests/vm/*.c))
	done
	case "$(basename "$patch")" in
	module-*) files+=(Kbuild $(find src -name '*.rs' -o -name Kbuild | sort)) ;;
	kernel-*)
		touched=$(patched_files "$patch")
		for p in patches/*.patch; do
			grep -qE "^\+\+\+ b/($(tr '\n' '|' <<<"$touched" | sed 's/|$//'))\b" "$p" && files+=("$p")
		done
		;;
	esac
	printf '%s\n' "${files[@]}" | sort -u | xargs cat | sha256sum | cut -d' ' -f1
}

# catchers PATCH LOG: the mutant's tests that caught it in LOG, one run of them.
catchers() {
	local patch=$1 log=$2 tests failed by="" t timed_out checked
	tests=$(caught_by "$patch")
	failed=$(sed -n 's/^FAIL \([^ :]*\).*/\1/p' "$log" | tr '\n' ' ')
	# A test that only timed out (no check of its failed first), or found the index not empty
	# before it began (what an earlier mutant in the same boot left), did not catch the
	# mutant: it checked nothing.
	timed_out=$(awk '/^RUN  /{t = $2; checked = 0} /check failed:/{checked = 1}
		/^    (timed out after|stable tree not empty before)/{if (!checked) print t}' \
		"$log" | tr '\n' ' ')
	# A check that failed is a catch even when the guest never got to print the verdict (the
	# mutant wedged the test's exit, say).
	checked=$(awk '/^RUN  /{t = $2} /check failed:/{print t}' "$log" | tr '\n' ' ')
	for t in $tests; do
		if [[ " $failed " == *" $t "* && " $timed_out " != *" $t "* ]] ||
			[[ " $checked " == *" $t "* ]]; then
			by+="$t "
		fi
	done
	echo "$by"
}

# verdict NAME PATCH LOG: records caught/survived from the mutant's test log, in which its
# tests ran $repeat times, each run after a line "mutant run I".
verdict() {
	local name=$1 patch=$2 log=$3 by i runs=0 caught_runs=0
	if ((repeat == 1)); then
		by=$(catchers "$patch" "$log")
	else
		for ((i = 1; i <= repeat; i++)); do
			awk -v i="$i" '/^mutant run [0-9]+$/{on = ($3 == i)} on' "$log" >"$log.$i"
			grep -q "^mutant run $i\$" "$log.$i" && runs=$((runs + 1))
			[ -n "$(catchers "$patch" "$log.$i")" ] && caught_runs=$((caught_runs + 1))
		done
		by="$(catchers "$patch" "$log")(in $caught_runs of $repeat runs)"
		((caught_runs == repeat)) || by=""
	fi
	if [ -n "$by" ]; then
		caught=$((caught + 1))
		summary+=("caught   $name by: $by")
		{ grep -v " $name\$" "$record"; echo "$(digest "$patch") $name"; } >"$record.new"
		sort -k2 "$record.new" >"$record" && rm -f "$record.new"
		return 0
	fi
	local note=""
	((repeat == 1)) || note=" in $((repeat - caught_runs)) of $repeat runs ($runs ran)"
	summary+=("SURVIVED $name: none of [$(caught_by "$patch")] failed a check$note (a test that only timed out does not count; $log)")
	return 1
}

# run_alone NAME PATCH [vm-run options]: the mutant's tests in a boot of their own.
run_alone() {
	local name=$1 patch=$2 log="$work/$1.log"
	shift 2
	# shellcheck disable=SC2046 # one word per test
	UPM_STRESS_SECS=20 UPM_KMEMLEAK=0 UPM_VM_IDLE_TIMEOUT=${UPM_VM_IDLE_TIMEOUT:-420} scripts/vm-run.sh "$@" -- \
		"for i in \$(seq $repeat); do echo \"mutant run \$i\"; tests/build/upm_tests $(caught_by "$patch"); done" \
		>"$log" 2>&1
	verdict "$name" "$patch" "$log" || survived=$((survived + 1))
	upm_log "${summary[-1]}"
}

# The module mutants named in $@ in one boot. Each one's output goes to results/NAME.log;
# the guest stops at the first mutant it cannot unload, and the rest run alone.
run_modules_together() {
	local name patch cmd="" log
	for name in "$@"; do
		# UPM_MODULE: what a test that unloads the module loads again.
		cmd+="echo \"mutant $name\"; export UPM_MODULE=$work/$name/src/upm.ko; "
		cmd+="insmod \$UPM_MODULE || exit 3; "
		cmd+="tests/build/upm_tests $(caught_by "tests/vm/mutants/$name.patch") "
		cmd+="2>&1 | tee \$UPM_VM_OUT/results/$name.log; echo done >>\$UPM_VM_OUT/results/$name.log; "
		cmd+="rmmod upm || exit 3; "
	done
	rm -rf "$work/together" && mkdir -p "$work/together"
	UPM_STRESS_SECS=20 UPM_KMEMLEAK=0 UPM_VM_IDLE_TIMEOUT=${UPM_VM_IDLE_TIMEOUT:-420} UPM_RESULTS_DIR="$work/together" scripts/vm-run.sh --flavour debug \
		--no-module -- "$cmd" >"$work/together.log" 2>&1
	for name in "$@"; do
		patch=tests/vm/mutants/$name.patch log=$work/together/$name.log
		if [ -f "$log" ] && [ "$(tail -1 "$log")" = done ]; then
			if verdict "$name" "$patch" "$log"; then
				upm_log "${summary[-1]}"
				continue
			fi
			unset 'summary[-1]' # not the last word: it runs alone next
			upm_log "mutant $name survived in the shared boot: again in a boot of its own"
		else
			upm_log "mutant $name did not run to its end in the shared boot: again alone"
		fi
		run_alone "$name" "$patch" --flavour debug --module "$work/$name/src/upm.ko"
	done
}

# Source files a kernel mutant patches, saved with their times, so that the tree goes back to
# exactly what the debug build was made from.
saved=$work/kernel-saved
restore_kernel_tree() {
	[ -d "$saved" ] || return 0
	(cd "$saved" && find . -type f) | while read -r f; do
		cp -p "$saved/$f" "$UPM_KSRC/$f"
	done
	rm -rf "$saved"
}
trap restore_kernel_tree EXIT

run_kernel_mutant() { # name patch
	local name=$1 patch=$2 f
	restore_kernel_tree
	mkdir -p "$saved"
	for f in $(patched_files "$patch"); do
		mkdir -p "$saved/$(dirname "$f")" && cp -p "$UPM_KSRC/$f" "$saved/$f"
	done
	git -C "$UPM_KSRC" apply "$UPM_ROOT/$patch" || { upm_log "$patch does not apply"; exit 2; }
	rsync -a --delete "$kbuild/" "$mbuild/"
	make -s -C "$UPM_KSRC" O="$mbuild" LLVM=1 -j"$(($(nproc) + 1))" || exit 2
	restore_kernel_tree
	run_alone "$name" "$patch" --kbuild "$mbuild"
}

modules=() kernels=()
for patch in tests/vm/mutants/*.patch; do
	name=$(basename "$patch" .patch)
	if (($#)) && [[ " $* " != *" $name "* ]]; then
		continue
	fi
	if ((ci)) && ! grep -q '^Run-in-CI: always$' "$patch" &&
		grep -qx "$(digest "$patch") $name" "$record"; then
		upm_log "mutant $name: caught before with the same code and tests; not run"
		continue
	fi
	case "$name" in
	module-*) modules+=("$name") ;;
	kernel-*) kernels+=("$name") ;;
	esac
done

for name in "${modules[@]}"; do
	patch=tests/vm/mutants/$name.patch dir=$work/$name
	upm_log "mutant $name: $(head -1 "$patch")"
	rm -rf "$dir" && mkdir -p "$dir/src"
	cp Kbuild "$dir/" && cp -r src/Kbuild src/*.rs src/ffi "$dir/src/"
	patch -s -d "$dir" -p1 <"$patch" || { upm_log "$patch does not apply"; exit 2; }
	make -s -C "$kbuild" M="$dir" LLVM=1 modules >"$work/$name.build.log" 2>&1 ||
		{ upm_log "$name does not build: $work/$name.build.log"; exit 2; }
done
if ((repeat > 1)); then
	for name in "${modules[@]}"; do
		run_alone "$name" "tests/vm/mutants/$name.patch" --flavour debug --module "$work/$name/src/upm.ko"
	done
elif ((${#modules[@]})); then
	run_modules_together "${modules[@]}"
fi

for name in "${kernels[@]}"; do
	upm_log "mutant $name: $(head -1 "tests/vm/mutants/$name.patch")"
	run_kernel_mutant "$name" "tests/vm/mutants/$name.patch"
done

printf '%s\n' "${summary[@]}"
echo "mutants: $caught caught, $survived survived"
((survived == 0))
