#!/usr/bin/env bash
# The suite must catch a broken UPM. Each tests/mutants/*.patch breaks one thing on purpose:
#   module-*.patch  applies to a copy of src/, built as its own upm.ko in $UPM_CACHE/mutants;
#   kernel-*.patch  applies to the cached kernel tree for one build, then the tree is
#                   restored and rebuilt (also when this script fails or is interrupted).
# Line 1 of a patch says what it breaks, line 2 ("Caught-by: TEST...") names the tests written
# to catch it. Those tests run in the debug VM (stress shortened to 20 s); the mutant is
# caught only when one of them fails a check, and the summary says which. A run that fails
# otherwise (another test, a named test that only timed out, a splat alone) is reported, not
# counted as a catch.
# Exits non-zero if any mutant survives.
#
#   scripts/mutants.sh [MUTANT_NAME...]
set -uo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "$0")/env.sh"
cd "$UPM_ROOT" || exit 1

kbuild=$(upm_kbuild_dir debug)
work=$UPM_CACHE/mutants
mkdir -p "$work"
caught=0 survived=0
summary=()

build_kernel() {
	make -s -C "$UPM_KSRC" O="$kbuild" LLVM=1 -j"$(($(nproc) + 1))"
}

restore_kernel() {
	if ! git -C "$UPM_KSRC" diff --quiet; then
		upm_log "restoring the kernel tree and rebuilding"
		git -C "$UPM_KSRC" checkout -q -- .
		build_kernel
	fi
}
trap restore_kernel EXIT

# run_suite NAME PATCH [vm-run options]: runs the mutant's tests, records caught/survived.
run_suite() {
	local name=$1 patch=$2 log="$work/$1.log" tests failed by="" t
	shift 2
	tests=$(sed -n '2s/^Caught-by: //p' "$patch")
	if [ -z "$tests" ]; then
		upm_log "$patch has no Caught-by: line"
		exit 2
	fi
	# shellcheck disable=SC2086 # one word per test
	UPM_STRESS_SECS=20 scripts/vm-run.sh --flavour debug "$@" -- \
		"tests/build/upm_tests $tests" >"$log" 2>&1
	failed=$(sed -n 's/^FAIL //p' "$log" | tr '\n' ' ')
	# A test that only timed out did not catch the mutant: it did not check anything.
	timed_out=$(awk '/^RUN  /{t = $2} /^    timed out after/{print t}' "$log" | tr '\n' ' ')
	for t in $tests; do
		[[ " $failed " == *" $t "* && " $timed_out " != *" $t "* ]] && by+="$t "
	done
	if [ -n "$by" ]; then
		caught=$((caught + 1))
		summary+=("caught   $name by: $by")
	else
		survived=$((survived + 1))
		summary+=("SURVIVED $name: none of [$tests] failed a check (timed out: ${timed_out:-none}; other failures: ${failed:-none}; $log)")
	fi
	upm_log "${summary[-1]}"
}

for patch in tests/mutants/*.patch; do
	name=$(basename "$patch" .patch)
	if (($#)) && [[ " $* " != *" $name "* ]]; then
		continue
	fi
	upm_log "mutant $name: $(head -1 "$patch")"
	case "$name" in
	module-*)
		dir=$work/$name
		rm -rf "$dir" && mkdir -p "$dir/src"
		cp Kbuild "$dir/" && cp -r src/Kbuild src/*.rs src/ffi "$dir/src/"
		patch -s -d "$dir" -p1 <"$patch" || { upm_log "$patch does not apply"; exit 2; }
		make -s -C "$kbuild" M="$dir" LLVM=1 modules >"$work/$name.build.log" 2>&1 ||
			{ upm_log "$name does not build: $work/$name.build.log"; exit 2; }
		run_suite "$name" "$patch" --module "$dir/src/upm.ko"
		;;
	kernel-*)
		git -C "$UPM_KSRC" apply "$UPM_ROOT/$patch" ||
			{ upm_log "$patch does not apply"; exit 2; }
		build_kernel || exit 2
		run_suite "$name" "$patch"
		restore_kernel
		;;
	esac
done

printf '%s\n' "${summary[@]}"
echo "mutants: $caught caught, $survived survived"
((survived == 0))
