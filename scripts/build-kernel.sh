#!/usr/bin/env bash
# Build the patched 6.12 kernel for one flavour (debug or release) into the cache.
#
#   scripts/build-kernel.sh [debug|release]
#
# The source tree is Debian's linux-source-6.12, extracted once into $UPM_CACHE and kept
# as a git repository whose "upstream" tag is the pristine source. patches/*.patch are
# applied on top with git am. When the series changes, only the files whose content
# changes get a new mtime, so make rebuilds incrementally. Each flavour has its own
# output directory (make O=...), so switching flavour never rebuilds the other.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "$0")/env.sh"

flavour=${1:-$UPM_FLAVOUR}
case "$flavour" in
debug | release) ;;
*) upm_log "unknown flavour '$flavour' (debug or release)"; exit 2 ;;
esac
out=$(upm_kbuild_dir "$flavour")
# No automatic gc: after the first commit of ~90k files, `gc --auto` detaches and packs refs
# in the background, and its lock on refs/heads/master made the first `git am` of a fresh
# machine fail ("cannot lock ref 'HEAD'").
git_quiet=(-c gc.auto=0 -c maintenance.auto=false -c user.name=upm-build -c user.email=upm-build@localhost)
git_k() { git -C "$UPM_KSRC" "${git_quiet[@]}" "$@"; }

prepare_source() {
	[ -e "$UPM_KSRC/.git/refs/tags/upstream" ] && return
	upm_log "extracting /usr/src/linux-source-$UPM_KVER.tar.xz"
	rm -rf "$UPM_KSRC" "$UPM_KSRC.tmp"
	mkdir -p "$UPM_KSRC.tmp"
	tar -xf "/usr/src/linux-source-$UPM_KVER.tar.xz" -C "$UPM_KSRC.tmp" --strip-components=1
	git -C "$UPM_KSRC.tmp" init -q
	git -C "$UPM_KSRC.tmp" config gc.auto 0
	git -C "$UPM_KSRC.tmp" config maintenance.auto false
	git -C "$UPM_KSRC.tmp" "${git_quiet[@]}" add -A -f .
	git -C "$UPM_KSRC.tmp" "${git_quiet[@]}" commit -q -m "linux-source-$UPM_KVER (Debian)"
	git -C "$UPM_KSRC.tmp" "${git_quiet[@]}" tag upstream
	mv "$UPM_KSRC.tmp" "$UPM_KSRC"
}

# Apply the series if it differs from what the tree carries. Files that end up with
# the same content as before keep their old mtime, so nothing rebuilds for them.
apply_series() {
	local series_id saved f
	series_id=$(find "$UPM_ROOT/patches" -name '*.patch' | sort | xargs -r cat | sha256sum | cut -d' ' -f1)
	if [ "$(cat "$UPM_KSRC/.upm-series" 2>/dev/null)" = "$series_id" ] &&
		[ "$(cat "$UPM_KSRC/.upm-series-head" 2>/dev/null)" = "$(git_k rev-parse HEAD)" ]; then
		return
	fi
	upm_log "applying patch series ($(find "$UPM_ROOT/patches" -name '*.patch' | wc -l) patches)"
	saved=$(mktemp -d)
	git_k am --abort >/dev/null 2>&1 || true
	mapfile -t touched < <(git_k diff --name-only upstream)
	for f in "${touched[@]}"; do
		[ -f "$UPM_KSRC/$f" ] && install -D -p "$UPM_KSRC/$f" "$saved/$f"
	done
	git_k reset -q --hard upstream
	git_k clean -q -fd
	if compgen -G "$UPM_ROOT/patches/*.patch" >/dev/null; then
		git_k am -q "$UPM_ROOT"/patches/*.patch
	fi
	for f in "${touched[@]}"; do
		if [ -f "$saved/$f" ] && cmp -s "$saved/$f" "$UPM_KSRC/$f"; then
			touch -r "$saved/$f" "$UPM_KSRC/$f"
		fi
	done
	rm -rf "$saved"
	echo "$series_id" >"$UPM_KSRC/.upm-series"
	git_k rev-parse HEAD >"$UPM_KSRC/.upm-series-head"
}

# The tree must be the series and nothing more: an interrupted kernel mutant, or a hand
# edit, may have left files changed. Those are restored with a new time, so that they build
# again (their objects may have been built from the change).
verify_tree() {
	if ! git_k diff --quiet HEAD || [ -n "$(git_k status --porcelain | head -1)" ]; then
		upm_log "the kernel tree has changes that are not the series: restoring it"
		git_k status --short | head -20 >&2
		git_k checkout -q -- .
		git_k clean -q -fd
	fi
}

# Regenerate .config from tinyconfig plus our fragments whenever a fragment changed,
# then check that every option we asked for is really set (Kconfig silently drops
# options whose dependencies are missing).
configure() {
	local frags=("$UPM_ROOT/kernel/lean.config" "$UPM_ROOT/kernel/upm.config"
		"$UPM_ROOT/kernel/$flavour.config")
	local config_id
	config_id=$(cat "${frags[@]}" | sha256sum | cut -d' ' -f1)-$(cat "$UPM_KSRC/.upm-series")
	if [ -f "$out/.config" ] && [ "$(cat "$out/.upm-config" 2>/dev/null)" = "$config_id" ]; then
		return
	fi
	upm_log "configuring $flavour kernel"
	mkdir -p "$out"
	make -s -C "$UPM_KSRC" O="$out" LLVM=1 tinyconfig >/dev/null
	"$UPM_KSRC/scripts/kconfig/merge_config.sh" -Q -m -O "$out" "$out/.config" "${frags[@]}" >/dev/null
	make -s -C "$UPM_KSRC" O="$out" LLVM=1 olddefconfig >/dev/null
	local missing=0 line
	while read -r line; do
		case "$line" in
		CONFIG_*=*) grep -qx "$line" "$out/.config" || { upm_log "config: $line not set"; missing=1; } ;;
		"# CONFIG_"*" is not set") grep -q "^${line#\# }" "$out/.config" 2>/dev/null ||
			! grep -q "^${line:2:-11}=" "$out/.config" || { upm_log "config: $line"; missing=1; } ;;
		esac
	done < <(cat "${frags[@]}")
	((missing == 0)) || { upm_log "kernel config incomplete"; exit 1; }
	echo "$config_id" >"$out/.upm-config"
}

# bindgen's output does not depend on the headers bindings_helper.h includes: regenerate it
# whenever the UPM header it exists for has changed since it was generated.
refresh_bindings() {
	local gen=$out/rust/bindings/bindings_generated.rs stamp=$out/.upm-bindings-src id
	id=$(sha256sum <"$UPM_KSRC/include/linux/upm.h" | cut -d' ' -f1)
	if [ -f "$gen" ] && [ "$(cat "$stamp" 2>/dev/null)" != "$id" ]; then
		upm_log "include/linux/upm.h changed: regenerating the Rust bindings"
		rm -f "$gen"
	fi
	mkdir -p "$out"
	echo "$id" >"$stamp"
}

prepare_source
apply_series
verify_tree
configure
refresh_bindings
upm_log "building $flavour kernel in $out"
start=$(date +%s)
make -s -C "$UPM_KSRC" O="$out" LLVM=1 -j"$(($(nproc) + 1))"
upm_log "$flavour kernel built in $(($(date +%s) - start)) s"
{
	echo "flavour:  $flavour"
	echo "release:  $(cat "$out/include/config/kernel.release")"
	echo "source:   Debian linux-source-$UPM_KVER ($(dpkg-query -W -f='${Version}' linux-source-$UPM_KVER 2>/dev/null || echo unknown))"
	echo "built:    $(date -u +%FT%TZ)"
	echo "patches:"
	git_k log --reverse --format='  %h %s' upstream..HEAD
} >"$out/upm-kernel-info"
